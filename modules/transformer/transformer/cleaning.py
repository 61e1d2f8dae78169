"""Cleaning: raw chunk in, typed rows out, with every rejected row accounted for.

Conversion uses pyarrow's casts on whole columns. A cast fails a whole array on one bad value, so the
fast path casts once and only a failing column takes the slow path: values that cannot be the target
type are found with a regular expression, and the rare value the expression lets through but the cast
still refuses is found by bisection. Each row gets at most one reason: the first failing column in
contract order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .contract import TIMESTAMP_TYPE, ColumnSpec, ColumnType, DatasetContract, OnInvalid
from .readers import RawChunk

BoolMask = np.ndarray[Any, np.dtype[np.bool_]]
Arr: TypeAlias = "pa.Array[Any]"
ChunkedArr: TypeAlias = "pa.ChunkedArray[Any]"
U64 = np.ndarray[Any, np.dtype[np.uint64]]

# What pyarrow's casts accept, spelled out so a bad value can be found without casting one at a time.
_INT_PATTERN = r"^[+-]?\d+$"
_FLOAT_PATTERN = r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|(?i:inf|infinity|nan))$"
_BOOL_PATTERN = r"^(?i:true|false|1|0)$"
_TIME = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
_NAIVE_TS_PATTERN = rf"^\d{{4}}-\d{{2}}-\d{{2}}({_TIME})?$"
_OFFSET_TS_PATTERN = rf"^\d{{4}}-\d{{2}}-\d{{2}}{_TIME}(Z|[+-]\d{{2}}(:?\d{{2}})?)$"
_HAS_OFFSET_PATTERN = rf"{_TIME}(Z|[+-]\d{{2}}(:?\d{{2}})?)$"
_NUMERIC_PATTERNS = {
    ColumnType.INT64: _INT_PATTERN,
    ColumnType.FLOAT64: _FLOAT_PATTERN,
    ColumnType.BOOL: _BOOL_PATTERN,
}
# Epoch seconds outside years 1..9999 are not timestamps but garbage (and would not fit a date).
_EPOCH_SECONDS_RANGE = (-62_135_596_800.0, 253_402_300_799.0)
_NAIVE_US = pa.timestamp("us")

QUARANTINE_FIXED_FIELDS = (
    pa.field("_source_row", pa.int64()),
    pa.field("_reason", pa.string(), nullable=False),
    pa.field("_raw", pa.string()),
)


def quarantine_schema(contract: DatasetContract) -> pa.Schema:
    """Rejected rows: where they came from, why, and their original values as text."""
    fields: list[pa.Field[Any]] = [*QUARANTINE_FIXED_FIELDS]
    fields.extend(pa.field(c.name, pa.string()) for c in contract.kept_columns)
    return pa.schema(fields)


@dataclass
class CleanChunk:
    good: pa.Table
    quarantined: pa.Table
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    dropped_by_reason: Counter[str] = field(default_factory=Counter)
    nulled_by_column: Counter[str] = field(default_factory=Counter)
    clipped_by_column: Counter[str] = field(default_factory=Counter)
    malformed: int = 0


class _Verdicts:
    """Per row: 0 if still good, else an index into `reasons` (first failure wins)."""

    def __init__(self, rows: int) -> None:
        self.codes = np.zeros(rows, dtype=np.int32)
        self.reasons: list[tuple[OnInvalid, str]] = [(OnInvalid.QUARANTINE, "")]

    def mark(self, mask: BoolMask, rule: OnInvalid, reason: str) -> None:
        fresh = mask & (self.codes == 0)
        if fresh.any():
            self.codes[fresh] = len(self.reasons)
            self.reasons.append((rule, reason))


def clean_chunk(raw: RawChunk, contract: DatasetContract) -> CleanChunk:
    rows = raw.table.num_rows
    verdicts = _Verdicts(rows)
    nulled: Counter[str] = Counter()
    clipped: Counter[str] = Counter()
    columns: list[Arr] = []
    for spec in contract.kept_columns:
        rule = contract.rule_for(spec)
        source = _column_or_nulls(raw.table, spec.name, rows)
        values, unparseable = convert_column(source, spec, contract.timezone)
        if unparseable.any():
            if rule is OnInvalid.NULL:
                values = _set_null(values, unparseable)
                nulled[spec.name] += int(unparseable.sum())
            else:
                # There is nothing to clip in a value that is not a number: clip quarantines it.
                verdicts.mark(unparseable, _row_rule(rule), f"unparseable:{spec.name}")
        if spec.min is not None or spec.max is not None:
            values = _apply_range(values, spec, rule, verdicts, nulled, clipped)
        if not spec.nullable or spec.name == contract.timestamp_column:
            verdicts.mark(_null_mask(values), _row_rule(rule), f"missing:{spec.name}")
        columns.append(values)

    good_mask = verdicts.codes == 0
    schema = contract.arrow_schema()
    typed = (
        pa.Table.from_arrays(columns, schema=schema.remove_metadata()) if columns else schema.empty_table()
    )
    good = typed.filter(pa.array(good_mask)) if not good_mask.all() else typed

    quarantined_by_reason: Counter[str] = Counter()
    dropped_by_reason: Counter[str] = Counter()
    quarantine_hits: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    if not good_mask.all():
        codes = verdicts.codes
        for code, (rule, reason) in enumerate(verdicts.reasons):
            if code == 0:
                continue
            hit = np.flatnonzero(codes == code)
            if rule is OnInvalid.DROP:
                dropped_by_reason[reason] += hit.size
            else:
                quarantined_by_reason[reason] += hit.size
                quarantine_hits.append(hit)
    # Rejected rows keep their order in the file, whatever their reason.
    quarantine_indices = (
        np.sort(np.concatenate(quarantine_hits)) if quarantine_hits else np.empty(0, np.int64)
    )
    quarantine_reasons = [verdicts.reasons[int(code)][1] for code in verdicts.codes[quarantine_indices]]
    quarantined = _quarantine_rows(raw, contract, quarantine_indices, quarantine_reasons)
    for record in raw.malformed:
        quarantined_by_reason[record.reason.split(":", 1)[0]] += 1
    return CleanChunk(
        good=good,
        quarantined=quarantined,
        quarantined_by_reason=quarantined_by_reason,
        dropped_by_reason=dropped_by_reason,
        nulled_by_column=nulled,
        clipped_by_column=clipped,
        malformed=len(raw.malformed),
    )


def _row_rule(rule: OnInvalid) -> OnInvalid:
    return OnInvalid.DROP if rule is OnInvalid.DROP else OnInvalid.QUARANTINE


def _apply_range(
    values: Arr,
    spec: ColumnSpec,
    rule: OnInvalid,
    verdicts: _Verdicts,
    nulled: Counter[str],
    clipped: Counter[str],
) -> Arr:
    out = np.zeros(len(values), dtype=bool)
    if spec.min is not None:
        out |= _as_mask(pc.less(values, pa.scalar(spec.min, values.type)))
    if spec.max is not None:
        out |= _as_mask(pc.greater(values, pa.scalar(spec.max, values.type)))
    if not out.any():
        return values
    if rule is OnInvalid.CLIP:
        clipped[spec.name] += int(out.sum())
        result = values
        if spec.min is not None:
            result = pc.max_element_wise(result, pa.scalar(spec.min, values.type))
        if spec.max is not None:
            result = pc.min_element_wise(result, pa.scalar(spec.max, values.type))
        return result
    if rule is OnInvalid.NULL:
        nulled[spec.name] += int(out.sum())
        return _set_null(values, out)
    verdicts.mark(out, rule, f"out_of_range:{spec.name}")
    return values


def _column_or_nulls(table: pa.Table, name: str, rows: int) -> Arr:
    if name in table.column_names:
        return one_array(table.column(name))
    return _nulls(rows, pa.string())


def one_array(column: ChunkedArr) -> Arr:
    return cast("Arr", column.combine_chunks() if column.num_chunks != 1 else column.chunk(0))


def _nulls(rows: int, arrow_type: pa.DataType) -> Arr:
    return cast("Arr", pa.nulls(rows, cast("Any", arrow_type)))


def _matches(text: Arr, pattern: str) -> BoolMask:
    """Which values match `pattern`; nulls count as matching (a null is not a bad value)."""
    found = cast("Arr", pc.match_substring_regex(text, pattern))
    return np.asarray(found.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def _as_mask(array: Any) -> BoolMask:
    """A boolean pyarrow result (array or chunked) as a numpy mask, null meaning False."""
    return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.bool_)


def _null_mask(array: Arr) -> BoolMask:
    if array.null_count == 0:
        return np.zeros(len(array), dtype=bool)
    return _as_mask(array.is_null())


def _set_null(values: Arr, mask: BoolMask) -> Arr:
    return cast("Arr", pc.if_else(pa.array(mask), _nulls(len(values), values.type), values))


# ---------------------------------------------------------------- conversion


def convert_column(source: Arr, spec: ColumnSpec, timezone: str) -> tuple[Arr, BoolMask]:
    """The column in its contract type, and which non-null inputs could not be converted."""
    if spec.type is ColumnType.TIMESTAMP:
        return parse_timestamps(source, timezone, spec.epoch)
    target = spec.type.arrow_type
    if source.type == target:
        return source, np.zeros(len(source), dtype=bool)
    if spec.type is ColumnType.STRING:
        return _to_text(source), np.zeros(len(source), dtype=bool)
    if not _is_text(source.type):
        try:
            return pc.cast(source, target), np.zeros(len(source), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            source = _to_text(source)
    return _cast_text(source, target, _NUMERIC_PATTERNS[spec.type])


def parse_timestamps(source: Arr, timezone: str, epoch: str | None) -> tuple[Arr, BoolMask]:
    """UTC microseconds from text (ISO 8601, naive = `timezone`), typed timestamps, or epoch numbers."""
    nothing_bad = np.zeros(len(source), dtype=bool)
    if epoch is not None:
        if _is_text(source.type):
            numbers, bad = _cast_text(source, pa.float64(), _FLOAT_PATTERN)
        else:
            try:
                numbers, bad = pc.cast(source, pa.float64()), nothing_bad
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                numbers, bad = _cast_text(_to_text(source), pa.float64(), _FLOAT_PATTERN)
        scale, per_second = (1e6, 1.0) if epoch == "s" else (1e3, 1e3)
        low, high = (bound * per_second for bound in _EPOCH_SECONDS_RANGE)
        absurd = _as_mask(
            pc.or_(
                pc.or_(pc.less(numbers, pa.scalar(low)), pc.greater(numbers, pa.scalar(high))),
                pc.is_nan(numbers),
            )
        )
        bad = bad | absurd
        numbers = _set_null(numbers, absurd) if absurd.any() else numbers
        micros = pc.cast(pc.round(pc.multiply(numbers, scale)), pa.int64())
        return pc.cast(micros, TIMESTAMP_TYPE), bad
    if pa.types.is_timestamp(source.type):
        if source.type.tz is not None:
            return _to_micros(source, TIMESTAMP_TYPE), nothing_bad
        return _localize(_to_micros(source, _NAIVE_US), timezone), nothing_bad
    if pa.types.is_date(source.type):
        return _localize(pc.cast(source, _NAIVE_US), timezone), nothing_bad
    if not _is_text(source.type):
        return pa.nulls(len(source), TIMESTAMP_TYPE), _as_mask(source.is_valid())
    try:
        return _localize(pc.cast(source, _NAIVE_US), timezone), nothing_bad
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pc.utf8_trim_whitespace(source)
    # Nulls "match" here, which only sends them down the offset path as nulls.
    has_offset = pa.array(_matches(text, _HAS_OFFSET_PATTERN))
    naive_text = cast("Arr", pc.if_else(has_offset, _nulls(len(text), text.type), text))
    offset_text = cast("Arr", pc.if_else(has_offset, text, _nulls(len(text), text.type)))
    naive, naive_bad = _cast_text(naive_text, _NAIVE_US, _NAIVE_TS_PATTERN, trimmed=True)
    aware, aware_bad = _cast_text(offset_text, TIMESTAMP_TYPE, _OFFSET_TS_PATTERN, trimmed=True)
    combined = pc.if_else(has_offset, aware, _localize(naive, timezone))
    return combined, naive_bad | aware_bad


def _to_micros(values: Arr, target: pa.DataType) -> Arr:
    # Sub-microsecond digits are dropped on purpose: every timestamp leaves in microseconds.
    return cast("Arr", pc.cast(values, cast("Any", target), safe=False))


def _localize(naive: Arr, timezone: str) -> Arr:
    """Wall-clock times in `timezone` as UTC instants.

    A time the autumn change makes ambiguous takes the earlier instant. A time the spring change skips
    is read with the offset in force before the change (02:30 on the skipped hour becomes 01:30 UTC in
    Central Europe): a device that writes it has not moved its clock yet.
    """
    if timezone == "UTC":
        return cast("Arr", pc.cast(naive, TIMESTAMP_TYPE))
    early = _assume(naive, timezone, "earliest")
    late = _assume(naive, timezone, "latest")
    skipped = _as_mask(pc.not_equal(early, late))
    if skipped.any():
        # Two hours back lands before any real-world gap; adding them back as a duration keeps the
        # offset of the moment before the change.
        shift = pa.scalar(dt.timedelta(hours=2), pa.duration("us"))
        before = _assume(pc.subtract(naive, shift), timezone, "earliest")
        early = cast("Arr", pc.if_else(pa.array(skipped), pc.add(before, shift), early))
    return cast("Arr", pc.cast(early, TIMESTAMP_TYPE))


def _assume(naive: Arr, timezone: str, nonexistent: str) -> Arr:
    aware = pc.assume_timezone(
        cast("Any", naive), timezone=timezone, ambiguous="earliest", nonexistent=cast("Any", nonexistent)
    )
    return cast("Arr", aware)


def _is_text(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))


def _to_text(source: Arr) -> Arr:
    if pa.types.is_string(source.type):
        return source
    try:
        return pc.cast(source, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Nested values (JSON objects and lists) have no cast to text: serialise them as JSON.
        return pa.array(
            [
                None if v is None else json.dumps(v, default=str, separators=(",", ":"))
                for v in source.to_pylist()
            ],
            pa.string(),
        )


def _cast_text(
    text: Arr, target: pa.DataType, pattern: str, *, trimmed: bool = False
) -> tuple[Arr, BoolMask]:
    try:
        return pc.cast(text, target), np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if not trimmed:
        text = pc.utf8_trim_whitespace(text)
    bad = ~_matches(text, pattern)
    candidates = _set_null(text, bad)
    try:
        return cast("Arr", pc.cast(candidates, target)), bad
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Well formed yet refused (an integer overflow, the 30th of February): find those by bisection.
        values = _bisect_cast(candidates, target, 0, bad)
        return values, bad


def _bisect_cast(values: Arr, target: pa.DataType, offset: int, bad: BoolMask) -> Arr:
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(values) == 1:
            bad[offset] = True
            return _nulls(1, target)
    middle = len(values) // 2
    left = _bisect_cast(values.slice(0, middle), target, offset, bad)
    right = _bisect_cast(values.slice(middle), target, offset + middle, bad)
    return pa.concat_arrays([left, right])


# ---------------------------------------------------------------- quarantine rows


def _quarantine_rows(
    raw: RawChunk,
    contract: DatasetContract,
    indices: np.ndarray[Any, np.dtype[np.int64]],
    reasons: list[str],
) -> pa.Table:
    schema = quarantine_schema(contract)
    rows = len(indices) + len(raw.malformed)
    if rows == 0:
        return schema.empty_table()
    take = pa.array(indices)
    columns: dict[str, Arr] = {
        "_source_row": pa.concat_arrays(
            [
                pa.array(raw.source_rows[indices]),
                pa.array([m.source_row for m in raw.malformed], pa.int64()),
            ]
        ),
        "_reason": pa.array(reasons + [m.reason for m in raw.malformed], pa.string()),
        "_raw": pa.array([None] * indices.size + [m.text for m in raw.malformed], pa.string()),
    }
    for spec in contract.kept_columns:
        if spec.name in raw.table.column_names and indices.size:
            original = _to_text(_column_or_nulls(raw.table, spec.name, raw.table.num_rows).take(take))
        else:
            original = pa.nulls(len(indices), pa.string())
        columns[spec.name] = pa.concat_arrays([original, pa.nulls(len(raw.malformed), pa.string())])
    return pa.Table.from_pydict(columns, schema=schema)


# ---------------------------------------------------------------- duplicate detection

_MASK64 = (1 << 64) - 1


def _splitmix_constant(seed: int) -> np.uint64:
    z = (seed + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return np.uint64(z ^ (z >> 31))


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LANE_MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))
_NULL_WORDS = (_splitmix_constant(1001), _splitmix_constant(2002))


def _mix(z: U64) -> U64:
    """splitmix64's finaliser: a bijection on 64 bits with full avalanche, vectorised."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def row_digests(table: pa.Table) -> tuple[U64, U64]:
    """A 128-bit digest per row, as two independent 64-bit lanes.

    Fixed-width values enter by their exact bits; text enters by its 128-bit BLAKE2b digest, computed
    once per distinct value in the chunk (dictionary encoding finds them). Each lane folds the columns
    in with its own salts and multiplier through splitmix64's finaliser.
    """
    rows = table.num_rows
    lanes = [
        np.full(rows, _splitmix_constant(7), dtype=np.uint64),
        np.full(rows, _splitmix_constant(11), dtype=np.uint64),
    ]
    for index, column in enumerate(table.columns):
        array = one_array(column)
        words = _value_words(array)
        nulls = _null_mask(array)
        for lane in (0, 1):
            salted = _mix(words[lane] ^ _splitmix_constant(index * 2 + lane + 100))
            if nulls.any():
                salted[nulls] = _NULL_WORDS[lane]
            lanes[lane] = _mix(lanes[lane] * _LANE_MULTIPLIERS[lane] + salted)
    return lanes[0], lanes[1]


