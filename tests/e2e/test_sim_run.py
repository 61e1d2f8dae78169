"""Whole runs under `python -m edgesim run`: two SDK-only modules, routes, twins, methods, a killed module.

The modules (tests/fixtures/sim_modules) use azure-iot-device's production start path
(`create_from_edge_environment()` through the workload API) against the edgeHub emulator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgesim.control import ControlClient, ControlError

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "tests" / "fixtures" / "manifests" / "two_modules.json"
MODULES = REPO_ROOT / "tests" / "fixtures" / "sim_modules"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def _wait(what: str, check: Callable[[], Any], within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except ControlError as error:
            last_error = error
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {within} s (last error: {last_error})")


def _start_run(run_dir: Path, *extra: str, until_idle: bool = True) -> subprocess.Popen[str]:
    ending = ["--until-idle", "--idle-seconds", "4"] if until_idle else []
    command = [
        sys.executable,
        "-m",
        "edgesim",
        "run",
        "--manifest",
        str(MANIFEST),
        "--out",
        str(run_dir),
        "--module",
        f"producer={sys.executable} {MODULES / 'producer.py'}",
        "--module",
        f"consumer={sys.executable} {MODULES / 'consumer.py'}",
        *ending,
        "--timeout",
        "150",
        *extra,
    ]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"the run did not end:\n{output}") from None
    return process.returncode, output


def _client(run_dir: Path, process: subprocess.Popen[str]) -> ControlClient:
    def ready() -> ControlClient | None:
        if process.poll() is not None:
            raise AssertionError(f"the run ended early with code {process.returncode}")
        return ControlClient.for_run(run_dir)

    client: ControlClient = _wait("control.json", ready, within=60)
    return client


def _both_connected(client: ControlClient) -> bool:
    modules = client.status()["modules"]
    return all(modules[name]["connected"] for name in ("producer", "consumer"))


def _reported(client: ControlClient, module: str) -> dict[str, Any]:
    reported: dict[str, Any] = client.get_twin(module)["reported"]
    return reported


def _cli(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesim", *args, "--run", str(run_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_run_until_idle_with_live_twin_and_method(run_dir: Path) -> None:
    process = _start_run(run_dir)
    try:
        client = _client(run_dir, process)
        _wait("both modules connected", lambda: _both_connected(client))
        _wait(
            "first batch received",
            lambda: _reported(client, "consumer").get("counters", {}).get("received") == 20,
        )

        ping = _cli(run_dir, "method", "producer", "ping", '{"from": "test"}', "--timeout", "10")
        assert ping.returncode == 0, ping.stderr
        answer = json.loads(ping.stdout)
        assert answer["status"] == 200
        assert answer["payload"]["pong"] is True
        assert answer["payload"]["echo"] == {"from": "test"}

        missing = _cli(run_dir, "method", "producer", "nope")
        assert missing.returncode == 1
        assert json.loads(missing.stdout)["status"] == 404

        patched = _cli(run_dir, "twin", "patch", "producer", '{"count": 8}')
        assert patched.returncode == 0, patched.stderr
        version = json.loads(patched.stdout)["$version"]
        _wait(
            "producer applied the desired patch live",
            lambda: _reported(client, "producer").get("appliedDesiredVersion") == version,
        )
        _wait(
            "second batch received",
            lambda: _reported(client, "consumer").get("counters", {}).get("received") == 28,
        )
        status = _cli(run_dir, "status")
        assert status.returncode == 0
        assert json.loads(status.stdout)["modules"]["producer"]["running"] is True
    finally:
        code, output = _finish(process)

    assert code == 0, output
    assert "idle for 4 s" in output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] is True, report["problems"]
    assert report["stop_reason"] == "idle"
    assert report["routes"] == {"producerToConsumer": 28, "alertsToUpstream": 7}
    assert report["upstream_messages"] == 7
    assert report["pending"] == {}
    assert report["delivered"] == {"consumer/inputs/in": 28}
    for name in ("producer", "consumer"):
        module = report["modules"][name]
        assert module["exit_code"] is None  # never crashed
        assert module["final_exit_code"] == 0  # SIGTERM at the end was handled gracefully
        assert module["restarts"] == 0
    assert report["modules"]["consumer"]["counters"] == {"received": 28, "alerts": 7}
    assert report["modules"]["producer"]["counters"] == {"sent": 28, "alerts": 7}
    producer_twin = report["twins"]["producer"]
    assert producer_twin["desired"]["count"] == 8
    assert producer_twin["reported"]["settings"] == {"count": 8, "interval": 0.01}

    upstream = [json.loads(line) for line in (run_dir / "upstream.jsonl").read_text().splitlines()]
    assert len(upstream) == 7
    assert {(m["module"], m["output"], m["properties"]["kind"]) for m in upstream} == {
        ("producer", "out", "alert")
    }
    assert sorted(m["body"]["seq"] for m in upstream) == [0, 4, 8, 12, 16, 20, 24]

    received = (run_dir / "volumes" / "received" / "consumer.jsonl").read_text().splitlines()
    assert len(received) == 28  # the env path /data/received/... was rewritten into the run dir
    assert "consumer: received producer-27 kind=reading" in (run_dir / "logs" / "consumer.log").read_text()
    assert "applied desired version" in (run_dir / "logs" / "producer.log").read_text()
    assert (run_dir / "logs" / "edgesim.log").stat().st_size > 0
    # The consumer uploaded on its way out; the run exported Blob storage after stopping modules.
    summary = json.loads((run_dir / "cloud" / "results" / "consumer" / "summary.json").read_text())
    assert summary == {"received": 28, "alerts": 7}
    assert not (run_dir / "control.json").exists()


def test_killed_module_is_restarted_by_policy(run_dir: Path) -> None:
    process = _start_run(run_dir, "--no-azurite")
    try:
        client = _client(run_dir, process)
        _wait("both modules connected", lambda: _both_connected(client))
        _wait(
            "first batch received",
            lambda: _reported(client, "consumer").get("counters", {}).get("received") == 20,
        )
        first_pid = client.status()["modules"]["consumer"]["pid"]

        killed = client.module_action("consumer", "kill")
        assert killed["killed_on_request"] is True
        # Sent while the consumer is down or reconnecting: the hub must hold them for it.
        client.patch_desired("producer", {"count": 4})

        def restarted() -> bool:
            consumer = client.status()["modules"]["consumer"]
            return bool(consumer["restarts"] == 1 and consumer["connected"] and consumer["pid"] != first_pid)

        _wait("consumer restarted and reconnected", restarted)
        _wait(
            "messages sent during the outage arrive",
            lambda: _reported(client, "consumer").get("counters", {}).get("received", 0) >= 4,
        )
    finally:
        code, output = _finish(process)

    assert code == 0, output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] is True, report["problems"]
    consumer = report["modules"]["consumer"]
    assert consumer["restarts"] == 1
    assert consumer["starts"] == 2
    assert consumer["exit_code"] == -9
    assert consumer["killed_on_request"] is True
    assert report["modules"]["producer"]["restarts"] == 0
    assert report["routes"]["producerToConsumer"] == 24
    # At least once: every message reached the consumer across the kill (a redelivery may repeat one).
    ids = {
        json.loads(line)["id"]
        for line in (run_dir / "volumes" / "received" / "consumer.jsonl").read_text().splitlines()
    }
    assert ids == {f"producer-{n}" for n in range(24)}
    log_text = (run_dir / "logs" / "consumer.log").read_text()
    assert log_text.count(": start #") == 2
    assert "exited with code -9" in log_text
    assert not (run_dir / "cloud" / "results").exists()  # --no-azurite: nothing uploaded, nothing exported


def test_sigterm_stops_the_run_and_still_writes_the_report(run_dir: Path) -> None:
    process = _start_run(run_dir, "--no-azurite", "--duration", "120", until_idle=False)
    try:
        client = _client(run_dir, process)
        _wait("both modules connected", lambda: _both_connected(client))
        process.terminate()
    finally:
        code, output = _finish(process)
    assert code == 1, output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] is False
    assert report["stop_reason"] == "signal"
    assert any("signal" in problem for problem in report["problems"])
    assert report["modules"]["producer"]["final_exit_code"] == 0  # modules were still stopped gracefully


def test_crash_looping_module_fails_the_run(run_dir: Path) -> None:
    crash = f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(5)'"
    command = [
        sys.executable, "-m", "edgesim", "run", "--manifest", str(MANIFEST), "--out", str(run_dir),
        "--no-azurite", "--until-idle", "--idle-seconds", "2", "--timeout", "120",
        "--module", f"producer={sys.executable} {MODULES / 'producer.py'}",
        "--module", f"consumer={crash}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 1, result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] is False
    assert report["stop_reason"] == "idle"  # ended by idleness, not the timeout
    consumer = report["modules"]["consumer"]
    assert consumer["exit_code"] == 5
    assert consumer["restarts"] >= 2
    assert any("consumer is crash-looping" in problem for problem in report["problems"])


def test_bad_manifest_fails_before_starting_anything(run_dir: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.json"
    data = json.loads(MANIFEST.read_text())
    data["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["broken"] = "FROM nowhere INTO nothing"
    manifest.write_text(json.dumps(data))
    result = subprocess.run(
        [sys.executable, "-m", "edgesim", "run", "--manifest", str(manifest), "--out", str(run_dir),
         "--no-azurite", "--until-idle", "--module", "producer=true"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ok"] is False
    # Checked before anything started: no module command for consumer.
    assert any("--module consumer=COMMAND" in problem for problem in report["problems"]), report["problems"]
    assert report["modules"] == {}
