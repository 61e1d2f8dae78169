"""The edgeHub emulator in the test's event loop; real azure-iot-device clients as separate processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgesim.hub import EdgeHub, HubConfig
from edgesim.run import random_loopback_host
from edgesim.sas import build_token, module_resource
from edgesim.workload import WorkloadApi

CLIENT = Path(__file__).resolve().parents[2] / "fixtures" / "sdk_clients" / "module_client.py"
DEVICE = "sim-device"
IOTHUB = "edgeloop-sim.azure-devices.net"

pytestmark = pytest.mark.integration


@dataclass
class ClientProcess:
    """One SDK client process; its stdout JSON lines are the events it reports."""

    module: str
    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr_path: Path | None = None

    async def next_event(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise EOFError(f"{self.module} exited ({await self.process.wait()}):\n{self.stderr_tail()}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        if event["event"] == "error":
            raise AssertionError(f"{self.module} failed: {event}\n{self.stderr_tail()}")
        return event

    async def wait_for(self, name: str, timeout: float = 30) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            event = await self.next_event(max(remaining, 0.01))
            if event["event"] == name:
                return event

    async def collect(self, name: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        found: list[dict[str, Any]] = []
        while len(found) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            found.append(await self.wait_for(name, max(remaining, 0.01)))
        return found

    async def go_on(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()

    async def finish(self, timeout: float = 30) -> int:
        await self.wait_for("done", timeout)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def stderr_tail(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")[-3000:]


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def mqtt_packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, level: int = 4, name: str = "MQTT") -> bytes:
    header = _mqtt_string(name) + bytes([level, 0x80 | 0x40 | 0x02]) + (60).to_bytes(2, "big")
    return mqtt_packet(
        0x10, header + _mqtt_string(client_id) + _mqtt_string(username) + _mqtt_string(password)
    )


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return mqtt_packet(0x32, _mqtt_string(topic) + packet_id.to_bytes(2, "big") + payload)


def subscribe_packet(packet_id: int, topic_filter: str) -> bytes:
    return mqtt_packet(0x82, packet_id.to_bytes(2, "big") + _mqtt_string(topic_filter) + b"\x01")


@dataclass
class RawClient:
    """A hand-driven MQTT client over TLS, for what the SDK will not do (bad packets, forbidden topics)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self, timeout: float = 10) -> tuple[int, bytes]:
        """(first byte, body); raises EOFError when the server closed the connection."""
        try:
            first = await asyncio.wait_for(self.reader.readexactly(1), timeout)
            length, shift = 0, 0
            while True:
                byte = (await asyncio.wait_for(self.reader.readexactly(1), timeout))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise EOFError("connection closed") from exc
        return first[0], body

    async def closed_by_server(self, timeout: float = 10) -> bool:
        try:
            while True:
                await self.read_packet(timeout)
        except EOFError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class HubHarness:
    """An emulator (restartable on the same state) plus a factory for SDK client processes."""

    # Raw packet builders, for tests that must send what the SDK never would.
    connect_packet = staticmethod(connect_packet)
    publish_packet = staticmethod(publish_packet)
    subscribe_packet = staticmethod(subscribe_packet)
    mqtt_packet = staticmethod(mqtt_packet)
    device_id = DEVICE
    iothub_hostname = IOTHUB

    def __init__(self, base: Path, socket_dir: Path) -> None:
        self.base = base
        self.socket_dir = socket_dir
        self.host = random_loopback_host()
        self.hub: EdgeHub | None = None
        self.workload: WorkloadApi | None = None
        self.config: HubConfig | None = None
        self.clients: list[ClientProcess] = []

    async def start(
        self,
        modules: tuple[str, ...],
        routes: Mapping[str, Any],
        initial_desired: Mapping[str, Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> EdgeHub:
        self.config = HubConfig(
            host=self.host,
            device_id=DEVICE,
            iothub_hostname=IOTHUB,
            state_dir=self.base / "state",
            upstream_path=self.base / "upstream.jsonl",
            modules=modules,
            routes=routes,
            initial_desired=initial_desired or {},
            **options,
        )
        return await self._start()

    async def _start(self) -> EdgeHub:
        assert self.config is not None
        self.hub = EdgeHub(self.config)
        await self.hub.start()
        self.workload = WorkloadApi(self.socket_dir / "workload.sock", self.hub)
        await self.workload.start()
        return self.hub

    async def stop(self) -> None:
        if self.workload is not None:
            await self.workload.stop()
            self.workload = None
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None

    async def restart(self) -> EdgeHub:
        await self.stop()
        return await self._start()

    def environment(self, module: str, start_path: str) -> dict[str, str]:
        assert self.hub is not None
        assert self.workload is not None
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("IOTEDGE_")
            and key not in {"EdgeHubConnectionString", "EdgeModuleCACertificateFile"}
        }
        if start_path == "workload":
            env.update(self.hub.edge_environment(module, self.workload.uri))
        elif start_path == "connection_string":
            env["EdgeHubConnectionString"] = self.hub.connection_string(module)
            env["EdgeModuleCACertificateFile"] = str(self.hub.ca_cert_path)
        else:
            raise ValueError(start_path)
        return env

    async def spawn(
        self,
        module: str,
        steps: list[dict[str, Any]],
        start_path: str = "workload",
        env: dict[str, str] | None = None,
    ) -> ClientProcess:
        stderr_path = self.base / f"{module}-{len(self.clients)}.stderr"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CLIENT),
                json.dumps({"steps": steps}),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env or self.environment(module, start_path),
            )
        client = ClientProcess(module, process, stderr_path=stderr_path)
        self.clients.append(client)
        return client

    async def raw_client(self) -> RawClient:
        assert self.hub is not None
        context = ssl.create_default_context(cafile=str(self.hub.ca_cert_path))
        reader, writer = await asyncio.open_connection(self.host, 8883, ssl=context)
        return RawClient(reader, writer)

    def token(self, module: str, key: bytes | None = None, lifetime: int = 3600) -> str:
        assert self.hub is not None
        return build_token(
            module_resource(IOTHUB, DEVICE, module),
            key if key is not None else self.hub.module_key(module),
            int(time.time()) + lifetime,
        )

    async def raw_module(self, module: str) -> RawClient:
        """A raw client connected and authenticated as `module` (CONNACK checked)."""
        client = await self.raw_client()
        await client.send(
            connect_packet(
                f"{DEVICE}/{module}", f"{IOTHUB}/{DEVICE}/{module}/?api-version=x", self.token(module)
            )
        )
        first, body = await client.read_packet()
        assert (first, body) == (0x20, b"\x00\x00")
        return client

    @staticmethod
    async def wait_until(predicate: Any, timeout: float = 15, interval: float = 0.05) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        for client in self.clients:
            await client.kill()
        await self.stop()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[HubHarness]:
    # Unix socket paths are limited to ~107 bytes, and pytest's tmp_path can be longer.
    socket_dir = Path(tempfile.mkdtemp(prefix="edgesim-", dir="/tmp"))
    harness = HubHarness(tmp_path, socket_dir)
    try:
        yield harness
    finally:
        await harness.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(socket_dir)
