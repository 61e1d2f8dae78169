"""retrain-trigger as a module, through edgekit's Runner and InMemoryTransport: messages in, decisions
reported, retrain-request and model-assigned out. Time is a fake clock; evaluations are called directly
(the tick is set to an hour so it never interferes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit import InMemoryTransport, Message, Runner, make_message
from retrain import RetrainService, RetrainSettings, load_card
from tests.unit.retrain.retrain_models import EPOCH, register, write_model_dir, write_rows, write_scores

HERE = Path(__file__).resolve().parent
MODELS_SCRIPT = str(HERE / "retrain_models.py")
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC).timestamp()
SERVING = {"name": "sensor-ae", "version": "1", "uri": "registry://sensor-ae/1"}
QUIET: dict[str, Any] = {
    "evaluate_interval_s": 3600,
    "debounce_s": 0,
    "cooldown_minutes": 10,
    "drift": {"min_rows": 200, "window_rows": 2000},
    "volume": {"enabled": False},
}


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.cloud = tmp_path / "cloud"
        self.registry = tmp_path / "registry"
        self.state = tmp_path / "state"
        self.clock = FakeClock()
        self.cloud.mkdir()
        write_model_dir(tmp_path / "trained-1", threshold=4.0)
        register(tmp_path / "trained-1", self.registry, "sensor-ae")
        self.rng = np.random.default_rng(42)
        self.batches = 0

    @asynccontextmanager
    async def running(
        self, desired: dict[str, Any]
    ) -> AsyncIterator[tuple[InMemoryTransport, RetrainService]]:
        transport = InMemoryTransport(desired=desired)
        service = RetrainService(clock=self.clock)
        runner: Runner[RetrainSettings] = Runner(
            service,
            RetrainSettings,
            module="retrain-trigger",
            env_prefix="RETRAIN_",
            environ={
                "EDGEKIT_STATE_DIR": str(self.state),
                "EDGEKIT_METRICS_PORT": "0",
                "RETRAIN_CLOUD_SHARE_DIR": str(self.cloud),
                "RETRAIN_REGISTRY_ROOT": str(self.registry),
                "RETRAIN_MODEL": json.dumps(SERVING),
            },
            transport_factory=lambda: transport,
        )
        await runner.start()
        try:
            yield transport, service
        finally:
            await runner.stop()

    def batch(self, values: np.ndarray[Any, Any], start: datetime, dataset: str = "sensors") -> Message:
        self.batches += 1
        batch_id = f"batch-{self.batches:04d}"
        relative = f"{dataset}/date={start.date()}/{batch_id}.parquet"
        time_range = write_rows(self.cloud / relative, values, start=start, devices=("d1", "d2"))
        body = {
            "batch_id": batch_id,
            "dataset": dataset,
            "path": relative,
            "rows": int(values.shape[0]),
            "time_range": time_range,
        }
        return make_message("batch-ready", 1, body, message_id=batch_id)

    def scores(self, scores: np.ndarray[Any, Any], version: str = "1", dataset: str = "sensors") -> Message:
        self.batches += 1
        batch_id = f"scored-{self.batches:04d}"
        relative = f"scores/{dataset}/date=2026-01-10/{batch_id}.parquet"
        start = EPOCH + timedelta(days=9, seconds=self.batches * 10_000)
        write_scores(self.cloud / relative, scores, start=start, name="sensor-ae", version=version)
        body = {
            "batch_id": batch_id,
            "dataset": dataset,
            "model": {"name": "sensor-ae", "version": version},
            "rows": int(scores.shape[0]),
            "anomalies": 0,
            "score_summary": {},
            "path": relative,
        }
        return make_message("scores", 1, body)

    def normal_scores(self, n: int, shift: float = 0.0) -> np.ndarray[Any, Any]:
        return np.asarray(((self.rng.standard_normal((n, 2)) + shift) ** 2).mean(axis=1))


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """For what the runner reports from its own task (health)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def bodies(transport: InMemoryTransport, output: str) -> list[dict[str, Any]]:
    return [message.json() for message in transport.sent[output]]


