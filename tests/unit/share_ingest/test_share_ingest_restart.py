"""Durability: restarts, content changes, duplicates under other names, at-least-once around emit."""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import TYPE_CHECKING

import pytest

from share_ingest import SqliteCatalog

if TYPE_CHECKING:
    from tests.unit.share_ingest.conftest import Harness

pytestmark = pytest.mark.timeout(60)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mode", ["inotify", "poll"])
async def test_restart_announces_arrivals_while_down_and_nothing_twice(harness: Harness, mode: str) -> None:
    (harness.share / "p").mkdir()
    (harness.share / "p" / "first.csv").write_bytes(b"first\n")
    await harness.start(mode=mode)
    await harness.wait_until(lambda: harness.paths() == ["p/first.csv"])
    await harness.stop()

    (harness.share / "p" / "while_down.csv").write_bytes(b"down\n")
    (harness.share / "q").mkdir()
    (harness.share / "q" / "new_folder.csv").write_bytes(b"folder\n")
    harness.announced.clear()
    await harness.start(mode=mode)
    await harness.wait_until(lambda: len(harness.announced) == 2)
    await harness.settle()
    assert sorted(harness.paths()) == ["p/while_down.csv", "q/new_folder.csv"]

    await harness.stop()
    harness.announced.clear()
    ingestor = await harness.start(mode=mode)
    await harness.settle()
    assert harness.announced == []
    # Recognised from the catalog by size and mtime, without reading the files again.
    assert ingestor.stats.unchanged == 0
    assert ingestor.stats.pending == 0


async def test_content_change_is_a_new_file_and_a_touch_is_not(harness: Harness) -> None:
    path = harness.share / "x.csv"
    path.write_bytes(b"A\n")
    await harness.start(mode="inotify")
    await harness.wait_until(lambda: len(harness.announced) == 1)

    path.write_bytes(b"B, longer\n")
    await harness.wait_until(lambda: len(harness.announced) == 2)
    assert [r.file_id for r in harness.announced] == [sha(b"A\n"), sha(b"B, longer\n")]

    os.utime(path)  # metadata only: re-read, same content, not announced
    await harness.wait_until(lambda: harness.ingestor is not None and harness.ingestor.stats.unchanged == 1)

    path.write_bytes(b"A\n")  # back to content this path already announced: not again (catalog key path+sha)
    await harness.wait_until(lambda: harness.ingestor is not None and harness.ingestor.stats.unchanged == 2)
    await harness.settle()
    assert len(harness.announced) == 2


async def test_same_content_under_another_name_is_announced_with_the_same_id(harness: Harness) -> None:
    (harness.share / "a.csv").write_bytes(b"same\n")
    await harness.start(mode="inotify")
    await harness.wait_until(lambda: len(harness.announced) == 1)
    shutil.copy(harness.share / "a.csv", harness.share / "copy.csv")
    await harness.wait_until(lambda: len(harness.announced) == 2)
    assert harness.paths() == ["a.csv", "copy.csv"]
    assert harness.announced[0].file_id == harness.announced[1].file_id == sha(b"same\n")


async def test_failed_emit_is_retried_and_marked_only_after_success(harness: Harness) -> None:
    (harness.share / "x.csv").write_bytes(b"x\n")
    harness.emit_failures_left = 2
    ingestor = await harness.start(mode="inotify")
    await harness.wait_until(lambda: len(harness.announced) == 1)
    assert ingestor.stats.emit_failures == 2
    assert harness.catalog is not None
    entry = harness.catalog.latest("x.csv")
    assert entry is not None
    assert entry.state == "announced"
    await harness.settle()
    assert len(harness.announced) == 1


async def test_crash_between_emit_and_mark_reannounces_after_restart(harness: Harness) -> None:
    data = b"x\n"
    path = harness.share / "x.csv"
    path.write_bytes(data)
    st = path.stat()
    # What a crash after record_seen/emit and before mark_announced leaves behind.
    with SqliteCatalog(harness.database) as catalog:
        catalog.record_seen("x.csv", sha(data), st.st_size, st.st_mtime_ns)
    await harness.start(mode="poll")
    await harness.wait_until(lambda: len(harness.announced) == 1)
    assert harness.announced[0].file_id == sha(data)
    assert harness.catalog is not None
    entry = harness.catalog.latest("x.csv")
    assert entry is not None
    assert entry.state == "announced"


async def test_files_removed_before_completion_are_dropped(harness: Harness) -> None:
    ingestor = await harness.start(mode="poll", stable_seconds=1.0)
    (harness.share / "brief.csv").write_bytes(b"gone soon\n")
    await harness.wait_until(lambda: ingestor.stats.pending == 1)
    (harness.share / "brief.csv").unlink()
    await harness.wait_until(lambda: ingestor.stats.pending == 0)
    await harness.settle(1.2)
    assert harness.announced == []
