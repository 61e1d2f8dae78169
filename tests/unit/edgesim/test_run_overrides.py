"""edgesim run's --model registration, --data ordering and --desired parsing."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from edgesim.__main__ import _desired_arg, _merged_patches
from edgesim.models import ModelError, register_model
from edgesim.report import build_report
from edgesim.run import data_files_in_order


def make_model_dir(
    folder: Path, *, name: str = "sensor-ae", version: str = "3", tamper: bool = False
) -> Path:
    folder.mkdir(parents=True)
    onnx = b"not really onnx, but bytes with a hash"
    (folder / "model.onnx").write_bytes(onnx + (b"!" if tamper else b""))
    card = {"name": name, "version": version, "model_file": "model.onnx",
            "model_sha256": hashlib.sha256(onnx).hexdigest()}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def test_register_model_copies_into_the_registry_layout_and_assigns(tmp_path):
    registry = tmp_path / "registry"
    model = register_model(make_model_dir(tmp_path / "m"), registry)
    assert (registry / "sensor-ae" / "3" / "model.onnx").is_file()
    assert (registry / "sensor-ae" / "3" / "model.json").is_file()
    assert model.desired() == {
        "name": "sensor-ae",
        "version": "3",
        "uri": "registry://sensor-ae/3",
        "sha256": hashlib.sha256(b"not really onnx, but bytes with a hash").hexdigest(),
    }
    # The same model again is fine (a rerun); nothing staged is left behind.
    assert register_model(tmp_path / "m", registry) == model
    assert sorted(p.name for p in (registry / "sensor-ae").iterdir()) == ["3"]


def test_register_model_refuses_a_tampered_or_incomplete_model(tmp_path):
    with pytest.raises(ModelError, match="does not match"):
        register_model(make_model_dir(tmp_path / "bad", tamper=True), tmp_path / "registry")
    (tmp_path / "nocard").mkdir()
    with pytest.raises(ModelError, match=r"model\.json"):
        register_model(tmp_path / "nocard", tmp_path / "registry")


def test_register_model_refuses_a_different_model_under_a_taken_version(tmp_path):
    registry = tmp_path / "registry"
    register_model(make_model_dir(tmp_path / "a"), registry)
    other = make_model_dir(tmp_path / "b")
    (other / "model.onnx").write_bytes(b"other bytes")
    card = json.loads((other / "model.json").read_text())
    card["model_sha256"] = hashlib.sha256(b"other bytes").hexdigest()
    (other / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="different model"):
        register_model(other, registry)


def test_data_files_arrive_side_files_first_then_by_path(tmp_path):
    for name in ("b/2.csv", "b/_schema.json", "a/9.csv", "a/1.csv", "_top.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    order = [p.relative_to(tmp_path).as_posix() for p in data_files_in_order(tmp_path)]
    assert order == ["_top.json", "b/_schema.json", "a/1.csv", "a/9.csv", "b/2.csv"]


def test_desired_arguments_parse_inline_and_from_files_and_merge(tmp_path):
    patch_file = tmp_path / "patch.json"
    patch_file.write_text('{"drift": {"min_rows": 10}}')
    first = _desired_arg('retrain-trigger={"debounce_s": 1, "drift": {"window_rows": 50}}')
    second = _desired_arg(f"retrain-trigger=@{patch_file}")
    assert _merged_patches([first, second]) == {
        "retrain-trigger": {"debounce_s": 1, "drift": {"window_rows": 50, "min_rows": 10}}
    }
    for bad in ("no-equals", "m=[1, 2]", "m={broken", f"m=@{tmp_path / 'missing.json'}"):
        with pytest.raises(argparse.ArgumentTypeError):
            _desired_arg(bad)


def test_report_collects_models_served_and_retrain_requests_from_twins():
    twins: dict[str, dict[str, Any]] = {
        "gpu-inferencer": {
            "reported": {"modelsServed": [{"name": "m", "version": "1"}, {"name": "m", "version": "2"}]}
        },
        "retrain-trigger": {"reported": {"retrainRequests": [{"reason": "drift"}]}},
        "other": {"reported": {"modelsServed": "not a list"}},
    }
    report = build_report(
        ok=True, started=0, ended=1, modules={}, twins=twins, hub=None, route_names=[], problems=[]
    )
    assert [m["version"] for m in report["models_served"]] == ["1", "2"]
    assert report["retrain_requests"] == [{"reason": "drift"}]
