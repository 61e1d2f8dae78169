"""What a layered deployment sends to IoT Hub, built without the hub."""

from __future__ import annotations

from typing import Any

import pytest

from ml.deploy.iothub import (
    DEFAULT_FIRST_PRIORITY,
    DeployError,
    IoTHubDeployments,
    ModelRef,
    build_layered_deployment,
    hub_host,
    next_priority,
    parse_labels,
    with_model,
)

CONTENT: dict[str, Any] = {
    "$edgeAgent": {"properties.desired.modules.gpu-inferencer": {"type": "docker"}},
    "gpu-inferencer": {"properties.desired.threshold_scale": 1.0},
}


def test_model_spec_defaults_to_the_local_registry_uri() -> None:
    model = ModelRef.parse("sensor-ae:3")
    assert model.as_property() == {"name": "sensor-ae", "version": "3", "uri": "registry://sensor-ae/3"}
    assert model.variables()["MODEL_URI"] == "registry://sensor-ae/3"
    explicit = ModelRef.parse("sensor-ae:3", "https://acct.blob.core.windows.net/models/3/", "0" * 64)
    assert explicit.as_property()["sha256"] == "0" * 64
    assert explicit.uri.startswith("https://")


@pytest.mark.parametrize("spec", ["sensor-ae", ":3", "sensor ae:3", "a:b:c"])
def test_model_spec_must_be_name_colon_version(spec: str) -> None:
    with pytest.raises(DeployError, match="NAME:VERSION"):
        ModelRef.parse(spec)


def test_model_sha256_must_be_hex() -> None:
    with pytest.raises(DeployError, match="64"):
        ModelRef.parse("m:1", sha256="xyz")


def test_model_is_set_by_path_and_other_twin_properties_stay() -> None:
    content = with_model(CONTENT, ModelRef.parse("m:2"))
    twin = content["gpu-inferencer"]
    assert twin["properties.desired.model"] == {"name": "m", "version": "2", "uri": "registry://m/2"}
    assert twin["properties.desired.threshold_scale"] == 1.0
    assert "properties.desired.model" not in CONTENT["gpu-inferencer"]


def test_model_goes_inside_a_whole_desired_object_when_the_layer_has_one() -> None:
    content = with_model({"gpu-inferencer": {"properties.desired": {"a": 1}}}, ModelRef.parse("m:2"))
    assert content["gpu-inferencer"] == {
        "properties.desired": {"a": 1, "model": ModelRef.parse("m:2").as_property()}
    }


def test_layered_body_has_the_configuration_shape() -> None:
    deployment = build_layered_deployment(
        CONTENT,
        configuration_id="ml-m-2",
        target_condition="tags.environment='prod'",
        priority=11,
        labels={"owner": "ml"},
        model=ModelRef.parse("m:2"),
    )
    body = deployment.body()
    assert body["id"] == "ml-m-2"
    assert body["targetCondition"] == "tags.environment='prod'"
    assert body["priority"] == 11
    assert body["labels"] == {"edgeloop-layer": "ml", "owner": "ml", "model": "m", "modelVersion": "2"}
    assert body["content"]["modulesContent"]["gpu-inferencer"]["properties.desired.model"]["version"] == "2"


@pytest.mark.parametrize("bad_id", ["ML-Upper", "has space", "", "x" * 129])
def test_configuration_id_rules(bad_id: str) -> None:
    with pytest.raises(DeployError, match="deployment name"):
        build_layered_deployment(CONTENT, configuration_id=bad_id, target_condition="*", priority=1)


def test_target_condition_and_priority_are_required_sane() -> None:
    with pytest.raises(DeployError, match="target condition"):
        build_layered_deployment(CONTENT, configuration_id="a", target_condition=" ", priority=1)
    with pytest.raises(DeployError, match="priority"):
        build_layered_deployment(CONTENT, configuration_id="a", target_condition="*", priority=-1)


def test_next_priority_is_one_above_this_layers_highest() -> None:
    existing = [
        {"id": "a", "priority": 12, "labels": {"edgeloop-layer": "ml"}},
        {"id": "b", "priority": 30, "labels": {"edgeloop-layer": "base"}},
        {"id": "c", "priority": 15, "labels": {"edgeloop-layer": "ml"}},
        {"id": "d", "priority": 99, "labels": None},
    ]
    assert next_priority(existing) == 16
    assert next_priority([]) == DEFAULT_FIRST_PRIORITY


def test_labels_parse_and_refuse_malformed_pairs() -> None:
    assert parse_labels(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(DeployError):
        parse_labels(["novalue"])


def test_host_is_read_without_exposing_the_key() -> None:
    connection = "HostName=hub.azure-devices.net;SharedAccessKeyName=owner;SharedAccessKey=c2VjcmV0"
    assert hub_host(connection) == "hub.azure-devices.net"
    assert "c2VjcmV0" not in repr(IoTHubDeployments(connection))
    with pytest.raises(DeployError, match="HostName"):
        hub_host("SharedAccessKey=x")


def test_adapter_refuses_calls_before_open() -> None:
    service = IoTHubDeployments("HostName=h;SharedAccessKeyName=o;SharedAccessKey=c2VjcmV0")
    with pytest.raises(DeployError, match="open"):
        service.list_configurations()
