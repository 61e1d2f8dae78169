from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.unit.transformer.kit import SMALL_LIMITS, contract, read_output, transform
from transformer import ColumnType, FileFormat, infer_contract

UTC = dt.UTC
ROWS = [
    {
        "ts": f"2024-05-0{1 + i % 3}T{i % 24:02d}:{i % 60:02d}:00",
        "device_id": f"dev-{i % 7}",
        "temperature": round(20 + i * 0.01, 2),
        "count": i,
    }
    for i in range(3000)
]


def expected_rows() -> list[dict[str, object]]:
    return [
        {
            "ts": dt.datetime.fromisoformat(r["ts"]).replace(tzinfo=UTC),  # type: ignore[arg-type]
            "device_id": r["device_id"],
            "temperature": r["temperature"],
            "count": r["count"],
        }
        for r in ROWS
    ]


def as_csv() -> bytes:
    lines = ["ts,device_id,temperature,count"]
    lines += [f"{r['ts']},{r['device_id']},{r['temperature']},{r['count']}" for r in ROWS]
    return ("\n".join(lines) + "\n").encode()


def as_jsonl() -> bytes:
    return "".join(json.dumps(r) + "\n" for r in ROWS).encode()


def as_parquet() -> bytes:
    table = pa.Table.from_pylist(ROWS)
    table = table.set_column(0, "ts", table.column("ts").cast(pa.timestamp("ms")))
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=500)
    return sink.getvalue()


MAKERS = {FileFormat.CSV: as_csv, FileFormat.JSONL: as_jsonl, FileFormat.PARQUET: as_parquet}


def sort_key(row: dict[str, object]) -> int:
    value = row["count"]
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", list(FileFormat))
def test_every_format_plain_and_gzip(tmp_path: Path, cloud: Path, fmt: FileFormat, compressed: bool) -> None:
    data = MAKERS[fmt]()
    source = tmp_path / (f"input.{fmt.value}" + (".gz" if compressed else ""))
    source.write_bytes(gzip.compress(data) if compressed else data)

    result = transform(source, cloud, contract(), scratch_dir=tmp_path)

    assert result.rejection is None
    assert result.format is fmt
    assert result.rows_read == len(ROWS)
    assert result.rows_written == len(ROWS)
    assert result.rows_quarantined == 0
    assert result.quarantine is None
    assert sorted(read_output(cloud, result).to_pylist(), key=sort_key) == expected_rows()
    assert sorted({b.date for b in result.batches}) == ["2024-05-01", "2024-05-02", "2024-05-03"]
    # The CSV and JSON inputs span many chunks under SMALL_LIMITS: the chunking was exercised.
    assert len(data) > 5 * SMALL_LIMITS.chunk_bytes or fmt is FileFormat.PARQUET


def test_format_comes_from_the_declaration_over_the_name(tmp_path: Path, cloud: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(as_jsonl())
    result = transform(source, cloud, contract(), fmt="jsonl")
    assert result.rows_written == len(ROWS)


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path, cloud: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(gzip.compress(as_csv()))
    assert transform(source, cloud, contract()).rows_written == len(ROWS)


@pytest.mark.parametrize("fmt", list(FileFormat))
def test_inferred_contract_matches_explicit_output(tmp_path: Path, fmt: FileFormat) -> None:
    source = tmp_path / f"input.{fmt.value}"
    source.write_bytes(MAKERS[fmt]())

    inferred = infer_contract(source, limits=SMALL_LIMITS)
    assert inferred.timestamp_column == "ts"
    assert inferred.device_column == "device_id"
    types = {c.name: c.type for c in inferred.columns}
    # Integers are widened to float64 on inference so a float sensor starting with whole numbers fits.
    assert types == {
        "ts": ColumnType.TIMESTAMP,
        "device_id": ColumnType.STRING,
        "temperature": ColumnType.FLOAT64,
        "count": ColumnType.FLOAT64,
    }

    explicit_cloud, inferred_cloud = tmp_path / "explicit", tmp_path / "inferred"
    explicit = transform(source, explicit_cloud, contract())
    auto = transform(source, inferred_cloud, None)
    assert auto.contract_inferred
    assert not explicit.contract_inferred
    assert auto.contract == inferred
    assert [b.path for b in auto.batches] == [b.path for b in explicit.batches]
    left = read_output(explicit_cloud, explicit).to_pylist()
    right = read_output(inferred_cloud, auto).to_pylist()
    assert [(r["ts"], r["device_id"], r["temperature"], float(r["count"])) for r in left] == [
        (r["ts"], r["device_id"], r["temperature"], r["count"]) for r in right
    ]


def test_inference_tolerates_a_few_bad_values_in_the_first_file(tmp_path: Path) -> None:
    lines = ["time,sensor,value"] + [f"2024-01-01T00:00:{i % 60:02d},s1,{i}.5" for i in range(50)]
    lines[10] = "garbage,s1,oops"
    source = tmp_path / "first.csv"
    source.write_text("\n".join(lines) + "\n")
    inferred = infer_contract(source)
    assert inferred.timestamp_column == "time"
    assert inferred.device_column == "sensor"
    assert {c.name: c.type for c in inferred.columns}["value"] is ColumnType.FLOAT64


def test_inference_recognises_epoch_columns(tmp_path: Path, cloud: Path) -> None:
    source = tmp_path / "epoch.jsonl"
    source.write_text(
        "".join(json.dumps({"timestamp": 1_700_000_000_000 + i, "v": i}) + "\n" for i in range(10))
    )
    inferred = infer_contract(source)
    ts = next(c for c in inferred.columns if c.name == "timestamp")
    assert ts.epoch == "ms"
    result = transform(source, cloud, inferred)
    first = read_output(cloud, result).to_pylist()[0]["timestamp"]
    assert first == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_inference_without_a_timestamp_rejects_the_file(tmp_path: Path, cloud: Path) -> None:
    source = tmp_path / "no_time.csv"
    source.write_text("a,b\n1,2\n3,4\n")
    result = transform(source, cloud, None)
    assert result.rejection is not None
    assert result.rejection.reason.value == "no_contract"
    assert list(cloud.iterdir()) == []
