"""Module twins as the emulated IoT Hub keeps them: desired and reported properties with versions.

Kept in one JSON file, rewritten atomically (temp file, fsync, rename, fsync of the folder) on
every change: twin patches are rare, and a file a person can read helps when debugging a run.

Single-threaded: one TwinStore is used from one thread (the emulator's event loop thread).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

__all__ = ["MAX_DEPTH", "MAX_SECTION_BYTES", "TwinError", "TwinStore", "merge_patch", "validate_patch"]

# IoT Hub's limits: property objects nest at most 10 levels below the desired/reported root, and
# each of desired and reported is capped at 32 KB.
MAX_DEPTH: Final = 10
MAX_SECTION_BYTES: Final = 32 * 1024
MAX_KEY_BYTES: Final = 1024
_FORBIDDEN_KEY_CHARS: Final = frozenset(".$ ")
_FILE_FORMAT: Final = 1


class TwinError(ValueError):
    """A twin patch IoT Hub would refuse (the hub answers it with status 400 and this reason)."""


def validate_patch(patch: Mapping[str, Any], *, path: str = "", depth: int = 1) -> None:
    """Raise TwinError unless `patch` is a property object IoT Hub accepts: string keys without '.',
    '$' or ' ' (so `$version` and other metadata cannot be patched), JSON values, finite numbers,
    nesting at most MAX_DEPTH deep."""
    if not isinstance(patch, Mapping):
        raise TwinError(f"{path or 'patch'}: expected a JSON object, got {type(patch).__name__}")
    if depth > MAX_DEPTH:
        raise TwinError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    for key, value in patch.items():
        if not isinstance(key, str) or not key:
            raise TwinError(f"{path or 'patch'}: property names must be non-empty strings, got {key!r}")
        where = f"{path}.{key}" if path else key
        bad = _FORBIDDEN_KEY_CHARS.intersection(key)
        if bad or any(ord(ch) < 32 for ch in key):
            shown = "".join(sorted(bad)) or "a control character"
            raise TwinError(f"{where!r}: property names may not contain {shown!r}")
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise TwinError(f"{where!r}: property name longer than {MAX_KEY_BYTES} bytes")
        _validate_value(value, where, depth)


def _validate_value(value: Any, where: str, depth: int) -> None:
    if value is None or isinstance(value, bool | str | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TwinError(f"{where!r}: numbers must be finite, got {value!r}")
        return
    if isinstance(value, Mapping):
        validate_patch(value, path=where, depth=depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _validate_value(item, f"{where}[{index}]", depth)
        return
    raise TwinError(f"{where!r}: {type(value).__name__} is not a JSON value")


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """Apply a JSON merge patch (RFC 7396) in place: None deletes a key, objects merge, anything
    else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping):
            current = target.get(key)
            if not isinstance(current, dict):
                current = {}
                target[key] = current
            merge_patch(current, value)
        else:
            target[key] = _plain(value)


