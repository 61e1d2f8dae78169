"""`python -m edgesim run`: one whole local run of a deployment, ending in `RUN_DIR/report.json`.

Order of things: check the manifest and every module's command (nothing starts if one is wrong), then
Azurite, the edgeHub emulator, its workload API, the control API, the modules; then the input data is copied
into the local share; then wait (for idle, a duration, or a signal); then stop modules gracefully, export
blobs, stop the rest and write the report, also after a failure or a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edgesim.azurite import (
    Azurite,
    AzuriteError,
    connection_string,
    export_blobs,
    find_azurite_binary,
    free_port,
)
from edgesim.control import ControlServer, ModuleAction, StorageAction, UnknownModuleError
from edgesim.hub import EdgeHub, HubConfig, HubStats
from edgesim.manifest import Deployment, ManifestError, load_manifest
from edgesim.models import MODELS_TARGET, REGISTRY_SUBDIR, ModelError, register_model
from edgesim.report import HubFigures, build_report, module_entry, write_report
from edgesim.supervisor import (
    CRASH_LOOP_THRESHOLD,
    Supervisor,
    SupervisorError,
    build_process_specs,
    create_volume_folders,
    volume_folder,
)
from edgesim.twins import merge_patch
from edgesim.workload import WorkloadApi

log = logging.getLogger("edgesim.run")

SHARE_TARGET = "/data/share"
HUB_PORT = 8883
# Unix socket paths are limited to 108 bytes on Linux; longer run dirs put the socket in a temp folder.
_MAX_SOCKET_PATH = 100
_RUN_DIR_MARKERS = ("report.json", "control.json", "upstream.jsonl", "hub")


class RunError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunOptions:
    manifest: Path
    out: Path
    repo_root: Path
    module_commands: Mapping[str, str] = field(default_factory=dict)
    data: Path | None = None
    data_interval_s: float = 0.0
    desired_patches: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model: Path | None = None
    model_modules: tuple[str, ...] = ("gpu-inferencer", "retrain-trigger")
    duration_s: float | None = None
    until_idle: bool = False
    idle_seconds: float = 5.0
    timeout_s: float | None = None
    azurite: bool = True
    host: str | None = None
    force: bool = False
    device_id: str = "edgesim-device"
    iothub_hostname: str = "edgeloop-sim.azure-devices.net"
    progress_every_s: float = 2.0
    backoff_cap_s: float = 30.0
    stop_grace_s: float = 10.0

    @property
    def open_ended(self) -> bool:
        return self.duration_s is None and not self.until_idle

    @property
    def effective_timeout_s(self) -> float | None:
        if self.timeout_s is not None:
            return self.timeout_s
        return None if self.open_ended else 900.0


def prepare_run_dir(run_dir: Path, force: bool) -> None:
    """Create RUN_DIR; an earlier run's dir (or anything with --force) is wiped, anything else refused."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        looks_like_run = any((run_dir / marker).exists() for marker in _RUN_DIR_MARKERS)
        if not (looks_like_run or force):
            raise RunError(f"{run_dir} is not empty and does not look like an edgesim run dir; use --force")
        if (run_dir / "control.json").exists():
            # A live run would lose its files under it; a stale file after a hard kill is the usual case.
            log.warning("%s has a control.json: replacing what looks like an unfinished earlier run", run_dir)
        shutil.rmtree(run_dir)
    for sub in ("volumes", "hub", "azurite", "logs", "cloud"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def random_loopback_host(port: int = HUB_PORT, attempts: int = 200) -> str:
    """A random 127.x.y.z where `port` is free (all of 127/8 is loopback on Linux): the SDK's port is fixed
    at 8883, so runs and tests side by side need different addresses."""
    for _ in range(attempts):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if port_free(host, port):
            return host
    raise RunError(f"no loopback address with port {port} free after {attempts} tries")


def pick_loopback_host(port: int = HUB_PORT, attempts: int = 50) -> str:
    """127.0.0.1 if `port` is free there, else a random loopback address."""
    if port_free("127.0.0.1", port):
        return "127.0.0.1"
    return random_loopback_host(port, attempts)


def data_files_in_order(source: Path) -> list[Path]:
    """The files of a --data folder in the order they arrive: names starting with `_` (contracts and other
    side files a folder's data relies on) first, then by path."""
    files = [path for path in source.rglob("*") if path.is_file()]
    return sorted(
        files, key=lambda path: (not path.name.startswith("_"), path.relative_to(source).as_posix())
    )


def copy_file_atomically(path: Path, source: Path, dest: Path) -> None:
    """Write under a temporary name, then rename: a watcher never sees half a file."""
    target = dest / path.relative_to(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.edgesim-partial")
    shutil.copyfile(path, temporary)
    os.replace(temporary, target)


def copy_tree_atomically(source: Path, dest: Path) -> int:
    """Copy every file under `source` to `dest`, each written under a temporary name then renamed."""
    files = data_files_in_order(source)
    for path in files:
        copy_file_atomically(path, source, dest)
    return len(files)


def snapshot_tree(root: Path) -> frozenset[tuple[str, int, int]]:
    """(path, size, mtime) of every file: cheap enough to compare every second for idle detection."""
    entries: set[tuple[str, int, int]] = set()
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(path)
                entries.add((path, info.st_size, info.st_mtime_ns))
    return frozenset(entries)


def _patch_desired(deployment: Deployment, module: str, patch: Mapping[str, Any]) -> None:
    desired = copy.deepcopy(deployment.desired.get(module, {}))
    merge_patch(desired, patch)
    deployment.desired[module] = desired


def _figures(stats: HubStats) -> HubFigures:
    return HubFigures(
        routed=stats.routed,
        upstream_messages=stats.upstream_messages,
        delivered=stats.delivered,
        pending=stats.pending,
        expired=stats.expired,
        refused_connections=stats.refused_connections,
    )


class SimRun:
    """One run. Implements the control API's target (status, twins, methods, module actions)."""

    def __init__(self, options: RunOptions, progress: TextIO | None = None) -> None:
        self._options = options
        self._progress = progress if progress is not None else sys.stdout
        self._run_dir = options.out.resolve()
        self._deployment: Deployment | None = None
        self._hub: EdgeHub | None = None
        self._workload: WorkloadApi | None = None
        self._azurite: Azurite | None = None
        self._control: ControlServer | None = None
        self._supervisor: Supervisor | None = None
        self._stop = asyncio.Event()
        self._stop_reason: str | None = None
        self._started = time.time()
        self._last_control = 0.0
        self._ever_connected: set[str] = set()
        self._data_files = 0
        self._data_copied = False
        self._idle_reached = False
        self._timed_out = False
        self._problems: list[str] = []
        self._socket_dir: Path | None = None
        self._log_handler: logging.Handler | None = None
        self._storage_stopped_on_request = False
        self._storage_stops = 0

    # ------------------------------------------------------------------------------ the whole run

    async def run(self) -> int:
        options = self._options
        prepare_run_dir(self._run_dir, options.force)
        self._attach_log()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        self._started = time.time()
        ok = False
        try:
            await self._start_everything()
            await self._wait_for_end()
            ok = self._judge()
        except (ManifestError, SupervisorError, AzuriteError, RunError, ValueError, OSError) as error:
            self._problems.append(f"{type(error).__name__}: {error}")
            log.error("run failed: %s", error)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            report = await self._finish(ok)
        self._say(f"edgesim: {'ok' if report['ok'] else 'NOT ok'}; report at {self._run_dir / 'report.json'}")
        for problem in report["problems"]:
            self._say(f"edgesim: problem: {problem}")
        return 0 if report["ok"] else 1

    async def _start_everything(self) -> None:
        options = self._options
        host = options.host or pick_loopback_host()
        if not port_free(host, HUB_PORT):
            raise RunError(f"port {HUB_PORT} on {host} is taken; pick another --host 127.x.y.z")
        variables: dict[str, str] = {}
        if options.azurite:
            azurite_port = free_port("127.0.0.1")
            storage = connection_string("127.0.0.1", azurite_port)
            variables["STORAGE_CONNECTION_STRING"] = storage
        deployment = load_manifest(options.manifest, variables)
        self._apply_desired_overrides(deployment)
        self._deployment = deployment
        for warning in deployment.warnings:
            log.warning("%s: %s", options.manifest, warning)
            self._say(f"edgesim: warning: {warning}")
        # Check every module's command before anything starts.
        build_process_specs(deployment, self._run_dir, options.repo_root, options.module_commands, {})

        if options.azurite:
            self._azurite = Azurite(
                self._run_dir / "azurite",
                find_azurite_binary(options.repo_root),
                port=azurite_port,
                log_path=self._run_dir / "logs" / "azurite.log",
            )
            await self._azurite.start()

        self._hub = EdgeHub(
            HubConfig(
                host=host,
                device_id=options.device_id,
                iothub_hostname=options.iothub_hostname,
                state_dir=self._run_dir / "hub",
                upstream_path=self._run_dir / "upstream.jsonl",
                modules=tuple(deployment.modules),
                routes=deployment.routes,
                initial_desired=deployment.desired,
                default_ttl_secs=deployment.store_ttl_secs,
                port=HUB_PORT,
            )
        )
        await self._hub.start()
        self._workload = WorkloadApi(self._socket_path(), self._hub)
        await self._workload.start()

        extra_env: dict[str, dict[str, str]] = {}
        for name in deployment.modules:
            env = self._hub.edge_environment(name, self._workload.uri)
            if options.azurite:
                env["EDGESIM_STORAGE_CONNECTION_STRING"] = variables["STORAGE_CONNECTION_STRING"]
            # Containers each have their own network namespace, so every edgekit module can serve metrics on
            # 0.0.0.0:9600; here all modules share the host's, so each takes a free loopback port (reported
            # in its twin as metrics.port).
            env["EDGEKIT_METRICS_HOST"] = "127.0.0.1"
            env["EDGEKIT_METRICS_PORT"] = "0"
            extra_env[name] = env
        create_volume_folders(deployment, self._run_dir)
        specs = build_process_specs(
            deployment, self._run_dir, options.repo_root, options.module_commands, extra_env
        )
        self._supervisor = Supervisor(
            specs, backoff_cap=options.backoff_cap_s, stop_grace=options.stop_grace_s
        )
        self._control = ControlServer(self, self._run_dir, storage=self)
        await self._control.start()
        log.info("hub on %s:%d, control API on %s", host, HUB_PORT, self._control.url)
        self._say(f"edgesim: hub {host}:{HUB_PORT}, control {self._control.url}, run dir {self._run_dir}")
        await self._supervisor.start()
        for name, state in self._supervisor.states().items():
            if state.spawn_error is not None:
                raise RunError(f"module {name} could not start: {state.spawn_error}")

    def _apply_desired_overrides(self, deployment: Deployment) -> None:
        """--desired patches and --model, merged into the modules' initial desired properties (as a layered
        deployment would add to the base one)."""
        options = self._options
        for module, patch in options.desired_patches.items():
            if module not in deployment.modules:
                raise RunError(f"--desired names {module!r}, which the manifest does not have")
            _patch_desired(deployment, module, patch)
        if options.model is None:
            return
        registry = self._models_folder(deployment) / REGISTRY_SUBDIR
        try:
            model = register_model(options.model, registry)
        except ModelError as error:
            raise RunError(f"--model: {error}") from error
        assigned = [name for name in options.model_modules if name in deployment.modules]
        if not assigned:
            raise RunError(f"--model: none of {', '.join(options.model_modules)} is in the manifest")
        for name in assigned:
            _patch_desired(deployment, name, {"model": model.desired()})
        self._say(
            f"edgesim: model {model.name} {model.version} registered and assigned to {', '.join(assigned)}"
        )

    def _models_folder(self, deployment: Deployment) -> Path:
        for module in deployment.modules.values():
            for volume in module.volumes:
                if volume.target.rstrip("/") == MODELS_TARGET:
                    return volume_folder(self._run_dir, volume)
        raise RunError(f"--model: no module mounts {MODELS_TARGET}, so no module could read the model")

    async def _wait_for_end(self) -> None:
        options = self._options
        supervisor = self._supervisor
        hub = self._hub
        assert supervisor is not None
        assert hub is not None
        timeout = options.effective_timeout_s
        deadline = None if timeout is None else self._started + timeout
        duration_end = None if options.duration_s is None else self._started + options.duration_s
        copy_task: asyncio.Task[None] | None = asyncio.create_task(self._copy_data_when_up())
        volumes = self._run_dir / "volumes"
        last_snapshot = await asyncio.to_thread(snapshot_tree, volumes)
        last_change = time.time()
        last_busy = time.time()
        next_progress = time.time()
        try:
            while not self._stop.is_set():
                now = time.time()
                stats = hub.stats()
                self._ever_connected.update(stats.connected)
                if copy_task is not None and copy_task.done():
                    copy_task.result()
                    copy_task = None
                snapshot = await asyncio.to_thread(snapshot_tree, volumes)
                if snapshot != last_snapshot:
                    last_snapshot = snapshot
                    last_change = now
                # Storage taken away on request will come back: the backlog it holds up is not idleness.
                # So is a module that says it is working without messages (a training job, say): reported
                # `busy: true` in its twin.
                if (
                    supervisor.busy()
                    or not self._all_connected_or_ended()
                    or self._storage_stopped_on_request
                    or self._modules_report_busy(hub)
                ):
                    last_busy = now
                if now >= next_progress:
                    self._print_progress(now, stats)
                    next_progress = now + options.progress_every_s
                if duration_end is not None and now >= duration_end:
                    self._stop_reason = "duration"
                    break
                if options.until_idle and self._data_copied and not self._pending_that_can_move(stats):
                    quiet_since = max(stats.last_activity, last_change, last_busy, self._last_control)
                    if now - quiet_since >= options.idle_seconds:
                        self._idle_reached = True
                        self._stop_reason = "idle"
                        self._say(f"edgesim: idle for {options.idle_seconds:g} s; ending the run")
                        break
                if deadline is not None and now >= deadline:
                    self._timed_out = True
                    self._stop_reason = "timeout"
                    self._problems.append(f"timed out after {timeout:g} s")
                    self._say(f"edgesim: timeout after {timeout:g} s")
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
        finally:
            if copy_task is not None:
                copy_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await copy_task

    async def _copy_data_when_up(self) -> None:
        source = self._options.data
        if source is None:
            self._data_copied = True
            return
        if not source.is_dir():
            raise RunError(f"--data {source} is not a folder")
        # "Up" means connected to the hub, so a watcher module has had the chance to start watching.
        up_by = time.time() + 30
        while time.time() < up_by and not self._all_connected_or_ended():
            self._ever_connected.update(self._require_hub().stats().connected)
            await asyncio.sleep(0.2)
        share = self._share_folder()
        interval = self._options.data_interval_s
        if interval <= 0:
            self._data_files = await asyncio.to_thread(copy_tree_atomically, source, share)
        else:
            # A stream rather than a drop: one file every `interval` seconds, as data arrives at a site.
            files = data_files_in_order(source)
            for index, path in enumerate(files):
                await asyncio.to_thread(copy_file_atomically, path, source, share)
                self._data_files = index + 1
                self._say(f"edgesim: fed {path.relative_to(source)} ({index + 1}/{len(files)})")
                if index + 1 < len(files):
                    await asyncio.sleep(interval)
        self._data_copied = True
        log.info("copied %d input files into %s", self._data_files, share)
        self._say(f"edgesim: copied {self._data_files} files into {share}")

    def _share_folder(self) -> Path:
        deployment = self._require_deployment()
        for module in deployment.modules.values():
            for volume in module.volumes:
                if volume.target.rstrip("/") == SHARE_TARGET:
                    return volume_folder(self._run_dir, volume)
        folder = self._run_dir / "volumes" / "share"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _modules_report_busy(self, hub: EdgeHub) -> bool:
        return any(hub.get_twin(name).get("reported", {}).get("busy") is True for name in hub.config.modules)

    def _pending_that_can_move(self, stats: HubStats) -> int:
        """Messages waiting for an endpoint that will take them; those for a module that is stopped for good
        or crash-looping stay pending forever and must not keep a run from becoming idle."""
        supervisor = self._supervisor
        waiting = 0
        for endpoint, count in stats.pending.items():
            module = endpoint.split("/", 1)[0]
            if supervisor is not None and module in supervisor.names and not supervisor.will_run(module):
                continue
            waiting += count
        return waiting

    def _all_connected_or_ended(self) -> bool:
        supervisor = self._supervisor
        if supervisor is None:
            return False
        return all(
            name in self._ever_connected or not state.running
            for name, state in supervisor.states().items()
            if supervisor.autostart(name)
        )

    def _judge(self) -> bool:
        supervisor = self._supervisor
        assert supervisor is not None
        ok = True
        if self._stop_reason == "signal" and not self._options.open_ended:
            self._problems.append("interrupted by a signal before the run ended as asked")
            ok = False
        if self._timed_out:
            ok = False
        for name, state in supervisor.states().items():
            if state.spawn_error is not None:
                self._problems.append(f"module {name} could not start: {state.spawn_error}")
                ok = False
            elif state.consecutive_crashes >= CRASH_LOOP_THRESHOLD:
                self._problems.append(f"module {name} is crash-looping ({state.consecutive_crashes} crashes)")
                ok = False
            elif (
                state.crash_exit_code not in (None, 0)
                and not state.killed_on_request
                and not state.running
                and not state.waiting_to_restart
            ):
                self._problems.append(
                    f"module {name} crashed (exit code {state.crash_exit_code}) and was not restarted"
                    f" (restartPolicy {supervisor.restart_policy(name)})"
                )
                ok = False
        return ok

    async def _finish(self, ok: bool) -> dict[str, Any]:
        stats: HubStats | None = None
        twins: dict[str, dict[str, Any]] = {}
        modules: dict[str, dict[str, Any]] = {}
        deployment = self._deployment
        supervisor = self._supervisor
        if supervisor is not None:
            try:
                await supervisor.stop_all()
            except Exception as error:  # the report must still be written
                self._problems.append(f"stopping modules: {error}")
                ok = False
        if self._control is not None:
            await self._control.stop()
        if self._azurite is not None and self._storage_stopped_on_request:
            # What reached storage is the run's result: bring it back (no module is left to upload) to export.
            try:
                await self._azurite.start()
                self._storage_stopped_on_request = False
            except AzuriteError as error:
                self._problems.append(f"restarting storage to export blobs: {error}")
                ok = False
        if self._azurite is not None and self._azurite.running:
            try:
                count = await asyncio.to_thread(
                    export_blobs, self._azurite.connection_string, self._run_dir / "cloud"
                )
                log.info("exported %d blobs to %s", count, self._run_dir / "cloud")
            except Exception as error:  # reported, not fatal
                self._problems.append(f"exporting blobs: {type(error).__name__}: {error}")
                ok = False
        if self._hub is not None:
            with contextlib.suppress(RuntimeError):
                stats = self._hub.stats()
            if deployment is not None:
                for name in deployment.modules:
                    with contextlib.suppress(KeyError, RuntimeError):
                        twins[name] = self._hub.get_twin(name)
        for closer in (self._workload, self._hub, self._azurite):
            if closer is not None:
                try:
                    await closer.stop()
                except Exception as error:
                    self._problems.append(f"stopping {type(closer).__name__}: {error}")
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if supervisor is not None and deployment is not None:
            for name, state in supervisor.states().items():
                spec = deployment.modules[name]
                modules[name] = module_entry(state, spec.restart_policy, spec.status, twins.get(name))
        report = build_report(
            ok=ok and not self._problems,
            started=self._started,
            ended=time.time(),
            modules=modules,
            twins=twins,
            hub=_figures(stats) if stats is not None else None,
            route_names=list(deployment.routes) if deployment is not None else [],
            problems=self._problems,
            extra={
                "stop_reason": self._stop_reason,
                "idle_reached": self._idle_reached,
                "data_files": self._data_files,
                "manifest": str(self._options.manifest),
                "warnings": deployment.warnings if deployment is not None else [],
                "storage": self._storage_state(),
            },
        )
        write_report(self._run_dir / "report.json", report)
        self._detach_log()
        return report

    # ---------------------------------------------------------------------- control API target

    def status(self) -> dict[str, Any]:
        supervisor = self._supervisor
        hub = self._hub
        stats = hub.stats() if hub is not None else None
        return {
            "run_dir": str(self._run_dir),
            "elapsed_s": round(time.time() - self._started, 3),
            "modules": {
                name: state.as_dict() | {"connected": stats is not None and name in stats.connected}
                for name, state in (supervisor.states() if supervisor is not None else {}).items()
            },
            "routes": dict(stats.routed) if stats is not None else {},
            "upstream_messages": stats.upstream_messages if stats is not None else 0,
            "pending": dict(stats.pending) if stats is not None else {},
            "delivered": dict(stats.delivered) if stats is not None else {},
            "data_copied": self._data_copied,
            "storage": self._storage_state(),
        }

    def get_twin(self, module: str) -> dict[str, Any]:
        self._check_module(module)
        return self._require_hub().get_twin(module)

    async def patch_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self._check_module(module)
        self._last_control = time.time()
        delivered = await self._require_hub().patch_desired(module, patch)
        self._last_control = time.time()
        return delivered

    async def invoke_method(self, module: str, method: str, payload: Any, wait_s: float) -> tuple[int, Any]:
        self._check_module(module)
        self._last_control = time.time()
        result = await self._require_hub().invoke_method(module, method, payload, wait_s)
        self._last_control = time.time()
        return result

    async def module_action(self, module: str, action: ModuleAction) -> dict[str, Any]:
        self._check_module(module)
        supervisor = self._supervisor
        if supervisor is None:
            raise RuntimeError("modules are not started yet")
        self._last_control = time.time()
        try:
            if action == "stop":
                await supervisor.stop(module)
            elif action == "kill":
                await supervisor.kill(module)
            elif action == "start":
                await supervisor.start_module(module)
            else:
                await supervisor.restart(module)
        except SupervisorError as error:
            raise RuntimeError(str(error)) from None
        self._last_control = time.time()
        return supervisor.state(module).as_dict()

    async def storage_action(self, action: StorageAction) -> dict[str, Any]:
        azurite = self._azurite
        if azurite is None:
            raise RuntimeError("this run has no Blob storage (--no-azurite)")
        self._last_control = time.time()
        if action == "stop":
            if not azurite.running:
                raise RuntimeError("storage is not running")
            await azurite.stop()
            self._storage_stopped_on_request = True
            self._storage_stops += 1
            log.info("storage stopped on request")
        else:
            if azurite.running:
                raise RuntimeError("storage is already running")
            try:
                await azurite.start()
            except AzuriteError as error:
                raise RuntimeError(f"storage did not start: {error}") from None
            self._storage_stopped_on_request = False
            log.info("storage started on request at %s", azurite.blob_endpoint)
        self._last_control = time.time()
        state = self._storage_state()
        assert state is not None
        return state

    # ------------------------------------------------------------------------------------ helpers

    def _storage_state(self) -> dict[str, Any] | None:
        azurite = self._azurite
        if azurite is None:
            return None
        return {
            "running": azurite.running,
            "stopped_on_request": self._storage_stopped_on_request,
            "stops": self._storage_stops,
            "endpoint": azurite.blob_endpoint,
        }

    def _check_module(self, module: str) -> None:
        if self._deployment is None or module not in self._deployment.modules:
            raise UnknownModuleError(module)

    def _require_hub(self) -> EdgeHub:
        if self._hub is None:
            raise RuntimeError("the hub is not started yet")
        return self._hub

    def _require_deployment(self) -> Deployment:
        if self._deployment is None:
            raise RuntimeError("the manifest is not loaded yet")
        return self._deployment

    def _socket_path(self) -> Path:
        path = self._run_dir / "hub" / "workload.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        self._socket_dir = Path(tempfile.mkdtemp(prefix="edgesim-"))
        return self._socket_dir / "workload.sock"

    def _on_signal(self, signum: int) -> None:
        if self._stop_reason is None:
            self._stop_reason = "signal"
        log.info("received %s; stopping the run", signal.Signals(signum).name)
        self._say(f"edgesim: {signal.Signals(signum).name}: stopping")
        self._stop.set()

    def _print_progress(self, now: float, stats: HubStats) -> None:
        supervisor = self._supervisor
        states = supervisor.states() if supervisor is not None else {}
        running = sum(1 for state in states.values() if state.running)
        self._say(
            f"[{now - self._started:7.1f}s] modules {running}/{len(states)} running"
            f" | routed {sum(stats.routed.values())}"
            f" | delivered {sum(stats.delivered.values())}"
            f" | upstream {stats.upstream_messages}"
            f" | pending {sum(stats.pending.values())}"
        )

    def _say(self, line: str) -> None:
        print(line, file=self._progress, flush=True)

    def _attach_log(self) -> None:
        handler = logging.FileHandler(self._run_dir / "logs" / "edgesim.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("edgesim")
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        self._log_handler = handler

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("edgesim").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


async def run_simulation(options: RunOptions, progress: TextIO | None = None) -> int:
    return await SimRun(options, progress).run()
