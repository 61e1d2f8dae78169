"""Module twins: merge patches, versions, IoT Hub's validation, persistence and redeploys."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edgesim.twins import MAX_DEPTH, MAX_SECTION_BYTES, TwinError, TwinStore

MODEL = {"name": "sensor-ae", "version": "1", "uri": "file:///data/models/1.onnx", "sha256": "ab" * 32}
MANIFEST: dict[str, dict[str, Any]] = {
    "gpu-inferencer": {"model": MODEL, "batchSize": 4096},
    "transformer": {"dataset": "pumps"},
}


def opened(path: Path, manifest: Mapping[str, Mapping[str, Any]] = MANIFEST) -> TwinStore:
    store = TwinStore(path)
    store.open(manifest)
    return store


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "twins.json"


@pytest.fixture
def twins(path: Path) -> TwinStore:
    return opened(path)


def nested(depth: int) -> dict[str, Any]:
    """An object whose deepest object sits `depth` levels below the root."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def test_constructor_does_no_io(path: Path) -> None:
    TwinStore(path)
    assert not path.parent.exists()


def test_use_before_open_is_an_error(path: Path) -> None:
    with pytest.raises(RuntimeError, match="open"):
        TwinStore(path).modules()


def test_fresh_store_takes_desired_from_the_manifest(twins: TwinStore) -> None:
    twin = twins.get("gpu-inferencer")
    assert twin["desired"] == {"model": MODEL, "batchSize": 4096, "$version": 1}
    assert twin["reported"] == {"$version": 1}
    assert twins.modules() == ["gpu-inferencer", "transformer"]


def test_manifest_metadata_is_not_copied_into_desired(path: Path) -> None:
    twins = opened(path, {"m": {"$version": 7, "$metadata": {}, "a": 1}})
    assert twins.get("m")["desired"] == {"a": 1, "$version": 1}


def test_get_returns_a_copy(twins: TwinStore) -> None:
    twin = twins.get("gpu-inferencer")
    twin["desired"]["model"]["version"] = "mutated"
    assert twins.get("gpu-inferencer")["desired"]["model"]["version"] == "1"


def test_unknown_module_has_an_empty_twin_until_patched(twins: TwinStore) -> None:
    assert twins.get("retrain-trigger") == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    assert "retrain-trigger" not in twins.modules()
    assert twins.patch_reported("retrain-trigger", {"status": "ok"}) == 2
    assert "retrain-trigger" in twins.modules()


# ---------------------------------------------------------------------------------------------
# merge-patch semantics and versions


def test_desired_patch_merges_nested_and_bumps_version(twins: TwinStore) -> None:
    delivered = twins.patch_desired("gpu-inferencer", {"model": {"version": "2"}, "threshold": 0.8})
    assert delivered == {"model": {"version": "2"}, "threshold": 0.8, "$version": 2}
    desired = twins.get("gpu-inferencer")["desired"]
    assert desired["model"] == {**MODEL, "version": "2"}
    assert desired["threshold"] == 0.8
    assert desired["batchSize"] == 4096
    assert desired["$version"] == 2


def test_null_deletes_and_is_delivered_as_null(twins: TwinStore) -> None:
    delivered = twins.patch_desired("gpu-inferencer", {"batchSize": None, "model": {"sha256": None}})
    assert delivered == {"batchSize": None, "model": {"sha256": None}, "$version": 2}
    desired = twins.get("gpu-inferencer")["desired"]
    assert "batchSize" not in desired
    assert "sha256" not in desired["model"]
    assert desired["model"]["name"] == "sensor-ae"


def test_deleting_a_missing_key_is_a_no_op_but_still_a_new_version(twins: TwinStore) -> None:
    assert twins.patch_desired("transformer", {"nothing": None})["$version"] == 2
    assert twins.get("transformer")["desired"] == {"dataset": "pumps", "$version": 2}


def test_object_replaces_scalar_and_scalar_replaces_object(twins: TwinStore) -> None:
    twins.patch_desired("transformer", {"dataset": {"name": "pumps", "window": 16}})
    assert twins.get("transformer")["desired"]["dataset"] == {"name": "pumps", "window": 16}
    twins.patch_desired("transformer", {"dataset": "valves"})
    assert twins.get("transformer")["desired"]["dataset"] == "valves"


def test_arrays_replace_whole(twins: TwinStore) -> None:
    twins.patch_desired("transformer", {"columns": ["a", "b", "c"]})
    twins.patch_desired("transformer", {"columns": ["z"]})
    assert twins.get("transformer")["desired"]["columns"] == ["z"]


def test_reported_patches_merge_and_version_independently(twins: TwinStore) -> None:
    assert twins.patch_reported("gpu-inferencer", {"serving": {"name": "sensor-ae", "version": "1"}}) == 2
    assert twins.patch_reported("gpu-inferencer", {"serving": {"version": "2"}, "health": "ok"}) == 3
    twin = twins.get("gpu-inferencer")
    assert twin["reported"] == {
        "serving": {"name": "sensor-ae", "version": "2"},
        "health": "ok",
        "$version": 3,
    }
    assert twin["desired"]["$version"] == 1


