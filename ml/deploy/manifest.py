"""Deployment manifests from templates, the way iotedgedev makes them, as pure functions plus thin file I/O.

A template names module images by placeholder (`${MODULES.<name>}`, `${MODULES.<name>.debug}`), reads
settings from `$VAR` / `${VAR}`, and may write createOptions as JSON objects. A manifest has real image tags,
no variables, and createOptions as strings cut into twin-sized chunks. The same functions serve full
deployments and layered ones, whose modulesContent uses property paths ("properties.desired.modules.<name>").
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

# iotedgedev's limits: a twin value holds 512 characters; it writes at most 8 chunks (4 KB) of createOptions.
TWIN_VALUE_MAX_SIZE = 512
CREATE_OPTIONS_MAX_CHUNKS = 8

TEMPLATE_SUFFIX = ".template.json"
DESIRED = "properties.desired"

# Words after `$` that belong to IoT Edge (route sinks, routing-query system properties), never variables.
RESERVED_DOLLAR_WORDS = frozenset(
    {
        "upstream",
        "edgeAgent",
        "edgeHub",
        "body",
        "twin",
        "connectionDeviceId",
        "connectionModuleId",
        "contentType",
        "contentEncoding",
        "messageId",
        "correlationId",
        "userId",
        "to",
        "expiryTimeUtc",
        "enqueuedTime",
        "outputName",
        "inputName",
    }
)

_MODULE_PLACEHOLDER = re.compile(r"\$\{MODULES\.([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_.-]+))?\}")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_CREATE_OPTIONS_KEY = re.compile(r"^(createOptions|createoptions)([0-9]*)$")

JsonObject = dict[str, Any]


class ManifestError(ValueError):
    """The template cannot become a manifest; `problems` lists every reason found, not only the first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UnknownVariablesError(ManifestError):
    def __init__(self, names: set[str]) -> None:
        super().__init__(
            [f"unknown variables (set them in .env or the environment): {', '.join(sorted(names))}"]
        )
        self.names = names


@dataclass(frozen=True)
class ModuleImage:
    """What module.json says about a module's image: `repository:version-platform` for each platform."""

    name: str
    repository: str
    version: str
    platforms: Mapping[str, str]


@dataclass(frozen=True)
class ModuleDefinition:
    """One module as edgeAgent sees it, wherever it sits in a full or layered modulesContent."""

    name: str
    system: bool
    path: tuple[str, ...]
    body: JsonObject


@dataclass(frozen=True)
class RouteDefinition:
    name: str
    path: tuple[str, ...]
    route: str


# --- module.json --------------------------------------------------------------------------------------------


def parse_module_json(name: str, document: Mapping[str, Any]) -> ModuleImage:
    try:
        image = document["image"]
        tag = image["tag"]
        repository = image["repository"]
        version = tag["version"]
        platforms = tag["platforms"]
    except (KeyError, TypeError) as missing:
        raise ManifestError([f"modules/{name}/module.json: missing image.{missing}"]) from None
    if not isinstance(repository, str) or not isinstance(version, str) or not isinstance(platforms, dict):
        raise ManifestError(
            [f"modules/{name}/module.json: image.repository/tag.version/tag.platforms malformed"]
        )
    return ModuleImage(name=name, repository=repository, version=version, platforms=dict(platforms))


def load_module_images(modules_dir: Path) -> dict[str, ModuleImage]:
    """Every modules/<name>/module.json; the folder name is the module name, as iotedgedev has it."""
    images: dict[str, ModuleImage] = {}
    for module_json in sorted(modules_dir.glob("*/module.json")):
        name = module_json.parent.name
        images[name] = parse_module_json(name, json.loads(module_json.read_text(encoding="utf-8")))
    return images


# --- variables ----------------------------------------------------------------------------------------------


