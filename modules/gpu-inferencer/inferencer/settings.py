"""gpu-inferencer's settings (environment `INFERENCER_<FIELD>`, twin desired properties `<field>`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator

from .card import SAFE_SEGMENT, SHA256_HEX
from .fetch import redact
from .providers import DEFAULT_PROVIDERS, canonical_provider


class ModelRef(BaseModel):
    """The model to serve: `model: {name, version, uri, sha256}` in the desired properties."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    """A positive integer as a string; `latest` only with a `registry://` uri."""
    uri: str
    """`registry://<name>/<version>`, `file:///abs/dir`, or an `http(s)://` prefix ending in `/`."""
    sha256: str | None = None
    """sha256 of the model file; checked when given."""

    @field_validator("name", "version")
    @classmethod
    def _segment(cls, value: str) -> str:
        if not SAFE_SEGMENT.match(value):
            raise ValueError(f"{value!r} is not a plain name (letters, digits, '.', '_', '-')")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_HEX.match(value):
            raise ValueError("must be 64 hex digits")
        return value.lower() if value else value

    @field_serializer("uri", when_used="json")
    def _without_sas(self, uri: str) -> str:
        # The JSON form is what edgekit reports as effective settings: a SAS token must not travel there.
        return redact(uri)


class InferencerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud_share_dir: str = "/data/cloud-share"
    """Where batches are read from and scores written to (and uploaded from)."""
    scores_dir: str = Field(default="scores", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Top folder of the scores files in the cloud share."""
    model: ModelRef | None = None
    registry_root: str = "/data/models/registry"
    model_cache_dir: str = "/data/models/cache"
    fetch_timeout_s: float = Field(default=300.0, gt=0)
    max_model_bytes: int = Field(default=2 * 2**30, ge=1024)

    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    """Execution providers in order of preference (aliases: tensorrt, cuda, cpu); CPU always closes it."""
    device_id: int = Field(default=0, ge=0)
    io_binding: Literal["auto", "always", "never"] = "auto"
    """auto: bind inputs/outputs on the device when a GPU provider runs the model."""
    intra_op_threads: int = Field(default=0, ge=0)
    """0: ONNX Runtime's default (one per core)."""
    inter_op_threads: int = Field(default=0, ge=0)

    max_batch_rows: int = Field(default=65_536, ge=1, le=16_777_216)
    """Rows per model run; batches smaller than this are combined."""
    max_wait_ms: int = Field(default=50, ge=0, le=600_000)
    """How long a batch may wait for others to fill a model run."""
    max_anomaly_messages: int = Field(default=100, ge=0)
    """Per batch; beyond it the highest scores go and `scores` says how many were suppressed."""

    endpoint_enabled: bool = True
    """The local `/score` endpoint; it only starts when an `api_key` is set."""
    endpoint_host: str = "127.0.0.1"
    endpoint_port: int = Field(default=8700, ge=0, le=65535)
    """0 picks a free port (reported under `endpoint`)."""
    api_key: SecretStr | None = None
    """Required in the `x-api-key` header of `/score`. Never logged; reported masked."""
    max_request_rows: int = Field(default=10_000, ge=1)
    max_request_bytes: int = Field(default=16 * 2**20, ge=1024)

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one execution provider")
        return tuple(canonical_provider(name) for name in value)
