"""Real Azurite (from npm) for the uploader's integration tests, on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgesim.azurite import connection_string, free_port

REPO = Path(__file__).resolve().parents[3]
MODULE_DIR = REPO / "modules" / "cloud-share-uploader"
sys.path.insert(0, str(MODULE_DIR))

AZURITE = REPO / "node_modules" / ".bin" / "azurite-blob"


class Azurite:
    """One Azurite blob service; stop() and start() again keep its port and data (an outage, not a reset)."""

    def __init__(self, location: Path, log: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.location = location
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.port)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(AZURITE),
                    "--blobHost", self.host,
                    "--blobPort", str(self.port),
                    "--location", str(self.location),
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--loose",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"azurite exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("azurite did not start listening within 30 s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    if not AZURITE.exists() or shutil.which("node") is None:
        pytest.fail("Azurite is not installed: run `make setup` (npm ci) first")
    base = tmp_path_factory.mktemp("azurite")
    server = Azurite(base / "data", base / "azurite.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def azurite_factory(tmp_path: Path) -> Iterator[Callable[[], Azurite]]:
    """Private Azurite instances for tests that stop and restart one (the shared one must stay up)."""
    started: list[Azurite] = []

    def make() -> Azurite:
        server = Azurite(tmp_path / f"azurite{len(started)}", tmp_path / f"azurite{len(started)}.log")
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    return free_port("127.0.0.1")
