"""cloud-share-uploader's core: the cloud share's files into Azure Blob storage, exactly once, verified."""

from .blobstore import AzureBlobStore, BlobProps, BlobStore, FakeBlobStore, StorageUnavailable, StoreError
from .engine import Clock, DiskUsage, ScanReport, SystemClock, Uploader, UploaderStats
from .policy import Identity, TargetError, UploadResult
from .queue import FileState, UploadQueue
from .redact import RedactingFilter, redact, secrets_of
from .settings import (
    ContainerTarget,
    DeviceAutoDeleteProperties,
    DeviceToCloudUploadProperties,
    TransferProperties,
    UploaderSettings,
    UploadOrder,
)

__all__ = [
    "AzureBlobStore",
    "BlobProps",
    "BlobStore",
    "Clock",
    "ContainerTarget",
    "DeviceAutoDeleteProperties",
    "DeviceToCloudUploadProperties",
    "DiskUsage",
    "FakeBlobStore",
    "FileState",
    "Identity",
    "RedactingFilter",
    "ScanReport",
    "StorageUnavailable",
    "StoreError",
    "SystemClock",
    "TargetError",
    "TransferProperties",
    "UploadOrder",
    "UploadQueue",
    "UploadResult",
    "Uploader",
    "UploaderSettings",
    "UploaderStats",
    "redact",
    "secrets_of",
]