async def test_the_direct_method_sends_a_request_and_reports_it(harness: Harness) -> None:
    async with harness.running(QUIET) as (transport, _):
        response = await transport.call_method("retrain", {"reason": "new sensor fitted"})
        assert response.status == 200
        assert response.payload["triggered"] is True
        [request] = bodies(transport, "retrain")
        assert request["schema"] == "edgeloop.retrain-request/1"
        assert request["reason"] == "manual"
        assert request["detail"] == "new sensor fitted"
        assert request["request_id"] == response.payload["request_id"]
        assert request["model"] == {"name": "sensor-ae", "version": "1"}
        assert request["evidence"]["manual"] == {"reason": "new sensor fitted"}
        assert transport.sent["retrain"][0].properties["reason"] == "manual"
        reported = transport.reported
        assert reported["retrainRequests"][0]["request_id"] == request["request_id"]
        assert reported["retrainRequests"][0]["reason"] == "manual"
        assert reported["lastDecision"]["triggered"] is True
        # A person is not held back by the cooldown.
        assert (await transport.call_method("retrain", {"reason": "again"})).status == 200
        assert len(transport.sent["retrain"]) == 2
        bad = await transport.call_method("retrain", {"reason": 5})
        assert bad.status == 400
        status = await transport.call_method("status")
        assert status.payload["serving"]["version"] == "1"


async def test_score_drift_requests_once_per_cooldown(harness: Harness) -> None:
    async with harness.running(QUIET) as (transport, service):
        await transport.deliver("scores", harness.scores(harness.normal_scores(600, shift=1.5)))
        # Scores of another version say nothing about this card's baseline.
        await transport.deliver("scores", harness.scores(harness.normal_scores(600), version="9"))
        first, request_id = await service.evaluate()
        assert first.triggered
        assert first.reason is not None
        assert first.reason.value == "drift"
        evidence = first.evidence["drift"]
        assert evidence["score_rows"] == 600
        assert "score" in evidence["drifted"]
        assert evidence["score"]["value"] > evidence["score"]["threshold"] == 0.2
        [request] = bodies(transport, "retrain")
        assert request["request_id"] == request_id
        assert request["reason"] == "drift"

        harness.clock.advance(60)
        held, _ = await service.evaluate()
        assert not held.triggered
        assert held.suppressed is not None
        assert held.suppressed.value == "cooldown"
        decisions = transport.reported["decisions"]
        assert [d["suppressed"] for d in decisions] == [None, "cooldown"]
        assert decisions[-1]["evidence"]["drift"]["score"] == pytest.approx(
            evidence["score"]["value"], abs=1e-6
        )
        assert transport.reported["lastDecision"]["evidence"]["drift"]["score"]["rows"] == 600

        # The same verdict again is no news: not recorded, not reported, the twin left alone.
        patches = len(transport.reported_patches)
        harness.clock.advance(1)
        repeat, _ = await service.evaluate()
        assert repeat.suppressed is not None
        assert repeat.suppressed.value == "cooldown"
        assert len(transport.reported["decisions"]) == 2
        assert len(transport.reported_patches) == patches
        status = await transport.call_method("status")
        assert status.payload["lastEvaluation"]["suppressed"] == "cooldown"

        harness.clock.advance(10 * 60)
        again, _ = await service.evaluate()
        assert again.triggered
        assert len(transport.sent["retrain"]) == 2
        assert len(transport.reported["retrainRequests"]) == 2
        assert service._require_ctx().counters.get("scores_other_model") == 1


async def test_scores_like_the_baseline_trigger_nothing(harness: Harness) -> None:
    async with harness.running(QUIET) as (transport, service):
        decision, _ = await service.evaluate()
        assert not decision.triggered
        assert decision.evidence["drift"]["skipped"] == "fewer than 200 rows in the window"
        await transport.deliver("scores", harness.scores(harness.normal_scores(1500)))
        decision, _ = await service.evaluate()
        assert not decision.triggered
        assert decision.reason is None
        assert decision.evidence["drift"]["score"]["value"] < 0.1
        assert transport.sent["retrain"] == []
        assert transport.reported["lastDecision"]["detail"] == "nothing fired"


