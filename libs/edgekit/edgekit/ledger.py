"""The per-module ledger: a SQLite file on the module's state volume recording how far each item got.

Each item (a file id, a batch id...) moves forward through an ordered list of states, for example
`seen -> staged -> done`. Going back is refused, recording the state an item is already in is a no-op
(so a redelivered message is harmless), and reopening the file after a crash resumes where it was.

WAL mode with `synchronous=NORMAL` by default: a committed transition survives the process being
killed; only a power cut can lose the last few, and every step in edgeloop is idempotent (content
ids), so redoing such a step is safe and much cheaper than an fsync per transition. Pass
`synchronous="FULL"` where that trade is wrong.

A `Ledger` may be shared between threads (one connection behind a lock); several connections, in
one process or many, may use the same file: each transition is checked and written inside one
`BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    attributes TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_state ON items (state, updated_at);
"""


class LedgerError(Exception):
    """Base of ledger errors."""


class LedgerStateError(LedgerError, ValueError):
    """An unknown state name, or a transition the state order does not allow."""


class LedgerCorruptError(LedgerError):
    """The file is not a usable ledger database."""


@dataclass(frozen=True)
class Item:
    key: str
    state: str
    attributes: dict[str, Any]
    created_at: float
    updated_at: float


class Ledger:
    """States are given in order; the last one, and any in `terminal`, can never be left."""

    def __init__(
        self,
        path: str | Path,
        states: Sequence[str] = ("seen", "done"),
        *,
        terminal: Sequence[str] = (),
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_s: float = 10.0,
    ) -> None:
        if len(states) < 2 or len(set(states)) != len(states):
            raise ValueError("a ledger needs at least two distinct states")
        unknown = set(terminal) - set(states)
        if unknown:
            raise ValueError(f"terminal states {sorted(unknown)} are not among the states")
        self.path = Path(path)
        self.states = tuple(states)
        self.terminal = frozenset({*terminal, states[-1]})
        self._order = {state: index for index, state in enumerate(states)}
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._batch_depth = 0

    # Lifecycle
    def open(self) -> Ledger:
        if self._conn is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise LedgerError(f"cannot open ledger {self.path}: {error}") from error
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.executescript(_SCHEMA)
            stored = {row[0] for row in conn.execute("SELECT DISTINCT state FROM items")}
        except sqlite3.DatabaseError as error:
            conn.close()
            raise LedgerCorruptError(
                f"{self.path} is not a usable ledger database ({error}); move it aside to start afresh "
                "(every step is idempotent, so work is redone, not duplicated)"
            ) from error
        foreign = stored - set(self.states)
        if foreign:
            conn.close()
            raise LedgerStateError(
                f"{self.path} holds states {sorted(foreign)} not among {list(self.states)}"
            )
        self._conn = conn
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Ledger:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Queries
    def get(self, key: str) -> Item | None:
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT key, state, attributes, created_at, updated_at FROM items WHERE key = ?", (key,)
                )
                .fetchone()
            )
        return _item(row) if row else None

    def is_done(self, key: str) -> bool:
        """True when the item reached a terminal state."""
        item = self.get(key)
        return item is not None and item.state in self.terminal

    def items_in_state(self, state: str, limit: int | None = None) -> list[Item]:
        """Items in `state`, oldest update first (what a restart resumes)."""
        self._check_state(state)
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT key, state, attributes, created_at, updated_at FROM items "
                    "WHERE state = ? ORDER BY updated_at, key LIMIT ?",
                    (state, -1 if limit is None else limit),
                )
                .fetchall()
            )
        return [_item(row) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db().execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        found = dict(rows)
        return {state: int(found.get(state, 0)) for state in self.states}

    # Transitions
    def record(self, key: str, state: str | None = None, attributes: Mapping[str, Any] | None = None) -> Item:
        """Register `key`; with `state`, make sure it is at least there.

        Without `state`, a new key is inserted in the first state and an existing one is returned
        unchanged, whatever its state (a redelivered message is harmless). With `state`, a key
        already there is left as is (its attributes merged), one in an earlier state advances and
        one in a later state raises `LedgerStateError`.
        """
        if state is None:
            return self._transition(key, self.states[0], attributes, must_exist=False, keep_existing=True)
        return self._transition(key, state, attributes, must_exist=False)

    def advance(self, key: str, state: str, attributes: Mapping[str, Any] | None = None) -> Item:
        """Move an existing item forward to `state`, merging `attributes` into its attributes."""
        return self._transition(key, state, attributes, must_exist=True)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group several transitions into one transaction: all of them land, or none do."""
        with self._lock:
            conn = self._db()
            outer = self._batch_depth == 0
            if outer:
                self._begin(conn)
            self._batch_depth += 1
            try:
                yield
            except BaseException:
                self._batch_depth -= 1
                if outer:
                    conn.execute("ROLLBACK")
                raise
            self._batch_depth -= 1
            if outer:
                conn.execute("COMMIT")

    def _transition(
        self,
        key: str,
        state: str,
        attributes: Mapping[str, Any] | None,
        *,
        must_exist: bool,
        keep_existing: bool = False,
    ) -> Item:
        self._check_state(state)
        with self._lock, self._write() as conn:
            row = conn.execute(
                "SELECT key, state, attributes, created_at, updated_at FROM items WHERE key = ?", (key,)
            ).fetchone()
            now = time.time()
            if row is None:
                if must_exist:
                    raise LedgerStateError(f"{key!r} is not in the ledger; record() it first")
                merged = dict(attributes or {})
                conn.execute(
                    "INSERT INTO items (key, state, attributes, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key, state, _dumps(merged), now, now),
                )
                return Item(key, state, merged, now, now)
            current = _item(row)
            if keep_existing:
                return current
            if current.state != state:
                if current.state in self.terminal or self._order[state] < self._order[current.state]:
                    raise LedgerStateError(f"{key!r} cannot go from {current.state!r} to {state!r}")
            elif not attributes:
                return current
            merged = {**current.attributes, **(attributes or {})}
            conn.execute(
                "UPDATE items SET state = ?, attributes = ?, updated_at = ? WHERE key = ?",
                (state, _dumps(merged), now, key),
            )
            return Item(key, state, merged, current.created_at, now)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._db()
        if self._batch_depth:
            yield conn
            return
        self._begin(conn)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _begin(conn: sqlite3.Connection) -> None:
        # IMMEDIATE takes the write lock before reading, so check-then-write is atomic across connections.
        conn.execute("BEGIN IMMEDIATE")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"ledger {self.path} is not open (call open() first)")
        return self._conn

    def _check_state(self, state: str) -> None:
        if state not in self._order:
            raise LedgerStateError(f"unknown state {state!r}; this ledger's states are {list(self.states)}")


def _dumps(attributes: Mapping[str, Any]) -> str:
    return json.dumps(attributes, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _item(row: tuple[Any, ...]) -> Item:
    key, state, attributes, created_at, updated_at = row
    return Item(key, state, json.loads(attributes), created_at, updated_at)
