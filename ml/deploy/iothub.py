"""IoT Hub deployments: one device's configuration, and layered deployments (configurations) for a fleet.

The pure part builds what IoT Hub is sent; `IoTHubDeployments` is the thin adapter over `azure-iot-hub`. A
configuration's content is immutable once created, so publishing a new model is a new configuration (a new id)
at a higher priority than the one it supersedes, never an edit of the old one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ml.deploy.manifest import DESIRED, JsonObject

INFERENCER_MODULE = "gpu-inferencer"
MODEL_PROPERTY = "model"
LAYER_LABEL = "edgeloop-layer"
DEFAULT_FIRST_PRIORITY = 10

# IoT Hub: a configuration id is up to 128 lower-case letters, digits and - : + % _ # * ? ! ( ) , = @ ; $ '.
_CONFIGURATION_ID = re.compile(r"^[a-z0-9\-:+%_#*?!(),=@;$']{1,128}$")
_MODEL_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DeployError(RuntimeError):
    """A deployment that cannot be built or that IoT Hub refused; the message never holds credentials."""


@dataclass(frozen=True)
class ModelRef:
    """The inferencer's `model` desired property (see the model card contract)."""

    name: str
    version: str
    uri: str
    sha256: str | None = None

    @classmethod
    def parse(cls, spec: str, uri: str | None = None, sha256: str | None = None) -> ModelRef:
        """`NAME:VERSION`; the uri defaults to the local registry's `registry://NAME/VERSION`."""
        name, sep, version = spec.partition(":")
        if not sep or not _MODEL_PART.match(name) or not _MODEL_PART.match(version):
            raise DeployError(f"--model wants NAME:VERSION (letters, digits, '.', '_', '-'), got {spec!r}")
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise DeployError("--model-sha256 wants 64 lower-case hex digits")
        return cls(name=name, version=version, uri=uri or f"registry://{name}/{version}", sha256=sha256)

    def as_property(self) -> JsonObject:
        body: JsonObject = {"name": self.name, "version": self.version, "uri": self.uri}
        if self.sha256:
            body["sha256"] = self.sha256
        return body

    def variables(self) -> dict[str, str]:
        """What a layered template's `$MODEL_*` placeholders expand to."""
        values = {"MODEL_NAME": self.name, "MODEL_VERSION": self.version, "MODEL_URI": self.uri}
        if self.sha256:
            values["MODEL_SHA256"] = self.sha256
        return values


@dataclass(frozen=True)
class LayeredDeployment:
    id: str
    modules_content: JsonObject
    target_condition: str
    priority: int
    labels: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> JsonObject:
        """The REST shape of an IoT Hub configuration (PUT /configurations/{id})."""
        return {
            "id": self.id,
            "schemaVersion": "1.0",
            "labels": dict(self.labels),
            "content": {"modulesContent": self.modules_content},
            "targetCondition": self.target_condition,
            "priority": self.priority,
        }


def with_model(
    modules_content: Mapping[str, Any], model: ModelRef, module: str = INFERENCER_MODULE
) -> JsonObject:
    """A copy of a layer's modulesContent that sets `module`'s desired `model` by path, so the base's other
    desired properties of that module stay as they are."""
    content = copy.deepcopy(dict(modules_content))
    twin = content.setdefault(module, {})
    if not isinstance(twin, dict):
        raise DeployError(f"modulesContent/{module} is not an object")
    whole = twin.get(DESIRED)
    if isinstance(whole, dict):
        whole[MODEL_PROPERTY] = model.as_property()
    else:
        twin[f"{DESIRED}.{MODEL_PROPERTY}"] = model.as_property()
    return content


def build_layered_deployment(
    modules_content: Mapping[str, Any],
    *,
    configuration_id: str,
    target_condition: str,
    priority: int,
    labels: Mapping[str, str] | None = None,
    model: ModelRef | None = None,
) -> LayeredDeployment:
    if not _CONFIGURATION_ID.match(configuration_id):
        raise DeployError(
            f"deployment name {configuration_id!r}: up to 128 lower-case letters, digits and "
            "- : + % _ # * ? ! ( ) , = @ ; $ '"
        )
    if not target_condition.strip():
        raise DeployError("a layered deployment needs a target condition, e.g. tags.environment='prod'")
    if priority < 0:
        raise DeployError("priority must be 0 or more")
    all_labels = {LAYER_LABEL: "ml", **(labels or {})}
    content = dict(modules_content)
    if model is not None:
        content = with_model(content, model)
        all_labels.update({"model": model.name, "modelVersion": model.version})
    return LayeredDeployment(configuration_id, content, target_condition, priority, all_labels)


