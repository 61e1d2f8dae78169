"""The CLI as people and scripts run it: `python -m ml ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.unit.ml.ml_kit import REPO_ROOT, sensor_table, write_cloud_share


def _ml(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_train_then_register_show_fetch_verify(tmp_path: Path) -> None:
    data = write_cloud_share(tmp_path / "cloud", sensor_table(devices=2, steps=600, seed=3))
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"window": 2, "epochs": 3, "name": "from-config", "seed": 1}))
    out = tmp_path / "model"
    trained = _ml(
        "train",
        "--data",
        data,
        "--out",
        out,
        "--config",
        config,
        "--features",
        "temperature,pressure",
        "--epochs",
        "4",
        "--name",
        "line1-ae",
    )
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    # The command line wins over the config file; the rest of the config applies.
    assert summary["name"] == "line1-ae"
    assert summary["window"] == 2
    assert summary["feature_columns"] == ["temperature", "pressure"]
    assert summary["metrics"]["epochs"] <= 4
    assert (out / "model.onnx").is_file()
    assert (out / "model.json").is_file()

    env = {"EDGELOOP_REGISTRY": str(tmp_path / "registry")}
    registered = _ml("registry", "register", out, env=env)
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["uri"] == "registry://line1-ae/1"
    assert _ml("registry", "register", out, "--version", "1", env=env).returncode == 1

    listed = json.loads(_ml("registry", "list", env=env).stdout)
    assert [(r["name"], r["version"]) for r in listed] == [("line1-ae", "1")]
    shown = json.loads(_ml("registry", "show", "line1-ae", "latest", env=env).stdout)
    assert shown["card"]["window"] == 2

    fetched = _ml("registry", "fetch", "line1-ae", "latest", "--out", tmp_path / "fetched", env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "fetched" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()

    assert _ml("registry", "verify", "line1-ae", "1", "--root", tmp_path / "registry").returncode == 0
    with (tmp_path / "registry" / "line1-ae" / "1" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    tampered = _ml("registry", "verify", "line1-ae", "1", env=env)
    assert tampered.returncode == 1
    assert "does not match" in tampered.stderr


def test_bad_input_fails_with_a_message(tmp_path: Path) -> None:
    missing = _ml("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "m")
    assert missing.returncode == 1
    assert "no such data folder" in missing.stderr
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"data": str(tmp_path), "out": str(tmp_path / "m"), "epoch": 3}))
    typo = _ml("train", "--config", config)
    assert typo.returncode == 2
    assert "epoch" in typo.stderr
    assert _ml("registry", "--root", tmp_path / "r", "show", "nothing").returncode == 1
