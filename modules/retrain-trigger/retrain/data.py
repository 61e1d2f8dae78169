"""Reading the cloud share's Parquet (clean rows from the transformer, per-row scores from the inferencer)
into plain numpy columns: event time as epoch seconds, the device, float features."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FloatArray = npt.NDArray[np.float64]


class DataError(ValueError):
    """A file that is missing, unreadable or lacks a column the model needs."""


@dataclass(frozen=True)
class Frame:
    """Rows as columns: `times` (epoch seconds), `devices` (str), and float `columns` by name."""

    times: FloatArray
    devices: npt.NDArray[np.str_]
    columns: dict[str, FloatArray]

    def __len__(self) -> int:
        return int(self.times.size)

    @classmethod
    def empty(cls, names: Sequence[str]) -> Frame:
        return cls(
            np.empty(0, dtype=np.float64),
            np.empty(0, dtype=np.str_),
            {name: np.empty(0, dtype=np.float64) for name in names},
        )

    def matrix(self, names: Sequence[str]) -> FloatArray:
        """[rows, len(names)] float64; `DataError` names a column that is absent."""
        missing = [name for name in names if name not in self.columns]
        if missing:
            raise DataError(f"the recent data has no column {', '.join(map(repr, missing))}")
        if not names:
            return np.empty((len(self), 0), dtype=np.float64)
        return np.column_stack([self.columns[name] for name in names])

    def newest(self, rows: int) -> Frame:
        """The `rows` latest rows by event time, in time order."""
        order = np.argsort(self.times, kind="stable")[-rows:] if rows > 0 else np.empty(0, dtype=np.intp)
        return Frame(
            self.times[order], self.devices[order], {name: v[order] for name, v in self.columns.items()}
        )


def cloud_path(cloud_share: Path, relative: str) -> Path:
    """A path from a message, inside the cloud share (absolute paths and `..` refused)."""
    parts = PurePosixPath(relative).parts
    if not relative or PurePosixPath(relative).is_absolute() or any(p in ("..", "") for p in parts):
        raise DataError(f"not a path inside the cloud share: {relative!r}")
    return cloud_share.joinpath(*parts)


def read_frame(
    path: Path,
    feature_columns: Sequence[str],
    *,
    timestamp_column: str,
    device_column: str | None,
) -> Frame:
    """Read only the columns named. Without the device column (or with None) every row is one device."""
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError as error:
        raise DataError(f"{path} does not exist") from error
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path} is not readable Parquet: {error}") from error
    present = set(schema.names)
    missing = [c for c in (*feature_columns, timestamp_column) if c not in present]
    if missing:
        raise DataError(f"{path.name} has no column {', '.join(map(repr, missing))}")
    wanted = [*dict.fromkeys([timestamp_column, *feature_columns])]
    has_device = device_column is not None and device_column in present
    if has_device and device_column not in wanted:
        wanted.append(str(device_column))
    try:
        table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path} is not readable Parquet: {error}") from error
    devices = (
        np.asarray(
            table[str(device_column)]
            .cast(pa.string())
            .fill_null(pa.scalar(""))
            .to_numpy(zero_copy_only=False)
        )
        if has_device
        else np.full(table.num_rows, "", dtype=np.str_)
    )
    return Frame(
        epoch_seconds(table[timestamp_column]),
        devices.astype(np.str_),
        {name: _floats(table[name]) for name in feature_columns},
    )


def concat(frames: Iterable[Frame], names: Sequence[str]) -> Frame:
    parts = list(frames)
    if not parts:
        return Frame.empty(names)
    return Frame(
        np.concatenate([f.times for f in parts]),
        np.concatenate([f.devices for f in parts]).astype(np.str_),
        {name: np.concatenate([f.columns[name] for f in parts]) for name in names},
    )


def epoch_seconds(column: pa.ChunkedArray[Any]) -> FloatArray:
    """Event times as float epoch seconds, from timestamps of any unit, numbers (seconds) or ISO text."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        micros = column.cast(pa.timestamp("us", tz=kind.tz)).cast(pa.int64())
        return np.asarray(micros.to_numpy(zero_copy_only=False), dtype=np.float64) / 1e6
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _floats(column)
    try:
        parsed = pc.cast(column, pa.timestamp("us", tz="UTC"))
    except pa.ArrowException as error:
        raise DataError(f"timestamps of type {kind} cannot be read: {error}") from error
    return epoch_seconds(parsed)


def _floats(column: pa.ChunkedArray[Any]) -> FloatArray:
    try:
        values = column.cast(pa.float64())
    except pa.ArrowException as error:
        raise DataError(f"a column of type {column.type} is not numeric") from error
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
