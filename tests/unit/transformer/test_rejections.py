from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from tests.unit.transformer.kit import (
    SMALL_LIMITS,
    all_files,
    contract,
    read_output,
    read_quarantine,
    transform,
    write_text,
)
from transformer import FileRejection, RejectReason, quarantine_file

GOOD_BODY = "".join(f"2024-01-01T00:00:{i:02d},d,1,{i}\n" for i in range(60))
GOOD_CSV = "ts,device_id,temperature,count\n" + GOOD_BODY


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


def make_whitespace(path: Path) -> None:
    path.write_bytes(b"\n\n   \n")


def make_garbage(path: Path) -> None:
    path.write_bytes(random.Random(4).randbytes(50_000))


def make_latin1(path: Path) -> None:
    path.write_bytes(GOOD_CSV.encode() + "2024-01-01T00:01:00,caf\u00e9,1,1\n".encode("latin-1"))


def make_huge_line(path: Path) -> None:
    path.write_text(GOOD_CSV + "2024-01-01T00:02:00," + "x" * (SMALL_LIMITS.max_line_bytes + 10) + ",1,1\n")


def make_truncated_gzip(path: Path) -> None:
    data = gzip.compress((GOOD_CSV * 200).encode())
    path.write_bytes(data[: len(data) * 2 // 3])


def make_unclosed_quote(path: Path) -> None:
    path.write_text(GOOD_CSV + '2024-01-01T00:03:00,"never closed,1,1\n' + GOOD_BODY * 5)


CASES = [
    ("empty.csv", make_empty, RejectReason.EMPTY),
    ("blank.jsonl", make_whitespace, RejectReason.EMPTY),
    ("garbage.csv", make_garbage, RejectReason.BINARY),
    ("latin1.csv", make_latin1, RejectReason.ENCODING),
    ("huge.csv", make_huge_line, RejectReason.LINE_TOO_LONG),
    ("cut.csv.gz", make_truncated_gzip, RejectReason.CORRUPT_COMPRESSION),
    ("garbage.parquet", make_garbage, RejectReason.MALFORMED),
    ("cut.parquet.gz", make_truncated_gzip, RejectReason.CORRUPT_COMPRESSION),
]


@pytest.mark.parametrize(("name", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_unreadable_files_are_rejected_whole(
    tmp_path: Path, cloud: Path, name: str, make: object, reason: RejectReason
) -> None:
    source = tmp_path / name
    make(source)  # type: ignore[operator]
    result = transform(source, cloud, contract(), scratch_dir=tmp_path)
    assert result.rejection is not None, result
    assert result.rejection.reason is reason
    assert result.rejection.detail
    assert result.batches == ()
    # Nothing half-written stays behind: not even the good rows read before the problem showed.
    assert all_files(cloud) == []


def test_an_unclosed_quote_costs_one_record_not_the_file(tmp_path: Path, cloud: Path) -> None:
    source = tmp_path / "quote.csv"
    make_unclosed_quote(source)
    result = transform(source, cloud, contract())
    assert result.rejection is None
    assert result.rows_quarantined_by_reason == {"malformed_record": 1}
    assert result.rows_written == 60  # the repeats of GOOD_BODY are duplicates


def test_latin1_is_fine_when_the_contract_says_so(tmp_path: Path, cloud: Path) -> None:
    source = tmp_path / "latin1.csv"
    make_latin1(source)
    result = transform(source, cloud, contract(encoding="latin-1"))
    assert result.rejection is None
    assert "caf\u00e9" in read_output(cloud, result).column("device_id").to_pylist()


def test_malformed_json_lines_are_quarantined_and_good_rows_kept(tmp_path: Path, cloud: Path) -> None:
    good = [
        {"ts": f"2024-01-01T00:00:{i:02d}", "device_id": "d", "temperature": 1.5, "count": i}
        for i in range(40)
    ]
    lines = [json.dumps(x) for x in good]
    lines.insert(5, "{not json")
    lines.insert(20, "[1, 2, 3]")
    lines.insert(30, "")
    lines.insert(31, '{"ts": "2024-01-01T00:00:00", "device_id": "d", "temperature": 1.5, "count": 0')
    source = write_text(tmp_path / "mixed.jsonl", "\n".join(lines) + "\n")

    result = transform(source, cloud, contract())

    assert result.rejection is None
    assert result.rows_written == len(good)
    assert read_output(cloud, result).column("count").to_pylist() == list(range(40))
    assert result.rows_quarantined_by_reason == {"malformed_json": 3}
    quarantined = read_quarantine(cloud, result)
    assert sorted(r["_source_row"] for r in quarantined) == [6, 21, 32]
    assert {r["_raw"] for r in quarantined} == {lines[5], lines[20], lines[31]}


def test_a_file_of_only_malformed_records_is_rejected(tmp_path: Path, cloud: Path) -> None:
    source = write_text(tmp_path / "junk.jsonl", "nope\n{also nope\n")
    result = transform(source, cloud, contract())
    assert result.rejection is not None
    assert result.rejection.reason is RejectReason.MALFORMED
    assert all_files(cloud) == []


def test_quarantine_file_copies_whole_file_with_reason_and_is_idempotent(tmp_path: Path, cloud: Path) -> None:
    source = tmp_path / "garbage.csv"
    make_garbage(source)
    result = transform(source, cloud, contract(), source_id="0123abcd")
    assert result.rejection == FileRejection(
        RejectReason.BINARY, result.rejection.detail if result.rejection else ""
    )
    assert result.rejection is not None

    output = quarantine_file(
        source,
        source_id="0123abcd",
        dataset="sensors",
        cloud_share=cloud,
        reason=result.rejection.reason.value,
        detail=result.rejection.detail,
        original_name="site-a/garbage.csv",
    )
    assert output.kind == "file"
    assert output.path == "_quarantine/sensors/0123abcd/garbage.csv"
    assert (cloud / output.path).read_bytes() == source.read_bytes()
    reason = json.loads((cloud / output.reason_path).read_text())
    assert reason["reason"] == "binary"
    assert reason["original_name"] == "site-a/garbage.csv"
    assert reason["bytes"] == source.stat().st_size
    assert not output.already_present

    before = {p: (cloud / p).stat().st_mtime_ns for p in all_files(cloud)}
    again = quarantine_file(
        source, source_id="0123abcd", dataset="sensors", cloud_share=cloud, reason="binary", detail="x"
    )
    assert again.already_present
    assert {p: (cloud / p).stat().st_mtime_ns for p in all_files(cloud)} == before


@pytest.mark.parametrize("bad", ["../escape", ".hidden", "a/b", ""])
def test_unsafe_names_are_refused(tmp_path: Path, cloud: Path, bad: str) -> None:
    source = write_text(tmp_path / "x.csv", GOOD_CSV)
    with pytest.raises(ValueError, match="safe path segment"):
        transform(source, cloud, contract(), source_id=bad)
