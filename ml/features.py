"""Training data: find files, load them into one table, choose column roles, build model inputs.

Pure pyarrow/numpy. The cloud-share layout written by the transformer is
`<dataset>/date=YYYY-MM-DD/<source-id>-<part>.parquet` with rejected rows under `_quarantine/` and
in-flight writes named `.<...>.tmp-...`; any folder tree of Parquet or CSV files works the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ml.errors import DataError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
# Quoted: pyarrow's classes are generic only in the stubs, not at run time.
Column: TypeAlias = "pa.ChunkedArray[Any] | pa.Array[Any]"

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
# Names in order of preference, compared case-insensitively (the transformer uses the same lists).
TIMESTAMP_NAMES = ("timestamp", "ts", "time", "datetime", "event_time", "eventtime", "date_time")
DEVICE_NAMES = ("device_id", "deviceid", "device", "sensor_id", "sensorid", "machine_id", "asset_id")
LABEL_NAMES = ("label", "is_anomaly", "anomaly", "is_anomalous", "anomalous")
_TRUE_LABELS = frozenset({"1", "true", "yes", "y", "t", "anomaly", "anomalous", "abnormal"})
# Epoch numbers above this are milliseconds (1e11 s is the year 5138).
_EPOCH_MS_THRESHOLD = 1e11
_TIMESTAMP_US_UTC = pa.timestamp("us", tz="UTC")
# Stands for a missing time in `Dataset.timestamps_us` (sorts first).
MISSING_TIME = int(np.iinfo(np.int64).min)


@dataclass(frozen=True)
class ColumnRoles:
    features: tuple[str, ...]
    device: str | None
    timestamp: str | None
    label: str | None


@dataclass(frozen=True)
class Dataset:
    """Rows of the training data in file order; `values` has NaN where a feature is missing."""

    roles: ColumnRoles
    values: FloatArray  # [rows, len(features)]
    devices: npt.NDArray[np.str_]  # [rows]; "" when there is no device column
    timestamps_us: IntArray | None  # [rows], UTC microseconds
    labels: BoolArray | None  # [rows], True = anomalous
    files: int

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class Windows:
    """Model inputs: `inputs[i]` is the time-major concatenation of dataset rows `rows[i]` (one device,
    time-ordered); the score of input i belongs to row `rows[i, -1]`."""

    inputs: FloatArray  # [n, window * len(features)]
    rows: IntArray  # [n, window]

    @property
    def last_rows(self) -> IntArray:
        return self.rows[:, -1]


def discover_files(data_dir: Path) -> list[Path]:
    """Parquet and CSV files under `data_dir`, sorted, leaving out `_`/`.` folders and temporary files."""
    if data_dir.is_file():
        return [data_dir] if _is_data_file(data_dir.name) else []
    if not data_dir.is_dir():
        raise DataError(f"no such data folder: {data_dir}")
    found: list[Path] = []
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir).parts
        # `_quarantine/` holds rejected rows and `.name.tmp-*` are writes not yet published: neither is data.
        if any(part.startswith(("_", ".")) for part in relative):
            continue
        if path.is_file() and _is_data_file(path.name):
            found.append(path)
    return found


def _is_data_file(name: str) -> bool:
    lowered = name.lower()
    if ".tmp" in lowered or lowered.endswith(("~", ".part", ".partial", ".crdownload")):
        return False
    return lowered.endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)


def read_table(path: Path) -> pa.Table:
    """One file as a table, timestamps as UTC microseconds so files of either format concatenate."""
    try:
        # Reading each file alone keeps hive folders (`date=...`) from turning into columns.
        table = pq.read_table(path) if path.name.lower().endswith(PARQUET_SUFFIXES) else pcsv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        # Training on silently fewer files would hide the problem; the transformer's output never fails here.
        raise DataError(f"{path}: unreadable: {exc}") from exc
    pairs = zip(table.schema, table.columns, strict=True)
    columns = [_normalise_time_column(field, column) for field, column in pairs]
    return pa.Table.from_arrays(columns, names=table.schema.names)


def _normalise_time_column(field: pa.Field[Any], column: Column) -> Column:
    if pa.types.is_timestamp(field.type) or pa.types.is_date(field.type):
        return _to_utc_us(column)
    if (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)) and (
        field.name.lower() in TIMESTAMP_NAMES
    ):
        # CSV inference leaves a time column as text when any value is not a time (or zones are mixed).
        return _parse_iso_times(column.to_pylist())
    return column


def _parse_iso_times(values: list[str | None]) -> pa.Array[Any]:
    """ISO 8601 text to UTC microseconds (naive = UTC); what does not parse is missing, not an error."""
    parsed: list[datetime | None] = []
    for value in values:
        try:
            moment = datetime.fromisoformat(value.strip()) if value else None
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        parsed.append(moment)
    return pa.array(parsed, type=_TIMESTAMP_US_UTC)


def _to_utc_us(column: Any) -> Column:  # Any: the stubs type each timestamp unit and zone apart
    if pa.types.is_date(column.type):
        column = pc.cast(column, pa.timestamp("s"))
    if column.type.tz is None:
        # Naive times are taken as UTC, the transformer's default zone.
        column = pc.assume_timezone(column, "UTC")
    result: Column = pc.cast(column, _TIMESTAMP_US_UTC)
    return result


def load_table(files: Sequence[Path]) -> pa.Table:
    if not files:
        raise DataError("no Parquet or CSV files found")
    tables = [read_table(path) for path in files]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the files do not share a compatible schema: {exc}") from exc


def detect_roles(
    schema: pa.Schema,
    *,
    features: Sequence[str] | None = None,
    device_column: str | None = None,
    timestamp_column: str | None = None,
    label_column: str | None = None,
) -> ColumnRoles:
    """Column roles: names given win; otherwise by type and common names. Features default to the numeric
    columns that are not the timestamp, an id or a label."""
    names = list(schema.names)
    for given in (device_column, timestamp_column, label_column, *(features or ())):
        if given is not None and given not in names:
            raise DataError(f"column {given!r} is not in the data (columns: {', '.join(names)})")
    timestamp = timestamp_column or _pick_timestamp(schema)
    device = device_column or _pick_by_name(names, DEVICE_NAMES)
    label = label_column or _pick_by_name(names, LABEL_NAMES)
    if features:
        chosen = tuple(features)
        if len(set(chosen)) != len(chosen):
            raise DataError("feature columns repeat")
        for name in chosen:
            if not _is_numeric(schema.field(name).type):
                raise DataError(f"feature column {name!r} is not numeric ({schema.field(name).type})")
        if {timestamp, device, label} & set(chosen):
            raise DataError("a feature column cannot also be the timestamp, device or label column")
    else:
        reserved = {timestamp, device, label}
        chosen = tuple(
            field.name
            for field in schema
            if field.name not in reserved and _is_numeric(field.type) and not _looks_like_id(field.name)
        )
    if not chosen:
        raise DataError("no numeric feature columns (name them with --features)")
    return ColumnRoles(features=chosen, device=device, timestamp=timestamp, label=label)


def _pick_timestamp(schema: pa.Schema) -> str | None:
    typed = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    if typed:
        return _pick_by_name(typed, TIMESTAMP_NAMES) or typed[0]
    # No typed timestamp: a numeric column with a timestamp-like name holds epoch numbers.
    numeric = [f.name for f in schema if _is_numeric(f.type)]
    return _pick_by_name(numeric, TIMESTAMP_NAMES)


def _pick_by_name(names: Iterable[str], preferred: Sequence[str]) -> str | None:
    lowered = {name.lower(): name for name in names}
    return next((lowered[p] for p in preferred if p in lowered), None)


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
    )


def _looks_like_id(name: str) -> bool:
    lowered = name.lower()
    return lowered == "id" or lowered.endswith(("_id", "-id")) or (name.endswith("Id") and len(name) > 2)


def build_dataset(table: pa.Table, roles: ColumnRoles, *, files: int) -> Dataset:
    values = np.column_stack([_as_float(table.column(name)) for name in roles.features])
    if roles.device is not None:
        raw_devices = pc.cast(table.column(roles.device), pa.string()).to_numpy()
        devices = np.asarray(["" if d is None else d for d in raw_devices], dtype=np.str_)
    else:
        devices = np.full(table.num_rows, "", dtype=np.str_)
    timestamps = _timestamps_us(table.column(roles.timestamp)) if roles.timestamp is not None else None
    labels = _labels(table.column(roles.label)) if roles.label is not None else None
    return Dataset(roles, values, devices, timestamps, labels, files)


def _as_float(column: Column) -> FloatArray:
    # pyarrow turns nulls into NaN when it converts numbers to float64 numpy arrays.
    return np.asarray(pc.cast(column, pa.float64(), safe=False).to_numpy(), dtype=np.float64)


def _timestamps_us(column: Column) -> IntArray:
    if pa.types.is_timestamp(column.type):
        micros = _as_float(pc.cast(pc.cast(column, _TIMESTAMP_US_UTC), pa.int64()))
        scale = 1.0
    else:
        micros = _as_float(column)
        finite = micros[np.isfinite(micros)]
        scale = 1_000.0 if finite.size and np.abs(finite).max() > _EPOCH_MS_THRESHOLD else 1_000_000.0
    return np.where(np.isfinite(micros), micros * scale, float(MISSING_TIME)).astype(np.int64)


def _labels(column: Column) -> BoolArray:
    if _is_numeric(column.type) or pa.types.is_boolean(column.type):
        numbers = _as_float(column)
        return np.asarray(np.nan_to_num(numbers, nan=0.0) != 0.0, dtype=np.bool_)
    text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(column, pa.string())))
    flags = pc.is_in(text, value_set=pa.array(sorted(_TRUE_LABELS)))
    return np.asarray(_as_float(flags) == 1.0, dtype=np.bool_)


def make_windows(dataset: Dataset, window: int) -> Windows:
    """Sliding windows of `window` consecutive rows of one device in time order (stable for equal
    times); a window with a missing feature value or time is left out, and no window crosses devices."""
    if window < 1:
        raise ValueError("window must be >= 1")
    n_rows, n_features = dataset.values.shape
    _, device_codes = np.unique(dataset.devices, return_inverse=True)
    times = dataset.timestamps_us if dataset.timestamps_us is not None else np.arange(n_rows, dtype=np.int64)
    order = np.lexsort((times, device_codes))
    complete = np.all(np.isfinite(dataset.values), axis=1)
    if window > 1 and dataset.timestamps_us is not None:
        # A row without a time cannot be placed in a series; on its own (window 1) it is still a sample.
        complete &= dataset.timestamps_us != MISSING_TIME
    groups = np.split(order, np.flatnonzero(np.diff(device_codes[order])) + 1)
    index_blocks: list[IntArray] = []
    for group in groups:
        if group.size < window:
            continue
        # windows of row indices, shape [group.size - window + 1, window]
        rows = np.lib.stride_tricks.sliding_window_view(group, window)
        index_blocks.append(rows[np.all(complete[rows], axis=1)])
    if index_blocks:
        rows_matrix = np.ascontiguousarray(np.concatenate(index_blocks), dtype=np.int64)
    else:
        rows_matrix = np.empty((0, window), dtype=np.int64)
    inputs = dataset.values[rows_matrix].reshape(rows_matrix.shape[0], window * n_features)
    return Windows(inputs=np.ascontiguousarray(inputs), rows=rows_matrix)


def content_sha256(dataset: Dataset, rows: IntArray) -> str:
    """A digest of the given rows' content that does not depend on their order, the files they came in or
    the file formats: rows are put in a canonical order (by every column) before hashing."""
    unique_rows = np.unique(rows)
    values = dataset.values[unique_rows] + 0.0  # -0.0 and 0.0 are the same reading
    device_names, device_codes = np.unique(dataset.devices[unique_rows], return_inverse=True)
    columns: list[npt.NDArray[np.generic]] = [device_codes.astype("<i8")]
    if dataset.timestamps_us is not None:
        columns.append(dataset.timestamps_us[unique_rows].astype("<i8"))
    if dataset.labels is not None:
        columns.append(dataset.labels[unique_rows].astype("<i8"))
    columns.extend(values[:, j].astype("<f8") for j in range(values.shape[1]))
    # lexsort's last key is the primary one: device, then time, then the rest.
    order = np.lexsort(tuple(reversed(columns)))
    digest = hashlib.sha256()
    header = {
        "features": list(dataset.roles.features),
        "timestamp": dataset.timestamps_us is not None,
        "label": dataset.labels is not None,
        "devices": device_names.tolist(),
        "rows": int(unique_rows.size),
    }
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for column in columns:
        digest.update(np.ascontiguousarray(column[order]).tobytes())
    return digest.hexdigest()


def load_dataset(
    data_dir: Path,
    *,
    features: Sequence[str] | None = None,
    device_column: str | None = None,
    timestamp_column: str | None = None,
    label_column: str | None = None,
) -> Dataset:
    files = discover_files(data_dir)
    table = load_table(files)
    roles = detect_roles(
        table.schema,
        features=features,
        device_column=device_column,
        timestamp_column=timestamp_column,
        label_column=label_column,
    )
    return build_dataset(table, roles, files=len(files))
