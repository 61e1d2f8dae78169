"""The model card (`model.json`) as the inferencer consumes it (.notes/MODEL_CARD.md).

Only what serving needs is required; unknown keys are kept (cards are forward compatible), so a card
written by a newer trainer or a bring-your-own model still loads.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CARD_FILE = "model.json"
CARD_SCHEMA = "edgeloop.model-card/1"
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class CardError(ValueError):
    """A model card that cannot be served: missing or invalid required keys, or not JSON."""


class CardInputs(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    dtype: Literal["float32", "float64"] = "float32"


class CardOutputs(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    score: str = Field(min_length=1)


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    model_file: str
    model_sha256: str
    inputs: CardInputs
    outputs: CardOutputs
    feature_columns: tuple[str, ...] = Field(min_length=1)
    window: int = Field(ge=1, le=10_000)
    threshold: float
    device_column: str = "device_id"
    timestamp_column: str = "timestamp"

    @field_validator("name", "version", "model_file")
    @classmethod
    def _path_segment(cls, value: str) -> str:
        # These become folder and file names in the model cache.
        if not SAFE_SEGMENT.match(value):
            raise ValueError(f"{value!r} is not a plain name (letters, digits, '.', '_', '-')")
        return value

    @field_validator("model_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not SHA256_HEX.match(value):
            raise ValueError("must be 64 hex digits")
        return value.lower()

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> ModelCard:
        if len(set(self.feature_columns)) != len(self.feature_columns):
            raise ValueError("feature_columns has duplicates")
        overlap = {self.device_column, self.timestamp_column} & set(self.feature_columns)
        if overlap:
            raise ValueError(f"feature_columns include the device/timestamp column {sorted(overlap)}")
        return self

    @property
    def feature_count(self) -> int:
        """Width of one model input row: `window` rows of the feature columns, time-major."""
        return self.window * len(self.feature_columns)


def parse_card(data: bytes | str | dict[str, Any]) -> ModelCard:
    try:
        raw = data if isinstance(data, dict) else json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CardError(f"{CARD_FILE} is not JSON: {error}") from error
    if not isinstance(raw, dict):
        raise CardError(f"{CARD_FILE} is not a JSON object")
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'card'}: {item['msg']}" for item in error.errors()
        )
        raise CardError(f"{CARD_FILE} is invalid: {problems}") from error


def read_card(model_dir: Path) -> ModelCard:
    path = model_dir / CARD_FILE
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CardError(f"cannot read {path}: {error.strerror or error}") from error
    return parse_card(data)
