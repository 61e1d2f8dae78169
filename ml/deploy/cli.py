"""`manifest gen|validate` and `deploy` subcommands; `add_subcommands` plugs them into `python -m ml`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ml.deploy.iothub import (
    DeployError,
    DeploymentService,
    IoTHubDeployments,
    ModelRef,
    build_layered_deployment,
    next_priority,
    parse_labels,
)
from ml.deploy.manifest import (
    ManifestError,
    generate,
    load_module_images,
    load_variables,
    modules_content,
    output_name,
    read_json,
    user_module_names,
    write_json_atomically,
)
from ml.deploy.validate import Kind, Problem, detect_kind, has_errors, redact, validate

DEFAULT_TEMPLATE = "deployment.template.json"
DEFAULT_DEBUG_TEMPLATE = "deployment.debug.template.json"
CONNECTION_STRING_VARIABLE = "IOTHUB_CONNECTION_STRING"

# Swapped by tests that need a fake hub; production always talks to IoT Hub through azure-iot-hub.
ServiceFactory = Callable[[str], DeploymentService]


def _open_iothub(connection_string: str) -> DeploymentService:
    service = IoTHubDeployments(connection_string)
    service.open()
    return service


service_factory: ServiceFactory = _open_iothub


def _report(problems: Sequence[Problem]) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)
    errors = sum(1 for problem in problems if problem.severity == "error")
    if problems:
        print(f"{errors} error(s), {len(problems) - errors} warning(s)", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _variables(args: argparse.Namespace) -> dict[str, str]:
    return load_variables(Path(args.env), os.environ)


def _base_modules(base: str | None, document_path: Path, kind: Kind) -> set[str] | None:
    """A layer's routes may name the base deployment's modules: read them from --base, or from the
    deployment.template.json beside the layer when there is one."""
    if base is None:
        if not kind.is_layered:
            return None
        beside = document_path.parent / DEFAULT_TEMPLATE
        if not beside.exists():
            return None
        base = str(beside)
    return user_module_names(modules_content(read_json(Path(base))))


# --- manifest gen -------------------------------------------------------------------------------------------


def _cmd_gen(args: argparse.Namespace) -> int:
    try:
        variables = _variables(args)
        platform = args.platform or variables.get("DEFAULT_PLATFORM") or "amd64"
        template_path = Path(args.template or (DEFAULT_DEBUG_TEMPLATE if args.debug else DEFAULT_TEMPLATE))
        modules_dir = Path(args.modules_dir or variables.get("MODULES_PATH") or "modules")
        out_dir = Path(args.out_dir or variables.get("CONFIG_OUTPUT_DIR") or "config")
        manifest = generate(read_json(template_path), load_module_images(modules_dir), platform, variables)
        kind = Kind.LAYERED if detect_kind(manifest).is_layered else Kind.MANIFEST
        problems = validate(manifest, kind, base_modules=_base_modules(args.base, template_path, kind))
    except ManifestError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except OSError as error:
        return _fail(str(error))
    _report(problems)
    if has_errors(problems):
        return _fail(f"{template_path}: the generated manifest is invalid; nothing written")
    destination = out_dir / output_name(template_path, platform)
    write_json_atomically(destination, manifest)
    print(f"wrote {destination} (from {template_path}, platform {platform})")
    return 0


# --- manifest validate --------------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        document = read_json(path)
        kind = Kind(args.kind) if args.kind else detect_kind(document, path.name)
        problems = validate(document, kind, base_modules=_base_modules(args.base, path, kind))
    except ManifestError as error:
        return _fail("; ".join(error.problems))
    except OSError as error:
        return _fail(str(error))
    _report(problems)
    if has_errors(problems):
        return 1
    print(f"{path}: valid {kind}")
    return 0


# --- deploy -------------------------------------------------------------------------------------------------


def _connection_string(variables: Mapping[str, str]) -> str:
    value = variables.get(CONNECTION_STRING_VARIABLE, "")
    if not value:
        raise DeployError(f"set {CONNECTION_STRING_VARIABLE} in .env or the environment")
    return value


def _deploy_device(args: argparse.Namespace, variables: Mapping[str, str]) -> int:
    if not args.device:
        return _fail("--manifest needs --device")
    path = Path(args.manifest)
    document = read_json(path)
    if detect_kind(document, path.name).is_template:
        return _fail(f"{path} is a template: generate it first (python -m ml manifest gen)")
    problems = validate(document, Kind.MANIFEST)
    _report(problems)
    if has_errors(problems):
        return 1
    content = modules_content(document)
    if args.dry_run:
        print(json.dumps({"device": args.device, "content": {"modulesContent": redact(content)}}, indent=2))
        return 0
    service = service_factory(_connection_string(variables))
    service.apply_to_device(args.device, content)
    print(f"applied {path} to device {args.device}")
    return 0


def _deploy_layered(args: argparse.Namespace, variables: dict[str, str]) -> int:
    if not args.name or not args.target_condition:
        return _fail("--layered needs --name and --target-condition")
    model = ModelRef.parse(args.model, args.model_uri, args.model_sha256) if args.model else None
    if model is not None:
        variables = {**variables, **model.variables()}
    path = Path(args.layered)
    modules_dir = Path(args.modules_dir or variables.get("MODULES_PATH") or "modules")
    platform = args.platform or variables.get("DEFAULT_PLATFORM") or "amd64"
    generated = generate(read_json(path), load_module_images(modules_dir), platform, variables)
    auto_priority = args.priority == "auto"
    deployment = build_layered_deployment(
        modules_content(generated),
        configuration_id=args.name,
        target_condition=args.target_condition,
        priority=0 if auto_priority else int(args.priority),
        labels=parse_labels(args.label),
        model=model,
    )
    problems = validate(
        {"modulesContent": deployment.modules_content},
        Kind.LAYERED,
        base_modules=_base_modules(args.base, path, Kind.LAYERED),
    )
    _report(problems)
    if has_errors(problems):
        return 1
    if args.dry_run:
        body: dict[str, Any] = redact(deployment.body())
        if auto_priority:
            body["priority"] = "auto (one above the highest ml layer in the hub)"
        print(json.dumps(body, indent=2))
        return 0
    service = service_factory(_connection_string(variables))
    if auto_priority:
        deployment = build_layered_deployment(
            deployment.modules_content,
            configuration_id=deployment.id,
            target_condition=deployment.target_condition,
            priority=next_priority(service.list_configurations()),
            labels=deployment.labels,
        )
    created = service.create_layered(deployment)
    print(f"created layered deployment {created.get('id')} at priority {created.get('priority')}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    try:
        variables = _variables(args)
        if args.manifest:
            return _deploy_device(args, variables)
        return _deploy_layered(args, variables)
    except (ManifestError, DeployError) as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(str(error))


# --- wiring -------------------------------------------------------------------------------------------------


def _priority(value: str) -> str:
    if value != "auto" and not value.isdigit():
        raise argparse.ArgumentTypeError("a priority is a non-negative integer or 'auto'")
    return value


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `manifest` (`gen`, `validate`) and `deploy`; each sets `func`, a handler returning exit code."""
    manifest = subparsers.add_parser("manifest", help="generate and validate IoT Edge deployment manifests")
    actions = manifest.add_subparsers(dest="manifest_command", required=True)

    gen = actions.add_parser("gen", help="a deployment manifest from a template, as iotedgedev makes it")
    gen.add_argument("--platform", help="module.json platform key (default: $DEFAULT_PLATFORM or amd64)")
    gen.add_argument("--debug", action="store_true", help=f"use {DEFAULT_DEBUG_TEMPLATE}")
    gen.add_argument("--template", help=f"template file (default: {DEFAULT_TEMPLATE})")
    gen.add_argument(
        "--env", default=".env", help="variables file (default: .env; the environment fills the rest)"
    )
    gen.add_argument("--out-dir", help="output folder (default: $CONFIG_OUTPUT_DIR or config)")
    gen.add_argument(
        "--modules-dir", help="folder of modules/<name>/module.json (default: $MODULES_PATH or modules)"
    )
    gen.add_argument(
        "--base", help="for a layered template: the base deployment whose modules its routes may name"
    )
    gen.set_defaults(func=_cmd_gen)

    check = actions.add_parser("validate", help="check a template, manifest or layered deployment")
    check.add_argument("file")
    check.add_argument("--kind", choices=[kind.value for kind in Kind], help="default: detected")
    check.add_argument(
        "--base", help="for a layer: the base deployment (default: deployment.template.json beside it)"
    )
    check.set_defaults(func=_cmd_validate)

    deploy = subparsers.add_parser(
        "deploy", help="apply a manifest to a device, or create a layered deployment"
    )
    target = deploy.add_mutually_exclusive_group(required=True)
    target.add_argument("--manifest", help="generated manifest to apply to one device (needs --device)")
    target.add_argument("--layered", help="layered deployment template, e.g. layered.ml.template.json")
    deploy.add_argument("--device", help="device id for --manifest")
    deploy.add_argument("--name", help="configuration id of the new layered deployment (lower case)")
    deploy.add_argument("--target-condition", help="e.g. \"tags.environment='prod'\"")
    deploy.add_argument("--priority", type=_priority, default="auto", help="integer, or 'auto' (default)")
    deploy.add_argument("--model", help="NAME:VERSION served by gpu-inferencer (sets its desired `model`)")
    deploy.add_argument("--model-uri", help="model uri (default: registry://NAME/VERSION)")
    deploy.add_argument("--model-sha256", help="sha256 of model.onnx, checked by the inferencer")
    deploy.add_argument(
        "--label", action="append", default=[], help="KEY=VALUE label on the deployment (repeatable)"
    )
    deploy.add_argument("--platform", help="platform for ${MODULES.x} placeholders (default: amd64)")
    deploy.add_argument("--modules-dir", help="folder of modules/<name>/module.json (default: modules)")
    deploy.add_argument("--base", help="base deployment for checking a layer's routes")
    deploy.add_argument("--env", default=".env", help="variables file (default: .env)")
    deploy.add_argument(
        "--dry-run", action="store_true", help="print what would be sent (secrets masked); send nothing"
    )
    deploy.set_defaults(func=_cmd_deploy)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.deploy", description=__doc__)
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
