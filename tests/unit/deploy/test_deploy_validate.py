"""The validator refuses what IoT Edge, IoT Hub or the team's rules would refuse, and says where and why."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ml.deploy.manifest import generate, load_module_images, load_variables
from ml.deploy.validate import Kind, Problem, Severity, detect_kind, has_errors, redact, validate
from tests.unit.deploy.kit import load

ACCOUNT_KEY = (
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5c2VjcmV0a2V5;EndpointSuffix=x"
)


def errors(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity is Severity.ERROR]


def warnings(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity is Severity.WARNING]


def mentions(problems: list[Problem], *fragments: str) -> bool:
    return any(all(fragment in str(problem) for fragment in fragments) for problem in problems)


@pytest.fixture
def manifest(modules_dir: Path, env_file: Path) -> dict[str, Any]:
    """The repo's deployment, generated: a valid manifest to break one way at a time."""
    return generate(
        load("deployment.template.json"),
        load_module_images(modules_dir),
        "amd64",
        load_variables(env_file, {}),
    )


def agent(document: dict[str, Any]) -> dict[str, Any]:
    desired: dict[str, Any] = document["modulesContent"]["$edgeAgent"]["properties.desired"]
    return desired


def routes(document: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = document["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    return found


# --- the repo's own files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("deployment.template.json", Kind.TEMPLATE),
        ("deployment.debug.template.json", Kind.TEMPLATE),
        ("layered.ml.template.json", Kind.LAYERED_TEMPLATE),
    ],
)
def test_repo_templates_are_valid_and_detected(name: str, kind: Kind) -> None:
    document = load(name)
    assert detect_kind(document, name) is kind
    assert detect_kind(document) is kind  # from the content alone, too
    base = {"share-ingest", "transformer", "cloud-share-uploader"} if kind.is_layered else None
    problems = validate(document, kind, base_modules=base)
    assert not has_errors(problems), "\n".join(map(str, problems))


def test_generated_manifest_is_detected_and_valid(manifest: dict[str, Any]) -> None:
    assert detect_kind(manifest) is Kind.MANIFEST
    problems = validate(manifest)
    assert not has_errors(problems), "\n".join(map(str, problems))


# --- schemas ------------------------------------------------------------------------------------------------


def test_template_schema_violation_is_reported_with_its_path() -> None:
    document = load("deployment.template.json")
    del document["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]
    document["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["transformer"][
        "restartPolicy"
    ] = "sometimes"
    problems = validate(document, Kind.TEMPLATE)
    assert mentions(problems, "systemModules", "required")
    assert mentions(problems, "modules/transformer/restartPolicy", "sometimes")


def test_manifest_schema_requires_string_create_options(manifest: dict[str, Any]) -> None:
    agent(manifest)["modules"]["transformer"]["settings"]["createOptions"] = {"HostConfig": {}}
    assert mentions(
        validate(manifest, Kind.MANIFEST), "transformer/settings/createOptions", "not of type 'string'"
    )


def test_edgehub_schema_1_2_is_refused_in_templates_and_manifests(manifest: dict[str, Any]) -> None:
    document = load("deployment.template.json")
    document["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] = "1.2"
    problems = validate(document, Kind.TEMPLATE)
    assert mentions(problems, "schemaVersion", "1.2 breaks `iotedgedev solution deploy`")
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] = "1.2"
    assert mentions(errors(validate(manifest, Kind.MANIFEST)), "schemaVersion", "use 1.1")


# --- routes -------------------------------------------------------------------------------------------------


def test_route_that_does_not_parse_is_an_error(manifest: dict[str, Any]) -> None:
    routes(manifest)["broken"] = "SEND /messages/* TO $upstream"
    assert mentions(errors(validate(manifest)), "routes/broken", "not a route")


def test_route_from_an_unknown_module_is_an_error(manifest: dict[str, Any]) -> None:
    routes(manifest)["ghost"] = "FROM /messages/modules/ghost/outputs/out INTO $upstream"
    assert mentions(errors(validate(manifest)), "routes/ghost", "source module 'ghost'")


def test_route_into_an_unknown_module_input_is_an_error(manifest: dict[str, Any]) -> None:
    routes(manifest)["toGhost"] = {
        "route": "FROM /messages/modules/transformer/outputs/batches "
        'INTO BrokeredEndpoint("/modules/ghost/inputs/in")'
    }
    assert mentions(errors(validate(manifest)), "routes/toGhost", "sink module 'ghost'")


def test_route_with_an_unknown_sink_or_source_shape_is_an_error(manifest: dict[str, Any]) -> None:
    routes(manifest)["badSink"] = 'FROM /messages/* INTO BrokeredEndpoint("/modules/transformer/outputs/x")'
    routes(manifest)["badSource"] = "FROM /messages/modules/transformer INTO $upstream"
    found = errors(validate(manifest))
    assert mentions(found, "routes/badSink", "unknown sink")
    assert mentions(found, "routes/badSource", "unknown source")


def test_routes_with_where_and_catch_all_sources_pass(manifest: dict[str, Any]) -> None:
    routes(manifest)["all"] = "FROM /messages/* WHERE $connectionModuleId = 'transformer' INTO $upstream"
    routes(manifest)["twins"] = "FROM /twinChangeNotifications INTO $upstream"
    routes(manifest)["moduleAll"] = (
        "FROM /messages/modules/transformer/* INTO BrokeredEndpoint('/modules/share-ingest/inputs/x')"
    )
    assert not has_errors(validate(manifest))


def test_layer_routes_to_base_modules_are_checked_against_the_base() -> None:
    layer = load("layered.ml.template.json")
    without_base = validate(layer, Kind.LAYERED_TEMPLATE)
    assert not has_errors(without_base)
    assert mentions(warnings(without_base), "source module 'transformer'", "base deployment")
    with_wrong_base = validate(layer, Kind.LAYERED_TEMPLATE, base_modules={"share-ingest"})
    assert mentions(errors(with_wrong_base), "source module 'transformer'")


# --- module names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("-leading-dash", "1-63 letters"),
        ("has.dot", "1-63 letters"),
        ("x" * 64, "1-63 letters"),
        ("edgeHub", "system module"),
    ],
)
def test_bad_module_names_are_refused(manifest: dict[str, Any], name: str, fragment: str) -> None:
    modules = agent(manifest)["modules"]
    modules[name] = copy.deepcopy(modules["transformer"])
    assert mentions(errors(validate(manifest, Kind.MANIFEST)), fragment)


