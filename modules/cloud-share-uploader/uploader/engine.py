"""The upload engine: the cloud share's files into Blob storage, exactly once, verified, resumable.

Pure logic over a `BlobStore`, an `UploadQueue`, a `Clock` and the share folder; the module's wiring
(messages, twin, metrics) calls `submit`, `scan`, `run` and reads `stats`.

How a file goes up: hash it (SHA-256 content id and MD5), skip it if the blob is already there with the same
MD5, else one Put Blob (small files) or staged blocks with deterministic ids (large files: after a restart,
blocks already staged are found in the uncommitted block list and not sent again), then verify size and MD5 of
what was committed before the queue calls it uploaded. Local files are deleted only from the queue's
`uploaded` rows and only while their size and mtime are still those that were uploaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from .blobstore import BlobProps, BlobStore, StorageUnavailable, StoreError
from .policy import (
    Backoff,
    Identity,
    TargetError,
    TokenBucket,
    UploadResult,
    block_id,
    covers,
    is_temporary,
    normalise_share_path,
    plan_blocks,
    resolve_target,
    select_expired,
    select_for_pressure,
)
from .queue import FileState, QueuedFile, UploadQueue
from .redact import redact, secrets_of
from .settings import UploaderSettings, UploadOrder

log = logging.getLogger(__name__)

# One pass takes at most this many due files; the loop comes straight back for more, in order.
MAX_FILES_PER_PASS = 256
HASH_CACHE_SIZE = 1024
# Rows of deleted files are kept this long (for diagnosis), then forgotten.
FORGET_AFTER_SECONDS = 7 * 24 * 3600


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (file mtimes are compared with it)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


class FileChanged(Exception):
    """The file changed while it was being read: it is not finished, try again later."""


@dataclass
class UploaderStats:
    uploaded_files: int = 0
    skipped_files: int = 0
    bytes_sent: int = 0
    blocks_staged: int = 0
    blocks_resumed: int = 0
    failures: int = 0
    deleted_files: int = 0
    offline: bool = False
    offline_until: float | None = None
    queue: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanReport:
    enqueued: list[str]
    unstable: int  # seen for the first time or changed since the last scan
    temporary: int
    unmapped: int  # no entry of storageContainersForUpload covers them


class _Hashes(NamedTuple):
    content_id: str
    md5: bytes
    size: int
    mtime_ns: int


class Uploader:
    def __init__(
        self,
        settings: UploaderSettings,
        *,
        share_root: Path,
        store: BlobStore,
        queue: UploadQueue,
        identity: Identity,
        clock: Clock | None = None,
        random_unit: Callable[[], float] = random.random,
        disk_usage: Callable[[Path], DiskUsage] | None = None,
        on_uploaded: Callable[[UploadResult], Awaitable[None]] | None = None,
        on_trouble: Callable[[str], None] | None = None,
    ) -> None:
        self._share = share_root
        self._store = store
        self._queue = queue
        self._identity = identity
        self._clock: Clock = clock or SystemClock()
        self._random_unit = random_unit
        self._disk_usage = disk_usage or _disk_usage
        self._on_uploaded = on_uploaded
        # "offline" when an outage begins, "retry" for every failed attempt that will be retried: the
        # module turns them into counters, so an operator sees an outage in the twin, not only in logs.
        self._on_trouble = on_trouble or (lambda kind: None)
        self._in_flight: set[str] = set()
        self._ready_containers: set[str] = set()
        self._previous_scan: dict[str, tuple[int, int]] = {}
        self._hash_cache: dict[str, _Hashes] = {}
        self._offline_until = 0.0
        self._offline_attempts = 0
        self._wakeup = asyncio.Event()
        self._stats = UploaderStats()
        self.settings = settings
        self._apply(settings)

    # ---- configuration ------------------------------------------------------------------------------------

    def _apply(self, settings: UploaderSettings) -> None:
        transfer = settings.transfer_properties
        self._backoff = Backoff(
            transfer.retry_initial_seconds, transfer.retry_max_seconds, jitter=transfer.retry_jitter
        )
        rate = transfer.max_bytes_per_second
        # One second's worth of burst: a larger request waits off its excess first, so no request is split and
        # the rate holds over any window longer than a second.
        self._bucket = TokenBucket(rate, rate) if rate else None
        secret = settings.device_to_cloud_upload_properties.cloud_storage_connection_string
        self._secrets = secrets_of(secret.get_secret_value()) if secret else []

    def replace_store(self, store: BlobStore) -> None:
        """A new credential means a new store; uploads in progress finish or fail on the old one."""
        self._store = store
        self._wakeup.set()

    def update_settings(self, settings: UploaderSettings) -> None:
        """A validated twin patch. A new connection string also needs a new store (the caller's job)."""
        self.settings = settings
        self._apply(settings)
        self._wakeup.set()

    # ---- intake -------------------------------------------------------------------------------------------

    def submit(self, rel_path: str) -> bool:
        """Queues a file a message said is complete (path relative to the share); True if newly queued."""
        path = normalise_share_path(rel_path)
        if is_temporary(path):
            log.warning("not queued (temporary name): %s", path)
            return False
        try:
            st = (self._share / path).stat()
        except FileNotFoundError:
            log.warning("not queued (no such file in the cloud share): %s", path)
            return False
        added = self._queue.enqueue(path, st.st_size, st.st_mtime_ns, self._clock.time())
        self._wakeup.set()
        return added

    async def scan(self) -> ScanReport:
        """Queues files that appeared in the share by any means, once they look finished.

        A file counts as finished when two consecutive scans saw it with the same size and mtime; temporary
        names are never taken. Files already uploaded with the same size and mtime are not queued again.
        """
        found = await asyncio.to_thread(_walk, self._share)
        mapping = self.settings.device_to_cloud_upload_properties.storage_containers_for_upload
        now = self._clock.time()
        enqueued: list[str] = []
        unstable = temporary = unmapped = 0
        current: dict[str, tuple[int, int]] = {}
        for path, size, mtime_ns in found:
            if is_temporary(path):
                temporary += 1
                continue
            current[path] = (size, mtime_ns)
            if self._previous_scan.get(path) != (size, mtime_ns):
                unstable += 1
                continue
            if not covers(mapping, path):
                unmapped += 1
                continue
            if self._queue.enqueue(path, size, mtime_ns, now):
                enqueued.append(path)
        self._previous_scan = current
        if enqueued:
            self._wakeup.set()
        return ScanReport(enqueued, unstable, temporary, unmapped)

    # ---- uploading ----------------------------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        return self._clock.time() < self._offline_until

    async def process_due(self, stop: asyncio.Event | None = None) -> list[UploadResult]:
        """Uploads every file that is due, `concurrency` at a time, in the configured order.

        Returns when the due files are done, storage went offline, or `stop` was set (files not started stay
        queued; a block upload interrupted between blocks resumes later).
        """
        results: list[UploadResult] = []
        if not self.settings.device_to_cloud_upload_properties.upload_on or self.offline:
            return results
        newest_first = (
            self.settings.device_to_cloud_upload_properties.upload_order is UploadOrder.NEWEST_FIRST
        )
        due = [
            f
            for f in self._queue.due(self._clock.time(), newest_first=newest_first, limit=MAX_FILES_PER_PASS)
            if f.path not in self._in_flight
        ]
        slots = asyncio.Semaphore(self.settings.transfer_properties.concurrency)

        async def one(queued: QueuedFile) -> None:
            try:
                async with slots:
                    if self.offline or (stop is not None and stop.is_set()):
                        return
                    result = await self._upload_claimed(queued, stop)
                    if result is not None:
                        results.append(result)
            finally:
                self._in_flight.discard(queued.path)

        async with asyncio.TaskGroup() as group:
            for queued in due:
                self._in_flight.add(queued.path)
                group.create_task(one(queued))
        return results

    async def _upload_claimed(self, queued: QueuedFile, stop: asyncio.Event | None) -> UploadResult | None:
        try:
            return await self._upload(queued, stop)
        except StorageUnavailable as error:
            self._go_offline(queued, error)
        except FileChanged as error:
            self._defer(queued.path, str(error))
        except (StoreError, TargetError, OSError, ValueError) as error:
            if isinstance(error, StoreError) and error.code == "ContainerNotFound":
                self._ready_containers.clear()  # deleted behind our back: create it again next time
            self._failed(queued, error)
        except Exception as error:
            # An error nobody foresaw must not stop the other uploads; it is logged whole and retried with
            # backoff.
            log.exception("unexpected error uploading %s", queued.path)
            self._failed(queued, error)
        return None

    async def _upload(self, queued: QueuedFile, stop: asyncio.Event | None) -> UploadResult | None:
        path = queued.path
        local = self._share / path
        try:
            st = local.stat()
        except FileNotFoundError:
            log.warning("queued file vanished before upload: %s", path)
            self._queue.mark_missing(path)
            return None
        if (st.st_size, st.st_mtime_ns) != (queued.size, queued.mtime_ns):
            raise FileChanged(f"{path} changed since it was queued")
        mapping = self.settings.device_to_cloud_upload_properties.storage_containers_for_upload
        target = resolve_target(mapping, self._identity, path)
        if target is None:
            raise TargetError(f"no storageContainersForUpload entry covers {path}")
        container, blob_name = target

        hashes = self._hash_cache.get(path)
        if hashes is None or (hashes.size, hashes.mtime_ns) != (queued.size, queued.mtime_ns):
            hashes = await asyncio.to_thread(_hash_file, local)
            if (hashes.size, hashes.mtime_ns) != (queued.size, queued.mtime_ns):
                raise FileChanged(f"{path} changed while it was read")
            if len(self._hash_cache) >= HASH_CACHE_SIZE:
                self._hash_cache.clear()
            # Kept until the upload succeeds, so retries while offline do not re-read large files.
            self._hash_cache[path] = hashes

        if container not in self._ready_containers:
            await self._store.ensure_container(container)
            self._ready_containers.add(container)

        existing = await self._store.get_properties(container, blob_name)
        if existing is not None and existing.md5 == hashes.md5 and existing.size == hashes.size:
            props, skipped = existing, True
        elif hashes.size <= self.settings.transfer_properties.single_put_max_bytes:
            data = await asyncio.to_thread(local.read_bytes)
            if hashlib.md5(data, usedforsecurity=False).digest() != hashes.md5:
                raise FileChanged(f"{path} changed while it was read")
            await self._throttle(len(data))
            props, skipped = await self._store.upload(container, blob_name, data, hashes.md5), False
            self._stats.bytes_sent += len(data)
        else:
            staged = await self._upload_blocks(local, container, blob_name, hashes, stop)
            if staged is None:
                return None
            props, skipped = staged, False
        self._verify(props, hashes, f"{container}/{blob_name}")

        result = UploadResult(
            path=path,
            container=container,
            blob_name=blob_name,
            etag=props.etag,
            md5=props.md5_base64,
            bytes=hashes.size,
            skipped=skipped,
        )
        self._queue.mark_uploaded(
            result,
            content_id=hashes.content_id,
            size=hashes.size,
            mtime_ns=hashes.mtime_ns,
            now=self._clock.time(),
        )
        self._hash_cache.pop(path, None)
        self._offline_attempts = 0
        if skipped:
            self._stats.skipped_files += 1
        else:
            self._stats.uploaded_files += 1
        log.info(
            "%s %s -> %s/%s (%d bytes)",
            "already there:" if skipped else "uploaded",
            path,
            container,
            blob_name,
            hashes.size,
        )
        await self._notify(result)
        if self.settings.device_to_cloud_upload_properties.delete_after_upload:
            self._delete_local(path, owner=True)
        return result

    async def _upload_blocks(
        self, local: Path, container: str, blob_name: str, hashes: _Hashes, stop: asyncio.Event | None
    ) -> BlobProps | None:
        plan = plan_blocks(hashes.size, self.settings.transfer_properties.block_size_bytes)
        already = await self._store.uncommitted_blocks(container, blob_name)
        whole = hashlib.md5(usedforsecurity=False)
        ids: list[str] = []
        for index, (offset, length) in enumerate(plan):
            if stop is not None and stop.is_set():
                return None
            data = await asyncio.to_thread(_read_range, local, offset, length)
            if len(data) != length:
                raise FileChanged(f"{local.name} shrank while it was read")
            whole.update(data)
            bid = block_id(hashes.content_id, index, hashlib.md5(data, usedforsecurity=False).digest())
            ids.append(bid)
            if already.get(bid) == length:
                self._stats.blocks_resumed += 1
                continue
            await self._throttle(length)
            await self._store.stage_block(container, blob_name, bid, data)
            self._stats.blocks_staged += 1
            self._stats.bytes_sent += length
        # What was staged must be the file that was hashed; otherwise committing would label other bytes.
        if whole.digest() != hashes.md5:
            raise FileChanged(f"{local.name} changed while it was uploaded")
        return await self._store.commit_blocks(container, blob_name, ids, hashes.md5)

    @staticmethod
    def _verify(props: BlobProps, hashes: _Hashes, where: str) -> None:
        if props.md5 != hashes.md5 or props.size != hashes.size:
            raise StoreError(
                f"{where}: stored blob does not match the file (size {props.size} vs {hashes.size}, "
                f"MD5 {props.md5_base64 or 'none'})",
                code="VerificationFailed",
            )

    async def _throttle(self, nbytes: int) -> None:
        if self._bucket is None:
            return
        wait = self._bucket.reserve(nbytes, self._clock.time())
        if wait > 0:
            await self._clock.sleep(wait)

    # ---- failure handling ---------------------------------------------------------------------------------

    def _go_offline(self, queued: QueuedFile, error: StorageUnavailable) -> None:
        message = redact(str(error), self._secrets)
        now = self._clock.time()
        # Several uploads in flight fail together when the uplink drops; that is one outage, one backoff step.
        if now >= self._offline_until:
            delay = self._backoff.delay(self._offline_attempts, self._random_unit())
            self._offline_attempts += 1
            self._offline_until = now + delay
            log.warning("storage unavailable, retrying in %.1fs: %s", delay, message)
            if self._offline_attempts == 1:
                self._on_trouble("offline")
        self._stats.failures += 1
        self._on_trouble("retry")
        self._queue.record_failure(queued.path, message, self._offline_until, count_attempt=False)

    def _failed(self, queued: QueuedFile, error: Exception) -> None:
        message = redact(f"{type(error).__name__}: {error}", self._secrets)
        delay = self._backoff.delay(queued.attempts, self._random_unit())
        attempts = self._queue.record_failure(
            queued.path, message, self._clock.time() + delay, count_attempt=True
        )
        self._stats.failures += 1
        self._on_trouble("retry")
        log.error(
            "upload of %s failed (attempt %d), retrying in %.1fs: %s", queued.path, attempts, delay, message
        )

    def _defer(self, path: str, reason: str) -> None:
        try:
            st = (self._share / path).stat()
        except FileNotFoundError:
            self._queue.mark_missing(path)
            return
        until = self._clock.time() + self.settings.transfer_properties.scan_interval_seconds
        self._queue.defer(path, until, reason=reason, size=st.st_size, mtime_ns=st.st_mtime_ns)
        log.info("deferred %s: %s", path, reason)

    # ---- notifications ------------------------------------------------------------------------------------

    async def _notify(self, result: UploadResult) -> None:
        if self._on_uploaded is None:
            self._queue.mark_notified(result.path)
            return
        try:
            await self._on_uploaded(result)
        except Exception:
            # The row stays un-notified and goes again from flush_notifications (consumers are idempotent).
            log.exception("on_uploaded failed for %s", result.path)
            return
        self._queue.mark_notified(result.path)

    async def flush_notifications(self) -> int:
        """Re-sends `uploaded` notifications that did not go out (after a crash or a failed send)."""
        sent = 0
        for result in self._queue.unnotified():
            if result.path in self._in_flight:
                continue
            await self._notify(result)
            sent += 1
        return sent

    # ---- retention ----------------------------------------------------------------------------------------

    def apply_retention(self) -> list[str]:
        """Deletes uploaded local files by the retention settings; never a file that is not uploaded."""
        upload = self.settings.device_to_cloud_upload_properties
        auto = self.settings.device_auto_delete_properties
        uploaded = self._queue.uploaded()
        now = self._clock.time()
        doomed: list[str] = []
        if upload.delete_after_upload:
            doomed += [f.path for f in uploaded]
        elif auto.delete_on:
            doomed += [f.path for f in select_expired(uploaded, now, auto.delete_after_minutes)]
        if auto.min_free_bytes or auto.min_free_percent:
            usage = self._disk_usage(self._share)
            doomed += [
                f.path
                for f in select_for_pressure(
                    [f for f in uploaded if f.path not in doomed],
                    total=usage.total,
                    free=usage.free,
                    min_free_bytes=auto.min_free_bytes,
                    min_free_percent=auto.min_free_percent,
                )
            ]
        deleted = [path for path in doomed if self._delete_local(path)]
        self._queue.forget(now - FORGET_AFTER_SECONDS)
        return deleted

    def _delete_local(self, path: str, *, owner: bool = False) -> bool:
        """Removes a local file if, and only if, the queue has it uploaded and it is unchanged since.

        `owner`: called by the upload that just finished this file (it is still marked in flight).
        """
        queued = self._queue.get(path)
        if queued is None or queued.state != FileState.UPLOADED or (path in self._in_flight and not owner):
            return False
        local = self._share / path
        try:
            st = local.stat()
        except FileNotFoundError:
            self._queue.mark_deleted(path, self._clock.time())
            return False
        if (st.st_size, st.st_mtime_ns) != (queued.size, queued.mtime_ns):
            # Rewritten after its upload: that content is not in the cloud yet, so it goes up again instead.
            self._queue.enqueue(path, st.st_size, st.st_mtime_ns, self._clock.time())
            return False
        local.unlink()
        self._queue.mark_deleted(path, self._clock.time())
        self._stats.deleted_files += 1
        log.info("deleted local copy of uploaded %s", path)
        return True

    # ---- the loop -----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Scans, uploads, notifies and applies retention until `stop` is set; sleeps when nothing is due."""
        next_scan = self._clock.time()
        while not stop.is_set():
            self._wakeup.clear()
            if self._clock.time() >= next_scan:
                await self.scan()
                next_scan = self._clock.time() + self.settings.transfer_properties.scan_interval_seconds
            await self.process_due(stop)
            await self.flush_notifications()
            self.apply_retention()
            wake_at = next_scan
            due_at = self._queue.next_attempt_at()
            if due_at is not None and self.settings.device_to_cloud_upload_properties.upload_on:
                wake_at = min(wake_at, max(due_at, self._offline_until))
            await self._wait(stop, wake_at - self._clock.time())

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        if stop.is_set() or self._wakeup.is_set():
            return
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(self._clock.sleep(max(0.0, seconds))),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def stats(self) -> UploaderStats:
        self._stats.offline = self.offline
        self._stats.offline_until = self._offline_until if self.offline else None
        self._stats.queue = self._queue.counts()
        return self._stats


# ---- file helpers (run in worker threads) ------------------------------------------------------------------


def _walk(root: Path) -> list[tuple[str, int, int]]:
    found: list[tuple[str, int, int]] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        base = Path(directory)
        for name in files:
            full = base / name
            try:
                st = full.stat()
            except FileNotFoundError:
                continue
            found.append((full.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return found


def _hash_file(path: Path, chunk: int = 2**20) -> _Hashes:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        before = os.fstat(f.fileno())
        while data := f.read(chunk):
            sha.update(data)
            md5.update(data)
        size = f.tell()
        after = os.fstat(f.fileno())
    if size != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise FileChanged(f"{path.name} changed while it was read")
    return _Hashes(sha.hexdigest(), md5.digest(), size, before.st_mtime_ns)


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def _disk_usage(path: Path) -> DiskUsage:
    usage = shutil.disk_usage(path)
    return DiskUsage(usage.total, usage.used, usage.free)
