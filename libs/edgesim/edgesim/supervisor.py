"""Run each module of a deployment as a local process, the way edgeAgent runs containers.

No Docker: a module from this repository runs as `python -m <package>` from `modules/<name>/`; any other
module is a command given by the caller. Volumes become folders of the run directory, and environment values
that point into a volume's container path are rewritten to the folder, so a module told
`SHARE_DIR=/data/share` reads the run's folder. The simulator cannot enforce read-only binds: a process
sees an ordinary folder.

Restart policies follow edgeAgent: `always` and `on-unhealthy` restart after any exit (the simulator has no
health checks, so `on-unhealthy` behaves as `always` after a crash), `on-failure` after a non-zero exit,
`never` not at all; the wait doubles from `backoff_initial` to `backoff_cap` and resets once a module has run
for `stable_after` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edgesim.manifest import Deployment, ModuleSpec, RestartPolicy, Volume

log = logging.getLogger(__name__)

# Variables a module inherits from the shell that would send the SDK elsewhere than this run's hub.
_INHERITED_EDGE_VARIABLES = ("EdgeHubConnectionString", "EdgeModuleCACertificateFile")
CRASH_LOOP_THRESHOLD = 3


class SupervisorError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path
    restart_policy: RestartPolicy = "always"
    autostart: bool = True
    cwd: Path | None = None


@dataclass
class ModuleState:
    name: str
    pid: int | None = None
    running: bool = False
    exit_code: int | None = None
    restarts: int = 0
    started_at: float | None = None
    starts: int = 0
    # Exits edgesim did not ask for, in a row without a stable run in between.
    consecutive_crashes: int = 0
    # The last exit not caused by a graceful stop (a crash, a kill, the module ending by itself).
    crash_exit_code: int | None = None
    # Whether that exit was a kill asked for through kill() (a simulated crash, not the module's fault).
    killed_on_request: bool = False
    spawn_error: str | None = None
    waiting_to_restart: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "running": self.running,
            "exit_code": self.exit_code,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "starts": self.starts,
            "consecutive_crashes": self.consecutive_crashes,
            "crash_exit_code": self.crash_exit_code,
            "killed_on_request": self.killed_on_request,
            "spawn_error": self.spawn_error,
            "waiting_to_restart": self.waiting_to_restart,
        }


def should_restart(policy: RestartPolicy, exit_code: int) -> bool:
    if policy == "never":
        return False
    if policy == "on-failure":
        return exit_code != 0
    return True


def find_module_package(module_dir: Path) -> str:
    """The one Python package directly under `module_dir` that has a `__main__.py`."""
    candidates = sorted(
        child.name
        for child in module_dir.iterdir()
        if child.is_dir() and (child / "__main__.py").is_file() and child.name.isidentifier()
    )
    if len(candidates) != 1:
        raise SupervisorError(
            f"{module_dir}: expected exactly one package with __main__.py, found {candidates or 'none'}"
        )
    return candidates[0]


def volume_folder(run_dir: Path, volume: Volume) -> Path:
    """Named volumes keep their name; absolute host paths are flattened (`/srv/share` -> `srv_share`)."""
    name = volume.source.strip("/").replace("/", "_") if volume.source.startswith("/") else volume.source
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"
    if name in (".", ".."):
        name = name.replace(".", "_")
    return run_dir / "volumes" / name


def rewrite_env_paths(env: Mapping[str, str], volume_map: Mapping[str, Path]) -> dict[str, str]:
    """Point values under a volume's container path at its host folder (longest target wins)."""
    targets = sorted(volume_map, key=len, reverse=True)
    rewritten: dict[str, str] = {}
    for key, value in env.items():
        for target in targets:
            prefix = target.rstrip("/")
            if value == prefix or value.startswith(prefix + "/"):
                value = str(volume_map[target]) + value[len(prefix) :]
                break
        rewritten[key] = value
    return rewritten


def module_command(
    module: ModuleSpec, repo_root: Path, overrides: Mapping[str, str]
) -> tuple[tuple[str, ...], Path | None, Path | None]:
    """(argv, cwd, extra PYTHONPATH entry) for a module; a `--module` override wins over the repo folder."""
    if module.name in overrides:
        argv = tuple(shlex.split(overrides[module.name]))
        if not argv:
            raise SupervisorError(f"module {module.name}: empty command")
        return argv, None, None
    module_dir = repo_root / "modules" / module.name
    if module_dir.is_dir():
        package = find_module_package(module_dir)
        return (sys.executable, "-m", package), module_dir, module_dir
    raise SupervisorError(
        f"module {module.name}: no folder {module_dir} and no --module {module.name}=COMMAND given"
    )


