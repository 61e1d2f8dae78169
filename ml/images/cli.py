"""`python -m ml images build|push`: module images tagged `<registry>/<module>:<version>-<platform>`.

`add_subcommands(subparsers)` adds the `images` command to the ml CLI; each parsed command carries
`handler(args) -> JSON-able result`, raising `ImageError` (an `MlError`) on refusal. The engine is
`$DOCKER_HOST` (or `--docker-host`); the registry and its credentials come from `.env` / the environment
(CONTAINER_REGISTRY_SERVER, CONTAINER_REGISTRY_USERNAME, CONTAINER_REGISTRY_PASSWORD).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException

from ml.deploy.manifest import load_variables
from ml.images.build import (
    INFERENCER_MODULE,
    ImageError,
    bake_model,
    baked_tag,
    build_images,
    plan_images,
    push_images,
)
from ml.registry import LocalRegistry, default_root


def add_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "images", help="build and push module images", description=__doc__
    )
    actions = parser.add_subparsers(dest="images_action", required=True)
    for action, text in (("build", "build module images"), ("push", "push built module images")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--module", action="append", default=[], help="this module only (repeatable)")
        sub.add_argument("--platform", default=None, help="module.json platform (default $DEFAULT_PLATFORM)")
        sub.add_argument("--version", default=None, help="image version instead of module.json's")
        sub.add_argument("--repo-root", type=Path, default=Path("."), help="the repo (default .)")
        sub.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default .env)")
        sub.add_argument("--docker-host", default=None, help="engine address (default $DOCKER_HOST)")
        sub.add_argument(
            "--model",
            default=None,
            metavar="NAME:VERSION",
            help="bake this registered model into gpu-inferencer",
        )
        sub.add_argument("--registry-root", type=Path, default=None, help="local model registry folder")
        if action == "build":
            sub.add_argument("--network", default=None, help="network for RUN steps (docker build --network)")
            sub.add_argument("--push", action="store_true", help="push what was built")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> Any:
    variables = load_variables(args.env_file, os.environ)
    platform = args.platform or variables.get("DEFAULT_PLATFORM") or "amd64"
    model = _model_spec(args.model) if args.model else None
    modules = list(args.module) or ([INFERENCER_MODULE] if model else [])
    plans = plan_images(args.repo_root, variables, platform=platform, modules=modules, version=args.version)
    client = _client(args.docker_host)
    try:
        pushing = args.images_action == "push" or getattr(args, "push", False)
        result: dict[str, Any] = {}
        tags = [plan.tag for plan in plans]
        if args.images_action == "build":
            result["built"] = [b.summary() for b in build_images(client, plans, network_mode=args.network)]
        if model is not None:
            base = next((plan.tag for plan in plans if plan.module == INFERENCER_MODULE), None)
            if base is None:
                raise ImageError(
                    f"--model bakes into {INFERENCER_MODULE}; it is not among the modules chosen"
                )
            registry = LocalRegistry(args.registry_root or default_root())
            if args.images_action == "build":
                baked = bake_model(client, base, registry, *model, platform=platform)
                result["baked"] = baked.summary()
            tags.append(baked_tag(base, *model))
        if pushing:
            result["pushed"] = [
                p.summary()
                for p in push_images(
                    client,
                    tags,
                    username=variables.get("CONTAINER_REGISTRY_USERNAME") or None,
                    password=variables.get("CONTAINER_REGISTRY_PASSWORD") or None,
                )
            ]
        return result
    finally:
        client.close()


def _model_spec(spec: str) -> tuple[str, str]:
    name, sep, version = spec.partition(":")
    if not sep or not name or not version:
        raise ImageError(f"--model wants NAME:VERSION, got {spec!r}")
    return name, version


def _client(host: str | None) -> docker.DockerClient:
    try:
        return docker.DockerClient(base_url=host) if host else docker.from_env()
    except DockerException as exc:
        raise ImageError(
            f"no Docker engine at {host or os.environ.get('DOCKER_HOST', 'the default socket')}: {exc}"
        ) from exc
