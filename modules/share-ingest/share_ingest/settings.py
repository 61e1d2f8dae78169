"""share-ingest's settings: the core's IngestConfig plus where the share is mounted."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from .config import IngestConfig


class ShareIngestSettings(IngestConfig):
    """Environment `SHARE_INGEST_<FIELD>`, twin desired properties `<field>` (DESIGN.md §3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share_dir: str = "/data/share"
    """The local share as mounted in the container (read-only)."""
    reannounce_after_seconds: float = Field(default=300.0, ge=0)
    """Announce a file again if no `file-processed` confirmation came back this long after (0: never).
    Closes the one gap at-least-once delivery leaves: a consumer killed after its SDK acknowledged a
    message but before it recorded it."""
    refusals_reported: int = 50
    """How many refused paths (newest first) the twin's reported `refused` list keeps."""
