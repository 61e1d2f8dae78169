"""edgekit's EdgeHubTransport and Runner against the edgeHub emulator, the SDK in a separate process.

This file is also the module it runs: `python test_edgekit_transport.py` is an echo module built on
edgekit (input `in` -> output `out`, method `ping`, setting `suffix`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from edgekit import Context, Message, MethodRequest, MethodResponse, run_module

SDK_CLIENT = Path(__file__).resolve().parents[1] / "fixtures" / "sdk_clients" / "module_client.py"
DEVICE = "sim-device"


class EchoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffix: str = ""


class Echo:
    async def start(self, ctx: Context[EchoSettings]) -> None:
        self.ctx = ctx
        ctx.transport.on_input("in", self.echo)
        ctx.transport.on_method("ping", self.ping)

    async def echo(self, message: Message) -> None:
        body = message.body + self.ctx.settings.current.suffix.encode()
        properties = {**message.properties, "echoed": "true"}
        await self.ctx.transport.send(
            "out", Message(body, properties, "text/plain", "utf-8", message.message_id)
        )
        self.ctx.counters.inc("echoed")

    async def ping(self, request: MethodRequest) -> MethodResponse:
        return MethodResponse.ok({"pong": request.payload, "suffix": self.ctx.settings.current.suffix})

    async def stop(self) -> None:
        return None


async def eventually(check: Callable[[], Any], within_s: float = 30.0) -> Any:
    async def poll() -> Any:
        while not (result := check()):
            await asyncio.sleep(0.05)
        return result

    return await asyncio.wait_for(poll(), within_s)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    """The emulator and its workload API URI."""
    # Imported here: this file is also the echo module's program, which must not need the simulator.
    from edgesim import hub as edgesim_hub
    from edgesim import workload as workload_module
    from edgesim.run import random_loopback_host

    socket_dir = Path(tempfile.mkdtemp(prefix="ek-", dir="/tmp"))  # AF_UNIX paths are short
    config = edgesim_hub.HubConfig(
        host=random_loopback_host(),
        device_id=DEVICE,
        iothub_hostname="edgeloop-sim.azure-devices.net",
        state_dir=tmp_path / "hub",
        upstream_path=tmp_path / "upstream.jsonl",
        modules=("driver", "echo"),
        routes={
            "driverToEcho": "FROM /messages/modules/driver/outputs/out "
            'INTO BrokeredEndpoint("/modules/echo/inputs/in")',
            "echoUp": "FROM /messages/modules/echo/outputs/* INTO $upstream",
        },
        initial_desired={"echo": {"suffix": "-one"}},
    )
    instance = edgesim_hub.EdgeHub(config)
    await instance.start()
    workload = workload_module.WorkloadApi(socket_dir / "workload.sock", instance)
    await workload.start()
    try:
        yield instance, workload.uri
    finally:
        await workload.stop()
        await instance.stop()
        for leftover in socket_dir.iterdir():
            leftover.unlink()
        socket_dir.rmdir()


def module_env(hub: tuple[Any, str], module: str, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IOTEDGE_")}
    env.update(hub[0].edge_environment(module, hub[1]))
    env.update(
        {
            "EDGEKIT_METRICS_PORT": "0",
            "EDGEKIT_STATE_DIR": str(tmp_path / "state" / module),
            "EDGEKIT_REPORT_INTERVAL_S": "0.2",
        }
    )
    return env


def upstream(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "upstream.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_edgekit_module_over_the_emulator(hub: tuple[Any, str], tmp_path: Path) -> None:
    emulator = hub[0]
    log = (tmp_path / "echo.log").open("wb")
    echo = await asyncio.create_subprocess_exec(
        sys.executable, __file__, env=module_env(hub, "echo", tmp_path), stdout=log, stderr=log
    )
    driver = None
    try:

        def reported() -> dict[str, Any]:
            return dict(emulator.get_twin("echo").get("reported", {}))

        await eventually(lambda: reported().get("status") == "running")
        assert reported()["settings"]["effective"] == {"suffix": "-one"}

        plan = {
            "steps": [
                {"op": "connect"},
                {"op": "send", "output": "out", "body": "héllo", "properties": {"dataset": "pump-7"}},
            ]
        }
        driver = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SDK_CLIENT),
            json.dumps(plan),
            env=module_env(hub, "driver", tmp_path),
            stdout=asyncio.subprocess.DEVNULL,
        )
        records = await eventually(lambda: [r for r in upstream(tmp_path) if r.get("module") == "echo"])
        record = records[0]
        assert record["output"] == "out"
        assert record["properties"]["dataset"] == "pump-7"
        assert record["properties"]["echoed"] == "true"
        assert "héllo-one" in json.dumps(record["body"], ensure_ascii=False)
        await eventually(lambda: reported().get("counters") == {"echoed": 1})

        await emulator.patch_desired("echo", {"suffix": "-two"})
        await eventually(lambda: reported()["settings"]["effective"]["suffix"] == "-two")
        status, payload = await emulator.invoke_method("echo", "ping", {"n": 1}, timeout=30)
        assert (status, payload) == (200, {"pong": {"n": 1}, "suffix": "-two"})

        await emulator.patch_desired("echo", {"suffix": 5})
        await eventually(lambda: reported()["settings"]["status"] == "rejected")
        assert "suffix" in reported()["settings"]["reason"]
        status, payload = await emulator.invoke_method("echo", "ping", None, timeout=30)
        assert payload["suffix"] == "-two"

        echo.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(echo.wait(), 60) == 0
        assert reported()["status"] == "stopped"
    finally:
        for process in (echo, driver):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        log.close()


if __name__ == "__main__":
    run_module(Echo(), EchoSettings, env_prefix="ECHO_")
