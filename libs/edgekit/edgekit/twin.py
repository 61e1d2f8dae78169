"""Twin document helpers: JSON merge patch (RFC 7386), as IoT Hub applies twin patches."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new document: `patch` merged onto `target`; None deletes a key, objects merge recursively."""
    result = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            current = result.get(key)
            result[key] = merge_patch(current if isinstance(current, Mapping) else {}, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def without_metadata(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document without twin metadata keys (`$version`, `$metadata`, ...), at every level."""
    return {
        key: without_metadata(value) if isinstance(value, Mapping) else copy.deepcopy(value)
        for key, value in document.items()
        if not key.startswith("$")
    }


def diff_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `old` into `new` (None for removed keys), so a reported section
    can be replaced in place rather than accumulating stale keys."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, Mapping) and isinstance(previous, Mapping):
            nested = diff_patch(previous, value)
            if nested:
                patch[key] = nested
        elif key not in old or previous != value:
            patch[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)
    return patch
