"""Read an IoT Edge deployment manifest into what the simulator needs to run it.

Two shapes are accepted: a template (`deployment.template.json`, createOptions as objects, iotedgedev
placeholders such as `${MODULES.transformer}` and `$VAR`) and a generated manifest
(`config/deployment.amd64.json`, createOptions as JSON strings, split by iotedgedev into `createOptions`,
`createOptions01`, ... when longer than 512 characters). Pure: the only I/O is reading the files named.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

RestartPolicy = Literal["always", "on-failure", "on-unhealthy", "never"]
ModuleStatus = Literal["running", "stopped"]

RESTART_POLICIES: tuple[RestartPolicy, ...] = ("always", "on-failure", "on-unhealthy", "never")
DEFAULT_STORE_TTL_SECS = 7200
SYSTEM_MODULES = frozenset({"edgeAgent", "edgeHub"})

# `$name` tokens that belong to IoT Hub itself (route sinks, query system properties, twin metadata).
# iotedgedev runs os.path.expandvars over the whole template, which leaves them alone because no such
# environment variable exists; we leave them alone on purpose and do not warn about them.
RESERVED_DOLLAR_NAMES = frozenset(
    {
        "upstream",
        "edgeAgent",
        "edgeHub",
        "schema",
        "version",
        "metadata",
        "body",
        "twin",
        "contentType",
        "contentEncoding",
        "messageId",
        "correlationId",
        "connectionDeviceId",
        "connectionModuleId",
        "outputName",
        "enqueuedTime",
        "userId",
        "iothub",
    }
)

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_SPLIT_CREATE_OPTIONS = re.compile(r"^createOptions(\d\d)$")
_AGENT = "modulesContent.$edgeAgent.properties.desired"
_HUB = "modulesContent.$edgeHub.properties.desired"


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the file and the JSON path at fault."""


@dataclass(frozen=True)
class Volume:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    image: str
    env: dict[str, str]
    create_options: dict[str, Any]
    restart_policy: RestartPolicy = "always"
    status: ModuleStatus = "running"
    startup_order: int | None = None
    volumes: tuple[Volume, ...] = ()


@dataclass(frozen=True)
class Deployment:
    """Custom modules in startup order (edgeAgent's order: startupOrder ascending, unset last, then name)."""

    modules: dict[str, ModuleSpec]
    routes: dict[str, Any]
    store_ttl_secs: int
    desired: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    source: str = "<manifest>"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as iotedgedev reads `.env`: comments, blank lines, optional quotes."""
    values: dict[str, str] = {}
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def load_manifest(
    path: Path,
    variables: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Deployment:
    """Read `path`; `$VAR` resolves from `variables`, then `.env` beside the manifest, then `environ`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from error
    env_file = path.parent / ".env"
    from_env_file = read_env_file(env_file) if env_file.is_file() else {}
    lookup: dict[str, str] = dict(os.environ if environ is None else environ)
    lookup.update(from_env_file)
    lookup.update(variables or {})
    return parse_manifest(data, lookup, source=str(path))


