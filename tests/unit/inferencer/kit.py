"""Test material for the inferencer: tiny ONNX models built with the onnx helper API (no torch, no
ml/), their cards, batch Parquet files, batch-ready messages, and a Runner harness."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

from edgekit import InMemoryTransport, Message, Runner, make_message
from inferencer import InferencerService, InferencerSettings

COLUMNS = ("temperature", "vibration", "pressure", "current")
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def model_bytes(
    width: int,
    weights: Sequence[float] | np.ndarray | None = None,
    bias: float | Sequence[float] = 0.0,
    *,
    input_name: str = "features",
    output_name: str = "score",
    declared_width: int | str | None = None,
    opset: int = 17,
) -> bytes:
    """score = ReduceMean((x * w - b)^2, axis 1): one float per row, sensitive to column order."""
    w = np.asarray(weights if weights is not None else np.ones(width), dtype=np.float32)
    b = np.broadcast_to(np.asarray(bias, dtype=np.float32), (width,)).copy()
    dim: int | str = "F" if declared_width is None else declared_width
    graph = helper.make_graph(
        [
            helper.make_node("Mul", [input_name, "w"], ["xw"]),
            helper.make_node("Sub", ["xw", "b"], ["d"]),
            helper.make_node("Mul", ["d", "d"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], [output_name], axes=[1], keepdims=0),
        ],
        "score",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch"])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def reference_scores(
    features: np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    bias: float | Sequence[float] = 0.0,
) -> np.ndarray:
    x = features.astype(np.float32)
    w = np.asarray(weights if weights is not None else np.ones(x.shape[1]), dtype=np.float32)
    b = np.broadcast_to(np.asarray(bias, dtype=np.float32), (x.shape[1],))
    scores: np.ndarray = np.mean((x * w - b) ** 2, axis=1)
    return scores


def write_model(
    folder: Path,
    *,
    name: str = "sensor-ae",
    version: str = "1",
    columns: Sequence[str] = COLUMNS,
    window: int = 1,
    weights: Sequence[float] | np.ndarray | None = None,
    bias: float | Sequence[float] = 0.0,
    threshold: float = 1.0,
    onnx_bytes: bytes | None = None,
    card: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> Path:
    """A model directory (model.onnx + model.json) following .notes/MODEL_CARD.md."""
    folder.mkdir(parents=True, exist_ok=True)
    data = (
        onnx_bytes
        if onnx_bytes is not None
        else model_bytes(len(columns) * window, weights, bias, **model_kwargs)
    )
    (folder / "model.onnx").write_bytes(data)
    document = {
        "schema": "edgeloop.model-card/1",
        "name": name,
        "version": version,
        "created": "2026-11-23T02:00:00Z",
        "task": "anomaly-detection",
        "model_file": "model.onnx",
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": {"name": model_kwargs.get("input_name", "features"), "dtype": "float32"},
        "outputs": {"score": model_kwargs.get("output_name", "score")},
        "feature_columns": list(columns),
        "window": window,
        "device_column": "device_id",
        "timestamp_column": "timestamp",
        "threshold": threshold,
        "future_key": {"kept": True},
        **(card or {}),
    }
    (folder / "model.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def series(rows: int, devices: int = 3, seed: int = 0, start: datetime = T0) -> pa.Table:
    """Rows of several devices, interleaved, one per second, with float64 features."""
    rng = np.random.default_rng(seed)
    stamps = [start + timedelta(seconds=i) for i in range(rows)]
    return pa.table(
        {
            "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "device_id": pa.array([f"dev-{i % devices}" for i in range(rows)], pa.string()),
            **{c: pa.array(rng.normal(0.0, 1.0, rows), pa.float64()) for c in COLUMNS},
            "label": pa.array(["x"] * rows, pa.string()),
        }
    )


def write_batch(
    cloud: Path, table: pa.Table, batch_id: str, *, dataset: str = "sensors", date: str = "2026-03-01"
) -> Message:
    relative = f"{dataset}/date={date}/{batch_id}.parquet"
    path = cloud / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return batch_message(batch_id, relative, table.num_rows, dataset=dataset, date=date)


def batch_message(
    batch_id: str, relative: str, rows: int, *, dataset: str = "sensors", date: str = "2026-03-01"
) -> Message:
    body = {
        "batch_id": batch_id,
        "source_file_id": "f" * 64,
        "source_path": f"{dataset}/x.csv",
        "dataset": dataset,
        "path": relative,
        "rows": rows,
        "date": date,
        "schema_fingerprint": "0" * 16,
        "time_range": {"min": "2026-03-01T00:00:00Z", "max": "2026-03-01T01:00:00Z"},
        "rows_quarantined": 0,
        "label_columns": [],
    }
    return make_message("batch-ready", 1, body, {"dataset": dataset}, message_id=batch_id)


def model_ref(
    folder: Path, *, name: str = "sensor-ae", version: str = "1", sha256: str | None = None
) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "version": version, "uri": folder.resolve().as_uri()}
    if sha256 is not None:
        ref["sha256"] = sha256
    return ref


@dataclass
class Harness:
    runner: Runner[InferencerSettings]
    transport: InMemoryTransport
    service: InferencerService
    cloud: Path

    def bodies(self, output: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.transport.sent[output]]

    async def stop(self) -> None:
        await self.runner.stop()


def environ(root: Path, **extra: str) -> dict[str, str]:
    return {
        "IOTEDGE_MODULEID": "gpu-inferencer",
        "EDGEKIT_METRICS_PORT": "0",
        "EDGEKIT_STATE_DIR": str(root / "state"),
        "EDGEKIT_REPORT_INTERVAL_S": "0.05",
        "EDGEKIT_GRACE_S": "10",
        "INFERENCER_CLOUD_SHARE_DIR": str(root / "cloud"),
        "INFERENCER_MODEL_CACHE_DIR": str(root / "cache"),
        "INFERENCER_REGISTRY_ROOT": str(root / "registry"),
        "INFERENCER_ENDPOINT_ENABLED": "false",
        "INFERENCER_MAX_WAIT_MS": "0",
        **extra,
    }


async def start_harness(
    root: Path,
    desired: dict[str, Any] | None = None,
    *,
    transport: InMemoryTransport | None = None,
    **extra: str,
) -> Harness:
    transport = transport or InMemoryTransport(desired=desired)
    service = InferencerService()
    runner = Runner(
        service,
        InferencerSettings,
        env_prefix="INFERENCER_",
        environ=environ(root, **extra),
        transport_factory=lambda: transport,
    )
    await runner.start()
    return Harness(runner, transport, service, root / "cloud")


def after_restart(old: InMemoryTransport) -> InMemoryTransport:
    """A new transport for a restarted module: the twin (desired and reported) is the hub's and stays;
    what was sent before is in `old.sent`."""
    new = InMemoryTransport()
    new.desired = dict(old.desired)
    new.reported = dict(old.reported)
    return new


async def eventually(predicate: Callable[[], bool], within_s: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), within_s)


def read_scores(cloud: Path, body: dict[str, Any]) -> pa.Table:
    return pq.read_table(cloud / body["path"])


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".partial")]
