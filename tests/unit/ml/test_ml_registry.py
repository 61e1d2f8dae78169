from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ml.card import CardError, read_card, sha256_file
from ml.registry import (
    IntegrityError,
    LocalRegistry,
    ModelNotFoundError,
    ModelRegistry,
    RegistryError,
    VersionExistsError,
    default_root,
)
from tests.unit.ml.ml_kit import REPO_ROOT


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


def test_local_registry_is_a_model_registry(registry: LocalRegistry) -> None:
    interface: ModelRegistry = registry
    assert interface.list() == []


def test_register_list_show_fetch_latest(registry: LocalRegistry, model_copy: Path, tmp_path: Path) -> None:
    first = registry.register(model_copy)
    second = registry.register(model_copy)
    named = registry.register(model_copy, name="pump-ae")
    assert (first.name, first.version, second.version) == ("sensor-ae", "1", "2")
    assert (named.name, named.version) == ("pump-ae", "1")
    assert first.uri == "registry://sensor-ae/1"
    assert first.twin_model() == {
        "name": "sensor-ae",
        "version": "1",
        "uri": "registry://sensor-ae/1",
        "sha256": sha256_file(model_copy / "model.onnx"),
    }
    stored = registry.root / "sensor-ae" / "2"
    assert sorted(p.name for p in stored.iterdir()) == ["model.json", "model.onnx"]
    card = read_card(stored)
    assert (card.name, card.version) == ("sensor-ae", "2")
    assert card.lineage is not None
    assert card.lineage["registered_by"] == "local"

    everything = [(r.name, r.version) for r in registry.list()]
    assert everything == [("pump-ae", "1"), ("sensor-ae", "1"), ("sensor-ae", "2")]
    assert [r.version for r in registry.list("sensor-ae")] == ["1", "2"]
    assert registry.get("sensor-ae").version == "2"
    assert registry.get("sensor-ae", "latest").version == "2"
    assert registry.get("sensor-ae", "1").card.threshold == read_card(model_copy).threshold

    out = tmp_path / "fetched"
    fetched = registry.fetch("sensor-ae", "latest", out)
    assert fetched.path == out
    assert fetched.version == "2"
    assert (out / "model.onnx").read_bytes() == (model_copy / "model.onnx").read_bytes()
    assert read_card(out).version == "2"


def test_versions_are_never_overwritten(registry: LocalRegistry, model_copy: Path) -> None:
    registry.register(model_copy, version="5")
    with pytest.raises(VersionExistsError):
        registry.register(model_copy, version="5")
    # The next automatic version follows the highest, gaps and all.
    assert registry.register(model_copy).version == "6"
    with pytest.raises(RegistryError, match="invalid version"):
        registry.register(model_copy, version="05")


def test_tampered_model_is_refused_at_fetch_and_verify(
    registry: LocalRegistry, model_copy: Path, tmp_path: Path
) -> None:
    ref = registry.register(model_copy)
    assert registry.verify("sensor-ae", "1").sha256 == ref.sha256
    stored = ref.path / "model.onnx"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match"):
        registry.verify("sensor-ae", "1")
    with pytest.raises(IntegrityError):
        registry.fetch("sensor-ae", "1", tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_a_card_moved_to_another_version_folder_is_refused(registry: LocalRegistry, model_copy: Path) -> None:
    registry.register(model_copy)
    registry.register(model_copy)
    one = registry.root / "sensor-ae" / "1" / "model.json"
    one.write_text((registry.root / "sensor-ae" / "2" / "model.json").read_text())
    with pytest.raises(IntegrityError, match="the card says"):
        registry.get("sensor-ae", "1")


def test_a_model_that_does_not_match_its_card_is_not_registered(
    registry: LocalRegistry, model_copy: Path
) -> None:
    (model_copy / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(IntegrityError):
        registry.register(model_copy)
    assert registry.list() == []
    leftovers = list(registry.root.rglob(".tmp-*")) if registry.root.exists() else []
    assert leftovers == []


def test_an_invalid_card_is_not_registered(registry: LocalRegistry, model_copy: Path) -> None:
    raw = json.loads((model_copy / "model.json").read_text())
    del raw["threshold"]
    (model_copy / "model.json").write_text(json.dumps(raw))
    with pytest.raises(CardError, match="threshold"):
        registry.register(model_copy)


def test_missing_things_are_reported(registry: LocalRegistry, model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        registry.get("sensor-ae")
    registry.register(model_copy)
    with pytest.raises(ModelNotFoundError):
        registry.get("sensor-ae", "2")
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.get("../etc")
    with pytest.raises(CardError):
        registry.register(tmp_path)


def test_leftover_temporary_folders_are_not_versions(registry: LocalRegistry, model_copy: Path) -> None:
    registry.register(model_copy)
    (registry.root / "sensor-ae" / ".tmp-crashed").mkdir()
    (registry.root / "sensor-ae" / "notes").mkdir()
    assert [r.version for r in registry.list("sensor-ae")] == ["1"]
    assert registry.register(model_copy).version == "2"


def test_bring_your_own_card_keeps_its_shape(registry: LocalRegistry, model_copy: Path) -> None:
    raw = json.loads((model_copy / "model.json").read_text())
    minimal = {
        key: raw[key]
        for key in (
            "name",
            "version",
            "model_file",
            "model_sha256",
            "inputs",
            "outputs",
            "feature_columns",
            "window",
            "threshold",
        )
    }
    minimal["vendor_field"] = {"anything": [1, 2]}
    (model_copy / "model.json").write_text(json.dumps(minimal))
    ref = registry.register(model_copy)
    stored = json.loads((ref.path / "model.json").read_text())
    assert stored["vendor_field"] == {"anything": [1, 2]}
    assert "score_baseline" not in stored
    assert stored["lineage"] == {"registered_by": "local"}


_REGISTER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ml.registry import LocalRegistry
ref = LocalRegistry(Path(sys.argv[2])).register(Path(sys.argv[3]))
print(ref.version)
"""


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path, model_copy: Path) -> None:
    root = tmp_path / "shared-registry"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _REGISTER, str(REPO_ROOT), str(root), str(model_copy)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    versions = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        versions.append(out.strip())
    assert sorted(versions, key=int) == ["1", "2", "3", "4", "5", "6"]
    registry = LocalRegistry(root)
    assert [r.version for r in registry.list("sensor-ae")] == ["1", "2", "3", "4", "5", "6"]
    for version in versions:
        registry.verify("sensor-ae", version)


def test_default_root_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGELOOP_REGISTRY", str(tmp_path / "r"))
    assert default_root() == tmp_path / "r"
    monkeypatch.delenv("EDGELOOP_REGISTRY")
    assert default_root() == Path("models/registry")
