"""`edgesim run --model MODEL_DIR`: put a model into the run's local model registry and assign it.

The registry is the folder layout gpu-inferencer and `python -m ml registry` share:
`<registry>/<name>/<version>/{model.onnx, model.json}`, the card's `model_sha256` checked on the way in.
edgesim copies the files itself rather than importing ml/: the simulator runs modules, it does not train.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS_TARGET = "/data/models"
REGISTRY_SUBDIR = "registry"


class ModelError(ValueError):
    """A --model folder that is not a usable model directory."""


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    sha256: str

    @property
    def uri(self) -> str:
        return f"registry://{self.name}/{self.version}"

    def desired(self) -> dict[str, Any]:
        """The `model` desired property gpu-inferencer (and retrain-trigger) take."""
        return {"name": self.name, "version": self.version, "uri": self.uri, "sha256": self.sha256}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register_model(model_dir: Path, registry: Path) -> RegisteredModel:
    """Copy MODEL_DIR into `registry` under its card's name and version (an identical copy is reused)."""
    card_path = model_dir / "model.json"
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{model_dir}: no readable model.json ({error})") from error
    try:
        name, version = str(card["name"]), str(card["version"])
        model_file, expected = str(card.get("model_file", "model.onnx")), str(card["model_sha256"])
    except KeyError as error:
        raise ModelError(f"{card_path}: the card has no {error.args[0]!r}") from error
    onnx = model_dir / model_file
    if not onnx.is_file():
        raise ModelError(f"{model_dir}: {model_file} is missing")
    actual = _sha256(onnx)
    if actual != expected:
        raise ModelError(f"{onnx}: sha256 {actual} does not match the card's {expected}")
    target = registry / name / version
    if target.exists():
        if _sha256(target / model_file) != expected:
            raise ModelError(f"{target} already holds a different model {name} {version}")
    else:
        staging = registry / name / f".tmp-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copyfile(onnx, staging / model_file)
        shutil.copyfile(card_path, staging / "model.json")
        staging.rename(target)
    return RegisteredModel(name=name, version=version, sha256=expected)
