"""`python -m ml images build|push` against a real Docker engine and registry, on a fixture repo whose
modules are built `FROM scratch` (nothing can be pulled here) by the same code path as the real ones."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest

from ml.images.build import ImageError
from ml.images.cli import add_subcommands
from ml.registry import LocalRegistry
from tests.integration.images.docker_kit import Engine
from tests.unit.azureml.azureml_fakes import write_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FIXTURE_REPO = Path(__file__).parent / "fixture_repo"


@pytest.fixture
def repo(tmp_path: Path, engine: Engine) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE_REPO, root)
    (root / ".env").write_text(
        f'CONTAINER_REGISTRY_SERVER="{engine.registry}"\nCONTAINER_REGISTRY_USERNAME=""\n'
        'CONTAINER_REGISTRY_PASSWORD=""\nDEFAULT_PLATFORM="amd64"\n',
        encoding="utf-8",
    )
    return root


def images(engine: Engine, repo: Path, *argv: str) -> Any:
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    action, *rest = argv
    common = ["--repo-root", str(repo), "--env-file", str(repo / ".env"), "--docker-host", engine.host]
    args = parser.parse_args(["images", action, *common, *rest])
    return args.handler(args)


def registry_tags(engine: Engine, name: str) -> list[str]:
    with urllib.request.urlopen(f"http://{engine.registry}/v2/{name}/tags/list", timeout=10) as reply:
        return sorted(json.load(reply)["tags"] or [])


def files_in_image(engine: Engine, tag: str) -> dict[str, bytes]:
    """Every regular file of every layer, from `docker save`."""
    client = docker.DockerClient(base_url=engine.host)
    archive = io.BytesIO(b"".join(client.images.get(tag).save()))
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=archive) as outer:
        for member in outer.getmembers():
            if member.name.endswith("layer.tar") or member.name.startswith("blobs/"):
                layer = outer.extractfile(member)
                if layer is None:
                    continue
                try:
                    with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
                        for item in inner.getmembers():
                            if item.isfile():
                                handle = inner.extractfile(item)
                                found[item.name] = handle.read() if handle else b""
                except tarfile.ReadError:
                    continue
    return found


def test_build_tags_every_module_like_iotedgedev_and_push_lands_in_the_registry(
    engine: Engine, repo: Path
) -> None:
    built = images(engine, repo, "build", "--version", "2.0.0-rc1")["built"]

    tags = [item["tag"] for item in built]
    assert tags == [
        f"{engine.registry}/gpu-inferencer:2.0.0-rc1-amd64",
        f"{engine.registry}/hello:2.0.0-rc1-amd64",
    ]
    hello = built[1]
    assert hello["labels"]["edgeloop.module"] == "hello"
    assert hello["labels"]["edgeloop.platform"] == "amd64"
    assert hello["labels"]["org.opencontainers.image.version"] == "2.0.0-rc1"
    assert files_in_image(engine, tags[1])["app/payload.txt"] == b"payload of hello\n"

    pushed = images(engine, repo, "push", "--module", "hello", "--version", "2.0.0-rc1")["pushed"]

    assert [item["tag"] for item in pushed] == [tags[1]]
    assert pushed[0]["digest"].startswith("sha256:")
    assert registry_tags(engine, "hello") == ["2.0.0-rc1-amd64"]


def test_a_registered_model_is_baked_into_the_inferencer_image(
    engine: Engine, repo: Path, tmp_path: Path
) -> None:
    registry_root = tmp_path / "registry"
    model = LocalRegistry(registry_root).register(write_model_dir(tmp_path / "trained"))
    common = ["--model", f"{model.name}:{model.version}", "--registry-root", str(registry_root)]

    result = images(engine, repo, "build", *common, "--push")

    base = f"{engine.registry}/gpu-inferencer:0.3.0-amd64"
    assert [item["tag"] for item in result["built"]] == [base]
    baked = result["baked"]
    assert baked["tag"] == f"{base}-sensor-ae-1"
    assert baked["labels"]["edgeloop.model.name"] == "sensor-ae"
    assert baked["labels"]["edgeloop.model.version"] == "1"
    assert baked["labels"]["edgeloop.model.sha256"] == model.sha256
    assert baked["labels"]["edgeloop.model.training-data-sha256"] == "ab" * 32
    inside = files_in_image(engine, baked["tag"])
    assert inside["data/models/baked/sensor-ae/1/model.onnx"] == (model.path / "model.onnx").read_bytes()
    assert json.loads(inside["data/models/baked/sensor-ae/1/model.json"])["model_sha256"] == model.sha256
    assert inside["app/payload.txt"] == b"payload of gpu-inferencer\n"  # the base image's files are there too
    assert sorted(item["tag"] for item in result["pushed"]) == [base, f"{base}-sensor-ae-1"]
    assert registry_tags(engine, "gpu-inferencer") == ["0.3.0-amd64", "0.3.0-amd64-sensor-ae-1"]


def test_unknown_modules_platforms_and_unbuilt_pushes_are_refused(engine: Engine, repo: Path) -> None:
    with pytest.raises(ImageError, match="nope"):
        images(engine, repo, "build", "--module", "nope")
    with pytest.raises(ImageError, match="arm64v8"):
        images(engine, repo, "build", "--platform", "arm64v8")
    with pytest.raises(ImageError, match="not built"):
        images(engine, repo, "push", "--module", "hello", "--version", "0.0.0-never-built")
