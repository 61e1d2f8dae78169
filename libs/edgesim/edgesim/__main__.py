"""`python -m edgesim`: run a deployment locally, and control a run in progress.

    python -m edgesim run --manifest deployment.template.json --out runs/demo --until-idle
    python -m edgesim status | twin get M | twin patch M '{"k": 1}' | method M NAME ['{...}'] [--timeout S]
    python -m edgesim module kill|stop|start|restart M
    python -m edgesim storage stop|start

Control commands find the run through `--run RUN_DIR` (default `runs/latest`), print JSON and exit non-zero
on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgesim.control import MODULE_ACTIONS, STORAGE_ACTIONS, ControlClient, ControlError
from edgesim.run import RunError, RunOptions, run_simulation
from edgesim.twins import merge_patch

DEFAULT_RUN = Path("runs/latest")


def _module_command(text: str) -> tuple[str, str]:
    name, sep, command = text.partition("=")
    if not sep or not name or not command.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=COMMAND, got {text!r}")
    return name, command


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _desired_arg(text: str) -> tuple[str, dict[str, Any]]:
    module, separator, value = text.partition("=")
    if not separator or not module:
        raise argparse.ArgumentTypeError(f"{text!r} is not MODULE=JSON or MODULE=@FILE")
    try:
        raw = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
        patch = json.loads(raw)
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"--desired {module}: {error}") from error
    if not isinstance(patch, dict):
        raise argparse.ArgumentTypeError(f"--desired {module}: the patch must be a JSON object")
    return module, patch


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesim", description="A Docker-free local IoT Edge.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a deployment manifest locally and write a report")
    run.add_argument("--manifest", type=Path, required=True)
    run.add_argument(
        "--out", type=Path, help="run dir (default runs/<UTC time>, with runs/latest pointing at it)"
    )
    run.add_argument(
        "--module",
        type=_module_command,
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="command for a module that is not a folder under modules/ (repeatable)",
    )
    run.add_argument("--data", type=Path, help="files to copy into the local share once modules are up")
    run.add_argument(
        "--data-interval",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="feed --data one file every SECONDS, in name order (default: all at once)",
    )
    run.add_argument(
        "--desired",
        type=_desired_arg,
        action="append",
        default=[],
        metavar="MODULE=JSON|@FILE",
        help="merge a patch into a module's desired properties before it starts (repeatable)",
    )
    run.add_argument(
        "--model",
        type=Path,
        metavar="MODEL_DIR",
        help="register MODEL_DIR in the run's registry; assign it to gpu-inferencer and retrain-trigger",
    )
    ending = run.add_mutually_exclusive_group()
    ending.add_argument("--duration", type=_positive, metavar="SECONDS")
    ending.add_argument("--until-idle", action="store_true")
    run.add_argument("--idle-seconds", type=_positive, default=5.0)
    run.add_argument("--timeout", type=_positive, help="cap for --duration/--until-idle (default 900 s)")
    run.add_argument("--no-azurite", action="store_true")
    run.add_argument("--host", help="loopback address for the hub (default: 127.0.0.1 if 8883 is free there)")
    run.add_argument("--force", action="store_true", help="wipe a non-empty --out that is not a run dir")
    run.add_argument(
        "--repo-root", type=Path, default=Path.cwd(), help="where modules/ and node_modules/ are"
    )
    run.add_argument("--stop-grace", type=_positive, default=10.0, help="seconds from SIGTERM to SIGKILL")

    def with_run(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run dir (default runs/latest)")
        return sub

    with_run(commands.add_parser("status", help="modules, routes and counters of the run"))

    twin = commands.add_parser("twin", help="read or patch a module twin")
    twin_commands = twin.add_subparsers(dest="twin_command", required=True)
    get = with_run(twin_commands.add_parser("get"))
    get.add_argument("module")
    patch = with_run(twin_commands.add_parser("patch", help="patch desired properties"))
    patch.add_argument("module")
    patch.add_argument("patch", type=_json_arg)

    method = with_run(commands.add_parser("method", help="invoke a direct method"))
    method.add_argument("module")
    method.add_argument("name")
    method.add_argument("payload", nargs="?", type=_json_arg, default=None)
    method.add_argument("--timeout", type=_positive, default=30.0)

    module = commands.add_parser("module", help="stop, kill, start or restart a module")
    module.add_argument("action", choices=MODULE_ACTIONS)
    with_run(module)
    module.add_argument("module")

    storage = commands.add_parser("storage", help="stop or start the run's Blob storage (Azurite)")
    storage.add_argument("action", choices=STORAGE_ACTIONS)
    with_run(storage)
    return parser


def _default_out() -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / stamp


def _point_latest(out: Path) -> None:
    latest = out.parent / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(out.name)


def _merged_patches(patches: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for module, patch in patches:
        merge_patch(merged.setdefault(module, {}), patch)
    return merged


def _run(args: argparse.Namespace) -> int:
    out: Path = args.out if args.out is not None else _default_out()
    options = RunOptions(
        manifest=args.manifest,
        out=out,
        repo_root=args.repo_root.resolve(),
        module_commands=dict(args.module),
        data=args.data,
        data_interval_s=args.data_interval,
        desired_patches=_merged_patches(args.desired),
        model=args.model,
        duration_s=args.duration,
        until_idle=args.until_idle,
        idle_seconds=args.idle_seconds,
        timeout_s=args.timeout,
        azurite=not args.no_azurite,
        host=args.host,
        force=args.force,
        stop_grace_s=args.stop_grace,
    )
    if args.out is None:
        out.mkdir(parents=True, exist_ok=True)
        _point_latest(out)
    try:
        return asyncio.run(run_simulation(options))
    except RunError as error:
        print(f"edgesim: {error}", file=sys.stderr)
        return 2


def _control(args: argparse.Namespace) -> int:
    client = ControlClient.for_run(args.run)
    result: dict[str, Any]
    ok = True
    if args.command == "status":
        result = client.status()
    elif args.command == "twin" and args.twin_command == "get":
        result = client.get_twin(args.module)
    elif args.command == "twin":
        if not isinstance(args.patch, dict):
            raise ControlError("the patch must be a JSON object")
        result = client.patch_desired(args.module, args.patch)
    elif args.command == "method":
        result = client.invoke_method(args.module, args.name, args.payload, args.timeout)
        status = result.get("status")
        ok = isinstance(status, int) and 200 <= status < 300
    elif args.command == "storage":
        result = client.storage_action(args.action)
    else:
        result = client.module_action(args.module, args.action)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if not ok:
        print(f"edgesim: method returned status {result.get('status')}", file=sys.stderr)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    try:
        return _control(args)
    except ControlError as error:
        print(f"edgesim: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
