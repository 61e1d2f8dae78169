"""Azure ML for edgeloop: the model registry (`AzureMLRegistry`, the same calls as the local registry)
and the training script submitted unchanged as a command job (`jobs`). Everything reaches Azure through
one `MLClient` and, for the model files, Blob clients built on the same azure-core transport, so a test
can stand in for Azure at the HTTP boundary. Settings: `.env` / the environment (`AZUREML_*`, `config`)."""

from ml.azureml.config import AzureMLError, AzureMLSettings, load_settings
from ml.azureml.registry import AzureMLRegistry
from ml.azureml.workspace import Workspace, connect

__all__ = ["AzureMLError", "AzureMLRegistry", "AzureMLSettings", "Workspace", "connect", "load_settings"]
