"""The inferencer's folder and the repo root go on sys.path (for tests.unit.inferencer.kit)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
for folder in (REPO_ROOT / "modules" / "gpu-inferencer", REPO_ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
