"""Model registries. `ModelRegistry` is the interface; `LocalRegistry` keeps versions in a folder:

    <root>/<name>/<version>/model.onnx + model.json      versions "1", "2", ...; "latest" = the highest

Registration copies into a temporary folder beside the versions and renames it into place under a file
lock, so a version appears whole or not at all, is never overwritten, and concurrent registrations (other
processes, other hosts on a shared folder with working locks) get distinct versions. The sha256 of
model.onnx must equal the card's `model_sha256` at register, fetch and verify.
"""

from __future__ import annotations

import builtins
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout

from ml.card import (
    CARD_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    CardError,
    ModelCard,
    read_card,
    sha256_file,
    write_card,
)
from ml.errors import MlError

LATEST = "latest"
REGISTRY_ENV = "EDGELOOP_REGISTRY"
DEFAULT_ROOT = Path("models/registry")
_LOCK_FILE = ".registry.lock"
_TEMP_PREFIX = ".tmp-"


class RegistryError(MlError):
    """Base of the registry's refusals."""


class ModelNotFoundError(RegistryError):
    pass


class VersionExistsError(RegistryError):
    pass


class IntegrityError(RegistryError):
    """A model file does not match its card's sha256, or a card does not match its place."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    uri: str
    sha256: str
    path: Path
    card: ModelCard

    def twin_model(self) -> dict[str, str]:
        """The `model` desired property of gpu-inferencer that selects this version."""
        return {"name": self.name, "version": self.version, "uri": self.uri, "sha256": self.sha256}

    def summary(self) -> dict[str, Any]:
        return {
            **self.twin_model(),
            "path": str(self.path),
            "created": self.card.created,
            "threshold": self.card.threshold,
        }


class ModelRegistry(Protocol):
    """What any registry offers (a local folder now; Azure ML later behind the same calls)."""

    def register(
        self, model_dir: Path, *, name: str | None = None, version: str | None = None
    ) -> ModelRef: ...

    def list(self, name: str | None = None) -> list[ModelRef]: ...

    def get(self, name: str, version: str = LATEST) -> ModelRef: ...

    def fetch(self, name: str, version: str, out: Path) -> ModelRef: ...


def default_root() -> Path:
    configured = os.environ.get(REGISTRY_ENV)
    return Path(configured) if configured else DEFAULT_ROOT


def registry_uri(name: str, version: str) -> str:
    return f"registry://{name}/{version}"


class LocalRegistry:
    def __init__(self, root: Path, *, lock_timeout_s: float = 60.0) -> None:
        self.root = root
        self._lock_timeout_s = lock_timeout_s

    def register(self, model_dir: Path, *, name: str | None = None, version: str | None = None) -> ModelRef:
        card, name, source = checked_for_registration(model_dir, name, version)
        model_root = self.root / name
        model_root.mkdir(parents=True, exist_ok=True)
        staging = model_root / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            # The copy is the slow part; it happens outside the lock and is checked, not trusted.
            shutil.copyfile(source, staging / MODEL_FILE)
            if sha256_file(staging / MODEL_FILE) != card.model_sha256:
                raise IntegrityError(f"{source} changed while it was being registered")
            with self._locked():
                chosen = version or str(self._highest_version(name) + 1)
                final = model_root / chosen
                if final.exists():
                    raise VersionExistsError(
                        f"{name} version {chosen} already exists; versions are never overwritten"
                    )
                registered = card.model_copy(
                    update={
                        "name": name,
                        "version": chosen,
                        "model_file": MODEL_FILE,
                        "lineage": {**(card.lineage or {}), "registered_by": "local"},
                    }
                )
                write_card(registered, staging)
                _fsync_tree(staging)
                staging.rename(final)
                _fsync_dir(model_root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return self._ref(name, chosen, final, registered)

    def list(self, name: str | None = None) -> list[ModelRef]:
        if name is not None:
            check_name(name)
            names = [name]
        elif self.root.is_dir():
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))
        else:
            names = []
        refs: list[ModelRef] = []
        for model_name in names:
            for model_version in self._versions(model_name):
                refs.append(self.get(model_name, str(model_version)))
        return refs

    def get(self, name: str, version: str = LATEST) -> ModelRef:
        check_name(name)
        resolved = self._resolve(name, version)
        folder = self.root / name / resolved
        try:
            card = read_card(folder)
        except CardError as exc:
            raise IntegrityError(str(exc)) from exc
        if card.name != name or card.version != resolved:
            raise IntegrityError(
                f"{folder}: the card says {card.name} version {card.version}, "
                f"the folder {name} version {resolved}"
            )
        return self._ref(name, resolved, folder, card)

    def verify(self, name: str, version: str = LATEST) -> ModelRef:
        ref = self.get(name, version)
        model = ref.path / ref.card.model_file
        if not model.is_file():
            raise IntegrityError(f"{model} is missing")
        actual = sha256_file(model)
        if actual != ref.card.model_sha256:
            raise IntegrityError(
                f"{model}: sha256 {actual} does not match the card's {ref.card.model_sha256}"
            )
        return ref

    def fetch(self, name: str, version: str, out: Path) -> ModelRef:
        ref = self.verify(name, version)
        out.mkdir(parents=True, exist_ok=True)
        staged = out / f".{MODEL_FILE}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copyfile(ref.path / ref.card.model_file, staged)
            if sha256_file(staged) != ref.card.model_sha256:
                raise IntegrityError(f"{name} version {ref.version} changed while it was being fetched")
            staged.replace(out / MODEL_FILE)
        finally:
            staged.unlink(missing_ok=True)
        write_card(ref.card, out)
        return self._ref(ref.name, ref.version, out, ref.card)

    def _resolve(self, name: str, version: str) -> str:
        if version == LATEST:
            versions = self._versions(name)
            if not versions:
                raise ModelNotFoundError(f"no versions of {name!r} in {self.root}")
            return str(versions[-1])
        check_version(version)
        if not (self.root / name / version).is_dir():
            raise ModelNotFoundError(f"{name} version {version} is not in {self.root}")
        return version

    def _versions(self, name: str) -> builtins.list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name))

    def _highest_version(self, name: str) -> int:
        versions = self._versions(name)
        return versions[-1] if versions else 0

    def _ref(self, name: str, version: str, path: Path, card: ModelCard) -> ModelRef:
        return ModelRef(
            name=name,
            version=version,
            uri=registry_uri(name, version),
            sha256=card.model_sha256,
            path=path,
            card=card,
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / _LOCK_FILE), timeout=self._lock_timeout_s)
        try:
            with lock:
                yield
        except Timeout as exc:
            raise RegistryError(
                f"the registry lock {self.root / _LOCK_FILE} is held by someone else"
            ) from exc


def checked_for_registration(
    model_dir: Path, name: str | None, version: str | None
) -> tuple[ModelCard, str, Path]:
    """What every registry checks before it takes a model: a valid name and version, and a model file that
    matches its card. Returns (card, the name to register under, the model file)."""
    card = read_card(model_dir)
    name = name or card.name
    check_name(name)
    if version is not None:
        check_version(version)
    source = model_dir / card.model_file
    if not source.is_file():
        raise ModelNotFoundError(f"{source} is missing")
    actual = sha256_file(source)
    if actual != card.model_sha256:
        raise IntegrityError(f"{source}: sha256 {actual} does not match the card's {card.model_sha256}")
    return card, name, source


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"invalid model name {name!r}")


def check_version(version: str) -> None:
    if not VERSION_PATTERN.match(version):
        raise RegistryError(f"invalid version {version!r}: a positive integer, or 'latest' where allowed")


def _fsync_tree(folder: Path) -> None:
    for path in (folder / MODEL_FILE, folder / CARD_FILE):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
