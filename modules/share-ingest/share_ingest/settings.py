"""share-ingest's settings: the core's IngestConfig plus where the share is mounted."""

from __future__ import annotations

from pydantic import ConfigDict

from .config import IngestConfig


class ShareIngestSettings(IngestConfig):
    """Environment `SHARE_INGEST_<FIELD>`, twin desired properties `<field>` (DESIGN.md §3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share_dir: str = "/data/share"
    """The local share as mounted in the container (read-only)."""
    refusals_reported: int = 50
    """How many refused paths (newest first) the twin's reported `refused` list keeps."""
