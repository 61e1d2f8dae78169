"""gpu-inferencer is not installed: its folder (and the repo root, for tests.unit.inferencer.kit) go on
sys.path before the tests are imported."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
for folder in (REPO_ROOT / "modules" / "gpu-inferencer", REPO_ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
