"""retrain-trigger as an IoT Edge module: `batch-ready`, `scores` and `model-assigned` in; `retrain-request`
and `model-assigned` out; a `retrain` direct method for people.

Messages only feed state (the drift windows, the volume count); decisions are taken on a tick
(`evaluate_interval_s`) and on the direct method, so a burst of messages makes one decision, and every
decision lands in the logs and in reported properties with its evidence. A training job started here is
polled on the same tick; when it has finished its model is registered, scored against the serving model on
the newest clean rows, and promoted (published on output `model`) or rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgekit import (
    Context,
    EnvelopeError,
    Ledger,
    Message,
    MethodRequest,
    MethodResponse,
    json_content_id,
    make_message,
    parse_message,
)

from .backends import (
    JobError,
    JobState,
    LocalProcessBackend,
    ModelRegistry,
    RegistryCli,
    TrainingBackend,
    TrainingRequest,
)
from .card import CardError, ModelCard, ModelRef, iso, load_card, parse_time, registry_uri, resolve_model_dir
from .data import DataError, Frame, cloud_path, concat, read_frame
from .drift import feature_drift, measure
from .policy import BatchSeen, Decision, RetrainPolicy, Signal, Trigger, new_rows_since, volume_signal
from .promotion import decide
from .schedule import CronSchedule
from .scoring import Evaluation, evaluate
from .settings import RetrainSettings
from .state import RetrainState, keep_last
from .window import RecentWindow

INPUT_BATCHES = "batches"
INPUT_SCORES = "scores"
INPUT_MODEL = "model"
OUTPUT_RETRAIN = "retrain"
OUTPUT_MODEL = "model"
METHOD_RETRAIN = "retrain"
METHOD_STATUS = "status"
STATE_FILE = "retrain-state.json"
SCORE_COLUMN = "score"
# The inferencer's per-row scores Parquet names its time column so, whatever the card calls it.
SCORES_TIMESTAMP = "timestamp"

Clock = Callable[[], float]
BackendFactory = Callable[[RetrainSettings], TrainingBackend | None]
RegistryFactory = Callable[[RetrainSettings], ModelRegistry]


class RetrainService:
    def __init__(
        self,
        *,
        clock: Clock = time.time,
        backend_factory: BackendFactory | None = None,
        registry_factory: RegistryFactory | None = None,
    ) -> None:
        self._clock = clock
        self._backend_factory = backend_factory
        self._registry_factory = registry_factory
        self._ctx: Context[RetrainSettings] | None = None
        self._batches: Ledger | None = None
        self._scores: Ledger | None = None
        self._state = RetrainState()
        self._policy = RetrainPolicy(cooldown_s=0, debounce_s=0)
        self._card: ModelCard | None = None
        self._model_error: str | None = None
        self._score_window: RecentWindow | None = None
        self._feature_window: RecentWindow | None = None
        self._window_model: tuple[str, str] | None = None
        self._seen: list[BatchSeen] = []
        self._backend: TrainingBackend | None = None
        self._backend_config: Any = None
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self._last_evaluation: dict[str, Any] | None = None
        self._last_outcome: tuple[Any, ...] | None = None
        self._last_reported: dict[str, Any] | None = None
        self._saved_snapshot: dict[str, Any] | None = None

    # ---- lifecycle --------------------------------------------------------------------------------------

    async def start(self, ctx: Context[RetrainSettings]) -> None:
        self._ctx = ctx
        settings = ctx.settings.current
        self._batches = ctx.open_ledger(("seen", "done"), name="batches")
        self._scores = ctx.open_ledger(("seen", "done"), name="scores")
        self._state = RetrainState.load(self._state_path(), ctx.logger)
        self._policy = RetrainPolicy(
            cooldown_s=settings.cooldown_minutes * 60,
            debounce_s=settings.debounce_s,
            last_request_at=self._state.last_request_at,
        )
        if self._state.last_schedule_check is None:
            # A first start does not fire for schedule times in the past.
            self._state.last_schedule_check = self._clock()
        self._seen = [_batch_seen(item.key, item.attributes) for item in self._batches.items_in_state("done")]
        self._reset_windows(settings)
        self._rebuild_backend(settings)
        if self._state.job is not None:
            # The job's process went with the previous run of this module.
            self._state.last_job = {**self._state.job, "state": "lost", "detail": "the module restarted"}
            self._state.job = None
        await self._follow_initial_model(settings)
        ctx.settings.subscribe(self._on_settings)
        ctx.transport.on_input(INPUT_BATCHES, self._on_batch)
        ctx.transport.on_input(INPUT_SCORES, self._on_scores)
        ctx.transport.on_input(INPUT_MODEL, self._on_model)
        ctx.transport.on_method(METHOD_RETRAIN, self._on_retrain_method)
        ctx.transport.on_method(METHOD_STATUS, self._on_status_method)
        self._save()
        await self._report()
        self._ticker = asyncio.ensure_future(self._tick_loop())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._backend is not None:
            await self._backend.close()
        if self._ctx is not None:
            self._save()

    # ---- inputs -----------------------------------------------------------------------------------------

    async def _on_batch(self, message: Message) -> None:
        ctx = self._require_ctx()
        settings = ctx.settings.current
        try:
            _, body = parse_message(message, "batch-ready")
            batch_id, path, rows = body["batch_id"], body["path"], int(body["rows"])
            if not isinstance(batch_id, str) or not isinstance(path, str):
                raise EnvelopeError("batch-ready without batch_id or path")
        except (EnvelopeError, KeyError, TypeError, ValueError) as error:
            ctx.counters.inc("bad_messages")
            ctx.logger.warning("ignored a message on %s: %s", INPUT_BATCHES, error)
            return
        if settings.dataset is not None and body.get("dataset") != settings.dataset:
            ctx.counters.inc("other_datasets")
            return
        ledger = self._require(self._batches)
        if ledger.get(batch_id) is not None:
            ctx.counters.inc("duplicates")
            return
        time_range = body.get("time_range") or {}
        attributes = {
            "rows": rows,
            "path": path,
            "dataset": body.get("dataset"),
            "min": _epoch(time_range.get("min")),
            "max": _epoch(time_range.get("max")),
        }
        ledger.record(batch_id, "done", attributes)
        self._seen.append(_batch_seen(batch_id, attributes))
        ctx.counters.inc("batches")
        ctx.counters.inc("rows", rows)
        card, window = self._card, self._feature_window
        if card is None or window is None or not (settings.drift.enabled and settings.drift.features):
            return
        try:
            frame = await asyncio.to_thread(
                read_frame,
                cloud_path(Path(settings.cloud_share_dir), path),
                card.feature_columns,
                timestamp_column=card.timestamp_column,
                device_column=None,
            )
        except DataError as error:
            ctx.counters.inc("unreadable_files")
            ctx.logger.warning("batch %s not added to the feature window: %s", batch_id, error)
            return
        if window is self._feature_window:  # the model may have changed while the file was read
            window.add(frame.times, frame.matrix(card.feature_columns))

    async def _on_scores(self, message: Message) -> None:
        ctx = self._require_ctx()
        settings = ctx.settings.current
        try:
            _, body = parse_message(message, "scores")
            batch_id, path, model = body["batch_id"], body["path"], body["model"]
            name, version = str(model["name"]), str(model["version"])
            if not isinstance(batch_id, str) or not isinstance(path, str):
                raise EnvelopeError("scores without batch_id or path")
        except (EnvelopeError, KeyError, TypeError) as error:
            ctx.counters.inc("bad_messages")
            ctx.logger.warning("ignored a message on %s: %s", INPUT_SCORES, error)
            return
        if settings.dataset is not None and body.get("dataset") != settings.dataset:
            ctx.counters.inc("other_datasets")
            return
        card, window = self._card, self._score_window
        if card is None or window is None or card.key != (name, version):
            # Scores of another model say nothing about drift against this card's baseline.
            ctx.counters.inc("scores_other_model")
            return
        ledger = self._require(self._scores)
        key = f"{name}/{version}/{batch_id}"
        if ledger.get(key) is not None:
            ctx.counters.inc("duplicates")
            return
        try:
            frame = await asyncio.to_thread(
                read_frame,
                cloud_path(Path(settings.cloud_share_dir), path),
                [SCORE_COLUMN],
                timestamp_column=SCORES_TIMESTAMP,
                device_column=None,
            )
        except DataError as error:
            ctx.counters.inc("unreadable_files")
            ctx.logger.warning("scores of batch %s not added to the score window: %s", batch_id, error)
            return
        ledger.record(key, "done", {"rows": len(frame)})
        if window is self._score_window:
            window.add(frame.times, frame.columns[SCORE_COLUMN])
        ctx.counters.inc("scores_batches")

    async def _on_model(self, message: Message) -> None:
        ctx = self._require_ctx()
        try:
            _, body = parse_message(message, "model-assigned")
            ref = ModelRef.model_validate({k: body.get(k) for k in ("name", "version", "uri", "sha256")})
        except (EnvelopeError, ValidationError) as error:
            ctx.counters.inc("bad_messages")
            ctx.logger.warning("ignored a message on %s: %s", INPUT_MODEL, error)
            return
        await self._follow(ref, "message")
        self._save()
        await self._report_model()

    # ---- direct methods ---------------------------------------------------------------------------------

    async def _on_retrain_method(self, request: MethodRequest) -> MethodResponse:
        payload = request.payload if request.payload is not None else {}
        if not isinstance(payload, dict) or not isinstance(payload.get("reason", ""), str):
            return MethodResponse.error(400, 'payload must be {"reason": "<text>"}')
        reason = str(payload.get("reason") or "requested by a person")
        decision, request_id = await self.evaluate(manual_reason=reason)
        answer = {
            "triggered": decision.triggered,
            "request_id": request_id,
            "decision": decision.to_json(_iso_at(decision.at)),
        }
        return MethodResponse(200 if decision.triggered else 409, answer)

    async def _on_status_method(self, request: MethodRequest) -> MethodResponse:
        return MethodResponse.ok(self._summary())

    # ---- deciding ---------------------------------------------------------------------------------------

    async def evaluate(self, *, manual_reason: str | None = None) -> tuple[Decision, str | None]:
        """Poll the job, gather the signals, decide, act; (decision, request id if one was sent)."""
        ctx = self._require_ctx()
        async with self._lock:
            await self._poll_job()
            now = self._clock()
            settings = ctx.settings.current
            signals = [
                self._drift_signal(settings),
                self._volume_signal(settings),
                self._schedule_signal(now),
            ]
            if manual_reason is not None:
                signals.insert(0, Signal(Trigger.MANUAL, True, {"reason": manual_reason}))
            decision = self._policy.decide(
                [s for s in signals if s is not None], now, in_flight=self._state.job is not None
            )
            request_id = await self._act(decision, settings, manual_reason)
            self._state.last_request_at = self._policy.last_request_at
            self._save()
            await self._report()
            return decision, request_id

    def _drift_signal(self, settings: RetrainSettings) -> Signal:
        drift = settings.drift
        if not drift.enabled:
            return Signal(Trigger.DRIFT, False, {"enabled": False})
        card, scores, features = self._card, self._score_window, self._feature_window
        if card is None or scores is None or features is None:
            return Signal(Trigger.DRIFT, False, {"skipped": "no serving model card"})
        window = {"rows": drift.window_rows, "minutes": drift.window_minutes, "min_rows": drift.min_rows}
        evidence: dict[str, Any] = {
            "window": window,
            "score_rows": len(scores),
            "feature_rows": len(features),
        }
        drifted: list[str] = []
        if len(scores) >= drift.min_rows:
            result = measure(
                "score",
                scores.column(SCORE_COLUMN),
                card.score_histogram,
                drift.statistic,
                drift.score_threshold,
            )
            evidence["score"] = result.evidence()
            drifted += ["score"] if result.drifted else []
        if drift.features and len(features) >= drift.min_rows:
            results = feature_drift(
                {name: features.column(name) for name in card.feature_columns},
                card.feature_histograms,
                drift.statistic,
                drift.feature_threshold,
            )
            evidence["features"] = {r.subject: r.evidence() for r in results}
            drifted += [r.subject for r in results if r.drifted]
        if "score" not in evidence and "features" not in evidence:
            evidence["skipped"] = f"fewer than {drift.min_rows} rows in the window"
        evidence["drifted"] = drifted
        return Signal(Trigger.DRIFT, bool(drifted), evidence)

    def _volume_signal(self, settings: RetrainSettings) -> Signal:
        if not settings.volume.enabled:
            return Signal(Trigger.VOLUME, False, {"enabled": False})
        if self._card is None:
            return Signal(Trigger.VOLUME, False, {"skipped": "no serving model card"})
        training_max = self._card.training_max
        rows, batches = new_rows_since(self._seen, training_max.timestamp() if training_max else None)
        signal = volume_signal(rows, batches, settings.volume.new_rows)
        signal.evidence["since"] = iso(training_max) if training_max else None
        return signal

    def _schedule_signal(self, now: float) -> Signal | None:
        cron = self._require_ctx().settings.current.schedule.cron
        since = self._state.last_schedule_check or now
        self._state.last_schedule_check = now
        if cron is None:
            return None
        schedule = CronSchedule(cron)
        fire = schedule.due(_datetime(since), _datetime(now))
        evidence = {
            "cron": cron,
            "fire_time": iso(fire) if fire else None,
            "next": iso(schedule.next_after(_datetime(now))),
        }
        return Signal(Trigger.SCHEDULE, fire is not None, evidence)

    async def _act(self, decision: Decision, settings: RetrainSettings, manual: str | None) -> str | None:
        ctx = self._require_ctx()
        at = _iso_at(decision.at)
        entry = decision.to_json(at)
        self._last_evaluation = entry
        outcome = (entry.get("triggered"), entry.get("reason"), entry.get("suppressed"))
        if not decision.triggered and outcome == self._last_outcome:
            # The same verdict as last time: kept for `status`, not recorded again.
            ctx.logger.debug("decision unchanged: %s", decision.detail)
            return None
        self._last_outcome = outcome
        ctx.counters.inc("decisions")
        ctx.logger.info("decision: %s", decision.detail, extra={"decision": entry})
        self._state.last_decision = entry
        self._state.decisions = keep_last(
            self._state.decisions, {**entry, "evidence": compact(entry["evidence"])}, settings.decisions_kept
        )
        if not decision.triggered or decision.reason is None:
            return None
        card = self._card
        request_id = json_content_id(
            {
                "at": at,
                "reason": decision.reason.value,
                "detail": manual,
                "model": card.key if card else None,
                "evidence": decision.evidence,
            }
        )
        body = {
            "request_id": request_id,
            "reason": decision.reason.value,
            "detail": manual or decision.detail,
            "evidence": decision.evidence,
            "data_window": self._data_window(settings),
            "model": {"name": card.name, "version": card.version} if card else None,
            "backend": settings.backend,
            "at": at,
        }
        props = {"reason": decision.reason.value, "model": card.name if card else ""}
        await ctx.transport.send(
            OUTPUT_RETRAIN, make_message("retrain-request", 1, body, props, message_id=request_id)
        )
        ctx.counters.inc("retrain_requests")
        ctx.logger.warning("retrain requested (%s), request %s", decision.reason.value, request_id)
        record = {"reason": decision.reason.value, "evidence": compact(decision.evidence), "at": at}
        self._state.requests = keep_last(
            self._state.requests, {**record, "request_id": request_id}, settings.decisions_kept
        )
        await self._start_job(request_id, decision.reason.value, settings)
        return request_id

    def _data_window(self, settings: RetrainSettings) -> dict[str, Any]:
        mins = [b.min_time for b in self._seen if b.min_time is not None]
        maxs = [b.max_time for b in self._seen if b.max_time is not None]
        training_max = self._card.training_max if self._card else None
        new_rows, new_batches = new_rows_since(self._seen, training_max.timestamp() if training_max else None)
        return {
            "dataset": settings.dataset,
            "path": settings.dataset or "",
            "from": _iso_at(min(mins)) if mins else None,
            "to": _iso_at(max(maxs)) if maxs else None,
            "rows": sum(b.rows for b in self._seen),
            "batches": len(self._seen),
            "new_rows": new_rows,
            "new_batches": new_batches,
            "new_since": iso(training_max) if training_max else None,
        }

    # ---- training jobs ----------------------------------------------------------------------------------

    async def _start_job(self, request_id: str, reason: str, settings: RetrainSettings) -> None:
        ctx = self._require_ctx()
        backend = self._backend
        if backend is None:
            return
        name = settings.model_name or (self._card.name if self._card else None) or "model"
        cloud_share = Path(settings.cloud_share_dir)
        request = TrainingRequest(
            request_id=request_id,
            name=name,
            data_dir=cloud_share / settings.dataset if settings.dataset else cloud_share,
            out_dir=ctx.state_dir / "jobs" / request_id[:16] / "model",
            seed=settings.seed,
            reason=reason,
        )
        try:
            job_id = await backend.submit(request)
        except (OSError, ValueError) as error:
            ctx.counters.inc("jobs_failed")
            ctx.logger.error("could not start the training job: %s", error)
            self._state.last_job = {"request_id": request_id, "state": "failed", "detail": str(error)}
            return
        ctx.counters.inc("jobs_started")
        self._state.job = {
            "job_id": job_id,
            "request_id": request_id,
            "name": name,
            "started": _iso_at(self._clock()),
            "out": str(request.out_dir),
        }

    async def _poll_job(self) -> None:
        ctx = self._require_ctx()
        job, backend = self._state.job, self._backend
        if job is None:
            return
        if backend is None:
            self._finish_job({**job, "state": "lost", "detail": "no backend configured any more"})
            return
        try:
            status = await backend.status(job["job_id"])
        except JobError as error:
            self._finish_job({**job, "state": "lost", "detail": str(error)})
            return
        if not status.state.finished:
            return
        self._finish_job({**job, **status.to_json()})
        if status.state is not JobState.SUCCEEDED:
            ctx.counters.inc("jobs_failed")
            return
        await self._consider_candidate(backend, job)

    def _finish_job(self, record: dict[str, Any]) -> None:
        self._state.job = None
        self._state.last_job = record
        self._rebuild_backend(self._require_ctx().settings.current)

    async def _consider_candidate(self, backend: TrainingBackend, job: dict[str, Any]) -> None:
        """Register the job's model, score it and the serving model on the newest clean rows, promote or
        reject it. Any failure rejects the candidate with the reason; the serving model stays."""
        ctx = self._require_ctx()
        settings = ctx.settings.current
        rule = settings.promotion
        candidate: dict[str, Any] = {"name": job["name"], "version": None, "request_id": job["request_id"]}
        try:
            model_dir = await backend.result(job["job_id"])
            await asyncio.to_thread(load_card, model_dir)
            registry = self._registry(settings)
            version = await registry.register(model_dir, job["name"])
            candidate["version"] = version
            uri = registry_uri(job["name"], version)
            card = await asyncio.to_thread(load_card, resolve_model_dir(uri, Path(settings.registry_root)))
            serving = self._card
            frame = await asyncio.to_thread(self._recent_frame, card, serving, rule.eval_rows)
            mine = await asyncio.to_thread(evaluate, card, frame, threads=rule.onnx_threads)
            theirs: Evaluation | None = None
            if serving is not None:
                theirs = await asyncio.to_thread(evaluate, serving, frame, threads=rule.onnx_threads)
            verdict = decide(mine, theirs, rule.metric, rule.tolerance)
        except Exception as error:
            ctx.counters.inc("candidates_rejected")
            ctx.logger.exception("candidate of request %s rejected", job["request_id"])
            candidate.update(promoted=False, reason=f"{type(error).__name__}: {error}", metrics={})
            self._state.last_candidate = candidate
            return
        metrics = {
            "rule": verdict.metrics(),
            "candidate": mine.to_json(),
            "serving": theirs.to_json() if theirs else None,
        }
        candidate.update(promoted=verdict.promoted, reason=verdict.reason, metrics=metrics)
        self._state.last_candidate = candidate
        if not verdict.promoted:
            ctx.counters.inc("candidates_rejected")
            ctx.logger.warning("candidate %s/%s rejected: %s", card.name, version, verdict.reason)
            return
        ctx.counters.inc("promotions")
        ref = ModelRef(name=card.name, version=version, uri=uri, sha256=card.model_sha256)
        promotion = {
            "name": card.name,
            "version": version,
            "uri": uri,
            "previous": {"name": serving.name, "version": serving.version} if serving else None,
            "request_id": job["request_id"],
            "reason": verdict.reason,
            "metrics": verdict.metrics(),
            "published": rule.publish,
            "at": _iso_at(self._clock()),
        }
        self._state.promotions = keep_last(self._state.promotions, promotion, settings.decisions_kept)
        ctx.logger.warning("candidate %s/%s promoted: %s", card.name, version, verdict.reason)
        if rule.publish:
            body = ref.model_dump()
            await ctx.transport.send(
                OUTPUT_MODEL,
                make_message(
                    "model-assigned",
                    1,
                    body,
                    {"model": card.name, "version": version},
                    message_id=json_content_id(body),
                ),
            )
            await self._follow(ref, "promotion")

    def _recent_frame(self, candidate: ModelCard, serving: ModelCard | None, rows: int) -> Frame:
        """The newest `rows` clean rows the batches named, with every column either model needs."""
        ctx = self._require_ctx()
        cloud_share = Path(ctx.settings.current.cloud_share_dir)
        names = [*dict.fromkeys([*candidate.feature_columns, *(serving.feature_columns if serving else ())])]
        frames: list[Frame] = []
        total = 0
        for batch in sorted(self._seen, key=lambda b: b.max_time or 0.0, reverse=True):
            item = self._require(self._batches).get(batch.batch_id)
            if item is None:
                continue
            try:
                frame = read_frame(
                    cloud_path(cloud_share, str(item.attributes["path"])),
                    names,
                    timestamp_column=candidate.timestamp_column,
                    device_column=candidate.device_column,
                )
            except DataError as error:
                ctx.logger.warning("batch %s left out of the comparison: %s", batch.batch_id, error)
                continue
            frames.append(frame)
            total += len(frame)
            if total >= rows:
                break
        return concat(frames, names).newest(rows)

    # ---- the serving model ------------------------------------------------------------------------------

    async def _follow_initial_model(self, settings: RetrainSettings) -> None:
        setting = settings.model.model_dump() if settings.model else None
        stored = self._state.serving
        if stored is not None and setting == self._state.setting_model:
            ref = ModelRef.model_validate({k: stored.get(k) for k in ("name", "version", "uri", "sha256")})
            await self._follow(ref, str(stored.get("source", "setting")))
        elif settings.model is not None:
            await self._follow(settings.model, "setting")
        self._state.setting_model = setting

    async def _follow(self, ref: ModelRef, source: str) -> None:
        """Read the referenced card; on success it is the baseline from now on (the drift windows
        start afresh when the model changes). On failure the previous card stays."""
        ctx = self._require_ctx()
        settings = ctx.settings.current
        try:
            directory = resolve_model_dir(ref.uri, Path(settings.registry_root))
            card = await asyncio.to_thread(load_card, directory, sha256=ref.sha256)
        except CardError as error:
            self._model_error = f"{ref.name}/{ref.version}: {error}"
            ctx.logger.error("cannot follow model %s/%s: %s", ref.name, ref.version, error)
            ctx.set_health("degraded", self._model_error)
            return
        if (card.name, card.version) != (ref.name, ref.version):
            ctx.logger.warning(
                "reference %s/%s points at a card naming %s/%s",
                ref.name,
                ref.version,
                card.name,
                card.version,
            )
        changed = self._card is None or self._card.key != card.key
        self._card = card
        self._model_error = None
        self._state.serving = {**ref.model_dump(), "source": source}
        ctx.set_health("healthy", "")
        if changed:
            ctx.logger.info("following model %s/%s (%s)", card.name, card.version, source)
            self._reset_windows(settings)

    async def _on_settings(self, settings: RetrainSettings) -> None:
        self._policy.configure(cooldown_s=settings.cooldown_minutes * 60, debounce_s=settings.debounce_s)
        self._reset_windows(settings)
        if self._state.job is None:
            self._rebuild_backend(settings)
        setting = settings.model.model_dump() if settings.model else None
        if setting != self._state.setting_model:
            self._state.setting_model = setting
            if settings.model is not None:
                await self._follow(settings.model, "setting")
        self._save()
        await self._report_model()

    def _reset_windows(self, settings: RetrainSettings) -> None:
        drift = settings.drift
        columns = self._card.feature_columns if self._card else ()
        shape = (columns, drift.window_rows, drift.window_minutes, self._card.key if self._card else None)
        current = self._feature_window
        if (
            current is not None
            and (current.columns, current.rows, current.minutes, self._window_model) == shape
        ):
            return
        self._window_model = self._card.key if self._card else None
        self._score_window = RecentWindow(
            [SCORE_COLUMN], rows=drift.window_rows, minutes=drift.window_minutes
        )
        self._feature_window = RecentWindow(columns, rows=drift.window_rows, minutes=drift.window_minutes)

    # ---- backends ---------------------------------------------------------------------------------------

    def _rebuild_backend(self, settings: RetrainSettings) -> None:
        config = (settings.backend, settings.local, settings.azureml, settings.cloud_share_dir)
        if self._backend is not None and config == self._backend_config:
            return
        self._backend_config = config
        if self._backend_factory is not None:
            self._backend = self._backend_factory(settings)
            return
        if settings.backend == "none":
            self._backend = None
            return
        local, azureml = settings.local, settings.azureml
        # Both backends run a process: the training itself, or `ml azureml train` waiting for the cloud job.
        remote = settings.backend == "azureml"
        self._backend = LocalProcessBackend(
            azureml.command if remote else local.command,
            cloud_share=Path(settings.cloud_share_dir),
            timeout_s=azureml.timeout_s if remote else local.timeout_s,
            python=local.python or _default_python(),
            cwd=Path(local.cwd) if local.cwd else None,
            env=local.env,
            logger=self._require_ctx().logger,
            data=azureml.data if remote else None,
        )

    def _registry(self, settings: RetrainSettings) -> ModelRegistry:
        if self._registry_factory is not None:
            return self._registry_factory(settings)
        local = settings.local
        return RegistryCli(
            local.register_command,
            registry_root=Path(settings.registry_root),
            timeout_s=local.register_timeout_s,
            python=local.python or _default_python(),
            cwd=Path(local.cwd) if local.cwd else None,
            env=local.env,
        )

    # ---- reporting --------------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        ctx = self._require_ctx()
        while not ctx.stopping.is_set():
            await asyncio.sleep(ctx.settings.current.evaluate_interval_s)
            try:
                await self.evaluate()
            except Exception:
                ctx.logger.exception("evaluation failed")

    def _summary(self) -> dict[str, Any]:
        settings = self._require_ctx().settings.current
        return {
            "serving": self._serving_section(),
            "modelError": self._model_error,
            "windows": {
                "scores": len(self._score_window) if self._score_window else 0,
                "features": len(self._feature_window) if self._feature_window else 0,
            },
            "volume": self._volume_signal(settings).evidence,
            "cooldownLeftS": round(self._policy.cooldown_left(self._clock()), 3),
            "job": self._state.job,
            "lastJob": self._state.last_job,
            "lastCandidate": self._state.last_candidate,
            "lastDecision": self._state.last_decision,
            "lastEvaluation": self._last_evaluation,
        }

    def _serving_section(self) -> dict[str, Any] | None:
        if self._card is None or self._state.serving is None:
            return None
        return {**self._state.serving, **self._card.describe()}

    async def _report_model(self) -> None:
        await self._require_ctx().transport.patch_reported(
            {"serving": self._serving_section(), "modelError": self._model_error}
        )

    async def _report(self) -> None:
        # Only what changed goes to the twin: an unchanged verdict every tick is no news, and would keep the
        # hub busy for nothing.
        reported = self._reported()
        if reported == self._last_reported:
            return
        await self._require_ctx().transport.patch_reported(reported)
        self._last_reported = reported

    def _reported(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "lastDecision": self._state.last_decision,
                "decisions": self._state.decisions,
                "retrainRequests": self._state.requests,
                "promotions": self._state.promotions,
                "job": self._state.job,
                "lastJob": self._state.last_job,
                "lastCandidate": self._state.last_candidate,
                "serving": self._serving_section(),
                "modelError": self._model_error,
                # Working without messages while a training job runs: edgesim waits for it before idling.
                "busy": self._state.job is not None,
            }
        )

    # ---- helpers ----------------------------------------------------------------------------------------

    def _save(self) -> None:
        # Written when something a restart needs changed; the schedule's last check alone is not worth a disk
        # write every tick (a stale one cannot fire a schedule twice: a fire is always saved).
        snapshot = {**asdict(self._state), "last_schedule_check": None}
        if snapshot == self._saved_snapshot:
            return
        self._state.save(self._state_path())
        self._saved_snapshot = snapshot

    def _state_path(self) -> Path:
        return self._require_ctx().state_dir / STATE_FILE

    def _require_ctx(self) -> Context[RetrainSettings]:
        if self._ctx is None:
            raise RuntimeError("service not started")
        return self._ctx

    @staticmethod
    def _require(ledger: Ledger | None) -> Ledger:
        if ledger is None:
            raise RuntimeError("service not started")
        return ledger


def compact(evidence: dict[str, Any]) -> dict[str, Any]:
    """Evidence for the history lists: scalars only, per-feature detail reduced to the drifted names and
    the largest statistic, so that the reported properties stay well inside the twin's size limit."""
    short: dict[str, Any] = {}
    for trigger, found in evidence.items():
        if not isinstance(found, dict):
            continue
        flat = {k: v for k, v in found.items() if not isinstance(v, dict | list)}
        if isinstance(found.get("drifted"), list):
            flat["drifted"] = found["drifted"]
        score = found.get("score")
        if isinstance(score, dict):
            flat["score"] = score.get("value")
            flat["score_threshold"] = score.get("threshold")
        features = found.get("features")
        if isinstance(features, dict) and features:
            valued = {name: f.get("value") for name, f in features.items() if f.get("value") is not None}
            if valued:
                top = max(valued, key=lambda name: valued[name])
                flat["max_feature"] = {"name": top, "value": valued[top]}
        short[trigger] = flat
    return short


def _batch_seen(batch_id: str, attributes: dict[str, Any]) -> BatchSeen:
    return BatchSeen(
        batch_id,
        int(attributes.get("rows") or 0),
        _optional_float(attributes.get("min")),
        _optional_float(attributes.get("max")),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _epoch(value: Any) -> float | None:
    moment = parse_time(value)
    return None if moment is None else moment.timestamp()


def _datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _iso_at(seconds: float) -> str:
    return iso(_datetime(seconds))


def _default_python() -> str:
    return sys.executable


__all__ = ["RetrainService", "compact"]
