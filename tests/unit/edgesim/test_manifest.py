"""Deployment manifests: templates and generated files, variables, volumes, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgesim.manifest import ManifestError, Volume, expand_string, load_manifest, parse_manifest

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "manifests" / "two_modules.json"


def _manifest(modules: dict[str, Any], routes: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    hub: dict[str, Any] = {"schemaVersion": "1.1", "routes": routes or {}}
    hub.update(extra.pop("hub", {}))
    content: dict[str, Any] = {
        "$edgeAgent": {
            "properties.desired": {
                "schemaVersion": "1.1",
                "systemModules": {"edgeAgent": {}, "edgeHub": {}},
                "modules": modules,
            }
        },
        "$edgeHub": {"properties.desired": hub},
    }
    content.update(extra)
    return {"modulesContent": content}


def _module(**fields: Any) -> dict[str, Any]:
    module: dict[str, Any] = {"type": "docker", "settings": {"image": "img", "createOptions": {}}}
    module.update(fields)
    return module


def test_fixture_template_reads_modules_routes_and_desired() -> None:
    deployment = load_manifest(FIXTURE, variables={"STORAGE_CONNECTION_STRING": "conn"}, environ={})
    assert list(deployment.modules) == ["consumer", "producer"]  # startupOrder 1 then 2
    consumer = deployment.modules["consumer"]
    assert consumer.env["RECEIVED_LOG"] == "/data/received/consumer.jsonl"
    assert consumer.env["STORAGE"] == "conn"
    assert consumer.volumes == (Volume("received", "/data/received", False),)
    assert consumer.restart_policy == "always"
    # iotedgedev placeholders are not variables: kept, and not reported as unresolved.
    assert consumer.image == "${MODULES.consumer}"
    assert deployment.desired == {"producer": {"count": 20, "interval": 0.01}}
    assert deployment.routes["alertsToUpstream"]["priority"] == 0
    assert "INTO $upstream" in deployment.routes["alertsToUpstream"]["route"]
    assert deployment.store_ttl_secs == 7200
    assert deployment.warnings == []


def test_system_modules_are_not_modules_and_defaults_apply() -> None:
    data = _manifest({"edgeHub": _module(), "a": _module()})
    deployment = parse_manifest(data, {})
    assert list(deployment.modules) == ["a"]
    module = deployment.modules["a"]
    assert (module.restart_policy, module.status, module.startup_order) == ("always", "running", None)
    assert deployment.store_ttl_secs == 7200


def test_startup_order_then_unordered_by_name() -> None:
    modules = {
        "zeta": _module(),
        "beta": _module(startupOrder=5),
        "alpha": _module(),
        "gamma": _module(startupOrder=0),
    }
    assert list(parse_manifest(_manifest(modules), {}).modules) == ["gamma", "beta", "alpha", "zeta"]


def test_store_ttl_from_store_and_forward_configuration() -> None:
    data = _manifest({}, hub={"storeAndForwardConfiguration": {"timeToLiveSecs": 60}})
    assert parse_manifest(data, {}).store_ttl_secs == 60


def test_generated_manifest_joins_split_create_options() -> None:
    options = json.dumps(
        {
            "HostConfig": {
                "Binds": ["/srv/share:/data/share:ro", "state:/data/state/a"],
                "Mounts": [
                    {"Type": "volume", "Source": "models", "Target": "/data/models", "ReadOnly": True}
                ],
            },
            "Env": ["X=" + "y" * 600],
        }
    )
    settings = {"image": "reg/a:0.1-amd64", "createOptions": options[:512]}
    chunks = [options[i : i + 512] for i in range(512, len(options), 512)]
    # Keys out of order on purpose: the number decides, not the key order.
    for index, chunk in reversed(list(enumerate(chunks, start=1))):
        settings[f"createOptions{index:02d}"] = chunk
    data = _manifest({"a": {"type": "docker", "settings": settings}})
    module = parse_manifest(data, {}).modules["a"]
    assert module.create_options["Env"] == ["X=" + "y" * 600]
    assert module.volumes == (
        Volume("/srv/share", "/data/share", True),
        Volume("state", "/data/state/a", False),
        Volume("models", "/data/models", True),
    )


def test_variables_expand_in_values_with_precedence(tmp_path: Path) -> None:
    data = _manifest(
        {
            "a": _module(
                env={
                    "CONN": {"value": "$STORAGE_CONNECTION_STRING"},
                    "BOTH": {"value": "${FROM_DOTENV}-${FROM_ENVIRON}"},
                    "MISSING": {"value": "${NOT_SET}"},
                    "NUMBER": {"value": 5},
                }
            )
        },
        routes={"r": "FROM /messages/* WHERE $contentType = 'application/json' INTO $upstream"},
    )
    path = tmp_path / "deployment.template.json"
    path.write_text(json.dumps(data))
    (tmp_path / ".env").write_text(
        "# comment\nFROM_DOTENV='dotenv'\nSTORAGE_CONNECTION_STRING=from-dotenv\n"
        "export FROM_ENVIRON=dotenv-too\n"
    )
    deployment = load_manifest(
        path,
        variables={"STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"},
        environ={"FROM_ENVIRON": "environ", "FROM_DOTENV": "environ"},
    )
    env = deployment.modules["a"].env
    assert env["CONN"] == "UseDevelopmentStorage=true"  # caller's variables beat .env
    assert env["BOTH"] == "dotenv-dotenv-too"  # .env beats the environment
    assert env["MISSING"] == "${NOT_SET}"
    assert env["NUMBER"] == "5"
    assert deployment.routes["r"] == "FROM /messages/* WHERE $contentType = 'application/json' INTO $upstream"
    assert deployment.warnings == ["unresolved variables left as written: NOT_SET"]


def test_keys_are_never_expanded() -> None:
    data = _manifest({}, a={"properties.desired": {"$HOME": "$HOME"}})
    desired = parse_manifest(data, {"HOME": "/root"}).desired["a"]
    assert desired == {"$HOME": "/root"}


def test_expand_string_forms() -> None:
    unknown: set[str] = set()
    text = expand_string("$A/${B}/$C/${MODULES.x}/$$", {"A": "1", "B": "2"}, unknown)
    assert text == "1/2/$C/${MODULES.x}/$$"
    assert unknown == {"C"}


def test_az_cli_wrapped_content_is_accepted() -> None:
    data = {"content": _manifest({"a": _module()})}
    assert list(parse_manifest(data, {}).modules) == ["a"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["modulesContent"].pop("$edgeAgent"), r"missing modulesContent\.\$edgeAgent"),
        (
            lambda d: d["modulesContent"]["$edgeHub"].update({"properties.desired": []}),
            r"\$edgeHub\.properties",
        ),
        (
            lambda d: d["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["a"].update(
                restartPolicy="sometimes"
            ),
            r"modules\.a\.restartPolicy 'sometimes'",
        ),
        (
            lambda d: d["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["a"].update(
                status="paused"
            ),
            r"modules\.a\.status",
        ),
        (
            lambda d: d["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["a"][
                "settings"
            ].update(createOptions="{not json"),
            r"modules\.a\.settings\.createOptions is not valid JSON",
        ),
        (
            lambda d: d["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["a"][
                "settings"
            ].update(createOptions={"HostConfig": {"Binds": ["no-target"]}}),
            r"Binds\[0\] 'no-target'",
        ),
        (
            lambda d: d["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["a"].update(
                env={"K": "v"}
            ),
            r'env\.K must be \{"value"',
        ),
        (
            lambda d: d["modulesContent"]["$edgeHub"]["properties.desired"].update(routes=["r"]),
            r"routes must be an object",
        ),
    ],
)
def test_structural_errors_name_the_path(mutate: Any, message: str) -> None:
    data = _manifest({"a": _module()})
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data, {}, source="deploy.json")


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"modulesContent": ')
    with pytest.raises(ManifestError, match=r"broken\.json: not valid JSON"):
        load_manifest(path, environ={})
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "absent.json", environ={})
