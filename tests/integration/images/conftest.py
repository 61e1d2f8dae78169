"""A real Docker engine and OCI registry for the image tests, both on loopback with state in temp folders.

Uses the engine and registry `scripts/start-docker-for-tests` started when it exported
EDGELOOP_TEST_DOCKER_HOST and EDGELOOP_TEST_REGISTRY; otherwise starts its own (as root, from the Debian
packages docker.io and docker-registry). Installs nothing: a missing piece skips the tests, naming it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from edgesim.azurite import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.integration.images.docker_kit import Engine  # noqa: E402

START_TIMEOUT_S = 60.0


def _wait(check: str, ready: object, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if ready():  # type: ignore[operator]
                return
        except Exception:  # noqa: S110 - not up yet; any failure means try again
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    _stop(process)
    pytest.skip(f"{check} did not start within {START_TIMEOUT_S:g} s: {tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _registry_up(address: str) -> bool:
    with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as reply:
        return bool(reply.status == 200)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    shared_host = os.environ.get("EDGELOOP_TEST_DOCKER_HOST")
    shared_registry = os.environ.get("EDGELOOP_TEST_REGISTRY")
    if shared_host and shared_registry:
        yield Engine(shared_host, shared_registry)
        return
    missing = [tool for tool in ("dockerd", "docker-registry") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed (Debian: apt-get install docker.io docker-registry; "
            "or run scripts/start-docker-for-tests)"
        )
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root here; run scripts/start-docker-for-tests and export what it prints")

    # A short base path: the engine's sockets must fit in a Unix socket path.
    state = Path(tempfile.mkdtemp(prefix="edgeloop-dk-", dir="/tmp"))
    sock = state / "docker.sock"
    engine_log = state / "dockerd.log"
    dockerd = subprocess.Popen(
        [
            "dockerd",
            "--storage-driver=vfs",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--data-root={state / 'data'}",
            f"--exec-root={state / 'exec'}",
            f"--pidfile={state / 'docker.pid'}",
            f"--host=unix://{sock}",
        ],
        stdout=engine_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    registry_address = f"127.0.0.1:{free_port('127.0.0.1')}"
    config = state / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {state / 'registry'}\n"
        f"http:\n  addr: {registry_address}\n",
        encoding="utf-8",
    )
    registry_log = state / "registry.log"
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=registry_log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        host = f"unix://{sock}"
        _wait("dockerd", lambda: docker.DockerClient(base_url=host).ping(), dockerd, engine_log)
        _wait("docker-registry", lambda: _registry_up(registry_address), registry, registry_log)
        yield Engine(host, registry_address)
    finally:
        _stop(registry)
        _stop(dockerd)
        shutil.rmtree(state, ignore_errors=True)
