"""AzureMLRegistry against Azure at the HTTP boundary: azure-ai-ml and azure-storage-blob run
unmodified over a transport that answers like the service and records what was sent."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from ml.azureml.config import AzureMLError
from ml.azureml.registry import AzureMLRegistry, asset_metadata
from ml.azureml.workspace import Workspace
from ml.card import read_card
from ml.registry import IntegrityError, ModelNotFoundError, RegistryError, VersionExistsError
from tests.unit.azureml.azureml_fakes import (
    ACCOUNT,
    BLOB_HOST,
    CONTAINER,
    TOKEN,
    WS_PATH,
    FakeWorkspace,
    Reply,
    write_model_dir,
)

pytestmark = pytest.mark.timeout(60)

MODELS = re.escape(WS_PATH) + r"/models/sensor-ae/versions"
BLOB_FOLDER = re.compile(r"^edgeloop/models/sensor-ae/(?P<version>\d+)/(?P<unique>[0-9a-f]{32})/$")


@pytest.fixture
def registry(workspace: Workspace, tmp_path: Path) -> AzureMLRegistry:
    return AzureMLRegistry(workspace, cache_dir=tmp_path / "cache")


def test_register_uploads_the_model_folder_and_creates_a_custom_model_version(
    registry: AzureMLRegistry, fake: FakeWorkspace, model_dir: Path
) -> None:
    source = read_card(model_dir)

    ref = registry.register(model_dir)

    assert (ref.name, ref.version, ref.sha256) == ("sensor-ae", "1", source.model_sha256)
    puts = fake.transport.find("PUT", MODELS + "/1")
    assert len(puts) == 1
    put = puts[0]
    assert put.host == "management.azure.com"
    assert put.query["api-version"][0] >= "2023-04-01"
    assert put.headers["Authorization"] == f"Bearer {TOKEN}"
    body = put.json()["properties"]
    assert body["modelType"] == "custom_model"
    prefix = f"azureml://subscriptions/{WS_PATH.split('/')[2]}/resourcegroups/edge-rg/workspaces/edge-ws"
    assert body["modelUri"].startswith(prefix + "/datastores/workspaceblobstore/paths/")
    folder = body["modelUri"].split("/paths/", 1)[1]
    assert BLOB_FOLDER.match(folder)["version"] == "1"  # type: ignore[index]
    assert body["properties"]["edgeloop.model_sha256"] == source.model_sha256
    assert body["properties"]["edgeloop.training_data_sha256"] == "ab" * 32
    assert body["properties"]["edgeloop.job_id"] == "edgeloop-train-abc"
    assert body["properties"]["edgeloop.threshold"] == "0.0123"
    assert body["properties"]["edgeloop.feature_columns"] == "temperature,vibration,pressure,current"
    assert "edgeloop.parent_version" not in body["properties"]
    assert body["tags"] == {
        "edgeloop.task": "anomaly-detection",
        "edgeloop.threshold": "0.0123",
        "edgeloop.window": "2",
        "edgeloop.training_data_sha256": "ab" * 32,
        "edgeloop.job_id": "edgeloop-train-abc",
    }

    # The files went to the datastore's own account and container, with its key, before the asset existed.
    blob_puts = fake.blob_requests()
    assert [r.method for r in blob_puts if r.method == "PUT"] == ["PUT", "PUT"]
    assert [r.path for r in blob_puts if r.method == "PUT"] == [
        f"/{CONTAINER}/{folder}model.onnx",
        f"/{CONTAINER}/{folder}model.json",
    ]
    assert all(r.headers["Authorization"].startswith(f"SharedKey {ACCOUNT}:") for r in blob_puts)
    assert all(r.headers.get("If-None-Match") == "*" for r in blob_puts if r.method == "PUT")
    assert fake.transport.requests.index(put) > fake.transport.requests.index(blob_puts[-1])
    assert fake.blobs[folder + "model.onnx"] == (model_dir / "model.onnx").read_bytes()
    stored_card = json.loads(fake.blobs[folder + "model.json"])
    assert (stored_card["name"], stored_card["version"]) == ("sensor-ae", "1")
    assert stored_card["lineage"]["registered_by"] == "azureml"
    assert stored_card["lineage"]["job_id"] == "edgeloop-train-abc"

    assert ref.uri == f"https://{BLOB_HOST}/{CONTAINER}/{folder}"
    assert ref.twin_model()["sha256"] == source.model_sha256
    assert fake.transport.unrouted == []


def test_versions_count_up_and_an_existing_version_is_never_overwritten(
    registry: AzureMLRegistry, fake: FakeWorkspace, model_dir: Path, tmp_path: Path
) -> None:
    assert registry.register(model_dir).version == "1"
    second = write_model_dir(tmp_path / "second")
    assert registry.register(second).version == "2"
    assert registry.register(second, version="7").version == "7"
    blobs_before = dict(fake.blobs)
    requests_before = len(fake.transport.requests)

    with pytest.raises(VersionExistsError):
        registry.register(model_dir, version="2")

    sent = fake.transport.requests[requests_before:]
    assert [r.method for r in sent] == ["GET"]  # looked, then refused: nothing uploaded, nothing PUT
    assert fake.blobs == blobs_before
    assert registry.get("sensor-ae").version == "7"


def test_a_model_file_that_does_not_match_its_card_is_refused_before_any_request(
    registry: AzureMLRegistry, fake: FakeWorkspace, model_dir: Path
) -> None:
    (model_dir / "model.onnx").write_bytes(b"something else")

    with pytest.raises(IntegrityError):
        registry.register(model_dir)

    assert fake.transport.requests == []


def test_get_and_list_read_the_card_from_the_datastore(
    registry: AzureMLRegistry, fake: FakeWorkspace, model_dir: Path, tmp_path: Path
) -> None:
    registry.register(model_dir)
    registry.register(write_model_dir(tmp_path / "b"))
    registry.register(write_model_dir(tmp_path / "other", name="pump-ae"))
    # An asset of the same name made by hand, not by edgeloop: never taken for a version.
    fake.models[("sensor-ae", "9")] = fake._version_json(
        "sensor-ae", "9", {"modelType": "custom_model", "modelUri": "azureml://datastores/x/paths/y/"}
    )

    latest = registry.get("sensor-ae")
    assert latest.version == "2"
    assert (latest.path / "model.json").is_file()
    assert read_card(latest.path).version == "2"
    listed = [(ref.name, ref.version) for ref in registry.list()]
    assert listed == [("pump-ae", "1"), ("sensor-ae", "1"), ("sensor-ae", "2")]
    assert [ref.version for ref in registry.list("sensor-ae")] == ["1", "2"]
    with pytest.raises(ModelNotFoundError):
        registry.get("sensor-ae", "5")
    with pytest.raises(ModelNotFoundError):
        registry.get("no-such-model")
    with pytest.raises(RegistryError):
        registry.get("sensor-ae", "../1")
    assert fake.transport.unrouted == []


def test_fetch_downloads_and_checks_the_model(
    registry: AzureMLRegistry, fake: FakeWorkspace, model_dir: Path, tmp_path: Path
) -> None:
    registered = registry.register(model_dir)

    fetched = registry.fetch("sensor-ae", "1", tmp_path / "out")

    assert fetched.path == tmp_path / "out"
    onnx = (tmp_path / "out" / "model.onnx").read_bytes()
    assert onnx == (model_dir / "model.onnx").read_bytes()
    assert hashlib.sha256(onnx).hexdigest() == registered.sha256
    assert read_card(tmp_path / "out").version == "1"
    gets = [r for r in fake.blob_requests() if r.method == "GET"]
    assert {r.path.rsplit("/", 1)[1] for r in gets} == {"model.json", "model.onnx"}


def test_fetch_refuses_a_model_file_changed_in_storage(
    registry: AzureMLRegistry, fake: FakeWorkspace, model_dir: Path, tmp_path: Path
) -> None:
    registry.register(model_dir)
    stored = next(name for name in fake.blobs if name.endswith("model.onnx"))
    fake.blobs[stored] = b"tampered"

    with pytest.raises(IntegrityError):
        registry.fetch("sensor-ae", "1", tmp_path / "out")

    assert not (tmp_path / "out" / "model.onnx").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_a_service_refusal_becomes_a_registry_error(
    registry: AzureMLRegistry, fake: FakeWorkspace, model_dir: Path
) -> None:
    fake.transport.route(
        "GET",
        re.escape(WS_PATH) + r"/datastores/workspaceblobstore",
        Reply(403, {"error": {"code": "AuthorizationFailed", "message": "no access"}}),
        first=True,
    )

    with pytest.raises(AzureMLError) as raised:
        registry.register(model_dir)

    assert "workspaceblobstore" in str(raised.value)
    assert fake.transport.find("PUT", MODELS + "/.*") == []


def test_asset_metadata_is_strings_and_leaves_missing_values_out(model_dir: Path) -> None:
    card = read_card(model_dir).model_copy(update={"training_data": None, "lineage": None})

    tags, properties = asset_metadata(card)

    assert all(isinstance(value, str) for value in [*tags.values(), *properties.values()])
    assert "edgeloop.job_id" not in properties
    assert "edgeloop.training_data_sha256" not in tags
    assert properties["edgeloop.window"] == "2"
    assert properties["edgeloop.card_schema"] == "edgeloop.model-card/1"
