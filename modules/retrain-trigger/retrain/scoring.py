"""Running a model (its ONNX graph and card) on recent rows, as the inferencer would: the card's feature
columns, windows of `window` consecutive rows per device in time order (time-major), CPU only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from .card import ModelCard
from .data import Frame

CHUNK_ROWS = 65_536


def model_inputs(card: ModelCard, frame: Frame) -> npt.NDArray[np.float32]:
    """[windows, window * features] float32. Rows with a missing value are left out; a device's first
    window - 1 rows have no window of their own, as in the inferencer's first batch."""
    values = frame.matrix(card.feature_columns)
    complete = ~np.isnan(values).any(axis=1)
    values, times, devices = values[complete], frame.times[complete], frame.devices[complete]
    if card.window == 1:
        order = np.argsort(times, kind="stable")
        return np.ascontiguousarray(values[order], dtype=np.float32)
    width = card.window * len(card.feature_columns)
    order = np.lexsort((times, devices))
    values, devices = values[order], devices[order]
    windows: list[npt.NDArray[np.float64]] = []
    if devices.size:
        starts = np.flatnonzero(np.concatenate(([True], devices[1:] != devices[:-1])))
        for start, end in zip(starts, [*starts[1:], devices.size], strict=True):
            rows = values[start:end]
            if rows.shape[0] < card.window:
                continue
            # sliding_window_view puts the window axis last: [n, features, window] -> [n, window, features].
            view = sliding_window_view(rows, card.window, axis=0).transpose(0, 2, 1)
            windows.append(view.reshape(-1, width))
    if not windows:
        return np.empty((0, width), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(windows), dtype=np.float32)


class OnnxScorer:
    """One ONNX Runtime session for one card; `open()` loads it."""

    def __init__(self, card: ModelCard, *, threads: int = 1) -> None:
        self.card = card
        self.threads = threads
        self._session: Any = None

    def open(self) -> OnnxScorer:
        import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self.card.model_path), options, providers=["CPUExecutionProvider"]
        )
        return self

    def score(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        if self._session is None:
            raise RuntimeError("scorer not opened")
        if inputs.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        parts = [
            np.asarray(
                self._session.run(
                    [self.card.score_output], {self.card.input_name: inputs[start : start + CHUNK_ROWS]}
                )[0],
                dtype=np.float64,
            ).reshape(-1)
            for start in range(0, inputs.shape[0], CHUNK_ROWS)
        ]
        return np.concatenate(parts)


@dataclass(frozen=True)
class Evaluation:
    """How one model scores the recent rows; `mean_score_ratio` is the mean score over the card's own
    baseline mean, so models with different score scales compare."""

    name: str
    version: str
    rows: int
    anomaly_rate: float | None
    mean_score: float | None
    mean_score_ratio: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "rows": self.rows,
            "anomaly_rate": _rounded(self.anomaly_rate),
            "mean_score": _rounded(self.mean_score),
            "mean_score_ratio": _rounded(self.mean_score_ratio),
        }


def summarise(card: ModelCard, scores: npt.NDArray[np.float64]) -> Evaluation:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return Evaluation(card.name, card.version, 0, None, None, None)
    mean = float(finite.mean())
    ratio = mean / card.score_mean if card.score_mean else None
    rate = float(np.count_nonzero(finite >= card.threshold)) / finite.size
    return Evaluation(card.name, card.version, int(finite.size), rate, mean, ratio)


def evaluate(card: ModelCard, frame: Frame, *, threads: int = 1) -> Evaluation:
    """Score `frame` with the card's model (blocking: run it in a thread)."""
    scorer = OnnxScorer(card, threads=threads).open()
    return summarise(card, scorer.score(model_inputs(card, frame)))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 8)
