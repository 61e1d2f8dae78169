"""The control API's storage fault control (`POST /storage/{stop|start}`), its client and CLI, against fakes.

The real thing (Azurite stopped and started under a whole run) is tests/e2e/test_data_path_storage.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edgesim.__main__ import main
from edgesim.control import (
    ControlClient,
    ControlError,
    ControlServer,
    ModuleAction,
    StorageAction,
    UnknownModuleError,
)

pytestmark = pytest.mark.timeout(30)


class FakeRun:
    def status(self) -> dict[str, Any]:
        return {"modules": {}}

    def get_twin(self, module: str) -> dict[str, Any]:
        raise UnknownModuleError(module)

    async def patch_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        raise UnknownModuleError(module)

    async def invoke_method(self, module: str, method: str, payload: Any, wait_s: float) -> tuple[int, Any]:
        raise UnknownModuleError(module)

    async def module_action(self, module: str, action: ModuleAction) -> dict[str, Any]:
        raise UnknownModuleError(module)


class FakeStorage:
    """Behaves like SimRun.storage_action: a state machine that refuses a no-op with RuntimeError (409)."""

    def __init__(self) -> None:
        self.running = True
        self.stops = 0
        self.calls: list[str] = []

    async def storage_action(self, action: StorageAction) -> dict[str, Any]:
        self.calls.append(action)
        if action == "stop":
            if not self.running:
                raise RuntimeError("storage is not running")
            self.running = False
            self.stops += 1
        else:
            if self.running:
                raise RuntimeError("storage is already running")
            self.running = True
        return {"running": self.running, "stopped_on_request": not self.running, "stops": self.stops}


@pytest.fixture
async def served(tmp_path: Path):
    storage = FakeStorage()
    control = ControlServer(FakeRun(), tmp_path, storage=storage)
    await control.start()
    yield control, storage
    await control.stop()


async def test_client_stops_and_starts_storage(served: Any, tmp_path: Path) -> None:
    _, storage = served
    client = ControlClient.for_run(tmp_path)
    stopped = await asyncio.to_thread(client.storage_action, "stop")
    assert stopped == {"running": False, "stopped_on_request": True, "stops": 1}
    assert storage.running is False
    started = await asyncio.to_thread(client.storage_action, "start")
    assert started == {"running": True, "stopped_on_request": False, "stops": 1}
    assert storage.calls == ["stop", "start"]


async def test_repeating_a_state_is_a_conflict(served: Any, tmp_path: Path) -> None:
    _, storage = served
    client = ControlClient.for_run(tmp_path)
    with pytest.raises(ControlError, match="HTTP 409: storage is already running"):
        await asyncio.to_thread(client.storage_action, "start")
    await asyncio.to_thread(client.storage_action, "stop")
    with pytest.raises(ControlError, match="HTTP 409: storage is not running"):
        await asyncio.to_thread(client.storage_action, "stop")
    assert storage.stops == 1


async def test_unknown_action_and_missing_token(served: Any, tmp_path: Path) -> None:
    control, storage = served
    client = ControlClient.for_run(tmp_path)
    with pytest.raises(ControlError, match="HTTP 404: unknown storage action 'explode'"):
        await asyncio.to_thread(client.storage_action, "explode")  # type: ignore[arg-type]
    intruder = ControlClient(url=control.url, token="wrong")
    with pytest.raises(ControlError, match="HTTP 401"):
        await asyncio.to_thread(intruder.storage_action, "stop")
    assert storage.calls == []


async def test_a_run_without_storage_answers_409(tmp_path: Path) -> None:
    control = ControlServer(FakeRun(), tmp_path)
    await control.start()
    try:
        client = ControlClient.for_run(tmp_path)
        with pytest.raises(ControlError, match="HTTP 409: this run has no Blob storage"):
            await asyncio.to_thread(client.storage_action, "stop")
    finally:
        await control.stop()


async def test_cli_storage_commands(served: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, storage = served
    run = str(tmp_path)
    assert await asyncio.to_thread(main, ["storage", "stop", "--run", run]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is False
    assert await asyncio.to_thread(main, ["storage", "stop", "--run", run]) == 1
    assert "storage is not running" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["storage", "start", "--run", run]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is True
    assert storage.calls == ["stop", "stop", "start"]


def test_cli_refuses_an_unknown_storage_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["storage", "pause"])
    assert "invalid choice" in capsys.readouterr().err
