"""Prometheus metrics on a per-module port, from a per-module registry (tests can make many)."""

from __future__ import annotations

import re
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server

DEFAULT_PORT = 9600
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """A valid Prometheus metric name made from a free-form one (`rows-in` -> `rows_in`)."""
    cleaned = _INVALID.sub("_", name)
    return cleaned if re.match(r"[a-zA-Z_]", cleaned) else f"_{cleaned}"


class MetricsServer:
    """Serves `registry` at http://host:port/metrics. Port 0 picks a free port; `port` tells which."""

    def __init__(
        self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = DEFAULT_PORT
    ) -> None:
        self.registry = registry
        self.host = host
        self._requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics server is not started")
        return int(self._server.server_port)

    def start(self) -> int:
        if self._server is None:
            self._server, self._thread = start_http_server(self._requested_port, self.host, self.registry)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._thread = None


class Counters:
    """Named monotonic counters a service increments; each is also a Prometheus counter
    `<namespace>_<name>_total`, and the runner reports their values under `reported.counters`."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "edgeloop") -> None:
        self._registry = registry
        self._namespace = metric_name(namespace)
        self._values: dict[str, int | float] = {}
        self._metrics: dict[str, Counter] = {}
        self._lock = threading.Lock()
        self._version = 0

    def inc(self, name: str, amount: int | float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = Counter(
                    f"{self._namespace}_{metric_name(name)}",
                    f"edgeloop counter {name!r}",
                    registry=self._registry,
                )
                self._metrics[name] = metric
                self._values[name] = 0
            metric.inc(amount)
            self._values[name] += amount
            self._version += 1

    def restore(self, totals: object) -> None:
        """Continue from the totals a previous run of the module reported (its twin keeps them), so the
        reported counters stay totals across restarts and crashes. Non-numeric entries are ignored."""
        if not isinstance(totals, dict):
            return
        for name, value in totals.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if isinstance(name, str) and numeric and value > 0 and self.get(name) == 0:
                self.inc(name, value)

    def get(self, name: str) -> int | float:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int | float]:
        with self._lock:
            return dict(self._values)

    @property
    def version(self) -> int:
        """Grows with every increment, so a reporter can tell whether anything changed."""
        with self._lock:
            return self._version
