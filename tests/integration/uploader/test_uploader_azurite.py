"""The uploader against real Azurite: verified uploads, resume after a kill, an outage and its backlog."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob.aio import BlobServiceClient

from uploader import (
    AzureBlobStore,
    FileState,
    Identity,
    StorageUnavailable,
    StoreError,
    Uploader,
    UploaderSettings,
    UploadQueue,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HERE = Path(__file__).resolve().parent
IDENTITY = Identity("hub", "dev", "mod")


def _settings(connection: str, **transfer: Any) -> UploaderSettings:
    return UploaderSettings.model_validate(
        {
            "deviceToCloudUploadProperties": {
                "uploadOn": True,
                "cloudStorageConnectionString": connection,
                "storageContainersForUpload": {"*": {"target": "%m-%c"}},
            },
            "transferProperties": {"retryJitter": 0.0, **transfer},
        }
    )


def _write(share: Path, rel: str, data: bytes) -> None:
    path = share / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def _download(connection: str, container: str, name: str) -> tuple[bytes, bytes | None]:
    async with BlobServiceClient.from_connection_string(connection) as service:
        blob = service.get_blob_client(container, name)
        data = await (await blob.download_blob()).readall()
        md5 = (await blob.get_blob_properties()).content_settings.content_md5
        return data, bytes(md5) if md5 else None


class Requests:
    """Records the HTTP requests the SDK sends (method, path, query) and the statuses that came back."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, str]]] = []
        self.answered: list[tuple[str, str, int]] = []

    def on_request(self, request: Any) -> None:
        url = urllib.parse.urlsplit(request.http_request.url)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.sent.append((request.http_request.method, urllib.parse.unquote(url.path), query))

    def on_response(self, response: Any) -> None:
        request = response.http_request
        path = urllib.parse.unquote(urllib.parse.urlsplit(request.url).path)
        self.answered.append((request.method, path, response.http_response.status_code))

    def staged_block_ids(self) -> list[str]:
        return [
            base64.b64decode(q["blockid"]).decode()
            for m, _, q in self.sent
            if m == "PUT" and q.get("comp") == "block"
        ]


async def test_small_and_large_files_land_verified(azurite, tmp_path: Path) -> None:
    share = tmp_path / "share"
    small = os.urandom(50_000)
    large = os.urandom(700_000)  # 11 blocks of 64 KiB
    _write(share, "sensors/date=2026-01-01/small.parquet", small)
    _write(share, "sensors/date=2026-01-01/large.parquet", large)
    queue = UploadQueue(tmp_path / "q.db")
    queue.open()
    cs = azurite.connection_string
    async with AzureBlobStore(cs) as store:
        up = Uploader(
            _settings(cs, singlePutMaxBytes=65_536, blockSizeBytes=65_536, concurrency=2),
            share_root=share,
            store=store,
            queue=queue,
            identity=IDENTITY,
        )
        up.submit("sensors/date=2026-01-01/small.parquet")
        up.submit("sensors/date=2026-01-01/large.parquet")
        results = {r.path.rsplit("/", 1)[1]: r for r in await up.process_due()}

        for name, data in (("small.parquet", small), ("large.parquet", large)):
            result = results[name]
            assert (result.container, result.blob_name) == (
                "mod-sensors",
                f"dev/mod/sensors/date=2026-01-01/{name}",
            )
            downloaded, stored_md5 = await _download(cs, result.container, result.blob_name)
            assert downloaded == data
            assert stored_md5 == hashlib.md5(data, usedforsecurity=False).digest()
            assert result.md5 == base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
            assert result.bytes == len(data)
            assert not result.skipped
        assert up.stats().blocks_staged == 11

        # Again, as after a lost queue: the blobs are there with the same MD5, so nothing is sent.
        queue.close()
        (tmp_path / "q.db").unlink()
        queue = UploadQueue(tmp_path / "q2.db")
        queue.open()
        again = Uploader(
            _settings(cs, singlePutMaxBytes=65_536, blockSizeBytes=65_536),
            share_root=share,
            store=store,
            queue=queue,
            identity=IDENTITY,
        )
        again.submit("sensors/date=2026-01-01/small.parquet")
        again.submit("sensors/date=2026-01-01/large.parquet")
        assert all(r.skipped for r in await again.process_due())
        assert again.stats().bytes_sent == 0
    queue.close()


