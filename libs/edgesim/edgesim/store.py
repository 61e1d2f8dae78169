"""edgeHub's store-and-forward: a persisted queue per endpoint, in SQLite.

Messages wait here until their endpoint (a module input, or `$upstream`) acknowledges them. Each
endpoint is drained highest priority first (lowest number), oldest first within a priority, and a
message whose time-to-live has passed is dropped and counted instead of being delivered.

Single-threaded: one MessageStore is used from one thread (the emulator's event loop thread), as
sqlite3 connections are by default. The calls are short local transactions, fast enough to make
from an event loop.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgesim.messages import HubMessage

__all__ = ["MessageStore", "StoredMessage"]

_SCHEMA_VERSION: Final = 1
_SYNCHRONOUS_MODES: Final = frozenset({"FULL", "EXTRA", "NORMAL"})


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    endpoint: str
    route: str
    priority: int
    enqueued_at: float
    expires_at: float | None
    message: HubMessage


class MessageStore:
    """A durable per-endpoint priority queue with TTL.

    Durability: WAL journal with ``synchronous=FULL`` by default, and one commit per `add`. The
    hub sends PUBACK to the producing module only after `add` returns, so a message acknowledged
    to its sender survives a crash of this process and also a power loss or OS crash (under WAL,
    NORMAL would only protect against the first: the last commits may roll back). Pass
    ``synchronous="NORMAL"`` where that trade is acceptable (e.g. throwaway benchmark runs).

    `seq` values are never reused, even after restarts (AUTOINCREMENT), so a caller may keep them
    as delivery ids across a reopen.
    """

    def __init__(
        self, path: Path, clock: Callable[[], float] = time.time, *, synchronous: str = "FULL"
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the database; what was pending before a restart is pending again."""
        if self._db is not None:
            return
        if self._synchronous not in _SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}, got {self._synchronous!r}"
            )
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, transactions are explicit below.
        db = sqlite3.connect(self._path, isolation_level=None)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not switch {self._path} to WAL (got {mode})")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA busy_timeout=5000")
            self._create_schema(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> MessageStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _create_schema(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS messages ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " endpoint TEXT NOT NULL,"
                " route TEXT NOT NULL,"
                " priority INTEGER NOT NULL,"
                " enqueued_at REAL NOT NULL,"
                " expires_at REAL,"
                " message TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS messages_by_order ON messages (endpoint, priority, seq)")
            db.execute(
                "CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at)"
                " WHERE expires_at IS NOT NULL"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS expired (endpoint TEXT PRIMARY KEY, count INTEGER NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),)
                )
            elif int(row[0]) != _SCHEMA_VERSION:
                raise RuntimeError(f"message store schema {row[0]} is not the supported {_SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("MessageStore is not open; call open() first")
        return self._db

    # -- queue -------------------------------------------------------------------------------

    def add(self, endpoint: str, route: str, message: HubMessage, priority: int, ttl_secs: int | None) -> int:
        """Persist a message for `endpoint` and return its sequence number; committed on return.
        A ttl_secs of None or <= 0 means it never expires."""
        now = self._clock()
        expires_at = now + ttl_secs if ttl_secs is not None and ttl_secs > 0 else None
        cursor = self._conn.execute(
            "INSERT INTO messages (endpoint, route, priority, enqueued_at, expires_at, message)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (endpoint, route, priority, now, expires_at, message.to_json()),
        )
        seq = cursor.lastrowid
        assert seq is not None
        return seq

    def add_many(self, message: HubMessage, targets: Sequence[tuple[str, str, int, int | None]]) -> list[int]:
        """Persist one message for several endpoints in a single transaction, given
        (endpoint, route, priority, ttl_secs) per target; returns the seqs in target order.

        All or nothing, and one commit (one fsync) for a message that fans out: the hub can
        PUBACK once this returns.
        """
        now = self._clock()
        body = message.to_json()
        db = self._conn
        seqs: list[int] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for endpoint, route, priority, ttl_secs in targets:
                expires_at = now + ttl_secs if ttl_secs is not None and ttl_secs > 0 else None
                cursor = db.execute(
                    "INSERT INTO messages (endpoint, route, priority, enqueued_at, expires_at, message)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (endpoint, route, priority, now, expires_at, body),
                )
                assert cursor.lastrowid is not None
                seqs.append(cursor.lastrowid)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seqs

    def next_batch(self, endpoint: str, limit: int, *, exclude: Collection[int] = ()) -> list[StoredMessage]:
        """Up to `limit` messages for `endpoint`, highest priority first, FIFO within a priority.

        Does not remove them: call `remove(seq)` once the receiver acknowledged. Expired messages
        are dropped (and counted) before choosing. `exclude` skips seqs the caller already has in
        flight, so it can fill a window without re-sending.
        """
        if limit <= 0:
            return []
        self.purge_expired()
        excluded = sorted(set(exclude))
        query = (
            "SELECT seq, endpoint, route, priority, enqueued_at, expires_at, message"
            " FROM messages WHERE endpoint = ?"
        )
        params: list[object] = [endpoint]
        if excluded:
            # A temp table would avoid SQLite's variable limit; in-flight windows are small.
            query += f" AND seq NOT IN ({', '.join('?' * len(excluded))})"
            params.extend(excluded)
        query += " ORDER BY priority, seq LIMIT ?"
        params.append(limit)
        return [
            StoredMessage(
                seq=row[0],
                endpoint=row[1],
                route=row[2],
                priority=row[3],
                enqueued_at=row[4],
                expires_at=row[5],
                message=HubMessage.from_json(row[6]),
            )
            for row in self._conn.execute(query, params)
        ]

    def remove(self, seq: int) -> None:
        """Forget a delivered message. Removing an unknown or already removed seq is a no-op (a
        late acknowledgement for a message that meanwhile expired)."""
        self._conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def remove_many(self, seqs: Iterable[int]) -> None:
        """`remove` for several acknowledged messages in one transaction."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM messages WHERE seq = ?", ((seq,) for seq in seqs))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def purge_expired(self) -> int:
        """Drop every message whose TTL has passed, adding them to the per-endpoint expired
        counts; returns how many were dropped."""
        now = self._clock()
        db = self._conn
        # The common case is nothing to drop: answer it from the index without a write transaction.
        if (
            db.execute(
                "SELECT 1 FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 1", (now,)
            ).fetchone()
            is None
        ):
            return 0
        db.execute("BEGIN IMMEDIATE")
        try:
            counts = db.execute(
                "SELECT endpoint, COUNT(*) FROM messages"
                " WHERE expires_at IS NOT NULL AND expires_at <= ? GROUP BY endpoint",
                (now,),
            ).fetchall()
            if counts:
                db.execute("DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
                db.executemany(
                    "INSERT INTO expired (endpoint, count) VALUES (?, ?)"
                    " ON CONFLICT (endpoint) DO UPDATE SET count = count + excluded.count",
                    counts,
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return sum(count for _endpoint, count in counts)

    def pending(self, endpoint: str | None = None) -> int:
        """Messages waiting (expired ones excluded), for one endpoint or all."""
        self.purge_expired()
        if endpoint is None:
            row = self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        else:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM messages WHERE endpoint = ?", (endpoint,)
            ).fetchone()
        return int(row[0])

    def expired(self) -> dict[str, int]:
        """endpoint -> messages dropped for TTL since the store was created (persisted)."""
        self.purge_expired()
        return {
            endpoint: count
            for endpoint, count in self._conn.execute("SELECT endpoint, count FROM expired ORDER BY endpoint")
        }

    def endpoints_with_pending(self) -> list[str]:
        """Endpoints that have at least one unexpired message waiting, sorted by name."""
        self.purge_expired()
        return [
            row[0] for row in self._conn.execute("SELECT DISTINCT endpoint FROM messages ORDER BY endpoint")
        ]
