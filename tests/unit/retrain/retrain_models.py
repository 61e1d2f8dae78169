"""Tiny models and data for retrain-trigger's tests, built with the `onnx` helper API (no torch).

The model scores a row x as mean(((x - offset) * scale) ** 2), so on standard-normal features its mean
score is scale**2 and a larger scale flags more rows. `python retrain_models.py train ...` and
`python retrain_models.py register ...` stand in for `python -m ml train` and `python -m ml registry
register` in the backend and service tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper

FEATURES = ("temperature", "vibration")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def build_onnx(path: Path, features: int, *, scale: float = 1.0, offset: float = 0.0) -> None:
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    inits = [
        helper.make_tensor("offset", TensorProto.FLOAT, [features], [offset] * features),
        helper.make_tensor("scale", TensorProto.FLOAT, [features], [scale] * features),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "offset"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "scaled"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["score"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "tiny-ae", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def histogram(values: np.ndarray[Any, Any], edges: Sequence[float] | np.ndarray[Any, Any]) -> dict[str, Any]:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=np.asarray(edges))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def write_model_dir(
    directory: Path,
    *,
    name: str = "sensor-ae",
    version: str = "1",
    scale: float = 1.0,
    window: int = 1,
    threshold: float | None = None,
    training_max: datetime | None = EPOCH,
    features: Sequence[str] = FEATURES,
    seed: int = 0,
) -> dict[str, Any]:
    """A model folder whose card carries baselines computed on standard-normal training data."""
    directory.mkdir(parents=True, exist_ok=True)
    build_onnx(directory / "model.onnx", len(features) * window, scale=scale)
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((20_000, len(features)))
    scores = (train * scale) ** 2
    row_scores = scores.mean(axis=1)
    chosen = float(np.quantile(row_scores, 0.99)) if threshold is None else threshold
    score_edges = np.linspace(0.0, float(np.quantile(row_scores, 0.999)), 21)
    card = {
        "schema": "edgeloop.model-card/1",
        "name": name,
        "version": version,
        "created": "2026-01-01T00:00:00Z",
        "task": "anomaly-detection",
        "model_file": "model.onnx",
        "model_sha256": hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest(),
        "inputs": {"name": "features", "dtype": "float32"},
        "outputs": {"score": "score"},
        "feature_columns": list(features),
        "window": window,
        "device_column": "device_id",
        "timestamp_column": "timestamp",
        "threshold": chosen,
        "threshold_quantile": 0.99,
        "score_baseline": {
            "count": int(row_scores.size),
            "mean": float(row_scores.mean()),
            "std": float(row_scores.std()),
            "histogram": histogram(row_scores, score_edges),
        },
        "feature_baseline": {
            column: {
                "mean": 0.0,
                "std": 1.0,
                "histogram": histogram(train[:, i], np.linspace(-4.0, 4.0, 21)),
            }
            for i, column in enumerate(features)
        },
        "training_data": {
            "sha256": "0" * 64,
            "rows": int(train.shape[0]),
            "files": 1,
            "time_range": {
                "min": "2025-12-01T00:00:00Z",
                "max": None if training_max is None else training_max.isoformat().replace("+00:00", "Z"),
            },
        },
        "metrics": {},
        "framework": {"trainer": "tests", "onnx_opset": 17},
        "lineage": {"job_id": None, "parent_version": None, "registered_by": "tests"},
    }
    (directory / "model.json").write_text(json.dumps(card, indent=2))
    return card


def register(model_dir: Path, root: Path, name: str) -> dict[str, Any]:
    """What the local registry does, in brief: copy into <root>/<name>/<next>/ with the card renamed."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    version = str(max(versions, default=0) + 1)
    target = folder / version
    shutil.copytree(model_dir, target)
    card = json.loads((target / "model.json").read_text())
    card.update(name=name, version=version)
    (target / "model.json").write_text(json.dumps(card))
    return {"name": name, "version": version, "uri": f"registry://{name}/{version}", "path": str(target)}


def write_rows(
    path: Path,
    values: np.ndarray[Any, Any],
    *,
    start: datetime = EPOCH + timedelta(days=1),
    devices: Sequence[str] = ("d1",),
    features: Sequence[str] = FEATURES,
    step_s: float = 1.0,
) -> dict[str, str]:
    """Clean rows as the transformer writes them; returns the batch's time range (ISO)."""
    n = values.shape[0]
    stamps = [start + timedelta(seconds=i * step_s) for i in range(n)]
    columns: dict[str, Any] = {
        "timestamp": pa.array(stamps, type=pa.timestamp("us", tz="UTC")),
        "device_id": pa.array([devices[i % len(devices)] for i in range(n)]),
    }
    for i, column in enumerate(features):
        columns[column] = pa.array(values[:, i].astype(np.float64))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return {"min": _iso(stamps[0]), "max": _iso(stamps[-1])}


def write_scores(
    path: Path, scores: np.ndarray[Any, Any], *, start: datetime, name: str, version: str
) -> None:
    n = scores.shape[0]
    table = pa.table(
        {
            "timestamp": pa.array(
                [start + timedelta(seconds=i) for i in range(n)], type=pa.timestamp("us", tz="UTC")
            ),
            "device": pa.array(["d1"] * n),
            "score": pa.array(scores.astype(np.float64)),
            "is_anomaly": pa.array([False] * n),
            "model_name": pa.array([name] * n),
            "model_version": pa.array([version] * n),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--name", required=True)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--scale", type=float, default=1.0)
    train.add_argument("--threshold", type=float, default=None)
    register_cmd = commands.add_parser("register")
    register_cmd.add_argument("model_dir", type=Path)
    register_cmd.add_argument("--root", type=Path, required=True)
    register_cmd.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    if args.command == "train":
        print(f"training on {args.data}", flush=True)
        write_model_dir(
            args.out, name=args.name, version="1", scale=args.scale, threshold=args.threshold, seed=args.seed
        )
        print(f"wrote {args.out}", flush=True)
        return 0
    print("registering", file=sys.stderr)
    print(json.dumps(register(args.model_dir, args.root, args.name), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
