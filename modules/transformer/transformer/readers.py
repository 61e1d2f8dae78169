"""Streaming readers: one input file in, a sequence of bounded chunks out.

Every reader holds about one chunk of input at a time (plus, for CSV, pyarrow's read-ahead of
ARROW_CSV_READAHEAD_BLOCKS small blocks). Text
formats go through `GuardedTextStream`, which decompresses, checks that the bytes are text in the
contract's encoding, and refuses lines over the limit before pyarrow sees them: a file that fails
those checks is rejected whole, with a reason, rather than half-read.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import tempfile
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
_BUFFER = 1 << 20


class FileFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


class RejectReason(StrEnum):
    """Why a whole file is quarantined instead of transformed."""

    EMPTY = "empty"
    BINARY = "binary"
    ENCODING = "encoding"
    LINE_TOO_LONG = "line_too_long"
    CORRUPT_COMPRESSION = "corrupt_compression"
    MALFORMED = "malformed"
    MISSING_COLUMNS = "missing_columns"
    NO_CONTRACT = "no_contract"
    UNKNOWN_FORMAT = "unknown_format"


class RejectedFile(Exception):
    """Raised inside the core when a file cannot be transformed at all; becomes a FileRejection."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FileRejection:
    """The decision to quarantine a file whole: what the `quarantined` message and reason file carry."""

    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class MalformedRecord:
    """A record the parser could not split into fields; kept verbatim for the quarantine."""

    source_row: int | None
    text: str
    reason: str


@dataclass
class RawChunk:
    """Rows as read, before any cleaning, with a 1-based `source_rows` number for each.

    JSON lines: the physical line number. Parquet: the row number. CSV: the ordinal among well-formed
    records (pyarrow skips malformed ones without saying where they were, so after one the numbers run
    behind by the count of malformed records before it; the malformed ones carry no number).
    """

    table: pa.Table
    source_rows: np.ndarray[Any, np.dtype[np.int64]]
    malformed: list[MalformedRecord] = field(default_factory=list)


def detect_format(path: Path, declared: str | None = None) -> FileFormat:
    """The format named by the sender, else by the file name (a `.gz` suffix is ignored)."""
    if declared:
        try:
            return FileFormat(declared.lower().removeprefix("."))
        except ValueError:
            if declared.lower() in ("json", "ndjson"):
                return FileFormat.JSONL
            raise RejectedFile(RejectReason.UNKNOWN_FORMAT, f"format {declared!r} is not supported") from None
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".csv", ".tsv", ".txt"):
        return FileFormat.CSV
    if last in (".jsonl", ".ndjson", ".json"):
        return FileFormat.JSONL
    if last in (".parquet", ".pq"):
        return FileFormat.PARQUET
    with path.open("rb") as handle:
        if handle.read(4) == PARQUET_MAGIC:
            return FileFormat.PARQUET
    raise RejectedFile(RejectReason.UNKNOWN_FORMAT, f"cannot tell the format of {path.name!r}")


def is_gzip(path: Path) -> bool:
    # The magic bytes decide, not the name: senders mislabel files.
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