def test_module_names_differing_only_by_case_collide(manifest: dict[str, Any]) -> None:
    modules = agent(manifest)["modules"]
    modules["Transformer"] = copy.deepcopy(modules["transformer"])
    assert mentions(errors(validate(manifest)), "only by case")


# --- createOptions ------------------------------------------------------------------------------------------


def set_chunks(document: dict[str, Any], chunks: list[str], keys: list[str] | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = agent(document)["modules"]["transformer"]["settings"]
    for key in [key for key in settings if key.startswith("createOptions")]:
        del settings[key]
    names = keys or ["createOptions", *[f"createOptions{i:02d}" for i in range(1, len(chunks))]]
    settings.update(dict(zip(names, chunks, strict=True)))
    return settings


def chunked(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def test_create_options_chunk_over_512_bytes_is_an_error(manifest: dict[str, Any]) -> None:
    text = json.dumps({"Labels": {"a": "x" * 600}}, separators=(",", ":"))
    set_chunks(manifest, [text])
    assert mentions(errors(validate(manifest)), "createOptions", "a twin value holds 512")


def test_create_options_chunks_with_a_gap_are_an_error(manifest: dict[str, Any]) -> None:
    text = json.dumps({"Labels": {"a": "x" * 600}}, separators=(",", ":"))
    set_chunks(manifest, chunked(text, 512), ["createOptions", "createOptions02"])
    assert mentions(errors(validate(manifest)), "without gaps")


def test_create_options_chunks_that_do_not_join_to_json_are_an_error(manifest: dict[str, Any]) -> None:
    set_chunks(manifest, ['{"HostConfig":', '{"Binds":[]}'])
    assert mentions(errors(validate(manifest)), "joined are not JSON")


def test_more_than_8_chunks_is_a_warning_and_joined_chunks_pass(manifest: dict[str, Any]) -> None:
    text = json.dumps({"Labels": {f"k{i}": "v" * 90 for i in range(50)}}, separators=(",", ":"))
    chunks = chunked(text, 500)
    assert 8 < len(chunks) < 100
    set_chunks(manifest, chunks)
    problems = validate(manifest)
    assert not has_errors(problems), "\n".join(map(str, problems))
    assert mentions(warnings(problems), "createOptions chunks", "take 8")


def test_template_create_options_too_big_to_generate_is_an_error() -> None:
    document = load("deployment.template.json")
    settings = document["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["transformer"][
        "settings"
    ]
    settings["createOptions"]["Labels"] = {f"k{i}": "v" * 100 for i in range(45)}
    assert mentions(errors(validate(document, Kind.TEMPLATE)), "generation stops at 8 chunks")


# --- size, placeholders -------------------------------------------------------------------------------------


def test_desired_properties_over_32_kb_are_an_error(manifest: dict[str, Any]) -> None:
    manifest["modulesContent"]["transformer"]["properties.desired"] = {"blob": "x" * 40_000}
    assert mentions(errors(validate(manifest)), "modulesContent/transformer/properties.desired", "32 KB")


def test_unexpanded_placeholders_in_a_manifest_are_errors(manifest: dict[str, Any]) -> None:
    modules = agent(manifest)["modules"]
    modules["transformer"]["env"]["LEFT"] = {"value": "$NOT_EXPANDED"}
    modules["share-ingest"]["settings"]["image"] = "${MODULES.share-ingest}"
    found = errors(validate(manifest, Kind.MANIFEST))
    assert mentions(found, "transformer/env/LEFT/value", "$NOT_EXPANDED")
    assert mentions(found, "share-ingest/settings/image", "${MODULES.share-ingest}")


# --- secrets ------------------------------------------------------------------------------------------------


def test_literal_secrets_in_a_template_are_errors() -> None:
    document = load("deployment.template.json")
    desired = document["modulesContent"]["$edgeAgent"]["properties.desired"]
    desired["runtime"]["settings"]["registryCredentials"]["edgeloop"]["password"] = "hunter2hunter2"
    desired["modules"]["cloud-share-uploader"]["env"]["UPLOADER_STORAGE_CONNECTION_STRING"]["value"] = (
        ACCOUNT_KEY
    )
    found = errors(validate(document, Kind.TEMPLATE))
    assert mentions(found, "registryCredentials/edgeloop/password", "secret in clear")
    assert mentions(found, "UPLOADER_STORAGE_CONNECTION_STRING/value", "AccountKey=")


def test_variable_references_are_not_secrets() -> None:
    document = load("deployment.template.json")
    desired = document["modulesContent"]["$edgeAgent"]["properties.desired"]
    desired["modules"]["transformer"]["env"]["DB_CONNECTION_STRING"] = {
        "value": "Server=x;Password=$DB_PASSWORD"
    }
    assert not mentions(validate(document, Kind.TEMPLATE), "secret")


def test_generated_secrets_allowed_in_registry_warned_in_env_refused_elsewhere(
    manifest: dict[str, Any],
) -> None:
    modules = agent(manifest)["modules"]
    modules["cloud-share-uploader"]["env"]["UPLOADER_STORAGE_CONNECTION_STRING"]["value"] = ACCOUNT_KEY
    manifest["modulesContent"]["transformer"]["properties.desired"] = {
        "sink": "HostName=h.azure-devices.net;SharedAccessKeyName=owner;SharedAccessKey=c2VjcmV0",
        "token": "SharedAccessSignature sr=h&sig=abc&se=1",
    }
    problems = validate(manifest, Kind.MANIFEST)
    assert not mentions(problems, "registryCredentials")
    assert mentions(warnings(problems), "UPLOADER_STORAGE_CONNECTION_STRING/value", "secret in clear")
    assert mentions(errors(problems), "transformer/properties.desired/sink", "SharedAccessKey=")
    assert mentions(errors(problems), "transformer/properties.desired/token", "SAS token")


def test_sas_url_is_a_warning_in_generated_content_and_an_error_in_a_template(
    manifest: dict[str, Any],
) -> None:
    url = "https://acct.blob.core.windows.net/models/sensor-ae/3/?sv=2024&sp=r&sig=abcDEF%3D"
    manifest["modulesContent"]["transformer"]["properties.desired"] = {"model": {"uri": url}}
    assert mentions(warnings(validate(manifest, Kind.MANIFEST)), "model/uri", "SAS-signed URL")
    layer = load("layered.ml.template.json")
    layer["modulesContent"]["gpu-inferencer"]["properties.desired.model"]["uri"] = url
    assert mentions(errors(validate(layer, Kind.LAYERED_TEMPLATE)), "model/uri", "SAS-signed URL")


def test_redact_masks_what_the_secret_check_flags(manifest: dict[str, Any]) -> None:
    agent(manifest)["modules"]["cloud-share-uploader"]["env"]["UPLOADER_STORAGE_CONNECTION_STRING"][
        "value"
    ] = ACCOUNT_KEY
    text = json.dumps(redact(manifest))
    assert "c2VjcmV0a2V5" not in text
    assert "registry-pass-123" not in text
    assert "myacr.azurecr.io/transformer:0.1.0-amd64" in text


# --- layers -------------------------------------------------------------------------------------------------


def test_layer_may_not_touch_system_modules_or_edgehub_settings() -> None:
    layer = load("layered.ml.template.json")
    content = layer["modulesContent"]
    content["$edgeAgent"]["properties.desired.systemModules.edgeHub"] = {"type": "docker"}
    content["$edgeHub"]["properties.desired.schemaVersion"] = "1.1"
    content["gpu-inferencer"]["settings"] = {"x": 1}
    found = errors(validate(layer, Kind.LAYERED_TEMPLATE, base_modules={"transformer"}))
    assert mentions(found, "properties.desired.systemModules.edgeHub", "base deployment")
    assert mentions(found, "properties.desired.schemaVersion", "may set only")
    assert mentions(found, "gpu-inferencer/settings", "by path")


def test_layer_replacing_a_whole_twin_is_a_warning_and_module_schema_applies() -> None:
    layer = load("layered.ml.template.json")
    content = layer["modulesContent"]
    content["gpu-inferencer"]["properties.desired"] = {"model": {}}
    content["$edgeAgent"]["properties.desired.modules.gpu-inferencer"]["status"] = "paused"
    problems = validate(layer, Kind.LAYERED_TEMPLATE, base_modules={"transformer"})
    assert mentions(warnings(problems), "gpu-inferencer/properties.desired", "replaces all")
    assert mentions(errors(problems), "properties.desired.modules.gpu-inferencer/status", "paused")


def test_unreadable_document_is_a_problem_not_a_crash() -> None:
    assert mentions(errors(validate({"something": "else"})), "no modulesContent")
