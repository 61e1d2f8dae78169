"""transform_file: one input file in, clean partitioned Parquet and quarantine out, in bounded memory."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .cleaning import RowDigestSet, clean_chunk, convert_column, one_array, quarantine_schema, row_digests
from .contract import (
    DEVICE_NAMES,
    TIMESTAMP_NAMES,
    ColumnSpec,
    ColumnType,
    DatasetContract,
    contract_from_schema,
    schema_fingerprint,
)
from .readers import (
    ARROW_CSV_READAHEAD_BLOCKS,
    FileFormat,
    FileRejection,
    GuardedTextStream,
    RawChunk,
    RejectedFile,
    RejectReason,
    detect_format,
    iter_csv,
    iter_jsonl,
    iter_parquet,
    parquet_column_names,
    read_first_table,
    seekable_parquet,
)
from .writer import (
    BatchOutput,
    PartitionedParquetWriter,
    QuarantineOutput,
    QuarantineRowsWriter,
    check_name,
    remove_stale_temps,
)

_MIB = 1 << 20
# A chunk of input grows to about this many times its size while held as strings, converted columns,
# the filtered copy, digests and the Parquet encoder's buffers.
WORKING_SET_FACTOR = 8
# One remembered row digest: 16 bytes, doubled for the moment two runs merge.
DIGEST_BYTES = 32
# An open Parquet writer's encoders and zstd contexts (measured: 2.5-4 MB for a handful of columns).
OPEN_PART_BYTES = 4 * _MIB


@dataclass(frozen=True)
class Limits:
    """Resource limits for one transform.

    max_memory_bytes: the budget. Half is for reading and cleaning (pyarrow's CSV read-ahead of
        ARROW_CSV_READAHEAD_BLOCKS blocks plus WORKING_SET_FACTOR times a chunk must fit), half for the
        digests that find duplicates across a whole file.
    read_block_bytes: pyarrow's CSV block; a CSV record (and any physical line) must fit in one.
    chunk_bytes: (decompressed) input cleaned and written at a time.
    max_line_bytes: a physical line longer than this rejects the file.
    rows_per_part: rows per output Parquet file of one date before rolling to the next part.
    max_open_parts: output files (one per date) written at the same time; see PartitionedParquetWriter.
    """

    max_memory_bytes: int = 512 * _MIB
    read_block_bytes: int = 256 * 1024
    chunk_bytes: int = 4 * _MIB
    max_line_bytes: int = 256 * 1024
    rows_per_part: int = 1_000_000
    max_open_parts: int = 4

    def __post_init__(self) -> None:
        sizes = (self.max_memory_bytes, self.read_block_bytes, self.chunk_bytes, self.max_line_bytes)
        if min(*sizes, self.rows_per_part, self.max_open_parts) <= 0:
            raise ValueError("limits must be positive")
        if self.max_line_bytes > self.read_block_bytes:
            raise ValueError("max_line_bytes must not exceed read_block_bytes: a line must fit in a block")
        if self.read_block_bytes > self.chunk_bytes:
            raise ValueError("read_block_bytes must not exceed chunk_bytes")
        if self.working_set_bytes > self.max_memory_bytes // 2:
            raise ValueError(
                f"reading needs about {self.working_set_bytes} bytes, more than half of max_memory_bytes "
                f"({self.max_memory_bytes}): lower read_block_bytes/chunk_bytes or raise max_memory_bytes"
            )

    @property
    def working_set_bytes(self) -> int:
        return (
            ARROW_CSV_READAHEAD_BLOCKS * self.read_block_bytes
            + WORKING_SET_FACTOR * self.chunk_bytes
            + OPEN_PART_BYTES * self.max_open_parts
        )

    @property
    def dedupe_capacity_rows(self) -> int:
        return (self.max_memory_bytes // 2) // DIGEST_BYTES


@dataclass(frozen=True)
class TransformResult:
    """Everything the `batch-ready` and `quarantined` messages carry, and the counters behind them."""

    source_id: str
    dataset: str
    format: FileFormat | None
    contract: DatasetContract | None
    contract_inferred: bool
    schema_fingerprint: str | None
    batches: tuple[BatchOutput, ...] = ()
    rows_read: int = 0
    rows_written: int = 0
    duplicates_dropped: int = 0
    rows_quarantined_by_reason: Mapping[str, int] = field(default_factory=dict)
    rows_dropped_by_reason: Mapping[str, int] = field(default_factory=dict)
    values_nulled: Mapping[str, int] = field(default_factory=dict)
    values_clipped: Mapping[str, int] = field(default_factory=dict)
    unexpected_columns: tuple[str, ...] = ()
    quarantine: QuarantineOutput | None = None
    rejection: FileRejection | None = None
    dedupe_complete: bool = True
    stale_temps_removed: int = 0

    @property
    def rows_quarantined(self) -> int:
        return sum(self.rows_quarantined_by_reason.values())

    @property
    def rows_dropped(self) -> int:
        return sum(self.rows_dropped_by_reason.values())

    @property
    def time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        if not self.batches:
            return None
        return min(b.min_timestamp for b in self.batches), max(b.max_timestamp for b in self.batches)

    @property
    def already_present(self) -> bool:
        """True when a previous run had published every output: nothing was written this time."""
        outputs: list[BatchOutput | QuarantineOutput] = [
            *self.batches,
            *([self.quarantine] if self.quarantine else []),
        ]
        return bool(outputs) and all(o.already_present for o in outputs)


class ContractInferenceError(ValueError):
    """The first file does not show enough to choose a contract (no timestamp column)."""


def infer_contract(
    first_file: Path,
    *,
    fmt: FileFormat | str | None = None,
    limits: Limits | None = None,
    timezone: str = "UTC",
    encoding: str = "utf-8",
    delimiter: str = ",",
    scratch_dir: Path | None = None,
) -> DatasetContract:
    """A contract from the first block of a dataset's first file, for the caller to pin and report.

    Types are pyarrow's inference. Integers are widened to float64 (except the device column): a float
    sensor that starts with whole numbers is common and an int64 contract would quarantine its later
    rows. A text column whose values mostly (INFER_PARSE_SHARE) parse as timestamps or numbers gets that
    type, so a few bad rows in the first file do not turn a column into text.
    Raises RejectedFile if the file cannot be read, ContractInferenceError if no timestamp is found.
    """
    limits = limits or Limits()
    file_format = detect_format(first_file, fmt.value if isinstance(fmt, FileFormat) else fmt)
    sample = read_first_table(
        first_file,
        file_format,
        encoding=encoding,
        delimiter=delimiter,
        read_block_bytes=limits.read_block_bytes,
        chunk_bytes=limits.chunk_bytes,
        max_line_bytes=limits.max_line_bytes,
        scratch_dir=scratch_dir,
    )
    devices = {name.lower() for name in DEVICE_NAMES}
    fields: list[pa.Field[Any]] = []
    for column_field in sample.schema:
        arrow_type = column_field.type
        name = column_field.name
        if pa.types.is_string(arrow_type):
            arrow_type = _type_of_text_column(one_array(sample.column(name)), timezone)
        elif pa.types.is_integer(arrow_type) and name.lower() not in devices | set(TIMESTAMP_NAMES):
            arrow_type = pa.float64()
        fields.append(pa.field(name, arrow_type))
    try:
        contract = contract_from_schema(pa.schema(fields), sample=sample, timezone=timezone)
    except ValueError as exc:
        raise ContractInferenceError(str(exc)) from exc
    if encoding != "utf-8" or delimiter != ",":
        contract = contract.model_copy(update={"encoding": encoding, "csv_delimiter": delimiter})
    return contract


# A text column whose values mostly parse as a type gets that type: the rest are the bad rows of the
# first file, which the contract then quarantines instead of typing the whole column as text.
INFER_PARSE_SHARE = 0.9


def _type_of_text_column(column: pa.Array[Any], timezone: str) -> pa.DataType:
    present = len(column) - column.null_count
    if present == 0:
        return pa.string()
    for spec in (
        ColumnSpec(name="_", type=ColumnType.TIMESTAMP),
        ColumnSpec(name="_", type=ColumnType.FLOAT64),
    ):
        _, bad = convert_column(column, spec, timezone)
        if present - int(bad.sum()) >= INFER_PARSE_SHARE * present:
            return pa.timestamp("us") if spec.type is ColumnType.TIMESTAMP else pa.float64()
    return pa.string()


def transform_file(
    source: Path,
    *,
    source_id: str,
    dataset: str,
    contract: DatasetContract | None,
    cloud_share: Path,
    limits: Limits | None = None,
    fmt: FileFormat | str | None = None,
    scratch_dir: Path | None = None,
) -> TransformResult:
    """Transform one file; idempotent by `source_id` (the content hash of `source`).

    With `contract` None the contract is inferred from this file and returned in the result for the
    caller to pin. A file that cannot be transformed at all comes back with `rejection` set and nothing
    written: copying it to the quarantine is the caller's call (`writer.quarantine_file`). `fmt` is the
    format the sender declared (else the file name decides); gzip is recognised by its magic bytes.
    `scratch_dir` (default: the system's) holds a gzip'd Parquet file decompressed for reading.
    """
    limits = limits or Limits()
    check_name("dataset", dataset)
    check_name("source id", source_id)
    removed = remove_stale_temps(cloud_share, dataset, source_id)
    inferred = contract is None
    file_format: FileFormat | None = None
    try:
        file_format = detect_format(source, fmt.value if isinstance(fmt, FileFormat) else fmt)
        if contract is None:
            contract = infer_contract(source, fmt=file_format, limits=limits, scratch_dir=scratch_dir)
    except (RejectedFile, ContractInferenceError) as exc:
        rejection = (
            FileRejection(exc.reason, exc.detail)
            if isinstance(exc, RejectedFile)
            else FileRejection(RejectReason.NO_CONTRACT, str(exc))
        )
        return TransformResult(
            source_id=source_id,
            dataset=dataset,
            format=file_format,
            contract=None,
            contract_inferred=inferred,
            schema_fingerprint=None,
            rejection=rejection,
            stale_temps_removed=len(removed),
        )
    job = _Transform(source, source_id, dataset, contract, inferred, cloud_share, limits, file_format)
    job.scratch_dir = scratch_dir
    return job.run(stale_temps_removed=len(removed))


class _Transform:
    def __init__(
        self,
        source: Path,
        source_id: str,
        dataset: str,
        contract: DatasetContract,
        inferred: bool,
        cloud_share: Path,
        limits: Limits,
        file_format: FileFormat,
    ) -> None:
        self.source = source
        self.source_id = source_id
        self.dataset = dataset
        self.contract = contract
        self.inferred = inferred
        self.limits = limits
        self.format = file_format
        schema = contract.arrow_schema()
        self.fingerprint = schema_fingerprint(schema)
        self.batches = PartitionedParquetWriter(
            cloud_share,
            dataset=dataset,
            source_id=source_id,
            schema=schema,
            timestamp_column=contract.timestamp_column,
            rows_per_part=limits.rows_per_part,
            fingerprint=self.fingerprint,
            max_open_parts=limits.max_open_parts,
        )
        self.quarantine = QuarantineRowsWriter(
            cloud_share, dataset=dataset, source_id=source_id, schema=quarantine_schema(contract)
        )
        self.digests = RowDigestSet(limits.dedupe_capacity_rows)
        self.columns_seen: set[str] = set()
        self.scratch_dir: Path | None = None

    def run(self, *, stale_temps_removed: int) -> TransformResult:
        rows_read = rows_written = duplicates = malformed = 0
        quarantined: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        nulled: Counter[str] = Counter()
        clipped: Counter[str] = Counter()
        try:
            for raw in self._chunks():
                rows_read += raw.table.num_rows + len(raw.malformed)
                clean = clean_chunk(raw, self.contract)
                quarantined.update(clean.quarantined_by_reason)
                dropped.update(clean.dropped_by_reason)
                nulled.update(clean.nulled_by_column)
                clipped.update(clean.clipped_by_column)
                malformed += clean.malformed
                good = clean.good
                if good.num_rows:
                    first = self.digests.admit(*row_digests(good))
                    repeats = good.num_rows - int(first.sum())
                    if repeats:
                        duplicates += repeats
                        good = good.filter(pa.array(first))
                self.batches.write(good)
                rows_written += good.num_rows
                self.quarantine.write(clean.quarantined)
            if rows_read and malformed == rows_read:
                raise RejectedFile(RejectReason.MALFORMED, f"none of {rows_read} records could be parsed")
        except RejectedFile as rejected:
            self._abort()
            return self._result(
                rejection=FileRejection(rejected.reason, rejected.detail), stale=stale_temps_removed
            )
        except BaseException:
            self._abort()
            raise
        batches = self.batches.commit()
        quarantine_output = self.quarantine.commit(
            quarantined, extra={"source_name": self.source.name, "schema_fingerprint": self.fingerprint}
        )
        return dataclasses.replace(
            self._result(stale=stale_temps_removed),
            batches=tuple(batches),
            rows_read=rows_read,
            rows_written=rows_written,
            duplicates_dropped=duplicates,
            rows_quarantined_by_reason=dict(quarantined),
            rows_dropped_by_reason=dict(dropped),
            values_nulled=dict(nulled),
            values_clipped=dict(clipped),
            quarantine=quarantine_output,
        )

    def _result(self, *, stale: int, rejection: FileRejection | None = None) -> TransformResult:
        declared = {c.name for c in self.contract.columns} | set(self.contract.drop_columns)
        return TransformResult(
            source_id=self.source_id,
            dataset=self.dataset,
            format=self.format,
            contract=self.contract,
            contract_inferred=self.inferred,
            schema_fingerprint=self.fingerprint,
            unexpected_columns=tuple(sorted(self.columns_seen - declared)),
            dedupe_complete=not self.digests.saturated,
            stale_temps_removed=stale,
            rejection=rejection,
        )

    def _abort(self) -> None:
        self.batches.abort()
        self.quarantine.abort()

    def _chunks(self) -> Generator[RawChunk, None, None]:
        wanted = [c.name for c in self.contract.kept_columns]
        if self.format is FileFormat.PARQUET:
            with seekable_parquet(self.source, self.scratch_dir) as seekable:
                names = parquet_column_names(seekable)
                self._require_columns(names)
                columns = [n for n in wanted if n in names]
                with contextlib.closing(
                    iter_parquet(seekable, chunk_bytes=self.limits.chunk_bytes, columns=columns)
                ) as chunks:
                    yield from chunks
            return
        stream = GuardedTextStream(
            self.source,
            encoding=self.contract.encoding,
            max_line_bytes=self.limits.max_line_bytes,
            read_size=self.limits.read_block_bytes,
        )
        with stream.open():
            if self.format is FileFormat.JSONL:
                with contextlib.closing(iter_jsonl(stream, chunk_bytes=self.limits.chunk_bytes)) as chunks:
                    for chunk in chunks:
                        self.columns_seen.update(chunk.table.column_names)
                        yield chunk
                return
            header: list[str] = []
            checked = False
            csv_chunks = iter_csv(
                stream,
                wanted=wanted,
                delimiter=self.contract.csv_delimiter,
                read_block_bytes=self.limits.read_block_bytes,
                chunk_bytes=self.limits.chunk_bytes,
                header_sink=header,
            )
            with contextlib.closing(csv_chunks):
                for chunk in csv_chunks:
                    if not checked:
                        self._require_columns(header)
                        checked = True
                    yield chunk
            if not checked:
                self._require_columns(header)

    def _require_columns(self, names: list[str]) -> None:
        self.columns_seen.update(names)
        present = set(names)
        missing = [
            c.name
            for c in self.contract.kept_columns
            if c.name not in present and (not c.nullable or c.name == self.contract.timestamp_column)
        ]
        if missing:
            raise RejectedFile(RejectReason.MISSING_COLUMNS, f"required columns absent: {', '.join(missing)}")
