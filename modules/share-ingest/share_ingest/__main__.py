"""`python -m share_ingest`: the module process (edgekit runs it: transport, twin settings, SIGTERM)."""

from edgekit import run_module

from .service import ShareIngestService
from .settings import ShareIngestSettings

if __name__ == "__main__":
    run_module(ShareIngestService(), ShareIngestSettings, env_prefix="SHARE_INGEST_")
