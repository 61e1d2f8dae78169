"""The serving model's card (MODEL_CARD.md), read as far as retrain-trigger needs it, and the model
references that name it (`registry://name/version`, `file:///abs/dir`)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field

from edgekit import content_id

CARD_FILE = "model.json"


class CardError(ValueError):
    """A model card or reference that cannot be used (missing keys, bad histogram, unknown scheme)."""


class ModelRef(BaseModel):
    """A model as the inferencer's twin names it: `{name, version, uri, sha256}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    uri: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Histogram:
    """A baseline distribution with fixed edges (len(edges) == len(counts) + 1, edges ascending)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_json(cls, value: Any, what: str) -> Histogram:
        if not isinstance(value, dict):
            raise CardError(f"{what}: histogram is not an object")
        try:
            edges = tuple(float(edge) for edge in value["edges"])
            counts = tuple(int(count) for count in value["counts"])
        except (KeyError, TypeError, ValueError) as error:
            raise CardError(f"{what}: histogram needs numeric 'edges' and 'counts' ({error})") from error
        if len(counts) < 1 or len(edges) != len(counts) + 1:
            raise CardError(f"{what}: {len(edges)} edges for {len(counts)} counts")
        if any(not math.isfinite(edge) for edge in edges) or any(b < a for a, b in itertools.pairwise(edges)):
            raise CardError(f"{what}: edges must be finite and ascending")
        if any(count < 0 for count in counts) or sum(counts) == 0:
            raise CardError(f"{what}: counts must be non-negative and not all zero")
        return cls(edges, counts)

    @property
    def degenerate(self) -> bool:
        """All the baseline sat on one value (a constant column): no distribution to compare with."""
        return self.edges[-1] <= self.edges[0]


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    directory: Path
    model_file: str
    model_sha256: str
    input_name: str
    score_output: str
    feature_columns: tuple[str, ...]
    window: int
    threshold: float
    device_column: str = "device_id"
    timestamp_column: str = "timestamp"
    score_mean: float | None = None
    score_histogram: Histogram | None = None
    feature_histograms: dict[str, Histogram] = field(default_factory=dict)
    training_rows: int | None = None
    training_max: datetime | None = None

    @property
    def model_path(self) -> Path:
        return self.directory / self.model_file

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "threshold": self.threshold,
            "window": self.window,
            "features": list(self.feature_columns),
            "training_rows": self.training_rows,
            "training_max": iso(self.training_max) if self.training_max else None,
        }

    @classmethod
    def from_json(cls, raw: Any, directory: Path) -> ModelCard:
        if not isinstance(raw, dict):
            raise CardError("model card is not a JSON object")
        try:
            inputs, outputs = raw["inputs"], raw["outputs"]
            columns = raw["feature_columns"]
            if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
                raise CardError("feature_columns must be a non-empty list of names")
            window = int(raw["window"])
            if window < 1:
                raise CardError(f"window must be >= 1, not {window}")
            threshold = float(raw["threshold"])
            card = cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                directory=directory,
                model_file=str(raw["model_file"]),
                model_sha256=str(raw["model_sha256"]).lower(),
                input_name=str(inputs["name"]),
                score_output=str(outputs["score"]),
                feature_columns=tuple(columns),
                window=window,
                threshold=threshold,
                device_column=str(raw.get("device_column") or "device_id"),
                timestamp_column=str(raw.get("timestamp_column") or "timestamp"),
                score_mean=_optional_float((raw.get("score_baseline") or {}).get("mean")),
                score_histogram=_score_histogram(raw),
                feature_histograms=_feature_histograms(raw),
                training_rows=_optional_int((raw.get("training_data") or {}).get("rows")),
                training_max=_training_max(raw),
            )
        except KeyError as error:
            raise CardError(f"model card lacks {error.args[0]!r}") from error
        except (TypeError, ValueError) as error:
            if isinstance(error, CardError):
                raise
            raise CardError(f"model card has a bad value: {error}") from error
        if not math.isfinite(card.threshold):
            raise CardError("threshold is not a finite number")
        return card


def load_card(model_dir: Path, *, verify: bool = True, sha256: str | None = None) -> ModelCard:
    """Read `<model_dir>/model.json`; with `verify`, check model.onnx against the card's (and the
    reference's) sha256, as the registry does at fetch."""
    path = model_dir / CARD_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CardError(f"no {CARD_FILE} in {model_dir}") from error
    except (OSError, ValueError) as error:
        raise CardError(f"{path} is not readable JSON: {error}") from error
    card = ModelCard.from_json(raw, model_dir)
    if verify:
        try:
            digest = content_id(card.model_path)
        except FileNotFoundError as error:
            raise CardError(f"{card.model_path} is missing") from error
        if digest != card.model_sha256:
            raise CardError(f"{card.model_path} has sha256 {digest}, the card says {card.model_sha256}")
        if sha256 is not None and digest != sha256.lower():
            raise CardError(f"{card.model_path} has sha256 {digest}, the reference says {sha256}")
    return card


def resolve_model_dir(uri: str, registry_root: Path) -> Path:
    """The folder a reference points at. http(s) blob prefixes are the inferencer's to download; this
    module reads cards from the registry or a folder it can see."""
    parsed = urlparse(uri)
    if parsed.scheme == "registry":
        name, version = parsed.netloc, parsed.path.strip("/")
        if not name or not version or "/" in version or version in (".", "..") or name in (".", ".."):
            raise CardError(f"{uri!r} is not registry://<name>/<version>")
        return registry_root / name / version
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise CardError(f"{uri!r}: file URIs must be local (file:///abs/path)")
        return Path(unquote(parsed.path))
    raise CardError(f"{uri!r}: retrain-trigger reads models from registry:// or file:// references only")


def registry_uri(name: str, version: str) -> str:
    return f"registry://{name}/{version}"


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 instant (a trailing Z allowed) as an aware UTC datetime; naive ones are taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _score_histogram(raw: dict[str, Any]) -> Histogram | None:
    baseline = raw.get("score_baseline") or {}
    histogram = baseline.get("histogram")
    return None if histogram is None else Histogram.from_json(histogram, "score_baseline")


def _feature_histograms(raw: dict[str, Any]) -> dict[str, Histogram]:
    baseline = raw.get("feature_baseline") or {}
    if not isinstance(baseline, dict):
        raise CardError("feature_baseline is not an object")
    return {
        str(column): Histogram.from_json(summary.get("histogram"), f"feature_baseline.{column}")
        for column, summary in baseline.items()
        if isinstance(summary, dict) and summary.get("histogram") is not None
    }


def _training_max(raw: dict[str, Any]) -> datetime | None:
    time_range = (raw.get("training_data") or {}).get("time_range") or {}
    return parse_time(time_range.get("max"))
