"""Store-and-forward: order, TTL with an injected clock, persistence, expired counts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgesim.messages import HubMessage
from edgesim.store import MessageStore

UP = "$upstream"
INFER = "gpu-inferencer/inputs/batches"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(tag: str) -> HubMessage:
    return HubMessage(
        body=f'{{"tag": "{tag}"}}'.encode(),
        app_properties={"tag": tag, "ünï": "cödé"},
        system_properties={"connectionModuleId": "transformer", "outputName": "batches"},
    )


def tags(store: MessageStore, endpoint: str, limit: int = 100) -> list[str]:
    return [m.message.app_properties["tag"] for m in store.next_batch(endpoint, limit)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[MessageStore]:
    s = MessageStore(tmp_path / "store.db", clock=clock)
    s.open()
    yield s
    s.close()


def test_constructor_does_no_io(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "store.db"
    MessageStore(path)
    assert not path.parent.exists()


def test_use_before_open_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="open"):
        MessageStore(tmp_path / "s.db").pending()


def test_open_uses_wal_and_creates_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "state" / "edgehub" / "store.db"
    with MessageStore(path) as s:
        s.add(UP, "r", message("a"), 1, None)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_invalid_synchronous_mode_is_rejected_at_open(tmp_path: Path) -> None:
    s = MessageStore(tmp_path / "s.db", synchronous="sometimes")
    with pytest.raises(ValueError, match="synchronous"):
        s.open()


def test_round_trip_keeps_every_field(store: MessageStore, clock: FakeClock) -> None:
    original = message("a")
    seq = store.add(INFER, "batchesToInferencer", original, 3, 60)
    [stored] = store.next_batch(INFER, 10)
    assert stored.seq == seq
    assert stored.endpoint == INFER
    assert stored.route == "batchesToInferencer"
    assert stored.priority == 3
    assert stored.enqueued_at == clock.now
    assert stored.expires_at == clock.now + 60
    assert stored.message == original


def test_fifo_within_one_priority(store: MessageStore) -> None:
    for tag in "abcde":
        store.add(UP, "r", message(tag), 5, None)
    assert tags(store, UP) == list("abcde")


def test_highest_priority_first_then_fifo(store: MessageStore) -> None:
    store.add(UP, "bulk", message("bulk1"), 2_000_000_000, None)
    store.add(UP, "mid", message("mid1"), 4, None)
    store.add(UP, "urgent", message("urgent1"), 0, None)
    store.add(UP, "bulk", message("bulk2"), 2_000_000_000, None)
    store.add(UP, "urgent", message("urgent2"), 0, None)
    store.add(UP, "mid", message("mid2"), 4, None)
    assert tags(store, UP) == ["urgent1", "urgent2", "mid1", "mid2", "bulk1", "bulk2"]


def test_next_batch_respects_limit_and_does_not_remove(store: MessageStore) -> None:
    for tag in "abc":
        store.add(UP, "r", message(tag), 1, None)
    assert tags(store, UP, limit=2) == ["a", "b"]
    assert tags(store, UP, limit=2) == ["a", "b"]
    assert store.next_batch(UP, 0) == []
    assert store.pending(UP) == 3


def test_next_batch_excludes_in_flight_seqs(store: MessageStore) -> None:
    seqs = [store.add(UP, "r", message(tag), 1, None) for tag in "abcd"]
    batch = store.next_batch(UP, 2, exclude=seqs[:2])
    assert [m.message.app_properties["tag"] for m in batch] == ["c", "d"]


def test_remove_after_ack_and_remove_is_idempotent(store: MessageStore) -> None:
    first = store.add(UP, "r", message("a"), 1, None)
    store.add(UP, "r", message("b"), 1, None)
    store.remove(first)
    store.remove(first)
    store.remove(999_999)
    assert tags(store, UP) == ["b"]
    assert store.pending() == 1


def test_add_many_fans_one_message_out_with_per_target_priority_and_ttl(
    store: MessageStore, clock: FakeClock
) -> None:
    seqs = store.add_many(message("a"), [(UP, "toCloud", 0, 60), (INFER, "toInferencer", 5, None)])
    assert len(seqs) == 2
    assert seqs[0] < seqs[1]
    [up] = store.next_batch(UP, 10)
    [infer] = store.next_batch(INFER, 10)
    assert (up.seq, up.route, up.priority, up.expires_at) == (seqs[0], "toCloud", 0, clock.now + 60)
    assert (infer.seq, infer.route, infer.priority, infer.expires_at) == (seqs[1], "toInferencer", 5, None)
    assert up.message == infer.message == message("a")


def test_add_many_is_all_or_nothing(store: MessageStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.add_many(message("a"), [(UP, "r", 1, None), (INFER, None, 1, None)])  # type: ignore[list-item]
    assert store.pending() == 0
    assert store.add_many(message("b"), []) == []


def test_remove_many(store: MessageStore) -> None:
    seqs = [store.add(UP, "r", message(tag), 1, None) for tag in "abcd"]
    store.remove_many([seqs[0], seqs[2], 12345])
    assert tags(store, UP) == ["b", "d"]
    store.remove_many([])
    assert store.pending() == 2


def test_endpoints_are_separate_queues(store: MessageStore) -> None:
    store.add(UP, "r", message("up"), 1, None)
    store.add(INFER, "r", message("infer1"), 1, None)
    store.add(INFER, "r", message("infer2"), 1, None)
    assert tags(store, UP) == ["up"]
    assert tags(store, INFER) == ["infer1", "infer2"]
    assert store.pending(UP) == 1
    assert store.pending(INFER) == 2
    assert store.pending() == 3
    assert store.pending("nobody/inputs/x") == 0
    assert store.endpoints_with_pending() == [UP, INFER]


def test_endpoint_without_pending_drops_out_of_the_list(store: MessageStore) -> None:
    seq = store.add(INFER, "r", message("a"), 1, None)
    store.add(UP, "r", message("b"), 1, None)
    store.remove(seq)
    assert store.endpoints_with_pending() == [UP]


def test_seq_grows_and_is_never_reused(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.db"
    with MessageStore(path, clock=clock) as s:
        first = s.add(UP, "r", message("a"), 1, None)
        second = s.add(UP, "r", message("b"), 1, None)
        assert second > first
        s.remove(second)
    with MessageStore(path, clock=clock) as s:
        third = s.add(UP, "r", message("c"), 1, None)
    assert third > second


# ---------------------------------------------------------------------------------------------
# TTL


def test_message_expires_exactly_at_its_ttl(store: MessageStore, clock: FakeClock) -> None:
    store.add(UP, "r", message("a"), 1, 10)
    clock.now += 9.999
    assert tags(store, UP) == ["a"]
    clock.now += 0.001
    assert tags(store, UP) == []
    assert store.expired() == {UP: 1}


def test_expired_messages_are_removed_before_choosing_a_batch(store: MessageStore, clock: FakeClock) -> None:
    store.add(UP, "r", message("short"), 0, 5)
    store.add(UP, "r", message("long"), 9, 100)
    store.add(UP, "r", message("forever"), 9, None)
    clock.now += 6
    # The expired priority-0 message does not take a slot in a batch of one.
    assert tags(store, UP, limit=1) == ["long"]
    assert store.pending(UP) == 2
    assert store.expired() == {UP: 1}


@pytest.mark.parametrize("ttl", [None, 0, -1])
def test_no_expiry_for_none_or_non_positive_ttl(
    store: MessageStore, clock: FakeClock, ttl: int | None
) -> None:
    store.add(UP, "r", message("a"), 1, ttl)
    clock.now += 10 * 365 * 24 * 3600
    assert tags(store, UP) == ["a"]
    [stored] = store.next_batch(UP, 1)
    assert stored.expires_at is None
    assert store.expired() == {}


def test_expired_counts_per_endpoint_and_accumulate(store: MessageStore, clock: FakeClock) -> None:
    store.add(UP, "r", message("a"), 1, 1)
    store.add(UP, "r", message("b"), 1, 1)
    store.add(INFER, "r", message("c"), 1, 1)
    store.add(INFER, "r", message("d"), 1, 100)
    clock.now += 2
    assert store.purge_expired() == 3
    assert store.purge_expired() == 0
    assert store.expired() == {UP: 2, INFER: 1}
    store.add(UP, "r", message("e"), 1, 1)
    clock.now += 2
    assert store.expired() == {UP: 3, INFER: 1}
    assert store.pending() == 1


def test_pending_and_endpoint_list_ignore_expired(store: MessageStore, clock: FakeClock) -> None:
    store.add(UP, "r", message("a"), 1, 1)
    store.add(INFER, "r", message("b"), 1, None)
    clock.now += 1
    assert store.pending() == 1
    assert store.pending(UP) == 0
    assert store.endpoints_with_pending() == [INFER]


def test_removing_an_expired_message_later_is_harmless(store: MessageStore, clock: FakeClock) -> None:
    seq = store.add(UP, "r", message("a"), 1, 1)
    clock.now += 5
    assert store.next_batch(UP, 1) == []
    store.remove(seq)
    assert store.expired() == {UP: 1}


# ---------------------------------------------------------------------------------------------
# persistence


def test_pending_messages_survive_close_and_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.db"
    s = MessageStore(path, clock=clock)
    s.open()
    delivered = s.add(UP, "r", message("delivered"), 1, None)
    s.add(UP, "urgent", message("urgent"), 0, 3600)
    s.add(UP, "r", message("waiting"), 1, None)
    s.add(INFER, "r", message("infer"), 1, None)
    s.remove(delivered)
    s.close()

    reopened = MessageStore(path, clock=clock)
    reopened.open()
    try:
        assert tags(reopened, UP) == ["urgent", "waiting"]
        assert tags(reopened, INFER) == ["infer"]
        [urgent] = reopened.next_batch(UP, 1)
        assert urgent.expires_at == clock.now + 3600
    finally:
        reopened.close()


def test_ttl_keeps_counting_across_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.db"
    with MessageStore(path, clock=clock) as s:
        s.add(UP, "r", message("a"), 1, 10)
    clock.now += 11
    with MessageStore(path, clock=clock) as s:
        assert s.next_batch(UP, 10) == []
        assert s.expired() == {UP: 1}


def test_expired_counts_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.db"
    with MessageStore(path, clock=clock) as s:
        s.add(INFER, "r", message("a"), 1, 1)
        clock.now += 2
        assert s.purge_expired() == 1
    with MessageStore(path, clock=clock) as s:
        assert s.expired() == {INFER: 1}


def test_an_added_message_is_visible_to_another_connection_at_once(tmp_path: Path) -> None:
    """add() commits before returning: the basis for sending PUBACK after it."""
    path = tmp_path / "s.db"
    with MessageStore(path) as s:
        s.add(UP, "r", message("a"), 1, None)
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
        finally:
            other.close()


def test_open_twice_and_close_twice_are_harmless(tmp_path: Path) -> None:
    s = MessageStore(tmp_path / "s.db")
    s.open()
    s.open()
    s.add(UP, "r", message("a"), 1, None)
    s.close()
    s.close()
    with MessageStore(tmp_path / "s.db") as again:
        assert again.pending() == 1
