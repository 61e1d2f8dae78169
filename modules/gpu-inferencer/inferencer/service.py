"""gpu-inferencer as an IoT Edge module: `batch-ready` in; `scores`, `anomalies` and per-row scores
Parquet out; the model from the twin (or a `model-assigned` message); a local `/score` endpoint.

Exactly once per batch id: the ledger records each batch as `pending` on arrival and `done` (or
`failed`) once its outputs are out. A restart resumes the pending ones, scoring them again from
scratch; their scores file is named by the batch id and replaced atomically, and their messages carry
ids derived from batch and model, so a rescore duplicates nothing. Without a model, batches stay
pending and are scored once one arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from prometheus_client import Gauge, Histogram
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

from .card import SAFE_SEGMENT
from .endpoint import EndpointLimits, ScoreEndpoint
from .fetch import FetchOptions, ModelRequest
from .frames import Frame, FrameError, read_parquet_frame
from .models import ModelManager, Wanted, now_iso
from .outputs import (
    OutputPathError,
    batch_file,
    pick_anomalies,
    scores_relative_path,
    severity,
    summarize,
    write_scores,
)
from .pipeline import Job, MicroBatcher
from .runtime import LoadedModel, RuntimeOptions
from .scoring import FrameToScore, ScoredFrame, Scorer
from .settings import InferencerSettings, ModelRef
from .windows import StagedWindows, WindowState, layout_of

INPUT_BATCHES = "batches"
INPUT_MODEL = "model"
OUTPUT_SCORES = "scores"
OUTPUT_ANOMALIES = "anomalies"
WINDOWS_FILE = "windows.npz"
ASSIGNED_FILE = "assigned-model.json"
RETRY_MAX_S = 30.0


@dataclass
class Scored:
    job: Job
    frame_rows: int
    result: ScoredFrame
    path: str
    summary: dict[str, float | None]
    anomalies: list[dict[str, Any]]
    suppressed: int


@dataclass
class GroupOutcome:
    scored: list[Scored] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class InferencerService:
    def __init__(self) -> None:
        self._ctx: Context[InferencerSettings] | None = None
        self._ledger: Ledger | None = None
        self.scorer = Scorer()
        self.models: ModelManager | None = None
        self._batcher: MicroBatcher | None = None
        self._windows = WindowState()
        self._endpoint: ScoreEndpoint | None = None
        self._endpoint_config: tuple[bool, str, int] | None = None
        self._endpoint_report: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        self._drain_event: asyncio.Event | None = None
        self._inflight: set[str] = set()
        self._twin_model: ModelRef | None = None
        self._assigned: ModelRef | None = None
        self._last_wanted: Wanted | None = None
        self._latency: Histogram | None = None
        self._scoring_time: Histogram | None = None
        self._pending: Gauge | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self, ctx: Context[InferencerSettings]) -> None:
        self._ctx = ctx
        settings = ctx.settings.current
        self._ledger = ctx.open_ledger(("pending", "failed", "done"), terminal=("failed",))
        self._batcher = MicroBatcher()
        self._drain_event = asyncio.Event()
        self._latency = Histogram(
            "edgeloop_inferencer_batch_latency_seconds",
            "From a batch's arrival to its scores being sent",
            registry=ctx.metrics,
        )
        self._scoring_time = Histogram(
            "edgeloop_inferencer_batch_scoring_seconds",
            "Reading, scoring and writing one micro-batch group",
            registry=ctx.metrics,
        )
        self._pending = Gauge("edgeloop_inferencer_pending_batches", "Batches waiting", registry=ctx.metrics)
        self._windows, applied = await asyncio.to_thread(WindowState.load, self._windows_path())

        self.models = ModelManager(
            self.scorer,
            self._report_models,
            on_swap=self._on_swap,
            on_refused=lambda _: ctx.counters.inc("model_refused"),
            logger=ctx.logger,
        )
        twin = await ctx.transport.get_twin()
        self.models.restore_history(twin.get("reported", {}).get("modelsServed"))
        self.models.start()
        self._twin_model = settings.model
        self._assigned = self._load_assigned(settings.model)
        self._request_model(settings)
        ctx.set_health("waiting", self.models.health[1])

        self._resume(set(applied))
        ctx.transport.on_input(INPUT_BATCHES, self._on_batch)
        ctx.transport.on_input(INPUT_MODEL, self._on_model_assigned)
        ctx.transport.on_method("status", self._status)
        ctx.settings.subscribe(self._on_settings)
        await self._configure_endpoint(settings)
        await self._report_models(self.models.reported())
        self._task = asyncio.ensure_future(self._pipeline())

    async def stop(self) -> None:
        """Score what is queued if a model serves (within the runner's grace period); what is left stays
        pending in the ledger for the next start."""
        self._draining = True
        if self._batcher is not None:
            self._batcher.flush_all()
        if self._drain_event is not None:
            self._drain_event.set()
        if self._task is not None:
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                self._task.cancel()
                raise
            finally:
                if self._task.done():
                    self._task = None
        if self._endpoint is not None:
            await self._endpoint.stop()
            self._endpoint = None
        if self.models is not None:
            await self.models.stop()

    # ---- input -------------------------------------------------------------------------------------

    async def _on_batch(self, message: Message) -> None:
        ctx, ledger, batcher = self._require()
        try:
            _, body = parse_message(message, "batch-ready")
            _check_batch(body)
        except EnvelopeError as error:
            ctx.counters.inc("bad_messages")
            ctx.logger.warning("ignored a message on %s: %s", INPUT_BATCHES, error)
            return
        batch_id = str(body["batch_id"])
        item = ledger.get(batch_id)
        if item is not None and item.state != "pending":
            ctx.counters.inc("duplicates")
            ctx.logger.info("batch %s was %s already", batch_id, item.state)
            return
        if batch_id in batcher or batch_id in self._inflight:
            ctx.counters.inc("duplicates")
            return
        ledger.record(batch_id, "pending", {"announcement": body, "arrived": now_iso()})
        self._enqueue(body)

    def _enqueue(self, body: dict[str, Any]) -> None:
        _, _, batcher = self._require()
        rows = body.get("rows")
        announced = rows if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0 else 1
        batcher.put(Job(str(body["batch_id"]), body, announced, batcher.now()))
        self._update_pending()

    def _resume(self, applied: set[str]) -> None:
        ctx, ledger, _ = self._require()
        for item in ledger.items_in_state("pending"):
            if item.key in applied:
                # Its outputs went out and its rows are in the saved history; only `done` was missing.
                ledger.advance(item.key, "done", {"completed": "before a restart"})
                continue
            announcement = item.attributes.get("announcement")
            if isinstance(announcement, dict):
                ctx.logger.info("resuming batch %s", item.key)
                self._enqueue(announcement)

    async def _on_model_assigned(self, message: Message) -> None:
        ctx = self._require()[0]
        try:
            _, body = parse_message(message, "model-assigned")
            ref = ModelRef.model_validate({k: body.get(k) for k in ("name", "version", "uri", "sha256")})
        except (EnvelopeError, ValidationError) as error:
            ctx.counters.inc("bad_messages")
            ctx.logger.warning("ignored a message on %s: %s", INPUT_MODEL, error)
            return
        self._assigned = ref
        await asyncio.to_thread(self._save_assigned, ref, self._twin_model)
        self._request_model(ctx.settings.current)

    async def _on_settings(self, settings: InferencerSettings) -> None:
        if settings.model != self._twin_model:
            # A new assignment in the twin wins over one made earlier by a message.
            self._twin_model = settings.model
            self._assigned = None
            await asyncio.to_thread(self._assigned_path().unlink, missing_ok=True)
        self._request_model(settings)
        await self._configure_endpoint(settings)

    async def _status(self, request: MethodRequest) -> MethodResponse:
        _, ledger, batcher = self._require()
        assert self.models is not None
        return MethodResponse.ok(
            {
                "ledger": ledger.counts(),
                "queued": len(batcher),
                "queued_rows": batcher.rows,
                **self.models.reported(),
                "endpoint": self._endpoint_report,
            }
        )

    # ---- model -------------------------------------------------------------------------------------

    def _request_model(self, settings: InferencerSettings) -> None:
        assert self.models is not None
        ref = self._assigned or settings.model
        if ref is None:
            return
        wanted = Wanted(
            request=ModelRequest(ref.name, ref.version, ref.uri, ref.sha256),
            fetch=FetchOptions(
                registry_root=Path(settings.registry_root),
                cache_root=Path(settings.model_cache_dir),
                timeout_s=settings.fetch_timeout_s,
                max_bytes=settings.max_model_bytes,
            ),
            runtime=RuntimeOptions(
                providers=settings.providers,
                device_id=settings.device_id,
                io_binding=settings.io_binding,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
            ),
            source="message" if self._assigned is not None else "twin",
        )
        if wanted != self._last_wanted:
            self._last_wanted = wanted
            self.models.request(wanted)

    def _on_swap(self, model: LoadedModel, previous: LoadedModel | None) -> None:
        ctx = self._require()[0]
        if previous is not None:
            ctx.counters.inc("model_swaps")

    async def _report_models(self, section: dict[str, Any]) -> None:
        ctx = self._require()[0]
        assert self.models is not None
        serving, detail = self.models.health
        ctx.set_health("healthy" if serving else "waiting", detail)
        try:
            await ctx.transport.patch_reported(section)
        except Exception as error:
            ctx.logger.warning("could not report the model state: %s", error)

    def _assigned_path(self) -> Path:
        return self._require()[0].state_dir / ASSIGNED_FILE

    def _save_assigned(self, ref: ModelRef, twin_model: ModelRef | None) -> None:
        path = self._assigned_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        document = {"model": ref.model_dump(), "twin_model": twin_model.model_dump() if twin_model else None}
        # 0600: a uri may carry a SAS token.
        with os.fdopen(
            os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8"
        ) as handle:
            json.dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)

    def _load_assigned(self, twin_model: ModelRef | None) -> ModelRef | None:
        """The model a message assigned before a restart, unless the twin assigned another since."""
        path = self._assigned_path()
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            twin_then = document.get("twin_model")
            recorded = ModelRef.model_validate(twin_then) if twin_then else None
            if recorded != twin_model:
                return None
            return ModelRef.model_validate(document["model"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            self._require()[0].logger.warning("ignored %s: %s", path, error)
            return None

    # ---- endpoint ----------------------------------------------------------------------------------

    async def _configure_endpoint(self, settings: InferencerSettings) -> None:
        ctx = self._require()[0]
        enabled = settings.endpoint_enabled and settings.api_key is not None
        config = (enabled, settings.endpoint_host, settings.endpoint_port)
        if config == self._endpoint_config:
            return
        self._endpoint_config = config
        if self._endpoint is not None:
            await self._endpoint.stop()
            self._endpoint = None
        if not enabled:
            reason = "disabled" if not settings.endpoint_enabled else "no api_key set"
            self._endpoint_report = {"enabled": False, "reason": reason}
        else:
            assert self.models is not None
            models = self.models
            endpoint = ScoreEndpoint(
                self.scorer,
                self._endpoint_limits,
                ctx.metrics,
                lambda: models.health,
                max_body_bytes=settings.max_request_bytes,
                on_scored=lambda rows: ctx.counters.inc("endpoint_rows", rows),
                logger=ctx.logger,
            )
            try:
                port = await endpoint.start(settings.endpoint_host, settings.endpoint_port)
            except OSError as error:
                ctx.logger.error("the scoring endpoint cannot listen: %s", error)
                self._endpoint_report = {"enabled": False, "reason": f"cannot listen: {error}"}
            else:
                self._endpoint = endpoint
                self._endpoint_report = {"enabled": True, "host": settings.endpoint_host, "port": port}
                ctx.logger.info("scoring endpoint at http://%s:%d/score", settings.endpoint_host, port)
        try:
            await ctx.transport.patch_reported({"endpoint": self._endpoint_report})
        except Exception as error:
            ctx.logger.warning("could not report the endpoint: %s", error)

    def _endpoint_limits(self) -> EndpointLimits:
        settings = self._require()[0].settings.current
        return EndpointLimits(settings.api_key, settings.max_request_rows, settings.max_batch_rows)

    # ---- scoring -----------------------------------------------------------------------------------

    async def _pipeline(self) -> None:
        ctx, _, batcher = self._require()
        assert self.models is not None
        assert self.models.ready is not None
        assert self._drain_event is not None
        failures = 0
        while True:
            model = self.scorer.model
            if model is None:
                if self._draining:
                    return
                waits = [
                    asyncio.ensure_future(self.models.ready.wait()),
                    asyncio.ensure_future(self._drain_event.wait()),
                ]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
                continue
            settings = ctx.settings.current
            group = await batcher.next_group(settings.max_batch_rows, settings.max_wait_ms / 1000)
            if not group:
                return
            model = self.scorer.model  # taken once: the whole group is scored by this version
            assert model is not None
            try:
                await self._score_group(group, model, settings)
                failures = 0
            except Exception:
                failures += 1
                delay = min(RETRY_MAX_S, 0.5 * 2**failures)
                ctx.logger.exception("a micro-batch could not be finished; retrying in %.1f s", delay)
                batcher.put_back(group)
                if self._draining:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drain_event.wait(), delay)  # a stop ends the wait
            finally:
                self._inflight.difference_update(job.batch_id for job in group)
                self._update_pending()

    async def _score_group(self, group: list[Job], model: LoadedModel, settings: InferencerSettings) -> None:
        ctx, ledger, _ = self._require()
        assert self._scoring_time is not None
        assert self._latency is not None
        self._inflight.update(job.batch_id for job in group)
        started = time.monotonic()
        history: StagedWindows | None = None
        if model.card.window > 1:
            if self._windows.adopt(layout_of(model.card)):
                ctx.logger.warning("window history dropped: model %s reads other columns", model.version)
            history = self._windows.stage()
        outcome = await asyncio.to_thread(self._work, group, model, settings, history)
        for scored in outcome.scored:
            await self._announce(scored, model, len(group), sum(job.rows for job in group))
        if history is not None:
            history.commit()
            applied = [scored.job.batch_id for scored in outcome.scored]
            await asyncio.to_thread(self._windows.save, self._windows_path(), applied)
        with ledger.batch():
            for scored in outcome.scored:
                ledger.advance(
                    scored.job.batch_id,
                    "done",
                    {
                        "model": {"name": model.name, "version": model.version},
                        "rows_scored": len(scored.result.rows),
                        "anomalies": int(scored.result.anomalous.sum()),
                        "path": scored.path,
                        "scored_at": now_iso(),
                    },
                )
            for batch_id, reason in outcome.failed.items():
                ledger.advance(batch_id, "failed", {"reason": reason, "model_version": model.version})
        elapsed = time.monotonic() - started
        finished = time.monotonic()
        for scored in outcome.scored:
            self._scoring_time.observe(elapsed)
            self._latency.observe(max(0.0, finished - scored.job.arrived))
        for batch_id, reason in outcome.failed.items():
            ctx.counters.inc("batches_failed")
            ctx.logger.warning("batch %s not scored: %s", batch_id, reason)
        if outcome.failed:
            last = next(reversed(outcome.failed.items()))
            with contextlib.suppress(Exception):
                await ctx.transport.patch_reported(
                    {"lastBatchError": {"batch_id": last[0], "reason": last[1], "at": now_iso()}}
                )

    def _work(
        self,
        group: list[Job],
        model: LoadedModel,
        settings: InferencerSettings,
        history: StagedWindows | None,
    ) -> GroupOutcome:
        """Runs in a worker thread: read, score and write one group."""
        outcome = GroupOutcome()
        cloud = Path(settings.cloud_share_dir)
        card = model.card
        readable: list[tuple[Job, Frame, pa.Table, str]] = []
        for job in group:
            body = job.body
            try:
                relative = scores_relative_path(
                    settings.scores_dir, str(body["dataset"]), str(body["date"]), job.batch_id
                )
                frame, keys = read_parquet_frame(batch_file(cloud, str(body["path"])), card)
            except (FrameError, OutputPathError) as error:
                outcome.failed[job.batch_id] = str(error)
                continue
            readable.append((job, frame, keys, relative))
        if not readable:
            return outcome
        results = self.scorer.score(
            [FrameToScore(frame, str(job.body["dataset"])) for job, frame, _, _ in readable],
            model,
            history,
            settings.max_batch_rows,
        )
        for (job, frame, keys, relative), result in zip(readable, results, strict=True):
            write_scores(cloud, relative, keys, result, model.name, model.version)
            chosen, suppressed = pick_anomalies(result, settings.max_anomaly_messages)
            devices = keys.column("device")
            stamps = keys.column("timestamp")
            anomalies = [
                {
                    "device": devices[anomaly.row].as_py(),
                    "timestamp": _iso(stamps[anomaly.row].as_py()),
                    "row": anomaly.row,
                    "score": anomaly.score,
                }
                for anomaly in chosen
            ]
            outcome.scored.append(
                Scored(job, frame.rows, result, relative, summarize(result.scores), anomalies, suppressed)
            )
        return outcome

    async def _announce(
        self, scored: Scored, model: LoadedModel, group_batches: int, group_rows: int
    ) -> None:
        ctx = self._require()[0]
        body = scored.job.body
        batch_id, dataset = scored.job.batch_id, str(body["dataset"])
        threshold = model.card.threshold
        model_info = {"name": model.name, "version": model.version}
        for anomaly in scored.anomalies:
            level = severity(anomaly["score"], threshold)
            message = make_message(
                "anomaly",
                1,
                {
                    "batch_id": batch_id,
                    "dataset": dataset,
                    "device": anomaly["device"],
                    "timestamp": anomaly["timestamp"],
                    "score": anomaly["score"],
                    "threshold": threshold,
                    "model": model_info,
                    "model_version": model.version,
                    "severity": level,
                },
                {"severity": level, "dataset": dataset, "model_version": model.version},
                message_id=json_content_id(["anomaly", batch_id, anomaly["row"], model.name, model.version]),
            )
            await ctx.transport.send(OUTPUT_ANOMALIES, message)
        total_anomalies = int(scored.result.anomalous.sum())
        rows_scored = len(scored.result.rows)
        message = make_message(
            "scores",
            1,
            {
                "batch_id": batch_id,
                "dataset": dataset,
                "source_file_id": body.get("source_file_id"),
                "date": body.get("date"),
                "model": model_info,
                "rows": rows_scored,
                "rows_in": scored.frame_rows,
                "rows_awaiting_history": scored.result.waiting,
                "rows_invalid": scored.result.invalid,
                "anomalies": total_anomalies,
                "anomalies_sent": len(scored.anomalies),
                "anomalies_suppressed": scored.suppressed,
                "threshold": threshold,
                "score_summary": scored.summary,
                "path": scored.path,
                "micro_batch": {"batches": group_batches, "rows": group_rows},
                "scored_at": now_iso(),
            },
            {"dataset": dataset, "model_version": model.version, "anomalies": total_anomalies},
            message_id=json_content_id(["scores", batch_id, model.name, model.version]),
        )
        await ctx.transport.send(OUTPUT_SCORES, message)
        ctx.counters.inc("batches_scored")
        ctx.counters.inc("rows_scored", rows_scored)
        ctx.counters.inc("anomalies", total_anomalies)
        if scored.suppressed:
            ctx.counters.inc("anomalies_suppressed", scored.suppressed)

    # ---- helpers -----------------------------------------------------------------------------------

    def _windows_path(self) -> Path:
        return self._require()[0].state_dir / WINDOWS_FILE

    def _update_pending(self) -> None:
        if self._pending is not None and self._batcher is not None:
            self._pending.set(len(self._batcher) + len(self._inflight))

    def _require(self) -> tuple[Context[InferencerSettings], Ledger, MicroBatcher]:
        if self._ctx is None or self._ledger is None or self._batcher is None:
            raise RuntimeError("service not started")
        return self._ctx, self._ledger, self._batcher


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _check_batch(body: dict[str, Any]) -> None:
    for key in ("batch_id", "dataset"):
        value = body.get(key)
        if not isinstance(value, str) or not SAFE_SEGMENT.match(value):
            raise EnvelopeError(f"batch-ready without a usable {key}")
    if not isinstance(body.get("path"), str) or not body["path"]:
        raise EnvelopeError("batch-ready without a path")
    if not isinstance(body.get("date"), str):
        raise EnvelopeError("batch-ready without a date")


__all__ = ["InferencerService"]
