"""Fixtures for the uploader's unit tests: a share folder, a queue, the in-memory store and a fake clock."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MODULE_DIR = Path(__file__).resolve().parents[3] / "modules" / "cloud-share-uploader"
sys.path.insert(0, str(MODULE_DIR))

from uploader import (  # noqa: E402
    DiskUsage,
    FakeBlobStore,
    Identity,
    Uploader,
    UploaderSettings,
    UploadQueue,
    UploadResult,
)

ACCOUNT_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY3ODkwYWJjZGVmZ2hpams="
CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=acct;"
    f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:1/acct;"
)
IDENTITY = Identity(hub="hub1", device="dev1", module="uploader")
T0 = 1_800_000_000.0


class FakeClock:
    """Time that moves only when the code under test sleeps (or a test says so)."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings(**sections: dict[str, Any]) -> UploaderSettings:
    """Settings as a twin would send them: upload on, everything to container "data", plus overrides."""
    upload: dict[str, Any] = {
        "uploadOn": True,
        "cloudStorageConnectionString": CONNECTION,
        "storageContainersForUpload": {"*": {"target": "data"}},
    }
    upload.update(sections.pop("upload", {}))
    transfer: dict[str, Any] = {"retryJitter": 0.0, "concurrency": 1}
    transfer.update(sections.pop("transfer", {}))
    return UploaderSettings.model_validate(
        {
            "deviceToCloudUploadProperties": upload,
            "deviceAutoDeleteProperties": sections.pop("auto", {}),
            "transferProperties": transfer,
        }
    )


@dataclass
class Harness:
    share: Path
    queue: UploadQueue
    store: FakeBlobStore
    clock: FakeClock
    disk: DiskUsage = field(default_factory=lambda: DiskUsage(10**12, 0, 10**12))
    notified: list[UploadResult] = field(default_factory=list)
    uploader: Uploader | None = None

    def write(self, rel: str, data: bytes, *, age_s: float = 0.0) -> Path:
        """A file in the share; age_s sets its mtime that many seconds before the fake clock's now."""
        path = self.share / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stamp = int((self.clock.time() - age_s) * 1e9)
        os.utime(path, ns=(stamp, stamp))
        return path

    def make(self, cfg: UploaderSettings | None = None, **kwargs: Any) -> Uploader:
        async def record(result: UploadResult) -> None:
            self.notified.append(result)

        self.uploader = Uploader(
            cfg or settings(),
            share_root=self.share,
            store=kwargs.pop("store", self.store),
            queue=self.queue,
            identity=IDENTITY,
            clock=self.clock,
            random_unit=kwargs.pop("random_unit", lambda: 0.0),
            disk_usage=lambda _path: self.disk,
            on_uploaded=kwargs.pop("on_uploaded", record),
            **kwargs,
        )
        return self.uploader

    def enqueue_all(self, uploader: Uploader, *paths: str) -> None:
        for path in paths:
            assert uploader.submit(path)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    share = tmp_path / "share"
    share.mkdir()
    queue = UploadQueue(tmp_path / "state" / "queue.db")
    queue.open()
    try:
        yield Harness(share=share, queue=queue, store=FakeBlobStore(), clock=FakeClock())
    finally:
        queue.close()


@pytest.fixture
def make_settings() -> Any:
    return settings


@pytest.fixture
def account_key() -> str:
    return ACCOUNT_KEY


@pytest.fixture
def identity() -> Identity:
    return IDENTITY
