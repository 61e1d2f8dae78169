"""The data-path modules are not installed: their folders go on sys.path before the tests import them."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
for name in ("share-ingest", "transformer", "cloud-share-uploader"):
    folder = str(REPO_ROOT / "modules" / name)
    if folder not in sys.path:
        sys.path.insert(0, folder)
