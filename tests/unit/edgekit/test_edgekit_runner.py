import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from edgekit import EXIT_BAD_SETTINGS, EXIT_FAILED, EXIT_OK, Context, InMemoryTransport, Message, Runner

FIXTURE = Path(__file__).with_name("runner_service_fixture.py")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_rows: int = Field(default=100, gt=0)
    label: str = "x"


class EchoService:
    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.changes: list[int] = []
        self.ctx: Context[Settings] | None = None

    async def start(self, ctx: Context[Settings]) -> None:
        self.ctx = ctx
        self.started = True
        ctx.transport.on_input("in", self.handle)
        ctx.settings.subscribe(lambda new: self.changes.append(new.batch_rows))

    async def handle(self, message: Message) -> None:
        assert self.ctx is not None
        self.ctx.counters.inc("messages")
        await self.ctx.transport.send("out", message)

    async def stop(self) -> None:
        self.stopped = True


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "IOTEDGE_MODULEID": "echo",
        "EDGEKIT_METRICS_PORT": "0",
        "EDGEKIT_STATE_DIR": str(tmp_path / "state"),
        "EDGEKIT_REPORT_INTERVAL_S": "0.05",
        "EDGEKIT_GRACE_S": "5",
        **extra,
    }


async def eventually(predicate, within_s: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), within_s)


async def test_lifecycle_settings_reporting_and_metrics(tmp_path):
    transport = InMemoryTransport(desired={"batch_rows": 7})
    service = EchoService()
    runner = Runner(
        service,
        Settings,
        env_prefix="ECHO_",
        environ=environ(tmp_path, ECHO_LABEL="from-env"),
        transport_factory=lambda: transport,
    )
    await runner.start()
    ctx = runner.ctx
    assert service.started
    assert ctx.module == "echo"
    assert ctx.settings.current == Settings(batch_rows=7, label="from-env")
    reported = transport.reported
    assert reported["status"] == "running"
    assert reported["settings"]["status"] == "accepted"
    assert reported["settings"]["version"] == 1
    assert reported["settings"]["effective"] == {"batch_rows": 7, "label": "from-env"}
    assert reported["metrics"]["port"] == runner.metrics_port
    assert reported["health"]["state"] == "healthy"

    await transport.deliver("in", Message(b"hello"))
    assert transport.sent["out"][0].body == b"hello"
    await eventually(lambda: transport.reported.get("counters") == {"messages": 1})

    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{runner.metrics_port}/metrics", timeout=10).read()
    )
    assert b"edgeloop_messages_total 1.0" in body

    await transport.set_desired({"batch_rows": 9})
    assert ctx.settings.current.batch_rows == 9
    assert service.changes == [9]
    assert transport.reported["settings"]["effective"]["batch_rows"] == 9

    await transport.set_desired({"batch_rows": 0})
    assert ctx.settings.current.batch_rows == 9
    assert transport.reported["settings"]["status"] == "rejected"
    assert "batch_rows" in transport.reported["settings"]["reason"]
    assert transport.reported["settings"]["version"] == 3
    assert service.changes == [9]

    ctx.set_health("degraded", "storage away")
    await eventually(lambda: transport.reported["health"]["state"] == "degraded")

    ledger = ctx.open_ledger()
    ledger.record("k")
    assert (tmp_path / "state" / "ledger.sqlite").exists()

    assert await runner.stop()
    assert service.stopped
    assert transport.reported["status"] == "stopped"
    assert not transport.connected
    with pytest.raises(Exception, match="not open"):
        ledger.get("k")


async def test_invalid_desired_document_at_start_keeps_env_settings(tmp_path):
    transport = InMemoryTransport(desired={"batch_rows": "lots"})
    runner = Runner(EchoService(), Settings, environ=environ(tmp_path), transport_factory=lambda: transport)
    await runner.start()
    assert runner.ctx.settings.current.batch_rows == 100
    assert transport.reported["settings"]["status"] == "rejected"
    await runner.stop()


