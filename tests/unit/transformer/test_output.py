from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.unit.transformer.kit import SMALL_LIMITS, all_files, contract, read_output, transform, write_text
from transformer import Limits, schema_fingerprint
from transformer import writer as writer_module

SOURCE_ID = "9f" * 32


def many_days_csv(rows: int = 3000, days: int = 3) -> str:
    lines = ["ts,device_id,temperature,count"]
    for i in range(rows):
        moment = dt.datetime(2024, 4, 1) + dt.timedelta(days=i % days, seconds=i)
        lines.append(f"{moment.isoformat()},dev-{i % 4},{i % 50},{i}")
    lines.append("2024-04-01T00:00:00,dev-x,hot,1")  # one row for the quarantine
    return "\n".join(lines) + "\n"


def test_layout_parts_and_batch_metadata(tmp_path: Path, cloud: Path) -> None:
    source = write_text(tmp_path / "in.csv", many_days_csv())
    limits = Limits(**{**SMALL_LIMITS.__dict__, "rows_per_part": 400})
    result = transform(source, cloud, contract(), source_id=SOURCE_ID, limits=limits)

    per_date: dict[str, list[int]] = {}
    for batch in result.batches:
        per_date.setdefault(batch.date, []).append(batch.part)
        assert batch.path == f"sensors/date={batch.date}/{SOURCE_ID}-{batch.part:05d}.parquet"
        table = pq.read_table(cloud / batch.path)
        assert table.num_rows == batch.rows <= 400
        times = [t for t in table.column("ts").to_pylist() if t is not None]
        assert (min(times), max(times)) == (batch.min_timestamp, batch.max_timestamp)
        assert {t.date().isoformat() for t in times} == {batch.date}
        assert batch.schema_fingerprint == schema_fingerprint(table.schema)
        assert pq.ParquetFile(cloud / batch.path).metadata.row_group(0).column(0).compression == "ZSTD"
        assert table.schema.metadata[b"edgeloop.source_id"] == SOURCE_ID.encode()
    assert per_date == {d: [0, 1, 2] for d in ("2024-04-01", "2024-04-02", "2024-04-03")}
    assert sum(b.rows for b in result.batches) == result.rows_written == 3000
    assert result.time_range == (
        dt.datetime(2024, 4, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 4, 3, 0, 49, 59, tzinfo=dt.UTC),
    )
    assert result.quarantine is not None
    assert result.quarantine.path == f"_quarantine/sensors/{SOURCE_ID}.parquet"


def test_part_names_do_not_depend_on_chunking(tmp_path: Path) -> None:
    source = write_text(tmp_path / "in.csv", many_days_csv())
    small = Limits(**{**SMALL_LIMITS.__dict__, "rows_per_part": 300})
    large = Limits(
        max_memory_bytes=256 << 20, read_block_bytes=1 << 20, chunk_bytes=4 << 20, rows_per_part=300
    )
    a = transform(source, tmp_path / "a", contract(), limits=small)
    b = transform(source, tmp_path / "b", contract(), limits=large)
    assert [(x.path, x.rows) for x in a.batches] == [(x.path, x.rows) for x in b.batches]
    for x in a.batches:
        assert pq.read_table(tmp_path / "a" / x.path).equals(pq.read_table(tmp_path / "b" / x.path))


def test_second_run_writes_nothing_and_names_the_same_files(tmp_path: Path, cloud: Path) -> None:
    source = write_text(tmp_path / "in.csv", many_days_csv())
    first = transform(source, cloud, contract(), source_id=SOURCE_ID)
    assert not first.already_present
    snapshot = {p: os.stat(cloud / p).st_mtime_ns for p in all_files(cloud)}
    inodes = {p: os.stat(cloud / p).st_ino for p in all_files(cloud)}

    second = transform(source, cloud, contract(), source_id=SOURCE_ID)

    assert [b.path for b in second.batches] == [b.path for b in first.batches]
    assert all(b.already_present for b in second.batches)
    assert second.quarantine is not None
    assert second.quarantine.already_present
    assert second.already_present
    assert {p: os.stat(cloud / p).st_mtime_ns for p in all_files(cloud)} == snapshot
    assert {p: os.stat(cloud / p).st_ino for p in all_files(cloud)} == inodes


def test_no_temporary_files_are_left(tmp_path: Path, cloud: Path) -> None:
    source = write_text(tmp_path / "in.csv", many_days_csv())
    transform(source, cloud, contract())
    names = [p.name for p in cloud.rglob("*")]
    assert names
    assert not [n for n in names if n.startswith(".") or ".tmp-" in n]


def test_stale_temp_files_from_a_crash_are_removed(tmp_path: Path, cloud: Path) -> None:
    source = write_text(tmp_path / "in.csv", many_days_csv())
    partition = cloud / "sensors" / "date=2024-04-01"
    partition.mkdir(parents=True)
    stale = partition / f".{SOURCE_ID}-00000.parquet.tmp-deadbeef"
    stale.write_bytes(b"PAR1 half a file")
    quarantine_dir = cloud / "_quarantine" / "sensors"
    quarantine_dir.mkdir(parents=True)
    stale_q = quarantine_dir / f".{SOURCE_ID}.parquet.tmp-cafe"
    stale_q.write_bytes(b"junk")
    other = partition / f".{'ab' * 32}-00000.parquet.tmp-feed"  # another source's: not ours to touch
    other.write_bytes(b"x")

    result = transform(source, cloud, contract(), source_id=SOURCE_ID)

    assert result.stale_temps_removed == 2
    assert not stale.exists()
    assert not stale_q.exists()
    assert other.exists()
    assert read_output(cloud, result).num_rows == 3000


def test_a_crash_while_writing_publishes_nothing(
    tmp_path: Path, cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_text(tmp_path / "in.csv", many_days_csv())
    calls = {"n": 0}
    original = writer_module.PartitionedParquetWriter.write

    def failing_write(self: writer_module.PartitionedParquetWriter, table: object) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        original(self, table)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module.PartitionedParquetWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        transform(source, cloud, contract(), source_id=SOURCE_ID)
    assert [p for p in all_files(cloud) if not p.endswith("/")] == []

    monkeypatch.undo()
    result = transform(source, cloud, contract(), source_id=SOURCE_ID)
    assert result.rows_written == 3000
    assert not any(b.already_present for b in result.batches)


def test_existing_final_file_is_not_overwritten(tmp_path: Path, cloud: Path) -> None:
    source = write_text(tmp_path / "in.csv", "ts,device_id,temperature,count\n2024-04-01T00:00:00,a,1,1\n")
    final = cloud / "sensors" / "date=2024-04-01" / f"{SOURCE_ID}-00000.parquet"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"already uploaded by an earlier run")
    result = transform(source, cloud, contract(), source_id=SOURCE_ID)
    assert result.batches[0].already_present
    assert final.read_bytes() == b"already uploaded by an earlier run"


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        Limits(read_block_bytes=1 << 20, max_line_bytes=2 << 20)
    with pytest.raises(ValueError, match="more than half"):
        Limits(
            max_memory_bytes=32 << 20, read_block_bytes=256 << 10, chunk_bytes=2 << 20, max_line_bytes=1024
        )
    small = Limits(
        max_memory_bytes=64 << 20, read_block_bytes=64 << 10, chunk_bytes=1 << 20, max_line_bytes=1024
    )
    assert small.dedupe_capacity_rows == (32 << 20) // 32
