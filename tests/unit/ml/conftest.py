"""`ml` lives at the repo root and is not installed: the root goes on sys.path before the tests are imported.
Training fixtures are session-scoped: one small model serves every test that only reads it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ml.train import TrainConfig, train  # noqa: E402
from tests.unit.ml.ml_kit import DEVICES, STEPS, Trained, sensor_table, write_cloud_share  # noqa: E402


@pytest.fixture(scope="session")
def labelled_share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cloud-share")
    write_cloud_share(root, sensor_table(devices=DEVICES, steps=STEPS, seed=1, anomaly_rate=0.01, label=True))
    return root


@pytest.fixture(scope="session")
def trained(labelled_share: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    out = tmp_path_factory.mktemp("model") / "sensor-ae"
    return Trained(data=labelled_share, result=train(TrainConfig(data=labelled_share, out=out, seed=7)))


@pytest.fixture
def model_copy(trained: Trained, tmp_path: Path) -> Path:
    """A private copy of the trained model, for tests that change files."""
    target = tmp_path / "model"
    shutil.copytree(trained.model_dir, target)
    return target
