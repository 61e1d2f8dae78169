"""`python -m uploader`: the cloud-share-uploader process, run by edgekit (transport, twin, SIGTERM)."""

from edgekit import run_module

from .module_settings import UploaderModuleSettings
from .service import UploaderService

if __name__ == "__main__":
    run_module(UploaderService(), UploaderModuleSettings, env_prefix="UPLOADER_")
