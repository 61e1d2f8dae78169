"""Read-only access to the share: walking, lstat, streaming sha256.

Every path is resolved component by component from a fresh descriptor of the share root with O_NOFOLLOW, so
a symlink (or one swapped in mid-walk) never leads the module out of the share, and nothing here can write:
every descriptor is opened O_RDONLY. The root is reopened per operation because a network share may be
remounted. These calls block; the ingestor runs them in a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import IngestConfig
from .rules import Rules, display_path, join, name_problem, parent_of, path_problem

_CHUNK_BYTES = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted on the share must not hang the module on open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(frozen=True, slots=True)
class Signature:
    """What 'unchanged' means for a file: size, mtime and identity."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


@dataclass(slots=True)
class ScanResult:
    files: list[tuple[str, Signature]] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)
    """(raw relative path, reason)."""
    folders: list[str] = field(default_factory=list)


class FileChanged(Exception):
    """The file changed while it was being read: it is not complete yet."""


class NotRegularFile(Exception):
    pass


class Cancelled(Exception):
    pass


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


class ShareFS:
    """The share as this module may see it: read-only, never outside the root."""

    def __init__(self, root: Path, config: IngestConfig, rules: Rules) -> None:
        self._root = root
        self._config = config
        self._rules = rules

    @property
    def root(self) -> Path:
        return self._root

    def _open_folder(self, rel: str) -> int:
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in rel.split("/") if rel else ():
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat(self, rel: str) -> os.stat_result:
        fd = self._open_folder(parent_of(rel))
        try:
            return os.stat(rel.rpartition("/")[2], dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def refusal_for(self, rel: str, st: os.stat_result) -> str | None:
        """Why a non-regular entry is refused; None for a regular file or a folder."""
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            return None
        if stat.S_ISLNK(st.st_mode):
            return self._symlink_reason(rel)
        return _kind_of(st.st_mode)

    def _symlink_reason(self, rel: str) -> str:
        try:
            fd = self._open_folder(parent_of(rel))
            try:
                target = os.readlink(rel.rpartition("/")[2], dir_fd=fd)
            finally:
                os.close(fd)
        except OSError:
            return "symbolic link (links are not followed)"
        share = os.path.realpath(self._root)
        resolved = os.path.realpath(os.path.join(share, parent_of(rel), target))
        if os.path.commonpath([share, resolved]) != share:
            return f"symbolic link leading out of the share (-> {display_path(target)})"
        return f"symbolic link (links are not followed; -> {display_path(target)})"

    def walk(
        self,
        top: str,
        on_folder: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ScanResult:
        """Every regular file under `top` (a share-relative folder, '' for the root), without following links.

        `on_folder` runs before a folder is listed (inotify adds its watch there, so nothing created after the
        listing is missed). A folder it cannot watch is refused; WatchLimitReached aborts the walk.
        """
        result = ScanResult()
        top_depth = top.count("/") + 1 if top else 0
        stack = [(top, self._open_folder(top), top_depth)]
        try:
            while stack:
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                rel, fd, depth = stack.pop()
                try:
                    self._walk_folder(rel, fd, depth, on_folder, result, stack)
                finally:
                    os.close(fd)
        finally:
            for _, fd, _ in stack:
                os.close(fd)
        return result

    def _walk_folder(
        self,
        rel: str,
        fd: int,
        depth: int,
        on_folder: Callable[[str], None] | None,
        result: ScanResult,
        stack: list[tuple[str, int, int]],
    ) -> None:
        if on_folder is not None:
            try:
                on_folder(rel)
            except FileNotFoundError:
                return
            except OSError as exc:
                if not rel:
                    raise
                result.refusals.append((rel, f"cannot watch folder: {exc.strerror}"))
                return
        result.folders.append(rel)
        try:
            with os.scandir(fd) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            result.refusals.append((rel, f"cannot list folder: {exc.strerror}"))
            return
        for entry in entries:
            if self._rules.is_hidden(entry.name):
                continue
            child = join(rel, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                result.refusals.append((child, f"cannot stat: {exc.strerror}"))
                continue
            problem = name_problem(entry.name) or path_problem(child, self._config.max_path_bytes)
            if problem is not None:
                result.refusals.append((child, problem))
            elif stat.S_ISREG(st.st_mode):
                result.files.append((child, Signature.of(st)))
            elif stat.S_ISDIR(st.st_mode):
                if depth + 1 > self._config.max_depth:
                    result.refusals.append((child, f"folder deeper than {self._config.max_depth} levels"))
                    continue
                try:
                    child_fd = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    result.refusals.append((child, f"cannot open folder: {exc.strerror}"))
                    continue
                stack.append((child, child_fd, depth + 1))
            else:
                result.refusals.append((child, self.refusal_for(child, st) or "not a regular file"))

    def sha256(self, rel: str, cancel: threading.Event | None = None) -> tuple[str, Signature]:
        """Stream the file's sha256; raise FileChanged if it changed while read, NotRegularFile, OSError."""
        folder_fd = self._open_folder(parent_of(rel))
        try:
            fd = os.open(rel.rpartition("/")[2], _FILE_FLAGS, dir_fd=folder_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotRegularFile("symbolic link") from exc
            raise
        finally:
            os.close(folder_fd)
        with os.fdopen(fd, "rb", buffering=0) as stream:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise NotRegularFile(_kind_of(before.st_mode))
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            digest = hashlib.sha256()
            buffer = bytearray(_CHUNK_BYTES)
            view = memoryview(buffer)
            total = 0
            while count := stream.readinto(buffer):
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                digest.update(view[:count])
                total += count
            after = os.fstat(fd)
        if Signature.of(before) != Signature.of(after) or total != after.st_size:
            raise FileChanged(rel)
        return digest.hexdigest(), Signature.of(after)
