"""Manifest generation follows iotedgedev's rules: image placeholders, variables, createOptions chunks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml.deploy.manifest import (
    ManifestError,
    ModuleImage,
    generate,
    image_tag,
    iter_modules,
    load_module_images,
    load_variables,
    modules_content,
    output_name,
    split_create_options,
)
from ml.deploy.validate import Kind, has_errors, validate
from tests.unit.deploy.kit import load, write_modules

VARIABLES = {"CONTAINER_REGISTRY_SERVER": "MyAcr.azurecr.io", "USER": "u", "PASS": "p", "SERVER": "reg.io"}


def image(name: str, platforms: tuple[str, ...] = ("amd64", "amd64.debug")) -> ModuleImage:
    return ModuleImage(
        name=name,
        repository="${CONTAINER_REGISTRY_SERVER}/" + name,
        version="0.2.0",
        platforms={p: f"./Dockerfile.{p}" for p in platforms},
    )


def template(modules: dict[str, dict[str, Any]], routes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "$schema-template": "4.0.0",
        "modulesContent": {
            "$edgeAgent": {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "runtime": {
                        "type": "docker",
                        "settings": {
                            "registryCredentials": {
                                "acr": {"username": "$USER", "password": "${PASS}", "address": "$SERVER"}
                            }
                        },
                    },
                    "systemModules": {
                        "edgeAgent": {
                            "type": "docker",
                            "settings": {"image": "agent:1.5", "createOptions": {}},
                        },
                        "edgeHub": {
                            "type": "docker",
                            "status": "running",
                            "restartPolicy": "always",
                            "settings": {"image": "hub:1.5", "createOptions": {}},
                        },
                    },
                    "modules": modules,
                }
            },
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": routes or {}}},
        },
    }


def module(
    image_placeholder: str, create_options: Any = None, env: dict[str, Any] | None = None
) -> dict[str, Any]:
    settings: dict[str, Any] = {"image": image_placeholder}
    if create_options is not None:
        settings["createOptions"] = create_options
    body: dict[str, Any] = {
        "type": "docker",
        "status": "running",
        "restartPolicy": "always",
        "settings": settings,
    }
    if env:
        body["env"] = env
    return body


def user_modules(manifest: dict[str, Any]) -> dict[str, Any]:
    modules: dict[str, Any] = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    return modules


# --- images -------------------------------------------------------------------------------------------------


def test_module_placeholder_becomes_repository_version_platform_lower_cased() -> None:
    manifest = generate(
        template({"filter": module("${MODULES.filter}")}), {"filter": image("filter")}, "amd64", VARIABLES
    )
    assert user_modules(manifest)["filter"]["settings"]["image"] == "myacr.azurecr.io/filter:0.2.0-amd64"


def test_debug_placeholder_takes_the_platform_debug_dockerfile_tag() -> None:
    manifest = generate(
        template({"filter": module("${MODULES.filter.debug}")}),
        {"filter": image("filter")},
        "amd64",
        VARIABLES,
    )
    assert (
        user_modules(manifest)["filter"]["settings"]["image"] == "myacr.azurecr.io/filter:0.2.0-amd64.debug"
    )


def test_explicit_platform_placeholder_and_container_tag() -> None:
    images = {"filter": image("filter", ("amd64", "arm64v8"))}
    manifest = generate(
        template({"filter": module("${MODULES.filter.arm64v8}")}),
        images,
        "amd64",
        {**VARIABLES, "CONTAINER_TAG": "ci42"},
    )
    assert (
        user_modules(manifest)["filter"]["settings"]["image"] == "myacr.azurecr.io/filter:0.2.0-ci42-arm64v8"
    )


def test_platform_missing_from_module_json_is_an_error_naming_the_module() -> None:
    with pytest.raises(ManifestError) as caught:
        generate(
            template({"filter": module("${MODULES.filter}")}),
            {"filter": image("filter")},
            "arm64v8",
            VARIABLES,
        )
    assert "'filter'" in str(caught.value)
    assert "arm64v8" in str(caught.value)


def test_unknown_module_placeholder_is_an_error() -> None:
    with pytest.raises(ManifestError, match="no module 'ghost'"):
        generate(template({"ghost": module("${MODULES.ghost}")}), {}, "amd64", VARIABLES)


def test_repository_variables_must_be_known() -> None:
    with pytest.raises(ManifestError, match="CONTAINER_REGISTRY_SERVER"):
        image_tag(image("filter"), "amd64", {})


def test_module_images_are_read_from_module_json_folders(tmp_path: Path) -> None:
    write_modules(tmp_path, {"alpha": ("amd64",), "beta": ("amd64", "arm64v8")})
    images = load_module_images(tmp_path)
    assert set(images) == {"alpha", "beta"}
    assert set(images["beta"].platforms) == {"amd64", "arm64v8"}
    assert images["alpha"].version == "0.1.0"


# --- variables ----------------------------------------------------------------------------------------------


def test_both_variable_forms_expand_and_reserved_route_words_stay() -> None:
    routes = {"up": "FROM /messages/modules/filter/outputs/* WHERE $body.level = 'x' INTO $upstream"}
    manifest = generate(
        template({"filter": module("${MODULES.filter}")}, routes),
        {"filter": image("filter")},
        "amd64",
        VARIABLES,
    )
    credentials = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]
    assert credentials["registryCredentials"]["acr"] == {
        "username": "u",
        "password": "p",
        "address": "reg.io",
    }
    assert manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["up"] == routes["up"]


def test_every_unknown_variable_is_listed() -> None:
    env = {"A": {"value": "$FIRST_MISSING"}, "B": {"value": "x-${SECOND_MISSING}-y"}}
    with pytest.raises(ManifestError) as caught:
        generate(
            template({"filter": module("${MODULES.filter}", env=env)}),
            {"filter": image("filter")},
            "amd64",
            {},
        )
    message = str(caught.value)
    for name in ("FIRST_MISSING", "SECOND_MISSING", "USER", "PASS", "SERVER"):
        assert name in message


def test_substituted_values_are_json_safe_and_not_expanded_twice() -> None:
    tricky = 'pa"ss\\word$USER'
    manifest = generate(
        template({"filter": module("${MODULES.filter}")}),
        {"filter": image("filter")},
        "amd64",
        {**VARIABLES, "PASS": tricky},
    )
    settings = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]
    assert settings["registryCredentials"]["acr"]["password"] == tricky


def test_env_file_wins_and_the_environment_fills_the_rest(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('SHARED="from-file"\nONLY_FILE=1\n', encoding="utf-8")
    variables = load_variables(env_file, {"SHARED": "from-env", "ONLY_ENV": "2"})
    assert variables["SHARED"] == "from-file"
    assert variables["ONLY_FILE"] == "1"
    assert variables["ONLY_ENV"] == "2"
    assert load_variables(tmp_path / "missing.env", {"X": "y"}) == {"X": "y"}


# --- createOptions ------------------------------------------------------------------------------------------


def big_create_options() -> dict[str, Any]:
    binds = [
        f"/very/long/host/path/number/{index:03d}:/container/path/number/{index:03d}:ro"
        for index in range(30)
    ]
    return {"HostConfig": {"Binds": binds, "Memory": 536870912}, "Labels": {"edgeloop": "yes"}}


def test_create_options_longer_than_512_split_into_numbered_chunks() -> None:
    options = big_create_options()
    compact = json.dumps(options, separators=(",", ":"))
    assert 1024 < len(compact) <= 8 * 512
    manifest = generate(
        template({"filter": module("${MODULES.filter}", options)}),
        {"filter": image("filter")},
        "amd64",
        VARIABLES,
    )
    settings = user_modules(manifest)["filter"]["settings"]
    keys = [key for key in settings if key.startswith("createOptions")]
    expected_count = -(-len(compact) // 512)
    assert keys == ["createOptions", *[f"createOptions{i:02d}" for i in range(1, expected_count)]]
    assert all(len(settings[key]) <= 512 for key in keys)
    assert all(len(settings[key]) == 512 for key in keys[:-1])
    assert "".join(settings[key] for key in keys) == compact
    assert json.loads("".join(settings[key] for key in keys)) == options
    assert next(iter(settings)) == "image"


def test_create_options_string_is_split_too_and_small_objects_stay_one_chunk() -> None:
    content = template(
        {"a": module("img-a", json.dumps(big_create_options())), "b": module("img-b", {"HostConfig": {}})}
    )["modulesContent"]
    split = split_create_options(content)
    bodies = {m.name: m.body for m in iter_modules(split)}
    assert "createOptions01" in bodies["a"]["settings"]
    assert bodies["b"]["settings"] == {"image": "img-b", "createOptions": '{"HostConfig":{}}'}
    assert bodies["edgeAgent"]["settings"]["createOptions"] == "{}"
    assert not isinstance(
        content["$edgeAgent"]["properties.desired"]["modules"]["b"]["settings"]["createOptions"], str
    )


def test_create_options_beyond_8_chunks_is_refused() -> None:
    options = {"Labels": {f"label{index}": "x" * 100 for index in range(60)}}
    with pytest.raises(ManifestError, match=r"'filter'.*more than 8 chunks"):
        generate(
            template({"filter": module("${MODULES.filter}", options)}),
            {"filter": image("filter")},
            "amd64",
            VARIABLES,
        )


def test_layered_content_is_split_at_its_property_paths() -> None:
    layer = {
        "modulesContent": {
            "$edgeAgent": {
                "properties.desired.modules.filter": module("${MODULES.filter}", big_create_options())
            },
            "$edgeHub": {},
        }
    }
    generated = generate(layer, {"filter": image("filter")}, "amd64", VARIABLES)
    settings = generated["modulesContent"]["$edgeAgent"]["properties.desired.modules.filter"]["settings"]
    assert settings["image"] == "myacr.azurecr.io/filter:0.2.0-amd64"
    assert "createOptions01" in settings


# --- the whole step -----------------------------------------------------------------------------------------


def test_schema_template_marker_is_dropped_and_the_template_is_untouched() -> None:
    source = template({"filter": module("${MODULES.filter}", {"HostConfig": {}})})
    before = json.dumps(source, sort_keys=True)
    manifest = generate(source, {"filter": image("filter")}, "amd64", VARIABLES)
    assert "$schema-template" not in manifest
    assert json.dumps(source, sort_keys=True) == before


@pytest.mark.parametrize(
    ("template_name", "platform", "expected"),
    [
        ("deployment.template.json", "amd64", "deployment.amd64.json"),
        ("deployment.debug.template.json", "amd64", "deployment.debug.amd64.json"),
        ("deployment.template.json", "arm64v8", "deployment.arm64v8.json"),
        ("layered.ml.template.json", "amd64", "layered.ml.amd64.json"),
    ],
)
def test_output_file_names_follow_iotedgedev(template_name: str, platform: str, expected: str) -> None:
    assert output_name(Path(template_name), platform) == expected


def test_repo_template_generates_a_valid_manifest(modules_dir: Path, env_file: Path) -> None:
    variables = load_variables(env_file, {})
    manifest = generate(load("deployment.template.json"), load_module_images(modules_dir), "amd64", variables)
    problems = validate(manifest, Kind.MANIFEST)
    assert not has_errors(problems), "\n".join(map(str, problems))
    for name, body in user_modules(manifest).items():
        assert body["settings"]["image"] == f"myacr.azurecr.io/{name}:0.1.0-amd64"


def test_repo_layered_template_generates_a_valid_layer(modules_dir: Path, env_file: Path) -> None:
    layer = generate(
        load("layered.ml.template.json"),
        load_module_images(modules_dir),
        "amd64",
        load_variables(env_file, {}),
    )
    content = modules_content(layer)
    assert content["gpu-inferencer"]["properties.desired.model"] == {
        "name": "sensor-ae",
        "version": "1",
        "uri": "registry://sensor-ae/1",
    }
    base = {m.name for m in iter_modules(modules_content(load("deployment.template.json")))}
    problems = validate(layer, Kind.LAYERED, base_modules=base)
    assert not has_errors(problems), "\n".join(map(str, problems))
