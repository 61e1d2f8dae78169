"""The transformer is not installed: its folder (and the repo root, for tests.unit.transformer.kit) go
on sys.path before the tests are imported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
for folder in (REPO_ROOT / "modules" / "transformer", REPO_ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture
def cloud(tmp_path: Path) -> Path:
    path = tmp_path / "cloud"
    path.mkdir()
    return path