def next_priority(existing: Sequence[Mapping[str, Any]], layer: str = "ml") -> int:
    """One above the highest priority among this layer's configurations in the hub, so the new one wins."""
    priorities = [
        int(configuration.get("priority") or 0)
        for configuration in existing
        if (configuration.get("labels") or {}).get(LAYER_LABEL) == layer
    ]
    return max(priorities) + 1 if priorities else DEFAULT_FIRST_PRIORITY


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeployError(f"--label wants KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def hub_host(connection_string: str) -> str:
    """The HostName of an IoT Hub connection string (safe to print: no key)."""
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip() == "HostName" and value:
            return value
    raise DeployError("IOTHUB_CONNECTION_STRING has no HostName")


class DeploymentService(Protocol):
    def apply_to_device(self, device_id: str, modules_content: Mapping[str, Any]) -> None: ...

    def create_layered(self, deployment: LayeredDeployment) -> JsonObject: ...

    def list_configurations(self, max_count: int = 100) -> list[JsonObject]: ...


class IoTHubDeployments:
    """`DeploymentService` over azure-iot-hub's configuration manager (HTTPS, SAS-signed by the SDK)."""

    def __init__(self, connection_string: str) -> None:
        self._connection_string = connection_string
        self._manager: Any = None

    def __repr__(self) -> str:
        return f"IoTHubDeployments(host={self.host!r})"

    @property
    def host(self) -> str:
        return hub_host(self._connection_string)

    def open(self) -> None:
        # Imported here so validating or generating manifests never needs the SDK (or its native AMQP part).
        from azure.iot.hub import IoTHubConfigurationManager  # type: ignore[import-untyped]

        try:
            self._manager = IoTHubConfigurationManager.from_connection_string(self._connection_string)
        except (ValueError, KeyError) as error:
            raise DeployError(
                f"IOTHUB_CONNECTION_STRING is not a service connection string ({type(error).__name__})"
            ) from None

    def _require_open(self) -> Any:
        if self._manager is None:
            raise DeployError("IoTHubDeployments.open() was not called")
        return self._manager

    def _call(self, what: str, function: Any, *args: Any) -> Any:
        from msrest.exceptions import ClientRequestError, HttpOperationError

        try:
            return function(*args)
        except HttpOperationError as error:
            status = getattr(error.response, "status_code", "?")
            detail = (getattr(error.response, "text", "") or "")[:500]
            hint = ""
            if status in (409, 412):
                hint = " (configurations are immutable: publish under a new --name with a higher --priority)"
            raise DeployError(f"{what} on {self.host}: HTTP {status}{hint}: {detail}") from None
        except ClientRequestError as error:
            raise DeployError(f"{what} on {self.host}: {error}") from None

    def apply_to_device(self, device_id: str, modules_content: Mapping[str, Any]) -> None:
        from azure.iot.hub.models import ConfigurationContent  # type: ignore[import-untyped]

        content = ConfigurationContent(modules_content=dict(modules_content))
        self._call(
            f"applying the deployment to device {device_id!r}",
            self._require_open().apply_configuration_on_edge_device,
            device_id,
            content,
        )

    def create_layered(self, deployment: LayeredDeployment) -> JsonObject:
        from azure.iot.hub.models import Configuration, ConfigurationContent

        configuration = Configuration(
            id=deployment.id,
            schema_version="1.0",
            labels=dict(deployment.labels),
            content=ConfigurationContent(modules_content=deployment.modules_content),
            target_condition=deployment.target_condition,
            priority=deployment.priority,
        )
        created = self._call(
            f"creating deployment {deployment.id!r}", self._require_open().create_configuration, configuration
        )
        return {"id": created.id, "priority": created.priority, "etag": created.etag}

    def list_configurations(self, max_count: int = 100) -> list[JsonObject]:
        found = self._call("listing deployments", self._require_open().get_configurations, max_count)
        return [
            {"id": item.id, "priority": item.priority, "labels": dict(item.labels or {})}
            for item in found or []
        ]
