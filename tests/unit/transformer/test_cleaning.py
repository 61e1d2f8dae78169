from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.unit.transformer.kit import (
    SENSOR_CONTRACT,
    SMALL_LIMITS,
    contract,
    read_output,
    read_quarantine,
    transform,
    write_text,
)
from transformer import DatasetContract

UTC = dt.UTC


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_timestamps_to_utc(tmp_path: Path, cloud: Path) -> None:
    source = write_text(
        tmp_path / "tz.csv",
        "ts,device_id,temperature,count\n"
        "2024-01-15 12:00:00,naive-winter,1,1\n"  # Amsterdam is UTC+1 in January
        "2024-07-15T12:00:00,naive-summer,1,2\n"  # and UTC+2 in July
        "2024-07-15T12:00:00Z,zulu,1,3\n"
        "2024-07-15T12:00:00-05:00,offset,1,4\n"
        "2024-07-15T12:00:00.123456+02:00,fraction,1,5\n"
        "2024-03-31T02:30:00,dst-gap,1,6\n"  # does not exist in Amsterdam: the earlier instant
        "2024-10-27T02:30:00,dst-fold,1,7\n",  # happens twice: the earlier one
    )
    result = transform(source, cloud, contract(timezone="Europe/Amsterdam"))
    got = {r["device_id"]: r["ts"] for r in read_output(cloud, result).to_pylist()}
    assert got == {
        "naive-winter": utc(2024, 1, 15, 11),
        "naive-summer": utc(2024, 7, 15, 10),
        "zulu": utc(2024, 7, 15, 12),
        "offset": utc(2024, 7, 15, 17),
        "fraction": dt.datetime(2024, 7, 15, 10, 0, 0, 123456, tzinfo=UTC),
        "dst-gap": utc(2024, 3, 31, 1, 30),
        "dst-fold": utc(2024, 10, 27, 0, 30),
    }
    assert result.rows_quarantined == 0


def test_partition_date_is_the_utc_date(tmp_path: Path, cloud: Path) -> None:
    # 00:30 in Amsterdam on Jan 2 is 23:30 UTC on Jan 1.
    source = write_text(tmp_path / "d.csv", "ts,device_id,temperature,count\n2024-01-02T00:30:00,a,1,1\n")
    result = transform(source, cloud, contract(timezone="Europe/Amsterdam"))
    assert [b.date for b in result.batches] == ["2024-01-01"]
    assert result.batches[0].path.startswith("sensors/date=2024-01-01/")


@pytest.mark.parametrize(("unit", "value"), [("s", "1700000000.5"), ("ms", "1700000000500")])
def test_epoch_timestamps(tmp_path: Path, cloud: Path, unit: str, value: str) -> None:
    columns = [{"name": "ts", "type": "timestamp", "epoch": unit}, {"name": "device_id", "type": "string"}]
    epoch_contract = DatasetContract.model_validate({"columns": columns, "timestamp_column": "ts"})
    source = write_text(tmp_path / "e.csv", f"ts,device_id\n{value},a\nnot-a-number,b\n1e40,c\n")
    result = transform(source, cloud, epoch_contract)
    assert read_output(cloud, result).column("ts").to_pylist() == [
        dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    ]
    assert result.rows_quarantined_by_reason == {"unparseable:ts": 2}