def _plain(value: Any) -> Any:
    """A deep copy in plain JSON containers, so stored state shares nothing with the caller."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _size(properties: Mapping[str, Any]) -> int:
    return len(json.dumps(properties, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


class _Twin:
    __slots__ = ("deployed", "desired", "desired_version", "reported", "reported_version")

    def __init__(self) -> None:
        self.desired: dict[str, Any] = {}
        self.desired_version = 1
        # The manifest's desired properties last applied; a redeploy is a change of these.
        self.deployed: dict[str, Any] | None = None
        self.reported: dict[str, Any] = {}
        self.reported_version = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "desired": self.desired,
            "desired_version": self.desired_version,
            "deployed": self.deployed,
            "reported": self.reported,
            "reported_version": self.reported_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Twin:
        twin = cls()
        twin.desired = dict(data["desired"])
        twin.desired_version = int(data["desired_version"])
        twin.deployed = None if data.get("deployed") is None else dict(data["deployed"])
        twin.reported = dict(data["reported"])
        twin.reported_version = int(data["reported_version"])
        return twin


class TwinStore:
    """Every module's twin, persisted in one JSON file.

    Versions start at 1 and grow by one per change of that section. A module the store does not
    know yet has an empty twin (IoT Hub creates a module identity with one); it is persisted from
    its first patch.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._twins: dict[str, _Twin] | None = None

    def open(self, initial_desired: Mapping[str, Mapping[str, Any]]) -> None:
        """Load the store, then apply the deployment's desired properties.

        `initial_desired` is module -> desired properties from the manifest's modulesContent
        (`$`-prefixed metadata such as `$version` is ignored). A module's desired properties are
        replaced by the manifest's, bumping `$version`, when the manifest's differ from the ones
        last deployed: a redeploy. Restarting with the same manifest keeps desired properties
        patched since (as a device keeps its twin across restarts); reported always persists.
        """
        twins: dict[str, _Twin] = {}
        if self._path.exists():
            data = json.loads(self._path.read_text(encoding="utf-8"))
            if data.get("format") != _FILE_FORMAT:
                raise TwinError(f"{self._path}: unsupported twin store format {data.get('format')!r}")
            twins = {module: _Twin.from_json(twin) for module, twin in data["modules"].items()}
        changed = False
        for module, raw in initial_desired.items():
            desired = {key: value for key, value in raw.items() if not key.startswith("$")}
            try:
                validate_patch(desired)
            except TwinError as error:
                raise TwinError(f"module {module!r} desired properties in the manifest: {error}") from None
            if _size(desired) > MAX_SECTION_BYTES:
                raise TwinError(
                    f"module {module!r} desired properties in the manifest exceed {MAX_SECTION_BYTES} bytes"
                )
            twin = twins.get(module)
            if twin is None:
                twin = twins[module] = _Twin()
                twin.desired = _plain(desired)
                twin.deployed = _plain(desired)
                changed = True
            elif twin.deployed != desired:
                twin.desired = _plain(desired)
                twin.deployed = _plain(desired)
                twin.desired_version += 1
                changed = True
        self._twins = twins
        if changed or not self._path.exists():
            self._save()

    def _store(self) -> dict[str, _Twin]:
        if self._twins is None:
            raise RuntimeError("TwinStore is not open; call open() first")
        return self._twins

    def _twin(self, module: str) -> _Twin:
        twins = self._store()
        twin = twins.get(module)
        if twin is None:
            twin = twins[module] = _Twin()
        return twin

    def get(self, module: str) -> dict[str, Any]:
        """The full twin as IoT Hub returns it:
        {"desired": {..., "$version": n}, "reported": {..., "$version": m}}."""
        twin = self._store().get(module) or _Twin()
        return {
            "desired": {**copy.deepcopy(twin.desired), "$version": twin.desired_version},
            "reported": {**copy.deepcopy(twin.reported), "$version": twin.reported_version},
        }

    def patch_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge a desired-properties patch; returns it as delivered to the module, with its new
        `$version`. Nothing changes when it is refused (TwinError)."""
        validate_patch(patch)
        twin = self._twin(module)
        merged = copy.deepcopy(twin.desired)
        merge_patch(merged, patch)
        self._check_size(merged, "desired")
        twin.desired = merged
        twin.desired_version += 1
        self._save()
        return {**_plain(patch), "$version": twin.desired_version}

    def patch_reported(self, module: str, patch: Mapping[str, Any]) -> int:
        """Merge a reported-properties patch from the module; returns the new reported `$version`."""
        validate_patch(patch)
        twin = self._twin(module)
        merged = copy.deepcopy(twin.reported)
        merge_patch(merged, patch)
        self._check_size(merged, "reported")
        twin.reported = merged
        twin.reported_version += 1
        self._save()
        return twin.reported_version

    def modules(self) -> list[str]:
        """Modules with a stored twin (from the manifest or a patch), sorted."""
        return sorted(self._store())

    @staticmethod
    def _check_size(properties: Mapping[str, Any], section: str) -> None:
        size = _size(properties)
        if size > MAX_SECTION_BYTES:
            raise TwinError(
                f"{section} properties would be {size} bytes, over the {MAX_SECTION_BYTES}-byte limit"
            )

    def _save(self) -> None:
        twins = self._store()
        data = {
            "format": _FILE_FORMAT,
            "modules": {module: twins[module].to_json() for module in sorted(twins)},
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, ensure_ascii=False, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self._path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the folder's entry is on disk.
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