def parse_manifest(data: Any, variables: Mapping[str, str], source: str = "<manifest>") -> Deployment:
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the top level must be a JSON object")
    content = data
    if "modulesContent" not in content and isinstance(content.get("content"), dict):
        # `az iot edge deployment` files wrap the same thing in "content".
        content = content["content"]
    modules_content = _object(content, "modulesContent", source, "")
    agent = _object(modules_content, "$edgeAgent", source, "modulesContent")
    agent_desired = _object(agent, "properties.desired", source, "modulesContent.$edgeAgent")
    hub = _object(modules_content, "$edgeHub", source, "modulesContent")
    hub_desired = _object(hub, "properties.desired", source, "modulesContent.$edgeHub")

    warnings: list[str] = []
    unknown: set[str] = set()

    def expand(value: Any) -> Any:
        return _expand(value, variables, unknown)

    raw_modules = agent_desired.get("modules", {})
    if not isinstance(raw_modules, dict):
        raise ManifestError(
            f"{source}: modulesContent.$edgeAgent.properties.desired.modules must be an object"
        )
    modules: list[ModuleSpec] = []
    for name, raw in raw_modules.items():
        where = f"{_AGENT}.modules.{name}"
        if name in SYSTEM_MODULES:
            continue
        if not isinstance(raw, dict):
            raise ManifestError(f"{source}: {where} must be an object")
        modules.append(_parse_module(name, raw, expand, source, where))

    routes = hub_desired.get("routes", {})
    if not isinstance(routes, dict):
        raise ManifestError(f"{source}: {_HUB}.routes must be an object")
    routes = cast("dict[str, Any]", expand(routes))
    store_ttl = _store_ttl(hub_desired, source)

    desired: dict[str, dict[str, Any]] = {}
    for name, module_content in modules_content.items():
        if name.startswith("$"):
            continue
        where = f"modulesContent.{name}"
        if not isinstance(module_content, dict):
            raise ManifestError(f"{source}: {where} must be an object")
        nested = module_content.get("properties")
        props = module_content.get(
            "properties.desired", nested.get("desired") if isinstance(nested, dict) else None
        )
        if props is None:
            continue
        if not isinstance(props, dict):
            raise ManifestError(f"{source}: {where}.properties.desired must be an object")
        desired[name] = cast("dict[str, Any]", expand(props))

    if unknown:
        warnings.append("unresolved variables left as written: " + ", ".join(sorted(unknown)))
    ordered = sorted(
        modules,
        key=lambda m: (m.startup_order is None, m.startup_order or 0, m.name),
    )
    return Deployment(
        modules={m.name: m for m in ordered},
        routes=routes,
        store_ttl_secs=store_ttl,
        desired=desired,
        warnings=warnings,
        source=source,
    )


def _object(parent: Mapping[str, Any], key: str, source: str, where: str) -> dict[str, Any]:
    """A nested object; `properties.desired` is spelt either as one dotted key or as two levels."""
    path = f"{where}.{key}" if where else key
    value: Any
    if key in parent:
        value = parent[key]
    elif "." in key:
        head, _, tail = key.partition(".")
        value = parent.get(head)
        value = value.get(tail) if isinstance(value, dict) else None
    else:
        value = None
    if value is None:
        raise ManifestError(f"{source}: missing {path}")
    if not isinstance(value, dict):
        raise ManifestError(f"{source}: {path} must be an object")
    return value


def _parse_module(
    name: str,
    raw: dict[str, Any],
    expand: Callable[[Any], Any],
    source: str,
    where: str,
) -> ModuleSpec:
    settings = raw.get("settings", {})
    if not isinstance(settings, dict):
        raise ManifestError(f"{source}: {where}.settings must be an object")
    image = expand(settings.get("image", ""))
    if not isinstance(image, str):
        raise ManifestError(f"{source}: {where}.settings.image must be a string")
    create_options = cast("dict[str, Any]", expand(_create_options(settings, source, f"{where}.settings")))

    raw_env = raw.get("env", {})
    if not isinstance(raw_env, dict):
        raise ManifestError(f"{source}: {where}.env must be an object")
    env: dict[str, str] = {}
    for key, entry in raw_env.items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise ManifestError(f'{source}: {where}.env.{key} must be {{"value": ...}}')
        value = expand(entry["value"])
        env[key] = value if isinstance(value, str) else json.dumps(value)

    policy = raw.get("restartPolicy", "always")
    if policy not in RESTART_POLICIES:
        raise ManifestError(
            f"{source}: {where}.restartPolicy {policy!r} is not one of {', '.join(RESTART_POLICIES)}"
        )
    status = raw.get("status", "running")
    if status not in ("running", "stopped"):
        raise ManifestError(f"{source}: {where}.status {status!r} is not 'running' or 'stopped'")
    order = raw.get("startupOrder")
    if order is not None and (not isinstance(order, int) or isinstance(order, bool) or order < 0):
        raise ManifestError(f"{source}: {where}.startupOrder must be a non-negative integer")
    return ModuleSpec(
        name=name,
        image=image,
        env=env,
        create_options=create_options,
        restart_policy=cast("RestartPolicy", policy),
        status=cast("ModuleStatus", status),
        startup_order=order,
        volumes=_volumes(create_options, source, f"{where}.settings.createOptions"),
    )