async def test_bad_environment_exit_code_2(tmp_path):
    runner = Runner(EchoService(), Settings, environ=environ(tmp_path, EDGEKIT_GRACE_S="-1"))
    assert await runner.run() == EXIT_BAD_SETTINGS


async def test_missing_module_name_is_a_settings_error(tmp_path):
    env = environ(tmp_path)
    del env["IOTEDGE_MODULEID"]
    assert await Runner(EchoService(), Settings, environ=env).run() == EXIT_BAD_SETTINGS


async def test_fail_stops_with_exit_code_1(tmp_path):
    transport = InMemoryTransport()
    service = EchoService()
    runner = Runner(service, Settings, environ=environ(tmp_path), transport_factory=lambda: transport)
    task = asyncio.ensure_future(runner.run())
    await eventually(lambda: service.ctx is not None and transport.reported.get("status") == "running")
    assert service.ctx is not None
    service.ctx.fail("disk full")
    assert await asyncio.wait_for(task, 10) == EXIT_FAILED
    assert transport.reported["failure"] == "disk full"
    assert service.stopped


async def test_start_failure_exit_code_1_and_disconnects(tmp_path):
    class Broken(EchoService):
        async def start(self, ctx: Context[Settings]) -> None:
            raise RuntimeError("no model")

    transport = InMemoryTransport()
    service = Broken()
    runner = Runner(service, Settings, environ=environ(tmp_path), transport_factory=lambda: transport)
    assert await runner.run() == EXIT_FAILED
    assert "no model" in (runner.failure or "")
    assert service.stopped  # start() may have taken resources before it raised
    assert not transport.connected


async def test_connect_failure_exit_code_1_and_service_never_touched(tmp_path):
    class Unreachable(InMemoryTransport):
        async def connect(self) -> None:
            raise ConnectionRefusedError("edgeHub is not there")

    service = EchoService()
    runner = Runner(service, Settings, environ=environ(tmp_path), transport_factory=Unreachable)
    assert await runner.run() == EXIT_FAILED
    assert "edgeHub is not there" in (runner.failure or "")
    assert not service.started
    assert not service.stopped


def spawn(tmp_path: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **environ(tmp_path, **extra)}
    return subprocess.Popen(
        [sys.executable, str(FIXTURE), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> None:
    await eventually(lambda: path.exists() or process.poll() is not None, within_s=30)
    assert path.exists(), process.communicate(timeout=10)


async def test_sigterm_drains_in_flight_work_and_exits_0(tmp_path):
    process = spawn(tmp_path, SLOW_WORK_S="1.0")
    await wait_for_file(tmp_path / "started", process)
    assert not (tmp_path / "finished").exists()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_OK, stderr.decode()
    assert (tmp_path / "finished").read_text() == "job-1"
    assert (tmp_path / "service-stopped").exists()
    final = json.loads((tmp_path / "reported.json").read_text())
    assert final["reported"]["status"] == "stopped"
    assert final["reported"]["counters"] == {"items": 1}
    assert final["connected"] is False
    logs = [json.loads(line) for line in stdout.decode().splitlines()]
    assert {entry["module"] for entry in logs} == {"echo"}
    assert any(entry["msg"] == "module echo stopped" and entry["drained"] for entry in logs)


async def test_sigterm_with_work_beyond_grace_still_exits(tmp_path):
    process = spawn(tmp_path, SLOW_WORK_S="3600", EDGEKIT_GRACE_S="0.5")
    await wait_for_file(tmp_path / "started", process)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_OK
    assert not (tmp_path / "finished").exists()
    assert b"did not finish within 0.5 s" in stdout


def test_invalid_environment_in_a_process_exits_2(tmp_path):
    process = spawn(tmp_path, SLOW_WORK_S="soon")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_BAD_SETTINGS
    assert "SLOW_WORK_S" in stderr.decode()
    assert not (tmp_path / "started").exists()
