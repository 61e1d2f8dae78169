"""Checks a deployment template, a generated manifest or a layered deployment before anyone ships it.

The official JSON schemas (vendored in schemas/, resolved offline) catch shape errors; the checks here catch
what the schemas cannot see: routes naming modules that do not exist, createOptions that edgeAgent would
truncate, module names Docker or DNS would refuse, twins over IoT Hub's size limit, secrets written in clear,
and an edgeHub schema version that breaks the tooling.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jsonschema import Draft4Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4, DRAFT7

from ml.deploy.manifest import (
    CREATE_OPTIONS_MAX_CHUNKS,
    DESIRED,
    RESERVED_DOLLAR_WORDS,
    TEMPLATE_SUFFIX,
    TWIN_VALUE_MAX_SIZE,
    ManifestError,
    is_layered,
    iter_modules,
    iter_routes,
    modules_content,
    user_module_names,
)

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_BASE = "https://json.schemastore.org/"
TEMPLATE_SCHEMA = SCHEMA_BASE + "azure-iot-edge-deployment-template-3.0.json"
MANIFEST_SCHEMA = SCHEMA_BASE + "azure-iot-edge-deployment-2.0.json"

# edgeAgent reads createOptions01..99 (a two-digit suffix); iotedgedev and older tools write at most 8 chunks.
EDGE_AGENT_MAX_CHUNKS = 100
# IoT Hub's limit on each of a twin's tags, desired and reported properties.
TWIN_DESIRED_MAX_BYTES = 32 * 1024
# A module name is a container name and a host name on the module network: one DNS label.
MODULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
ROUTE_NAME = re.compile(r"^[^.$# ]+$")

_ROUTE = re.compile(
    r"^\s*FROM\s+(?P<source>\S+)(?:\s+WHERE\s+.+?)?\s+INTO\s+(?P<sink>\S.*?)\s*$", re.I | re.S
)
_GENERIC_SOURCES = frozenset({"/*", "/messages/*", "/messages/modules/*", "/twinChangeNotifications"})
_MODULE_SOURCE = re.compile(r"^/messages/modules/(?P<module>[^/*]+)/(?:\*|outputs/(?:\*|[^/*]+))$")
_BROKERED_SINK = re.compile(r"""^BrokeredEndpoint\(\s*(?P<q>["'])(?P<path>[^"']*)(?P=q)\s*\)$""", re.I)
_MODULE_INPUT = re.compile(r"^/modules/(?P<module>[^/]+)/inputs/(?P<input>[^/]+)$")

_BRACED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_.-]*\}")
_ANY_REFERENCE = re.compile(r"\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_PURE_REFERENCE = re.compile(r"^\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)$")
_KEYED_SECRET = re.compile(
    r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature|Password|Pwd)\s*=\s*(?P<value>[^;\s\"'&]+)"
)
_SAS_TOKEN = re.compile(r"SharedAccessSignature\s+sr=", re.I)
_SAS_URL = re.compile(r"[?&]sig=(?P<value>[^&\s]+)", re.I)
_SECRET_NAME = re.compile(
    r"(?i)(password|passwd|pwd|secret|connection_?string|account_?key|access_?key|shared_?access|api_?key"
    r"|sas_?token|access_?token)"
)


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Kind(enum.StrEnum):
    TEMPLATE = "template"
    MANIFEST = "manifest"
    LAYERED_TEMPLATE = "layered-template"
    LAYERED = "layered"

    @property
    def is_template(self) -> bool:
        return self in (Kind.TEMPLATE, Kind.LAYERED_TEMPLATE)

    @property
    def is_layered(self) -> bool:
        return self in (Kind.LAYERED, Kind.LAYERED_TEMPLATE)


@dataclass(frozen=True)
class Problem:
    severity: Severity
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


def has_errors(problems: Iterable[Problem]) -> bool:
    return any(problem.severity is Severity.ERROR for problem in problems)


def _where(path: Iterable[Any]) -> str:
    return "/".join(str(part) for part in path) or "(document)"


def _error(path: Iterable[Any], message: str) -> Problem:
    return Problem(Severity.ERROR, _where(path), message)


def _warning(path: Iterable[Any], message: str) -> Problem:
    return Problem(Severity.WARNING, _where(path), message)


# --- what a document is -----------------------------------------------------------------------------------


def _iter_strings(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _iter_strings(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _iter_strings(item, (*path, str(index)))


def _unexpanded(text: str) -> list[str]:
    """Placeholders left in a string: any `${...}`, and a bare `$NAME` only when it is the whole value (a
    password may well contain `$x`; a value that is exactly `$NAME` is a variable nobody expanded)."""
    names = [match.group(0) for match in _BRACED.finditer(text)]
    bare = _PURE_REFERENCE.match(text)
    if bare and not names and text[1:] not in RESERVED_DOLLAR_WORDS:
        names.append(text)
    return names


def detect_kind(document: Mapping[str, Any], filename: str | None = None) -> Kind:
    """Layered if modulesContent uses property paths; a template if named *.template.json or if it still holds
    placeholders, `$schema-template` or createOptions objects."""
    content = modules_content(document)
    layered = is_layered(content) or (filename is not None and Path(filename).name.startswith("layered."))
    if filename is not None and filename.endswith(TEMPLATE_SUFFIX):
        template = True
    else:
        template = "$schema-template" in document
        template = template or any("${MODULES." in text for _, text in _iter_strings(content))
        template = template or any(
            not isinstance(module.body.get("settings", {}).get("createOptions", ""), str)
            for module in iter_modules(content)
        )
    if layered:
        return Kind.LAYERED_TEMPLATE if template else Kind.LAYERED
    return Kind.TEMPLATE if template else Kind.MANIFEST


# --- schemas ------------------------------------------------------------------------------------------------


@cache
def _registry(schemas_dir: Path) -> Registry[Any]:
    resources = []
    for path in sorted(schemas_dir.glob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        uri = contents.get("$id") or contents.get("id")
        spec = DRAFT7 if "$id" in contents else DRAFT4
        resources.append((uri, spec.create_resource(contents)))
    return Registry().with_resources(resources)


def _validator(reference: str, schemas_dir: Path) -> Draft4Validator:
    return Draft4Validator({"$ref": reference}, registry=_registry(schemas_dir))


def _pointer(*segments: str) -> str:
    return "#/" + "/".join(
        quote(segment.replace("~", "~0").replace("/", "~1"), safe="") for segment in segments
    )


def _module_schema(root: str) -> str:
    return root + _pointer(
        "properties", "modulesContent", "properties", "$edgeAgent", "properties", DESIRED,
        "properties", "modules", "patternProperties", "^[a-zA-Z0-9_-]+$",
    )  # fmt: skip


_ROUTE_SCHEMA = MANIFEST_SCHEMA + _pointer(
    "properties", "modulesContent", "properties", "$edgeHub", "properties", DESIRED,
    "properties", "routes", "patternProperties", "^[^\\.\\$# ]+$",
)  # fmt: skip
_REGISTRY_CREDENTIAL_SCHEMA = MANIFEST_SCHEMA + _pointer(
    "properties", "modulesContent", "properties", "$edgeAgent", "properties", DESIRED,
    "properties", "runtime", "properties", "settings", "properties", "registryCredentials",
    "patternProperties", "^[^\\.\\$# ]+$",
)  # fmt: skip


def _schema_errors(validator: Draft4Validator, instance: Any, base: tuple[str, ...]) -> list[Problem]:
    errors = sorted(
        validator.iter_errors(instance), key=lambda error: [str(part) for part in error.absolute_path]
    )
    return [_error((*base, *map(str, error.absolute_path)), error.message) for error in errors]


def schema_problems(
    document: Mapping[str, Any], kind: Kind, schemas_dir: Path = SCHEMAS_DIR
) -> list[Problem]:
    if kind is Kind.TEMPLATE:
        return _schema_errors(_validator(TEMPLATE_SCHEMA, schemas_dir), document, ())
    if kind is Kind.MANIFEST:
        return _schema_errors(_validator(MANIFEST_SCHEMA, schemas_dir), document, ())
    # A layer has no schema of its own: each entry it sets is checked against the full schema's part for it.
    content = modules_content(document)
    module_schema = _validator(
        _module_schema(TEMPLATE_SCHEMA if kind.is_template else MANIFEST_SCHEMA), schemas_dir
    )
    problems: list[Problem] = []
    for module in iter_modules(content):
        problems += _schema_errors(module_schema, module.body, ("modulesContent", *module.path))
    route_schema = _validator(_ROUTE_SCHEMA, schemas_dir)
    hub = content.get("$edgeHub", {})
    for key, value in hub.items() if isinstance(hub, dict) else ():
        if key.startswith(f"{DESIRED}.routes."):
            problems += _schema_errors(route_schema, value, ("modulesContent", "$edgeHub", key))
    credential_schema = _validator(_REGISTRY_CREDENTIAL_SCHEMA, schemas_dir)
    agent = content.get("$edgeAgent", {})
    for key, value in agent.items() if isinstance(agent, dict) else ():
        if key.startswith(f"{DESIRED}.runtime.settings.registryCredentials."):
            problems += _schema_errors(credential_schema, value, ("modulesContent", "$edgeAgent", key))
    return problems


# --- checks beyond the schemas ------------------------------------------------------------------------------


def layer_structure_problems(content: Mapping[str, Any]) -> list[Problem]:
    """A layer adds modules, registry credentials, routes and twin properties by path; the rest is the
    base's."""
    problems: list[Problem] = []
    agent_paths = (f"{DESIRED}.modules.", f"{DESIRED}.runtime.settings.registryCredentials.")
    for section, allowed in (("$edgeAgent", agent_paths), ("$edgeHub", (f"{DESIRED}.routes.",))):
        body = content.get(section, {})
        if not isinstance(body, dict):
            problems.append(_error(("modulesContent", section), "must be an object"))
            continue
        for key in body:
            where = ("modulesContent", section, key)
            if key.startswith(f"{DESIRED}.systemModules."):
                problems.append(_error(where, "system modules belong to the base deployment, not a layer"))
            elif not key.startswith(allowed):
                problems.append(
                    _error(where, f"a layer may set only {', '.join(p + '<name>' for p in allowed)}")
                )
            elif section == "$edgeHub" and not ROUTE_NAME.match(key[len(f"{DESIRED}.routes.") :]):
                problems.append(_error(where, "route names cannot contain '.', '$', '#' or spaces"))
    for name, body in content.items():
        if name.startswith("$") or not isinstance(body, dict):
            continue
        for key in body:
            where = ("modulesContent", name, key)
            if key == DESIRED:
                problems.append(
                    _warning(
                        where, f"replaces all of the base's desired properties; prefer {DESIRED}.<property>"
                    )
                )
            elif not key.startswith(DESIRED + "."):
                problems.append(_error(where, f"a layer sets module twins by path: {DESIRED}.<property>"))
    return problems


def module_name_problems(content: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for module in iter_modules(content):
        if module.system:
            continue
        where = ("modulesContent", *module.path)
        if not MODULE_NAME.match(module.name):
            problems.append(
                _error(
                    where,
                    "a module name is 1-63 letters, digits, '-' or '_', starting with a letter or digit",
                )
            )
        if module.name.lower() in {"edgeagent", "edgehub"}:
            problems.append(_error(where, f"{module.name!r} is a system module's name"))
        folded = module.name.lower()
        if folded in seen and seen[folded] != module.name:
            problems.append(
                _error(where, f"differs from module {seen[folded]!r} only by case (one host name)")
            )
        seen.setdefault(folded, module.name)
    return problems


def _route_module_problem(
    module: str, known: set[str], layered_without_base: bool, where: tuple[str, ...], role: str
) -> Problem | None:
    if module in known:
        return None
    if layered_without_base:
        return _warning(
            where, f"{role} module {module!r} is not in this layer; it must be in the base deployment"
        )
    return _error(where, f"{role} module {module!r} is not a module of this deployment")


def route_problems(
    content: Mapping[str, Any], kind: Kind, base_modules: Iterable[str] | None
) -> list[Problem]:
    """Each route must parse, read from a module output (or a catch-all) and write to $upstream or a module
    input, with every module it names deployed (by this manifest, or by the base under a layer)."""
    known = user_module_names(content) | set(base_modules or ())
    layered_without_base = kind.is_layered and base_modules is None
    problems: list[Problem] = []
    for route in iter_routes(content):
        where = ("modulesContent", *route.path)
        match = _ROUTE.match(route.route)
        if match is None:
            problems.append(
                _error(where, f"not a route (FROM <source> [WHERE <condition>] INTO <sink>): {route.route!r}")
            )
            continue
        source, sink = match.group("source"), match.group("sink")
        if source not in _GENERIC_SOURCES:
            source_match = _MODULE_SOURCE.match(source)
            if source_match is None:
                problems.append(
                    _error(where, f"unknown source {source!r} (expected /messages/modules/<m>/outputs/<o>)")
                )
            else:
                found = _route_module_problem(
                    source_match.group("module"), known, layered_without_base, where, "source"
                )
                problems += [found] if found else []
        if sink == "$upstream":
            continue
        sink_match = _BROKERED_SINK.match(sink)
        input_match = _MODULE_INPUT.match(sink_match.group("path")) if sink_match else None
        if input_match is None:
            problems.append(
                _error(
                    where,
                    f"unknown sink {sink!r} (expected $upstream or "
                    'BrokeredEndpoint("/modules/<m>/inputs/<i>"))',
                )
            )
            continue
        found = _route_module_problem(input_match.group("module"), known, layered_without_base, where, "sink")
        problems += [found] if found else []
    return problems


def twin_target_problems(
    content: Mapping[str, Any], base_modules: Iterable[str] | None, kind: Kind
) -> list[Problem]:
    """Desired properties for a module nobody deploys configure nothing."""
    known = user_module_names(content) | set(base_modules or ())
    if kind.is_layered and base_modules is None:
        return []
    return [
        _warning(("modulesContent", name), "desired properties for a module this deployment does not run")
        for name in content
        if not name.startswith("$") and name not in known
    ]


def create_options_problems(content: Mapping[str, Any], kind: Kind) -> list[Problem]:
    problems: list[Problem] = []
    for module in iter_modules(content):
        settings = module.body.get("settings")
        if not isinstance(settings, dict) or "createOptions" not in settings:
            continue
        where = ("modulesContent", *module.path, "settings")
        first = settings["createOptions"]
        if kind.is_template:
            text = first if isinstance(first, str) else json.dumps(first, separators=(",", ":"))
            if len(text) > CREATE_OPTIONS_MAX_CHUNKS * TWIN_VALUE_MAX_SIZE:
                problems.append(
                    _error(
                        where,
                        f"createOptions is {len(text)} characters compact; generation stops at "
                        f"{CREATE_OPTIONS_MAX_CHUNKS} chunks of {TWIN_VALUE_MAX_SIZE}",
                    )
                )
            continue
        numbered = sorted(
            int(m.group(1)) for key in settings if (m := re.match(r"^createOptions(\d\d)$", key))
        )
        if numbered != list(range(1, len(numbered) + 1)):
            problems.append(
                _error(where, f"createOptions chunks must run 01, 02, ... without gaps (have {numbered})")
            )
        chunks = [first, *(settings.get(f"createOptions{index:02d}") for index in numbered)]
        if not all(isinstance(chunk, str) for chunk in chunks):
            continue  # the schema reports non-string createOptions
        for index, chunk in enumerate(chunks):
            size = len(str(chunk).encode("utf-8"))
            if size > TWIN_VALUE_MAX_SIZE:
                key = "createOptions" if index == 0 else f"createOptions{index:02d}"
                problems.append(
                    _error((*where, key), f"{size} bytes; a twin value holds {TWIN_VALUE_MAX_SIZE}")
                )
        if len(chunks) > EDGE_AGENT_MAX_CHUNKS:
            problems.append(
                _error(where, f"{len(chunks)} createOptions chunks; edgeAgent reads {EDGE_AGENT_MAX_CHUNKS}")
            )
        elif len(chunks) > CREATE_OPTIONS_MAX_CHUNKS:
            problems.append(
                _warning(where, f"{len(chunks)} createOptions chunks; iotedgedev and older edgeAgents take 8")
            )
        merged = "".join(str(chunk) for chunk in chunks).strip()
        if merged:
            try:
                parsed = json.loads(merged)
            except json.JSONDecodeError as error:
                problems.append(_error(where, f"createOptions chunks joined are not JSON: {error}"))
                continue
            if not isinstance(parsed, dict):
                problems.append(_error(where, "createOptions must be a JSON object"))
    return problems


def twin_size_problems(content: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for name, body in content.items():
        desired = body.get(DESIRED) if isinstance(body, dict) else None
        if desired is None:
            continue
        size = len(json.dumps(desired, separators=(",", ":")).encode("utf-8"))
        if size > TWIN_DESIRED_MAX_BYTES:
            problems.append(
                _error(
                    ("modulesContent", name, DESIRED),
                    f"{size} bytes; IoT Hub caps desired properties at 32 KB",
                )
            )
    return problems


def edge_hub_version_problems(content: Mapping[str, Any]) -> list[Problem]:
    hub = content.get("$edgeHub")
    desired = hub.get(DESIRED) if isinstance(hub, dict) else None
    version = desired.get("schemaVersion") if isinstance(desired, dict) else None
    if isinstance(version, str) and version not in {"1.0", "1.1"}:
        return [
            _error(
                ("modulesContent", "$edgeHub", DESIRED, "schemaVersion"),
                f"edgeHub schema {version}: use 1.1 (1.2 breaks `iotedgedev solution deploy` and the portal "
                "view; "
                "see schemas/README.md)",
            )
        ]
    return []


def _secret_reason(name: str, text: str) -> tuple[str, bool] | None:
    """Why `text` looks like a credential, and whether it is a SAS URL (scoped and expiring: milder)."""
    for match in _KEYED_SECRET.finditer(text):
        if not match.group("value").startswith("$"):
            return f"{match.group(1)}= with a literal value", False
    if _SAS_TOKEN.search(text):
        return "a SAS token", False
    sas = _SAS_URL.search(text)
    if sas and not sas.group("value").startswith("$"):
        return "a SAS-signed URL", True
    # By name only when no part of the value comes from a variable: "Server=x;Password=$DB_PASSWORD" is fine.
    if _SECRET_NAME.search(name) and text and not _ANY_REFERENCE.search(text):
        return f"{name!r} has a literal value", False
    return None


def _secret_name(path: tuple[str, ...]) -> str:
    # An env entry is {"NAME": {"value": ...}}: the name that says what the value is sits one level up.
    if len(path) >= 2 and path[-1] == "value":
        return path[-2]
    return path[-1] if path else ""


def secret_problems(document: Mapping[str, Any], kind: Kind) -> list[Problem]:
    """Templates are committed: no literal secret anywhere. Generated content carries what .env supplied, as
    iotedgedev's does: registry passwords are expected; module env values and SAS URLs are warned about (they
    end up readable in IoT Hub); a secret anywhere else (twin properties, createOptions, routes, images) is an
    error."""
    problems: list[Problem] = []
    for path, text in _iter_strings(document):
        found = _secret_reason(_secret_name(path), text)
        if found is None:
            continue
        reason, sas_url = found
        message = f"secret in clear: {reason}"
        if kind.is_template:
            problems.append(_error(path, message + "; reference a variable ($NAME) set in .env instead"))
            continue
        in_registry = (
            len(path) >= 3 and path[-1] == "password" and "registryCredentials" in "/".join(path[:-1])
        )
        in_env = len(path) >= 3 and path[-1] == "value" and path[-3] == "env"
        if in_registry:
            continue
        if in_env or sas_url:
            problems.append(
                _warning(path, message + " (expanded from .env; readable by anyone who reads the deployment)")
            )
        else:
            problems.append(
                _error(path, message + "; twins, createOptions and routes must not carry credentials")
            )
    return problems


def unexpanded_problems(document: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for path, text in _iter_strings(document):
        names = _unexpanded(text)
        if names:
            problems.append(
                _error(path, f"unexpanded placeholder(s) {', '.join(names)} in a generated manifest")
            )
    return problems


# --- entry point --------------------------------------------------------------------------------------------


def validate(
    document: Mapping[str, Any],
    kind: Kind | None = None,
    *,
    filename: str | None = None,
    base_modules: Iterable[str] | None = None,
    schemas_dir: Path = SCHEMAS_DIR,
) -> list[Problem]:
    """Every problem found, errors and warnings; `base_modules`: the base deployment's modules (layers)."""
    try:
        content = modules_content(document)
        kind = kind or detect_kind(document, filename)
    except ManifestError as error:
        return [_error((), problem) for problem in error.problems]
    base = None if base_modules is None else set(base_modules)
    problems = schema_problems(document, kind, schemas_dir)
    if kind.is_layered:
        problems += layer_structure_problems(content)
    problems += module_name_problems(content)
    problems += route_problems(content, kind, base)
    problems += twin_target_problems(content, base, kind)
    problems += create_options_problems(content, kind)
    problems += edge_hub_version_problems(content)
    problems += secret_problems(document, kind)
    if not kind.is_template:
        problems += unexpanded_problems(document)
        problems += twin_size_problems(content)
    return problems


def redact(document: Any) -> Any:
    """A copy with every string the secret check would flag replaced by '***', for printing."""

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, str):
            return "***" if _secret_reason(_secret_name(path), node) else node
        if isinstance(node, dict):
            return {key: walk(value, (*path, str(key))) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, (*path, str(index))) for index, item in enumerate(node)]
        return node

    return walk(document, ())
