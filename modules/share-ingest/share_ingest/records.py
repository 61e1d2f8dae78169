"""What the core hands to its caller: a FileReady per completed file, a Refusal per path it will not touch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def iso_utc_from_ns(ns: int) -> str:
    """`2026-01-01T00:00:00.123456Z`: microseconds are what datetime keeps; the catalog keeps the full ns."""
    seconds, remainder = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=remainder // 1000)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class FileReady:
    """One complete file on the share (the body of DESIGN.md §4 `file-ready`, less the envelope)."""

    file_id: str
    """sha256 of the content, lowercase hex: the id downstream deduplicates on."""
    path: str
    """Relative to the share, '/'-separated, valid UTF-8 with no control characters (others are refused)."""
    size: int
    mtime: str
    """UTC ISO 8601 with a 'Z'."""
    format: str
    """csv | jsonl | parquet | unknown, from the extension (unknown is announced; transformer quarantines)."""
    compression: str | None
    """'gzip' for a `.gz` suffix, else None."""
    dataset: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "path": self.path,
            "size": self.size,
            "mtime": self.mtime,
            "format": self.format,
            "compression": self.compression,
            "dataset": self.dataset,
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A path the core will not announce, and why: for reported properties, logs or an output."""

    path: str
    """A printable representation (see rules.display_path), never the raw name."""
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}
