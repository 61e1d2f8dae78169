"""gpu-inferencer against raw ONNX Runtime on the same model, measured in one run.

- `inferencer_scorer_rows_per_s`: the inferencer's scoring path (Scorer: validity mask, window assembly,
  float32 staging, session run, threshold) on frames of 1, 64, 512 and 4096 rows, for 1 and 2 intra-op
  threads. Baseline: `session.run` on a ready float32 array of the same size, same model and threads.
- `inferencer_microbatched_rows_per_s`: the same, with as many batches of that size as make 4096 rows
  scored in one call (what micro-batching does with small batches arriving together), against
  `session.run` once per batch.
- `inferencer_pipeline_rows_per_s`: the module end to end (batch-ready in, Parquet read, micro-batched
  scoring, scores Parquet written, messages out) through edgekit's Runner. Baseline: the least the
  same job needs: `pq.read_table`, one `session.run`, `pq.write_table` per file.
- `inferencer_small_batch_latency_ms`: per batch of 10 rows, batch-ready handed over -> scores sent,
  max_wait_ms 0; the median. Baseline: read + run + write of the same file. Ratio is baseline / value.
- `inferencer_endpoint_requests_per_s` and `inferencer_endpoint_p99_ms`: POST /score with 64 rows from
  8 concurrent loopback clients (in this process), bounded by count and time. Baseline: a bare aiohttp
  handler doing only json.loads, session.run and a JSON reply, under the same load.

The model is a dense 16-64-8-64-16 autoencoder (random weights) whose graph ends in the mean squared
reconstruction error, like the default model of ml/.

    python benchmarks/inferencer_bench.py
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modules" / "gpu-inferencer"))

from edgekit import InMemoryTransport, Runner, make_message
from inferencer import (
    FrameToScore,
    InferencerService,
    InferencerSettings,
    RuntimeOptions,
    Scorer,
    load_model,
    read_card,
    read_parquet_frame,
)
from inferencer.runtime import ort

FEATURES = [f"f{i:02d}" for i in range(16)]
BATCH_SIZES = (1, 64, 512, 4096)
THREADS = (1, 2)
MIN_SECONDS = 0.2


def autoencoder(path: Path) -> Path:
    rng = np.random.default_rng(7)
    sizes = [16, 64, 8, 64, 16]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = "features"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = rng.normal(0, 1 / np.sqrt(fan_in), (fan_in, fan_out)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [f"h{layer}"]))
        current = f"h{layer}"
        if layer < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{layer}"]))
            current = f"r{layer}"
    nodes += [
        helper.make_node("Sub", [current, "features"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["score"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "ae",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(data)
    card = {
        "schema": "edgeloop.model-card/1",
        "name": "bench-ae",
        "version": "1",
        "model_file": "model.onnx",
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": {"name": "features", "dtype": "float32"},
        "outputs": {"score": "score"},
        "feature_columns": FEATURES,
        "window": 1,
        "threshold": 3.0,
    }
    (path / "model.json").write_text(json.dumps(card))
    return path


def table_of(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "timestamp": pa.array(
                [start + timedelta(seconds=i) for i in range(rows)], pa.timestamp("us", tz="UTC")
            ),
            "device_id": pa.array([f"dev-{i % 20}" for i in range(rows)]),
            **{name: rng.normal(0, 1, rows) for name in FEATURES},
        }
    )


def timed_rate(work: Any, rows_per_call: int) -> float:
    calls = 0
    started = time.perf_counter()
    while True:
        work()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_SECONDS:
            return calls * rows_per_call / elapsed


def paired_rates(
    ours: Any, base: Any, rows_per_call: int, base_rows_per_call: int | None = None, rounds: int = 5
) -> tuple[float, float]:
    """Best rows/s of each over alternating rounds, so that both see the same machine load."""
    ours()
    base()
    best_ours = best_base = 0.0
    for _ in range(rounds):
        best_ours = max(best_ours, timed_rate(ours, rows_per_call))
        best_base = max(best_base, timed_rate(base, base_rows_per_call or rows_per_call))
    return best_ours, best_base


def raw_session(model_dir: Path, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])


def result(
    name: str, value: float, unit: str, baseline_value: float, ratio: float, **params: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline_value": round(baseline_value, 3),
        "ratio": round(ratio, 3),
        "params": params,
    }


def scorer_vs_raw(model_dir: Path, work: Path) -> list[dict[str, Any]]:
    results = []
    source = work / "scorer.parquet"
    pq.write_table(table_of(max(BATCH_SIZES), 1), source)
    for threads in THREADS:
        model = load_model(
            model_dir,
            read_card(model_dir),
            RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=threads),
        )
        frame, _ = read_parquet_frame(source, model.card)
        session = raw_session(model_dir, threads)
        scorer = Scorer()
        for size in BATCH_SIZES:
            sliced = FrameToScore(
                type(frame)(
                    features=frame.features[:size],
                    device_codes=frame.device_codes[:size],
                    device_names=frame.device_names,
                    timestamps=frame.timestamps[:size],
                    has_timestamp=frame.has_timestamp[:size],
                    valid=frame.valid[:size],
                ),
                "bench",
            )
            ready = np.ascontiguousarray(frame.features[:size], dtype=np.float32)
            ours, base = paired_rates(
                functools.partial(scorer.score, [sliced], model, None),
                functools.partial(session.run, ["score"], {"features": ready}),
                size,
            )
            # What the module does with small batches that arrive together: one run for many of them.
            together = max(1, max(BATCH_SIZES) // size)
            combined, combined_base = paired_rates(
                functools.partial(scorer.score, [sliced] * together, model, None),
                functools.partial(session.run, ["score"], {"features": ready}),
                size * together,
                size,
            )
            results.append(
                result(
                    "inferencer_microbatched_rows_per_s",
                    combined,
                    "rows/s",
                    combined_base,
                    combined / combined_base,
                    batch_rows=size,
                    batches_per_run=together,
                    intra_op_threads=threads,
                    baseline="session.run per batch on a ready float32 array",
                )
            )
            results.append(
                result(
                    "inferencer_scorer_rows_per_s",
                    ours,
                    "rows/s",
                    base,
                    ours / base,
                    batch_rows=size,
                    intra_op_threads=threads,
                    baseline="session.run on a ready float32 array",
                )
            )
    return results


def message_for(batch_id: str, relative: str, rows: int) -> Any:
    body = {
        "batch_id": batch_id,
        "dataset": "bench",
        "path": relative,
        "rows": rows,
        "date": "2026-01-01",
        "source_file_id": "0" * 64,
    }
    return make_message("batch-ready", 1, body, message_id=batch_id)


async def start_module(
    root: Path, model_dir: Path, **env: str
) -> tuple[Runner[InferencerSettings], InMemoryTransport]:
    transport = InMemoryTransport(
        desired={"model": {"name": "bench-ae", "version": "1", "uri": model_dir.as_uri()}}
    )
    service = InferencerService()
    runner = Runner(
        service,
        InferencerSettings,
        env_prefix="INFERENCER_",
        environ={
            "IOTEDGE_MODULEID": "gpu-inferencer",
            "EDGEKIT_METRICS_PORT": "0",
            "EDGEKIT_STATE_DIR": str(root / "state"),
            "EDGEKIT_LOG_LEVEL": "WARNING",
            "INFERENCER_CLOUD_SHARE_DIR": str(root / "cloud"),
            "INFERENCER_MODEL_CACHE_DIR": str(root / "cache"),
            "INFERENCER_PROVIDERS": '["cpu"]',
            **env,
        },
        transport_factory=lambda: transport,
    )
    await runner.start()
    assert service.models is not None
    await service.models.settled()
    return runner, transport


def write_files(cloud: Path, count: int, rows: int, prefix: str) -> list[tuple[str, str]]:
    made = []
    for number in range(count):
        relative = f"bench/date=2026-01-01/{prefix}-{number:04d}.parquet"
        (cloud / relative).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table_of(rows, number), cloud / relative)
        made.append((f"{prefix}-{number:04d}", relative))
    return made


def raw_pipeline(session: Any, cloud: Path, relative: str, out: Path) -> None:
    table = pq.read_table(cloud / relative, columns=["timestamp", "device_id", *FEATURES])
    x = np.column_stack([table.column(c).to_numpy() for c in FEATURES]).astype(np.float32)
    scores = session.run(["score"], {"features": x})[0]
    pq.write_table(
        pa.table(
            {"timestamp": table.column("timestamp"), "device": table.column("device_id"), "score": scores}
        ),
        out,
        compression="zstd",
    )


async def pipeline_vs_raw(model_dir: Path, work: Path) -> list[dict[str, Any]]:
    root = work / "pipeline"
    cloud = root / "cloud"
    files, rows = 12, 50_000
    made = write_files(cloud, files, rows, "big")
    session = raw_session(model_dir, 0)

    def raw_rate() -> float:
        started = time.perf_counter()
        for _, relative in made:
            raw_pipeline(session, cloud, relative, root / "raw.parquet")
        return files * rows / (time.perf_counter() - started)

    base = raw_rate()

    runner, transport = await start_module(root, model_dir, INFERENCER_MAX_WAIT_MS="0")
    try:
        started = time.perf_counter()
        for batch_id, relative in made:
            await transport.deliver("batches", message_for(batch_id, relative, rows))
        await transport.wait_sent("scores", files, within_s=300)
        ours = files * rows / (time.perf_counter() - started)
    finally:
        await runner.stop()
    base = max(base, raw_rate())  # before and after: the better of the two
    results = [
        result(
            "inferencer_pipeline_rows_per_s",
            ours,
            "rows/s",
            base,
            ours / base,
            files=files,
            rows_per_file=rows,
            features=len(FEATURES),
            baseline="pq.read_table + session.run + pq.write_table per file (no fsync, ledger, messages)",
        )
    ]

    small_root = work / "latency"
    small = write_files(small_root / "cloud", 40, 10, "small")
    session_latencies = []
    for _, relative in small:
        started = time.perf_counter()
        raw_pipeline(session, small_root / "cloud", relative, small_root / "raw.parquet")
        session_latencies.append(time.perf_counter() - started)
    runner, transport = await start_module(small_root, model_dir, INFERENCER_MAX_WAIT_MS="0")
    latencies = []
    try:
        for number, (batch_id, relative) in enumerate(small):
            started = time.perf_counter()
            await transport.deliver("batches", message_for(batch_id, relative, 10))
            await transport.wait_sent("scores", number + 1, within_s=30)
            latencies.append(time.perf_counter() - started)
    finally:
        await runner.stop()
    value = statistics.median(latencies) * 1000
    baseline = statistics.median(session_latencies) * 1000
    results.append(
        result(
            "inferencer_small_batch_latency_ms",
            value,
            "ms",
            baseline,
            baseline / value,
            rows_per_batch=10,
            batches=len(small),
            per_row_ms=round(value / 10, 4),
            statistic="median",
            baseline="read + run + write of the same file (no fsync, no ledger, no messages)",
        )
    )
    return results


async def post_load(url: str, payload: bytes, headers: dict[str, str]) -> tuple[float, list[float]]:
    """8 concurrent clients, at most 600 requests or 20 s: (requests/s, latencies in s)."""
    requests, concurrency, time_cap = 600, 8, 20.0
    latencies: list[float] = []
    remaining = requests
    deadline = time.perf_counter() + time_cap
    async with aiohttp.ClientSession() as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                started = time.perf_counter()
                async with client.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url} answered {response.status}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


async def bare_server(model_dir: Path, host: str) -> tuple[web.AppRunner, int]:
    """The least an HTTP scoring endpoint needs: parse, run, answer; no auth, checks or metrics."""
    session = raw_session(model_dir, 0)

    async def score(request: web.Request) -> web.Response:
        rows = json.loads(await request.read())["rows"]
        x = np.array([[row[name] for name in FEATURES] for row in rows], dtype=np.float32)
        scores = await asyncio.to_thread(session.run, ["score"], {"features": x})
        return web.json_response({"scores": scores[0].tolist()})

    app = web.Application()
    app.router.add_post("/score", score)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


async def endpoint_load(model_dir: Path, work: Path) -> list[dict[str, Any]]:
    host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    rng = np.random.default_rng(3)
    rows = [
        {name: float(v) for name, v in zip(FEATURES, rng.normal(size=16), strict=True)} for _ in range(64)
    ]
    payload = json.dumps({"rows": rows}).encode()
    headers = {"x-api-key": "bench-key", "content-type": "application/json"}
    runner, transport = await start_module(
        work / "endpoint",
        model_dir,
        INFERENCER_ENDPOINT_HOST=host,
        INFERENCER_ENDPOINT_PORT="0",
        INFERENCER_API_KEY="bench-key",
    )
    try:
        url = f"http://{host}:{transport.reported['endpoint']['port']}/score"
        rate, latencies = await post_load(url, payload, headers)
    finally:
        await runner.stop()
    bare, port = await bare_server(model_dir, host)
    try:
        raw_rate, raw_latencies = await post_load(f"http://{host}:{port}/score", payload, headers)
    finally:
        await bare.cleanup()
    p99 = float(np.quantile(latencies, 0.99)) * 1000
    raw_p99 = float(np.quantile(raw_latencies, 0.99)) * 1000
    params = {
        "requests": len(latencies),
        "concurrency": 8,
        "rows_per_request": 64,
        "baseline": "a bare aiohttp handler (json.loads, session.run, json reply) under the same client",
    }
    return [
        result("inferencer_endpoint_requests_per_s", rate, "requests/s", raw_rate, rate / raw_rate, **params),
        result("inferencer_endpoint_p99_ms", p99, "ms", raw_p99, raw_p99 / p99, **params),
    ]


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model_dir = autoencoder(work / "model")
        results = scorer_vs_raw(model_dir, work)
        results += asyncio.run(pipeline_vs_raw(model_dir, work))
        results += asyncio.run(endpoint_load(model_dir, work))
    return results


def main() -> None:
    for entry in run():
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