def build_process_specs(
    deployment: Deployment,
    run_dir: Path,
    repo_root: Path,
    overrides: Mapping[str, str],
    extra_env: Mapping[str, Mapping[str, str]],
    base_env: Mapping[str, str] | None = None,
) -> list[ProcessSpec]:
    """One spec per module in startup order; every module is checked before anything starts.

    `extra_env[module]` is added last (the hub's IOTEDGE_* variables, EDGESIM_*), after the manifest's env.
    """
    unknown = set(overrides) - set(deployment.modules)
    if unknown:
        raise SupervisorError(f"--module given for modules not in the manifest: {', '.join(sorted(unknown))}")
    parent = dict(os.environ if base_env is None else base_env)
    for key in list(parent):
        if key.startswith("IOTEDGE_") or key in _INHERITED_EDGE_VARIABLES:
            del parent[key]
    specs: list[ProcessSpec] = []
    errors: list[str] = []
    for module in deployment.modules.values():
        try:
            argv, cwd, python_path = module_command(module, repo_root, overrides)
        except SupervisorError as error:
            errors.append(str(error))
            continue
        volume_map = {volume.target: volume_folder(run_dir, volume) for volume in module.volumes}
        env = dict(parent)
        env.update(rewrite_env_paths(module.env, volume_map))
        env.update(extra_env.get(module.name, {}))
        env["EDGESIM_RUN_DIR"] = str(run_dir)
        env["EDGESIM_VOLUMES"] = json.dumps({target: str(path) for target, path in volume_map.items()})
        if python_path is not None:
            existing = env.get("PYTHONPATH")
            env["PYTHONPATH"] = str(python_path) + (os.pathsep + existing if existing else "")
        specs.append(
            ProcessSpec(
                name=module.name,
                argv=argv,
                env=env,
                log_path=run_dir / "logs" / f"{module.name}.log",
                restart_policy=module.restart_policy,
                autostart=module.status == "running",
                cwd=cwd,
            )
        )
    if errors:
        raise SupervisorError("; ".join(errors))
    return specs


def create_volume_folders(deployment: Deployment, run_dir: Path) -> dict[str, Path]:
    """Create every module's volume folders; returns {container target: host folder} over all modules."""
    mapping: dict[str, Path] = {}
    for module in deployment.modules.values():
        for volume in module.volumes:
            folder = volume_folder(run_dir, volume)
            folder.mkdir(parents=True, exist_ok=True)
            mapping.setdefault(volume.target, folder)
    return mapping


