"""The module supervisor with tiny Python processes: restart policies, stops, environment, logs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgesim.manifest import Deployment, ModuleSpec, RestartPolicy, Volume
from edgesim.supervisor import (
    ProcessSpec,
    Supervisor,
    SupervisorError,
    build_process_specs,
    find_module_package,
    rewrite_env_paths,
    should_restart,
    volume_folder,
)

pytestmark = pytest.mark.timeout(60)

SLEEPER = "import time\nwhile True: time.sleep(0.1)"


def _spec(
    tmp_path: Path,
    name: str,
    code: str,
    policy: RestartPolicy = "always",
    autostart: bool = True,
    env: dict[str, str] | None = None,
) -> ProcessSpec:
    return ProcessSpec(
        name=name,
        argv=(sys.executable, "-c", textwrap.dedent(code)),
        env={**os.environ, **(env or {})},
        log_path=tmp_path / "logs" / f"{name}.log",
        restart_policy=policy,
        autostart=autostart,
    )


async def _until(condition: object, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def _fast(specs: list[ProcessSpec], **kwargs: float) -> Supervisor:
    settings = {"backoff_initial": 0.05, "backoff_cap": 0.2, "stop_grace": 5.0} | kwargs
    return Supervisor(specs, **settings)


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [
        ("always", 0, True),
        ("always", 1, True),
        ("on-unhealthy", -9, True),
        ("on-failure", 0, False),
        ("on-failure", 2, True),
        ("never", 1, False),
    ],
)
def test_should_restart(policy: RestartPolicy, code: int, expected: bool) -> None:
    assert should_restart(policy, code) is expected


async def test_kill_restarts_by_policy_always(tmp_path: Path) -> None:
    supervisor = _fast([_spec(tmp_path, "m", SLEEPER)])
    await supervisor.start()
    try:
        first_pid = supervisor.state("m").pid
        assert first_pid is not None
        assert supervisor.state("m").running
        await supervisor.kill("m")
        await _until(lambda: supervisor.state("m").running and supervisor.state("m").pid != first_pid)
        state = supervisor.state("m")
        assert state.restarts == 1
        assert state.crash_exit_code == -9
        assert state.killed_on_request
        assert state.consecutive_crashes == 0  # a requested kill is not the module's crash
    finally:
        await supervisor.stop_all()
    assert not supervisor.state("m").running


async def test_never_policy_does_not_restart(tmp_path: Path) -> None:
    supervisor = _fast([_spec(tmp_path, "m", SLEEPER, policy="never")])
    await supervisor.start()
    await supervisor.kill("m")
    await asyncio.sleep(0.5)  # several backoff periods: a restart would have happened
    state = supervisor.state("m")
    assert not state.running
    assert state.restarts == 0
    assert state.starts == 1
    assert not supervisor.busy()
    await supervisor.stop_all()


async def test_on_failure_restarts_only_non_zero_exits(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    # Exits 3 on its first run, 0 on the second: one restart, then it stays down.
    code = f"""
        import pathlib, sys
        p = pathlib.Path({str(counter)!r})
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        sys.exit(3 if n == 0 else 0)
    """
    supervisor = _fast([_spec(tmp_path, "m", code, policy="on-failure")])
    await supervisor.start()
    await _until(lambda: counter.exists() and counter.read_text() == "2" and not supervisor.busy())
    await asyncio.sleep(0.5)
    state = supervisor.state("m")
    assert counter.read_text() == "2"
    assert state.restarts == 1
    assert state.crash_exit_code == 0
    assert state.exit_code == 0
    assert not state.running
    await supervisor.stop_all()


async def test_crash_loop_is_counted(tmp_path: Path) -> None:
    supervisor = _fast([_spec(tmp_path, "m", "import sys; sys.exit(7)")])
    await supervisor.start()
    await _until(lambda: supervisor.state("m").consecutive_crashes >= 3)
    await supervisor.stop("m")
    state = supervisor.state("m")
    restarts_after_stop = state.restarts
    await asyncio.sleep(0.5)
    assert supervisor.state("m").restarts == restarts_after_stop  # stop ends the loop, even mid-backoff
    assert state.crash_exit_code == 7
    assert not state.killed_on_request


async def test_graceful_stop_sends_sigterm_and_waits(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    code = f"""
        import pathlib, signal, sys, time
        def bye(*_):
            time.sleep(0.3)  # cleanup takes a moment; stop() must wait for it
            pathlib.Path({str(marker)!r}).write_text("clean")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("up and " + "running", flush=True)  # the marker must not appear in the logged argv
        while True: time.sleep(0.05)
    """
    supervisor = _fast([_spec(tmp_path, "m", code)])
    await supervisor.start()
    await _until(lambda: "up and running" in (tmp_path / "logs" / "m.log").read_text())
    await supervisor.stop("m")
    state = supervisor.state("m")
    assert marker.read_text() == "clean"
    assert state.exit_code == 0
    assert state.crash_exit_code is None
    assert state.restarts == 0
    assert not state.running


async def test_stop_kills_after_grace_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("up and " + "running", flush=True)  # the marker must not appear in the logged argv
        while True: time.sleep(0.05)
    """
    supervisor = _fast([_spec(tmp_path, "m", code)], stop_grace=0.5)
    await supervisor.start()
    await _until(lambda: "up and running" in (tmp_path / "logs" / "m.log").read_text())
    await supervisor.stop("m")
    assert supervisor.state("m").exit_code == -9


