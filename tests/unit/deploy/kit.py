"""Helpers for the deployment tests: module.json files, a .env file, the repo's templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]

ENV_TEXT = """\
CONTAINER_REGISTRY_SERVER="MyAcr.azurecr.io"
CONTAINER_REGISTRY_USERNAME="ci-user"
CONTAINER_REGISTRY_PASSWORD="registry-pass-123"
STORAGE_CONNECTION_STRING=""
MODEL_NAME="sensor-ae"
MODEL_VERSION="1"
MODEL_URI="registry://sensor-ae/1"
"""


def module_json(
    name: str, platforms: tuple[str, ...] = ("amd64", "amd64.debug", "arm64v8")
) -> dict[str, Any]:
    return {
        "$schema-version": "0.0.1",
        "image": {
            "repository": "${CONTAINER_REGISTRY_SERVER}/" + name,
            "tag": {"version": "0.1.0", "platforms": {p: f"./Dockerfile.{p}" for p in platforms}},
            "buildOptions": [],
            "contextPath": "../../",
        },
        "language": "python",
    }


def write_modules(root: Path, modules: dict[str, tuple[str, ...]]) -> Path:
    for name, platforms in modules.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "module.json").write_text(json.dumps(module_json(name, platforms)), encoding="utf-8")
    return root


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((REPO / name).read_text(encoding="utf-8"))
    return document


def all_module_names() -> set[str]:
    names = {path.parent.name for path in (REPO / "modules").glob("*/module.json")}
    return names | {"share-ingest", "transformer", "cloud-share-uploader", "gpu-inferencer"}
