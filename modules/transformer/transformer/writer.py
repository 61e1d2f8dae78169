"""Atomic, idempotent output into the cloud share.

Every file is written under a temporary dot-name in its final folder, fsynced, then published by a hard
link to its final name (which fails if that name exists: the skip-if-present check and the publish are
one step) and the folder fsynced. Temporary names start with "." and contain ".tmp-", so readers of the
share (the uploader) must skip dot-files. Outputs of one source file are published only after the whole
file was read: a file found corrupt at its end leaves nothing behind but its rejection.

Layout under the cloud share:
    <dataset>/date=YYYY-MM-DD/<source-id>-<part>.parquet
    _quarantine/<dataset>/<source-id>.parquet               rejected rows, + <source-id>.reason.json
    _quarantine/<dataset>/<source-id>/<original name>       a rejected whole file, + <name>.reason.json
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

QUARANTINE_DIR = "_quarantine"
TEMP_MARK = ".tmp-"
REASON_SCHEMA = "edgeloop.quarantine-reason/1"
_MICROS_PER_DAY = 86_400_000_000
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]{0,199}$")


def check_name(kind: str, value: str) -> str:
    """Dataset names and source ids become path segments: allow nothing that could escape or hide."""
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{kind} {value!r} is not a safe path segment")
    return value


def temp_path_for(final: Path) -> Path:
    return final.parent / f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, final: Path) -> bool:
    """Give a complete, fsynced temp file its final name unless that name exists. True if published."""
    try:
        os.link(temp, final)
    except FileExistsError:
        temp.unlink()
        return False
    except OSError as exc:
        # Some file systems (SMB, some FUSE) have no hard links: rename, after a non-atomic existence check.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if final.exists():
            temp.unlink()
            return False
        os.rename(temp, final)
        fsync_dir(final.parent)
        return True
    temp.unlink()
    fsync_dir(final.parent)
    return True


def write_bytes_atomically(final: Path, data: bytes) -> bool:
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(final)
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return publish(temp, final)


def remove_stale_temps(cloud_share: Path, dataset: str, source_id: str) -> list[Path]:
    """Temp files a crashed earlier attempt on this source left behind; removes and returns them.

    Only one transform of a given source may run at a time (the module's ledger sees to it), so any temp
    file named after this source is an orphan.
    """
    patterns = [
        (cloud_share / dataset, f"date=*/.{source_id}-*{TEMP_MARK}*"),
        (cloud_share / QUARANTINE_DIR / dataset, f".{source_id}.*{TEMP_MARK}*"),
        (cloud_share / QUARANTINE_DIR / dataset / source_id, f".*{TEMP_MARK}*"),
    ]
    removed: list[Path] = []
    for base, pattern in patterns:
        if not base.is_dir():
            continue
        for path in base.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@dataclass(frozen=True)
class BatchOutput:
    """One Parquet file of clean rows: what a `batch-ready` message describes."""

    path: str  # relative to the cloud share, '/'-separated
    date: str
    part: int
    rows: int
    min_timestamp: dt.datetime
    max_timestamp: dt.datetime
    schema_fingerprint: str
    already_present: bool = False

    @property
    def batch_id(self) -> str:
        """Stable across reruns: the path is derived from the source's content id."""
        return self.path.rsplit("/", 1)[-1].removesuffix(".parquet")


@dataclass(frozen=True)
class QuarantineOutput:
    """Rejected rows or a rejected whole file, and the reason file beside it."""

    kind: str  # "rows" | "file"
    path: str  # relative to the cloud share
    reason_path: str
    rows: int | None
    reasons: Mapping[str, int] = field(default_factory=dict)
    already_present: bool = False


@dataclass
class _Part:
    number: int
    final: Path
    temp: Path
    writer: pq.ParquetWriter | None
    rows: int = 0
    min_us: int | None = None
    max_us: int | None = None


class PartitionedParquetWriter:
    """Clean rows to `<dataset>/date=.../<source-id>-<part>.parquet`, zstd, published at commit().

    A date's rows fill part 0 up to `rows_per_part`, then part 1, and so on, in input order. An open
    Parquet writer holds a few MB (encoders, compressors), so at most `max_open_parts` stay open: when
    rows of another date arrive the least recently used part is finished early and that date's later
    rows start its next part. For time-ordered input (a date's rows together) that never happens; in
    any case the same input under the same Limits gives the same names, which is what a rerun needs.
    """

    def __init__(
        self,
        cloud_share: Path,
        *,
        dataset: str,
        source_id: str,
        schema: pa.Schema,
        timestamp_column: str,
        rows_per_part: int,
        fingerprint: str,
        max_open_parts: int = 4,
        compression_level: int | None = None,
    ) -> None:
        self._root = cloud_share
        self._dataset = check_name("dataset", dataset)
        self._source_id = check_name("source id", source_id)
        self._schema = schema.with_metadata({"edgeloop.source_id": source_id, "edgeloop.dataset": dataset})
        self._timestamp_column = timestamp_column
        self._rows_per_part = rows_per_part
        self._fingerprint = fingerprint
        self._compression_level = compression_level
        self._max_open = max(1, max_open_parts)
        # Insertion order is recency order: the first entry is the least recently written.
        self._open: dict[int, _Part] = {}
        self._finished: list[_Part] = []
        self._next_part: dict[int, int] = {}

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        micros = np.asarray(
            pc.cast(table.column(self._timestamp_column), pa.int64()).to_numpy(zero_copy_only=False),
            dtype=np.int64,
        )
        days = np.floor_divide(micros, _MICROS_PER_DAY)
        order = np.argsort(days, kind="stable")
        sorted_days = days[order]
        boundaries = np.flatnonzero(np.diff(sorted_days)) + 1
        for indices in np.split(order, boundaries):
            day = int(days[indices[0]])
            self._append(day, table.take(indices), micros[indices])

    def _append(self, day: int, rows: pa.Table, micros: np.ndarray[Any, np.dtype[np.int64]]) -> None:
        start = 0
        while start < rows.num_rows:
            part = self._open.pop(day, None) or self._start_part(day)
            self._open[day] = part
            take = min(self._rows_per_part - part.rows, rows.num_rows - start)
            piece = rows.slice(start, take)
            assert part.writer is not None
            part.writer.write_table(piece.cast(self._schema) if piece.schema != self._schema else piece)
            span = micros[start : start + take]
            low, high = int(span.min()), int(span.max())
            part.min_us = low if part.min_us is None else min(part.min_us, low)
            part.max_us = high if part.max_us is None else max(part.max_us, high)
            part.rows += take
            start += take
            if part.rows >= self._rows_per_part:
                self._close(day)

    def _start_part(self, day: int) -> _Part:
        while len(self._open) >= self._max_open:
            self._close(next(iter(self._open)))
        number = self._next_part.get(day, 0)
        self._next_part[day] = number + 1
        folder = self._root / self._dataset / f"date={_date_of(day)}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{self._source_id}-{number:05d}.parquet"
        temp = temp_path_for(final)
        writer = pq.ParquetWriter(
            str(temp), self._schema, compression="zstd", compression_level=self._compression_level
        )
        return _Part(number=number, final=final, temp=temp, writer=writer)

    def _close(self, day: int) -> None:
        part = self._open.pop(day)
        assert part.writer is not None
        part.writer.close()
        part.writer = None
        fsync_file(part.temp)
        self._finished.append(part)

    def commit(self) -> list[BatchOutput]:
        for day in list(self._open):
            self._close(day)
        outputs: list[BatchOutput] = []
        for part in sorted(self._finished, key=lambda p: (p.final.parent.name, p.number)):
            published = publish(part.temp, part.final)
            assert part.min_us is not None
            assert part.max_us is not None
            outputs.append(
                BatchOutput(
                    path=part.final.relative_to(self._root).as_posix(),
                    date=part.final.parent.name.removeprefix("date="),
                    part=part.number,
                    rows=part.rows,
                    min_timestamp=_datetime_of(part.min_us),
                    max_timestamp=_datetime_of(part.max_us),
                    schema_fingerprint=self._fingerprint,
                    already_present=not published,
                )
            )
        self._finished.clear()
        return outputs

    def abort(self) -> None:
        for part in [*self._open.values(), *self._finished]:
            if part.writer is not None:
                with contextlib.suppress(Exception):
                    part.writer.close()
            with contextlib.suppress(FileNotFoundError):
                part.temp.unlink()
        self._open.clear()
        self._finished.clear()


class QuarantineRowsWriter:
    """Rejected rows of one source to `_quarantine/<dataset>/<source-id>.parquet`, published at commit()."""

    def __init__(self, cloud_share: Path, *, dataset: str, source_id: str, schema: pa.Schema) -> None:
        self._root = cloud_share
        self._dataset = check_name("dataset", dataset)
        self._source_id = check_name("source id", source_id)
        self._schema = schema
        self._final = cloud_share / QUARANTINE_DIR / dataset / f"{source_id}.parquet"
        self._temp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._final.parent.mkdir(parents=True, exist_ok=True)
            self._temp = temp_path_for(self._final)
            self._writer = pq.ParquetWriter(str(self._temp), self._schema, compression="zstd")
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self, reasons: Mapping[str, int], extra: Mapping[str, object]) -> QuarantineOutput | None:
        if self._writer is None or self._temp is None:
            return None
        self._writer.close()
        self._writer = None
        fsync_file(self._temp)
        published = publish(self._temp, self._final)
        reason_file = self._final.with_name(f"{self._source_id}.reason.json")
        document = {
            "schema": REASON_SCHEMA,
            "kind": "rows",
            "dataset": self._dataset,
            "source_id": self._source_id,
            "rows": self.rows,
            "reasons": dict(sorted(reasons.items())),
            **extra,
        }
        write_bytes_atomically(reason_file, json.dumps(document, indent=2, default=str).encode())
        return QuarantineOutput(
            kind="rows",
            path=self._final.relative_to(self._root).as_posix(),
            reason_path=reason_file.relative_to(self._root).as_posix(),
            rows=self.rows,
            reasons=dict(reasons),
            already_present=not published,
        )

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()


