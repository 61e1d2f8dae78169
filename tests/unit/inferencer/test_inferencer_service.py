"""The module through edgekit's Runner and InMemoryTransport: batches in, scores/anomalies/Parquet out,
models from the twin, restarts, micro-batching and hot swaps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgekit import InMemoryTransport, Ledger, Message, make_message
from tests.unit.inferencer.kit import (
    COLUMNS,
    after_restart,
    batch_message,
    eventually,
    model_ref,
    no_temp_files,
    read_scores,
    reference_scores,
    series,
    sha256_of,
    start_harness,
    write_batch,
    write_model,
)

pytestmark = pytest.mark.timeout(120)


def features_of(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(c).to_numpy() for c in COLUMNS])


async def test_scores_a_batch_end_to_end(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "models" / "v1", bias=0.0, threshold=1.2)
    h = await start_harness(
        tmp_path, {"model": model_ref(model_dir, sha256=sha256_of(model_dir / "model.onnx"))}
    )
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        table = series(200, seed=5)
        await h.transport.deliver("batches", write_batch(h.cloud, table, "batch-a"))
        (scores,) = [m.json() for m in await h.transport.wait_sent("scores", 1)]
        expected = reference_scores(features_of(table))
        anomalous = expected >= np.float32(1.2)
        assert scores["schema"] == "edgeloop.scores/1"
        assert scores["batch_id"] == "batch-a"
        assert scores["model"] == {"name": "sensor-ae", "version": "1"}
        assert scores["rows"] == 200
        assert scores["anomalies"] == int(anomalous.sum()) > 0
        assert scores["anomalies_suppressed"] == 0
        assert scores["path"] == "scores/sensors/date=2026-03-01/batch-a.parquet"
        summary = scores["score_summary"]
        assert summary["max"] == pytest.approx(expected.max(), rel=1e-5)
        assert summary["p95"] == pytest.approx(np.quantile(expected.astype(np.float64), 0.95), rel=1e-4)
        written = read_scores(h.cloud, scores)
        assert written.column_names == [
            "timestamp",
            "device",
            "score",
            "is_anomaly",
            "model_name",
            "model_version",
        ]
        assert written.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
        assert written.column("timestamp").equals(table.column("timestamp"))
        assert written.column("device").to_pylist() == table.column("device_id").to_pylist()
        assert written.column("score").to_numpy() == pytest.approx(expected, rel=1e-5)
        assert written.column("is_anomaly").to_pylist() == anomalous.tolist()
        assert set(written.column("model_version").to_pylist()) == {"1"}
        anomalies = h.bodies("anomalies")
        assert len(anomalies) == int(anomalous.sum())
        first = int(np.flatnonzero(anomalous)[0])
        assert anomalies[0]["device"] == f"dev-{first % 3}"
        assert anomalies[0]["timestamp"] == f"2026-03-01T00:{first // 60:02d}:{first % 60:02d}Z"
        for message, body in zip(h.transport.sent["anomalies"], anomalies, strict=True):
            level = "high" if body["score"] >= 2.4 else "medium"
            assert message.properties["severity"] == body["severity"] == level
            assert body["threshold"] == 1.2
            assert body["model_version"] == "1"
        assert {"medium", "high"} <= {b["severity"] for b in anomalies}
        counters = h.runner.ctx.counters
        assert counters.get("rows_scored") == 200
        assert counters.get("batches_scored") == 1
        assert counters.get("anomalies") == int(anomalous.sum())
        reported = h.transport.reported
        assert reported["model"]["serving"]["version"] == "1"
        assert reported["model"]["serving"]["providers"][-1] == "CPUExecutionProvider"
        assert reported["modelsServed"][0]["name"] == "sensor-ae"
        assert no_temp_files(h.cloud)
        status = await h.transport.call_method("status")
        assert status.status == 200
        assert status.payload["ledger"] == {"pending": 0, "failed": 0, "done": 1}
        assert status.payload["model"]["serving"]["name"] == "sensor-ae"
    finally:
        await h.stop()


async def test_anomaly_messages_are_capped_highest_first(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "m", threshold=0.0)  # every row is anomalous
    h = await start_harness(tmp_path, {"model": model_ref(model_dir)}, INFERENCER_MAX_ANOMALY_MESSAGES="5")
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        table = series(50)
        await h.transport.deliver("batches", write_batch(h.cloud, table, "flood"))
        (scores,) = [m.json() for m in await h.transport.wait_sent("scores", 1)]
        assert scores["anomalies"] == 50
        assert scores["anomalies_sent"] == 5
        assert scores["anomalies_suppressed"] == 45
        sent = sorted(b["score"] for b in h.bodies("anomalies"))
        top = sorted(reference_scores(features_of(table)))[-5:]
        assert sent == pytest.approx(top, rel=1e-5)
    finally:
        await h.stop()


async def test_cpu_fallback_is_reported_when_cuda_is_asked_for(tmp_path: Path) -> None:
    from inferencer import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA is available here")
    model_dir = write_model(tmp_path / "m")
    h = await start_harness(tmp_path, {"model": model_ref(model_dir), "providers": ["cuda"]})
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        serving = h.transport.reported["model"]["serving"]
        assert serving["providers"] == ["CPUExecutionProvider"]
        assert serving["providers_requested"] == ["CUDAExecutionProvider"]
        assert serving["providers_unavailable"] == ["CUDAExecutionProvider"]
        await h.transport.deliver("batches", write_batch(h.cloud, series(10), "b"))
        await h.transport.wait_sent("scores", 1)
    finally:
        await h.stop()


async def test_batches_wait_for_a_model_and_survive_a_restart(tmp_path: Path) -> None:
    transport = InMemoryTransport()
    h = await start_harness(tmp_path, transport=transport)
    await h.transport.deliver("batches", write_batch(h.cloud, series(30, seed=1), "early-1"))
    await h.transport.deliver("batches", write_batch(h.cloud, series(30, seed=2), "early-2"))
    await asyncio.sleep(0.2)
    assert h.transport.sent["scores"] == []
    assert h.transport.reported["health"]["state"] == "waiting"
    await h.stop()
    with Ledger(tmp_path / "state" / "ledger.sqlite", ("pending", "failed", "done")) as ledger:
        assert ledger.counts()["pending"] == 2

    # The same twin document, now with a model: the pending batches are scored after the restart.
    model_dir = write_model(tmp_path / "m")
    transport = after_restart(transport)
    transport.desired["model"] = model_ref(model_dir)
    h2 = await start_harness(tmp_path, transport=transport)
    try:
        bodies = [m.json() for m in await h2.transport.wait_sent("scores", 2)]
        assert [b["batch_id"] for b in bodies] == ["early-1", "early-2"]
        # Redelivered after the restart: nothing is scored again.
        await h2.transport.deliver(
            "batches", batch_message("early-1", "sensors/date=2026-03-01/early-1.parquet", 30)
        )
        await asyncio.sleep(0.2)
        assert len(h2.transport.sent["scores"]) == 2
        assert h2.runner.ctx.counters.get("duplicates") == 1
    finally:
        await h2.stop()


async def test_idempotent_per_batch_id_across_a_restart(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "m")
    transport = InMemoryTransport(desired={"model": model_ref(model_dir)})
    h = await start_harness(tmp_path, transport=transport)
    message = write_batch(h.cloud, series(20), "once")
    await h.service.models.settled()  # type: ignore[union-attr]
    await h.transport.deliver("batches", message)
    await h.transport.deliver("batches", message)
    await h.transport.wait_sent("scores", 1)
    await h.stop()
    first_file = (h.cloud / "scores/sensors/date=2026-03-01/once.parquet").stat().st_mtime_ns

    h2 = await start_harness(tmp_path, transport=after_restart(transport))
    try:
        await h2.service.models.settled()  # type: ignore[union-attr]
        await h2.transport.deliver("batches", message)
        await asyncio.sleep(0.3)
        assert len(transport.sent["scores"]) == 1
        assert h2.transport.sent["scores"] == []
        assert (h.cloud / "scores/sensors/date=2026-03-01/once.parquet").stat().st_mtime_ns == first_file
        assert h2.runner.ctx.counters.get("batches_scored") == 1  # restored total, not a second scoring
    finally:
        await h2.stop()


async def test_interrupted_batch_is_rescored_once_with_the_same_ids(tmp_path: Path) -> None:
    """A kill after the outputs went out but before `done`: the rescore replaces the file and repeats the
    message ids, so consumers see no second batch."""
    model_dir = write_model(tmp_path / "m")
    transport = InMemoryTransport(desired={"model": model_ref(model_dir)})
    h = await start_harness(tmp_path, transport=transport)
    await h.service.models.settled()  # type: ignore[union-attr]
    message = write_batch(h.cloud, series(20), "cut")
    await h.transport.deliver("batches", message)
    await h.transport.wait_sent("scores", 1)
    await h.stop()
    with Ledger(tmp_path / "state" / "ledger.sqlite", ("pending", "failed", "done")) as ledger:
        # Put the ledger back where a kill between the sends and `done` would have left it.
        ledger._db().execute("UPDATE items SET state = 'pending' WHERE key = 'cut'")
    h2 = await start_harness(tmp_path, transport=after_restart(transport))
    try:
        (second,) = await h2.transport.wait_sent("scores", 1)
        (first,) = transport.sent["scores"]
        assert first.message_id == second.message_id
        assert len(list((h.cloud / "scores").rglob("*.parquet"))) == 1
        assert no_temp_files(h.cloud)
    finally:
        await h2.stop()


async def test_small_batches_are_combined_and_max_wait_is_respected(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "m")
    h = await start_harness(
        tmp_path,
        {"model": model_ref(model_dir)},
        INFERENCER_MAX_WAIT_MS="400",
        INFERENCER_MAX_BATCH_ROWS="1000",
    )
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        model = h.service.scorer.model
        assert model is not None
        runs_before = model.runs
        messages = [write_batch(h.cloud, series(10, seed=i), f"small-{i}") for i in range(3)]
        started = time.monotonic()
        for message in messages:
            await h.transport.deliver("batches", message)
        bodies = [m.json() for m in await h.transport.wait_sent("scores", 3)]
        waited = time.monotonic() - started
        assert waited >= 0.4  # nothing left before the oldest had waited max_wait
        assert model.runs == runs_before + 1  # the three batches went through one session run
        assert {b["micro_batch"]["batches"] for b in bodies} == {3}
        assert [b["rows"] for b in bodies] == [10, 10, 10]

        # Enough rows to fill a run: they leave without waiting out a long max_wait.
        await h.transport.set_desired({"max_wait_ms": 600_000})
        big = [write_batch(h.cloud, series(600, seed=10 + i), f"big-{i}") for i in range(2)]
        for message in big:
            await h.transport.deliver("batches", message)
        bodies = [m.json() for m in await h.transport.wait_sent("scores", 5, within_s=20)]
        assert [b["micro_batch"] for b in bodies[3:]] == [{"batches": 2, "rows": 1200}] * 2
    finally:
        await h.stop()


async def test_windowed_model_through_the_service_across_batches(tmp_path: Path) -> None:
    window = 3
    weights = np.linspace(1.0, 3.0, window * len(COLUMNS))
    model_dir = write_model(tmp_path / "m", window=window, weights=weights)
    whole = series(60, devices=2, seed=9)
    h = await start_harness(tmp_path, {"model": model_ref(model_dir)})
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        for number, (start, stop) in enumerate([(0, 3), (3, 30), (30, 60)]):
            await h.transport.deliver(
                "batches", write_batch(h.cloud, whole.slice(start, stop - start), f"w{number}")
            )
        bodies = [m.json() for m in await h.transport.wait_sent("scores", 3)]
        assert sum(b["rows"] for b in bodies) == 60 - 2 * (window - 1)
        assert bodies[0]["rows_awaiting_history"] == 3
        got = pa.concat_tables([read_scores(h.cloud, b) for b in bodies])
        # Reference: each device's rows in time order, windows over the whole series.
        features = features_of(whole)
        devices = whole.column("device_id").to_pylist()
        expected = {}
        for device in set(devices):
            rows = [i for i, d in enumerate(devices) if d == device]
            for end in range(window - 1, len(rows)):
                block = np.concatenate([features[rows[j]] for j in range(end - window + 1, end + 1)])
                expected[(device, rows[end])] = float(reference_scores(block[None, :], weights)[0])
        stamps = whole.column("timestamp").to_pylist()
        got_map = {
            (d, stamps.index(t)): s
            for d, t, s in zip(
                got.column("device").to_pylist(),
                got.column("timestamp").to_pylist(),
                got.column("score").to_pylist(),
                strict=True,
            )
        }
        assert got_map.keys() == expected.keys()
        for key, value in expected.items():
            assert got_map[key] == pytest.approx(value, rel=1e-5)
    finally:
        await h.stop()


async def test_window_history_survives_a_restart(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "m", window=4)
    transport = InMemoryTransport(desired={"model": model_ref(model_dir)})
    whole = series(40, devices=2, seed=4)
    h = await start_harness(tmp_path, transport=transport)
    await h.service.models.settled()  # type: ignore[union-attr]
    await h.transport.deliver("batches", write_batch(h.cloud, whole.slice(0, 20), "first"))
    await transport.wait_sent("scores", 1)
    await h.stop()
    h2 = await start_harness(tmp_path, transport=after_restart(transport))
    try:
        await h2.service.models.settled()  # type: ignore[union-attr]
        await h2.transport.deliver("batches", write_batch(h2.cloud, whole.slice(20, 20), "second"))
        second = (await h2.transport.wait_sent("scores", 1))[0].json()
        assert second["rows"] == 20  # every row had its history from before the restart
        assert second["rows_awaiting_history"] == 0
    finally:
        await h2.stop()


async def test_missing_columns_fail_only_that_batch(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "m")
    h = await start_harness(tmp_path, {"model": model_ref(model_dir)}, INFERENCER_MAX_WAIT_MS="200")
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        await h.transport.deliver(
            "batches", write_batch(h.cloud, series(10).drop_columns(["current"]), "bad")
        )
        await h.transport.deliver("batches", write_batch(h.cloud, series(10), "good"))
        bodies = [m.json() for m in await h.transport.wait_sent("scores", 1)]
        assert [b["batch_id"] for b in bodies] == ["good"]
        await eventually(lambda: "lastBatchError" in h.transport.reported)
        assert "current" in h.transport.reported["lastBatchError"]["reason"]
        assert h.runner.ctx.counters.get("batches_failed") == 1
        await h.transport.deliver("batches", batch_message("../escape", "x", 1))
        await h.transport.deliver("batches", make_message("file-ready", 1, {"x": 1}))
        assert h.runner.ctx.counters.get("bad_messages") == 2
    finally:
        await h.stop()


async def test_refused_models_leave_the_old_one_serving(tmp_path: Path) -> None:
    good = write_model(tmp_path / "good", version="1")
    h = await start_harness(tmp_path, {"model": model_ref(good)})
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        corrupt = write_model(tmp_path / "corrupt", version="2", onnx_bytes=b"\x08garbage")
        wrong_columns = write_model(tmp_path / "wide", version="3", columns=("a", "b", "c"), onnx_bytes=None)
        mismatch = write_model(tmp_path / "sha", version="4")
        cases = [
            (model_ref(corrupt, version="2"), "cannot load"),
            (model_ref(mismatch, version="4", sha256="0" * 64), "the twin says"),
            (model_ref(wrong_columns, version="5"), "asked for"),
        ]
        for number, (ref, reason) in enumerate(cases, start=1):
            await h.transport.set_desired({"model": ref})
            await h.service.models.settled()  # type: ignore[union-attr]
            error = h.transport.reported["model"]["last_error"]
            assert reason in error["reason"]
            assert h.transport.reported["model"]["serving"]["version"] == "1"
            assert h.runner.ctx.counters.get("model_refused") == number
        await h.transport.deliver("batches", write_batch(h.cloud, series(5), "still"))
        (body,) = [m.json() for m in await h.transport.wait_sent("scores", 1)]
        assert body["model"]["version"] == "1"
        assert h.transport.reported["health"]["state"] == "healthy"
    finally:
        await h.stop()


async def test_hot_swap_under_load_scores_every_batch_once_by_one_version(tmp_path: Path) -> None:
    """Batches stream in while the model changes five times; each version has a different bias, so a
    score tells which version made it."""
    versions = [str(v) for v in range(1, 7)]
    for version in versions:
        write_model(tmp_path / "registry" / "sensor-ae" / version, version=version, bias=float(version))
    h = await start_harness(
        tmp_path,
        {"model": {"name": "sensor-ae", "version": "1", "uri": "registry://sensor-ae/1"}},
        INFERENCER_MAX_WAIT_MS="5",
        INFERENCER_MAX_BATCH_ROWS="256",
    )
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        table = series(100, seed=2)
        swapped = asyncio.Event()
        delivered: list[str] = []

        async def feed() -> None:
            while not swapped.is_set() or len(delivered) < 40:
                batch_id = f"load-{len(delivered):04d}"
                await h.transport.deliver("batches", write_batch(h.cloud, table, batch_id))
                delivered.append(batch_id)
                await asyncio.sleep(0.003)

        def scored_by(version: str) -> bool:
            return any(m.json()["model"]["version"] == version for m in h.transport.sent["scores"])

        async def swap() -> None:
            await eventually(lambda: scored_by("1"))
            for version in versions[1:]:
                ref = {"name": "sensor-ae", "version": version, "uri": f"registry://sensor-ae/{version}"}
                await h.transport.set_desired({"model": ref})
                await h.service.models.settled()  # type: ignore[union-attr]
                await eventually(lambda v=version: scored_by(v))  # type: ignore[misc]
            swapped.set()

        await asyncio.gather(feed(), swap())
        batches = len(delivered)
        bodies = [m.json() for m in await h.transport.wait_sent("scores", batches, within_s=60)]
        await asyncio.sleep(0.2)
        assert len(h.transport.sent["scores"]) == batches
        assert sorted(b["batch_id"] for b in bodies) == delivered
        features = features_of(table)
        used = set()
        for body in bodies:
            version = body["model"]["version"]
            used.add(version)
            written = read_scores(h.cloud, body)
            assert set(written.column("model_version").to_pylist()) == {version}
            expected = reference_scores(features, bias=float(version))
            assert written.column("score").to_numpy() == pytest.approx(expected, rel=1e-5)
        assert used == set(versions)  # every swap landed while traffic flowed
        assert h.service.scorer.model.version == "6"  # type: ignore[union-attr]
        assert [e["version"] for e in h.transport.reported["modelsServed"]] == versions
        assert h.runner.ctx.counters.get("model_swaps") == 5
    finally:
        await h.stop()


async def test_model_assigned_message_and_the_twin_taking_over(tmp_path: Path) -> None:
    one = write_model(tmp_path / "one", version="1")
    two = write_model(tmp_path / "two", version="2")
    three = write_model(tmp_path / "three", version="3")
    transport = InMemoryTransport(desired={"model": model_ref(one)})
    h = await start_harness(tmp_path, transport=transport)
    await h.service.models.settled()  # type: ignore[union-attr]
    await transport.deliver("model", make_message("model-assigned", 1, model_ref(two, version="2")))
    await h.service.models.settled()  # type: ignore[union-attr]
    assert transport.reported["model"]["serving"]["version"] == "2"
    assert transport.reported["model"]["serving"]["source"] == "message"
    await h.stop()
    transport = after_restart(transport)
    h2 = await start_harness(tmp_path, transport=transport)  # the assignment outlives a restart
    await h2.service.models.settled()  # type: ignore[union-attr]
    assert h2.service.scorer.model.version == "2"  # type: ignore[union-attr]
    await transport.set_desired({"model": model_ref(three, version="3")})
    await h2.service.models.settled()  # type: ignore[union-attr]
    assert transport.reported["model"]["serving"]["version"] == "3"
    await h2.stop()
    transport = after_restart(transport)
    h3 = await start_harness(tmp_path, transport=transport)
    try:
        await h3.service.models.settled()  # type: ignore[union-attr]
        assert h3.service.scorer.model.version == "3"  # type: ignore[union-attr]
        # Each start serves anew, so a restart shows as a new entry with its own `since`.
        assert [e["version"] for e in transport.reported["modelsServed"]] == ["1", "2", "2", "3", "3"]
    finally:
        await h3.stop()


async def test_scores_file_replaced_atomically_on_rescore(tmp_path: Path) -> None:
    from inferencer.outputs import write_scores
    from inferencer.scoring import ScoredFrame

    keys = pa.table(
        {"timestamp": pa.array([0, 1], pa.timestamp("us", tz="UTC")), "device": pa.array(["a", "b"])}
    )
    scored = ScoredFrame(np.array([0, 1]), np.array([0.5, 2.0]), np.array([False, True]), 0, 0)
    relative = "scores/d/date=2026-01-01/b.parquet"
    write_scores(tmp_path, relative, keys, scored, "m", "1")
    write_scores(tmp_path, relative, keys, scored, "m", "2")
    table = pq.read_table(tmp_path / relative)
    assert table.column("model_version").to_pylist() == ["2", "2"]
    assert [p.name for p in (tmp_path / relative).parent.iterdir()] == ["b.parquet"]


async def test_a_send_failure_retries_the_group_without_advancing_history(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "m", window=2)
    h = await start_harness(tmp_path, {"model": model_ref(model_dir)})
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        real_send = h.transport.send
        failures: list[str] = []

        async def flaky(output: str, message: Message) -> None:
            if output == "scores" and not failures:
                failures.append(output)
                raise ConnectionError("hub away")
            await real_send(output, message)

        h.transport.send = flaky  # type: ignore[method-assign]
        await h.transport.deliver("batches", write_batch(h.cloud, series(10, devices=1), "retry"))
        (body,) = [m.json() for m in await h.transport.wait_sent("scores", 1, within_s=20)]
        assert failures == ["scores"]
        # Scored again from the same history: the first attempt's rows were not kept as history.
        assert body["rows"] == 9
        assert body["rows_awaiting_history"] == 1
        assert h.runner.ctx.counters.get("batches_scored") == 1
    finally:
        await h.stop()