class GuardedTextStream(io.RawIOBase):
    """A read-only byte stream of UTF-8 text, checked on the way through.

    Rejects (with RejectedFile) NUL bytes, bytes invalid in `encoding`, physical lines longer than
    `max_line_bytes`, corrupt compression and empty input. Non-UTF-8 encodings are transcoded to UTF-8,
    which is what pyarrow parses. A leading byte-order mark is removed.
    """

    def __init__(self, path: Path, *, encoding: str, max_line_bytes: int, read_size: int) -> None:
        super().__init__()
        self._path = path
        self._encoding = encoding
        self._max_line_bytes = max_line_bytes
        self._read_size = read_size
        self._compressed = is_gzip(path)
        self._source: pa.NativeFile | None = None
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        self._transcode = codecs.lookup(encoding).name != "utf-8"
        self._pending = b""
        self._line_length = 0
        self._offset = 0
        self._seen_any = False
        self._at_start = True
        self._finished = False

    def open(self) -> GuardedTextStream:
        raw = pa.OSFile(str(self._path), mode="rb")
        self._source = pa.CompressedInputStream(raw, "gzip") if self._compressed else raw
        return self

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
        super().close()

    def read(self, size: int | None = -1) -> bytes:
        want = self._read_size if size is None or size < 0 else size
        while len(self._pending) < want and not self._finished:
            self._pull()
        out, self._pending = self._pending[:want], self._pending[want:]
        return out

    def readall(self) -> bytes:
        raise io.UnsupportedOperation("whole-file reads defeat bounded memory")

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _pull(self) -> None:
        if self._source is None:
            raise RuntimeError("GuardedTextStream used before open()")
        try:
            raw = self._source.read(self._read_size)
        except OSError as exc:
            if self._compressed:
                raise RejectedFile(RejectReason.CORRUPT_COMPRESSION, str(exc)) from exc
            raise
        final = not raw
        if not self._seen_any and raw.strip():
            self._seen_any = True
        if final:
            self._finished = True
            if not self._seen_any:
                what = "no data" if self._offset == 0 else "only whitespace"
                raise RejectedFile(RejectReason.EMPTY, f"the file holds {what}")
        if b"\x00" in raw:
            position = self._offset + raw.index(b"\x00")
            raise RejectedFile(RejectReason.BINARY, f"NUL byte at offset {position}: not text")
        try:
            text = self._decoder.decode(raw, final=final)
        except UnicodeDecodeError as exc:
            raise RejectedFile(
                RejectReason.ENCODING,
                f"bytes at offset {self._offset + exc.start} are not valid {self._encoding}",
            ) from exc
        if self._transcode:
            raw = text.encode("utf-8")
        if self._at_start and raw:
            raw = raw.removeprefix(codecs.BOM_UTF8)
            self._at_start = False
        self._check_lines(raw)
        self._offset += len(raw)
        self._pending += raw

    def _check_lines(self, raw: bytes) -> None:
        newlines = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0x0A)
        if newlines.size == 0:
            longest = self._line_length + len(raw)
            self._line_length = longest
        else:
            first = self._line_length + int(newlines[0])
            inner = int(np.diff(newlines).max()) - 1 if newlines.size > 1 else 0
            self._line_length = len(raw) - int(newlines[-1]) - 1
            longest = max(first, inner, self._line_length)
        if longest > self._max_line_bytes:
            raise RejectedFile(
                RejectReason.LINE_TOO_LONG,
                f"a line of more than {self._max_line_bytes} bytes before offset {self._offset + len(raw)}",
            )


# ---------------------------------------------------------------- CSV


def read_csv_header(stream: GuardedTextStream, delimiter: str) -> tuple[list[str], bytes]:
    """The header's column names, and the bytes consumed to find them (to be replayed to pyarrow)."""
    consumed = b""
    while b"\n" not in consumed:
        more = stream.read(64 * 1024)
        if not more:
            break
        consumed += more
    first_line = consumed.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")
    names = next(csv.reader([first_line], delimiter=delimiter), [])
    return [n.strip() for n in names], consumed


class _Replay(io.RawIOBase):
    """Bytes already read, then the rest of the stream: lets the header be peeked without a seek."""

    def __init__(self, prefix: bytes, rest: GuardedTextStream) -> None:
        super().__init__()
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._prefix:
            want = len(self._prefix) if size is None or size < 0 else size
            out, self._prefix = self._prefix[:want], self._prefix[want:]
            return out
        return self._rest.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# pyarrow's streaming CSV reader reads this many blocks ahead of the consumer (measured with pyarrow 26:
# 34-35 blocks of `block_size` are pulled before the first batch is returned, threads or not).
ARROW_CSV_READAHEAD_BLOCKS = 36


def iter_csv(
    stream: GuardedTextStream,
    *,
    wanted: list[str],
    delimiter: str,
    read_block_bytes: int,
    chunk_bytes: int,
    header_sink: list[str] | None = None,
) -> Generator[RawChunk, None, None]:
    """CSV records as string columns (`wanted` ones only); conversion is the cleaner's job.

    Reading everything as strings means one bad value cannot fail a whole block: the cleaner converts
    with pyarrow's casts and pins failures on rows. Records with the wrong number of fields are kept
    verbatim as MalformedRecord (pyarrow does not report their line number while streaming).
    pyarrow reads small blocks (it reads ARROW_CSV_READAHEAD_BLOCKS of them ahead); they are gathered
    into chunks of about `chunk_bytes` so per-chunk work is amortised.
    """
    header, consumed = read_csv_header(stream, delimiter)
    if header_sink is not None:
        header_sink.extend(header)
    present = [name for name in wanted if name in header]
    malformed: list[MalformedRecord] = []

    def on_invalid_row(row: pa_csv.InvalidRow) -> Literal["skip"]:
        malformed.append(
            MalformedRecord(
                source_row=row.number,
                text=row.text,
                reason=f"malformed_record: expected {row.expected_columns} fields, got {row.actual_columns}",
            )
        )
        return "skip"

    reader = pa_csv.open_csv(
        io.BufferedReader(_Replay(consumed, stream), buffer_size=_BUFFER),
        read_options=pa_csv.ReadOptions(block_size=read_block_bytes, use_threads=True),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid_row),
        convert_options=pa_csv.ConvertOptions(
            include_columns=present,
            column_types=dict.fromkeys(present, pa.string()),
            strings_can_be_null=True,
        ),
    )
    next_row = 1
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0

    def flush() -> RawChunk:
        nonlocal next_row, pending_bytes
        table = pa.Table.from_batches(pending, schema=reader.schema)
        rows = np.arange(next_row, next_row + table.num_rows, dtype=np.int64)
        next_row += table.num_rows
        chunk = RawChunk(table, rows, list(malformed))
        pending.clear()
        malformed.clear()
        pending_bytes = 0
        return chunk

    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _classify_arrow_error(exc) from exc
            pending.append(batch)
            pending_bytes += batch.nbytes
            if pending_bytes >= chunk_bytes:
                yield flush()
        if pending or malformed:
            yield flush()
    finally:
        # Stops pyarrow's read-ahead thread before the stream under it is closed.
        reader.close()


