"""Watching the share in inotify and poll mode: new files, new folders, slow writers, marker and rename rules.

In inotify mode the periodic safety rescan is off by default (600 s), so anything found after the first scan
was found through inotify events (or the rescan of a new folder).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.unit.share_ingest.conftest import Harness

pytestmark = pytest.mark.timeout(60)

MODES = ["inotify", "poll"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SlowWriter(threading.Thread):
    """Appends `chunks` pieces to `path`, pausing `pause` s between them (shorter than the stable window)."""

    def __init__(self, path: Path, chunks: int = 12, pause: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.path, self.chunks, self.pause = path, chunks, pause
        self.content = b"".join(f"row,{i},{'x' * 200}\n".encode() for i in range(chunks))
        self.finished_at: float | None = None

    def run(self) -> None:
        piece = len(self.content) // self.chunks
        with open(self.path, "wb") as stream:
            for i in range(self.chunks):
                end = len(self.content) if i == self.chunks - 1 else (i + 1) * piece
                stream.write(self.content[i * piece : end])
                stream.flush()
                time.sleep(self.pause)
        self.finished_at = time.monotonic()


@pytest.mark.parametrize("mode", MODES)
async def test_new_file_is_announced_once_with_its_metadata(harness: Harness, mode: str) -> None:
    (harness.share / "plant1").mkdir()
    ingestor = await harness.start(mode=mode)
    assert ingestor.stats.mode == mode
    data = b"ts,device,value\n1,a,2\n"
    (harness.share / "plant1" / "data.csv").write_bytes(data)
    (harness.share / "root.jsonl.gz").write_bytes(b"\x1f\x8b")
    await harness.wait_until(lambda: len(harness.announced) == 2)
    await harness.settle()
    by_path = {r.path: r for r in harness.announced}
    assert sorted(by_path) == ["plant1/data.csv", "root.jsonl.gz"]
    record = by_path["plant1/data.csv"]
    st = os.stat(harness.share / "plant1" / "data.csv")
    assert record.file_id == sha(data)
    assert record.size == len(data)
    assert record.format == "csv"
    assert record.compression is None
    assert record.dataset == "plant1"
    assert record.mtime.endswith("Z")
    assert record.mtime.startswith(time.strftime("%Y-", time.gmtime(st.st_mtime)))
    root = by_path["root.jsonl.gz"]
    assert (root.format, root.compression, root.dataset) == ("jsonl", "gzip", "default")
    assert len(harness.announced) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_nested_new_folders_are_watched_and_rescanned(harness: Harness, mode: str) -> None:
    await harness.start(mode=mode)
    # Created in one go: the file exists before any watch on its folder can, so only the rescan finds it.
    deep = harness.share / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "early.csv").write_bytes(b"early\n")
    await harness.wait_until(lambda: "a/b/c/early.csv" in harness.paths())
    await asyncio.sleep(0.2)
    (deep / "later.csv").write_bytes(b"later\n")
    (deep / "d").mkdir()
    (deep / "d" / "deeper.csv").write_bytes(b"deeper\n")
    await harness.wait_until(lambda: len(harness.announced) == 3)
    await harness.settle()
    assert sorted(harness.paths()) == ["a/b/c/d/deeper.csv", "a/b/c/early.csv", "a/b/c/later.csv"]
    assert {r.dataset for r in harness.announced} == {"a"}


@pytest.mark.parametrize("mode", MODES)
async def test_slow_writer_is_announced_only_after_it_stops_and_once(harness: Harness, mode: str) -> None:
    await harness.start(mode=mode)
    writer = SlowWriter(harness.share / "slow.csv")
    writer.start()
    await harness.wait_until(lambda: len(harness.announced) == 1)
    await asyncio.to_thread(writer.join)
    await harness.settle()
    assert len(harness.announced) == 1
    assert writer.finished_at is not None
    assert harness.announced_at[0] >= writer.finished_at
    assert harness.announced[0].file_id == sha(writer.content)
    assert harness.announced[0].size == len(writer.content)


@pytest.mark.parametrize("mode", MODES)
async def test_stable_window_is_waited_out_even_after_the_writer_closed(harness: Harness, mode: str) -> None:
    await harness.start(mode=mode, stable_seconds=0.8)
    written_at = time.monotonic()
    (harness.share / "quick.csv").write_bytes(b"quick\n")  # closed at once: inotify sees CLOSE_WRITE
    await harness.wait_until(lambda: len(harness.announced) == 1)
    # A lower bound only (load can delay the announcement, never bring it forward).
    assert harness.announced_at[0] - written_at >= 0.8


@pytest.mark.parametrize("mode", MODES)
async def test_marker_rule(harness: Harness, mode: str) -> None:
    await harness.start(mode=mode, completion="marker")
    data = harness.share / "batch.csv"
    data.write_bytes(b"v1\n")
    await harness.settle()  # longer than stable_seconds: without a marker nothing is complete
    assert harness.announced == []
    (harness.share / "batch.csv.ready").touch()
    await harness.wait_until(lambda: len(harness.announced) == 1)
    assert harness.announced[0].file_id == sha(b"v1\n")

    # Rewritten under an old marker: not complete until the marker is renewed.
    time.sleep(0.01)
    data.write_bytes(b"v2 longer\n")
    os.utime(harness.share / "batch.csv.ready", ns=(1, data.stat().st_mtime_ns - 1_000_000))
    await harness.settle()
    assert len(harness.announced) == 1
    os.utime(harness.share / "batch.csv.ready")
    await harness.wait_until(lambda: len(harness.announced) == 2)
    await harness.settle()
    assert [r.file_id for r in harness.announced] == [sha(b"v1\n"), sha(b"v2 longer\n")]
    assert harness.paths() == ["batch.csv", "batch.csv"]  # the marker itself is never announced


@pytest.mark.parametrize("mode", MODES)
async def test_rename_rule(harness: Harness, mode: str) -> None:
    await harness.start(mode=mode, completion="rename")
    hidden_temp = harness.share / ".big.csv.tmp"
    partial = harness.share / "other.csv.partial"
    office = harness.share / "~$sheet.csv"
    writer = SlowWriter(hidden_temp, chunks=6)
    writer.start()
    partial.write_bytes(b"partial\n")
    office.write_bytes(b"lock\n")
    await asyncio.to_thread(writer.join)
    await harness.settle()
    assert harness.announced == []
    hidden_temp.rename(harness.share / "big.csv")
    partial.rename(harness.share / "other.csv")
    await harness.wait_until(lambda: len(harness.announced) == 2)
    await harness.settle()
    assert sorted(harness.paths()) == ["big.csv", "other.csv"]
    assert {r.path: r.file_id for r in harness.announced}["big.csv"] == sha(writer.content)


@pytest.mark.parametrize("mode", MODES)
async def test_folder_moved_in_from_outside(harness: Harness, mode: str) -> None:
    outside = harness.base / "outside" / "batch7"
    outside.mkdir(parents=True)
    (outside / "x.csv").write_bytes(b"x\n")
    (outside / "sub").mkdir()
    (outside / "sub" / "y.csv").write_bytes(b"y\n")
    await harness.start(mode=mode)
    shutil.move(outside, harness.share / "batch7")
    await harness.wait_until(lambda: len(harness.announced) == 2)
    (harness.share / "batch7" / "sub" / "z.csv").write_bytes(b"z\n")  # the moved folder is watched too
    await harness.wait_until(lambda: len(harness.announced) == 3)
    assert sorted(harness.paths()) == ["batch7/sub/y.csv", "batch7/sub/z.csv", "batch7/x.csv"]


async def test_auto_mode_uses_inotify_on_a_local_filesystem(harness: Harness) -> None:
    ingestor = await harness.start(mode="auto")
    assert ingestor.stats.mode == "inotify"


@pytest.mark.parametrize("mode", MODES)
async def test_include_exclude_and_dataset_mapping(harness: Harness, mode: str) -> None:
    await harness.start(
        mode=mode,
        include=["**/*.csv", "**/*.txt"],
        exclude=["archive/**"],
        datasets={"lineA/**": "line-a"},
        default_dataset="loose",
    )
    for rel in ["lineA/1.csv", "lineB/2.csv", "archive/old.csv", "3.csv", "notes.txt", "skip.bin", ".h.csv"]:
        path = harness.share / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
    await harness.wait_until(lambda: len(harness.announced) == 4)
    await harness.settle()
    assert {r.path: (r.dataset, r.format) for r in harness.announced} == {
        "lineA/1.csv": ("line-a", "csv"),
        "lineB/2.csv": ("lineB", "csv"),
        "3.csv": ("loose", "csv"),
        "notes.txt": ("loose", "unknown"),
    }
    assert harness.refusals == []  # excluded is not refused


async def test_stop_is_prompt_and_clean(harness: Harness) -> None:
    await harness.start(mode="inotify")
    (harness.share / "a.csv").write_bytes(b"a\n")
    await harness.stop()  # raises if run() does not return or raised
    assert harness.catalog is None
