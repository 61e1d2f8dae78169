"""retrain-trigger's settings (environment `RETRAIN_<FIELD>`, twin desired properties `<field>`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .backends import REGISTER_PLACEHOLDERS, TRAIN_PLACEHOLDERS, CommandError, check_template
from .card import ModelRef
from .promotion import Metric
from .schedule import ScheduleError, validate_cron

DEFAULT_TRAIN_COMMAND = (
    "{python}", "-m", "ml", "train", "--data", "{data}", "--out", "{out}",
    "--name", "{name}", "--seed", "{seed}",
)  # fmt: skip
DEFAULT_REGISTER_COMMAND = (
    "{python}", "-m", "ml", "registry", "register", "{model_dir}",
    "--root", "{registry_root}", "--name", "{name}",
)  # fmt: skip


# The same training script, run as an Azure ML command job by `python -m ml azureml train`, which waits for it
# and downloads the model into {out}; registration then goes on as for a local job.
DEFAULT_AZUREML_COMMAND = (
    "{python}", "-m", "ml", "azureml", "train", "--data", "{data}", "--wait", "--download", "{out}",
    "--", "--name", "{name}", "--seed", "{seed}",
)  # fmt: skip


class DriftSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    statistic: Literal["psi", "ks"] = "psi"
    score_threshold: float = Field(default=0.2, gt=0)
    """PSI 0.1-0.25 is the usual "moderate shift" band; for KS the distance itself (0..1)."""
    features: bool = True
    """Also compare each feature with the card's feature_baseline."""
    feature_threshold: float = Field(default=0.25, gt=0)
    window_rows: int | None = Field(default=5000, ge=1)
    window_minutes: float | None = Field(default=None, gt=0)
    min_rows: int = Field(default=500, ge=1)
    """No verdict on fewer rows than this in the window."""

    @model_validator(mode="after")
    def _has_window(self) -> DriftSettings:
        if self.window_rows is None and self.window_minutes is None:
            raise ValueError("drift needs window_rows or window_minutes")
        return self


class VolumeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    new_rows: int = Field(default=100_000, ge=1)
    """Rows that arrived after the serving model's training data (by event time) that call for a retrain."""


class ScheduleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = None
    """e.g. "0 3 * * 0" (Sundays 03:00); evaluated in UTC."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_cron(value)
        except ScheduleError as error:
            raise ValueError(str(error)) from error


class LocalBackendSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command: tuple[str, ...] = DEFAULT_TRAIN_COMMAND
    """Placeholders: {python} {data} {cloud_share} {out} {name} {seed} {request_id}."""
    register_command: tuple[str, ...] = DEFAULT_REGISTER_COMMAND
    """Placeholders: {python} {model_dir} {registry_root} {name}."""
    python: str | None = None
    """The interpreter for {python}; default: the one running this module."""
    cwd: str | None = None
    """Working directory of both commands (where `ml` is importable: the repository root)."""
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=3600.0, gt=0)
    register_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("command")
    @classmethod
    def _train_template(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _template(value, TRAIN_PLACEHOLDERS)

    @field_validator("register_command")
    @classmethod
    def _register_template(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _template(value, REGISTER_PLACEHOLDERS)


class AzureMLBackendSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str | None = None
    """The training data as Azure ML sees it: `azureml://datastores/<ds>/paths/<folder>/` over the Blob
    container the uploader fills, or a data asset `azureml:<name>:<version>`. Required for this backend."""
    command: tuple[str, ...] = DEFAULT_AZUREML_COMMAND
    """Placeholders as for the local command; {data} is `data` above. Workspace settings (AZUREML_*) come
    from the environment (`local.env`) or `.env` in `local.cwd`."""
    timeout_s: float = Field(default=6 * 3600.0, gt=0)

    @field_validator("command")
    @classmethod
    def _train_template(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _template(value, TRAIN_PLACEHOLDERS)


class PromotionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Metric = "anomaly_rate"
    tolerance: float = Field(default=0.0, ge=0)
    """How much worse than the serving model a candidate may be, in the metric's units."""
    eval_rows: int = Field(default=5000, ge=1)
    """The most recent clean rows both models are scored on."""
    publish: bool = True
    """Emit `model-assigned` for a promoted candidate (false: leave the rollout to `python -m ml deploy`)."""
    onnx_threads: int = Field(default=1, ge=1, le=64)


class RetrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud_share_dir: str = "/data/cloud-share"
    registry_root: str = "/data/models/registry"
    dataset: str | None = None
    """Only this dataset's batches and scores count; it is also the training data folder
    (`<cloud_share>/<dataset>`). None: every dataset, and the whole cloud share is the training data."""
    model: ModelRef | None = None
    """The model gpu-inferencer serves (as in its twin); a `model-assigned` message on input `model`
    replaces it until this setting changes again."""
    model_name: str | None = None
    """Name new models register under; default the serving model's name."""
    drift: DriftSettings = Field(default_factory=DriftSettings)
    volume: VolumeSettings = Field(default_factory=VolumeSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    cooldown_minutes: float = Field(default=360.0, ge=0)
    debounce_s: float = Field(default=300.0, ge=0)
    evaluate_interval_s: float = Field(default=60.0, ge=0.05)
    decisions_kept: int = Field(default=20, ge=1, le=200)
    """How many past decisions, requests and promotions reported properties keep."""
    backend: Literal["none", "local", "azureml"] = "none"
    """none: only emit the retrain-request; local: also run training here; azureml: submit it as an Azure ML
    command job and wait for its model."""
    local: LocalBackendSettings = Field(default_factory=LocalBackendSettings)
    """The local backend's commands; `cwd`, `python` and `env` also apply to the azureml backend's process."""
    azureml: AzureMLBackendSettings = Field(default_factory=AzureMLBackendSettings)
    seed: int = 0
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)

    @model_validator(mode="after")
    def _backend_configured(self) -> RetrainSettings:
        if self.backend == "azureml" and not self.azureml.data:
            raise ValueError("backend azureml needs azureml.data (the datastore path or asset to train on)")
        return self


def _template(value: tuple[str, ...], placeholders: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(check_template(value, placeholders))
    except CommandError as error:
        raise ValueError(str(error)) from error
