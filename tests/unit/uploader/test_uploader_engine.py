"""The engine over the in-memory store: exactly once, verified, resumable, ordered, offline-safe."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from typing import Any

import pytest

from uploader import FakeBlobStore, FileState, StorageUnavailable, StoreError, UploadResult


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


async def test_small_file_goes_up_once_with_its_md5(harness, make_settings) -> None:
    up = harness.make(make_settings(upload={"storageContainersForUpload": {"*": {"target": "%h-%m"}}}))
    harness.write("sensors/date=2026-01-01/f1.parquet", b"rows" * 100)
    assert up.submit("sensors/date=2026-01-01/f1.parquet")

    results = await up.process_due()

    blob_name = "dev1/uploader/sensors/date=2026-01-01/f1.parquet"
    assert results == [
        UploadResult(
            path="sensors/date=2026-01-01/f1.parquet",
            container="hub1-uploader",
            blob_name=blob_name,
            etag=harness.store.blobs[("hub1-uploader", blob_name)].etag,
            md5=_md5_b64(b"rows" * 100),
            bytes=400,
            skipped=False,
        )
    ]
    assert harness.store.blobs[("hub1-uploader", blob_name)].data == b"rows" * 100
    assert harness.notified == results
    assert harness.queue.get("sensors/date=2026-01-01/f1.parquet").state is FileState.UPLOADED
    # Exactly once: neither a second pass nor a repeated message sends it again.
    assert not up.submit("sensors/date=2026-01-01/f1.parquet")
    assert await up.process_due() == []
    assert harness.store.count("upload") == 1
    assert harness.queue.unnotified() == []


async def test_blob_already_there_with_same_md5_is_skipped(harness) -> None:
    up = harness.make()
    data = b"same content"
    harness.write("a/x.bin", data)
    harness.write("a/y.bin", b"new content")
    harness.store.containers.add("data")
    await harness.store.upload(
        "data", "dev1/uploader/a/x.bin", data, hashlib.md5(data, usedforsecurity=False).digest()
    )
    stale = b"old content"
    await harness.store.upload(
        "data", "dev1/uploader/a/y.bin", stale, hashlib.md5(stale, usedforsecurity=False).digest()
    )
    harness.store.calls.clear()
    harness.enqueue_all(up, "a/x.bin", "a/y.bin")

    results = {r.path: r for r in await up.process_due()}

    assert results["a/x.bin"].skipped
    assert results["a/x.bin"].md5 == _md5_b64(data)
    assert not results["a/y.bin"].skipped
    assert harness.store.blobs[("data", "dev1/uploader/a/y.bin")].data == b"new content"
    assert [c[2] for c in harness.store.calls if c[0] == "upload"] == ["dev1/uploader/a/y.bin"]


async def test_large_file_goes_in_blocks_and_is_verified(harness, make_settings) -> None:
    cfg = make_settings(transfer={"singlePutMaxBytes": 4096, "blockSizeBytes": 4096})
    up = harness.make(cfg)
    data = bytes(range(256)) * 70  # 17920 bytes: 5 blocks, the last one short
    harness.write("big/file.bin", data)
    up.submit("big/file.bin")

    [result] = await up.process_due()

    blob = harness.store.blobs[("data", "dev1/uploader/big/file.bin")]
    assert blob.data == data
    assert blob.md5 == hashlib.md5(data, usedforsecurity=False).digest()
    assert result.md5 == _md5_b64(data)
    assert result.bytes == len(data)
    assert harness.store.count("stage_block") == 5
    assert harness.store.count("commit_blocks") == 1
    assert up.stats().blocks_staged == 5


async def test_interrupted_block_upload_resumes_without_resending_staged_blocks(
    harness, make_settings
) -> None:
    cfg = make_settings(transfer={"singlePutMaxBytes": 1024, "blockSizeBytes": 1024})
    data = hashlib.sha256(b"seed").digest() * 320  # 10240 bytes: 10 blocks
    harness.write("big/file.bin", data)
    stop = asyncio.Event()

    def stop_after_four(operation: str) -> None:
        if operation == "stage_block" and harness.store.count("stage_block") == 3:
            stop.set()  # the 4th block is staged, then the engine stops between blocks

    harness.store.before_call = stop_after_four
    first = harness.make(cfg)
    first.submit("big/file.bin")
    assert await first.process_due(stop) == []
    staged_before = set(harness.store.staged[("data", "dev1/uploader/big/file.bin")])
    assert len(staged_before) == 4
    assert harness.queue.get("big/file.bin").state is FileState.PENDING

    harness.store.before_call = None
    harness.store.calls.clear()
    resumed = harness.make(cfg)  # a new process: only the queue and the store's staged blocks survive
    [result] = await resumed.process_due()

    staged_now = [c[3] for c in harness.store.calls if c[0] == "stage_block"]
    assert len(staged_now) == 6
    assert not staged_before & set(staged_now)
    assert resumed.stats().blocks_resumed == 4
    assert harness.store.blobs[("data", "dev1/uploader/big/file.bin")].data == data
    assert result.md5 == _md5_b64(data)


async def test_changed_block_size_does_not_reuse_mismatched_blocks(harness, make_settings) -> None:
    data = bytes(range(256)) * 40
    harness.write("big/f.bin", data)
    stop = asyncio.Event()
    harness.store.before_call = lambda op: stop.set() if op == "stage_block" else None
    first = harness.make(make_settings(transfer={"singlePutMaxBytes": 1024, "blockSizeBytes": 1024}))
    first.submit("big/f.bin")
    await first.process_due(stop)
    harness.store.before_call = None

    second = harness.make(make_settings(transfer={"singlePutMaxBytes": 1024, "blockSizeBytes": 2048}))
    [result] = await second.process_due()

    assert second.stats().blocks_resumed == 0
    assert harness.store.blobs[("data", "dev1/uploader/big/f.bin")].data == data
    assert result.bytes == len(data)


@pytest.mark.parametrize(
    ("order", "expected"), [("OldestFirst", ["c", "a", "b"]), ("NewestFirst", ["b", "a", "c"])]
)
async def test_upload_order(harness, make_settings, order: str, expected: list[str]) -> None:
    up = harness.make(make_settings(upload={"uploadOrder": order}))
    harness.write("d/a", b"a", age_s=200)
    harness.write("d/b", b"b", age_s=100)
    harness.write("d/c", b"c", age_s=300)
    harness.enqueue_all(up, "d/a", "d/b", "d/c")

    await up.process_due()

    assert [c[2].rsplit("/", 1)[1] for c in harness.store.calls if c[0] == "upload"] == expected


async def test_offline_backs_off_exponentially_then_drains_without_duplicates(harness, make_settings) -> None:
    up = harness.make(
        make_settings(transfer={"retryInitialSeconds": 2, "retryMaxSeconds": 10, "concurrency": 3})
    )
    for i in range(5):
        harness.write(f"d/f{i}", f"file {i}".encode(), age_s=10 - i)
    harness.enqueue_all(up, *(f"d/f{i}" for i in range(5)))
    harness.store.available = False

    delays = []
    for _ in range(5):
        assert await up.process_due() == []
        assert up.offline
        delays.append(up.stats().offline_until - harness.clock.time())
        assert await up.process_due() == []  # still offline: nothing is tried
        harness.clock.advance(delays[-1])
    assert delays == [2, 4, 8, 10, 10]
    assert harness.queue.counts()["pending"] == 5

    harness.store.available = True
    results = await up.process_due()

    assert sorted(r.path for r in results) == [f"d/f{i}" for i in range(5)]
    assert harness.store.count("upload") == 5
    assert len(harness.store.blobs) == 5
    assert not up.offline
    # The outage is over: the next one starts again from the first step.
    harness.write("d/late", b"late")
    up.submit("d/late")
    harness.store.fail_next(1)
    await up.process_due()
    assert up.stats().offline_until - harness.clock.time() == 2


async def test_backoff_jitter_comes_from_the_injected_random_source(harness, make_settings) -> None:
    up = harness.make(
        make_settings(transfer={"retryInitialSeconds": 4, "retryJitter": 0.5}), random_unit=lambda: 0.5
    )
    harness.write("d/f", b"x")
    up.submit("d/f")
    harness.store.fail_next(1)
    await up.process_due()
    assert up.stats().offline_until - harness.clock.time() == pytest.approx(3.0)


async def test_refused_file_backs_off_alone_while_others_go(harness, make_settings) -> None:
    up = harness.make(make_settings(transfer={"retryInitialSeconds": 1}))
    harness.write("d/bad", b"bad", age_s=20)
    harness.write("d/good", b"good", age_s=10)
    harness.enqueue_all(up, "d/bad", "d/good")
    harness.store.containers.add("data")
    harness.store.fail_next(1, StoreError("denied", status=403, code="AuthorizationFailure"))

    results = await up.process_due()

    assert [r.path for r in results] == ["d/good"]
    bad = harness.queue.get("d/bad")
    assert bad.state is FileState.PENDING
    assert bad.attempts == 1
    assert "denied" in (bad.last_error or "")
    assert bad.next_attempt_at == harness.clock.time() + 1
    assert not up.offline
    harness.clock.advance(1)
    assert [r.path for r in await up.process_due()] == ["d/bad"]


async def test_errors_are_stored_and_logged_without_credentials(
    harness, make_settings, account_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    up = harness.make(make_settings())
    harness.write("d/f", b"x")
    up.submit("d/f")
    harness.store.fail_next(1, StorageUnavailable(f"connect failed for AccountKey={account_key}"))
    with caplog.at_level(logging.DEBUG):
        await up.process_due()
    row = harness.queue.get("d/f")
    assert row.last_error
    assert "connect failed" in row.last_error
    assert account_key not in row.last_error
    assert "storage unavailable" in caplog.text
    assert account_key not in caplog.text


async def test_file_changed_during_upload_is_deferred_not_marked_uploaded(harness, make_settings) -> None:
    cfg = make_settings(transfer={"singlePutMaxBytes": 1024, "blockSizeBytes": 1024})
    path = harness.write("big/f.bin", b"a" * 5000)
    up = harness.make(cfg)
    up.submit("big/f.bin")

    def rewrite(operation: str) -> None:
        if operation == "stage_block" and harness.store.count("stage_block") == 1:
            path.write_bytes(b"b" * 5000)  # same size, different bytes, new mtime

    harness.store.before_call = rewrite
    assert await up.process_due() == []
    row = harness.queue.get("big/f.bin")
    assert row.state is FileState.PENDING
    assert "changed" in (row.last_error or "")
    assert ("data", "dev1/uploader/big/f.bin") not in harness.store.blobs

    harness.store.before_call = None
    harness.clock.advance(60)
    [result] = await up.process_due()
    assert harness.store.blobs[("data", "dev1/uploader/big/f.bin")].data == b"b" * 5000
    assert result.md5 == _md5_b64(b"b" * 5000)


async def test_vanished_file_is_dropped(harness) -> None:
    up = harness.make()
    harness.write("d/gone", b"x")
    up.submit("d/gone")
    (harness.share / "d/gone").unlink()
    assert await up.process_due() == []
    assert harness.queue.get("d/gone").state is FileState.MISSING
    assert not up.submit("d/gone")  # and a message naming a file that is not there queues nothing


async def test_submit_refuses_temporary_and_escaping_paths(harness) -> None:
    up = harness.make()
    harness.write("d/f.tmp", b"x")
    assert not up.submit("d/f.tmp")
    with pytest.raises(ValueError, match="inside the cloud share"):
        up.submit("../outside")


async def test_scan_takes_only_finished_files(harness) -> None:
    up = harness.make()
    harness.write("d/done.parquet", b"1")
    harness.write("d/.inprogress.parquet", b"2")
    harness.write("d/x.parquet.tmp", b"3")
    harness.write("d/y.partial", b"4")
    harness.write(".hidden/z.parquet", b"5")
    growing = harness.write("d/growing.parquet", b"6")

    first = await up.scan()
    assert first.enqueued == []
    assert first.unstable == 2
    assert first.temporary == 3

    growing.write_bytes(b"66")
    second = await up.scan()
    assert second.enqueued == ["d/done.parquet"]
    assert second.unstable == 1

    third = await up.scan()
    assert third.enqueued == ["d/growing.parquet"]
    await up.process_due()
    assert (await up.scan()).enqueued == []  # uploaded and unchanged: not again
    assert harness.store.count("upload") == 2


async def test_scan_requeues_a_file_rewritten_after_upload(harness) -> None:
    up = harness.make()
    path = harness.write("d/f", b"v1", age_s=100)
    await up.scan()
    await up.scan()
    await up.process_due()
    path.write_bytes(b"version 2")
    await up.scan()
    assert (await up.scan()).enqueued == ["d/f"]
    await up.process_due()
    assert harness.store.blobs[("data", "dev1/uploader/d/f")].data == b"version 2"


async def test_scan_ignores_folders_no_entry_covers(harness, make_settings) -> None:
    up = harness.make(make_settings(upload={"storageContainersForUpload": {"sensors": {"target": "s"}}}))
    harness.write("sensors/a", b"1")
    harness.write("other/b", b"2")
    harness.write("root-file", b"3")
    await up.scan()
    report = await up.scan()
    assert report.enqueued == ["sensors/a"]
    assert report.unmapped == 2


async def test_bandwidth_cap_spaces_requests_at_the_configured_rate(harness, make_settings) -> None:
    cfg = make_settings(transfer={"maxBytesPerSecond": 1000, "singlePutMaxBytes": 4096})
    up = harness.make(cfg)
    for i in range(5):
        harness.write(f"d/f{i}", bytes(1000), age_s=10 - i)
    harness.enqueue_all(up, *(f"d/f{i}" for i in range(5)))
    start = harness.clock.time()

    await up.process_due()

    # One second's worth goes at once, then 1000 B/s: the other four files wait a second each.
    assert harness.clock.time() - start == pytest.approx(4.0)
    assert harness.clock.sleeps == pytest.approx([1.0] * 4)
    assert up.stats().bytes_sent == 5000


async def test_bandwidth_cap_applies_per_block(harness, make_settings) -> None:
    cfg = make_settings(
        transfer={"maxBytesPerSecond": 1024, "singlePutMaxBytes": 1024, "blockSizeBytes": 1024}
    )
    up = harness.make(cfg)
    harness.write("big/f", bytes(10 * 1024))
    up.submit("big/f")
    start = harness.clock.time()
    await up.process_due()
    assert harness.clock.time() - start == pytest.approx(9.0)
    assert all(s == pytest.approx(1.0) for s in harness.clock.sleeps)


async def test_uploads_run_concurrently_up_to_the_limit(harness, make_settings) -> None:
    class SlowStore(FakeBlobStore):
        in_flight = 0
        peak = 0

        async def upload(self, *args: Any) -> Any:
            SlowStore.in_flight += 1
            SlowStore.peak = max(SlowStore.peak, SlowStore.in_flight)
            await asyncio.sleep(0.01)
            SlowStore.in_flight -= 1
            return await super().upload(*args)

    store = SlowStore()
    up = harness.make(make_settings(transfer={"concurrency": 3}), store=store)
    for i in range(8):
        harness.write(f"d/f{i}", f"{i}".encode())
    harness.enqueue_all(up, *(f"d/f{i}" for i in range(8)))
    results = await up.process_due()
    assert len(results) == 8
    assert SlowStore.peak == 3


async def test_upload_off_queues_but_sends_nothing(harness, make_settings) -> None:
    up = harness.make(make_settings(upload={"uploadOn": False}))
    harness.write("d/f", b"x")
    assert up.submit("d/f")
    assert await up.process_due() == []
    assert harness.store.calls == []
    up.update_settings(make_settings())
    assert len(await up.process_due()) == 1


async def test_failed_notification_is_sent_again_also_after_restart(harness) -> None:
    attempts: list[str] = []

    async def flaky(result: UploadResult) -> None:
        attempts.append(result.path)
        raise ConnectionError("edgeHub away")

    up = harness.make(on_uploaded=flaky)
    harness.write("d/f", b"x")
    up.submit("d/f")
    await up.process_due()
    assert attempts == ["d/f"]
    assert [r.path for r in harness.queue.unnotified()] == ["d/f"]

    restarted = harness.make()  # records into harness.notified
    assert await restarted.flush_notifications() == 1
    assert [r.path for r in harness.notified] == ["d/f"]
    assert harness.queue.unnotified() == []
    assert await restarted.flush_notifications() == 0


async def test_run_loop_uploads_what_appears_and_stops_on_request(tmp_path, make_settings) -> None:
    from uploader import Identity, SystemClock, Uploader, UploadQueue

    share = tmp_path / "share"
    (share / "d").mkdir(parents=True)
    queue = UploadQueue(tmp_path / "q.db")
    queue.open()
    store = FakeBlobStore()
    up = Uploader(
        make_settings(transfer={"scanIntervalSeconds": 0.02}),
        share_root=share,
        store=store,
        queue=queue,
        identity=Identity("h", "d", "m"),
        clock=SystemClock(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(up.run(stop))
    (share / "d" / "scanned").write_bytes(b"found by scan")
    (share / "d" / "messaged").write_bytes(b"named by a message")
    up.submit("d/messaged")
    for _ in range(500):
        if len(store.blobs) == 2:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    queue.close()
    assert {name for _, name in store.blobs} == {"d/m/d/scanned", "d/m/d/messaged"}
    assert store.count("upload") == 2


async def test_container_deleted_behind_our_back_is_created_again(harness) -> None:
    up = harness.make()
    harness.write("d/one", b"1")
    up.submit("d/one")
    await up.process_due()
    harness.store.containers.clear()  # someone deleted the container in the cloud
    harness.write("d/two", b"2")
    up.submit("d/two")

    assert await up.process_due() == []
    assert harness.queue.get("d/two").attempts == 1
    harness.clock.advance(1)
    assert [r.path for r in await up.process_due()] == ["d/two"]
    assert harness.store.count("ensure_container") == 2