def test_typed_parquet_timestamps_are_converted(tmp_path: Path, cloud: Path) -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "ts": pa.array([dt.datetime(2024, 6, 1, 12)], pa.timestamp("ns", tz="Asia/Tokyo")),
            "naive": pa.array([dt.datetime(2024, 6, 1, 12)], pa.timestamp("s")),
            "device_id": ["a"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    columns = [
        {"name": "ts", "type": "timestamp"},
        {"name": "naive", "type": "timestamp"},
        {"name": "device_id", "type": "string"},
    ]
    typed = DatasetContract.model_validate(
        {"columns": columns, "timestamp_column": "ts", "timezone": "Asia/Tokyo"}
    )
    row = read_output(cloud, transform(tmp_path / "t.parquet", cloud, typed)).to_pylist()[0]
    assert row["ts"] == utc(2024, 6, 1, 12)  # an instant stays the same instant
    assert row["naive"] == utc(2024, 6, 1, 3)  # a wall-clock time is read in the contract's zone


BAD_VALUES = (
    "ts,device_id,temperature,count\n"
    "2024-01-01T00:00:00,ok,20,1\n"
    "2024-01-01T00:00:01,hot,500,2\n"
    "2024-01-01T00:00:02,cold,-90,3\n"
    "2024-01-01T00:00:03,text,warm,4\n"
)


def rule_contract(rule: str) -> DatasetContract:
    columns = [
        {**c, "on_invalid": rule} if c["name"] == "temperature" else c for c in SENSOR_CONTRACT["columns"]
    ]
    return contract(columns=columns)


def test_rule_quarantine(tmp_path: Path, cloud: Path) -> None:
    result = transform(write_text(tmp_path / "q.csv", BAD_VALUES), cloud, rule_contract("quarantine"))
    assert read_output(cloud, result).column("device_id").to_pylist() == ["ok"]
    assert result.rows_quarantined_by_reason == {"out_of_range:temperature": 2, "unparseable:temperature": 1}
    rows = read_quarantine(cloud, result)
    assert [(r["_source_row"], r["_reason"], r["temperature"]) for r in rows] == [
        (2, "out_of_range:temperature", "500"),
        (3, "out_of_range:temperature", "-90"),
        (4, "unparseable:temperature", "warm"),
    ]
    assert rows[0]["ts"] == "2024-01-01T00:00:01"  # original values, as text


def test_rule_null(tmp_path: Path, cloud: Path) -> None:
    result = transform(write_text(tmp_path / "n.csv", BAD_VALUES), cloud, rule_contract("null"))
    out = {r["device_id"]: r["temperature"] for r in read_output(cloud, result).to_pylist()}
    assert out == {"ok": 20.0, "hot": None, "cold": None, "text": None}
    assert result.values_nulled == {"temperature": 3}
    assert result.quarantine is None


def test_rule_clip(tmp_path: Path, cloud: Path) -> None:
    result = transform(write_text(tmp_path / "c.csv", BAD_VALUES), cloud, rule_contract("clip"))
    out = {r["device_id"]: r["temperature"] for r in read_output(cloud, result).to_pylist()}
    # Nothing to clip in "warm": it is quarantined instead.
    assert out == {"ok": 20.0, "hot": 125.0, "cold": -40.0}
    assert result.values_clipped == {"temperature": 2}
    assert result.rows_quarantined_by_reason == {"unparseable:temperature": 1}


def test_rule_drop(tmp_path: Path, cloud: Path) -> None:
    result = transform(write_text(tmp_path / "d.csv", BAD_VALUES), cloud, rule_contract("drop"))
    assert read_output(cloud, result).column("device_id").to_pylist() == ["ok"]
    assert result.rows_dropped_by_reason == {"out_of_range:temperature": 2, "unparseable:temperature": 1}
    assert result.rows_quarantined == 0
    assert result.quarantine is None


def test_missing_required_values_and_columns(tmp_path: Path, cloud: Path) -> None:
    source = write_text(
        tmp_path / "m.csv",
        "ts,device_id,temperature\n2024-01-01T00:00:00,,1\n,dev,2\n2024-01-01T00:00:02,dev,\n",
    )
    result = transform(source, cloud, contract())
    # `count` is absent but nullable: all null. A null temperature is allowed.
    assert read_output(cloud, result).to_pylist() == [
        {"ts": utc(2024, 1, 1, 0, 0, 2), "device_id": "dev", "temperature": None, "count": None}
    ]
    assert result.rows_quarantined_by_reason == {"missing:device_id": 1, "missing:ts": 1}


def test_missing_required_column_rejects_the_file(tmp_path: Path, cloud: Path) -> None:
    result = transform(write_text(tmp_path / "x.csv", "ts,temperature\n2024-01-01,1\n"), cloud, contract())
    assert result.rejection is not None
    assert result.rejection.reason.value == "missing_columns"
    assert "device_id" in result.rejection.detail


def test_unexpected_and_dropped_columns(tmp_path: Path, cloud: Path) -> None:
    source = write_text(
        tmp_path / "u.csv", "ts,device_id,temperature,count,operator,extra\n2024-01-01,a,1,2,bob,zzz\n"
    )
    result = transform(source, cloud, contract(drop_columns=["count", "operator"]))
    assert read_output(cloud, result).column_names == ["ts", "device_id", "temperature"]
    assert result.unexpected_columns == ("extra",)


def test_label_columns_are_kept(tmp_path: Path, cloud: Path) -> None:
    source = write_text(tmp_path / "l.csv", "ts,device_id,temperature,count\n2024-01-01,a,1,1\n")
    result = transform(source, cloud, contract(label_columns=["count"]))
    assert read_output(cloud, result).column("count").to_pylist() == [1]


def test_duplicates_dropped_within_and_across_chunks(tmp_path: Path, cloud: Path) -> None:
    unique = [
        f"2024-02-01T00:{i // 60 % 60:02d}:{i % 60:02d},dev-{i % 5},{i % 97}.5,{i}" for i in range(2000)
    ]
    # Every row again, far apart (other chunks), and a few repeated right after themselves (same chunk).
    lines = unique + unique[::-1] + [unique[7], unique[7], unique[1999]]
    source = write_text(tmp_path / "dup.csv", "ts,device_id,temperature,count\n" + "\n".join(lines) + "\n")
    assert source.stat().st_size > 8 * SMALL_LIMITS.chunk_bytes  # many chunks

    result = transform(source, cloud, contract())

    assert result.rows_read == len(lines)
    assert result.duplicates_dropped == len(lines) - len(unique)
    assert result.rows_written == len(unique)
    counts = read_output(cloud, result).column("count").to_pylist()
    assert counts == list(range(2000))  # first occurrences kept, in input order
    assert result.dedupe_complete


def test_rows_equal_after_cleaning_are_duplicates(tmp_path: Path, cloud: Path) -> None:
    # The same instant, written two ways, is the same row.
    source = write_text(
        tmp_path / "same.csv",
        "ts,device_id,temperature,count\n2024-01-01T01:00:00+01:00,a,1.0,1\n2024-01-01T00:00:00Z,a,1,1\n",
    )
    result = transform(source, cloud, contract())
    assert (result.rows_written, result.duplicates_dropped) == (1, 1)


def test_near_duplicates_are_kept(tmp_path: Path, cloud: Path) -> None:
    source = write_text(
        tmp_path / "near.csv",
        "ts,device_id,temperature,count\n"
        "2024-01-01T00:00:00,a,1,1\n2024-01-01T00:00:00,a,1,\n2024-01-01T00:00:00,b,1,1\n"
        "2024-01-01T00:00:00,a,1.0000001,1\n2024-01-01T00:00:00,a,1,0\n",
    )
    result = transform(source, cloud, contract())
    assert (result.rows_written, result.duplicates_dropped) == (5, 0)


def test_quarantine_files_and_reasons(tmp_path: Path, cloud: Path) -> None:
    source = write_text(
        tmp_path / "q.csv",
        "ts,device_id,temperature,count\n2024-01-01,a,1,1\n2024-01-01,a,1\n2024-01-01,b,1,x\n",
    )
    result = transform(source, cloud, contract(), source_id="abc123")
    assert result.quarantine is not None
    assert result.quarantine.path == "_quarantine/sensors/abc123.parquet"
    assert result.quarantine.rows == 2
    reasons = json.loads((cloud / result.quarantine.reason_path).read_text())
    assert reasons["reasons"] == {"malformed_record": 1, "unparseable:count": 1}
    assert reasons["source_id"] == "abc123"
    assert reasons["kind"] == "rows"
    rows = read_quarantine(cloud, result)
    malformed = next(r for r in rows if r["_reason"].startswith("malformed_record"))
    assert malformed["_raw"] == "2024-01-01,a,1"
    bad = next(r for r in rows if r["_reason"] == "unparseable:count")
    # pyarrow does not number the malformed records it skips, so CSV rows count well-formed records.
    assert (bad["_source_row"], bad["device_id"], bad["count"]) == (2, "b", "x")


def test_bad_values_in_typed_inputs(tmp_path: Path, cloud: Path) -> None:
    lines = [
        {"ts": "2024-01-01T00:00:00", "device_id": "a", "temperature": 1.5, "count": 1},
        {"ts": "2024-01-01T00:00:01", "device_id": "b", "temperature": "hot", "count": 2.5},
        {"ts": "2024-01-01T00:00:02", "device_id": "c", "temperature": {"nested": 1}, "count": 3},
        {"ts": "2024-02-30T00:00:00", "device_id": "d", "temperature": 1, "count": 4},
        {"ts": "2024-01-01T00:00:04", "device_id": "e", "temperature": 2, "count": 99999999999999999999},
    ]
    source = write_text(tmp_path / "t.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    result = transform(source, cloud, contract())
    assert read_output(cloud, result).column("device_id").to_pylist() == ["a"]
    assert result.rows_quarantined_by_reason == {
        "unparseable:temperature": 2,
        "unparseable:ts": 1,
        "unparseable:count": 1,
    }
    by_device = {r["device_id"]: r for r in read_quarantine(cloud, result)}
    assert by_device["c"]["temperature"] == '{"nested":1}'
