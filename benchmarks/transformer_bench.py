"""Throughput of transform_file against plain pyarrow doing the least the same job needs.

Baseline: pyarrow.csv.read_csv with the explicit schema, then one zstd Parquet write — no validation,
no quarantine, no dedup, no partitioning, whole file in memory. The ratio is transformer rows/s over
baseline rows/s on the same file in the same run (higher is better; 1.0 would mean the extra work is free).

    python benchmarks/transformer_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modules" / "transformer"))

from transformer import DatasetContract, Limits, transform_file

CONTRACT = DatasetContract.model_validate(
    {
        "columns": [
            {"name": "ts", "type": "timestamp"},
            {"name": "device_id", "type": "string", "nullable": False},
            {"name": "temperature", "type": "float64", "min": -40, "max": 125},
            {"name": "humidity", "type": "float64", "min": 0, "max": 100},
            {"name": "pressure", "type": "float64"},
            {"name": "vibration", "type": "float64"},
            {"name": "status", "type": "string"},
        ],
        "timestamp_column": "ts",
        "device_column": "device_id",
    }
)


def make_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(1)
    stamps = np.datetime64("2024-03-01T00:00:00", "ms") + (np.arange(rows) * 137).astype("timedelta64[ms]")
    table = pa.table(
        {
            "ts": pa.array(stamps.astype(str)),
            "device_id": pa.array(np.char.add("dev-", (np.arange(rows) % 50).astype(str))),
            "temperature": rng.normal(20, 5, rows).round(3),
            "humidity": rng.uniform(0, 100, rows).round(2),
            "pressure": rng.normal(1013, 3, rows).round(2),
            "vibration": rng.exponential(1, rows).round(4),
            "status": pa.array(np.where(rng.random(rows) < 0.99, "ok", "warn")),
        }
    )
    pa_csv.write_csv(table, str(path))


def baseline(source: Path, out: Path) -> float:
    types = {c.name: c.type.arrow_type for c in CONTRACT.columns}
    types["ts"] = pa.timestamp("us")  # read_csv cannot apply a time zone to naive text itself
    started = time.perf_counter()
    table = pa_csv.read_csv(str(source), convert_options=pa_csv.ConvertOptions(column_types=types))
    pq.write_table(table, str(out), compression="zstd")
    return time.perf_counter() - started


def transformer(source: Path, cloud: Path, limits: Limits) -> float:
    started = time.perf_counter()
    result = transform_file(
        source, source_id="bench", dataset="bench", contract=CONTRACT, cloud_share=cloud, limits=limits
    )
    elapsed = time.perf_counter() - started
    if result.rejection is not None or result.rows_written + result.rows_quarantined != result.rows_read:
        raise RuntimeError(f"unexpected result: {result}")
    return elapsed


def run(rows: int = 1_000_000, repeat: int = 3) -> list[dict[str, Any]]:
    """One result (DESIGN.md §8 shape): transformer rows/s against the raw pyarrow baseline, same run."""
    limits = Limits()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        source = work / "input.csv"
        make_csv(source, rows)
        best_base = min(baseline(source, work / f"base-{i}.parquet") for i in range(repeat))
        best_ours = min(transformer(source, work / f"cloud-{i}", limits) for i in range(repeat))
        ours, base = rows / best_ours, rows / best_base
        return [
            {
                "name": "transformer_csv_to_parquet",
                "value": round(ours),
                "unit": "rows/s",
                "baseline_value": round(base),
                "ratio": round(ours / base, 3),
                "params": {
                    "rows": rows,
                    "bytes": source.stat().st_size,
                    "columns": len(CONTRACT.columns),
                    "chunk_bytes": limits.chunk_bytes,
                    "read_block_bytes": limits.read_block_bytes,
                    "baseline": "pyarrow read_csv(explicit types) + write_table(zstd), whole file in memory",
                    "repeat": repeat,
                },
            }
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for result in run(args.rows, args.repeat):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
