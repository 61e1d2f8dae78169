import io
import json
import logging
import random
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from edgekit import Counters, JsonFormatter, MetricsServer, configure_logging
from edgekit.metrics import metric_name


def fetch(url: str) -> str:
    assert url.startswith("http://127.")
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http only
        return str(response.read().decode())


def test_metrics_server_serves_counters_on_a_free_port():
    registry = CollectorRegistry()
    counters = Counters(registry)
    counters.inc("files")
    counters.inc("rows-in", 41)
    counters.inc("rows-in")
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    server = MetricsServer(registry, host=host, port=0)
    port = server.start()
    try:
        assert port > 0
        assert server.port == port
        body = fetch(f"http://{host}:{port}/metrics")
        assert "edgeloop_files_total 1.0" in body
        assert "edgeloop_rows_in_total 42.0" in body
    finally:
        server.stop()
    with pytest.raises(RuntimeError):
        _ = server.port


def test_registries_are_independent():
    first, second = Counters(CollectorRegistry()), Counters(CollectorRegistry())
    first.inc("files")
    second.inc("files", 2)
    assert (first.get("files"), second.get("files")) == (1, 2)


def test_counters_snapshot_version_and_validation():
    counters = Counters(CollectorRegistry())
    assert counters.snapshot() == {}
    before = counters.version
    counters.inc("a", 2.5)
    assert counters.version > before
    assert counters.snapshot() == {"a": 2.5}
    assert counters.get("missing") == 0
    with pytest.raises(ValueError, match="only go up"):
        counters.inc("a", -1)


def test_metric_names_are_sanitised():
    assert metric_name("rows-in.total") == "rows_in_total"
    assert metric_name("9lives") == "_9lives"


def test_json_lines_with_extras_and_exceptions():
    stream = io.StringIO()
    configure_logging("transformer", "DEBUG", stream=stream)
    log = logging.getLogger("edgeloop.test")
    try:
        log.info("read %d rows", 7, extra={"file_id": "abc", "size": 3})
        try:
            raise ValueError("Größe")
        except ValueError:
            log.exception("failed")
    finally:
        configure_logging("x", "WARNING", stream=io.StringIO())
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "read 7 rows"
    assert (first["level"], first["module"], first["logger"]) == ("INFO", "transformer", "edgeloop.test")
    assert (first["file_id"], first["size"]) == ("abc", 3)
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert "ValueError: Größe" in second["exc"]


def test_formatter_survives_unserialisable_extras():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.thing = object()
    assert json.loads(JsonFormatter("m").format(record))["thing"].startswith("<object")


def test_counters_continue_from_reported_totals():
    counters = Counters(CollectorRegistry())
    counters.inc("rows", 5)
    counters.restore({"files": 3, "rows": 100, "label": "x", "flag": True, "negative": -2})
    # Restored where nothing was counted yet; a counter this run already moved keeps its own value.
    assert counters.snapshot() == {"files": 3, "rows": 5}
    counters.inc("files")
    assert counters.get("files") == 4
    counters.restore(None)
    assert counters.get("files") == 4


async def test_runner_restores_counters_from_the_twin(tmp_path):
    from pydantic import BaseModel, ConfigDict

    from edgekit import InMemoryTransport, Runner

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Idle:
        async def start(self, ctx):
            ctx.counters.inc("files")

        async def stop(self):
            return None

    transport = InMemoryTransport()
    transport.reported = {"counters": {"files": 41, "rows": 7}}  # what the hub kept from the last run
    environ = {"IOTEDGE_MODULEID": "idle", "EDGEKIT_STATE_DIR": str(tmp_path), "EDGEKIT_METRICS_PORT": "0"}
    runner = Runner(Idle(), Settings, environ=environ, transport_factory=lambda: transport)
    await runner.start()
    try:
        assert runner.ctx.counters.snapshot() == {"files": 42, "rows": 7}
    finally:
        await runner.stop()
