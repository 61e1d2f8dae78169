"""cloud-share-uploader's module settings: the core's settings plus where things are and the credential."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator

from .settings import UploaderSettings


class UploaderModuleSettings(UploaderSettings):
    """Environment `UPLOADER_<FIELD>`; twin desired properties by Blob Storage on IoT Edge's names.

    The connection string comes from the twin (`deviceToCloudUploadProperties.
    cloudStorageConnectionString`, as Blob Storage on IoT Edge takes it) or from the environment
    (`UPLOADER_STORAGE_CONNECTION_STRING`, so a deployment can keep it out of the twin); the twin's wins.
    """

    cloud_share_dir: str = "/data/cloud-share"
    storage_connection_string: SecretStr | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _credential_from_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fallback = data.get("storage_connection_string")
        if isinstance(fallback, SecretStr):
            fallback = fallback.get_secret_value()
        if not fallback:
            return data
        key = "deviceToCloudUploadProperties"
        section = data.get(key, data.get("device_to_cloud_upload_properties"))
        section = dict(section) if isinstance(section, dict) else {}
        if not section.get("cloudStorageConnectionString"):
            section["cloudStorageConnectionString"] = fallback
        data = {k: v for k, v in data.items() if k != "device_to_cloud_upload_properties"}
        data[key] = section
        return data