def test_patch_does_not_alias_the_callers_objects(twins: TwinStore) -> None:
    patch: dict[str, Any] = {"cfg": {"list": [1, 2]}}
    twins.patch_reported("transformer", patch)
    patch["cfg"]["list"].append(3)
    assert twins.get("transformer")["reported"]["cfg"] == {"list": [1, 2]}


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "patch",
    [
        {"a.b": 1},
        {"a b": 1},
        {"$version": 5},
        {"a$": 1},
        {"ok": {"bad.key": 1}},
        {"ok": {"$meta": 1}},
        {"ok": [{"bad key": 1}]},
        {"": 1},
        {"tab\tkey": 1},
        {"k" * 1025: 1},
        {"nan": float("nan")},
        {"inf": float("inf")},
        {"set": {1, 2}},
        {"bytes": b"x"},
    ],
)
def test_invalid_patches_are_refused_and_change_nothing(
    twins: TwinStore, path: Path, patch: dict[str, Any]
) -> None:
    before = twins.get("transformer")
    on_disk = path.read_bytes()
    with pytest.raises(TwinError):
        twins.patch_desired("transformer", patch)
    with pytest.raises(TwinError):
        twins.patch_reported("transformer", patch)
    assert twins.get("transformer") == before
    assert path.read_bytes() == on_disk


def test_patch_must_be_an_object(twins: TwinStore) -> None:
    with pytest.raises(TwinError, match="JSON object"):
        twins.patch_reported("transformer", ["a"])  # type: ignore[arg-type]


def test_error_names_the_offending_path(twins: TwinStore) -> None:
    with pytest.raises(TwinError, match=r"outer\.bad key"):
        twins.patch_desired("transformer", {"outer": {"bad key": 1}})


def test_depth_limit(twins: TwinStore) -> None:
    twins.patch_desired("transformer", nested(MAX_DEPTH))
    with pytest.raises(TwinError, match="deeper"):
        twins.patch_desired("transformer", nested(MAX_DEPTH + 1))


def test_size_limit_counts_the_merged_result(twins: TwinStore) -> None:
    chunk = "x" * (MAX_SECTION_BYTES // 2)
    twins.patch_reported("transformer", {"a": chunk})
    with pytest.raises(TwinError, match="limit"):
        twins.patch_reported("transformer", {"b": chunk})
    assert "b" not in twins.get("transformer")["reported"]
    # Deleting makes room again.
    twins.patch_reported("transformer", {"a": None, "b": chunk})
    assert twins.get("transformer")["reported"]["b"] == chunk


def test_size_limit_applies_to_desired_and_counts_utf8_bytes(twins: TwinStore) -> None:
    # 'é' is 2 bytes: this is under the limit in characters, over it in bytes.
    with pytest.raises(TwinError, match="desired"):
        twins.patch_desired("transformer", {"text": "é" * (MAX_SECTION_BYTES // 2 + 10)})


def test_invalid_manifest_desired_properties_fail_open(path: Path) -> None:
    with pytest.raises(TwinError, match="'m'"):
        opened(path, {"m": {"bad key": 1}})


# ---------------------------------------------------------------------------------------------
# persistence and redeploys


def test_state_survives_reopen_with_the_same_manifest(path: Path) -> None:
    first = opened(path)
    first.patch_desired("gpu-inferencer", {"model": {"version": "2"}})
    first.patch_reported("gpu-inferencer", {"serving": "2"})

    second = opened(path)
    twin = second.get("gpu-inferencer")
    # Same manifest: not a redeploy, so the runtime desired patch is kept.
    assert twin["desired"]["model"]["version"] == "2"
    assert twin["desired"]["$version"] == 2
    assert twin["reported"] == {"serving": "2", "$version": 2}


def test_redeploy_with_changed_manifest_replaces_desired_and_bumps_version(path: Path) -> None:
    first = opened(path)
    first.patch_desired("gpu-inferencer", {"extra": True})
    first.patch_reported("gpu-inferencer", {"serving": "1"})

    new_manifest = {**MANIFEST, "gpu-inferencer": {"model": {**MODEL, "version": "3"}}}
    second = opened(path, new_manifest)
    twin = second.get("gpu-inferencer")
    assert twin["desired"] == {"model": {**MODEL, "version": "3"}, "$version": 3}
    assert twin["reported"] == {"serving": "1", "$version": 2}
    # The module whose manifest entry did not change keeps its version.
    assert second.get("transformer")["desired"]["$version"] == 1


def test_redeploy_then_restart_is_stable(path: Path) -> None:
    opened(path)
    new_manifest = {**MANIFEST, "transformer": {"dataset": "valves"}}
    opened(path, new_manifest)
    third = opened(path, new_manifest)
    assert third.get("transformer")["desired"] == {"dataset": "valves", "$version": 2}


def test_modules_dropped_from_the_manifest_keep_their_twin(path: Path) -> None:
    first = opened(path)
    first.patch_reported("transformer", {"rows": 10})
    second = opened(path, {"gpu-inferencer": MANIFEST["gpu-inferencer"]})
    assert second.get("transformer")["reported"]["rows"] == 10
    assert second.modules() == ["gpu-inferencer", "transformer"]


def test_new_module_in_a_later_manifest_starts_at_version_1(path: Path) -> None:
    opened(path)
    second = opened(path, {**MANIFEST, "retrain-trigger": {"driftThreshold": 0.2}})
    assert second.get("retrain-trigger")["desired"] == {"driftThreshold": 0.2, "$version": 1}


def test_file_is_valid_json_written_atomically(path: Path, twins: TwinStore) -> None:
    twins.patch_reported("transformer", {"rows": 1})
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["modules"]["transformer"]["reported"] == {"rows": 1}
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    assert leftovers == []


def test_unsupported_file_format_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": 99, "modules": {}}), encoding="utf-8")
    with pytest.raises(TwinError, match="format"):
        opened(path)


def test_refused_patch_is_not_persisted(path: Path) -> None:
    first = opened(path)
    with pytest.raises(TwinError):
        first.patch_desired("transformer", {"bad.key": 1})
    assert opened(path).get("transformer")["desired"] == {"dataset": "pumps", "$version": 1}
