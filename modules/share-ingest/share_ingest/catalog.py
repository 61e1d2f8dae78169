"""The durable record of what was announced: one row per (path, content), `seen` then `announced`.

Keyed by path *and* sha256: a file whose content changes is a new file and is announced again; the same
content returning under a path that already announced it (A -> B -> A) is not announced a second time. The
same content under another path is another row, so it is announced too (the content id lets downstream dedup).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

State = Literal["seen", "announced"]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    path: str
    sha256: str
    size: int
    mtime_ns: int
    state: State


class Catalog(Protocol):
    def latest(self, path: str) -> CatalogEntry | None:
        """The entry for `path` recorded or confirmed most recently, whatever its state."""
        ...

    def lookup(self, path: str, sha256: str) -> CatalogEntry | None: ...

    def record_seen(self, path: str, sha256: str, size: int, mtime_ns: int) -> CatalogEntry:
        """Insert as `seen`, or refresh size/mtime of an existing entry (its state kept)."""
        ...

    def mark_announced(self, path: str, sha256: str) -> None: ...

    def mark_processed(self, sha256: str) -> None:
        """Downstream confirmed it handled this content: no more re-announcements of any path holding it."""
        ...

    def unprocessed(self, announced_before: float) -> list[CatalogEntry]:
        """Announced (wall-clock `announced_at` before the given time) and never confirmed processed."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('seen', 'announced')),
    first_seen REAL NOT NULL,
    updated REAL NOT NULL,
    seq INTEGER NOT NULL,
    announced_at REAL,
    PRIMARY KEY (path, sha256)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_path_seq ON files (path, seq);
CREATE TABLE IF NOT EXISTS processed (
    sha256 TEXT PRIMARY KEY,
    processed_at REAL NOT NULL
) WITHOUT ROWID;
"""


class SqliteCatalog:
    """Catalog in one SQLite file (WAL). Use from one thread; call open() first and close() at the end."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._connection: sqlite3.Connection | None = None
        self._seq = 0

    def open(self) -> None:
        self._database.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self._database, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL can lose the last commits on power loss, never corrupt: a lost `announced` only means
        # one more announcement, which downstream absorbs by file id.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        self._seq = connection.execute("SELECT COALESCE(MAX(seq), 0) FROM files").fetchone()[0]
        self._connection = connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> SqliteCatalog:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("catalog is not open")
        return self._connection

    def _next_seq(self) -> int:
        # A counter rather than timestamps: 'most recent' must not depend on the wall clock going forward.
        self._seq += 1
        return self._seq

    @staticmethod
    def _entry(row: tuple[str, str, int, int, State] | None) -> CatalogEntry | None:
        if row is None:
            return None
        return CatalogEntry(path=row[0], sha256=row[1], size=row[2], mtime_ns=row[3], state=row[4])

    def latest(self, path: str) -> CatalogEntry | None:
        row = self._db.execute(
            "SELECT path, sha256, size, mtime_ns, state FROM files WHERE path = ? ORDER BY seq DESC LIMIT 1",
            (path,),
        ).fetchone()
        return self._entry(row)

    def lookup(self, path: str, sha256: str) -> CatalogEntry | None:
        row = self._db.execute(
            "SELECT path, sha256, size, mtime_ns, state FROM files WHERE path = ? AND sha256 = ?",
            (path, sha256),
        ).fetchone()
        return self._entry(row)

    def record_seen(self, path: str, sha256: str, size: int, mtime_ns: int) -> CatalogEntry:
        now = time.time()
        self._db.execute(
            """INSERT INTO files (path, sha256, size, mtime_ns, state, first_seen, updated, seq)
               VALUES (?, ?, ?, ?, 'seen', ?, ?, ?)
               ON CONFLICT (path, sha256) DO UPDATE SET
                 size = excluded.size, mtime_ns = excluded.mtime_ns, updated = excluded.updated,
                 seq = excluded.seq""",
            (path, sha256, size, mtime_ns, now, now, self._next_seq()),
        )
        entry = self.lookup(path, sha256)
        assert entry is not None
        return entry

    def mark_announced(self, path: str, sha256: str) -> None:
        cursor = self._db.execute(
            "UPDATE files SET state = 'announced', announced_at = ?, updated = ?"
            " WHERE path = ? AND sha256 = ?",
            (time.time(), time.time(), path, sha256),
        )
        if cursor.rowcount != 1:
            raise KeyError(f"no catalog entry for {path!r} {sha256}")

    def mark_processed(self, sha256: str) -> None:
        self._db.execute(
            "INSERT INTO processed (sha256, processed_at) VALUES (?, ?) ON CONFLICT (sha256) DO NOTHING",
            (sha256, time.time()),
        )

    def unprocessed(self, announced_before: float) -> list[CatalogEntry]:
        rows = self._db.execute(
            """SELECT path, sha256, size, mtime_ns, state FROM files
               WHERE state = 'announced' AND announced_at < ?
                 AND sha256 NOT IN (SELECT sha256 FROM processed)
               ORDER BY announced_at""",
            (announced_before,),
        ).fetchall()
        return [entry for entry in map(self._entry, rows) if entry is not None]

    def count(self, state: State | None = None) -> int:
        if state is None:
            return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM files WHERE state = ?", (state,)).fetchone()[0])
