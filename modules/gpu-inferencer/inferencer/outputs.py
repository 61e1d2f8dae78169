"""What one scored batch produces: the per-row scores Parquet, the score summary and the anomaly list.

The scores file is named by the batch id (`scores/<dataset>/date=YYYY-MM-DD/<batch_id>.parquet`) and
published by rename, so scoring a batch again (after a kill) replaces it whole: readers and the
uploader see the old file or the new one, never a part, and never two.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from .card import SAFE_SEGMENT
from .scoring import ScoredFrame

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SCORES_FIELDS: list[pa.Field[Any]] = [
    pa.field("timestamp", pa.timestamp("us", tz="UTC")),
    pa.field("device", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("is_anomaly", pa.bool_()),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
]
SCORES_SCHEMA = pa.schema(_SCORES_FIELDS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


class OutputPathError(ValueError):
    """A batch whose dataset, id, date or path cannot safely name a file in the cloud share."""


def batch_file(cloud_share: Path, relative: str) -> Path:
    parts = PurePosixPath(relative).parts
    if not relative or PurePosixPath(relative).is_absolute() or any(p in ("..", "") for p in parts):
        raise OutputPathError(f"not a path inside the cloud share: {relative!r}")
    return cloud_share.joinpath(*parts)


def scores_relative_path(scores_dir: str, dataset: str, date: str, batch_id: str) -> str:
    for kind, value in (("dataset", dataset), ("batch id", batch_id)):
        if not SAFE_SEGMENT.match(value):
            raise OutputPathError(f"{kind} {value!r} is not a safe file name")
    if not _DATE.match(date):
        raise OutputPathError(f"date {date!r} is not YYYY-MM-DD")
    return f"{scores_dir}/{dataset}/date={date}/{batch_id}.parquet"


def write_scores(
    cloud_share: Path, relative: str, keys: pa.Table, scored: ScoredFrame, name: str, version: str
) -> int:
    """Atomically write the scored rows (temp + fsync + rename + directory fsync); returns bytes."""
    rows = scored.rows
    count = len(rows)
    # Every row scored, in order (the usual case): the key columns are used as read, not gathered.
    whole = count == keys.num_rows and (count == 0 or (rows[0] == 0 and rows[-1] == count - 1))
    columns: dict[str, Any] = {
        "timestamp": keys.column("timestamp") if whole else keys.column("timestamp").take(rows),
        "device": keys.column("device") if whole else keys.column("device").take(rows),
        "score": pa.array(scored.scores, pa.float64()),
        "is_anomaly": pa.array(scored.anomalous, pa.bool_()),
        "model_name": pa.repeat(pa.scalar(name, pa.string()), count),
        "model_version": pa.repeat(pa.scalar(version, pa.string()), count),
    }
    table = pa.table(columns, schema=SCORES_SCHEMA)
    final = cloud_share / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    # Dot-prefixed `.tmp`: the uploader's scan never takes such names.
    temp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, temp, compression="zstd")
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        temp.replace(final)
    finally:
        temp.unlink(missing_ok=True)
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final.stat().st_size


def summarize(scores: npt.NDArray[np.floating[Any]]) -> dict[str, float | None]:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return {"min": None, "mean": None, **dict.fromkeys(QUANTILES), "max": None}
    quantiles = np.quantile(finite, list(QUANTILES.values()))
    return {
        "min": float(finite.min()),
        "mean": float(finite.mean()),
        **{key: float(value) for key, value in zip(QUANTILES, quantiles, strict=True)},
        "max": float(finite.max()),
    }


@dataclass(frozen=True)
class Anomaly:
    row: int
    score: float


def pick_anomalies(scored: ScoredFrame, cap: int) -> tuple[list[Anomaly], int]:
    """The anomalies to announce (at most `cap`, the highest scores first) and how many were held back."""
    positions = np.flatnonzero(scored.anomalous)
    total = len(positions)
    if total > cap:
        # Highest first: when a flood is capped, the messages that still go are the most severe.
        order = np.argsort(-scored.scores[positions], kind="stable")[:cap]
        positions = positions[np.sort(order)]
    chosen = [Anomaly(int(scored.rows[p]), float(scored.scores[p])) for p in positions]
    return chosen, total - len(chosen)


def severity(score: float, threshold: float) -> str:
    return "high" if score >= 2 * threshold else "medium"


def iso_micros(micros: int) -> str:
    moment = _EPOCH + timedelta(microseconds=int(micros))
    return moment.isoformat().replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
