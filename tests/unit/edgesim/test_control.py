"""The run's control API and its client, against a fake run."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edgesim.__main__ import main
from edgesim.control import ControlClient, ControlError, ControlServer, ModuleAction, UnknownModuleError

pytestmark = pytest.mark.timeout(30)


class FakeRun:
    def __init__(self) -> None:
        self.twins: dict[str, dict[str, Any]] = {
            "m": {"desired": {"$version": 1}, "reported": {"$version": 1}}
        }
        self.actions: list[tuple[str, str]] = []

    def _check(self, module: str) -> None:
        if module not in self.twins:
            raise UnknownModuleError(module)

    def status(self) -> dict[str, Any]:
        return {"modules": {"m": {"running": True}}}

    def get_twin(self, module: str) -> dict[str, Any]:
        self._check(module)
        return self.twins[module]

    async def patch_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self._check(module)
        if "bad.name" in patch:
            raise ValueError("property names may not contain '.'")
        desired = self.twins[module]["desired"]
        desired.update(patch)
        desired["$version"] += 1
        return {**patch, "$version": desired["$version"]}

    async def invoke_method(self, module: str, method: str, payload: Any, wait_s: float) -> tuple[int, Any]:
        self._check(module)
        if method == "slow":
            return 504, {"message": f"timed out after {wait_s}"}
        return 200, {"method": method, "echo": payload}

    async def module_action(self, module: str, action: ModuleAction) -> dict[str, Any]:
        self._check(module)
        if action == "kill":
            raise RuntimeError("module m is not running")
        self.actions.append((module, action))
        return {"running": action != "stop"}


@pytest.fixture
async def server(tmp_path: Path):
    fake = FakeRun()
    control = ControlServer(fake, tmp_path)
    await control.start()
    yield control, fake
    await control.stop()


async def test_control_file_is_private_and_loopback(server: Any, tmp_path: Path) -> None:
    control, _ = server
    path = tmp_path / "control.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["url"] == control.url
    assert data["url"].startswith("http://127.0.0.1:")
    assert len(data["token"]) >= 32


async def test_requests_need_the_token(server: Any) -> None:
    control, _ = server

    wrong = ControlClient(url=control.url, token="wrong")
    with pytest.raises(ControlError, match="HTTP 401"):
        await asyncio.to_thread(wrong.status)
    good = ControlClient.for_run(control.control_file.parent)
    assert (await asyncio.to_thread(good.status))["modules"]["m"]["running"] is True


async def test_client_round_trips(server: Any, tmp_path: Path) -> None:
    _, fake = server
    client = ControlClient.for_run(tmp_path)
    delivered = await asyncio.to_thread(client.patch_desired, "m", {"interval": 2})
    assert delivered == {"interval": 2, "$version": 2}
    assert (await asyncio.to_thread(client.get_twin, "m"))["desired"]["interval"] == 2
    result = await asyncio.to_thread(client.invoke_method, "m", "ping", {"x": [1, "é"]}, 5)
    assert result == {"status": 200, "payload": {"method": "ping", "echo": {"x": [1, "é"]}}}
    assert (await asyncio.to_thread(client.module_action, "m", "restart")) == {"running": True}
    assert fake.actions == [("m", "restart")]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.get_twin("ghost"), "HTTP 404: unknown module 'ghost'"),
        (lambda c: c.patch_desired("m", {"bad.name": 1}), "HTTP 400: property names"),
        (lambda c: c.module_action("m", "kill"), "HTTP 409: module m is not running"),
        (lambda c: c.module_action("m", "explode"), "HTTP 404: unknown action 'explode'"),
        (lambda c: c.invoke_method("m", "ping", None, 0), "HTTP 400: timeout must be"),
    ],
)
async def test_errors_become_http_statuses(server: Any, tmp_path: Path, call: Any, message: str) -> None:
    client = ControlClient.for_run(tmp_path)
    with pytest.raises(ControlError, match=message):
        await asyncio.to_thread(call, client)


async def test_cli_prints_json_and_exits_non_zero_on_failure(
    server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(tmp_path)
    assert await asyncio.to_thread(main, ["twin", "patch", "m", '{"count": 3}', "--run", run]) == 0
    assert json.loads(capsys.readouterr().out) == {"count": 3, "$version": 2}
    assert await asyncio.to_thread(main, ["method", "m", "ping", '"hi"', "--run", run, "--timeout", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["payload"]["echo"] == "hi"
    assert await asyncio.to_thread(main, ["method", "m", "slow", "--run", run]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == 504
    assert "status 504" in captured.err
    assert await asyncio.to_thread(main, ["module", "stop", "m", "--run", run]) == 0
    assert await asyncio.to_thread(main, ["twin", "get", "ghost", "--run", run]) == 1
    assert "unknown module 'ghost'" in capsys.readouterr().err


def test_client_without_a_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ControlError, match="no run in progress"):
        ControlClient.for_run(tmp_path)
    (tmp_path / "control.json").write_text(json.dumps({"url": "http://example.com:80", "token": "t"}))
    with pytest.raises(ControlError, match="not a loopback"):
        ControlClient.for_run(tmp_path)
    assert main(["status", "--run", str(tmp_path / "nothing")]) == 1
    assert "no run in progress" in capsys.readouterr().err


async def test_stop_removes_the_control_file(tmp_path: Path) -> None:
    control = ControlServer(FakeRun(), tmp_path)
    await control.start()
    assert control.control_file.exists()
    await control.stop()
    assert not control.control_file.exists()