def _classify_arrow_error(exc: Exception) -> RejectedFile:
    text = str(exc)
    if "UTF8" in text or "utf8" in text.lower():
        return RejectedFile(RejectReason.ENCODING, text)
    return RejectedFile(RejectReason.MALFORMED, text)


def _no_rows() -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.empty(0, dtype=np.int64)


# ---------------------------------------------------------------- JSON lines


def iter_jsonl(stream: GuardedTextStream, *, chunk_bytes: int) -> Generator[RawChunk, None, None]:
    """JSON lines, a block of whole lines at a time.

    The fast path hands a block to pyarrow's JSON reader. pyarrow fails a whole block on one malformed
    line or one type conflict, so such a block is re-read line by line with `json`: malformed lines
    become MalformedRecords and the rest become string columns for the cleaner to convert.
    """
    carry = b""
    line_no = 0
    while True:
        data = stream.read(chunk_bytes)
        final = not data
        buffer = carry + data
        if final:
            block, carry = buffer, b""
        else:
            cut = buffer.rfind(b"\n")
            if cut < 0:
                carry = buffer
                continue
            block, carry = buffer[: cut + 1], buffer[cut + 1 :]
        if block.strip():
            chunk, line_no = _parse_json_block(block, line_no)
            yield chunk
        elif block:
            line_no += block.count(b"\n")
        if final:
            return


def _parse_json_block(block: bytes, first_line: int) -> tuple[RawChunk, int]:
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    numbers = np.arange(first_line + 1, first_line + 1 + len(lines), dtype=np.int64)
    nonblank = np.fromiter((bool(line.strip()) for line in lines), dtype=bool, count=len(lines))
    try:
        table = pa_json.read_json(
            io.BytesIO(block),
            read_options=pa_json.ReadOptions(use_threads=True, block_size=len(block) + 1),
            parse_options=pa_json.ParseOptions(newlines_in_values=False, unexpected_field_behavior="infer"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        table = None
    if table is not None and table.num_rows == int(nonblank.sum()):
        return RawChunk(table, numbers[nonblank]), first_line + len(lines)
    return _parse_json_lines_slowly(lines, numbers), first_line + len(lines)


def _parse_json_lines_slowly(lines: list[bytes], numbers: np.ndarray[Any, np.dtype[np.int64]]) -> RawChunk:
    columns: dict[str, list[str | None]] = {}
    good_rows: list[int] = []
    malformed: list[MalformedRecord] = []
    for line, number in zip(lines, numbers.tolist(), strict=True):
        if not line.strip():
            continue
        text = line.decode("utf-8", errors="replace")
        try:
            record = json.loads(line)
        except ValueError as exc:
            malformed.append(
                MalformedRecord(number, text, f"malformed_json: {exc.args[0] if exc.args else exc}")
            )
            continue
        if not isinstance(record, dict):
            malformed.append(
                MalformedRecord(number, text, "malformed_json: a line must hold one JSON object")
            )
            continue
        index = len(good_rows)
        good_rows.append(number)
        for key, value in record.items():
            column = columns.get(key)
            if column is None:
                column = columns[key] = [None] * index
            column.append(_json_value_as_text(value))
        for column in columns.values():
            if len(column) <= index:
                column.append(None)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}) if columns else None
    if table is None:
        table = pa.table({"_": pa.array([None] * len(good_rows), pa.string())}).drop_columns(["_"])
    return RawChunk(table, np.asarray(good_rows, dtype=np.int64), malformed)


