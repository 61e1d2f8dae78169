"""The scorer: one object, shared by batch scoring and the `/score` endpoint, that holds the serving
model and turns frames into scores.

Several frames are scored in one session run (rows of small batches are combined), every frame of a
call by the one model the caller took, so a swap between two calls never splits a batch across
versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .frames import Frame
from .runtime import LoadedModel
from .windows import StagedWindows, assemble

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ScoredFrame:
    rows: IntArray
    """Rows of the frame that have a score, ascending."""
    scores: FloatArray
    """In the model's output dtype (float32 for the default models)."""
    anomalous: BoolArray
    waiting: int
    """Valid rows still waiting for window history."""
    invalid: int
    """Rows that cannot be scored: a null or non-finite feature, no device or timestamp when windowed."""


@dataclass(frozen=True)
class FrameToScore:
    frame: Frame
    dataset: str
    """Namespace of the window history: devices of different datasets are different series."""


class Scorer:
    def __init__(self) -> None:
        self._model: LoadedModel | None = None

    @property
    def model(self) -> LoadedModel | None:
        """The serving model. Callers take it once per call to `score`, which keeps a batch on one version."""
        return self._model

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` from the next call on; calls in progress finish on the model they took."""
        previous, self._model = self._model, model
        return previous

    def score(
        self,
        frames: Sequence[FrameToScore],
        model: LoadedModel,
        history: StagedWindows | None,
        chunk_rows: int = 65_536,
    ) -> list[ScoredFrame]:
        card = model.card
        assembled = [assemble(item.frame, card.window, item.dataset, history) for item in frames]
        counts = [len(part.rows) for part in assembled]
        if sum(counts) == 0:
            all_scores: FloatArray = np.empty(0, dtype=np.float32)
        elif len(assembled) == 1:
            all_scores = model.run(assembled[0].features, chunk_rows)
        else:
            all_scores = model.run(np.concatenate([part.features for part in assembled]), chunk_rows)
        results: list[ScoredFrame] = []
        offset = 0
        for item, part, count in zip(frames, assembled, counts, strict=True):
            scores = all_scores[offset : offset + count]
            offset += count
            results.append(
                ScoredFrame(
                    rows=part.rows,
                    scores=scores,
                    anomalous=scores >= card.threshold,
                    waiting=part.waiting,
                    invalid=item.frame.invalid,
                )
            )
        return results
