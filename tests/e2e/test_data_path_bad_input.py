"""Hostile input: empty, binary, wrongly encoded, corrupt and huge-lined files, a file still being written,
a symlink out of the share and hostile file names. Each ends as it should (a quarantine with its reason or a
refusal with its reason), the good data beside them lands exactly once, and nothing crashes."""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.datapath_kit import (
    DataGenerator,
    EdgesimRun,
    FilePlan,
    assert_clean_run,
    check_cloud_share_uploaded,
    check_exactly_once,
    describe,
    make_test_manifest,
    write_atomically,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SEED = int(os.environ.get("EDGELOOP_TEST_SEED", "5"))
HEADER = "timestamp,device_id,temperature,vibration,pressure\n"
STABLE_SECONDS = 2


def _row(device: str, second: int, value: float) -> str:
    return f"2026-11-05T00:{second // 60:02d}:{second % 60:02d}Z,{device},{value},1.5,100.25\n"


def _micros(second: int) -> int:
    return (1_793_836_800 + second) * 1_000_000  # 2026-11-05T00:00:00Z


def _grow(path: Path, lines: list[str], every_s: float, done: threading.Event) -> None:
    """Appends to the file under its final name, as a slow writer on a share does."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write(HEADER)
        handle.flush()
        for line in lines:
            time.sleep(every_s)
            handle.write(line)
            handle.flush()
    done.set()


def test_bad_input_is_quarantined_or_refused_and_nothing_crashes(tmp_path: Path) -> None:
    print(f"seed {SEED} (EDGELOOP_TEST_SEED reproduces)")
    rng = random.Random(SEED)
    data = tmp_path / "data"
    expected = DataGenerator(SEED).write(
        data, [FilePlan("sensors", "csv", 2_000, rejected=4), FilePlan("lab", "jsonl", 100)]
    )
    bad = {
        "empty.csv": (b"", "empty"),
        "garbage.csv": (bytes(rng.randrange(256) for _ in range(4096)) + b"\x00", "binary"),
        "latin1.csv": ((HEADER + _row("Zürich-1", 1, 20.5)).encode("latin-1"), "encoding"),
        "huge-line.csv": (f"{HEADER}2026-11-05T00:00:00Z,{'x' * 300_000}\n".encode(), "line_too_long"),
        "broken.csv.gz": (gzip.compress(HEADER.encode() * 50)[:60] + b"\xde\xad" * 40, "corrupt_compression"),
    }
    for name, (content, reason) in bad.items():
        write_atomically(data / "sensors" / name, content)
        expected.expect_rejected_file("sensors", name, reason, f"sensors/{name}")

    manifest = make_test_manifest(tmp_path, share_ingest={"stable_seconds": STABLE_SECONDS})
    run = EdgesimRun.start(tmp_path / "run", manifest, data, timeout_s=200, idle_seconds=6)
    control = run.wait_for("the control API", run.control)
    run.wait_for("the data copied", lambda: control.status()["data_copied"])
    share = run.share()
    sensors = share / "sensors"

    # A file still being written: appended for three times stable_seconds, then complete.
    growing = sensors / "growing.csv"
    grow_lines = [_row("grow-dev", second, round(20 + second / 7, 3)) for second in range(16)]
    grown = threading.Event()
    writer = threading.Thread(target=_grow, args=(growing, grow_lines, 0.4, grown), daemon=True)
    writer.start()
    for second in range(16):
        expected.good["sensors"][("grow-dev", _micros(second))] = (round(20 + second / 7, 3), 1.5, 100.25)

    # Hostile names: refused with a reason, never announced.
    hostile = [b"new\nline.csv", b"bell\x07.csv", b"caf\xe9-latin1-name.csv"]
    for raw_name in hostile:
        target = os.path.join(os.fsencode(sensors), raw_name)
        with open(target, "wb") as handle:
            handle.write((HEADER + _row("never-announced", 1, 1.0)).encode())
    outside = tmp_path / "outside.csv"
    outside.write_text(HEADER + _row("outside-dev", 1, 1.0), encoding="utf-8")
    os.symlink(outside, sensors / "escape.csv")
    # A long name (under the 255-byte component limit) is fine: its rows land like any other.
    long_name = "long-" + "n" * 230 + ".csv"
    write_atomically(sensors / long_name, (HEADER + _row("long-dev", 7, 33.25)).encode())
    expected.good["sensors"][("long-dev", _micros(7))] = (33.25, 1.5, 100.25)

    writer.join(timeout=30)
    assert grown.is_set()
    report = run.finish(within_s=220)
    assert_clean_run(report, run)
    check_exactly_once(run.run_dir, expected)
    check_cloud_share_uploaded(run.run_dir)

    # The growing file was announced once, complete (a partial announcement would have landed its rows
    # under another content id, which check_exactly_once reports as rows landing twice).
    log = (run.run_dir / "logs" / "share-ingest.log").read_text(encoding="utf-8")
    announced = [
        json.loads(line)
        for line in log.splitlines()
        if line.startswith("{") and '"logger": "edgeloop.share-ingest"' in line
    ]
    paths = [e["msg"].removeprefix("announced ") for e in announced if e["msg"].startswith("announced ")]
    assert paths.count("sensors/growing.csv") == 1, paths
    assert not [p for p in paths if "never" in p or "escape" in p or "caf" in p or "bell" in p or "new" in p]

    refused = report["twins"]["share-ingest"]["reported"].get("refused") or []
    reasons = {entry["path"]: entry["reason"] for entry in refused}
    assert len(reasons) == 4, describe(report, run) + json.dumps(refused, indent=1)
    joined = json.dumps(refused)
    for fragment in ("U+000A", "U+0007", "not valid UTF-8", "symbolic link leading out of the share"):
        assert fragment in joined, (fragment, refused)
    assert report["modules"]["share-ingest"]["counters"]["refused"] == 4
    transformer = report["modules"]["transformer"]["counters"]
    assert transformer["quarantined_files"] == len(bad), describe(report, run)
