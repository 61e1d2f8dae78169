"""Azurite's Blob service as the simulator's stand-in for Azure Blob storage.

Azurite 3.35.0 (pinned in the repo's package.json; the newest that installs on Node 20) runs from
`node_modules/.bin/azurite-blob`, on loopback and a free port, with its data in a folder of the run directory.
`--skipApiVersionCheck` because azure-storage-blob asks for a newer service version than 3.35 knows, and
`--loose` so headers Azurite does not implement are ignored instead of refused. `stop()` then `start()` keeps
the location and the port, so fault tests can take storage away and bring it back with its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)

# Azurite's well-known development account. The key is public (Microsoft documents it for every emulator);
# it is not a secret and grants nothing outside a local emulator.
DEV_ACCOUNT = "devstoreaccount1"
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BIN_ENV = "EDGESIM_AZURITE_BIN"


class AzuriteError(RuntimeError):
    pass


def find_azurite_binary(repo_root: Path) -> Path:
    override = os.environ.get(BIN_ENV)
    path = Path(override) if override else repo_root / "node_modules" / ".bin" / "azurite-blob"
    if not path.exists():
        raise AzuriteError(
            f"Azurite not found at {path}: run `npm install` in {repo_root} (azurite 3.35.0 is pinned in"
            f" package.json) or set {BIN_ENV}"
        )
    return path


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def connection_string(host: str, port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{port}/{DEV_ACCOUNT};"
    )


class Azurite:
    """One Azurite blob service process. Not thread-safe; use from one event loop."""

    def __init__(
        self,
        location: Path,
        binary: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        start_within: float = 60.0,
    ) -> None:
        self._location = location
        self._binary = binary
        self._host = host
        self._port = port
        self._log_path = log_path
        self._start_within = start_within
        self._process: asyncio.subprocess.Process | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise AzuriteError("Azurite has no port before start()")
        return self._port

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self._host}:{self.port}/{DEV_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return connection_string(self._host, self.port)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        if self.running:
            return
        if self._port is None:
            self._port = free_port(self._host)
        self._location.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self._binary),
            "--blobHost",
            self._host,
            "--blobPort",
            str(self._port),
            "--location",
            str(self._location),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
        ]
        log_path = self._log_path if self._log_path is not None else Path(os.devnull)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await self._wait_until_answering()
        except BaseException:
            await self.stop()
            raise
        log.info("Azurite blob service on %s", self.blob_endpoint)

    async def stop(self, grace: float = 5.0) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                _signal_group(process, signal.SIGKILL)
                await process.wait()
        self._process = None

    async def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self._start_within
        url = f"{self.blob_endpoint}?comp=list"
        last_error = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                process = self._process
                if process is None or process.returncode is not None:
                    code = None if process is None else process.returncode
                    raise AzuriteError(f"Azurite exited with code {code} while starting (see its log)")
                try:
                    async with session.get(url) as response:
                        # Any HTTP answer (403 without a signature included) means the service is up.
                        await response.read()
                        return
                except (aiohttp.ClientError, TimeoutError) as error:
                    last_error = f"{type(error).__name__}: {error}"
                await asyncio.sleep(0.2)
        raise AzuriteError(f"Azurite did not answer on {url} within {self._start_within} s ({last_error})")


def _signal_group(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        # azurite-blob is a node launcher script; the group reaches node itself.
        os.killpg(process.pid, signum)


def export_blobs(conn_str: str, dest_dir: Path) -> int:
    """Copy every blob of every container to `dest_dir/<container>/<blob name>`; returns the number copied.

    Blocking (azure-storage-blob's sync client); call it in a thread from async code.
    """
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(conn_str)
    copied = 0
    root = dest_dir.resolve()
    with service:
        for container in service.list_containers():
            container_client = service.get_container_client(container.name)
            for blob in container_client.list_blobs():
                target = (root / container.name / blob.name).resolve()
                if not target.is_relative_to(root / container.name):
                    log.warning(
                        "skipping blob %s/%s: its name leaves the export folder", container.name, blob.name
                    )
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as handle:
                    container_client.download_blob(blob.name).readinto(handle)
                copied += 1
    return copied
