"""The `manifest gen|validate` and `deploy --dry-run` commands: files written, exit codes, what is printed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ml.deploy import cli
from tests.unit.deploy.kit import ENV_TEXT, REPO

ACCOUNT_KEY = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0a2V5c2VjcmV0;EndpointSuffix=x"


@pytest.fixture
def solution(tmp_path: Path, modules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A solution folder like the repo root: templates, modules, .env; the command runs from it."""
    for name in ("deployment.template.json", "deployment.debug.template.json", "layered.ml.template.json"):
        (tmp_path / name).write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / ".env").write_text(
        ENV_TEXT + f'STORAGE_CONNECTION_STRING="{ACCOUNT_KEY}"\n', encoding="utf-8"
    )
    assert modules_dir == tmp_path / "modules"
    monkeypatch.chdir(tmp_path)
    for name in (
        "IOTHUB_CONNECTION_STRING",
        "DEFAULT_PLATFORM",
        "CONFIG_OUTPUT_DIR",
        "MODULES_PATH",
        "CONTAINER_TAG",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def read(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def test_add_subcommands_wires_handlers() -> None:
    parser = argparse.ArgumentParser()
    cli.add_subcommands(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["manifest", "gen", "--platform", "arm64v8"]).func is cli._cmd_gen
    assert parser.parse_args(["manifest", "validate", "x.json"]).func is cli._cmd_validate
    assert parser.parse_args(["deploy", "--manifest", "m.json", "--device", "d"]).func is cli._cmd_deploy
    with pytest.raises(SystemExit):
        parser.parse_args(["deploy", "--manifest", "m.json", "--layered", "l.json"])


def test_gen_writes_the_platform_manifest_and_warns_about_env_secrets(
    solution: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["manifest", "gen", "--platform", "amd64"]) == 0
    manifest = read(solution / "config" / "deployment.amd64.json")
    modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    assert modules["transformer"]["settings"]["image"] == "myacr.azurecr.io/transformer:0.1.0-amd64"
    assert isinstance(modules["transformer"]["settings"]["createOptions"], str)
    err = capsys.readouterr().err
    assert "UPLOADER_STORAGE_CONNECTION_STRING" in err
    assert "warning" in err


def test_gen_debug_uses_the_debug_template_and_name(solution: Path) -> None:
    assert cli.main(["manifest", "gen", "--debug", "--platform", "amd64", "--out-dir", "out"]) == 0
    manifest = read(solution / "out" / "deployment.debug.amd64.json")
    modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    assert {m["settings"]["image"].rsplit("-", 1)[1] for m in modules.values()} == {"amd64.debug"}


def test_gen_refuses_an_invalid_result_and_writes_nothing(
    solution: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = read(solution / "deployment.template.json")
    routes = template["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    routes["ghost"] = "FROM /messages/modules/ghost/outputs/x INTO $upstream"
    (solution / "bad.template.json").write_text(json.dumps(template), encoding="utf-8")
    assert cli.main(["manifest", "gen", "--template", "bad.template.json"]) == 1
    assert not (solution / "config" / "bad.amd64.json").exists()
    assert "source module 'ghost'" in capsys.readouterr().err


def test_gen_lists_unknown_variables(solution: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (solution / "empty.env").write_text("", encoding="utf-8")
    assert cli.main(["manifest", "gen", "--env", "empty.env"]) == 1
    err = capsys.readouterr().err
    for name in ("CONTAINER_REGISTRY_SERVER", "CONTAINER_REGISTRY_PASSWORD", "STORAGE_CONNECTION_STRING"):
        assert name in err


def test_gen_names_the_module_missing_a_platform(solution: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["manifest", "gen", "--platform", "arm32v7"]) == 1
    err = capsys.readouterr().err
    assert "'transformer' has no platform 'arm32v7'" in err


def test_validate_exit_codes(solution: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["manifest", "validate", "deployment.template.json"]) == 0
    assert cli.main(["manifest", "validate", "layered.ml.template.json"]) == 0
    assert "valid layered-template" in capsys.readouterr().out
    broken = read(solution / "deployment.template.json")
    broken["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] = "1.2"
    (solution / "broken.template.json").write_text(json.dumps(broken), encoding="utf-8")
    assert cli.main(["manifest", "validate", "broken.template.json"]) == 1
    assert "1.2 breaks" in capsys.readouterr().err


def test_deploy_dry_run_prints_the_configuration_with_secrets_masked(
    solution: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "deploy",
            "--layered",
            "layered.ml.template.json",
            "--name",
            "ml-sensor-ae-7",
            "--target-condition",
            "tags.environment='prod'",
            "--priority",
            "20",
            "--model",
            "sensor-ae:7",
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    body = json.loads(out)
    assert body["priority"] == 20
    assert body["content"]["modulesContent"]["gpu-inferencer"]["properties.desired.model"]["version"] == "7"
    assert "c2VjcmV0" not in out


def test_deploy_device_refuses_a_template_and_needs_a_connection_string(
    solution: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["deploy", "--manifest", "deployment.template.json", "--device", "d1"]) == 1
    assert "generate it first" in capsys.readouterr().err
    assert cli.main(["manifest", "gen"]) == 0
    assert cli.main(["deploy", "--manifest", "config/deployment.amd64.json", "--device", "d1"]) == 1
    assert "IOTHUB_CONNECTION_STRING" in capsys.readouterr().err


def test_module_entry_point_runs_as_a_process(solution: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "ml.deploy", "manifest", "validate", "deployment.template.json"],
        cwd=solution,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid template" in result.stdout
