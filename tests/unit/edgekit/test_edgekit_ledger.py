import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from edgekit import Item, Ledger, LedgerCorruptError, LedgerError, LedgerStateError

STATES = ("seen", "staged", "done")


def must_get(ledger: Ledger, key: str) -> Item:
    item = ledger.get(key)
    assert item is not None, key
    return item


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "state" / "ledger.sqlite", STATES) as opened:
        yield opened


def test_constructor_does_no_io(tmp_path):
    Ledger(tmp_path / "nowhere" / "ledger.sqlite")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(LedgerError, match="not open"):
        Ledger(tmp_path / "x.sqlite").get("k")


def test_forward_transitions_merge_attributes(ledger):
    first = ledger.record("file-1", attributes={"path": "a.csv"})
    assert first.state == "seen"
    staged = ledger.advance("file-1", "staged", {"rows": 10})
    assert staged.attributes == {"path": "a.csv", "rows": 10}
    assert not ledger.is_done("file-1")
    done = ledger.advance("file-1", "done", {"rows": 12})
    assert done.attributes == {"path": "a.csv", "rows": 12}
    assert done.created_at == first.created_at
    assert ledger.is_done("file-1")
    assert ledger.get("file-1") == done
    assert ledger.get("missing") is None
    assert not ledger.is_done("missing")


def test_rerecording_the_same_state_is_idempotent(ledger):
    first = ledger.record("k", attributes={"a": 1})
    again = ledger.record("k")
    assert again == first
    ledger.advance("k", "done")
    assert ledger.record("k").state == "done"  # a redelivery of a finished item changes nothing
    assert ledger.record("k", "done").state == "done"
    assert ledger.advance("k", "done").state == "done"


def test_no_going_back(ledger):
    ledger.record("k")
    ledger.advance("k", "staged")
    with pytest.raises(LedgerStateError, match="cannot go from 'staged' to 'seen'"):
        ledger.record("k", "seen")
    ledger.advance("k", "done")
    with pytest.raises(LedgerStateError, match="cannot go from 'done' to 'staged'"):
        ledger.advance("k", "staged")
    assert ledger.get("k").state == "done"


def test_skipping_forward_is_allowed_and_record_can_advance(ledger):
    ledger.record("a")
    assert ledger.record("a", "done").state == "done"
    assert ledger.record("b", "staged").state == "staged"


def test_terminal_states_cannot_be_left(tmp_path):
    with Ledger(tmp_path / "l.sqlite", ("seen", "quarantined", "done"), terminal=("quarantined",)) as ledger:
        ledger.record("bad")
        ledger.advance("bad", "quarantined", {"reason": "schema"})
        assert ledger.is_done("bad")
        with pytest.raises(LedgerStateError):
            ledger.advance("bad", "done")


def test_unknown_states_and_keys(ledger):
    with pytest.raises(LedgerStateError, match=r"unknown state 'finished'.*\['seen', 'staged', 'done'\]"):
        ledger.record("k", "finished")
    with pytest.raises(LedgerStateError, match="unknown state"):
        ledger.items_in_state("nope")
    with pytest.raises(LedgerStateError, match="record\\(\\) it first"):
        ledger.advance("never-seen", "done")
    with pytest.raises(ValueError, match="two distinct"):
        Ledger("x", ("only",))
    with pytest.raises(ValueError, match="not among"):
        Ledger("x", ("a", "b"), terminal=("c",))


def test_items_in_state_and_counts(ledger):
    for index in range(5):
        ledger.record(f"k{index}")
    ledger.advance("k1", "done")
    ledger.advance("k3", "staged")
    assert [item.key for item in ledger.items_in_state("seen")] == ["k0", "k2", "k4"]
    assert [item.key for item in ledger.items_in_state("seen", limit=2)] == ["k0", "k2"]
    assert ledger.counts() == {"seen": 3, "staged": 1, "done": 1}


def test_large_attribute_payloads_and_non_ascii(ledger):
    payload = {"rows": list(range(200_000)), "text": "Größe-温度" * 10_000}
    ledger.record("big", attributes=payload)
    assert must_get(ledger, "big").attributes == payload


def test_batch_is_all_or_nothing(ledger):
    def record_two_then_fail() -> None:
        with ledger.batch():
            ledger.record("a")
            ledger.record("b")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        record_two_then_fail()
    assert ledger.get("a") is None
    with ledger.batch():
        ledger.record("a")
        with ledger.batch():
            ledger.record("b")
    assert ledger.counts()["seen"] == 2


def test_reopen_resumes(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, STATES) as ledger:
        ledger.record("a")
        ledger.advance("a", "staged", {"n": 1})
    with Ledger(path, STATES) as ledger:
        assert must_get(ledger, "a").attributes == {"n": 1}
        assert [item.key for item in ledger.items_in_state("staged")] == ["a"]


def test_reopen_with_states_that_do_not_cover_the_file(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, STATES) as ledger:
        ledger.record("a", "staged")
    with pytest.raises(LedgerStateError, match=r"holds states \['staged'\]"):
        Ledger(path, ("seen", "done")).open()


def test_crash_mid_transaction_loses_only_the_open_transaction(tmp_path):
    path = tmp_path / "ledger.sqlite"
    script = textwrap.dedent(
        f"""
        import os
        from edgekit import Ledger
        ledger = Ledger({str(path)!r}, {STATES!r}).open()
        for index in range(50):
            ledger.record(f"done-{{index}}")
            ledger.advance(f"done-{{index}}", "done", {{"index": index}})
        with ledger.batch():
            for index in range(50):
                ledger.record(f"lost-{{index}}")
            ledger.advance("done-0", "done", {{"changed": True}})
            os._exit(9)  # killed: no commit, no close, no atexit
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert result.returncode == 9
    with Ledger(path, STATES) as ledger:
        assert ledger.counts() == {"seen": 0, "staged": 0, "done": 50}
        assert must_get(ledger, "done-0").attributes == {"index": 0}
        assert ledger.get("lost-0") is None
        ledger.record("after-crash")
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_concurrent_connections_check_transitions_atomically(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path, STATES).open().close()
    errors: list[BaseException] = []
    refused: list[str] = []
    names = [f"w{n}" for n in range(4)]

    def worker(name: str) -> None:
        try:
            with Ledger(path, STATES) as ledger:
                for index in range(100):
                    key = f"k{index}"
                    ledger.record(key)
                    ledger.advance(key, "done", {"by": name})
                    try:
                        ledger.advance(key, "staged")
                    except LedgerStateError:
                        refused.append(key)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    with Ledger(path, STATES) as ledger:
        assert ledger.counts() == {"seen": 0, "staged": 0, "done": 100}
        assert all(must_get(ledger, f"k{index}").attributes["by"] in names for index in range(100))
    # Every connection saw every item as done and was refused a step back.
    assert len(refused) == 400


def test_one_ledger_shared_by_threads(ledger):
    def worker(offset: int) -> None:
        for index in range(200):
            ledger.record(f"{offset}-{index}")
            ledger.advance(f"{offset}-{index}", "done")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert ledger.counts()["done"] == 800


def test_corrupted_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database, just garbage " * 200)
    with pytest.raises(LedgerCorruptError, match=r"not a usable ledger database.*move it aside"):
        Ledger(path).open()


def test_a_different_sqlite_file_is_refused_or_adopted_clearly(tmp_path):
    path = tmp_path / "other.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE items (key TEXT)")
    connection.commit()
    connection.close()
    with pytest.raises(LedgerCorruptError):
        Ledger(path).open()
