"""The runner: the lifecycle every module shares (DESIGN §3).

Start: settings from defaults and environment (invalid: exit code 2), metrics server, transport
connect, twin desired properties applied, service started, input intake opened, reported properties
patched (`status`, `settings`, `health`, `counters`, `metrics`). Then counters are reported whenever
they changed, at most every `EDGEKIT_REPORT_INTERVAL_S`.

Stop (SIGTERM/SIGINT, or `ctx.fail()`): `ctx.stopping` is set, new input is refused, queued and
in-flight handlers are drained within `EDGEKIT_GRACE_S`, the service is stopped, the final status
is reported, the transport disconnected. Exit code 0, or 1 when the service failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Literal, NoReturn, Protocol, TypeVar

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from .ledger import Ledger
from .logging import configure_logging
from .metrics import Counters, MetricsServer
from .settings import SettingsError, SettingsManager
from .transport import Transport

T = TypeVar("T", bound=BaseModel)
TransportFactory = Callable[[], Transport]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2
RUNTIME_ENV_PREFIX = "EDGEKIT_"

logger = logging.getLogger("edgekit.runner")


class RuntimeSettings(BaseModel):
    """The runner's own settings, from `EDGEKIT_*` environment variables only (not the twin)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["edgehub", "memory"] = "edgehub"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9600, ge=0, le=65535)
    state_dir: Path | None = None
    grace_s: float = Field(default=20.0, gt=0)
    report_interval_s: float = Field(default=10.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Service(Protocol):
    """What a module implements. `start` registers handlers and starts background work, and returns;
    `stop` releases what `start` took (handlers have drained by then); it is also called when
    `start` raised part way, so it must cope with a half-started service. A service declares
    `async def start(self, ctx: Context[MySettings])`."""

    async def start(self, ctx: Context[Any]) -> None: ...

    async def stop(self) -> None: ...


class Context(Generic[T]):
    """What the runner gives a service."""

    def __init__(
        self,
        *,
        module: str,
        transport: Transport,
        settings: SettingsManager[T],
        runtime: RuntimeSettings,
        registry: CollectorRegistry,
        on_change: Callable[[], None],
        on_fail: Callable[[str], None],
    ) -> None:
        self.module = module
        self.transport = transport
        self.settings = settings
        self.runtime = runtime
        self.metrics = registry
        self.counters = Counters(registry)
        self.logger = logging.getLogger(f"edgeloop.{module}")
        self.stopping = asyncio.Event()
        self.health: dict[str, Any] = {"state": "healthy", "detail": "", "since": _now()}
        self._ledgers: list[Ledger] = []
        self._on_change = on_change
        self._on_fail = on_fail

    @property
    def state_dir(self) -> Path:
        """The module's state volume: EDGEKIT_STATE_DIR, else /data/state/<module>."""
        return self.runtime.state_dir or Path("/data/state") / self.module

    def open_ledger(
        self, states: Sequence[str] = ("seen", "done"), *, terminal: Sequence[str] = (), name: str = "ledger"
    ) -> Ledger:
        """Open `<state_dir>/<name>.sqlite`; the runner closes it after the service stopped."""
        ledger = Ledger(self.state_dir / f"{name}.sqlite", states, terminal=terminal).open()
        self._ledgers.append(ledger)
        return ledger

    def set_health(self, state: str, detail: str = "") -> None:
        """Report health (`healthy`, `degraded`, ...) in reported properties soon."""
        if state != self.health["state"] or detail != self.health["detail"]:
            self.health = {"state": state, "detail": detail, "since": _now()}
            self._on_change()

    def fail(self, reason: str) -> None:
        """Stop the module with exit code 1 (the restart policy decides what happens next)."""
        self._on_fail(reason)

    def close_ledgers(self) -> None:
        for ledger in self._ledgers:
            ledger.close()
        self._ledgers.clear()


class Runner(Generic[T]):
    """Runs one service. `run()` for a process (see `run_module`), or `start()`/`stop()` in tests."""

    def __init__(
        self,
        service: Service,
        settings_model: type[T],
        *,
        module: str | None = None,
        env_prefix: str = "",
        environ: Mapping[str, str] | None = None,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.service = service
        self._settings = SettingsManager(settings_model, env_prefix=env_prefix)
        self._runtime_settings = SettingsManager(RuntimeSettings, env_prefix=RUNTIME_ENV_PREFIX)
        self._module = module
        self._environ = environ
        self._transport_factory = transport_factory
        self._ctx: Context[T] | None = None
        self._metrics: MetricsServer | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._report_now: asyncio.Event | None = None
        self._stop_requested: asyncio.Event | None = None
        self._failure: str | None = None
        self._started_at = ""
        self._started = False
        self._service_started = False
        self._stopped = False
        self._prepared = False

    @property
    def ctx(self) -> Context[T]:
        if self._ctx is None:
            raise RuntimeError("the runner has not started")
        return self._ctx

    @property
    def runtime(self) -> RuntimeSettings:
        return self._runtime_settings.current

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.port if self._metrics else None

    @property
    def module(self) -> str | None:
        return self._module

    def prepare(self) -> RuntimeSettings:
        """Read and validate all settings from the environment, once; raises `SettingsError`."""
        if self._prepared:
            return self.runtime
        environ = os.environ if self._environ is None else self._environ
        if self._module is None:
            self._module = environ.get("IOTEDGE_MODULEID")
        if not self._module:
            raise SettingsError("no module name: pass module= or set IOTEDGE_MODULEID")
        runtime = self._runtime_settings.load(environ)
        self._settings.load(environ)
        self._prepared = True
        return runtime

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a runner starts once")
        self._started = True
        runtime = self.prepare()
        assert self._module is not None
        self._stop_requested = asyncio.Event()
        self._report_now = asyncio.Event()
        registry = CollectorRegistry()
        transport = self._transport_factory() if self._transport_factory else _default_transport(runtime)
        ctx: Context[T] = Context(
            module=self._module,
            transport=transport,
            settings=self._settings,
            runtime=runtime,
            registry=registry,
            on_change=self._report_now.set,
            on_fail=self._fail,
        )
        self._ctx = ctx
        self._started_at = _now()

        self._metrics = MetricsServer(registry, runtime.metrics_host, runtime.metrics_port)
        port = self._metrics.start()
        logger.info("metrics at http://%s:%d/metrics", runtime.metrics_host, port)

        await transport.connect()
        twin = await transport.get_twin()
        ctx.counters.restore(twin.get("reported", {}).get("counters"))
        update = self._settings.apply_desired(twin.get("desired", {}), full=True)
        transport.on_desired(self._on_desired)
        await transport.patch_reported(
            {
                "status": "starting",
                "started": self._started_at,
                "settings": update.reported,
                "health": ctx.health,
                "metrics": {"port": port},
            }
        )
        self._service_started = True
        await self.service.start(ctx)
        transport.start_intake()
        self._reporter = asyncio.ensure_future(self._report_loop())
        await transport.patch_reported({"status": "running"})
        logger.info("module %s running", self._module, extra={"settings_version": update.version})

    def request_stop(self) -> None:
        """Ask for a graceful stop (safe to call from a signal handler on the loop)."""
        if self._stop_requested is not None:
            self._stop_requested.set()
        if self._ctx is not None:
            self._ctx.stopping.set()

    async def wait(self) -> None:
        """Return once a stop was requested."""
        if self._stop_requested is None:
            raise RuntimeError("the runner has not started")
        await self._stop_requested.wait()

    async def stop(self) -> bool:
        """Stop gracefully; True if in-flight work drained within the grace period."""
        if self._stopped or self._ctx is None:
            return True
        self._stopped = True
        ctx = self._ctx
        self.request_stop()
        deadline = time.monotonic() + self.runtime.grace_s
        await self._report({"status": "stopping"})
        ctx.transport.stop_intake()
        drained = await ctx.transport.drain(self.runtime.grace_s)
        if not drained:
            logger.warning("in-flight work did not finish within %.1f s", self.runtime.grace_s)
        try:
            if self._service_started:
                await asyncio.wait_for(self.service.stop(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            drained = False
            logger.warning("the service did not stop within the grace period")
        except Exception:
            logger.exception("the service failed while stopping")
            self._failure = self._failure or "service stop failed"
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
        await self._report(
            {
                "status": "stopped",
                "counters": ctx.counters.snapshot(),
                "health": ctx.health,
                "failure": self._failure,
            }
        )
        try:
            await ctx.transport.disconnect()
        except Exception:
            logger.exception("disconnecting the transport failed")
        if self._metrics is not None:
            self._metrics.stop()
        ctx.close_ledgers()
        logger.info("module %s stopped", self._module, extra={"drained": drained})
        return drained

    async def run(self) -> int:
        """Start, run until a stop is requested, stop; returns the process exit code."""
        try:
            self.prepare()
        except SettingsError as error:
            logger.error("%s", error)
            print(f"{self._module or 'module'}: {error}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
        try:
            await self.start()
        except Exception as error:
            logger.exception("the module failed to start")
            self._failure = f"start failed: {type(error).__name__}: {error}"
            await self.stop()
            return EXIT_FAILED
        await self.wait()
        await self.stop()
        return EXIT_FAILED if self._failure else EXIT_OK

    @property
    def failure(self) -> str | None:
        return self._failure

    def _fail(self, reason: str) -> None:
        logger.error("module failed: %s", reason)
        self._failure = self._failure or reason
        self.request_stop()

    async def _on_desired(self, patch: dict[str, Any]) -> None:
        update = self._settings.apply_desired(patch)
        await self._report({"settings": update.reported})
        if update.changed:
            await self._settings.publish()

    async def _report_loop(self) -> None:
        assert self._ctx is not None
        assert self._report_now is not None
        ctx = self._ctx
        reported_version = -1
        reported_health: dict[str, Any] = {}
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self.runtime.report_interval_s)
            self._report_now.clear()
            patch: dict[str, Any] = {}
            version = ctx.counters.version
            if version != reported_version:
                patch["counters"] = ctx.counters.snapshot()
            if ctx.health != reported_health:
                patch["health"] = dict(ctx.health)
            if patch and await self._report(patch):
                reported_version = version
                reported_health = dict(ctx.health)

    async def _report(self, patch: dict[str, Any]) -> bool:
        assert self._ctx is not None
        try:
            await self._ctx.transport.patch_reported(patch)
        except Exception as error:
            # Reporting is best effort: the hub may be away, and the next report carries the state.
            logger.warning("could not patch reported properties: %s", error)
            return False
        return True


def _default_transport(runtime: RuntimeSettings) -> Transport:
    if runtime.transport == "memory":
        from .transport_memory import InMemoryTransport

        return InMemoryTransport()
    from .transport_edgehub import EdgeHubTransport

    return EdgeHubTransport()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_module(
    service: Service,
    settings_model: type[T],
    *,
    module: str | None = None,
    env_prefix: str = "",
    transport_factory: TransportFactory | None = None,
) -> NoReturn:
    """The whole life of a module process: `python -m <package>` calls this from `__main__`."""
    runner = Runner(
        service, settings_model, module=module, env_prefix=env_prefix, transport_factory=transport_factory
    )
    try:
        runtime = runner.prepare()
    except SettingsError as error:
        configure_logging(module or os.environ.get("IOTEDGE_MODULEID", "module"))
        logger.error("%s", error)
        print(f"{module or 'module'}: {error}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    configure_logging(runner.module or "module", runtime.log_level)
    raise SystemExit(asyncio.run(_serve(runner)))


async def _serve(runner: Runner[Any]) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runner.request_stop)
    try:
        return await runner.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
