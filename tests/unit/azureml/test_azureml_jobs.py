"""The training command job, status polling and result download, at the HTTP boundary."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from ml.azureml import jobs
from ml.azureml.cli import add_subcommands, run
from ml.azureml.config import AzureMLError, AzureMLSettings, load_settings
from ml.azureml.workspace import Workspace, connect
from ml.card import read_card
from tests.unit.azureml.azureml_fakes import (
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    WS_PATH,
    FakeWorkspace,
    FixedTokenCredential,
    write_model_dir,
)

pytestmark = pytest.mark.timeout(60)

DATA = "azureml://datastores/cloudshare/paths/sensors/"


def test_submit_sends_the_training_command_unchanged_on_the_configured_compute(
    workspace: Workspace, fake: FakeWorkspace, tmp_path: Path
) -> None:
    fake.add_code_version()
    job = jobs.TrainJob(data=DATA, train_args=["--window", "4", "--epochs", "30"], name="edgeloop-train-t1")

    created = jobs.submit(workspace, job, jobs.stage_code(tmp_path / "code"))

    assert created.name == "edgeloop-train-t1"
    (put,) = fake.transport.find("PUT", re.escape(WS_PATH) + "/jobs/edgeloop-train-t1")
    assert "api-version" in put.query
    body = put.json()["properties"]
    assert body["jobType"] == "Command"
    assert body["command"] == (
        "python -m ml train --data ${{inputs.data}} --out ${{outputs.model}} --window 4 --epochs 30"
    )
    assert body["computeId"] == f"{WS_PATH}/computes/edge-cluster"
    assert body["environmentId"] == f"{WS_PATH}/environments/edgeloop-train/versions/7"
    assert body["experimentName"] == "edgeloop-train"
    assert body["codeId"] == f"{WS_PATH}/codes/code-0001/versions/1"
    assert body["inputs"] == {"data": {"jobInputType": "uri_folder", "uri": DATA}}
    assert body["outputs"]["model"]["jobOutputType"] == "uri_folder"
    assert body["outputs"]["model"]["uri"] == (
        "azureml://datastores/workspaceblobstore/paths/edgeloop/jobs/edgeloop-train-t1/model/"
    )
    assert body["tags"]["edgeloop.kind"] == "train"
    assert fake.transport.unrouted == []


def test_the_code_snapshot_is_the_ml_package_and_hashes_the_same_each_time(
    workspace: Workspace, fake: FakeWorkspace, tmp_path: Path
) -> None:
    fake.add_code_version()
    first = jobs.stage_code(tmp_path / "a")
    second = jobs.stage_code(tmp_path / "b")
    assert (first / "ml" / "__main__.py").is_file()
    assert (first / "ml" / "train.py").is_file()
    assert not list(first.rglob("__pycache__"))

    jobs.submit(workspace, jobs.TrainJob(data=DATA, name="j1"), first)
    jobs.submit(workspace, jobs.TrainJob(data=DATA, name="j2"), second)

    lookups = fake.transport.find("GET", re.escape(WS_PATH) + r"/codes/[^/]+/versions")
    hashes = [request.query["hash"][0] for request in lookups]
    assert len(hashes) == 2
    assert hashes[0] == hashes[1]  # Azure ML finds the snapshot it has instead of taking a new upload


def test_flags_the_job_sets_itself_are_refused() -> None:
    with pytest.raises(AzureMLError):
        jobs.training_command(["--out", "/tmp/x"])
    with pytest.raises(AzureMLError):
        jobs.training_command(["--data=/elsewhere"])
    assert jobs.training_command(["--name", "pump ae"]).endswith("--name 'pump ae'")


def test_environment_names_resolve_to_their_latest_version_unless_pinned() -> None:
    assert jobs.environment_reference("edgeloop-train") == "edgeloop-train@latest"
    assert jobs.environment_reference("edgeloop-train:3") == "edgeloop-train:3"
    assert jobs.environment_reference("azureml:edgeloop-train:3") == "azureml:edgeloop-train:3"


def test_submit_needs_compute_and_environment(fake: FakeWorkspace, tmp_path: Path) -> None:
    bare = AzureMLSettings(subscription_id="s", resource_group="r", workspace="w")
    workspace = connect(bare, credential=FixedTokenCredential(), transport=fake.transport)

    with pytest.raises(AzureMLError, match="AZUREML_COMPUTE"):
        jobs.submit(workspace, jobs.TrainJob(data=DATA), jobs.stage_code(tmp_path / "code"))
    assert fake.transport.requests == []


def test_wait_polls_until_a_terminal_state(workspace: Workspace, fake: FakeWorkspace, tmp_path: Path) -> None:
    fake.add_code_version()
    jobs.submit(workspace, jobs.TrainJob(data=DATA, name="j1"), jobs.stage_code(tmp_path / "code"))
    fake.job_states["j1"] = ["Queued", "Queued", "Running", "Completed"]
    slept: list[float] = []
    heard: list[str] = []

    final = jobs.wait(workspace, "j1", poll_s=5, sleep=slept.append, on_status=heard.append)

    assert final == "Completed"
    assert heard == ["Queued", "Running", "Completed"]
    assert slept == [5, 5, 5]
    assert len(fake.transport.find("GET", re.escape(WS_PATH) + "/jobs/j1")) == 4


def test_wait_gives_up_at_its_deadline(workspace: Workspace, fake: FakeWorkspace, tmp_path: Path) -> None:
    fake.add_code_version()
    jobs.submit(workspace, jobs.TrainJob(data=DATA, name="j1"), jobs.stage_code(tmp_path / "code"))
    fake.job_states["j1"] = ["Running"]
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(AzureMLError, match="still Running"):
        jobs.wait(workspace, "j1", poll_s=10, timeout_s=25, sleep=sleep, clock=lambda: now[0])
    assert now[0] == 30


def _finished_job_with_output(workspace: Workspace, fake: FakeWorkspace, tmp_path: Path, state: str) -> Path:
    fake.add_code_version()
    jobs.submit(workspace, jobs.TrainJob(data=DATA, name="j1"), jobs.stage_code(tmp_path / "code"))
    fake.job_states["j1"] = [state]
    trained = write_model_dir(tmp_path / "trained")
    for file in ("model.onnx", "model.json"):
        fake.blobs[f"edgeloop/jobs/j1/model/{file}"] = (trained / file).read_bytes()
    fake.blobs["edgeloop/jobs/j10/model/model.onnx"] = b"another job's output, same prefix"
    return trained


def test_download_result_fetches_the_model_dir_and_records_the_job(
    workspace: Workspace, fake: FakeWorkspace, tmp_path: Path
) -> None:
    trained = _finished_job_with_output(workspace, fake, tmp_path, "Completed")

    out = jobs.download_result(workspace, "j1", tmp_path / "out")

    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert (out / "model.onnx").read_bytes() == (trained / "model.onnx").read_bytes()
    assert read_card(out).lineage["job_id"] == "j1"  # type: ignore[index]
    (listing,) = [r for r in fake.blob_requests() if r.query.get("comp") == ["list"]]
    assert listing.query["prefix"] == ["edgeloop/jobs/j1/model/"]


def test_a_job_that_did_not_complete_has_nothing_to_download(
    workspace: Workspace, fake: FakeWorkspace, tmp_path: Path
) -> None:
    _finished_job_with_output(workspace, fake, tmp_path, "Failed")

    with pytest.raises(AzureMLError, match="Failed"):
        jobs.download_result(workspace, "j1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_settings_come_from_dotenv_then_environment_then_flags(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('AZUREML_SUBSCRIPTION_ID="sub-from-file"\nAZUREML_COMPUTE=""\n', encoding="utf-8")
    environ = {"AZUREML_RESOURCE_GROUP": "rg-env", "AZUREML_WORKSPACE": "ws-env", "AZUREML_COMPUTE": "c"}

    settings = load_settings(env_file, environ, workspace="ws-flag")

    assert settings.subscription_id == "sub-from-file"
    assert settings.resource_group == "rg-env"
    assert settings.workspace == "ws-flag"
    assert settings.compute is None  # the .env's empty value stands, as the manifest generator reads it
    assert settings.datastore == "workspaceblobstore"
    with pytest.raises(AzureMLError, match="AZUREML_WORKSPACE"):
        load_settings(None, {"AZUREML_SUBSCRIPTION_ID": "s", "AZUREML_RESOURCE_GROUP": "r"})


def test_the_cli_registers_and_shows_through_the_same_workspace(
    fake: FakeWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"AZUREML_SUBSCRIPTION_ID={SUBSCRIPTION}\nAZUREML_RESOURCE_GROUP={RESOURCE_GROUP}\n"
        f"AZUREML_WORKSPACE={WORKSPACE}\n",
        encoding="utf-8",
    )
    trained = write_model_dir(tmp_path / "trained")
    made: list[AzureMLSettings] = []

    def factory(settings: AzureMLSettings) -> Workspace:
        made.append(settings)
        return connect(settings, credential=FixedTokenCredential(), transport=fake.transport)

    common = ["azureml", "--env-file", str(env_file), "--cache-dir", str(tmp_path / "cache")]
    registered = run(parser.parse_args([*common, "register", str(trained)]), workspace_factory=factory)
    shown = run(parser.parse_args([*common, "show", "sensor-ae"]), workspace_factory=factory)

    assert registered["version"] == "1"
    assert shown["card"]["lineage"]["registered_by"] == "azureml"
    assert json.loads(json.dumps(shown))["sha256"] == read_card(trained).model_sha256
    assert made[0].workspace == "edge-ws"
