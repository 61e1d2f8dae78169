"""`python -m retrain`: the module process, run by edgekit (transport, twin settings, SIGTERM)."""

from edgekit import run_module

from .service import RetrainService
from .settings import RetrainSettings

if __name__ == "__main__":
    run_module(RetrainService(), RetrainSettings, env_prefix="RETRAIN_")
