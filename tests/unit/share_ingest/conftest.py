"""Shared fixtures for share-ingest: a share folder, a catalog, and an ingestor running in the background."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

MODULE_ROOT = Path(__file__).resolve().parents[3] / "modules" / "share-ingest"
if str(MODULE_ROOT) not in sys.path:
    sys.path.insert(0, str(MODULE_ROOT))

from share_ingest import (  # noqa: E402
    ChangeSource,
    FileReady,
    IngestConfig,
    Refusal,
    ShareIngestor,
    SqliteCatalog,
)

# Short windows keep the suite fast; every wait below is a deadline, never an expected duration.
FAST = {"stable_seconds": 0.3, "poll_interval_seconds": 0.1, "retry_seconds": 0.2}
DEADLINE = 10.0


class Harness:
    """One ingestor over `share`, run as a task; collects what it announces and refuses."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.share = base / "share"
        self.share.mkdir(exist_ok=True)
        self.database = base / "state" / "catalog.db"
        self.announced: list[FileReady] = []
        self.announced_at: list[float] = []
        self.refusals: list[Refusal] = []
        self.emit_failures_left = 0
        self.catalog: SqliteCatalog | None = None
        self.ingestor: ShareIngestor | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, change_source: ChangeSource | None = None, *, first_scan: bool = True, **config: Any
    ) -> ShareIngestor:
        settings = {**FAST, **config}
        self.catalog = SqliteCatalog(self.database)
        self.catalog.open()
        self.ingestor = ShareIngestor(
            self.share, IngestConfig(**settings), self.catalog, change_source=change_source
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.ingestor.run(self._stop, self._emit, self._on_refused))
        ingestor = self.ingestor
        if first_scan:
            await self.wait_until(lambda: ingestor.stats.full_scans >= 1)
        return ingestor

    async def _emit(self, record: FileReady) -> None:
        if self.emit_failures_left > 0:
            self.emit_failures_left -= 1
            raise ConnectionError("transport down")
        self.announced.append(record)
        self.announced_at.append(time.monotonic())

    async def _on_refused(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)

    async def stop(self) -> None:
        if self._task is not None and self._stop is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, DEADLINE)
            self._task = None
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None

    async def wait_until(self, predicate: Callable[[], bool], deadline: float = DEADLINE) -> None:
        end = time.monotonic() + deadline
        while not predicate():
            if self._task is not None and self._task.done():
                task, self._task = self._task, None
                task.result()  # surfaces the ingestor's exception
                raise AssertionError("ingestor stopped")
            if time.monotonic() > end:
                raise AssertionError(f"condition not met within {deadline}s")
            await asyncio.sleep(0.02)

    async def settle(self, seconds: float = 0.8) -> None:
        """Give the ingestor time to (wrongly) announce something; used before asserting it did not."""
        await asyncio.sleep(seconds)
        if self._task is not None and self._task.done():
            self._task.result()

    def paths(self) -> list[str]:
        return [r.path for r in self.announced]

    def refused_paths(self) -> dict[str, str]:
        return {r.path: r.reason for r in self.refusals}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        await h.stop()