def _json_value_as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


# ---------------------------------------------------------------- Parquet


def iter_parquet(
    path: Path, *, chunk_bytes: int, columns: list[str] | None = None
) -> Generator[RawChunk, None, None]:
    """Parquet batches of about `chunk_bytes` decoded bytes, never a whole file.

    pyarrow decodes a column chunk at a time within a row group, so memory is bounded by the file's row
    group size as well; files written by this pipeline keep row groups within the chunk size.
    """
    try:
        parquet = pq.ParquetFile(str(path), memory_map=False, buffer_size=min(chunk_bytes, 8 << 20))
    except (pa.ArrowInvalid, OSError) as exc:
        if path.stat().st_size == 0:
            raise RejectedFile(RejectReason.EMPTY, "the file holds no data") from exc
        raise RejectedFile(RejectReason.MALFORMED, f"not a readable Parquet file: {exc}") from exc
    metadata = parquet.metadata
    bytes_per_row = 64
    if metadata.num_rows > 0:
        total = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
        bytes_per_row = max(1, total // metadata.num_rows)
    batch_rows = max(1024, chunk_bytes // bytes_per_row)
    next_row = 1
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_threads=True):
            rows = np.arange(next_row, next_row + batch.num_rows, dtype=np.int64)
            next_row += batch.num_rows
            yield RawChunk(pa.Table.from_batches([batch]), rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RejectedFile(RejectReason.MALFORMED, f"Parquet data unreadable: {exc}") from exc
    finally:
        parquet.close()


@contextlib.contextmanager
def seekable_parquet(path: Path, scratch_dir: Path | None) -> Generator[Path, None, None]:
    """A path pyarrow can seek in: the file itself, or a gzip'd Parquet file decompressed to scratch.

    Parquet's footer is at its end, so a compressed one cannot be streamed: it is decompressed to disk
    (bounded memory), never into memory.
    """
    if not is_gzip(path):
        yield path
        return
    with tempfile.NamedTemporaryFile(dir=scratch_dir, prefix=".transformer-", suffix=".parquet") as scratch:
        with pa.OSFile(str(path), mode="rb") as raw, pa.CompressedInputStream(raw, "gzip") as source:
            while True:
                try:
                    block = source.read(_BUFFER)
                except OSError as exc:
                    raise RejectedFile(RejectReason.CORRUPT_COMPRESSION, str(exc)) from exc
                if not block:
                    break
                scratch.write(block)
        scratch.flush()
        yield Path(scratch.name)


def parquet_column_names(path: Path) -> list[str]:
    try:
        return list(pq.read_schema(str(path)).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RejectedFile(RejectReason.MALFORMED, f"not a readable Parquet file: {exc}") from exc


def read_first_table(
    path: Path,
    fmt: FileFormat,
    *,
    encoding: str,
    delimiter: str,
    read_block_bytes: int,
    chunk_bytes: int,
    max_line_bytes: int,
    scratch_dir: Path | None = None,
) -> pa.Table:
    """The first block of a file with types inferred by pyarrow: the evidence infer_contract works from."""
    if fmt is FileFormat.PARQUET:
        with (
            seekable_parquet(path, scratch_dir) as seekable,
            contextlib.closing(iter_parquet(seekable, chunk_bytes=chunk_bytes)) as chunks,
        ):
            for chunk in chunks:
                return chunk.table
            return pq.read_schema(str(seekable)).empty_table()
    stream = GuardedTextStream(
        path, encoding=encoding, max_line_bytes=max_line_bytes, read_size=read_block_bytes
    )
    with stream.open():
        if fmt is FileFormat.JSONL:
            with contextlib.closing(iter_jsonl(stream, chunk_bytes=chunk_bytes)) as json_chunks:
                for chunk in json_chunks:
                    if chunk.table.num_columns:
                        return chunk.table
            raise RejectedFile(RejectReason.MALFORMED, "no JSON object in the first block")
        reader = pa_csv.open_csv(
            io.BufferedReader(stream, buffer_size=_BUFFER),
            read_options=pa_csv.ReadOptions(block_size=read_block_bytes, use_threads=True),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda _row: "skip"),
        )
        try:
            return pa.Table.from_batches([reader.read_next_batch()])
        except StopIteration:
            return reader.schema.empty_table()
        except pa.ArrowInvalid as exc:
            raise _classify_arrow_error(exc) from exc
        finally:
            reader.close()
