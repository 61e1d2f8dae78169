from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from tests.unit.transformer.kit import SENSOR_CONTRACT, contract
from transformer import DatasetContract, schema_fingerprint
from transformer import contract as contract_module


def test_documented_example_is_a_valid_contract() -> None:
    doc = contract_module.__doc__ or ""
    example = doc[doc.index("{") : doc.index("Semantics:")].strip()
    parsed = DatasetContract.from_json(example)
    assert parsed.timezone == "Europe/Amsterdam"
    assert parsed.rule_for(parsed.columns[2]).value == "clip"
    assert [c.name for c in parsed.kept_columns] == [c.name for c in parsed.columns]


def test_json_round_trip() -> None:
    original = contract(timezone="America/New_York", drop_columns=["count"])
    again = DatasetContract.from_json(original.to_json())
    assert again == original
    assert json.loads(original.to_json())["drop_columns"] == ["count"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "Extra inputs"),
        ({"timestamp_column": "device_id"}, "timestamp_column"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"device_column": "nope"}, "device_column"),
        ({"label_columns": ["nope"]}, "label column"),
        ({"drop_columns": ["ts"]}, "cannot be dropped"),
        ({"encoding": "no-such-codec"}, "unknown encoding"),
    ],
)
def test_invalid_contracts_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DatasetContract.model_validate({**SENSOR_CONTRACT, **change})


@pytest.mark.parametrize(
    "column",
    [
        {"name": "x", "type": "string", "min": 1},
        {"name": "x", "type": "float64", "min": 2, "max": 1},
        {"name": "x", "type": "int64", "epoch": "s"},
        {"name": "x", "type": "float64", "unit": "C"},
    ],
)
def test_invalid_columns_are_refused(column: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DatasetContract.model_validate({**SENSOR_CONTRACT, "columns": [*SENSOR_CONTRACT["columns"], column]})


def test_timestamp_column_cannot_be_nulled() -> None:
    columns = [{"name": "ts", "type": "timestamp", "on_invalid": "null"}]
    with pytest.raises(ValidationError, match="cannot use on_invalid=null"):
        DatasetContract.model_validate({"columns": columns, "timestamp_column": "ts"})


def test_arrow_schema_follows_contract_order_less_dropped_columns() -> None:
    schema = contract(drop_columns=["count"]).arrow_schema()
    assert schema.names == ["ts", "device_id", "temperature"]
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert not schema.field("ts").nullable
    assert schema.field("temperature").type == pa.float64()


def test_fingerprint_is_sha256_of_canonical_fields_and_ignores_metadata() -> None:
    fields: list[pa.Field[Any]] = [pa.field("a", pa.int64()), pa.field("b", pa.string(), nullable=False)]
    schema = pa.schema(fields)
    canonical = json.dumps([["a", "int64", True], ["b", "string", False]], separators=(",", ":"))
    assert schema_fingerprint(schema) == hashlib.sha256(canonical.encode()).hexdigest()
    assert schema_fingerprint(schema.with_metadata({"k": "v"})) == schema_fingerprint(schema)
    renamed_fields: list[pa.Field[Any]] = [
        pa.field("a", pa.int64()),
        pa.field("c", pa.string(), nullable=False),
    ]
    renamed = pa.schema(renamed_fields)
    assert schema_fingerprint(renamed) != schema_fingerprint(schema)
