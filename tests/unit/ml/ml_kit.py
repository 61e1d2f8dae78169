"""Synthetic sensor data for the ml tests: four features driven by one hidden load signal per device, so
normal rows lie near a one-dimensional manifold an autoencoder can learn, and anomalies leave it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from ml.train import TrainResult

REPO_ROOT = Path(__file__).resolve().parents[3]

FEATURES = ("temperature", "vibration", "pressure", "current")
START = datetime(2026, 11, 1, tzinfo=UTC)
# The shared trained model's data: small enough to train in about a second, large enough for a 0.995
# quantile to mean something.
DEVICES = 4
STEPS = 2000


@dataclass(frozen=True)
class Trained:
    data: Path
    result: TrainResult

    @property
    def model_dir(self) -> Path:
        return self.result.model_dir


def sensor_table(
    *,
    devices: int = 4,
    steps: int = 1000,
    seed: int = 0,
    anomaly_rate: float = 0.0,
    label: bool = False,
    start_step: int = 0,
) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows_device: list[str] = []
    rows_time: list[int] = []
    columns: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in FEATURES}
    labels: list[npt.NDArray[np.bool_]] = []
    for d in range(devices):
        t = np.arange(start_step, start_step + steps)
        load = 0.5 + 0.4 * np.sin(2 * np.pi * t / 200.0 + d) + 0.05 * rng.standard_normal(steps)
        values = {
            "temperature": 55.0 + 15.0 * load + 0.3 * rng.standard_normal(steps),
            "vibration": 0.5 + 0.8 * load + 0.02 * rng.standard_normal(steps),
            "pressure": 100.0 + 4.0 * load + 0.1 * rng.standard_normal(steps),
            "current": 10.0 + 5.0 * load + 0.1 * rng.standard_normal(steps),
        }
        anomalous = rng.random(steps) < anomaly_rate
        # Anomalies break the relation between features: vibration far off the load it should follow.
        values["vibration"] = np.where(anomalous, values["vibration"] + 2.5, values["vibration"])
        values["temperature"] = np.where(anomalous, values["temperature"] - 12.0, values["temperature"])
        for name in FEATURES:
            columns[name].append(values[name])
        labels.append(anomalous)
        rows_device += [f"press-{d:02d}"] * steps
        rows_time += list((START.timestamp() + t * 60).astype(np.int64) * 1_000_000)
    arrays: dict[str, pa.Array[Any]] = {
        "timestamp": pa.array(rows_time, type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "device_id": pa.array(rows_device, type=pa.string()),
    }
    for name in FEATURES:
        arrays[name] = pa.array(np.concatenate(columns[name]), type=pa.float64())
    if label:
        arrays["is_anomaly"] = pa.array(np.concatenate(labels), type=pa.bool_())
    return pa.table(arrays)


def write_cloud_share(root: Path, table: pa.Table, *, dataset: str = "sensors", parts: int = 3) -> Path:
    """The transformer's layout: <dataset>/date=YYYY-MM-DD/<id>-<part>.parquet."""
    folder = root / dataset / "date=2026-11-01"
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for part in range(parts):
        chunk = table.slice(bounds[part], bounds[part + 1] - bounds[part])
        pq.write_table(chunk, folder / f"{'ab' * 32}-{part:05d}.parquet")
    return root
