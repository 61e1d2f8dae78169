"""The recent window drift is measured over: the newest rows by event time, bounded by a row count or by
minutes before the newest timestamp seen (event time, not the wall clock, so replayed or late data is
judged by when it happened)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


class RecentWindow:
    """Named float columns with a timestamp (seconds since the epoch) per row.

    `rows` keeps the newest N rows; `minutes` keeps rows within that many minutes of the newest one; both
    may be set (the tighter wins). `max_rows` bounds memory whatever the window.
    """

    def __init__(
        self,
        columns: Sequence[str],
        *,
        rows: int | None = None,
        minutes: float | None = None,
        max_rows: int = 1_000_000,
    ) -> None:
        if rows is None and minutes is None:
            raise ValueError("a window needs rows or minutes")
        self.columns = tuple(columns)
        self.rows = rows
        self.minutes = minutes
        self.max_rows = max_rows
        self._times: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)
        self._values: npt.NDArray[np.float64] = np.empty((0, len(self.columns)), dtype=np.float64)

    def __len__(self) -> int:
        return int(self._times.size)

    def add(self, times: npt.ArrayLike, values: npt.ArrayLike) -> None:
        """Append rows (`values` shaped [n, len(columns)], or [n] for one column) and trim to the window."""
        stamps = np.asarray(times, dtype=np.float64).ravel()
        data = np.asarray(values, dtype=np.float64)
        if data.ndim == 1:
            data = data.reshape(-1, 1)
        if data.shape != (stamps.size, len(self.columns)):
            raise ValueError(f"expected {stamps.size} rows of {len(self.columns)} values, got {data.shape}")
        if stamps.size == 0:
            return
        times_all = np.concatenate((self._times, stamps))
        values_all = np.concatenate((self._values, data))
        # Batches may arrive out of order: the window is the newest by event time, not by arrival.
        order = np.argsort(times_all, kind="stable")
        self._times, self._values = times_all[order], values_all[order]
        self._trim()

    def column(self, name: str) -> npt.NDArray[np.float64]:
        return self._values[:, self.columns.index(name)].copy()

    def span(self) -> tuple[float, float] | None:
        return None if not len(self) else (float(self._times[0]), float(self._times[-1]))

    def clear(self) -> None:
        self._times = self._times[:0]
        self._values = self._values[:0]

    def describe(self) -> dict[str, float | int | None]:
        return {"rows": len(self), "window_rows": self.rows, "window_minutes": self.minutes}

    def _trim(self) -> None:
        keep_from = 0
        if self.minutes is not None:
            oldest = self._times[-1] - self.minutes * 60.0
            keep_from = int(np.searchsorted(self._times, oldest, side="left"))
        limit = min(self.rows or self.max_rows, self.max_rows)
        keep_from = max(keep_from, self._times.size - limit)
        if keep_from > 0:
            self._times = self._times[keep_from:]
            self._values = self._values[keep_from:]
