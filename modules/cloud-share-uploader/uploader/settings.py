"""The uploader's settings: the module twin's desired properties, validated.

The two sections named like Blob Storage on IoT Edge's (`deviceToCloudUploadProperties`,
`deviceAutoDeleteProperties`) keep that module's keys and meaning, so an operator who knows it needs nothing
new. edgeloop's additions are marked as such; `transferProperties` is edgeloop's own section.

Example (desired properties)::

    {
      "deviceToCloudUploadProperties": {
        "uploadOn": true,
        "uploadOrder": "OldestFirst",
        "cloudStorageConnectionString": "DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…",
        "storageContainersForUpload": {
          "sensors": {"target": "%h-sensors", "blobName": "%d/%m/%p"},
          "*": {"target": "edge-%m"}
        },
        "deleteAfterUpload": false
      },
      "deviceAutoDeleteProperties": {
        "deleteOn": true, "deleteAfterMinutes": 60, "retainWhileUploading": true,
        "minFreePercent": 10
      },
      "transferProperties": {"concurrency": 2, "maxBytesPerSecond": 1048576}
    }

A key of `storageContainersForUpload` is a top-level folder of the cloud share (the local "container"); `"*"`
matches every folder without its own entry (and files at the share's root). The placeholders of `target` and
`blobName` are listed in `uploader.policy.expand_template`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .policy import validate_template


class UploadOrder(StrEnum):
    OLDEST_FIRST = "OldestFirst"
    NEWEST_FIRST = "NewestFirst"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ContainerTarget(_Section):
    """Where one local folder goes: `target` is the container, `blobName` (edgeloop) the blob name in it."""

    target: Annotated[str, Field(min_length=1)]
    blob_name: Annotated[str, Field(alias="blobName", min_length=1)] = "%d/%m/%p"

    @field_validator("target", "blob_name")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        return validate_template(value)


class DeviceToCloudUploadProperties(_Section):
    upload_on: bool = Field(default=False, alias="uploadOn")
    upload_order: UploadOrder = Field(default=UploadOrder.OLDEST_FIRST, alias="uploadOrder")
    # A storage connection string, or (edgeloop) an account SAS URL "https://<account>.blob…/?sv=…&sig=…".
    cloud_storage_connection_string: SecretStr | None = Field(
        default=None, alias="cloudStorageConnectionString"
    )
    storage_containers_for_upload: dict[str, ContainerTarget] = Field(
        default_factory=dict, alias="storageContainersForUpload"
    )
    delete_after_upload: bool = Field(default=False, alias="deleteAfterUpload")

    @field_validator("storage_containers_for_upload")
    @classmethod
    def _folder_keys(cls, value: dict[str, ContainerTarget]) -> dict[str, ContainerTarget]:
        for key in value:
            if key != "*" and (not key or "/" in key or "\\" in key or key in {".", ".."}):
                raise ValueError(f"{key!r} is not a top-level folder name of the cloud share (or '*')")
        return value

    @model_validator(mode="after")
    def _uploading_needs_somewhere_to_go(self) -> DeviceToCloudUploadProperties:
        if self.upload_on and self.cloud_storage_connection_string is None:
            raise ValueError("uploadOn needs cloudStorageConnectionString")
        if self.upload_on and not self.storage_containers_for_upload:
            raise ValueError("uploadOn needs at least one entry in storageContainersForUpload")
        return self


class DeviceAutoDeleteProperties(_Section):
    delete_on: bool = Field(default=False, alias="deleteOn")
    # Age is counted from the file's modification time, as Blob Storage on IoT Edge counts from a blob's.
    delete_after_minutes: Annotated[int, Field(alias="deleteAfterMinutes", ge=0)] = 0
    retain_while_uploading: bool = Field(default=True, alias="retainWhileUploading")
    # edgeloop: under disk pressure (either threshold crossed) the oldest *uploaded* files go first.
    min_free_bytes: Annotated[int, Field(alias="minFreeBytes", ge=0)] = 0
    min_free_percent: Annotated[float, Field(alias="minFreePercent", ge=0, le=100)] = 0.0

    @field_validator("retain_while_uploading")
    @classmethod
    def _never_delete_unuploaded(cls, value: bool) -> bool:
        # Blob Storage on IoT Edge may drop un-uploaded blobs when this is false; edgeloop's promise is that
        # every row reaches the cloud, so that choice is refused rather than silently ignored.
        if not value:
            raise ValueError(
                "retainWhileUploading=false is not supported: un-uploaded files are never deleted"
            )
        return value


class TransferProperties(_Section):
    """edgeloop's own knobs for how files go up."""

    concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    max_bytes_per_second: Annotated[int | None, Field(alias="maxBytesPerSecond", gt=0)] = None
    # Files up to singlePutMaxBytes go in one request; larger ones in blocks of blockSizeBytes (max 4000 MiB).
    single_put_max_bytes: Annotated[int, Field(alias="singlePutMaxBytes", ge=0, le=256 * 2**20)] = 4 * 2**20
    block_size_bytes: Annotated[int, Field(alias="blockSizeBytes", ge=1024, le=4000 * 2**20)] = 4 * 2**20
    retry_initial_seconds: Annotated[float, Field(alias="retryInitialSeconds", gt=0)] = 1.0
    retry_max_seconds: Annotated[float, Field(alias="retryMaxSeconds", gt=0)] = 300.0
    retry_jitter: Annotated[float, Field(alias="retryJitter", ge=0, le=1)] = 0.5
    scan_interval_seconds: Annotated[float, Field(alias="scanIntervalSeconds", gt=0)] = 30.0

    @model_validator(mode="after")
    def _retry_bounds(self) -> TransferProperties:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retryMaxSeconds must be at least retryInitialSeconds")
        return self


class UploaderSettings(_Section):
    device_to_cloud_upload_properties: DeviceToCloudUploadProperties = Field(
        default_factory=DeviceToCloudUploadProperties, alias="deviceToCloudUploadProperties"
    )
    device_auto_delete_properties: DeviceAutoDeleteProperties = Field(
        default_factory=DeviceAutoDeleteProperties, alias="deviceAutoDeleteProperties"
    )
    transfer_properties: TransferProperties = Field(
        default_factory=TransferProperties, alias="transferProperties"
    )

    def reportable(self) -> dict[str, object]:
        """The settings as reported properties: aliases, and the credential masked."""
        return self.model_dump(mode="json", by_alias=True)
