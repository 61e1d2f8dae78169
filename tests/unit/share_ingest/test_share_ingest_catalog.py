"""SqliteCatalog: states, per-(path, content) keys, durability across reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from share_ingest import Catalog, SqliteCatalog

SHA_A = "a" * 64
SHA_B = "b" * 64


def test_seen_then_announced_survives_reopen(tmp_path: Path) -> None:
    database = tmp_path / "state" / "catalog.db"
    with SqliteCatalog(database) as catalog:
        entry = catalog.record_seen("p/x.csv", SHA_A, 10, 111)
        assert entry.state == "seen"
        catalog.mark_announced("p/x.csv", SHA_A)
    with SqliteCatalog(database) as catalog:
        latest = catalog.latest("p/x.csv")
        assert latest is not None
        assert (latest.sha256, latest.size, latest.mtime_ns, latest.state) == (SHA_A, 10, 111, "announced")
        assert catalog.count("announced") == 1


def test_new_content_is_a_new_entry_and_latest_follows_it(tmp_path: Path) -> None:
    with SqliteCatalog(tmp_path / "c.db") as catalog:
        catalog.record_seen("x.csv", SHA_A, 1, 1)
        catalog.mark_announced("x.csv", SHA_A)
        catalog.record_seen("x.csv", SHA_B, 2, 2)
        latest = catalog.latest("x.csv")
        assert latest is not None
        assert (latest.sha256, latest.state) == (SHA_B, "seen")
        # Seeing A again refreshes its stat and makes it the latest, still announced.
        catalog.record_seen("x.csv", SHA_A, 1, 3)
        latest = catalog.latest("x.csv")
        assert latest is not None
        assert (latest.sha256, latest.mtime_ns, latest.state) == (SHA_A, 3, "announced")
        assert catalog.count() == 2
    with SqliteCatalog(tmp_path / "c.db") as catalog:
        # The ordering counter resumes after reopen, so 'latest' stays right.
        catalog.record_seen("x.csv", SHA_B, 2, 4)
        latest = catalog.latest("x.csv")
        assert latest is not None
        assert latest.sha256 == SHA_B


def test_lookup_and_unknown_entries(tmp_path: Path) -> None:
    with SqliteCatalog(tmp_path / "c.db") as catalog:
        assert catalog.latest("nope") is None
        assert catalog.lookup("nope", SHA_A) is None
        with pytest.raises(KeyError):
            catalog.mark_announced("nope", SHA_A)


def test_uses_wal_and_satisfies_the_protocol(tmp_path: Path) -> None:
    with SqliteCatalog(tmp_path / "c.db") as catalog:
        as_protocol: Catalog = catalog
        as_protocol.record_seen("x", SHA_A, 0, 0)
    mode = sqlite3.connect(tmp_path / "c.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_closed_catalog_refuses_use(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "c.db")
    assert not (tmp_path / "c.db").exists()  # the constructor does no I/O
    with pytest.raises(RuntimeError):
        catalog.latest("x")
