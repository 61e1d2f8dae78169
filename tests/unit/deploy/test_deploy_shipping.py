"""Shipped files agree with each other: debug template, VS Code attach configs, workflows, dev container."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml.deploy import cli
from ml.deploy.manifest import iter_modules, iter_routes, modules_content
from tests.unit.deploy.kit import REPO, load

WORKFLOWS = REPO / ".github" / "workflows"


def user_modules(name: str) -> dict[str, dict[str, Any]]:
    return {m.name: m.body for m in iter_modules(modules_content(load(name))) if not m.system}


def debug_ports() -> dict[str, str]:
    ports = {}
    for name, body in user_modules("deployment.debug.template.json").items():
        bindings = body["settings"]["createOptions"]["HostConfig"]["PortBindings"]["5678/tcp"]
        assert [binding["HostIp"] for binding in bindings] == ["127.0.0.1"], name
        ports[name] = bindings[0]["HostPort"]
    return ports


def test_debug_template_runs_the_same_modules_routes_and_twins_as_the_base() -> None:
    base, debug = load("deployment.template.json"), load("deployment.debug.template.json")
    assert set(user_modules("deployment.debug.template.json")) == set(
        user_modules("deployment.template.json")
    )
    assert list(iter_routes(modules_content(debug))) == list(iter_routes(modules_content(base)))
    twins = {key for key in base["modulesContent"] if not key.startswith("$")}
    assert {key: debug["modulesContent"][key] for key in twins} == {
        key: base["modulesContent"][key] for key in twins
    }


def test_debug_modules_use_debug_images_debug_logs_and_distinct_loopback_ports() -> None:
    modules = user_modules("deployment.debug.template.json")
    for name, body in modules.items():
        assert body["settings"]["image"] == "${MODULES." + name + ".debug}"
        assert body["env"]["EDGEKIT_LOG_LEVEL"]["value"] == "DEBUG"
        assert "5678/tcp" in body["settings"]["createOptions"]["ExposedPorts"]
    ports = debug_ports()
    assert len(set(ports.values())) == len(ports)
    assert sorted(int(port) for port in ports.values()) == list(range(5678, 5678 + len(ports)))


def test_every_debug_module_has_a_vscode_attach_config_on_its_port() -> None:
    launch = json.loads((REPO / ".vscode" / "launch.json").read_text(encoding="utf-8"))
    attach = {str(c["connect"]["port"]): c for c in launch["configurations"] if c["request"] == "attach"}
    for name, port in debug_ports().items():
        config = attach[port]
        assert config["name"].startswith(name + ":")
        mapping = config["pathMappings"][0]
        local = Path(mapping["localRoot"].replace("${workspaceFolder}", str(REPO)))
        assert local.is_dir(), local
        assert mapping["remoteRoot"] == "/app/" + local.name
        dockerfile = (REPO / "modules" / name / "Dockerfile.amd64.debug").read_text(encoding="utf-8")
        assert f"/app/{local.name}" in dockerfile
        assert "debugpy" in dockerfile


def test_layer_module_matches_the_base_definition_when_the_base_has_it() -> None:
    layer = modules_content(load("layered.ml.template.json"))
    defined = layer["$edgeAgent"]["properties.desired.modules.gpu-inferencer"]
    base = user_modules("deployment.template.json")
    if "gpu-inferencer" in base:
        # One definition in two files must not drift: the layer wins on devices it targets.
        assert defined == base["gpu-inferencer"]
    assert defined["settings"]["image"] == "${MODULES.gpu-inferencer}"


# --- workflows --------------------------------------------------------------------------------------------


def workflow(name: str) -> dict[Any, Any]:
    document: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    return document


def run_lines(document: dict[Any, Any]) -> list[str]:
    commands: list[str] = []
    for job in document["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                text = re.sub(r"\$\{\{[^}]*\}\}", "X", step["run"]).replace("\\\n", " ")
                commands.extend(line.strip() for line in text.splitlines() if line.strip())
    return commands


def test_ci_runs_the_ci_entry_point_on_every_push() -> None:
    ci = workflow("ci.yml")
    assert "push" in ci[True]  # YAML 1.1 reads the key `on` as true
    assert "bash .ci/run" in run_lines(ci)


def test_images_run_on_tags_and_retrain_publishes_a_layer() -> None:
    images = workflow("images.yml")
    assert images[True]["push"]["tags"] == ["v*"]
    assert any("ml images push" in line for line in run_lines(images))
    retrain = workflow("retrain.yml")
    assert retrain["jobs"]["publish"]["environment"] == "production"
    assert any("ml deploy --layered layered.ml.template.json" in line for line in run_lines(retrain))


@pytest.mark.parametrize("name", ["ci.yml", "images.yml", "retrain.yml"])
def test_workflow_deploy_and_manifest_commands_parse(name: str) -> None:
    parser = argparse.ArgumentParser()
    cli.add_subcommands(parser.add_subparsers(dest="command", required=True))
    checked = 0
    for line in run_lines(workflow(name)):
        match = re.search(r"python -m ml(?:\.deploy)? ((?:manifest|deploy)\b.*)$", line)
        if match:
            args = parser.parse_args(shlex.split(match.group(1)))
            assert callable(args.func)
            checked += 1
    assert checked


def test_devcontainer_has_python_docker_az_iot_node_and_iotedgedev() -> None:
    config = json.loads((REPO / ".devcontainer" / "devcontainer.json").read_text(encoding="utf-8"))
    features = config["features"]
    assert any("docker-in-docker" in key for key in features)
    assert any(
        "azure-cli" in key and value.get("extensions") == "azure-iot" for key, value in features.items()
    )
    assert any("/node:" in key for key in features)
    dockerfile = (REPO / ".devcontainer" / "Dockerfile").read_text(encoding="utf-8")
    assert "python:1-3.11" in dockerfile
    assert "iotedgedev==" in dockerfile
