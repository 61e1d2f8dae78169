"""ShareIngestor: finds complete files on the share and announces each (path, content) once.

Flow: a full walk at start (and every poll interval, or on inotify overflow), inotify hints in between;
every hint is checked against the filesystem, a candidate waits for its completion rule, is hashed, recorded
`seen`, handed to `emit`, and only then marked `announced`. A crash between emit and the mark re-announces it
after restart (at-least-once; downstream is idempotent by file id). Nothing on the share is ever written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import stat
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .catalog import Catalog
from .config import IngestConfig
from .records import FileReady, Refusal, iso_utc_from_ns
from .rules import Kind, Rules, display_path, format_of, is_within, path_problem
from .scanner import Cancelled, FileChanged, NotRegularFile, ScanResult, ShareFS, Signature
from .watcher import (
    ChangeSource,
    FolderAppeared,
    FolderGone,
    Hint,
    InotifyWatcher,
    PathChanged,
    PathGone,
    Rescan,
    WatchLimitReached,
    filesystem_type,
    is_network_filesystem,
)

log = logging.getLogger(__name__)

Emit = Callable[[FileReady], Awaitable[None]]
OnRefused = Callable[[Refusal], Awaitable[None]]
Mode = Literal["inotify", "poll"]


@dataclass(slots=True)
class IngestStats:
    mode: str = "not started"
    announced: int = 0
    unchanged: int = 0
    """Files re-read after a metadata change whose content had already been announced under that path."""
    full_scans: int = 0
    """Full walks of the share completed."""
    overflows: int = 0
    scan_errors: int = 0
    emit_failures: int = 0
    pending: int = 0
    refused: int = 0
    share_problem: str | None = None


@dataclass(slots=True)
class _Pending:
    signature: Signature | None
    since: float
    due: float | None
    retry: bool = False
    """Complete but not announced (unreadable, or emit failed): wait for `due` unless the file changes."""


class ShareIngestor:
    """Watch `share` (read-only) and emit a FileReady for each complete file not yet in `catalog`.

    `clock` is monotonic seconds (stability timing). `change_source` replaces inotify (tests, or another
    notification mechanism); with it the ingestor behaves as in inotify mode.
    """

    def __init__(
        self,
        share: Path,
        config: IngestConfig,
        catalog: Catalog,
        clock: Callable[[], float] = time.monotonic,
        *,
        change_source: ChangeSource | None = None,
    ) -> None:
        self._share = share
        self._config = config
        self._catalog = catalog
        self._clock = clock
        self._injected_source = change_source
        self._rules = Rules(config)
        self._fs = ShareFS(share, config, self._rules)
        self._source: ChangeSource | None = None
        self._mode: Mode = "poll"
        self._pending: dict[str, _Pending] = {}
        self._finished: dict[str, tuple[int, int] | None] = {}
        self._refused: dict[str, Refusal] = {}
        self._hints: deque[Hint] = deque()
        self._wakeup = asyncio.Event()
        self._cancel = threading.Event()
        self._rescan_reason: str | None = None
        self._stats = IngestStats()
        self._emit: Emit | None = None
        self._on_refused: OnRefused | None = None

    # ---- what the caller can report -------------------------------------------------------------------

    @property
    def refused(self) -> list[Refusal]:
        """Paths refused now, with reasons (for reported properties); each was also passed to on_refused."""
        return sorted(self._refused.values(), key=lambda r: r.path)

    @property
    def stats(self) -> IngestStats:
        snapshot = IngestStats(**asdict(self._stats))
        snapshot.pending = len(self._pending)
        snapshot.refused = len(self._refused)
        return snapshot

    # ---- the loop -------------------------------------------------------------------------------------

    def file_ready(self, rel: str, sha256: str, size: int, mtime_ns: int) -> FileReady:
        """The announcement for one file, as the configured rules name it (also for re-announcements)."""
        fmt = format_of(rel)
        return FileReady(
            file_id=sha256,
            path=rel,
            size=size,
            mtime=iso_utc_from_ns(mtime_ns),
            format=fmt.name,
            compression=fmt.compression,
            dataset=self._rules.dataset_for(rel),
        )

    async def run(self, stop: asyncio.Event, emit: Emit, on_refused: OnRefused | None = None) -> None:
        """Until `stop` is set. An emit that raises is retried after `retry_seconds`."""
        self._emit, self._on_refused = emit, on_refused
        self._cancel.clear()
        canceller = asyncio.create_task(self._cancel_on(stop))
        try:
            await self._start_source()
            next_full_scan = self._clock()
            while not stop.is_set():
                if self._rescan_reason is not None or self._clock() >= next_full_scan:
                    await self._full_scan()
                    next_full_scan = self._clock() + self._full_scan_interval()
                await self._drain_hints()
                await self._process_due()
                wake = min(next_full_scan, self._earliest_due())
                await self._wait(stop, wake - self._clock())
        finally:
            canceller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await canceller
            await self._stop_source()

    async def _cancel_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        # Abandons walks and hashing in worker threads; an emit in progress is left to finish.
        self._cancel.set()

    def _full_scan_interval(self) -> float:
        if self._stats.share_problem is not None or self._mode == "poll":
            return self._config.poll_interval_seconds
        return self._config.rescan_interval_seconds or math.inf

    def _choose_mode(self) -> Mode:
        if self._injected_source is not None or self._config.mode == "inotify":
            return "inotify"
        if self._config.mode == "poll":
            return "poll"
        fstype = filesystem_type(self._share)
        if is_network_filesystem(fstype):
            log.info("share %s is on %s (no inotify events there): polling", self._share, fstype)
            return "poll"
        return "inotify"

    async def _start_source(self) -> None:
        self._mode = self._choose_mode()
        if self._mode == "inotify":
            source = self._injected_source or InotifyWatcher(self._share)
            try:
                source.start(self._hint)
            except WatchLimitReached:
                if self._config.mode != "auto":
                    raise
                log.warning("inotify unavailable; polling every %ss", self._config.poll_interval_seconds)
                self._mode = "poll"
            else:
                self._source = source
        self._stats.mode = self._mode

    async def _stop_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            await source.aclose()

    def _hint(self, hint: Hint) -> None:
        self._hints.append(hint)
        self._wakeup.set()

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        if self._hints or stop.is_set() or self._rescan_reason is not None or seconds <= 0:
            return
        self._wakeup.clear()
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self._wakeup.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=None if math.isinf(seconds) else seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _earliest_due(self) -> float:
        return min((p.due for p in self._pending.values() if p.due is not None), default=math.inf)

    # ---- scans ----------------------------------------------------------------------------------------

    async def _walk(self, top: str) -> ScanResult | None:
        source = self._source
        on_folder = source.watch_folder if source is not None else None
        try:
            return await asyncio.to_thread(self._fs.walk, top, on_folder, self._cancel)
        except WatchLimitReached as exc:
            if self._config.mode != "auto":
                raise
            log.warning("%s; falling back to polling every %ss", exc, self._config.poll_interval_seconds)
            await self._stop_source()
            self._mode = self._stats.mode = "poll"
            self._rescan_reason = "fell back to polling"
            return None
        except Cancelled:
            return None

    async def _full_scan(self) -> None:
        reason, self._rescan_reason = self._rescan_reason, None
        if reason is not None:
            log.info("full rescan: %s", reason)
        try:
            result = await self._walk("")
        except OSError as exc:
            self._stats.scan_errors += 1
            problem = f"share unavailable: {exc.strerror or exc}"
            if self._stats.share_problem != problem:
                log.error("%s (%s)", problem, self._share)
            self._stats.share_problem = problem
            return
        self._stats.share_problem = None
        if result is not None:
            await self._apply_scan(result, top="")
            self._stats.full_scans += 1

    async def _scan_folder(self, rel: str) -> None:
        if any(self._rules.is_hidden(part) for part in rel.split("/")):
            return
        problem = path_problem(rel, self._config.max_path_bytes)
        if problem is not None:
            await self._refuse(rel, problem)
            return
        try:
            result = await self._walk(rel)
        except FileNotFoundError:
            return
        except OSError as exc:
            await self._refuse(rel, f"cannot open folder: {exc.strerror}")
            return
        if result is not None:
            await self._apply_scan(result, top=rel)

    async def _apply_scan(self, result: ScanResult, top: str) -> None:
        present = {rel for rel, _ in result.files}
        refused_now = {rel for rel, _ in result.refusals}
        # What the walk no longer sees is gone (or fixed); what it refuses again keeps its refusal silently.
        for rel in [r for r in self._pending if is_within(r, top) and r not in present]:
            del self._pending[rel]
        for rel in [r for r in self._refused if is_within(r, top) and r not in present | refused_now]:
            del self._refused[rel]
        for rel, reason in result.refusals:
            await self._refuse(rel, reason)
        for rel, signature in result.files:
            if self._cancel.is_set():
                return
            await self._consider(rel, signature)

    # ---- hints ----------------------------------------------------------------------------------------

    async def _drain_hints(self) -> None:
        changed: dict[str, None] = {}
        while self._hints:
            hint = self._hints.popleft()
            if isinstance(hint, Rescan):
                self._stats.overflows += "overflow" in hint.reason
                self._rescan_reason = hint.reason
            elif isinstance(hint, FolderAppeared):
                await self._scan_folder(hint.rel)
            elif isinstance(hint, FolderGone):
                self._forget_under(hint.rel)
            elif isinstance(hint, PathGone):
                self._forget(hint.rel)
                changed.pop(hint.rel, None)
            elif isinstance(hint, PathChanged):
                changed[hint.rel] = None
        if self._rescan_reason is not None:
            return  # the rescan about to run covers them
        for rel in changed:
            await self._consider(rel)

    async def _process_due(self) -> None:
        now = self._clock()
        for rel in [r for r, p in self._pending.items() if p.due is not None and p.due <= now]:
            if self._cancel.is_set():
                return
            pending = self._pending.get(rel)
            if pending is not None:
                pending.due = None
                await self._consider(rel)

    def _forget(self, rel: str) -> None:
        self._pending.pop(rel, None)
        self._refused.pop(rel, None)

    def _forget_under(self, folder: str) -> None:
        for rel in [r for r in self._pending if is_within(r, folder)]:
            del self._pending[rel]
        for rel in [r for r in self._refused if is_within(r, folder)]:
            del self._refused[rel]

    async def _refuse(self, rel: str, reason: str) -> None:
        self._pending.pop(rel, None)
        current = self._refused.get(rel)
        if current is not None and current.reason == reason:
            return
        refusal = Refusal(path=display_path(rel), reason=reason)
        self._refused[rel] = refusal
        log.warning("refused %s: %s", refusal.path, reason)
        if self._on_refused is not None:
            try:
                await self._on_refused(refusal)
            except Exception:
                # Reporting a refusal is best effort; it stays listed in `refused` either way.
                log.exception("reporting the refusal of %s failed", refusal.path)

    # ---- one path -------------------------------------------------------------------------------------

    async def _consider(self, rel: str, signature: Signature | None = None) -> None:
        problem = path_problem(rel, self._config.max_path_bytes)
        if problem is not None:
            await self._refuse(rel, problem)
            return
        kind = self._rules.classify(rel)
        if kind is Kind.MARKER:
            if self._config.completion == "marker":
                await self._consider(self._rules.marker_target(rel))
            return
        if kind is not Kind.CANDIDATE:
            self._forget(rel)
            return
        if signature is None:
            signature = await self._lstat_candidate(rel)
            if signature is None:
                return
        if self._already_announced(rel, signature):
            self._forget(rel)
            return
        pending = self._pending.get(rel)
        if (
            pending is not None
            and pending.retry
            and pending.signature == signature
            and pending.due is not None
            and pending.due > self._clock()
        ):
            return
        if await self._is_complete(rel, signature):
            await self._finish(rel, signature)

    async def _lstat_candidate(self, rel: str) -> Signature | None:
        try:
            st = await asyncio.to_thread(self._fs.lstat, rel)
        except FileNotFoundError:
            self._forget(rel)
            return None
        except OSError as exc:
            await self._refuse(rel, f"cannot stat: {exc.strerror}")
            return None
        if stat.S_ISDIR(st.st_mode):
            return None
        reason = self._fs.refusal_for(rel, st)
        if reason is not None:
            await self._refuse(rel, reason)
            return None
        return Signature.of(st)

    def _already_announced(self, rel: str, signature: Signature) -> bool:
        if rel not in self._finished:
            entry = self._catalog.latest(rel)
            done = entry is not None and entry.state == "announced"
            self._finished[rel] = (entry.size, entry.mtime_ns) if entry is not None and done else None
        return self._finished[rel] == (signature.size, signature.mtime_ns)

    def _wait_for(self, rel: str, signature: Signature | None, since: float, due: float | None) -> None:
        self._pending[rel] = _Pending(signature=signature, since=since, due=due)

    def _retry_later(self, rel: str, observed: Signature) -> None:
        now = self._clock()
        # `since` far enough back that an unchanged file counts as stable when the retry comes due.
        self._pending[rel] = _Pending(
            signature=observed,
            since=now - self._config.stable_seconds,
            due=now + self._config.retry_seconds,
            retry=True,
        )

    async def _is_complete(self, rel: str, signature: Signature) -> bool:
        now = self._clock()
        completion = self._config.completion
        if completion == "stable":
            pending = self._pending.get(rel)
            if pending is None or pending.signature != signature:
                self._wait_for(rel, signature, now, now + self._config.stable_seconds)
                return False
            if now - pending.since < self._config.stable_seconds:
                pending.due = pending.since + self._config.stable_seconds
                return False
            return True
        if completion == "marker":
            try:
                marker = await asyncio.to_thread(self._fs.lstat, self._rules.marker_for(rel))
            except OSError:
                marker = None
            # A marker older than the data says nothing about this version of it: wait for a new marker.
            if marker is None or not stat.S_ISREG(marker.st_mode) or marker.st_mtime_ns < signature.mtime_ns:
                self._wait_for(rel, signature, now, None)
                return False
            return True
        return True  # rename: a file under its final name is complete by the writers' contract

    async def _finish(self, rel: str, observed: Signature) -> None:
        now = self._clock()
        try:
            sha256, signature = await asyncio.to_thread(self._fs.sha256, rel, self._cancel)
        except Cancelled:
            return
        except FileChanged:
            self._wait_for(rel, None, now, now + self._config.stable_seconds)
            return
        except NotRegularFile as exc:
            await self._refuse(rel, str(exc))
            return
        except FileNotFoundError:
            self._forget(rel)
            return
        except OSError as exc:
            retrying = f"retrying every {self._config.retry_seconds}s"
            await self._refuse(rel, f"cannot read: {exc.strerror} ({retrying})")
            self._retry_later(rel, observed)
            return
        if self._config.completion == "stable" and signature != observed:
            self._wait_for(rel, signature, now, now + self._config.stable_seconds)
            return

        self._pending.pop(rel, None)
        self._refused.pop(rel, None)
        previous = self._catalog.lookup(rel, sha256)
        self._catalog.record_seen(rel, sha256, signature.size, signature.mtime_ns)
        if previous is not None and previous.state == "announced":
            self._finished[rel] = (signature.size, signature.mtime_ns)
            self._stats.unchanged += 1
            return
        record = self.file_ready(rel, sha256, signature.size, signature.mtime_ns)
        assert self._emit is not None
        try:
            await self._emit(record)
        except Exception:
            log.exception("announcing %s failed; retry in %ss", display_path(rel), self._config.retry_seconds)
            self._stats.emit_failures += 1
            self._retry_later(rel, observed)
            return
        self._catalog.mark_announced(rel, sha256)
        self._finished[rel] = (signature.size, signature.mtime_ns)
        self._stats.announced += 1
        log.info("announced %s (%s, %d bytes)", display_path(rel), sha256[:12], signature.size)