async def test_upload_killed_mid_file_resumes_without_resending_staged_blocks(
    azurite, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    data = os.urandom(20 * 32_768 + 1234)  # 21 blocks of 32 KiB
    rel = "big/blob.bin"
    _write(share, rel, data)
    db = tmp_path / "queue.db"
    cs = azurite.connection_string
    settings = _settings(cs, singlePutMaxBytes=32_768, blockSizeBytes=32_768)

    child = subprocess.run(
        [
            sys.executable,
            str(HERE / "upload_child.py"),
            str(share),
            str(db),
            settings.model_dump_json(by_alias=True),  # the credential masked; the child gets it on stdin
            rel,
            "7",
        ],
        input=cs.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 17, child.stderr.decode()[-3000:]

    async with BlobServiceClient.from_connection_string(cs) as service:
        _, before_kill = await service.get_blob_client("mod-big", "dev/mod/big/blob.bin").get_block_list(
            "uncommitted"
        )
    staged_before = {block.id for block in before_kill}
    assert len(staged_before) == 7

    requests = Requests()
    queue = UploadQueue(db)
    queue.open()
    queued = queue.get(rel)
    assert queued is not None
    assert queued.state is FileState.PENDING
    async with AzureBlobStore(cs, raw_request_hook=requests.on_request) as store:
        up = Uploader(settings, share_root=share, store=store, queue=queue, identity=IDENTITY)
        [result] = await up.process_due()  # the queue remembered the file; nothing is submitted again
        stats = up.stats()
    queue.close()

    sent_now = requests.staged_block_ids()
    assert len(sent_now) == 21 - 7
    assert not staged_before & set(sent_now)
    assert stats.blocks_resumed == 7
    assert stats.blocks_staged == 21 - 7
    downloaded, stored_md5 = await _download(cs, result.container, result.blob_name)
    assert downloaded == data
    assert stored_md5 == hashlib.md5(data, usedforsecurity=False).digest()
    async with BlobServiceClient.from_connection_string(cs) as service:
        committed, uncommitted = await service.get_blob_client(
            result.container, result.blob_name
        ).get_block_list("all")
    assert len(committed) == 21
    assert uncommitted == []


async def test_outage_queues_then_backlog_drains_once(azurite_factory, tmp_path: Path) -> None:
    server = azurite_factory()  # a private instance: this test stops and restarts it
    share = tmp_path / "share"
    files = {f"d{i % 2}/file{i:02d}.bin": os.urandom(1000 + i) for i in range(12)}
    cs = server.connection_string
    requests = Requests()
    queue = UploadQueue(tmp_path / "q.db")
    queue.open()
    settings = _settings(
        cs, retryInitialSeconds=0.2, retryMaxSeconds=0.5, scanIntervalSeconds=0.1, concurrency=3
    )
    async with AzureBlobStore(
        cs, connection_timeout=2, raw_request_hook=requests.on_request, raw_response_hook=requests.on_response
    ) as store:
        up = Uploader(settings, share_root=share, store=store, queue=queue, identity=IDENTITY)
        first = dict(list(files.items())[:4])
        for rel, data in first.items():
            _write(share, rel, data)
            up.submit(rel)
        assert len(await up.process_due()) == 4

        server.stop()
        for rel, data in list(files.items())[4:]:
            _write(share, rel, data)
            up.submit(rel)
        assert await up.process_due() == []
        assert up.offline
        assert queue.counts()["pending"] == 8
        row = queue.get(list(files)[4])
        assert row is not None
        assert row.state is FileState.PENDING
        assert row.attempts == 0
        assert row.last_error

        stop = asyncio.Event()
        runner = asyncio.create_task(up.run(stop))
        await asyncio.sleep(1.0)  # a few retries against a closed port
        assert queue.counts()["pending"] == 8
        server.start()
        for _ in range(300):
            if queue.counts()["uploaded"] == 12:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(runner, timeout=10)
    queue.close()

    assert queue_counts(tmp_path / "q.db")["uploaded"] == 12
    async with BlobServiceClient.from_connection_string(cs) as service:
        names = []
        for container in ("mod-d0", "mod-d1"):
            names += [b.name async for b in service.get_container_client(container).list_blobs()]
    assert sorted(names) == sorted(f"dev/mod/{rel}" for rel in files)
    for rel, data in files.items():
        downloaded, _ = await _download(cs, f"mod-{rel.split('/')[0]}", f"dev/mod/{rel}")
        assert downloaded == data
    # Nothing was written twice: one successful Put Blob per file, outage or not.
    puts = Counter(path for method, path, status in requests.answered if method == "PUT" and status == 201)
    blob_puts = {path: n for path, n in puts.items() if path.count("/") > 2}
    assert len(blob_puts) == 12
    assert set(blob_puts.values()) == {1}


def queue_counts(db: Path) -> dict[str, int]:
    queue = UploadQueue(db)
    queue.open()
    try:
        return queue.counts()
    finally:
        queue.close()


async def test_refusals_and_outages_never_show_credentials(azurite, closed_port: int) -> None:
    signature = "c2lnbmF0dXJlLXRoYXQtaXMtd3Jvbmc%3D"
    sas_url = (
        f"http://{azurite.host}:{azurite.port}/devstoreaccount1?sv=2021-08-06&ss=b&srt=sco&sp=rwdlac"
        f"&se=2099-01-01T00:00:00Z&sig={signature}"
    )
    async with AzureBlobStore(sas_url) as store:
        with pytest.raises(StoreError) as refused:
            await store.ensure_container("anything")
    assert refused.value.status == 403
    assert not isinstance(refused.value, StorageUnavailable)
    assert signature not in str(refused.value)
    assert urllib.parse.unquote(signature) not in str(refused.value)

    dead_port = sas_url.replace(str(azurite.port), str(closed_port))
    async with AzureBlobStore(dead_port, connection_timeout=2) as store:
        with pytest.raises(StorageUnavailable) as unreachable:
            await store.get_properties("c", "b")
    assert signature not in str(unreachable.value)
    assert "sig=" not in repr(store)
    assert signature not in repr(store)
