"""retrain-trigger is not installed: its folder (and the repo root, for tests.unit.retrain.retrain_models)
go on sys.path before the tests are imported."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
for folder in (REPO_ROOT / "modules" / "retrain-trigger", REPO_ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
