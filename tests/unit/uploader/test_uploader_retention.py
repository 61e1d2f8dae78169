"""Retention: delete after upload, after N minutes, under disk pressure; never a file that is not uploaded."""

from __future__ import annotations

import random

from uploader import DiskUsage, FileState, StoreError


async def _upload(harness, up, *paths: str) -> None:
    harness.enqueue_all(up, *paths)
    results = await up.process_due()
    assert sorted(r.path for r in results) == sorted(paths)


async def test_delete_after_upload_removes_only_what_went_up(harness, make_settings) -> None:
    up = harness.make(make_settings(upload={"deleteAfterUpload": True}))
    harness.write("d/refused", b"no", age_s=20)
    harness.write("d/ok", b"ok", age_s=10)
    harness.store.containers.add("data")
    harness.enqueue_all(up, "d/refused", "d/ok")
    harness.store.fail_next(1, StoreError("refused", status=403, code="AuthorizationFailure"))

    await up.process_due()

    assert not (harness.share / "d/ok").exists()
    assert harness.queue.get("d/ok").state is FileState.DELETED
    assert harness.store.blobs[("data", "dev1/uploader/d/ok")].data == b"ok"
    assert (harness.share / "d/refused").exists()
    assert up.apply_retention() == []
    assert (harness.share / "d/refused").exists()

    harness.clock.advance(10)
    await up.process_due()
    assert not (harness.share / "d/refused").exists()


async def test_keep_for_n_minutes_then_delete(harness, make_settings) -> None:
    up = harness.make(make_settings(auto={"deleteOn": True, "deleteAfterMinutes": 60}))
    harness.write("d/old", b"o", age_s=2 * 3600)
    harness.write("d/young", b"y", age_s=10 * 60)
    harness.write("d/old-not-uploaded", b"n", age_s=5 * 3600)
    await _upload(harness, up, "d/old", "d/young")

    assert up.apply_retention() == ["d/old"]
    assert (harness.share / "d/young").exists()
    assert (harness.share / "d/old-not-uploaded").exists()

    harness.clock.advance(51 * 60)
    assert up.apply_retention() == ["d/young"]
    assert (harness.share / "d/old-not-uploaded").exists()


async def test_disk_pressure_deletes_oldest_uploaded_first(harness, make_settings) -> None:
    up = harness.make(make_settings(auto={"minFreeBytes": 1000}))
    harness.write("d/pending-oldest", bytes(500), age_s=400)
    harness.write("d/a", bytes(300), age_s=300)
    harness.write("d/b", bytes(300), age_s=200)
    harness.write("d/c", bytes(300), age_s=100)
    await _upload(harness, up, "d/a", "d/b", "d/c")

    harness.disk = DiskUsage(total=10_000, used=9_500, free=500)
    assert up.apply_retention() == ["d/a", "d/b"]
    assert (harness.share / "d/c").exists()
    assert (harness.share / "d/pending-oldest").exists()

    harness.disk = DiskUsage(total=10_000, used=9_999, free=1)
    assert up.apply_retention() == ["d/c"]
    assert (harness.share / "d/pending-oldest").exists()  # nothing uploaded is left to free; this one stays

    harness.disk = DiskUsage(total=10_000, used=100, free=9_900)
    assert up.apply_retention() == []


async def test_disk_pressure_by_percentage(harness, make_settings) -> None:
    up = harness.make(make_settings(auto={"minFreePercent": 20}))
    harness.write("d/a", bytes(100), age_s=20)
    harness.write("d/b", bytes(100), age_s=10)
    await _upload(harness, up, "d/a", "d/b")
    harness.disk = DiskUsage(total=1000, used=850, free=150)
    assert up.apply_retention() == ["d/a"]


async def test_file_rewritten_after_upload_is_not_deleted_but_uploaded_again(harness, make_settings) -> None:
    up = harness.make(make_settings(auto={"deleteOn": True, "deleteAfterMinutes": 0}))
    path = harness.write("d/f", b"v1", age_s=60)
    harness.enqueue_all(up, "d/f")
    harness.store.before_call = lambda op: path.write_bytes(b"v2, longer") if op == "upload" else None
    # v1 was hashed and sent; v2 landed on disk meanwhile: the uploaded row describes v1's size and mtime.
    await up.process_due()
    harness.store.before_call = None

    assert up.apply_retention() == []
    assert path.read_bytes() == b"v2, longer"
    assert harness.queue.get("d/f").state is FileState.PENDING
    await up.process_due()
    assert harness.store.blobs[("data", "dev1/uploader/d/f")].data == b"v2, longer"
    assert up.apply_retention() == ["d/f"]


async def test_no_setting_and_no_state_ever_deletes_an_unuploaded_file(harness, make_settings) -> None:
    """Every retention rule at its most aggressive, over a random mix of uploaded, failed and new files."""
    rng = random.Random(7)
    up = harness.make(
        make_settings(
            upload={"deleteAfterUpload": True},
            auto={"deleteOn": True, "deleteAfterMinutes": 0, "minFreeBytes": 10**15, "minFreePercent": 100},
        )
    )
    harness.disk = DiskUsage(total=10**15, used=10**15, free=0)
    never_uploaded: list[str] = []
    uploaded: list[str] = []
    for i in range(60):
        path = f"d{i % 3}/f{i}"
        harness.write(path, rng.randbytes(rng.randint(1, 3000)), age_s=rng.uniform(0, 10**6))
        fate = rng.choice(["upload", "queued-offline", "refused", "not-queued"])
        if fate == "upload":
            harness.enqueue_all(up, path)
            assert len(await up.process_due()) == 1
            uploaded.append(path)
        elif fate == "queued-offline":
            harness.enqueue_all(up, path)
            harness.store.available = False
            assert await up.process_due() == []
            harness.store.available = True
            never_uploaded.append(path)
        elif fate == "refused":
            harness.enqueue_all(up, path)
            harness.store.fail_next(1, StoreError("refused", status=403))
            assert await up.process_due() == []
            never_uploaded.append(path)
        else:
            never_uploaded.append(path)
        # Park the failed files so they stay un-uploaded for the rest of the test, and let any outage pass.
        for parked in never_uploaded:
            row = harness.queue.get(parked)
            if row is not None:
                harness.queue.defer(parked, 10**12, reason="parked", size=row.size, mtime_ns=row.mtime_ns)
        harness.clock.advance(3600)
        up.apply_retention()
    up.apply_retention()

    assert never_uploaded
    assert uploaded
    for path in never_uploaded:
        assert (harness.share / path).exists(), path
    for path in uploaded:
        assert not (harness.share / path).exists(), path
