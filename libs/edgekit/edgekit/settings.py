"""Settings: defaults <- environment <- twin desired properties, validated by a pydantic model.

Desired-property keys are the model's field names exactly (no aliases, no case folding), at every
level. Environment variables are `<prefix><FIELD NAME IN UPPER CASE>`; a field whose type is a model,
list, tuple, set or dict takes a JSON string. Twin keys starting with `$` are metadata and ignored.

The desired state is tracked as the hub holds it: a patch is merged (JSON merge patch, None deletes,
so the key falls back to its environment or default value) onto everything seen so far, and the
result validated. If it fails, the last good settings stay and the rejection is reported; since the
hub still holds the bad value, later patches stay rejected until one fixes it.
"""

from __future__ import annotations

import inspect
import json
import logging
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .twin import diff_patch, merge_patch, without_metadata

T = TypeVar("T", bound=BaseModel)
SettingsListener = Callable[[T], Awaitable[None] | None]

logger = logging.getLogger(__name__)

_JSON_ORIGINS = (list, tuple, set, frozenset, dict)


class SettingsError(ValueError):
    """The environment does not describe valid settings (the runner exits with code 2)."""


@dataclass(frozen=True)
class SettingsUpdate:
    """The outcome of `apply_desired`: `reported` is the patch for the `settings` reported section."""

    accepted: bool
    changed: bool
    reason: str | None
    version: int | None
    reported: dict[str, Any]


class SettingsManager(Generic[T]):
    """Holds a module's current settings and applies desired-property documents and patches to them.

    Use from the service's event loop (it is not locked).
    """

    def __init__(self, model: type[T], *, env_prefix: str = "") -> None:
        self._model = model
        self._env_prefix = env_prefix
        self._env_values: dict[str, Any] = {}
        self._desired: dict[str, Any] = {}
        self._current: T | None = None
        self._version: int | None = None
        self._reported_effective: dict[str, Any] = {}
        self._listeners: list[SettingsListener[T]] = []

    @property
    def model(self) -> type[T]:
        return self._model

    @property
    def current(self) -> T:
        if self._current is None:
            raise RuntimeError("settings are not loaded yet (call load() first)")
        return self._current

    @property
    def desired_version(self) -> int | None:
        return self._version

    def load(self, environ: Mapping[str, str]) -> T:
        """Build settings from defaults and `environ`, once, at start. Raises `SettingsError`."""
        self._env_values = self._read_env(environ)
        try:
            self._current = self._model.model_validate(self._env_values)
        except ValidationError as error:
            raise SettingsError(
                "invalid settings in the environment: " + _describe(error, self._env_name)
            ) from error
        return self._current

    def subscribe(self, listener: SettingsListener[T]) -> None:
        """Call `listener(new_settings)` (sync or async) after each accepted change."""
        self._listeners.append(listener)

    async def publish(self) -> None:
        """Notify listeners of the current settings; the runner calls this after an accepted change."""
        for listener in list(self._listeners):
            result = listener(self.current)
            if inspect.isawaitable(result):
                await result

    def apply_desired(self, desired: Mapping[str, Any], *, full: bool = False) -> SettingsUpdate:
        """Apply a full desired document (`full=True`, e.g. from get_twin) or a patch."""
        previous = self.current
        version = desired.get("$version")
        if isinstance(version, int):
            self._version = version
        content = without_metadata(desired)
        self._desired = content if full else merge_patch(self._desired, content)
        candidate = merge_patch(self._env_values, self._desired)
        try:
            accepted = self._model.model_validate(candidate)
        except ValidationError as error:
            reason = "desired properties rejected: " + _describe(error, lambda field: field)
            logger.warning(reason, extra={"desired_version": self._version})
            return SettingsUpdate(
                accepted=False,
                changed=False,
                reason=reason,
                version=self._version,
                reported={"status": "rejected", "reason": reason, "version": self._version},
            )
        self._current = accepted
        return SettingsUpdate(
            accepted=True,
            changed=accepted != previous,
            reason=None,
            version=self._version,
            reported=self.reported_section(),
        )

    def reported_section(self) -> dict[str, Any]:
        """The `settings` reported section for the current settings, before any desired document."""
        return {"status": "accepted", "reason": None, "version": self._version, **self._effective_patch()}

    def _effective_patch(self) -> dict[str, Any]:
        # SecretStr fields dump as '**********', so secrets never reach the twin.
        effective = self.current.model_dump(mode="json")
        patch = diff_patch(self._reported_effective, effective)
        self._reported_effective = effective
        return {"effective": patch} if patch else {}

    def _env_name(self, field: str) -> str:
        return f"{self._env_prefix}{field.upper()}"

    def _read_env(self, environ: Mapping[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        problems: list[str] = []
        fields = self._model.model_fields
        for name, info in fields.items():
            env_name = self._env_name(name)
            if env_name not in environ:
                continue
            raw = environ[env_name]
            # Keyed as the twin spells it (the alias, e.g. Blob Storage on IoT Edge's camelCase names), so a
            # desired patch merges onto the environment's value instead of standing beside it.
            key = info.alias or name
            if _wants_json(info.annotation):
                try:
                    values[key] = json.loads(raw)
                except json.JSONDecodeError as error:
                    problems.append(f"{env_name}: not valid JSON ({error.msg} at char {error.pos})")
            else:
                values[key] = raw
        if self._env_prefix:
            known = {self._env_name(name) for name in fields}
            unknown = sorted(key for key in environ if key.startswith(self._env_prefix) and key not in known)
            problems.extend(f"{key}: no such setting" for key in unknown)
        if problems:
            raise SettingsError("invalid settings in the environment: " + "; ".join(problems))
        return values


def _wants_json(annotation: Any) -> bool:
    """True when an environment string for this type must be parsed as JSON first."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _wants_json(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_wants_json(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if origin in _JSON_ORIGINS:
        return True
    if origin is typing.Literal:
        return False
    return isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or issubclass(annotation, _JSON_ORIGINS)
    )


def _describe(error: ValidationError, source: Callable[[str], str]) -> str:
    parts = []
    for item in error.errors(include_url=False):
        location = [str(part) for part in item["loc"]]
        where = ".".join([source(location[0]), *location[1:]]) if location else "(settings)"
        given = item.get("input")
        # Values of unknown keys are left out: a mistyped key may well hold a secret.
        quiet = item["type"] in ("missing", "extra_forbidden") or isinstance(given, dict)
        suffix = "" if quiet else f" (got {_short(given)})"
        parts.append(f"{where}: {item['msg']}{suffix}")
    return "; ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