def quarantine_file(
    source: Path,
    *,
    source_id: str,
    dataset: str,
    cloud_share: Path,
    reason: str,
    detail: str,
    original_name: str | None = None,
) -> QuarantineOutput:
    """Copy a rejected file whole to `_quarantine/<dataset>/<source-id>/<name>` with its reason beside it.

    Idempotent: a second call finds both in place and copies nothing.
    """
    check_name("dataset", dataset)
    check_name("source id", source_id)
    name = Path(original_name or source.name).name or "file"
    if name.startswith("."):
        name = "_" + name.lstrip(".")
    folder = cloud_share / QUARANTINE_DIR / dataset / source_id
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    reason_file = folder / f"{name}.reason.json"
    published = False
    if not final.exists():
        temp = temp_path_for(final)
        with source.open("rb") as src, temp.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        published = publish(temp, final)
    document = {
        "schema": REASON_SCHEMA,
        "kind": "file",
        "dataset": dataset,
        "source_id": source_id,
        "original_name": original_name or source.name,
        "bytes": final.stat().st_size,
        "reason": reason,
        "detail": detail,
    }
    if not reason_file.exists():
        write_bytes_atomically(reason_file, json.dumps(document, indent=2).encode())
    return QuarantineOutput(
        kind="file",
        path=final.relative_to(cloud_share).as_posix(),
        reason_path=reason_file.relative_to(cloud_share).as_posix(),
        rows=None,
        reasons={reason: 1},
        already_present=not published,
    )


def _date_of(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def _datetime_of(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
