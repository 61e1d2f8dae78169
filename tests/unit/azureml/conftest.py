"""`ml` is not installed: the repo root goes on sys.path first, as tests/unit/ml does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ml.azureml.config import AzureMLSettings  # noqa: E402
from ml.azureml.workspace import Workspace, connect  # noqa: E402
from tests.unit.azureml.azureml_fakes import (  # noqa: E402
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    FakeWorkspace,
    FixedTokenCredential,
    write_model_dir,
)


@pytest.fixture
def fake() -> FakeWorkspace:
    return FakeWorkspace()


@pytest.fixture
def settings() -> AzureMLSettings:
    return AzureMLSettings(
        subscription_id=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        workspace=WORKSPACE,
        compute="edge-cluster",
        environment="edgeloop-train",
    )


@pytest.fixture
def workspace(fake: FakeWorkspace, settings: AzureMLSettings) -> Workspace:
    return connect(settings, credential=FixedTokenCredential(), transport=fake.transport)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "trained")
