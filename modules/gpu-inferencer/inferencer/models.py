"""Which model serves: fetch, verify, load, warm up, then swap, one request at a time.

A request that fails at any step is refused: the model serving goes on serving and the reason is
reported (`model.last_error`). Requests made while one loads are not queued one by one: the newest
wins, since only the latest assignment matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .card import CardError
from .fetch import FetchError, FetchOptions, ModelRequest, fetch_model, redact
from .runtime import LoadedModel, ModelLoadError, RuntimeOptions, load_model
from .scoring import Scorer

HISTORY_LIMIT = 50
Reporter = Callable[[dict[str, Any]], Awaitable[None]]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Wanted:
    request: ModelRequest
    fetch: FetchOptions
    runtime: RuntimeOptions
    source: str


@dataclass(frozen=True)
class Serving:
    wanted: Wanted
    model: LoadedModel
    since: str

    def describe(self) -> dict[str, Any]:
        choice = self.model.choice
        return {
            "name": self.model.name,
            "version": self.model.version,
            "since": self.since,
            "uri": redact(self.wanted.request.uri),
            "sha256": self.model.card.model_sha256,
            "providers": list(self.model.active_providers),
            "providers_requested": list(self.wanted.runtime.providers),
            "providers_unavailable": list(choice.unavailable) or None,
            "io_binding": self.model.use_binding,
            "source": self.wanted.source,
            "window": self.model.card.window,
            "threshold": self.model.card.threshold,
        }


class ModelManager:
    def __init__(
        self,
        scorer: Scorer,
        report: Reporter,
        *,
        on_swap: Callable[[LoadedModel, LoadedModel | None], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._scorer = scorer
        self._report = report
        self._on_swap = on_swap
        self._on_refused = on_refused
        self._logger = logger or logging.getLogger("edgeloop.inferencer.models")
        self._wanted: Wanted | None = None
        self._changed: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.serving: Serving | None = None
        self.last_error: dict[str, Any] | None = None
        self.history: list[dict[str, str]] = []
        self.ready: asyncio.Event | None = None

    def restore_history(self, reported: object) -> None:
        """Continue the `modelsServed` list a previous run reported (the twin keeps it)."""
        if isinstance(reported, list):
            self.history = [
                {"name": str(e["name"]), "version": str(e["version"]), "since": str(e.get("since", ""))}
                for e in reported
                if isinstance(e, dict) and "name" in e and "version" in e
            ][-HISTORY_LIMIT:]

    def start(self) -> None:
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.ready = asyncio.Event()
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def request(self, wanted: Wanted) -> None:
        if self._changed is None or self._idle is None:
            raise RuntimeError("the model manager is not started")
        self._wanted = wanted
        self._idle.clear()
        self._changed.set()

    async def settled(self, within_s: float = 60.0) -> None:
        """Wait until the latest request was served or refused (tests, and the end of a start)."""
        if self._idle is None:
            raise RuntimeError("the model manager is not started")
        await asyncio.wait_for(self._idle.wait(), within_s)

    @property
    def health(self) -> tuple[bool, str]:
        if self.serving is not None:
            return True, f"serving {self.serving.model.name}/{self.serving.model.version}"
        if self.last_error is not None:
            return False, f"no model: {self.last_error['reason']}"
        if self._wanted is not None:
            return False, "loading the model"
        return False, "no model assigned (desired property `model`)"

    def reported(self) -> dict[str, Any]:
        return {
            "model": {
                "serving": self.serving.describe() if self.serving else None,
                "last_error": self.last_error,
            },
            "modelsServed": list(self.history),
        }

    async def _loop(self) -> None:
        assert self._changed is not None
        assert self._idle is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = self._wanted
            if wanted is not None and not self._is_serving(wanted):
                await self._load(wanted)
            if not self._changed.is_set():
                self._idle.set()

    def _is_serving(self, wanted: Wanted) -> bool:
        serving = self.serving
        if serving is None:
            return False
        return replace(serving.wanted, source=wanted.source) == wanted

    async def _load(self, wanted: Wanted) -> None:
        request = wanted.request
        label = f"{request.name}/{request.version}"
        try:
            fetched = await fetch_model(request, wanted.fetch)
            model = await asyncio.to_thread(load_model, fetched.directory, fetched.card, wanted.runtime)
        except Exception as error:
            expected = isinstance(error, FetchError | CardError | ModelLoadError | OSError)
            reason = str(error) if expected else f"{type(error).__name__}: {error}"
            if not expected:
                self._logger.exception("loading model %s failed unexpectedly", label)
            self.last_error = {
                "name": request.name,
                "version": request.version,
                "uri": redact(request.uri),
                "reason": reason,
                "at": now_iso(),
            }
            self._logger.warning("refused model %s: %s", label, reason)
            if self._on_refused is not None:
                self._on_refused(reason)
            await self._report(self.reported())
            return
        previous = self._scorer.swap(model)
        self.serving = Serving(wanted, model, now_iso())
        self.last_error = None
        self.history = [
            *self.history,
            {"name": model.name, "version": model.version, "since": self.serving.since},
        ][-HISTORY_LIMIT:]
        self._logger.info(
            "serving model %s/%s on %s%s",
            model.name,
            model.version,
            model.choice.describe(),
            " with I/O binding" if model.use_binding else "",
        )
        if self._on_swap is not None:
            self._on_swap(model, previous)
        if self.ready is not None:
            self.ready.set()
        await self._report(self.reported())
