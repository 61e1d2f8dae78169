"""Micro-batching: announced batches wait in arrival order until enough rows are queued to fill one
model run (`max_rows`) or the oldest has waited `max_wait`, then leave together as one group.

Grouping uses the row counts the `batch-ready` messages announce, so nothing is read before a group
is formed; the group is then read, scored and written by one model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    batch_id: str
    body: dict[str, Any] = field(compare=False)
    rows: int
    arrived: float


class MicroBatcher:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._jobs: deque[Job] = deque()
        self._ids: set[str] = set()
        self._rows = 0
        self._wake = asyncio.Event()
        self._flushing = False

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self._ids

    @property
    def rows(self) -> int:
        return self._rows

    def now(self) -> float:
        return self._clock()

    def put(self, job: Job) -> bool:
        """Queue a job; False if that batch is already queued."""
        if job.batch_id in self._ids:
            return False
        self._jobs.append(job)
        self._ids.add(job.batch_id)
        self._rows += job.rows
        self._wake.set()
        return True

    def put_back(self, jobs: Iterable[Job]) -> None:
        """Return a group that could not be finished to the front, in its order."""
        for job in reversed(list(jobs)):
            if job.batch_id not in self._ids:
                self._jobs.appendleft(job)
                self._ids.add(job.batch_id)
                self._rows += job.rows
        self._wake.set()

    def flush_all(self) -> None:
        """From now on groups leave without waiting (stopping), and an empty queue returns []."""
        self._flushing = True
        self._wake.set()

    async def next_group(self, max_rows: int, max_wait_s: float) -> list[Job]:
        while not self._jobs:
            if self._flushing:
                return []
            self._wake.clear()
            await self._wake.wait()
        deadline = self._jobs[0].arrived + max_wait_s
        while self._rows < max_rows and not self._flushing:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        group: list[Job] = []
        rows = 0
        while self._jobs and (not group or rows < max_rows):
            job = self._jobs.popleft()
            self._ids.discard(job.batch_id)
            self._rows -= job.rows
            group.append(job)
            rows += job.rows
        return group
