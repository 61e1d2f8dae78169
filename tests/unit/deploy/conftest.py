"""ml/ is not installed: the repo root goes on sys.path (for `ml.deploy` and tests.unit.deploy.kit)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.unit.deploy.kit import ENV_TEXT, all_module_names, write_modules  # noqa: E402


@pytest.fixture
def modules_dir(tmp_path: Path) -> Path:
    """A modules folder with every module the templates name, each with the real module.json platforms."""
    platforms = ("amd64", "amd64.debug", "arm64v8")
    return write_modules(tmp_path / "modules", {name: platforms for name in all_module_names()})


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.env"
    path.write_text(ENV_TEXT, encoding="utf-8")
    return path
