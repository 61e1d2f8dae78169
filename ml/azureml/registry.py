"""`AzureMLRegistry`: the local registry's calls (`ml.registry.ModelRegistry`) over an Azure ML workspace.

A version is a `custom_model` asset whose folder in the workspace's Blob datastore holds model.onnx
and model.json, exactly a MODEL_DIR. The card's lineage goes into the asset's properties (immutable in
Azure ML, so they are the record) and, for the values people filter on in the studio, its tags. Versions
are positive integers as strings, "latest" is the highest, a version is never overwritten, and the sha256
of model.onnx is checked against the card at register and at fetch, as in the local registry.

Each version's files sit under a fresh folder (`edgeloop/models/<name>/<version>/<random>/`), so two
registrations racing for one version cannot mix their files: the second PUT names another folder for an
existing version, which Azure ML refuses.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from azure.ai.ml.entities import Model
from azure.core.exceptions import AzureError, ResourceNotFoundError

from ml.azureml.config import AzureMLError
from ml.azureml.workspace import DatastoreFiles, DatastorePath, Workspace
from ml.card import (
    CARD_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    ModelCard,
    sha256_file,
    write_card,
)
from ml.registry import (
    LATEST,
    IntegrityError,
    ModelNotFoundError,
    ModelRef,
    RegistryError,
    VersionExistsError,
    check_name,
    check_version,
    checked_for_registration,
)

MODEL_TYPE = "custom_model"
REGISTERED_BY = "azureml"
BLOB_ROOT = "edgeloop/models"
# Asset properties/tags: every edgeloop key is prefixed, so other tools' keys never collide with ours.
PREFIX = "edgeloop."
SHA256_PROPERTY = PREFIX + "model_sha256"


def asset_metadata(card: ModelCard) -> tuple[dict[str, str], dict[str, str]]:
    """(tags, properties) for a card. Azure ML stores both as strings; missing values are left out."""
    training = card.training_data or {}
    lineage = card.lineage or {}
    framework = card.framework or {}
    properties: dict[str, Any] = {
        "card_schema": card.schema_,
        "model_sha256": card.model_sha256,
        "task": card.task,
        "threshold": card.threshold,
        "threshold_quantile": card.threshold_quantile,
        "window": card.window,
        "feature_columns": ",".join(card.feature_columns),
        "input": card.inputs.name,
        "output_score": card.outputs.score,
        "training_data_sha256": training.get("sha256"),
        "training_rows": training.get("rows"),
        "job_id": lineage.get("job_id"),
        "parent_version": lineage.get("parent_version"),
        "trainer": framework.get("trainer"),
        "onnx_opset": framework.get("onnx_opset"),
        "created": card.created,
    }
    tag_keys = ("task", "threshold", "window", "training_data_sha256", "job_id")
    strings = {PREFIX + key: _text(value) for key, value in properties.items() if value is not None}
    tags = {key: value for key, value in strings.items() if key.removeprefix(PREFIX) in tag_keys}
    return tags, strings


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)


class AzureMLRegistry:
    """`cache_dir` keeps the cards read from Azure (`<cache>/<workspace>/<name>/<version>/model.json`):
    a ref's `path` is that folder, which holds model.onnx only after `fetch` (whose ref's path is `out`).
    Nothing is sent or written until a method is called."""

    def __init__(self, workspace: Workspace, *, cache_dir: Path, datastore: str | None = None) -> None:
        self._workspace = workspace
        self._files = DatastoreFiles(workspace)
        self._cache_dir = cache_dir
        self._datastore = datastore or workspace.settings.datastore

    def register(self, model_dir: Path, *, name: str | None = None, version: str | None = None) -> ModelRef:
        card, name, source = checked_for_registration(model_dir, name, version)

        if version is None:
            version = str(max(self._versions(name), default=0) + 1)
        elif self._asset(name, version) is not None:
            raise VersionExistsError(
                f"{name} version {version} already exists; versions are never overwritten"
            )

        registered = card.model_copy(
            update={
                "name": name,
                "version": version,
                "model_file": MODEL_FILE,
                "lineage": {**(card.lineage or {}), "registered_by": REGISTERED_BY},
            }
        )
        folder = DatastorePath(self._datastore, f"{BLOB_ROOT}/{name}/{version}/{uuid.uuid4().hex}/")
        model_bytes = source.read_bytes()
        if hashlib.sha256(model_bytes).hexdigest() != card.model_sha256:
            raise IntegrityError(f"{source} changed while it was being registered")
        # model.onnx first: a folder with a card always has its model beside it.
        self._files.upload(model_bytes, _child(folder, MODEL_FILE), content_type="application/octet-stream")
        card_bytes = registered.to_json().encode("utf-8")
        self._files.upload(card_bytes, _child(folder, CARD_FILE), content_type="application/json")

        tags, properties = asset_metadata(registered)
        asset = Model(
            name=name,
            version=version,
            type=MODEL_TYPE,
            path=folder.uri,
            description=f"edgeloop {registered.task} model; files: {MODEL_FILE} + {CARD_FILE} (model card)",
            tags=tags,
            properties=properties,
        )
        try:
            self._workspace.client.models.create_or_update(asset)
        except AzureError as exc:
            raise RegistryError(f"Azure ML refused {name} version {version}: {_first_line(exc)}") from exc
        cached = self._card_folder(name, version)
        _write_card(registered, cached)
        return self._ref(registered, folder, cached)

    def list(self, name: str | None = None) -> list[ModelRef]:
        if name is not None:
            check_name(name)
            names = [name]
        else:
            try:
                containers = self._workspace.client.models.list()
                names = sorted(c.name for c in containers if c.name and NAME_PATTERN.match(c.name))
            except AzureError as exc:
                raise RegistryError(f"listing models: {_first_line(exc)}") from exc
        refs: list[ModelRef] = []
        for model_name in names:
            for model_version in self._versions(model_name):
                refs.append(self.get(model_name, str(model_version)))
        return refs

    def get(self, name: str, version: str = LATEST) -> ModelRef:
        card, folder = self._load(name, version)
        cached = self._card_folder(card.name, card.version)
        _write_card(card, cached)
        return self._ref(card, folder, cached)

    def fetch(self, name: str, version: str, out: Path) -> ModelRef:
        card, folder = self._load(name, version)
        out.mkdir(parents=True, exist_ok=True)
        staged = out / f".{MODEL_FILE}.{uuid.uuid4().hex}.tmp"
        try:
            self._files.download(_child(folder, card.model_file), staged)
            actual = sha256_file(staged)
            if actual != card.model_sha256:
                raise IntegrityError(
                    f"{name} version {card.version}: the downloaded {card.model_file} has sha256 {actual}, "
                    f"the card says {card.model_sha256}"
                )
            staged.replace(out / MODEL_FILE)
        finally:
            staged.unlink(missing_ok=True)
        fetched = card.model_copy(update={"model_file": MODEL_FILE})
        _write_card(fetched, out)
        return self._ref(fetched, folder, out)

    # --- internals ---------------------------------------------------------------------------------------

    @property
    def _workspace_name(self) -> str:
        return self._workspace.settings.workspace

    def _card_folder(self, name: str, version: str) -> Path:
        return self._cache_dir / self._workspace_name / name / version

    def _versions(self, name: str) -> builtins.list[int]:
        """Integer versions that edgeloop registered (an asset of that name made by hand is left alone)."""
        try:
            assets = builtins.list(self._workspace.client.models.list(name=name))
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise RegistryError(f"listing versions of {name}: {_first_line(exc)}") from exc
        return sorted(
            int(asset.version)
            for asset in assets
            if asset.version
            and VERSION_PATTERN.match(asset.version)
            and SHA256_PROPERTY in (asset.properties or {})
        )

    def _resolve(self, name: str, version: str) -> str:
        if version != LATEST:
            check_version(version)
            return version
        versions = self._versions(name)
        if not versions:
            raise ModelNotFoundError(f"no versions of {name!r} in workspace {self._workspace_name}")
        return str(versions[-1])

    def _asset(self, name: str, version: str) -> Model | None:
        try:
            asset: Model = self._workspace.client.models.get(name=name, version=version)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise RegistryError(f"reading {name} version {version}: {_first_line(exc)}") from exc
        return asset

    def _load(self, name: str, version: str) -> tuple[ModelCard, DatastorePath]:
        check_name(name)
        resolved = self._resolve(name, version)
        asset = self._asset(name, resolved)
        if asset is None:
            raise ModelNotFoundError(f"{name} version {resolved} is not in workspace {self._workspace_name}")
        folder = _folder_of(asset)
        try:
            card = ModelCard.model_validate_json(self._files.read(_child(folder, CARD_FILE)))
        except (ValueError, AzureMLError) as exc:
            raise IntegrityError(f"{name} version {resolved}: its {CARD_FILE} is unusable: {exc}") from exc
        if card.name != name or card.version != resolved:
            raise IntegrityError(
                f"{folder.uri}: the card says {card.name} version {card.version}, the asset {name} {resolved}"
            )
        recorded = (asset.properties or {}).get(SHA256_PROPERTY)
        if recorded is not None and recorded != card.model_sha256:
            raise IntegrityError(
                f"{name} version {resolved}: the card's model_sha256 differs from the asset's "
                f"{SHA256_PROPERTY}"
            )
        return card, folder

    def _ref(self, card: ModelCard, folder: DatastorePath, path: Path) -> ModelRef:
        # The uri is the folder's https address, the inferencer's `http(s)://` prefix form: a device reads it
        # with a read SAS appended (see docs/azure.md); the workspace asset is named by name and version.
        return ModelRef(
            name=card.name,
            version=card.version,
            uri=self._files.url(folder),
            sha256=card.model_sha256,
            path=path,
            card=card,
        )


def _write_card(card: ModelCard, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_card(card, folder)


def _child(folder: DatastorePath, file_name: str) -> DatastorePath:
    return DatastorePath(folder.datastore, folder.path.rstrip("/") + "/" + file_name)


def _folder_of(asset: Model) -> DatastorePath:
    if not asset.path:
        raise IntegrityError(f"{asset.name} version {asset.version} has no path")
    folder = DatastorePath.parse(str(asset.path))
    return DatastorePath(folder.datastore, folder.path.rstrip("/") + "/")


def _first_line(exc: AzureError) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


__all__ = ["AzureMLRegistry", "asset_metadata"]