def _value_words(array: Arr) -> tuple[U64, U64]:
    if _is_text(array.type):
        encoded = cast("pa.DictionaryArray[Any, Any]", pc.dictionary_encode(array))
        uniques = cast("list[str]", encoded.dictionary.to_pylist())
        digests = b"".join(hashlib.blake2b(v.encode(), digest_size=16).digest() for v in uniques)
        table = (
            np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2) if uniques else np.zeros((1, 2), np.uint64)
        )
        indices = np.asarray(encoded.indices.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return table[indices, 0], table[indices, 1]
    if pa.types.is_boolean(array.type):
        array = pc.cast(array, pa.uint8())
    elif pa.types.is_timestamp(array.type):
        array = pc.cast(array, pa.int64())
    filled = np.asarray(array.fill_null(0).to_numpy(zero_copy_only=False))
    words = filled.view(np.uint64) if filled.dtype.itemsize == 8 else filled.astype(np.uint64)
    return words, words


class RowDigestSet:
    """Which row digests a file has produced so far, in bounded memory.

    16 bytes per distinct row, kept as a few sorted runs (each run about twice the next, like a
    log-structured merge) so adding a chunk costs a merge of small runs, not a re-sort of everything.
    Past `capacity` distinct rows new digests are no longer remembered and `saturated` turns true: later
    duplicates of unremembered rows then pass, and the caller reports that dedup was partial.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.saturated = False
        self._runs: list[tuple[U64, U64]] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def admit(self, hi: U64, lo: U64) -> BoolMask:
        """True for each row seen for the first time (in this batch and before); remembers them."""
        rows = hi.size
        if rows == 0:
            return np.zeros(0, dtype=bool)
        # Sorted queries make the binary searches below walk memory in order, several times faster.
        order = np.lexsort((lo, hi))
        sorted_hi, sorted_lo = hi[order], lo[order]
        fresh = np.ones(rows, dtype=bool)
        fresh[1:] = (sorted_hi[1:] != sorted_hi[:-1]) | (sorted_lo[1:] != sorted_lo[:-1])
        for run_hi, run_lo in self._runs:
            candidates = np.flatnonzero(fresh)
            seen = _contains(run_hi, run_lo, sorted_hi[candidates], sorted_lo[candidates])
            fresh[candidates[seen]] = False
        first = np.empty(rows, dtype=bool)
        # lexsort is stable, so the first of equal digests is the earliest row: that one is kept.
        first[order] = fresh
        new_hi, new_lo = sorted_hi[fresh], sorted_lo[fresh]
        room = self.capacity - self._size
        if new_hi.size > room:
            self.saturated = True
            new_hi, new_lo = new_hi[:room], new_lo[:room]
        if new_hi.size:
            self._runs.append((new_hi, new_lo))
            self._size += new_hi.size
            self._compact()
        return first

    def _compact(self) -> None:
        while len(self._runs) > 1 and self._runs[-2][0].size <= 2 * self._runs[-1][0].size:
            top_hi, top_lo = self._runs.pop()
            below_hi, below_lo = self._runs.pop()
            self._runs.append(_merge(below_hi, below_lo, top_hi, top_lo))


def _merge(a_hi: U64, a_lo: U64, b_hi: U64, b_lo: U64) -> tuple[U64, U64]:
    """Two runs sorted by `hi` into one, in linear time after a binary search per element of `b`."""
    slots = np.searchsorted(a_hi, b_hi, side="right") + np.arange(b_hi.size)
    from_b = np.zeros(a_hi.size + b_hi.size, dtype=bool)
    from_b[slots] = True
    merged_hi = np.empty(from_b.size, dtype=np.uint64)
    merged_lo = np.empty(from_b.size, dtype=np.uint64)
    merged_hi[slots], merged_lo[slots] = b_hi, b_lo
    merged_hi[~from_b], merged_lo[~from_b] = a_hi, a_lo
    return merged_hi, merged_lo


def _contains(run_hi: U64, run_lo: U64, hi: U64, lo: U64) -> BoolMask:
    """Which (hi, lo) pairs are in the run (sorted by hi; equal his in any order)."""
    left = np.searchsorted(run_hi, hi, side="left")
    inside = left < run_hi.size
    at = np.minimum(left, run_hi.size - 1)
    same_hi = inside & (run_hi[at] == hi)
    found: BoolMask = np.asarray(same_hi & (run_lo[at] == lo), dtype=np.bool_)
    # Equal high halves of different rows are a 2^-64 event per pair; look further exactly all the same.
    follow = np.flatnonzero(same_hi & ~found)
    for index in follow.tolist():
        right = int(np.searchsorted(run_hi, hi[index], side="right"))
        found[index] = bool(np.any(run_lo[left[index] : right] == lo[index]))
    return found
