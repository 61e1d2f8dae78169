"""Rows to score, as columns: from a batch's Parquet file or from the JSON rows of a `/score` request.

A `Frame` holds the card's feature columns in card order, already in the model's input dtype (NaN
for null; converting once here lets a wholly valid frame go to the model without a copy), the device
of each row (codes into `device_names`, -1 for none) and its timestamp (microseconds since the
epoch). Rows
that cannot be scored (a null or non-finite feature; for windowed models no device or timestamp) are
marked invalid rather than dropped, so every result maps back to the row it came from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .card import ModelCard

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class FrameError(ValueError):
    """Data the model cannot take: a missing or non-numeric column (the message names it)."""


@dataclass(frozen=True)
class Frame:
    features: FloatArray
    device_codes: IntArray
    device_names: tuple[str, ...]
    timestamps: IntArray
    has_timestamp: BoolArray
    valid: BoolArray
    invalid: int = 0
    """Rows that cannot be scored (`valid` false); set by the constructors below."""

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def all_valid(self) -> bool:
        return self.invalid == 0

    def device_of(self, row: int) -> str | None:
        """The row's device; frames carry devices only for windowed models (None otherwise)."""
        code = int(self.device_codes[row])
        return None if code < 0 else self.device_names[code]


_NUMERIC_TYPES = frozenset({int, float})
_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float64": np.float64}


def _frame(
    features: FloatArray,
    codes: IntArray,
    names: tuple[str, ...],
    stamps: IntArray,
    has_ts: BoolArray,
    windowed: bool,
) -> Frame:
    valid: BoolArray = np.asarray(np.isfinite(features).all(axis=1), dtype=np.bool_)
    if windowed:
        valid &= (codes >= 0) & has_ts
    return Frame(features, codes, names, stamps, has_ts, valid, int(len(valid) - np.count_nonzero(valid)))


def read_parquet_frame(path: Path, card: ModelCard) -> tuple[Frame, pa.Table]:
    """Only the columns the card names (plus device and timestamp) are read. Returns the frame and the
    rows' `timestamp` (us, UTC) and `device` columns, for the scores file and anomaly messages.

    Devices and timestamps enter the frame only for windowed models, the only ones that order by them."""
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError as error:
        raise FrameError(f"{path} does not exist") from error
    except (OSError, pa.ArrowException) as error:
        raise FrameError(f"{path} is not readable Parquet: {error}") from error
    with parquet:
        schema = parquet.schema_arrow
        names = set(schema.names)
        missing = [c for c in card.feature_columns if c not in names]
        if missing:
            raise FrameError(f"missing columns {missing} that model {card.name}/{card.version} needs")
        windowed = card.window > 1
        extra = [c for c in (card.device_column, card.timestamp_column) if c in names]
        if windowed and len(extra) < 2:
            absent = [c for c in (card.device_column, card.timestamp_column) if c not in names]
            raise FrameError(f"missing columns {absent} that a windowed model needs to order rows")
        for column in card.feature_columns:
            kind = schema.field(column).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
                raise FrameError(f"column {column!r} is {kind}, not numeric")
        try:
            table = parquet.read(columns=[*card.feature_columns, *extra])
        except (OSError, pa.ArrowException) as error:
            raise FrameError(f"{path} is not readable Parquet: {error}") from error
    rows = table.num_rows
    features = np.empty((rows, len(card.feature_columns)), dtype=_DTYPES[card.inputs.dtype])
    for position, column in enumerate(card.feature_columns):
        values = table.column(column).cast(pa.float64())
        features[:, position] = values.to_numpy(zero_copy_only=False)
    codes = np.full(rows, -1, dtype=np.int64)
    device_names: tuple[str, ...] = ()
    timestamps, has_ts = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.bool_)
    if card.device_column in names:
        device = table.column(card.device_column).cast(pa.string())
        if windowed:
            codes, device_names = _encode_devices(device)
    else:
        device = pa.chunked_array([pa.nulls(rows, pa.string())])
    if card.timestamp_column in names:
        stamp = _stamps(table.column(card.timestamp_column), card.timestamp_column)
        if windowed:
            timestamps, has_ts = _micros_of(stamp)
    else:
        stamp = pa.chunked_array([pa.nulls(rows, pa.timestamp("us", tz="UTC"))])
    frame = _frame(features, codes, device_names, timestamps, has_ts, windowed)
    return frame, pa.table({"timestamp": stamp, "device": device})