async def test_feature_drift_and_debounce(harness: Harness) -> None:
    desired = {**QUIET, "debounce_s": 120, "drift": {"min_rows": 200, "window_rows": 2000, "statistic": "ks"}}
    async with harness.running(desired) as (transport, service):
        values = harness.rng.standard_normal((800, 2))
        values[:, 1] = values[:, 1] * 0.3 + 2.5  # vibration moved
        await transport.deliver("batches", harness.batch(values, EPOCH + timedelta(days=2)))
        first, _ = await service.evaluate()
        assert not first.triggered
        assert first.suppressed is not None
        assert first.suppressed.value == "debounce"
        assert first.evidence["drift"]["drifted"] == ["vibration"]
        assert first.evidence["drift"]["features"]["temperature"]["drifted"] is False
        harness.clock.advance(120)
        second, _ = await service.evaluate()
        assert second.triggered
        assert second.reason is not None
        assert second.reason.value == "drift"
        assert bodies(transport, "retrain")[0]["data_window"]["rows"] == 800


async def test_new_data_volume_counts_batches_after_the_training_data_once(harness: Harness) -> None:
    desired = {**QUIET, "drift": {"enabled": False}, "volume": {"new_rows": 2000}}
    async with harness.running(desired) as (transport, service):
        old = harness.batch(harness.rng.standard_normal((5000, 2)), EPOCH - timedelta(days=5))
        new = harness.batch(harness.rng.standard_normal((600, 2)), EPOCH + timedelta(days=1))
        await transport.deliver("batches", old)
        await transport.deliver("batches", new)
        await transport.deliver("batches", new)  # at least once: a redelivery
        other = harness.batch(harness.rng.standard_normal((900, 2)), EPOCH + timedelta(days=1), dataset="x")
        await transport.deliver("batches", other)
        decision, _ = await service.evaluate()
        volume = decision.evidence["volume"]
        assert not decision.triggered
        assert volume["new_rows"] == 1500
        assert volume["batches"] == 2
        assert volume["since"] == "2026-01-01T00:00:00Z"
        await transport.deliver("batches", harness.batch(harness.rng.standard_normal((10, 2)), EPOCH))
        decision, _ = await service.evaluate()
        assert decision.evidence["volume"]["new_rows"] == 1500  # starts at the training max: not after it
        desired_one_dataset = {"dataset": "sensors"}
        await transport.set_desired(desired_one_dataset)
        await transport.deliver("batches", harness.batch(harness.rng.standard_normal((10, 2)), EPOCH, "y"))
        assert service._require_ctx().counters.get("other_datasets") == 1


async def test_volume_reaching_the_threshold_requests_a_retrain(harness: Harness) -> None:
    desired = {**QUIET, "drift": {"enabled": False}, "volume": {"new_rows": 1000}}
    async with harness.running(desired) as (transport, service):
        for day in (1, 2):
            await transport.deliver(
                "batches", harness.batch(harness.rng.standard_normal((600, 2)), EPOCH + timedelta(days=day))
            )
        decision, _ = await service.evaluate()
        assert decision.triggered
        assert decision.reason is not None
        assert decision.reason.value == "volume"
        window = bodies(transport, "retrain")[0]["data_window"]
        assert window["new_rows"] == 1200
        assert window["new_since"] == "2026-01-01T00:00:00Z"
        assert window["from"] == "2026-01-02T00:00:00Z"


async def test_a_schedule_fires_at_its_time(harness: Harness) -> None:
    harness.clock.now = datetime(2026, 1, 10, 2, 59, tzinfo=UTC).timestamp()
    desired = {**QUIET, "drift": {"enabled": False}, "schedule": {"cron": "0 3 * * *"}}
    async with harness.running(desired) as (transport, service):
        before, _ = await service.evaluate()
        assert not before.triggered
        assert before.evidence["schedule"]["next"] == "2026-01-10T03:00:00Z"
        harness.clock.advance(90)
        at, _ = await service.evaluate()
        assert at.triggered
        assert at.reason is not None
        assert at.reason.value == "schedule"
        assert at.evidence["schedule"]["fire_time"] == "2026-01-10T03:00:00Z"
        harness.clock.advance(60)
        after, _ = await service.evaluate()
        assert not after.triggered
        assert len(transport.sent["retrain"]) == 1


