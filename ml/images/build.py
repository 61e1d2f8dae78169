"""Build, tag and push module images with the `docker` SDK; bake models into gpu-inferencer images.

What to build is planned from module.json without Docker (`plan_images`, pure); tags come from the same
function the manifest generator uses, so a deployment names exactly what was built. The build context is what
module.json's `contextPath` says (the repo root), filtered by the root `.dockerignore` as `docker build`
would, and each platform's Dockerfile is the one module.json maps it to.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, BuildError, DockerException, ImageNotFound

from ml.card import MODEL_FILE
from ml.deploy.manifest import ManifestError, ModuleImage, image_tag, load_module_images
from ml.errors import MlError
from ml.registry import LocalRegistry, RegistryError

INFERENCER_MODULE = "gpu-inferencer"
BAKED_MODELS_DIR = "/data/models/baked"
LABEL_PREFIX = "edgeloop."
# Docker's platform strings for iotedgedev's platform names (".debug" variants build for the same one).
DOCKER_PLATFORMS = {"amd64": "linux/amd64", "arm64v8": "linux/arm64/v8", "arm32v7": "linux/arm/v7"}


class ImageError(MlError, RuntimeError):
    """A build, push or bake that cannot be done or that the engine refused."""


@dataclass(frozen=True)
class ImagePlan:
    module: str
    platform: str
    tag: str
    context: Path
    dockerfile: Path
    labels: Mapping[str, str]

    @property
    def repository(self) -> str:
        return self.tag.rsplit(":", 1)[0]

    @property
    def version_tag(self) -> str:
        return self.tag.rsplit(":", 1)[1]


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    labels: Mapping[str, str]
    pushed_digest: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "id": self.image_id,
            "labels": dict(self.labels),
            **({"digest": self.pushed_digest} if self.pushed_digest else {}),
        }


def plan_images(
    repo_root: Path,
    variables: Mapping[str, str],
    *,
    platform: str,
    modules: Sequence[str] = (),
    version: str | None = None,
) -> list[ImagePlan]:
    """One plan per module (all under modules/ when `modules` is empty); refuses unknown modules and
    platforms a module.json does not map, naming them all."""
    try:
        images = load_module_images(repo_root / "modules")
    except (ManifestError, ValueError) as exc:
        raise ImageError(str(exc)) from exc
    unknown = [name for name in modules if name not in images]
    if unknown:
        raise ImageError(f"no module.json for {', '.join(unknown)} under {repo_root / 'modules'}")
    container_tag = variables.get("CONTAINER_TAG", "")
    plans: list[ImagePlan] = []
    problems: list[str] = []
    for name in modules or sorted(images):
        image = images[name]
        if version is not None:
            image = dataclasses.replace(image, version=version)
        try:
            tag = image_tag(image, platform, variables, container_tag)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        plans.append(_plan(repo_root, image, platform, tag))
    if problems:
        raise ImageError("; ".join(problems))
    return plans


def _plan(repo_root: Path, image: ModuleImage, platform: str, tag: str) -> ImagePlan:
    module_dir = repo_root / "modules" / image.name
    document = _module_document(module_dir)
    context = (module_dir / str(document.get("image", {}).get("contextPath", "."))).resolve()
    dockerfile = (module_dir / image.platforms[platform]).resolve()
    if not dockerfile.is_file():
        raise ImageError(f"{image.name}: {dockerfile} (platform {platform}) does not exist")
    if not dockerfile.is_relative_to(context):
        raise ImageError(f"{image.name}: {dockerfile} lies outside the build context {context}")
    labels = {
        LABEL_PREFIX + "module": image.name,
        LABEL_PREFIX + "platform": platform,
        "org.opencontainers.image.version": image.version,
    }
    return ImagePlan(image.name, platform, tag, context, dockerfile, labels)


def _module_document(module_dir: Path) -> dict[str, Any]:
    try:
        loaded = json.loads((module_dir / "module.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImageError(f"{module_dir / 'module.json'}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ImageError(f"{module_dir / 'module.json'}: not a JSON object")
    return loaded


def build_images(
    client: docker.DockerClient, plans: Iterable[ImagePlan], *, network_mode: str | None = None
) -> list[BuiltImage]:
    return [_build(client, plan, network_mode=network_mode) for plan in plans]


def _build(client: docker.DockerClient, plan: ImagePlan, *, network_mode: str | None) -> BuiltImage:
    base = plan.platform.split(".", 1)[0]
    options: dict[str, Any] = {}
    if base in DOCKER_PLATFORMS:
        options["platform"] = DOCKER_PLATFORMS[base]
    if network_mode is not None:
        options["network_mode"] = network_mode
    try:
        image, _log = client.images.build(
            path=str(plan.context),
            dockerfile=str(plan.dockerfile.relative_to(plan.context)),
            tag=plan.tag,
            labels=dict(plan.labels),
            rm=True,
            forcerm=True,
            **options,
        )
    except BuildError as exc:
        tail = "".join(str(step.get("stream", step.get("error", ""))) for step in list(exc.build_log)[-8:])
        raise ImageError(f"building {plan.tag} failed: {exc.msg}\n{tail.strip()}") from exc
    except (APIError, DockerException) as exc:
        raise ImageError(f"building {plan.tag}: {exc}") from exc
    return BuiltImage(plan.tag, str(image.id), dict(image.labels or {}))


def push_images(
    client: docker.DockerClient,
    tags: Iterable[str],
    *,
    username: str | None = None,
    password: str | None = None,
) -> list[BuiltImage]:
    """Push each tag; the registry's digest comes back in the result. Credentials go only to the engine."""
    auth = {"username": username, "password": password} if username and password else None
    pushed: list[BuiltImage] = []
    for tag in tags:
        repository, _, version_tag = tag.rpartition(":")
        try:
            image = client.images.get(tag)
            digest = _push_stream(
                client.images.push(repository, tag=version_tag, auth_config=auth, stream=True, decode=True),
                tag,
            )
        except ImageNotFound as exc:
            raise ImageError(f"{tag} is not built; build it first") from exc
        except (APIError, DockerException) as exc:
            raise ImageError(f"pushing {tag}: {exc}") from exc
        pushed.append(BuiltImage(tag, str(image.id), dict(image.labels or {}), digest))
    return pushed