def _encode_devices(column: pa.ChunkedArray[Any]) -> tuple[IntArray, tuple[str, ...]]:
    # pyarrow-stubs type dictionary_encode as returning the input's array type.
    encoded: Any = pc.dictionary_encode(column).combine_chunks()
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    names = tuple(str(name) for name in encoded.dictionary.to_pylist())
    return indices, names


def _stamps(column: pa.ChunkedArray[Any], name: str) -> pa.ChunkedArray[Any]:
    """The column as timestamp[us, UTC]."""
    kind: Any = column.type
    if pa.types.is_timestamp(kind):
        # Nanoseconds are truncated to the microseconds the scores file keeps; naive times are taken as UTC.
        return column.cast(pa.timestamp("us", tz=kind.tz or "UTC"), safe=False)
    if pa.types.is_integer(kind):
        # Integers are taken as epoch microseconds, the unit the transformer writes.
        raw: Any = column.cast(pa.int64())
        stamps: pa.ChunkedArray[Any] = raw.cast(pa.timestamp("us", tz="UTC"))
        return stamps
    raise FrameError(f"timestamp column {name!r} is {kind}, not a timestamp")


def _micros_of(stamp: pa.ChunkedArray[Any]) -> tuple[IntArray, BoolArray]:
    raw: Any = stamp.cast(pa.int64())
    has = np.asarray(pc.is_valid(raw).to_numpy(zero_copy_only=False), dtype=np.bool_)
    values = np.asarray(raw.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return values, has


def json_rows_frame(rows: Sequence[Any], card: ModelCard) -> Frame:
    """The rows of a `/score` request; a `FrameError` names the row and column that is wrong."""
    count = len(rows)
    columns = card.feature_columns
    features = _json_features(rows, columns)
    if features is None:
        features = np.empty((count, len(columns)), dtype=np.float64)
        for number, row in enumerate(rows):  # the slow path, only to say what is wrong
            if not isinstance(row, Mapping):
                raise FrameError(f"row {number} is not an object")
            for position, column in enumerate(columns):
                if column not in row:
                    raise FrameError(f"row {number}: missing column {column!r}")
                features[number, position] = _number(row[column], number, column)
    features = features.astype(_DTYPES[card.inputs.dtype], copy=False)
    codes = np.full(count, -1, dtype=np.int64)
    timestamps = np.zeros(count, dtype=np.int64)
    has_ts = np.zeros(count, dtype=np.bool_)
    device_index: dict[str, int] = {}
    windowed = card.window > 1
    if windowed:  # devices and timestamps only order rows for windows; otherwise they are not read
        for number, row in enumerate(rows):
            device = row.get(card.device_column)
            if not isinstance(device, str):
                raise FrameError(f"row {number}: column {card.device_column!r} missing or not a string")
            codes[number] = device_index.setdefault(device, len(device_index))
            stamp = row.get(card.timestamp_column)
            if stamp is None:
                raise FrameError(
                    f"row {number}: missing column {card.timestamp_column!r} (the model is windowed)"
                )
            timestamps[number] = _micros(stamp, number, card.timestamp_column)
            has_ts[number] = True
    return _frame(features, codes, tuple(device_index), timestamps, has_ts, windowed)


def _json_features(rows: Sequence[Any], columns: Sequence[str]) -> FloatArray | None:
    """The feature matrix when every row is an object with a finite int or float for every column;
    None otherwise (the caller then finds the first problem to report)."""
    try:
        values = [[row[column] for column in columns] for row in rows]
    except (KeyError, TypeError):
        return None
    # `type`, not isinstance: a bool is not a number here (and numpy would also take numeric strings).
    if not all(map(_NUMERIC_TYPES.__contains__, map(type, itertools.chain.from_iterable(values)))):
        return None
    try:
        matrix = np.array(values, dtype=np.float64).reshape(len(rows), len(columns))
    except (OverflowError, ValueError):
        return None
    return matrix if bool(np.isfinite(matrix).all()) else None


def _number(value: Any, row: int, column: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FrameError(f"row {row}: column {column!r} is not a number ({type(value).__name__})")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise FrameError(f"row {row}: column {column!r} is not a finite number")
    return number


def _micros(value: Any, row: int, column: str) -> int:
    if isinstance(value, bool):
        raise FrameError(f"row {row}: column {column!r} is not a timestamp")
    if isinstance(value, int | float):
        return round(float(value) * 1_000_000)  # epoch seconds, as JSON clients usually send them
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as error:
            raise FrameError(f"row {row}: column {column!r} is not an ISO 8601 timestamp") from error
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise FrameError(f"row {row}: column {column!r} is not a timestamp")