async def test_the_model_input_is_followed_and_a_bad_reference_reported(harness: Harness) -> None:
    write_model_dir(harness.root / "trained-2", threshold=5.0)
    version_2 = register(harness.root / "trained-2", harness.registry, "sensor-ae")
    async with harness.running(QUIET) as (transport, _):
        assert transport.reported["serving"]["version"] == "1"
        assigned = {k: version_2[k] for k in ("name", "version", "uri")}
        await transport.deliver("model", make_message("model-assigned", 1, assigned))
        assert transport.reported["serving"]["version"] == "2"
        assert transport.reported["serving"]["source"] == "message"
        assert transport.reported["serving"]["threshold"] == 5.0
        missing = {"name": "sensor-ae", "version": "7", "uri": "registry://sensor-ae/7"}
        await transport.deliver("model", make_message("model-assigned", 1, missing))
        assert transport.reported["serving"]["version"] == "2"
        assert "sensor-ae/7" in transport.reported["modelError"]
        await eventually(lambda: transport.reported["health"]["state"] == "degraded")


def local_backend(scale: float, *, exit_code: int | None = None) -> dict[str, Any]:
    train: list[str] = [
        "{python}", MODELS_SCRIPT, "train", "--data", "{data}", "--out", "{out}", "--name", "{name}",
        "--seed", "{seed}", "--scale", str(scale), "--threshold", "4.0",
    ]  # fmt: skip
    if exit_code is not None:
        train = ["{python}", "-c", f"import sys; print('boom'); sys.exit({exit_code})"]
    register_command = [
        "{python}", MODELS_SCRIPT, "register", "{model_dir}", "--root", "{registry_root}", "--name", "{name}",
    ]  # fmt: skip
    return {
        **QUIET,
        "dataset": "sensors",
        "backend": "local",
        "local": {"command": train, "register_command": register_command, "timeout_s": 60},
        "promotion": {"metric": "anomaly_rate", "tolerance": 0.0, "eval_rows": 3000},
    }


async def finish_job(service: RetrainService, transport: InMemoryTransport) -> None:
    for _ in range(300):
        await service.evaluate()
        if transport.reported.get("job") is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the training job did not finish")


async def test_a_local_job_is_registered_compared_and_promoted(harness: Harness) -> None:
    async with harness.running(local_backend(scale=1.0)) as (transport, service):
        rows = harness.rng.standard_normal((3000, 2))
        await transport.deliver("batches", harness.batch(rows, EPOCH + timedelta(days=3)))
        response = await transport.call_method("retrain", {"reason": "monthly refresh"})
        assert response.status == 200
        job = transport.reported["job"]
        assert job["request_id"] == response.payload["request_id"]
        assert job["name"] == "sensor-ae"
        busy = await transport.call_method("retrain", {"reason": "impatient"})
        assert busy.status == 409
        assert busy.payload["decision"]["suppressed"] == "in_flight"
        await finish_job(service, transport)

        assert transport.reported["lastJob"]["state"] == "succeeded"
        assert "training on " + str(harness.cloud / "sensors") in transport.reported["lastJob"]["output_tail"]
        candidate = transport.reported["lastCandidate"]
        assert candidate["promoted"] is True
        assert candidate["version"] == "2"
        assert candidate["metrics"]["candidate"]["rows"] == 3000
        assert candidate["metrics"]["rule"]["candidate"] == candidate["metrics"]["rule"]["serving"]
        [assigned] = bodies(transport, "model")
        card = load_card(harness.registry / "sensor-ae" / "2")
        assert assigned == {
            "schema": "edgeloop.model-assigned/1",
            "name": "sensor-ae",
            "version": "2",
            "uri": "registry://sensor-ae/2",
            "sha256": card.model_sha256,
        }
        [promotion] = transport.reported["promotions"]
        assert promotion["version"] == "2"
        assert promotion["previous"] == {"name": "sensor-ae", "version": "1"}
        assert transport.reported["serving"]["version"] == "2"
        assert transport.reported["serving"]["source"] == "promotion"


