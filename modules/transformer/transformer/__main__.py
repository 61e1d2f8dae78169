"""`python -m transformer`: the module process, run by edgekit (transport, twin settings, SIGTERM)."""

from edgekit import run_module

from .service import TransformerService
from .settings import TransformerSettings

if __name__ == "__main__":
    run_module(TransformerService(), TransformerSettings, env_prefix="TRANSFORMER_")
