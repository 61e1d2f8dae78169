"""Azurite launcher against the real Azurite from node_modules (integration-ish: a Node process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from edgesim.azurite import Azurite, AzuriteError, export_blobs, find_azurite_binary

REPO_ROOT = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def azurite_binary() -> Path:
    # Missing Azurite is an environment error worth failing on, not a feature to skip quietly.
    return find_azurite_binary(REPO_ROOT)


def _upload(conn_str: str, container: str, name: str, data: bytes) -> None:
    with BlobServiceClient.from_connection_string(conn_str) as service:
        client = service.get_container_client(container)
        if not client.exists():
            client.create_container()
        client.upload_blob(name, data, overwrite=True)


def _read(conn_str: str, container: str, name: str, retries: int = 3) -> bytes:
    with BlobServiceClient.from_connection_string(conn_str, retry_total=retries) as service:
        return service.get_container_client(container).download_blob(name).readall()


async def test_upload_export_and_restart_keeps_data(tmp_path: Path, azurite_binary: Path) -> None:
    azurite = Azurite(tmp_path / "azurite", azurite_binary, log_path=tmp_path / "azurite.log")
    await azurite.start()
    try:
        conn = azurite.connection_string
        assert f"127.0.0.1:{azurite.port}" in conn
        await asyncio.to_thread(_upload, conn, "cloud-share", "2026/01/batch-1.parquet", b"rows\x00\x01")
        await asyncio.to_thread(_upload, conn, "models", "sensor-ae/1/model.onnx", b"onnx")

        exported = await asyncio.to_thread(export_blobs, conn, tmp_path / "cloud")
        assert exported == 2
        assert (tmp_path / "cloud/cloud-share/2026/01/batch-1.parquet").read_bytes() == b"rows\x00\x01"
        assert (tmp_path / "cloud/models/sensor-ae/1/model.onnx").read_bytes() == b"onnx"

        port = azurite.port
        await azurite.stop()
        assert not azurite.running
        with pytest.raises(Exception):  # noqa: B017, PT011 - any connection error: storage is gone
            await asyncio.to_thread(_read, conn, "models", "sensor-ae/1/model.onnx", 0)

        await azurite.start()
        assert azurite.port == port
        assert await asyncio.to_thread(_read, conn, "models", "sensor-ae/1/model.onnx") == b"onnx"
    finally:
        await azurite.stop()
    assert (tmp_path / "azurite.log").exists()


async def test_start_fails_clearly_when_azurite_exits(tmp_path: Path) -> None:
    fake = tmp_path / "azurite-blob"
    fake.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    fake.chmod(0o755)
    azurite = Azurite(tmp_path / "azurite", fake, start_within=10)
    with pytest.raises(AzuriteError, match="exited with code 3"):
        await azurite.start()
    assert not azurite.running


def test_missing_binary_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGESIM_AZURITE_BIN", raising=False)
    with pytest.raises(AzuriteError, match="npm install"):
        find_azurite_binary(tmp_path)
    monkeypatch.setenv("EDGESIM_AZURITE_BIN", str(tmp_path / "elsewhere"))
    with pytest.raises(AzuriteError, match="elsewhere"):
        find_azurite_binary(REPO_ROOT)