async def test_a_worse_candidate_is_rejected_and_not_served(harness: Harness) -> None:
    async with harness.running(local_backend(scale=2.0)) as (transport, service):
        rows = harness.rng.standard_normal((3000, 2))
        await transport.deliver("batches", harness.batch(rows, EPOCH + timedelta(days=3)))
        assert (await transport.call_method("retrain", {"reason": "try"})).status == 200
        await finish_job(service, transport)
        candidate = transport.reported["lastCandidate"]
        assert candidate["promoted"] is False
        assert candidate["version"] == "2"
        assert "worse than the serving model" in candidate["reason"]
        rule = candidate["metrics"]["rule"]
        assert rule["candidate"] > rule["serving"]
        assert transport.sent["model"] == []
        assert transport.reported["promotions"] == []
        assert transport.reported["serving"]["version"] == "1"


async def test_a_failed_job_is_reported_without_a_candidate(harness: Harness) -> None:
    async with harness.running(local_backend(scale=1.0, exit_code=2)) as (transport, service):
        assert transport.reported.get("busy") is False
        assert (await transport.call_method("retrain", {"reason": "try"})).status == 200
        # While the job runs the module says it is busy (edgesim's --until-idle waits for it).
        assert transport.reported.get("busy") is True
        await finish_job(service, transport)
        assert transport.reported.get("busy") is False
        last_job = transport.reported["lastJob"]
        assert last_job["state"] == "failed"
        assert last_job["exit_code"] == 2
        assert last_job["output_tail"] == ["boom"]
        assert transport.reported.get("lastCandidate") is None
        # The job is over: a new request may start another.
        assert (await transport.call_method("retrain", {"reason": "again"})).status == 200


async def test_an_unavailable_backend_is_rejected_and_the_last_good_settings_stay(harness: Harness) -> None:
    async with harness.running(QUIET) as (transport, service):
        await transport.set_desired({"backend": "azureml"})
        settings = transport.reported["settings"]
        assert settings["status"] == "rejected"
        assert "azureml.data" in settings["reason"]
        await transport.set_desired({"backend": "local", "local": {"command": ["{python}", "{nope}"]}})
        settings = transport.reported["settings"]
        assert settings["status"] == "rejected"
        assert "unknown placeholder {nope}" in settings["reason"]
        assert service._require_ctx().settings.current.backend == "none"


async def test_the_cooldown_and_history_survive_a_restart(harness: Harness) -> None:
    async with harness.running(QUIET) as (transport, service):
        await transport.deliver("scores", harness.scores(harness.normal_scores(600, shift=1.5)))
        decision, request_id = await service.evaluate()
        assert decision.triggered
    harness.clock.advance(120)
    async with harness.running(QUIET) as (transport, service):
        assert transport.reported["retrainRequests"][0]["request_id"] == request_id
        await transport.deliver("scores", harness.scores(harness.normal_scores(600, shift=1.5)))
        held, _ = await service.evaluate()
        assert held.suppressed is not None
        assert held.suppressed.value == "cooldown"
        status = await transport.call_method("status")
        assert status.payload["cooldownLeftS"] == pytest.approx(480.0)


async def test_a_damaged_state_file_is_moved_aside(harness: Harness) -> None:
    harness.state.mkdir(parents=True)
    (harness.state / "retrain-state.json").write_text("{not json")
    async with harness.running(QUIET) as (transport, _):
        assert transport.reported["status"] == "running"
        assert (harness.state / "retrain-state.json.damaged").read_text() == "{not json"
        assert (await transport.call_method("retrain", {"reason": "after repair"})).status == 200