def load_variables(env_file: Path | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables for expansion: the .env file first, then the environment for names it lacks."""
    variables = dict(environ)
    if env_file is not None and env_file.exists():
        for key, value in dotenv_values(env_file).items():
            variables[key] = value if value is not None else ""
    return variables


def _expand_string(text: str, variables: Mapping[str, str], unknown: set[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in RESERVED_DOLLAR_WORDS:
            return match.group(0)
        if name in variables:
            return variables[name]
        unknown.add(name)
        return match.group(0)

    return _VARIABLE.sub(replace, text)


def _map_strings(node: Any, transform: Callable[[str], str]) -> Any:
    # Values only: keys such as "$edgeAgent" or "properties.desired.modules.x" are structure, not settings.
    if isinstance(node, str):
        return transform(node)
    if isinstance(node, dict):
        return {key: _map_strings(value, transform) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_strings(item, transform) for item in node]
    return node


def expand_variables(document: Any, variables: Mapping[str, str]) -> Any:
    """Replace `$VAR` and `${VAR}` in every string value; any variable without a value is an error, all named.

    Substitution is per JSON string (not over the file text as iotedgedev does), so a value holding quotes or
    backslashes cannot break the JSON, and a substituted value is never expanded again.
    """
    unknown: set[str] = set()
    expanded = _map_strings(document, lambda text: _expand_string(text, variables, unknown))
    if unknown:
        raise UnknownVariablesError(unknown)
    return expanded


# --- images -------------------------------------------------------------------------------------------------


def image_tag(
    module: ModuleImage, platform: str, variables: Mapping[str, str], container_tag: str = ""
) -> str:
    """`<repository>:<version>[-<CONTAINER_TAG>]-<platform>`, lower-cased, as iotedgedev tags its builds."""
    if platform not in module.platforms:
        known = ", ".join(sorted(module.platforms)) or "none"
        raise ManifestError(
            [f"module {module.name!r} has no platform {platform!r} in its module.json (has: {known})"]
        )
    repository = expand_variables(module.repository, variables)
    suffix = f"-{container_tag}" if container_tag else ""
    return f"{repository}:{module.version}{suffix}-{platform}".lower()


def substitute_module_images(
    document: Any, images: Mapping[str, ModuleImage], platform: str, variables: Mapping[str, str]
) -> Any:
    """`${MODULES.x}` -> x's image for `platform`; `${MODULES.x.debug}` -> for `<platform>.debug`;
    `${MODULES.x.<platform>}` (iotedgedev's older form) -> for that platform."""
    problems: list[str] = []
    unknown: set[str] = set()
    container_tag = variables.get("CONTAINER_TAG", "")

    def replace(match: re.Match[str]) -> str:
        name, suffix = match.group(1), match.group(2)
        wanted = platform if suffix is None else f"{platform}.debug" if suffix == "debug" else suffix
        module = images.get(name)
        if module is None:
            problems.append(f"no module {name!r} (no modules/{name}/module.json) for {match.group(0)}")
            return match.group(0)
        try:
            return image_tag(module, wanted, variables, container_tag)
        except UnknownVariablesError as error:
            unknown.update(error.names)
        except ManifestError as error:
            problems.extend(error.problems)
        return match.group(0)

    result = _map_strings(document, lambda text: _MODULE_PLACEHOLDER.sub(replace, text))
    if problems:
        raise ManifestError(sorted(set(problems)))
    if unknown:
        raise UnknownVariablesError(unknown)
    return result


# --- modulesContent navigation (full and layered) ---------------------------------------------------------


def modules_content(document: Mapping[str, Any]) -> JsonObject:
    """The modulesContent of a manifest, template, or IoT Hub configuration (`{"content": {...}}`)."""
    if "modulesContent" in document:
        content = document["modulesContent"]
    elif isinstance(document.get("content"), dict) and "modulesContent" in document["content"]:
        content = document["content"]["modulesContent"]
    else:
        raise ManifestError(["no modulesContent in the document"])
    if not isinstance(content, dict):
        raise ManifestError(["modulesContent is not an object"])
    return content


def is_layered(content: Mapping[str, Any]) -> bool:
    """Layered deployments address properties by path ("properties.desired.modules.x") rather than nesting."""
    for system in ("$edgeAgent", "$edgeHub"):
        section = content.get(system)
        if isinstance(section, dict) and any(key.startswith(DESIRED + ".") for key in section):
            return True
    return False


def iter_modules(content: Mapping[str, Any]) -> Iterator[ModuleDefinition]:
    agent = content.get("$edgeAgent")
    if not isinstance(agent, dict):
        return
    desired = agent.get(DESIRED)
    if isinstance(desired, dict):
        for group, system in (("systemModules", True), ("modules", False)):
            modules = desired.get(group)
            if isinstance(modules, dict):
                for name, body in modules.items():
                    if isinstance(body, dict):
                        yield ModuleDefinition(name, system, ("$edgeAgent", DESIRED, group, name), body)
    for key, body in agent.items():
        for group, system in (("systemModules", True), ("modules", False)):
            prefix = f"{DESIRED}.{group}."
            if key.startswith(prefix) and isinstance(body, dict):
                yield ModuleDefinition(key[len(prefix) :], system, ("$edgeAgent", key), body)


def iter_routes(content: Mapping[str, Any]) -> Iterator[RouteDefinition]:
    hub = content.get("$edgeHub")
    if not isinstance(hub, dict):
        return
    entries: list[tuple[str, tuple[str, ...], Any]] = []
    desired = hub.get(DESIRED)
    if isinstance(desired, dict) and isinstance(desired.get("routes"), dict):
        entries.extend(
            (name, ("$edgeHub", DESIRED, "routes", name), value) for name, value in desired["routes"].items()
        )
    prefix = f"{DESIRED}.routes."
    entries.extend(
        (key[len(prefix) :], ("$edgeHub", key), value) for key, value in hub.items() if key.startswith(prefix)
    )
    for name, path, value in entries:
        route = value.get("route") if isinstance(value, dict) else value
        if isinstance(route, str):
            yield RouteDefinition(name, path, route)


def user_module_names(content: Mapping[str, Any]) -> set[str]:
    return {module.name for module in iter_modules(content) if not module.system}


# --- createOptions ------------------------------------------------------------------------------------------


def split_create_options(content: JsonObject) -> JsonObject:
    """Stringify each createOptions compactly and cut it into `createOptions`, `createOptions01`, ... chunks
    of at most 512 characters (iotedgedev's rule; JSON here is ASCII, so characters are bytes). A copy."""
    result = copy.deepcopy(content)
    problems: list[str] = []
    for module in iter_modules(result):
        settings = module.body.get("settings")
        if not isinstance(settings, dict) or "createOptions" not in settings:
            continue
        options = settings["createOptions"]
        if not isinstance(options, str):
            extra = sorted(
                key for key in settings if _CREATE_OPTIONS_KEY.match(key) and key != "createOptions"
            )
            if extra:
                problems.append(
                    f"module {module.name!r}: createOptions is an object but {', '.join(extra)} exist too"
                )
                continue
            options = json.dumps(options, separators=(",", ":"))
        chunks = [
            options[start : start + TWIN_VALUE_MAX_SIZE]
            for start in range(0, len(options), TWIN_VALUE_MAX_SIZE)
        ]
        if len(chunks) > CREATE_OPTIONS_MAX_CHUNKS:
            problems.append(
                f"module {module.name!r}: createOptions is {len(options)} characters, more than "
                f"{CREATE_OPTIONS_MAX_CHUNKS} chunks of {TWIN_VALUE_MAX_SIZE}"
            )
            continue
        if not chunks:
            continue
        rebuilt: JsonObject = {}
        for key, value in settings.items():
            if key == "createOptions":
                for index, chunk in enumerate(chunks):
                    rebuilt["createOptions" if index == 0 else f"createOptions{index:02d}"] = chunk
            else:
                rebuilt[key] = value
        settings.clear()
        settings.update(rebuilt)
    if problems:
        raise ManifestError(problems)
    return result


# --- the whole step -----------------------------------------------------------------------------------------


def generate(
    template: Mapping[str, Any],
    images: Mapping[str, ModuleImage],
    platform: str,
    variables: Mapping[str, str],
) -> JsonObject:
    """A template in, a manifest out: images, then variables, then createOptions; `$schema-template` dropped.

    Unknown variables are reported together, whether images or values need them; other problems stop there.
    """
    document: JsonObject = {key: value for key, value in template.items() if key != "$schema-template"}
    unknown: set[str] = set()
    try:
        document = substitute_module_images(document, images, platform, variables)
    except UnknownVariablesError as error:
        unknown = error.names
    try:
        # A placeholder left unresolved above never matches a variable, so this stage does not depend on it.
        document = expand_variables(document, variables)
    except UnknownVariablesError as error:
        unknown |= error.names
    if unknown:
        raise UnknownVariablesError(unknown)
    content = split_create_options(modules_content(document))
    if "modulesContent" in document:
        document["modulesContent"] = content
    else:
        document["content"]["modulesContent"] = content
    return document


def output_name(template: Path, platform: str) -> str:
    """deployment.template.json -> deployment.amd64.json;
    deployment.debug.template.json -> deployment.debug.amd64.json."""
    name = template.name
    stem = name[: -len(TEMPLATE_SUFFIX)] if name.endswith(TEMPLATE_SUFFIX) else Path(name).stem
    return f"{stem}.{platform}.json"


def write_json_atomically(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ManifestError([f"{path}: not JSON ({error})"]) from None
