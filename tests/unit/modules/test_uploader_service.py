"""cloud-share-uploader as a module (edgekit Runner + InMemoryTransport, the in-memory blob store):
claim checks in, blobs and `uploaded` notices out, outages counted in the twin."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

import uploader.service as service_module
from edgekit import InMemoryTransport, Runner, make_message, parse_message
from uploader import FakeBlobStore
from uploader.module_settings import UploaderModuleSettings
from uploader.service import UploaderService

pytestmark = pytest.mark.timeout(30)

CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=acct;"
    "AccountKey=c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY3ODkwYWJjZGVmZ2hpams=;"
    "BlobEndpoint=http://127.0.0.1:1/acct;"
)
DESIRED = {
    "deviceToCloudUploadProperties": {
        "uploadOn": True,
        "storageContainersForUpload": {"*": {"target": "edgeloop", "blobName": "%d/%p"}},
    },
    "transferProperties": {"scanIntervalSeconds": 60, "retryInitialSeconds": 0.05, "retryMaxSeconds": 0.2},
}


class _Store(FakeBlobStore):
    """The in-memory store where the module would open Azure's."""

    def __init__(self, connection: str) -> None:
        super().__init__()
        self.connection = connection

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> list[_Store]:
    made: list[_Store] = []

    def factory(connection: str) -> _Store:
        made.append(_Store(connection))
        return made[-1]

    monkeypatch.setattr(service_module, "AzureBlobStore", factory)
    # The service takes the device id for blob names from the process environment, not the runner's.
    monkeypatch.setenv("IOTEDGE_DEVICEID", "dev1")
    monkeypatch.setenv("IOTEDGE_MODULEID", "cloud-share-uploader")
    return made


async def _runner(tmp_path: Path, desired: dict[str, Any]) -> tuple[Runner[Any], InMemoryTransport, Path]:
    cloud_share = tmp_path / "cloud-share"
    cloud_share.mkdir(exist_ok=True)
    transport = InMemoryTransport(desired)
    runner: Runner[Any] = Runner(
        UploaderService(),
        UploaderModuleSettings,
        module="cloud-share-uploader",
        env_prefix="UPLOADER_",
        environ={
            "EDGEKIT_STATE_DIR": str(tmp_path / "state"),
            "EDGEKIT_METRICS_PORT": "0",
            "EDGEKIT_REPORT_INTERVAL_S": "0.1",
            "IOTEDGE_DEVICEID": "dev1",
            "IOTEDGE_MODULEID": "cloud-share-uploader",
            "UPLOADER_CLOUD_SHARE_DIR": str(cloud_share),
            "UPLOADER_STORAGE_CONNECTION_STRING": CONNECTION,
        },
        transport_factory=lambda: transport,
    )
    await runner.start()
    return runner, transport, cloud_share


def _batch(path: str) -> Any:
    return make_message("batch-ready", 1, {"batch_id": "b", "path": path, "rows": 1})


async def test_a_batch_goes_up_verified_and_is_announced(tmp_path: Path, stores: list[_Store]) -> None:
    runner, transport, share = await _runner(tmp_path, DESIRED)
    try:
        (share / "plant" / "date=2026-11-01").mkdir(parents=True)
        data = b"PAR1 rows PAR1"
        (share / "plant" / "date=2026-11-01" / "x-00000.parquet").write_bytes(data)
        await transport.deliver("batches", _batch("plant/date=2026-11-01/x-00000.parquet"))
        [message] = await transport.wait_sent("uploaded", 1)
    finally:
        await runner.stop()
    [store] = stores
    assert store.connection == CONNECTION  # from the environment, as the manifest passes it
    blob = store.blobs[("edgeloop", "dev1/plant/date=2026-11-01/x-00000.parquet")]
    assert blob.data == data
    _, body = parse_message(message, "uploaded")
    assert body["md5"] == base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    assert body["skipped"] is False
    assert message.properties["skipped"] == "false"  # what the uploadedToUpstream route filters on
    counters = transport.reported["counters"]
    assert (counters["queued"], counters["uploaded"], counters["bytes"]) == (1, 1, len(data))


async def test_quarantine_messages_send_the_file_and_its_reason(tmp_path: Path, stores: list[_Store]) -> None:
    runner, transport, share = await _runner(tmp_path, DESIRED)
    try:
        folder = share / "_quarantine" / "plant" / "abc"
        folder.mkdir(parents=True)
        (folder / "bad.csv").write_bytes(b"\x00garbage")
        (folder / "bad.csv.reason.json").write_bytes(b'{"reason": "binary"}')
        body = {
            "source_file_id": "abc",
            "reason": "binary",
            "path": "_quarantine/plant/abc/bad.csv",
            "reason_path": "_quarantine/plant/abc/bad.csv.reason.json",
        }
        await transport.deliver("quarantine", make_message("quarantined", 1, body))
        await transport.wait_sent("uploaded", 2)
        await transport.deliver("batches", _batch("plant/missing.parquet"))
        await transport.deliver("batches", make_message("batch-ready", 1, {"rows": 1}))
    finally:
        await runner.stop()
    names = sorted(name for _, name in stores[0].blobs)
    assert names == ["dev1/_quarantine/plant/abc/bad.csv", "dev1/_quarantine/plant/abc/bad.csv.reason.json"]
    assert transport.reported["counters"]["bad_messages"] == 1  # the one without a path


async def test_an_outage_is_counted_and_the_backlog_drains(tmp_path: Path, stores: list[_Store]) -> None:
    runner, transport, share = await _runner(tmp_path, DESIRED)
    try:
        store = stores[0]
        store.available = False
        for index in range(3):
            (share / f"f{index}.parquet").write_bytes(b"x" * (index + 1))
            await transport.deliver("batches", _batch(f"f{index}.parquet"))

        async def trouble_counted() -> None:
            while transport.reported.get("counters", {}).get("retries", 0) < 2:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(trouble_counted(), 10)
        status = await transport.call_method("status")
        assert status.payload["offline"] is True or status.payload["failures"] >= 2
        assert transport.sent["uploaded"] == []
        store.available = True
        await transport.wait_sent("uploaded", 3, within_s=10)
    finally:
        await runner.stop()
    counters = transport.reported["counters"]
    assert counters["uploaded"] == 3
    assert counters["offline"] == 1
    assert counters["retries"] >= 2
    assert sorted(name for _, name in stores[0].blobs) == [f"dev1/f{i}.parquet" for i in range(3)]


async def test_without_upload_on_files_stay_queued(tmp_path: Path, stores: list[_Store]) -> None:
    runner, transport, share = await _runner(tmp_path, {"deviceToCloudUploadProperties": {"uploadOn": False}})
    try:
        (share / "a.parquet").write_bytes(b"a")
        await transport.deliver("batches", _batch("a.parquet"))
        await asyncio.sleep(0.3)
        status = await transport.call_method("status")
    finally:
        await runner.stop()
    assert transport.sent["uploaded"] == []
    assert status.payload["queue"]["pending"] == 1
    assert all(not store.blobs for store in stores)