@dataclass
class _Managed:
    spec: ProcessSpec
    state: ModuleState
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    want_running: bool = False
    kill_requested: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Owns the module processes. Single event loop; all methods are called from it."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        backoff_initial: float = 1.0,
        backoff_cap: float = 30.0,
        stable_after: float = 60.0,
        stop_grace: float = 10.0,
    ) -> None:
        self._order = [spec.name for spec in specs]
        self._modules = {spec.name: _Managed(spec=spec, state=ModuleState(name=spec.name)) for spec in specs}
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._stable_after = stable_after
        self._stop_grace = stop_grace

    @property
    def names(self) -> list[str]:
        return list(self._order)

    def state(self, name: str) -> ModuleState:
        return self._managed(name).state

    def states(self) -> dict[str, ModuleState]:
        return {name: self._modules[name].state for name in self._order}

    def restart_policy(self, name: str) -> RestartPolicy:
        return self._managed(name).spec.restart_policy

    def autostart(self, name: str) -> bool:
        return self._managed(name).spec.autostart

    def busy(self) -> bool:
        """True while a module that should run is not running yet (starting or waiting out a backoff).

        A crash-looping module does not count: it would keep a run from ever becoming idle.
        """
        return any(
            m.want_running and not m.state.running and m.state.consecutive_crashes < CRASH_LOOP_THRESHOLD
            for m in self._modules.values()
        )

    def will_run(self, name: str) -> bool:
        """Running, or about to be (starting, or in a backoff that is not a crash loop)."""
        managed = self._managed(name)
        return managed.state.running or (
            managed.want_running and managed.state.consecutive_crashes < CRASH_LOOP_THRESHOLD
        )

    async def start(self) -> None:
        """Start every module whose status is `running`, in startup order."""
        for name in self._order:
            if self._modules[name].spec.autostart:
                await self.start_module(name)

    async def start_module(self, name: str) -> None:
        managed = self._managed(name)
        if managed.want_running and managed.task is not None and not managed.task.done():
            return
        managed.want_running = True
        managed.wake.clear()
        started = asyncio.Event()
        managed.task = asyncio.create_task(self._supervise(managed, started), name=f"supervise-{name}")
        # Return once the first process exists (or failed to), so callers see a pid.
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({waiter, managed.task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def stop(self, name: str, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after the grace period; no restart follows."""
        managed = self._managed(name)
        managed.want_running = False
        managed.wake.set()
        process = managed.process
        if process is not None and process.returncode is None:
            _signal(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace if grace is None else grace)
            except TimeoutError:
                log.warning("%s did not stop within the grace period; killing it", name)
                _signal(process, signal.SIGKILL)
                await process.wait()
        if managed.task is not None:
            await managed.task

    async def kill(self, name: str) -> None:
        """SIGKILL, as a crash: the restart policy decides what happens next."""
        managed = self._managed(name)
        process = managed.process
        if process is None or process.returncode is not None:
            raise SupervisorError(f"module {name} is not running")
        managed.kill_requested = True
        _signal(process, signal.SIGKILL)
        await process.wait()

    async def restart(self, name: str) -> None:
        await self.stop(name)
        await self.start_module(name)

    async def stop_all(self) -> None:
        """Graceful stop in reverse startup order."""
        for name in reversed(self._order):
            await self.stop(name)

    def _managed(self, name: str) -> _Managed:
        try:
            return self._modules[name]
        except KeyError:
            raise SupervisorError(f"unknown module {name!r}") from None

    async def _supervise(self, managed: _Managed, started: asyncio.Event) -> None:
        state = managed.state
        spec = managed.spec
        backoff = self._backoff_initial
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            while managed.want_running:
                state.waiting_to_restart = False
                with spec.log_path.open("ab") as log_file:
                    _mark(log_file, f"start #{state.starts + 1}: {shlex.join(spec.argv)}")
                    try:
                        process = await asyncio.create_subprocess_exec(
                            *spec.argv,
                            cwd=spec.cwd,
                            env=dict(spec.env),
                            stdin=asyncio.subprocess.DEVNULL,
                            stdout=log_file,
                            stderr=asyncio.subprocess.STDOUT,
                            # Its own process group, so signals reach what a shell command spawns.
                            start_new_session=True,
                        )
                    except OSError as error:
                        state.spawn_error = f"{type(error).__name__}: {error}"
                        _mark(log_file, f"could not start: {state.spawn_error}")
                        log.error("module %s could not start: %s", spec.name, state.spawn_error)
                        managed.want_running = False
                        return
                managed.process = process
                managed.kill_requested = False
                if not _wants_running(managed):
                    # stop() came while the process was being created and could not signal it.
                    _signal(process, signal.SIGTERM)
                state.pid = process.pid
                state.running = True
                state.started_at = time.time()
                state.starts += 1
                state.spawn_error = None
                log.info("module %s started (pid %d)", spec.name, process.pid)
                started.set()
                began = time.monotonic()
                exit_code = await process.wait()
                state.running = False
                state.exit_code = exit_code
                ran_for = time.monotonic() - began
                with spec.log_path.open("ab") as log_file:
                    _mark(log_file, f"exited with code {exit_code} after {ran_for:.1f} s")
                if not _wants_running(managed):
                    log.info("module %s stopped (exit code %d)", spec.name, exit_code)
                    return
                state.crash_exit_code = exit_code
                state.killed_on_request = managed.kill_requested
                if managed.kill_requested:
                    log.info("module %s killed on request", spec.name)
                else:
                    if exit_code != 0:
                        state.consecutive_crashes += 1
                    log.warning("module %s exited with code %d", spec.name, exit_code)
                if ran_for >= self._stable_after:
                    backoff = self._backoff_initial
                    state.consecutive_crashes = 1 if exit_code != 0 and not managed.kill_requested else 0
                if not should_restart(spec.restart_policy, exit_code):
                    managed.want_running = False
                    return
                state.waiting_to_restart = True
                managed.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(managed.wake.wait(), backoff)
                state.waiting_to_restart = False
                if not _wants_running(managed):
                    return
                state.restarts += 1
                backoff = min(backoff * 2, self._backoff_cap)
        finally:
            started.set()
            state.running = False
            state.waiting_to_restart = False


def _wants_running(managed: _Managed) -> bool:
    # A function, not the attribute, so type checkers do not assume stop() cannot change it across awaits.
    return managed.want_running


def _signal(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        try:
            os.killpg(process.pid, signum)
        except PermissionError:
            process.send_signal(signum)


def _mark(log_file: IO[bytes], text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    log_file.write(f"--- edgesim {stamp}Z: {text} ---\n".encode())
    log_file.flush()
