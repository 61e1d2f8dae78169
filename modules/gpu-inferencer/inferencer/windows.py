"""Sliding windows over each device's rows, carried across batches (.notes/MODEL_CARD.md, windowing).

For `window: N > 1` one model row is N consecutive rows of one device, time-major, and its score
belongs to the last of them. Each device's last N-1 rows are kept per dataset, so the first rows of the
next batch are scored with the history they need, exactly as if the batches had been one series.

Assembly works on a `StagedWindows` overlay: the history moves forward only when the caller commits,
so a batch that fails part way leaves the history as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .card import ModelCard
from .frames import Frame

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]
Layout = tuple[tuple[str, ...], int]
Key = tuple[str, str]


def layout_of(card: ModelCard) -> Layout:
    """History is only valid for models that read the same columns in the same order and window."""
    return (tuple(card.feature_columns), card.window)


class WindowState:
    """Per (dataset, device) history: the last `window - 1` rows of feature values."""

    def __init__(self) -> None:
        self.layout: Layout | None = None
        self._tails: dict[Key, FloatArray] = {}

    def __len__(self) -> int:
        return len(self._tails)

    def adopt(self, layout: Layout) -> bool:
        """Use the history for a model of `layout`; True if it had to be dropped (another layout)."""
        if self.layout == layout:
            return False
        dropped = bool(self._tails)
        self._tails.clear()
        self.layout = layout
        return dropped

    def get(self, key: Key) -> FloatArray | None:
        return self._tails.get(key)

    def stage(self) -> StagedWindows:
        return StagedWindows(self)

    def _apply(self, changes: dict[Key, FloatArray]) -> None:
        self._tails.update(changes)

    def save(self, path: Path, applied: list[str]) -> None:
        """Atomically: written beside, fsynced, renamed. `applied` names the batches whose rows are in
        this history, so a restart can tell a batch it must rescore from one that only missed its
        ledger update."""
        keys = list(self._tails)
        width = len(self.layout[0]) if self.layout else 0
        meta = {
            "layout": [list(self.layout[0]), self.layout[1]] if self.layout else None,
            "applied": applied,
        }
        lengths = np.array([len(self._tails[key]) for key in keys], dtype=np.int64)
        rows = np.concatenate([self._tails[key] for key in keys]) if keys else np.empty((0, width))
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        with temp.open("wb") as handle:
            np.savez(
                handle,
                meta=np.array(json.dumps(meta)),
                datasets=np.array([key[0] for key in keys], dtype=str),
                devices=np.array([key[1] for key in keys], dtype=str),
                lengths=lengths,
                rows=rows.astype(np.float64),
            )
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)

    @classmethod
    def load(cls, path: Path) -> tuple[WindowState, list[str]]:
        state = cls()
        if not path.is_file():
            return state, []
        with np.load(path, allow_pickle=False) as data:
            meta: dict[str, Any] = json.loads(str(data["meta"]))
            layout = meta.get("layout")
            if layout is not None:
                state.layout = (tuple(str(c) for c in layout[0]), int(layout[1]))
            offsets = np.concatenate([[0], np.cumsum(data["lengths"])])
            rows = data["rows"]
            for number, (dataset, device) in enumerate(zip(data["datasets"], data["devices"], strict=True)):
                state._tails[(str(dataset), str(device))] = rows[offsets[number] : offsets[number + 1]].copy()
        return state, [str(batch) for batch in meta.get("applied", [])]


class StagedWindows:
    def __init__(self, base: WindowState) -> None:
        self._base = base
        self._changes: dict[Key, FloatArray] = {}

    def get(self, key: Key) -> FloatArray | None:
        found = self._changes.get(key)
        return found if found is not None else self._base.get(key)

    def put(self, key: Key, tail: FloatArray) -> None:
        self._changes[key] = tail

    def commit(self) -> None:
        self._base._apply(self._changes)
        self._changes = {}


_ROW_NUMBERS = np.arange(65_536, dtype=np.int64)
_ROW_NUMBERS.flags.writeable = False


def row_numbers(count: int) -> IntArray:
    """0..count-1, a read-only view for the usual sizes (this runs on every micro-batch)."""
    return _ROW_NUMBERS[:count] if count <= len(_ROW_NUMBERS) else np.arange(count, dtype=np.int64)


@dataclass(frozen=True)
class Assembled:
    """Model input rows and, for each, the frame row whose score it gives (ascending)."""

    features: FloatArray
    rows: IntArray
    waiting: int
    """Valid rows with no score yet: their device has fewer than `window - 1` rows before them."""


def assemble(frame: Frame, window: int, dataset: str, history: StagedWindows | None) -> Assembled:
    if window == 1:
        if frame.all_valid:  # the common case: the frame's own array goes to the model, uncopied
            return Assembled(frame.features, row_numbers(frame.rows), 0)
        valid_rows = np.flatnonzero(frame.valid).astype(np.int64)
        return Assembled(frame.features[valid_rows], valid_rows, 0)
    valid_rows = np.flatnonzero(frame.valid).astype(np.int64)
    if history is None:
        raise ValueError("a windowed model needs window history")
    codes = frame.device_codes[valid_rows]
    # Per device by timestamp; ties keep file order, so equal timestamps give a deterministic window.
    order = np.lexsort((valid_rows, frame.timestamps[valid_rows], codes))
    ordered = valid_rows[order]
    ordered_codes = codes[order]
    cuts = np.flatnonzero(np.diff(ordered_codes)) + 1
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    ends = np.concatenate([cuts, [len(ordered)]]).astype(np.int64)
    keep = window - 1
    pieces: list[FloatArray] = []
    ends_at: list[IntArray] = []
    owners: list[IntArray] = []
    offset = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if start == end:
            continue
        key = (dataset, frame.device_names[int(ordered_codes[start])])
        tail = history.get(key)
        held = 0 if tail is None else len(tail)
        new = frame.features[ordered[start:end]]
        combined = (
            new if tail is None or held == 0 else np.concatenate([tail.astype(new.dtype, copy=False), new])
        )
        first = max(held, keep)
        if first < len(combined):
            positions = np.arange(first, len(combined), dtype=np.int64)
            ends_at.append(offset + positions)
            owners.append(ordered[start + positions - held])
        history.put(key, combined[-keep:].copy())
        pieces.append(combined)
        offset += len(combined)
    width = frame.features.shape[1] * window
    if not ends_at:
        empty = np.empty((0, width), dtype=frame.features.dtype)
        return Assembled(empty, np.empty(0, dtype=np.int64), len(valid_rows))
    series = np.concatenate(pieces)
    last = np.concatenate(ends_at)
    owner = np.concatenate(owners)
    steps = np.arange(-keep, 1, dtype=np.int64)
    windows = series[last[:, None] + steps[None, :]].reshape(len(last), width)
    back = np.argsort(owner, kind="stable")
    return Assembled(windows[back], owner[back], len(valid_rows) - len(owner))