def _create_options(settings: Mapping[str, Any], source: str, where: str) -> dict[str, Any]:
    value = settings.get("createOptions")
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ManifestError(f"{source}: {where}.createOptions must be an object or a JSON string")
    parts = [value]
    extra = sorted(
        (int(match.group(1)), key)
        for key in settings
        if (match := _SPLIT_CREATE_OPTIONS.match(key)) is not None
    )
    for _, key in extra:
        part = settings[key]
        if not isinstance(part, str):
            raise ManifestError(f"{source}: {where}.{key} must be a string")
        parts.append(part)
    text = "".join(parts)
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{source}: {where}.createOptions is not valid JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise ManifestError(f"{source}: {where}.createOptions must encode a JSON object")
    return parsed


def _volumes(create_options: Mapping[str, Any], source: str, where: str) -> tuple[Volume, ...]:
    host_config = create_options.get("HostConfig", {})
    if not isinstance(host_config, dict):
        raise ManifestError(f"{source}: {where}.HostConfig must be an object")
    volumes: list[Volume] = []
    binds = host_config.get("Binds", [])
    if not isinstance(binds, list):
        raise ManifestError(f"{source}: {where}.HostConfig.Binds must be a list")
    for index, bind in enumerate(binds):
        if not isinstance(bind, str):
            raise ManifestError(f"{source}: {where}.HostConfig.Binds[{index}] must be a string")
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
            raise ManifestError(
                f"{source}: {where}.HostConfig.Binds[{index}] {bind!r} is not 'source:/target[:options]'"
            )
        options = parts[2].split(",") if len(parts) == 3 else []
        volumes.append(Volume(source=parts[0], target=parts[1], read_only="ro" in options))
    mounts = host_config.get("Mounts", [])
    if not isinstance(mounts, list):
        raise ManifestError(f"{source}: {where}.HostConfig.Mounts must be a list")
    for index, mount in enumerate(mounts):
        if not isinstance(mount, dict):
            raise ManifestError(f"{source}: {where}.HostConfig.Mounts[{index}] must be an object")
        mount_source = mount.get("Source")
        target = mount.get("Target")
        if not isinstance(mount_source, str) or not mount_source or not isinstance(target, str):
            raise ManifestError(
                f"{source}: {where}.HostConfig.Mounts[{index}] needs Source and Target strings"
            )
        volumes.append(
            Volume(source=mount_source, target=target, read_only=bool(mount.get("ReadOnly", False)))
        )
    return tuple(volumes)


def _store_ttl(hub_desired: Mapping[str, Any], source: str) -> int:
    config = hub_desired.get("storeAndForwardConfiguration", {})
    if not isinstance(config, dict):
        raise ManifestError(f"{source}: {_HUB}.storeAndForwardConfiguration must be an object")
    ttl = config.get("timeToLiveSecs", DEFAULT_STORE_TTL_SECS)
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        raise ManifestError(
            f"{source}: {_HUB}.storeAndForwardConfiguration.timeToLiveSecs must be an integer"
        )
    return ttl


def _expand(value: Any, variables: Mapping[str, str], unknown: set[str]) -> Any:
    """Expand `$VAR`/`${VAR}` in every string value (keys are names, never expanded)."""
    if isinstance(value, str):
        return expand_string(value, variables, unknown)
    if isinstance(value, dict):
        return {key: _expand(item, variables, unknown) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, variables, unknown) for item in value]
    return value


def expand_string(text: str, variables: Mapping[str, str], unknown: set[str] | None = None) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in variables:
            return variables[name]
        if name not in RESERVED_DOLLAR_NAMES and unknown is not None:
            unknown.add(name)
        return match.group(0)

    return _VARIABLE.sub(substitute, text)
