"""The IoT Hub adapter and `deploy` command, through the real azure-iot-hub SDK, against a local HTTPS hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml.deploy import cli
from ml.deploy.iothub import DeployError, IoTHubDeployments, build_layered_deployment
from tests.integration.deploy.conftest import KEY_NAME, FakeHub
from tests.unit.deploy.kit import ENV_TEXT, all_module_names, write_modules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

API_VERSION = "2021-04-12"
CONTENT = {
    "$edgeAgent": {"properties.desired.modules.gpu-inferencer": {"type": "docker"}},
    "gpu-inferencer": {"properties.desired.model": {"name": "m", "version": "1", "uri": "registry://m/1"}},
}


def opened(hub: FakeHub) -> IoTHubDeployments:
    service = IoTHubDeployments(hub.connection_string)
    service.open()
    return service


def test_device_deployment_posts_the_content_to_apply_configuration(fake_hub: FakeHub) -> None:
    content: dict[str, Any] = {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}, "x": {"a": 1}}
    opened(fake_hub).apply_to_device("edge-01", content)
    [request] = fake_hub.requests
    assert request.method == "POST"
    assert request.path == "/devices/edge-01/applyConfigurationContent"
    assert request.query["api-version"] == [API_VERSION]
    assert request.body == {"modulesContent": content}
    assert request.headers["Authorization"].startswith("SharedAccessSignature sr=")
    assert f"skn={KEY_NAME}" in request.headers["Authorization"]


def test_layered_deployment_puts_a_configuration(fake_hub: FakeHub) -> None:
    deployment = build_layered_deployment(
        CONTENT,
        configuration_id="ml-m-1",
        target_condition="tags.environment='prod'",
        priority=12,
        labels={"team": "ml"},
    )
    created = opened(fake_hub).create_layered(deployment)
    assert created == {"id": "ml-m-1", "priority": 12, "etag": "MQ=="}
    [request] = fake_hub.requests
    assert (request.method, request.path) == ("PUT", "/configurations/ml-m-1")
    assert request.query["api-version"] == [API_VERSION]
    assert request.body["id"] == "ml-m-1"
    assert request.body["content"] == {"modulesContent": CONTENT}
    assert request.body["targetCondition"] == "tags.environment='prod'"
    assert request.body["priority"] == 12
    assert request.body["labels"] == {"edgeloop-layer": "ml", "team": "ml"}
    assert "If-Match" not in request.headers


def test_an_existing_configuration_id_is_refused_with_the_reason_and_no_key(fake_hub: FakeHub) -> None:
    deployment = build_layered_deployment(
        CONTENT, configuration_id="ml-m-1", target_condition="*", priority=1
    )
    service = opened(fake_hub)
    service.create_layered(deployment)
    with pytest.raises(DeployError) as caught:
        service.create_layered(deployment)
    message = str(caught.value)
    assert "HTTP 409" in message
    assert "new --name" in message
    assert fake_hub.key_text not in message


def test_a_wrong_key_is_refused_by_the_hub(fake_hub: FakeHub) -> None:
    wrong = fake_hub.connection_string.rsplit("=", 2)[0] + "=d3Jvbmcta2V5LXdyb25nLWtleQ=="
    service = IoTHubDeployments(wrong)
    service.open()
    with pytest.raises(DeployError, match="HTTP 401"):
        service.list_configurations()


def test_listing_returns_ids_priorities_and_labels(fake_hub: FakeHub) -> None:
    service = opened(fake_hub)
    service.create_layered(
        build_layered_deployment(CONTENT, configuration_id="a", target_condition="*", priority=3)
    )
    assert service.list_configurations() == [{"id": "a", "priority": 3, "labels": {"edgeloop-layer": "ml"}}]
    assert fake_hub.requests[-1].query["top"] == ["100"]


# --- the command, end to end --------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A solution folder: modules, .env with the hub's connection string, the repo's layered template."""
    repo = Path(__file__).resolve().parents[3]
    write_modules(tmp_path / "modules", {name: ("amd64", "amd64.debug") for name in all_module_names()})
    (tmp_path / ".env").write_text(
        ENV_TEXT + f'IOTHUB_CONNECTION_STRING="{fake_hub.connection_string}"\n', encoding="utf-8"
    )
    for name in ("layered.ml.template.json", "deployment.template.json"):
        (tmp_path / name).write_text((repo / name).read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IOTHUB_CONNECTION_STRING", raising=False)
    return tmp_path


def test_publishing_a_model_creates_a_layer_above_the_existing_ones(
    workdir: Path, fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_hub.configurations["ml-sensor-ae-2"] = {
        "id": "ml-sensor-ae-2",
        "priority": 14,
        "labels": {"edgeloop-layer": "ml"},
    }
    fake_hub.configurations["other"] = {"id": "other", "priority": 50, "labels": {"edgeloop-layer": "ops"}}
    code = cli.main(
        [
            "deploy",
            "--layered",
            "layered.ml.template.json",
            "--name",
            "ml-sensor-ae-3",
            "--target-condition",
            "tags.environment='prod'",
            "--model",
            "sensor-ae:3",
            "--model-sha256",
            "a" * 64,
        ]
    )
    output = capsys.readouterr()
    assert code == 0, output.err
    put = [request for request in fake_hub.requests if request.method == "PUT"]
    assert [request.path for request in put] == ["/configurations/ml-sensor-ae-3"]
    body = put[0].body
    assert body["priority"] == 15
    assert body["labels"] == {"edgeloop-layer": "ml", "model": "sensor-ae", "modelVersion": "3"}
    content = body["content"]["modulesContent"]
    assert content["gpu-inferencer"]["properties.desired.model"] == {
        "name": "sensor-ae",
        "version": "3",
        "uri": "registry://sensor-ae/3",
        "sha256": "a" * 64,
    }
    module = content["$edgeAgent"]["properties.desired.modules.gpu-inferencer"]
    assert module["settings"]["image"] == "myacr.azurecr.io/gpu-inferencer:0.1.0-amd64"
    assert json.loads(module["settings"]["createOptions"])["HostConfig"]["DeviceRequests"][0][
        "Capabilities"
    ] == [["gpu"]]
    assert "properties.desired.routes.anomaliesToUpstream" in content["$edgeHub"]
    assert fake_hub.key_text not in output.out + output.err


def test_device_deploy_command_generates_then_applies(
    workdir: Path, fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["manifest", "gen", "--platform", "amd64", "--template", "deployment.template.json"]) == 0
    manifest = workdir / "config" / "deployment.amd64.json"
    assert cli.main(["deploy", "--manifest", str(manifest), "--device", "edge-01"]) == 0
    [request] = [request for request in fake_hub.requests if request.method == "POST"]
    assert request.path == "/devices/edge-01/applyConfigurationContent"
    assert request.body == json.loads(manifest.read_text(encoding="utf-8"))
    output = capsys.readouterr()
    assert fake_hub.key_text not in output.out + output.err
