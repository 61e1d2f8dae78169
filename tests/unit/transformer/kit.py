"""Helpers shared by the transformer's tests (conftest.py puts the module's folder on sys.path)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from transformer import DatasetContract, Limits, TransformResult, transform_file

MODULE_ROOT = Path(__file__).resolve().parents[3] / "modules" / "transformer"

SENSOR_CONTRACT: dict[str, Any] = {
    "columns": [
        {"name": "ts", "type": "timestamp"},
        {"name": "device_id", "type": "string", "nullable": False},
        {"name": "temperature", "type": "float64", "min": -40, "max": 125},
        {"name": "count", "type": "int64"},
    ],
    "timestamp_column": "ts",
    "device_column": "device_id",
}

# Small enough that a few thousand rows span many chunks; valid per Limits' own arithmetic.
SMALL_LIMITS = Limits(
    max_memory_bytes=64 << 20, read_block_bytes=8 << 10, chunk_bytes=16 << 10, max_line_bytes=4 << 10
)


def contract(**changes: Any) -> DatasetContract:
    document = {**SENSOR_CONTRACT, **changes}
    return DatasetContract.model_validate(document)


def write_text(path: Path, text: str, *, compress: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def transform(
    source: Path,
    cloud: Path,
    dataset_contract: DatasetContract | None,
    *,
    source_id: str = "f" * 64,
    limits: Limits = SMALL_LIMITS,
    **kwargs: Any,
) -> TransformResult:
    return transform_file(
        source,
        source_id=source_id,
        dataset="sensors",
        contract=dataset_contract,
        cloud_share=cloud,
        limits=limits,
        **kwargs,
    )


def read_output(cloud: Path, result: TransformResult) -> pa.Table:
    tables = [pq.read_table(cloud / batch.path) for batch in result.batches]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_quarantine(cloud: Path, result: TransformResult) -> list[dict[str, Any]]:
    assert result.quarantine is not None
    return pq.read_table(cloud / result.quarantine.path).to_pylist()


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
