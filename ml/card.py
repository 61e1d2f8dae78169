"""The model card (`model.json`): schema `edgeloop.model-card/1`, documented in ml/README.md.

gpu-inferencer reads cards with its own code (its image carries no torch and no `ml`), so the format, not
this class, is the contract. Unknown keys are kept so newer cards pass through older tools unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ml.errors import MlError

CARD_SCHEMA = "edgeloop.model-card/1"
CARD_FILE = "model.json"
MODEL_FILE = "model.onnx"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class CardError(MlError, ValueError):
    """A model card is missing, unreadable or invalid."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputSpec(_Open):
    name: str = Field(min_length=1)
    dtype: str = "float32"


class OutputSpec(_Open):
    score: str = Field(min_length=1)


class Histogram(_Open):
    """Bin i counts edges[i] <= x < edges[i+1] (the last bin includes its right edge). Live values below
    edges[0] or above edges[-1] belong in the first or last bin, so PSI compares like with like."""

    edges: list[float]
    counts: list[int]

    @model_validator(mode="after")
    def _consistent(self) -> Histogram:
        if len(self.edges) != len(self.counts) + 1 or len(self.counts) < 1:
            raise ValueError("a histogram needs len(edges) == len(counts) + 1 >= 2")
        if any(b <= a for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)):
            raise ValueError("histogram edges must increase strictly")
        return self


class ScoreBaseline(_Open):
    count: int
    mean: float
    std: float
    quantiles: dict[str, float]
    histogram: Histogram


class FeatureBaseline(_Open):
    mean: float
    std: float
    histogram: Histogram


class ModelCard(_Open):
    schema_: str = Field(default=CARD_SCHEMA, alias="schema")
    name: str
    version: str
    created: str | None = None
    task: str = "anomaly-detection"
    model_file: str = MODEL_FILE
    model_sha256: str
    inputs: InputSpec
    outputs: OutputSpec
    feature_columns: list[str] = Field(min_length=1)
    window: int = Field(ge=1)
    device_column: str | None = None
    timestamp_column: str | None = None
    threshold: float
    threshold_quantile: float | None = None
    score_baseline: ScoreBaseline | None = None
    feature_baseline: dict[str, FeatureBaseline] | None = None
    training_data: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    framework: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    training: dict[str, Any] | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _known_schema(cls, value: str) -> str:
        if not value.startswith("edgeloop.model-card/"):
            raise ValueError(f"not a model card schema: {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("name: letters, digits, '.', '_', '-', starting with a letter or digit, <= 128")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_PATTERN.match(value):
            raise ValueError("version must be a positive integer as a string, like '1'")
        return value

    @field_validator("model_sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not _SHA256_PATTERN.match(value):
            raise ValueError("model_sha256 must be 64 lowercase hex digits")
        return value

    @field_validator("model_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError("model_file must be a plain file name beside model.json")
        return value

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("threshold must be finite")
        return value

    @field_validator("feature_columns")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("feature_columns repeat")
        return value

    def to_json(self) -> str:
        # Only what the card was given: a bring-your-own card keeps its shape, with no nulls added.
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_unset=True), indent=2) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(model_dir: Path) -> ModelCard:
    path = model_dir / CARD_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CardError(f"no {CARD_FILE} in {model_dir}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: unreadable: {exc}") from exc
    try:
        return ModelCard.model_validate(raw)
    except ValueError as exc:
        raise CardError(f"{path}: invalid model card: {exc}") from exc


def write_card(card: ModelCard, model_dir: Path) -> Path:
    path = model_dir / CARD_FILE
    temporary = model_dir / f".{CARD_FILE}.tmp"
    temporary.write_text(card.to_json(), encoding="utf-8")
    temporary.replace(path)
    return path