async def test_stopped_status_is_not_started_until_asked(tmp_path: Path) -> None:
    supervisor = _fast([_spec(tmp_path, "a", SLEEPER), _spec(tmp_path, "b", SLEEPER, autostart=False)])
    await supervisor.start()
    try:
        assert supervisor.state("a").running
        assert not supervisor.state("b").running
        assert supervisor.state("b").starts == 0
        await supervisor.start_module("b")
        assert supervisor.state("b").running
        await supervisor.restart("a")
        assert supervisor.state("a").running
        assert supervisor.state("a").starts == 2
        assert supervisor.state("a").restarts == 0  # restarts count the policy's, not requested ones
    finally:
        await supervisor.stop_all()
    with pytest.raises(SupervisorError, match="not running"):
        await supervisor.kill("a")
    with pytest.raises(SupervisorError, match="unknown module"):
        await supervisor.stop("nope")


async def test_stop_all_goes_in_reverse_startup_order(tmp_path: Path) -> None:
    order = tmp_path / "order"
    code = """
        import os, signal, sys, time
        def bye(*_):
            with open(os.environ["ORDER_FILE"], "a") as f:
                f.write(os.environ["NAME"] + "\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("up and " + "running", flush=True)  # the marker must not appear in the logged argv
        while True: time.sleep(0.05)
    """
    names = ["first", "second", "third"]
    specs = [_spec(tmp_path, n, code, env={"ORDER_FILE": str(order), "NAME": n}) for n in names]
    supervisor = _fast(specs)
    await supervisor.start()
    for name in names:
        await _until(lambda name=name: "up and running" in (tmp_path / "logs" / f"{name}.log").read_text())
    await supervisor.stop_all()
    assert order.read_text().split() == ["third", "second", "first"]


async def test_log_has_output_and_a_line_per_start(tmp_path: Path) -> None:
    code = "import sys; print('hello out', flush=True); print('hello err', file=sys.stderr); sys.exit(1)"
    supervisor = _fast([_spec(tmp_path, "m", code, policy="on-failure")])
    await supervisor.start()
    await _until(lambda: supervisor.state("m").starts >= 2)
    await supervisor.stop("m")
    text = (tmp_path / "logs" / "m.log").read_text()
    assert "hello out" in text
    assert "hello err" in text
    assert text.count(": start #") >= 2
    assert "exited with code 1" in text


async def test_a_command_that_cannot_start_is_reported(tmp_path: Path) -> None:
    spec = ProcessSpec(name="m", argv=(str(tmp_path / "missing"),), env={}, log_path=tmp_path / "m.log")
    supervisor = _fast([spec])
    await supervisor.start()
    state = supervisor.state("m")
    assert state.spawn_error is not None
    assert "missing" in state.spawn_error
    assert not state.running
    assert not supervisor.busy()


# ------------------------------------------------------------------------------- specs and environment


def _deployment(*modules: ModuleSpec) -> Deployment:
    return Deployment(modules={m.name: m for m in modules}, routes={}, store_ttl_secs=7200, desired={})


