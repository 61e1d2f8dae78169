"""Dataset contracts: what a dataset's rows must look like, and how to infer one from a first file.

A contract is JSON, the same document whether it sits in `DIR/<dataset>/_schema.json` or in the module
twin's `datasets.<name>` section. Example::

    {
      "columns": [
        {"name": "ts", "type": "timestamp"},
        {"name": "device_id", "type": "string", "nullable": false},
        {"name": "temperature", "type": "float64", "min": -40, "max": 125, "on_invalid": "clip"},
        {"name": "humidity", "type": "float64", "min": 0, "max": 100},
        {"name": "uptime_s", "type": "int64", "min": 0, "on_invalid": "null"},
        {"name": "label", "type": "int64"}
      ],
      "timestamp_column": "ts",
      "timezone": "Europe/Amsterdam",
      "device_column": "device_id",
      "drop_columns": ["operator_note"],
      "label_columns": ["label"],
      "on_invalid": "quarantine"
    }

Semantics:
- `columns` are parsed in this order and written in this order (less `drop_columns`). A declared column that
  a file lacks is all-null if nullable; a missing non-nullable column rejects the whole file. Columns a
  file has but the contract does not declare are ignored and reported.
- `timezone` (IANA name) is how naive timestamps are read; timestamps with an offset are converted. Every
  timestamp is written as UTC microseconds. A timestamp column with `epoch: "s" | "ms"` holds numbers.
- `min`/`max` apply to numeric columns. `on_invalid` (per column, else the contract's) decides what an
  unparseable, out-of-range or missing-but-required value does to its row: `quarantine` the row (default),
  `null` the value, `clip` it to range (unparseable values are then quarantined: there is nothing to clip),
  or `drop` the row, counted but not kept. The timestamp column cannot be nulled: its rows partition by it.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Every timestamp leaves the transformer in this one type, so a dataset's schema cannot drift on units.
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


class ColumnType(StrEnum):
    STRING = "string"
    INT64 = "int64"
    FLOAT64 = "float64"
    BOOL = "bool"
    TIMESTAMP = "timestamp"

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self]

    @property
    def is_numeric(self) -> bool:
        return self in (ColumnType.INT64, ColumnType.FLOAT64)


_ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.STRING: pa.string(),
    ColumnType.INT64: pa.int64(),
    ColumnType.FLOAT64: pa.float64(),
    ColumnType.BOOL: pa.bool_(),
    ColumnType.TIMESTAMP: TIMESTAMP_TYPE,
}


class OnInvalid(StrEnum):
    QUARANTINE = "quarantine"
    NULL = "null"
    CLIP = "clip"
    DROP = "drop"


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: ColumnType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    on_invalid: OnInvalid | None = None
    epoch: Literal["s", "ms"] | None = None

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and not self.type.is_numeric:
            raise ValueError(f"column {self.name!r}: min/max apply to numeric columns only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min > max")
        if self.epoch is not None and self.type is not ColumnType.TIMESTAMP:
            raise ValueError(f"column {self.name!r}: epoch applies to timestamp columns only")
        return self


class DatasetContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: tuple[ColumnSpec, ...] = Field(min_length=1)
    timestamp_column: str
    timezone: str = "UTC"
    device_column: str | None = None
    drop_columns: tuple[str, ...] = ()
    label_columns: tuple[str, ...] = ()
    on_invalid: OnInvalid = OnInvalid.QUARANTINE
    encoding: str = "utf-8"
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> DatasetContract:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("duplicate column names")
        by_name = {c.name: c for c in self.columns}
        ts = by_name.get(self.timestamp_column)
        if ts is None or ts.type is not ColumnType.TIMESTAMP:
            raise ValueError(
                f"timestamp_column {self.timestamp_column!r} must be a declared timestamp column"
            )
        if self.timestamp_column in self.drop_columns:
            raise ValueError("the timestamp column cannot be dropped")
        if self.rule_for(ts) is OnInvalid.NULL:
            raise ValueError("the timestamp column cannot use on_invalid=null: rows partition by it")
        for role, name in (("device_column", self.device_column),):
            if name is not None and name not in by_name:
                raise ValueError(f"{role} {name!r} is not a declared column")
        for label in self.label_columns:
            if label not in by_name or label in self.drop_columns:
                raise ValueError(f"label column {label!r} must be a declared, kept column")
        return self

    def rule_for(self, column: ColumnSpec) -> OnInvalid:
        # OnInvalid(...) also normalises plain strings left by model_copy(update=...), which skips validation.
        return OnInvalid(column.on_invalid or self.on_invalid)

    @property
    def kept_columns(self) -> tuple[ColumnSpec, ...]:
        dropped = set(self.drop_columns)
        return tuple(c for c in self.columns if c.name not in dropped)

    def arrow_schema(self) -> pa.Schema:
        """The schema of every Parquet batch this contract produces."""
        return pa.schema(
            [
                pa.field(c.name, c.type.arrow_type, nullable=c.nullable and c.name != self.timestamp_column)
                for c in self.kept_columns
            ]
        )

    def to_json(self) -> str:
        return self.model_dump_json(exclude_defaults=False, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetContract:
        return cls.model_validate_json(text)


def schema_fingerprint(schema: pa.Schema) -> str:
    """sha256 of the schema's canonical form: field names, types and nullability, in order.

    Metadata is left out on purpose (it carries lineage such as the source id), and the text form of the
    types is used rather than IPC bytes, which may change between pyarrow releases.
    """
    canonical = [[f.name, str(f.type), f.nullable] for f in schema]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


# Names commonly used for the event time and for the device, in order of preference.
TIMESTAMP_NAMES = ("timestamp", "ts", "time", "datetime", "event_time", "eventtime", "date_time", "t")
DEVICE_NAMES = (
    "device_id",
    "deviceid",
    "device",
    "sensor_id",
    "sensorid",
    "sensor",
    "machine_id",
    "asset_id",
)
# Epoch values larger than this are taken as milliseconds (1e11 s is the year 5138).
_EPOCH_MS_THRESHOLD = 1e11


def contract_from_schema(
    schema: pa.Schema, *, sample: pa.Table | None = None, timezone: str = "UTC"
) -> DatasetContract:
    """Choose a contract for columns pyarrow typed by inference; `sample` decides epoch units."""
    columns: list[ColumnSpec] = []
    for field in schema:
        columns.append(ColumnSpec(name=field.name, type=_column_type_of(field.type)))
    ts_name = _pick_timestamp_column(columns)
    epoch: Literal["s", "ms"] | None = None
    if ts_name is None:
        # No typed timestamp: an integer column with a timestamp-like name holds epoch values.
        for candidate in TIMESTAMP_NAMES:
            for c in columns:
                if c.name.lower() == candidate and c.type.is_numeric:
                    ts_name = c.name
                    epoch = _epoch_unit(sample, c.name) if sample is not None else "s"
                    break
            if ts_name is not None:
                break
    if ts_name is None:
        raise ValueError("no timestamp column found (need a timestamp-typed column or an epoch column)")
    columns = [
        ColumnSpec(name=c.name, type=ColumnType.TIMESTAMP, nullable=False, epoch=epoch)
        if c.name == ts_name
        else c
        for c in columns
    ]
    lowered = {c.name.lower(): c.name for c in columns}
    device = next((lowered[n] for n in DEVICE_NAMES if n in lowered), None)
    return DatasetContract(
        columns=tuple(columns), timestamp_column=ts_name, timezone=timezone, device_column=device
    )


def _column_type_of(arrow_type: pa.DataType) -> ColumnType:
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return ColumnType.TIMESTAMP
    if pa.types.is_boolean(arrow_type):
        return ColumnType.BOOL
    if pa.types.is_integer(arrow_type):
        return ColumnType.INT64
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return ColumnType.FLOAT64
    return ColumnType.STRING


def _pick_timestamp_column(columns: list[ColumnSpec]) -> str | None:
    timestamps = [c.name for c in columns if c.type is ColumnType.TIMESTAMP]
    if not timestamps:
        return None
    for preferred in TIMESTAMP_NAMES:
        for name in timestamps:
            if name.lower() == preferred:
                return name
    return timestamps[0]


def _epoch_unit(sample: pa.Table, column: str) -> Literal["s", "ms"]:
    import pyarrow.compute as pc

    values = sample.column(column)
    largest = pc.max(pc.abs(pc.cast(values, pa.float64()))).as_py()
    return "ms" if largest is not None and largest > _EPOCH_MS_THRESHOLD else "s"