def _push_stream(events: Iterator[dict[str, Any]], tag: str) -> str | None:
    # The engine reports a failed push inside a successful HTTP stream; only the events tell.
    digest = None
    for event in events:
        if "error" in event:
            raise ImageError(f"pushing {tag}: {event.get('error')}")
        aux = event.get("aux")
        if isinstance(aux, dict) and "Digest" in aux:
            digest = str(aux["Digest"])
    return digest


def baked_tag(base_tag: str, model_name: str, model_version: str) -> str:
    """`<registry>/gpu-inferencer:<version>-<platform>-<model>-<mversion>`, lower-cased like other tags."""
    return f"{base_tag}-{model_name}-{model_version}".lower()


def bake_model(
    client: docker.DockerClient,
    base_tag: str,
    registry: LocalRegistry,
    model_name: str,
    model_version: str,
    *,
    platform: str | None = None,
) -> BuiltImage:
    """A gpu-inferencer image with one registered model inside at `/data/models/baked/<name>/<version>/`,
    integrity-checked on the way in, and labelled so a fleet can tell which model an image carries."""
    try:
        ref = registry.verify(model_name, model_version)
    except RegistryError as exc:
        raise ImageError(f"model {model_name}:{model_version}: {exc}") from exc
    try:
        client.images.get(base_tag)
    except ImageNotFound as exc:
        raise ImageError(f"the base image {base_tag} is not built here; build gpu-inferencer first") from exc
    training = ref.card.training_data or {}
    labels = {
        LABEL_PREFIX + "model.name": ref.name,
        LABEL_PREFIX + "model.version": ref.version,
        LABEL_PREFIX + "model.sha256": ref.sha256,
        LABEL_PREFIX + "model.training-data-sha256": str(training.get("sha256", "")),
    }
    target = f"{BAKED_MODELS_DIR}/{ref.name}/{ref.version}/"
    with tempfile.TemporaryDirectory(prefix="edgeloop-bake-") as staging:
        context = Path(staging)
        shutil.copyfile(ref.path / ref.card.model_file, context / MODEL_FILE)
        shutil.copyfile(ref.path / "model.json", context / "model.json")
        (context / "Dockerfile").write_text(
            f"FROM {base_tag}\nCOPY {MODEL_FILE} model.json {target}\n", encoding="utf-8"
        )
        plan = ImagePlan(
            module=INFERENCER_MODULE,
            platform=platform or base_tag.rsplit("-", 1)[-1],
            tag=baked_tag(base_tag, ref.name, ref.version),
            context=context,
            dockerfile=context / "Dockerfile",
            labels=labels,
        )
        return _build(client, plan, network_mode=None)
