"""`python -m inferencer`: the module process, run by edgekit (transport, twin settings, SIGTERM)."""

from edgekit import run_module

from .service import InferencerService
from .settings import InferencerSettings

if __name__ == "__main__":
    run_module(InferencerService(), InferencerSettings, env_prefix="INFERENCER_")
