"""Azure ML settings, read once from `.env` and the environment and validated. They hold no secrets:
authentication is azure-identity's `DefaultAzureCredential`, which reads its own variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ml.deploy.manifest import load_variables
from ml.errors import MlError

DEFAULT_DATASTORE = "workspaceblobstore"
DEFAULT_EXPERIMENT = "edgeloop-train"

# setting -> variable; .env.template documents them.
ENVIRONMENT_VARIABLES: dict[str, str] = {
    "subscription_id": "AZUREML_SUBSCRIPTION_ID",
    "resource_group": "AZUREML_RESOURCE_GROUP",
    "workspace": "AZUREML_WORKSPACE",
    "compute": "AZUREML_COMPUTE",
    "environment": "AZUREML_ENVIRONMENT",
    "datastore": "AZUREML_DATASTORE",
    "experiment": "AZUREML_EXPERIMENT",
}


class AzureMLError(MlError, RuntimeError):
    """Azure ML refused or failed a request, or the settings are incomplete; the message holds no secrets."""


class AzureMLSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subscription_id: str = Field(min_length=1)
    resource_group: str = Field(min_length=1)
    workspace: str = Field(min_length=1)
    # Only jobs need these two; the registry works without them.
    compute: str | None = None
    environment: str | None = None
    datastore: str = Field(default=DEFAULT_DATASTORE, min_length=1)
    experiment: str = Field(default=DEFAULT_EXPERIMENT, min_length=1)


def load_settings(
    env_file: Path | None = Path(".env"),
    environ: Mapping[str, str] | None = None,
    **overrides: str | None,
) -> AzureMLSettings:
    """`.env` first, then the environment for names it lacks (as the manifest generator reads them),
    then explicit overrides (command-line flags) over both. Empty values count as unset, as
    .env.template has them."""
    variables = load_variables(env_file, os.environ if environ is None else environ)
    values: dict[str, str] = {}
    for setting, variable in ENVIRONMENT_VARIABLES.items():
        value = variables.get(variable, "").strip()
        if value:
            values[setting] = value
    for setting, override in overrides.items():
        if override:
            values[setting] = override
    try:
        return AzureMLSettings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            setting = str(error["loc"][0]) if error["loc"] else "?"
            known = ENVIRONMENT_VARIABLES.get(setting)
            where = f"{known} ({setting})" if known else setting
            problems.append(f"{where}: {error['msg']}")
        raise AzureMLError("Azure ML settings: " + "; ".join(problems)) from None


def require(settings: AzureMLSettings, *names: str) -> None:
    missing = [ENVIRONMENT_VARIABLES[name] for name in names if not getattr(settings, name)]
    if missing:
        raise AzureMLError(f"set {', '.join(missing)} in .env or the environment (or pass the flag)")
