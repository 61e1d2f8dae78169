"""The durable upload queue: one SQLite row per file of the cloud share, on the module's state volume.

A row is `pending` until its upload is verified, then `uploaded` (with what the `uploaded` message carries and
whether that message went out), then `deleted` once retention removed the local file. `missing` is a pending
file that vanished before it could go. WAL mode: a crash loses at most the transaction in progress, and a
restart finds every pending file and every un-sent notification again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .policy import UploadedFile, UploadResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    content_id TEXT,
    container TEXT,
    blob_name TEXT,
    etag TEXT,
    md5 TEXT,
    skipped INTEGER,
    uploaded_at REAL,
    notified INTEGER NOT NULL DEFAULT 0,
    deleted_at REAL
);
CREATE INDEX IF NOT EXISTS files_by_state ON files (state, next_attempt_at, mtime_ns);
"""
_DUE = "SELECT * FROM files WHERE state = 'pending' AND next_attempt_at <= ? "
_DUE_OLDEST_FIRST = _DUE + "ORDER BY mtime_ns ASC, path ASC LIMIT ?"
_DUE_NEWEST_FIRST = _DUE + "ORDER BY mtime_ns DESC, path DESC LIMIT ?"


class FileState(StrEnum):
    PENDING = "pending"
    UPLOADED = "uploaded"
    DELETED = "deleted"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class QueuedFile:
    path: str
    state: FileState
    size: int
    mtime_ns: int
    attempts: int
    next_attempt_at: float
    last_error: str | None


class UploadQueue:
    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self._db_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._db_path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the case here); only a power cut may lose the last
        # commit, which then means one repeated, MD5-skipped upload, not a lost file.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.row_factory = sqlite3.Row
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("UploadQueue.open() was not called")
        return self._db

    def enqueue(self, path: str, size: int, mtime_ns: int, now: float) -> bool:
        """Queues a file; True if it is new to the queue or changed since it was uploaded (it goes again)."""
        row = self._conn.execute("SELECT state, size, mtime_ns FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            self._conn.execute(
                "INSERT INTO files (path, state, size, mtime_ns, enqueued_at) VALUES (?, 'pending', ?, ?, ?)",
                (path, size, mtime_ns, now),
            )
            return True
        if (row["size"], row["mtime_ns"]) == (size, mtime_ns) and row["state"] != FileState.MISSING:
            return False
        was_pending = row["state"] == FileState.PENDING
        self._conn.execute(
            "UPDATE files SET state = 'pending', size = ?, mtime_ns = ?, enqueued_at = ?, notified = 0, "
            "deleted_at = NULL WHERE path = ?",
            (size, mtime_ns, now, path),
        )
        return not was_pending

    def get(self, path: str) -> QueuedFile | None:
        row = self._conn.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()
        return _queued(row) if row is not None else None

    def due(self, now: float, *, newest_first: bool, limit: int | None = None) -> list[QueuedFile]:
        query = _DUE_NEWEST_FIRST if newest_first else _DUE_OLDEST_FIRST
        rows = self._conn.execute(query, (now, -1 if limit is None else limit)).fetchall()
        return [_queued(row) for row in rows]

    def next_attempt_at(self) -> float | None:
        row = self._conn.execute("SELECT MIN(next_attempt_at) FROM files WHERE state = 'pending'").fetchone()
        value = row[0]
        return float(value) if value is not None else None

    def defer(self, path: str, until: float, *, reason: str, size: int, mtime_ns: int) -> None:
        """Not a failure (the file is still changing): try later, without counting an attempt."""
        self._conn.execute(
            "UPDATE files SET next_attempt_at = ?, last_error = ?, size = ?, mtime_ns = ? WHERE path = ?",
            (until, reason, size, mtime_ns, path),
        )

    def record_failure(self, path: str, error: str, next_attempt_at: float, *, count_attempt: bool) -> int:
        """Notes why an attempt failed and when to try again; returns the attempts counted so far."""
        self._conn.execute(
            "UPDATE files SET attempts = attempts + ?, last_error = ?, next_attempt_at = ? WHERE path = ?",
            (1 if count_attempt else 0, error, next_attempt_at, path),
        )
        row = self._conn.execute("SELECT attempts FROM files WHERE path = ?", (path,)).fetchone()
        return int(row[0]) if row is not None else 0

    def mark_uploaded(
        self, result: UploadResult, *, content_id: str, size: int, mtime_ns: int, now: float
    ) -> None:
        self._conn.execute(
            "UPDATE files SET state = 'uploaded', size = ?, mtime_ns = ?, content_id = ?, container = ?, "
            "blob_name = ?, etag = ?, md5 = ?, skipped = ?, uploaded_at = ?, notified = 0, "
            "last_error = NULL, attempts = 0, next_attempt_at = 0 WHERE path = ?",
            (
                size,
                mtime_ns,
                content_id,
                result.container,
                result.blob_name,
                result.etag,
                result.md5,
                int(result.skipped),
                now,
                result.path,
            ),
        )

    def mark_missing(self, path: str) -> None:
        self._conn.execute("UPDATE files SET state = 'missing' WHERE path = ? AND state = 'pending'", (path,))

    def mark_deleted(self, path: str, now: float) -> None:
        self._conn.execute(
            "UPDATE files SET state = 'deleted', deleted_at = ? WHERE path = ? AND state = 'uploaded'",
            (now, path),
        )

    def mark_notified(self, path: str) -> None:
        self._conn.execute("UPDATE files SET notified = 1 WHERE path = ?", (path,))

    def unnotified(self) -> list[UploadResult]:
        rows = self._conn.execute(
            "SELECT * FROM files WHERE state IN ('uploaded', 'deleted') AND notified = 0 ORDER BY uploaded_at"
        ).fetchall()
        return [_result(row) for row in rows]

    def uploaded(self) -> list[UploadedFile]:
        rows = self._conn.execute(
            "SELECT path, size, mtime_ns, uploaded_at FROM files WHERE state = 'uploaded'"
        ).fetchall()
        return [UploadedFile(r["path"], r["size"], r["mtime_ns"], r["uploaded_at"]) for r in rows]

    def result(self, path: str) -> UploadResult | None:
        row = self._conn.execute(
            "SELECT * FROM files WHERE path = ? AND state IN ('uploaded', 'deleted')", (path,)
        ).fetchone()
        return _result(row) if row is not None else None

    def counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        counts = {state.value: 0 for state in FileState}
        counts.update({row[0]: int(row[1]) for row in rows})
        return counts

    def forget(self, before: float) -> int:
        """Drops rows of files deleted (or gone missing) before `before`: the table must not grow forever."""
        cursor = self._conn.execute(
            "DELETE FROM files WHERE (state = 'deleted' AND deleted_at < ?) "
            "OR (state = 'missing' AND enqueued_at < ?)",
            (before, before),
        )
        return cursor.rowcount


def _queued(row: sqlite3.Row) -> QueuedFile:
    return QueuedFile(
        path=row["path"],
        state=FileState(row["state"]),
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )


def _result(row: sqlite3.Row) -> UploadResult:
    return UploadResult(
        path=row["path"],
        container=row["container"],
        blob_name=row["blob_name"],
        etag=row["etag"],
        md5=row["md5"],
        bytes=row["size"],
        skipped=bool(row["skipped"]),
    )
