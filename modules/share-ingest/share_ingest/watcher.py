"""Change sources: inotify (local filesystems) turned into hints for the ingestor, and mode selection.

asyncinotify was chosen over watchdog and inotify-simple: it is asyncio-native (no observer thread to bridge),
typed, and low-level enough to see IN_Q_OVERFLOW and to control which folders are watched and when (a new
folder's watch must exist before it is listed). Polling needs no library: it is the scanner's full walk.

Hints are advice, never the truth: the ingestor re-reads the filesystem for each one, so a lost, duplicated or
stale hint costs at most a re-check, and an overflow costs a full rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from asyncinotify import Inotify, Mask

from .rules import is_within, join

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rescan:
    reason: str


@dataclass(frozen=True, slots=True)
class PathChanged:
    rel: str


@dataclass(frozen=True, slots=True)
class PathGone:
    rel: str


@dataclass(frozen=True, slots=True)
class FolderAppeared:
    """A folder was created, moved in, or its permissions changed: watch and scan its subtree."""

    rel: str


@dataclass(frozen=True, slots=True)
class FolderGone:
    rel: str


Hint = Rescan | PathChanged | PathGone | FolderAppeared | FolderGone
HintSink = Callable[[Hint], None]


class WatchLimitReached(Exception):
    """fs.inotify.max_user_watches is exhausted (or the kernel is out of inotify memory)."""


class ChangeSource(Protocol):
    """Pushes hints about the share to a sink; the ingestor tells it which folders to watch."""

    def start(self, sink: HintSink) -> None:
        """Begin delivering hints (called on the ingestor's event loop)."""
        ...

    def watch_folder(self, rel: str) -> None:
        """Watch one folder (not recursive). Called from a worker thread during walks, before listing."""
        ...

    def forget_folder(self, rel: str) -> None:
        """Stop watching a folder and everything under it."""
        ...

    async def aclose(self) -> None: ...


DIRECTORY_MASK = (
    Mask.CREATE
    | Mask.CLOSE_WRITE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE
    | Mask.ATTRIB
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
    | Mask.DONT_FOLLOW
    | Mask.EXCL_UNLINK
)
# IN_MODIFY is left out on purpose: it fires per write() and would flood the queue during large copies, while
# the stable rule re-stats pending files on its own timer anyway.


def translate(mask: Mask, folder: str | None, name: str | None) -> list[Hint]:
    """One inotify event as hints. `folder` is the watched folder (share-relative) or None if unknown."""
    if Mask.Q_OVERFLOW in mask:
        return [Rescan("inotify queue overflow")]
    if Mask.UNMOUNT in mask:
        return [Rescan("share unmounted")]
    if folder is None or Mask.IGNORED in mask:
        return []
    if name is None:
        if folder == "" and mask & (Mask.DELETE_SELF | Mask.MOVE_SELF):
            return [Rescan("share root moved or deleted")]
        return []
    rel = join(folder, name)
    if Mask.ISDIR in mask:
        if mask & (Mask.MOVED_FROM | Mask.DELETE):
            return [FolderGone(rel)]
        if mask & (Mask.CREATE | Mask.MOVED_TO | Mask.ATTRIB):
            return [FolderAppeared(rel)]
        return []
    if mask & (Mask.MOVED_FROM | Mask.DELETE):
        return [PathGone(rel)]
    if mask & (Mask.CREATE | Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.ATTRIB):
        return [PathChanged(rel)]
    return []


class InotifyWatcher:
    """ChangeSource over inotify. Folder watches are added by the ingestor's walks, never recursively here."""

    def __init__(self, root: Path, *, batch_events: int = 256) -> None:
        self._root = root
        self._batch_events = batch_events
        self._inotify: Inotify | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._folder_by_wd: dict[int, str] = {}
        self._wd_by_folder: dict[str, int] = {}

    def start(self, sink: HintSink) -> None:
        try:
            self._inotify = Inotify(cache_size=self._batch_events)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.ENOMEM):
                raise WatchLimitReached(str(exc)) from exc
            raise
        self._task = asyncio.get_running_loop().create_task(self._pump(sink), name="share-ingest-inotify")

    @property
    def watched_folders(self) -> list[str]:
        with self._lock:
            return sorted(self._wd_by_folder)

    def watch_folder(self, rel: str) -> None:
        if self._inotify is None:
            raise RuntimeError("watcher not started")
        path = self._root / rel if rel else self._root
        try:
            watch = self._inotify.add_watch(path, DIRECTORY_MASK)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                raise WatchLimitReached(f"cannot watch {rel or '.'}: {exc.strerror}") from exc
            raise
        with self._lock:
            stale = self._folder_by_wd.get(watch.wd)
            if stale is not None and stale != rel:
                self._wd_by_folder.pop(stale, None)
            self._folder_by_wd[watch.wd] = rel
            self._wd_by_folder[rel] = watch.wd

    def forget_folder(self, rel: str) -> None:
        inotify = self._inotify
        with self._lock:
            gone = [(folder, wd) for folder, wd in self._wd_by_folder.items() if is_within(folder, rel)]
            for folder, wd in gone:
                del self._wd_by_folder[folder]
                self._folder_by_wd.pop(wd, None)
        if inotify is None:
            return
        for _, wd in gone:
            watch = next((w for w in inotify.watches if w.wd == wd), None)
            if watch is not None:
                # EINVAL: the kernel already dropped it (folder deleted).
                with contextlib.suppress(OSError):
                    inotify.rm_watch(watch)

    def _folder_of(self, wd: int) -> str | None:
        with self._lock:
            return self._folder_by_wd.get(wd)

    async def _pump(self, sink: HintSink) -> None:
        assert self._inotify is not None
        async for event in self._inotify:
            watch = event.watch
            folder = self._folder_of(watch.wd) if watch is not None else None
            if watch is not None and Mask.IGNORED in event.mask:
                with self._lock:
                    if self._folder_by_wd.get(watch.wd) is not None:
                        self._wd_by_folder.pop(self._folder_by_wd.pop(watch.wd), None)
            name = str(event.name) if event.name is not None else None
            for hint in translate(event.mask, folder, name):
                if isinstance(hint, FolderGone):
                    self.forget_folder(hint.rel)
                sink(hint)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        with self._lock:
            self._folder_by_wd.clear()
            self._wd_by_folder.clear()


NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs",
        "lustre", "gpfs", "beegfs", "davfs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.glusterfs",
    }
)  # fmt: skip


def _unescape_mount_field(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The filesystem type of the mount that holds `path` (from /proc/self/mountinfo), or None if unknown."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount_point = _unescape_mount_field(fields[4])
        if os.path.commonpath([mount_point, target]) == mount_point and (
            best is None or len(mount_point) >= best[0]
        ):
            best = (len(mount_point), right.split()[0])
    return best[1] if best is not None else None


def is_network_filesystem(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse."))