def test_volume_folders() -> None:
    run = Path("/run")
    assert volume_folder(run, Volume("share", "/data/share")) == Path("/run/volumes/share")
    assert volume_folder(run, Volume("/srv/edge/share", "/data/share")) == Path("/run/volumes/srv_edge_share")
    assert volume_folder(run, Volume("${X}", "/x")) == Path("/run/volumes/__X_")


def test_rewrite_env_paths_matches_whole_path_components() -> None:
    mapping = {"/data/share": Path("/r/volumes/share"), "/data/share/deep": Path("/r/volumes/deep")}
    env = {
        "A": "/data/share",
        "B": "/data/share/in/x.csv",
        "C": "/data/shared",
        "D": "/data/share/deep/y",
        "E": "relative/data/share",
    }
    assert rewrite_env_paths(env, mapping) == {
        "A": "/r/volumes/share",
        "B": "/r/volumes/share/in/x.csv",
        "C": "/data/shared",
        "D": "/r/volumes/deep/y",
        "E": "relative/data/share",
    }


def test_build_specs_for_repo_and_command_modules(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    package = repo / "modules" / "transformer" / "transformer_mod"
    package.mkdir(parents=True)
    (package / "__main__.py").write_text("")
    (repo / "modules" / "transformer" / "tests").mkdir()  # not a package with __main__: ignored
    run = tmp_path / "run"
    transformer = ModuleSpec(
        name="transformer",
        image="x",
        env={"SHARE_DIR": "/data/share", "PLAIN": "value", "IOTEDGE_DEVICEID": "from-manifest"},
        create_options={},
        volumes=(Volume("share", "/data/share", True), Volume("/var/state", "/data/state")),
    )
    other = ModuleSpec(
        name="other", image="y", env={}, create_options={}, restart_policy="never", status="stopped"
    )
    specs = build_process_specs(
        _deployment(transformer, other),
        run,
        repo,
        {"other": "node  server.js --port '8 0'"},
        {"transformer": {"IOTEDGE_DEVICEID": "dev1"}},
        base_env={
            "PATH": "/bin",
            "IOTEDGE_MODULEID": "stale",
            "EdgeHubConnectionString": "stale",
            "PYTHONPATH": "/p",
        },
    )
    first, second = specs
    assert first.argv == (sys.executable, "-m", "transformer_mod")
    assert first.cwd == repo / "modules" / "transformer"
    assert first.env["PYTHONPATH"] == f"{repo / 'modules' / 'transformer'}{os.pathsep}/p"
    assert first.env["SHARE_DIR"] == str(run / "volumes" / "share")
    assert first.env["PLAIN"] == "value"
    assert first.env["IOTEDGE_DEVICEID"] == "dev1"  # the hub's values win over the manifest's
    assert "IOTEDGE_MODULEID" not in first.env  # inherited edge variables never leak into a module
    assert "EdgeHubConnectionString" not in first.env
    assert first.env["EDGESIM_RUN_DIR"] == str(run)
    assert json.loads(first.env["EDGESIM_VOLUMES"]) == {
        "/data/share": str(run / "volumes" / "share"),
        "/data/state": str(run / "volumes" / "var_state"),
    }
    assert first.log_path == run / "logs" / "transformer.log"
    assert second.argv == ("node", "server.js", "--port", "8 0")
    assert second.cwd is None
    assert (second.restart_policy, second.autostart) == ("never", False)


def test_build_specs_refuses_unknown_or_missing_modules(tmp_path: Path) -> None:
    spec = ModuleSpec(name="ghost", image="x", env={}, create_options={})
    with pytest.raises(SupervisorError, match=r"no folder .* and no --module ghost=COMMAND"):
        build_process_specs(_deployment(spec), tmp_path, tmp_path, {}, {})
    with pytest.raises(SupervisorError, match="not in the manifest: extra"):
        build_process_specs(_deployment(spec), tmp_path, tmp_path, {"ghost": "true", "extra": "true"}, {})


def test_find_module_package_needs_exactly_one(tmp_path: Path) -> None:
    for name in ("a_pkg", "b_pkg"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__main__.py").write_text("")
    with pytest.raises(SupervisorError, match="exactly one"):
        find_module_package(tmp_path)
    (tmp_path / "b_pkg" / "__main__.py").unlink()
    assert find_module_package(tmp_path) == "a_pkg"
