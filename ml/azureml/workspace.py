"""One Azure ML workspace: the `MLClient`, and Blob access to its datastores over the same transport.

azure-ai-ml uploads and downloads files with Blob clients it builds itself, outside the transport it was
given, so the files edgeloop moves (model folders, job outputs) go through `DatastoreFiles` instead: the
same datastore (account, container and credential as the workspace reports them), the same transport.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.ai.ml import MLClient
from azure.ai.ml.entities import AccountKeyConfiguration, AzureBlobDatastore, SasTokenConfiguration
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.core.pipeline.transport import HttpTransport
from azure.storage.blob import ContainerClient, ContentSettings

from ml.azureml.config import AzureMLError, AzureMLSettings

# azureml://datastores/<ds>/paths/<p>, short or with the workspace scope in front (as the service returns it).
_DATASTORE_URI = re.compile(
    r"^azureml://(?:subscriptions/[^/]+/resource[gG]roups/[^/]+/(?:providers/Microsoft\.MachineLearningServices/)?"
    r"workspaces/[^/]+/)?datastores/(?P<datastore>[^/]+)/paths/(?P<path>.*)$"
)


@dataclass(frozen=True)
class Workspace:
    client: MLClient
    credential: TokenCredential
    settings: AzureMLSettings
    # None in production (azure-core picks its default); tests pass one transport that answers every call.
    transport: HttpTransport[Any, Any] | None = None


def connect(
    settings: AzureMLSettings,
    *,
    credential: TokenCredential | None = None,
    transport: HttpTransport[Any, Any] | None = None,
) -> Workspace:
    """An `MLClient` for the configured workspace. Building it sends nothing; the first operation does.
    Telemetry is off: the SDK would otherwise ship logs to Application Insights on its own."""
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    options: dict[str, Any] = {"enable_telemetry": False, "show_progress": False}
    if transport is not None:
        options["transport"] = transport
    client = MLClient(
        credential, settings.subscription_id, settings.resource_group, settings.workspace, **options
    )
    return Workspace(client=client, credential=credential, settings=settings, transport=transport)


@dataclass(frozen=True)
class DatastorePath:
    datastore: str
    path: str

    @classmethod
    def parse(cls, uri: str) -> DatastorePath:
        match = _DATASTORE_URI.match(uri)
        if not match:
            raise AzureMLError(f"not an azureml:// datastore path: {uri!r}")
        return cls(match["datastore"], match["path"])

    @property
    def uri(self) -> str:
        return f"azureml://datastores/{self.datastore}/paths/{self.path}"


class DatastoreFiles:
    """Files in a workspace's Blob datastores. Container clients are made on first use, one per datastore."""

    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace
        self._containers: dict[str, ContainerClient] = {}

    def container(self, datastore: str) -> ContainerClient:
        if datastore in self._containers:
            return self._containers[datastore]
        try:
            found = self._workspace.client.datastores.get(datastore, include_secrets=True)
        except AzureError as exc:
            raise AzureMLError(f"datastore {datastore!r}: {_reason(exc)}") from exc
        if not isinstance(found, AzureBlobDatastore):
            raise AzureMLError(f"datastore {datastore!r} is not an Azure Blob datastore (it is {found.type})")
        credentials = found.credentials
        credential: Any
        if isinstance(credentials, AccountKeyConfiguration) and credentials.account_key:
            credential = {"account_name": found.account_name, "account_key": credentials.account_key}
        elif isinstance(credentials, SasTokenConfiguration) and credentials.sas_token:
            credential = credentials.sas_token
        else:
            # An identity-based datastore: the caller's own Entra ID token must carry Blob data access.
            credential = self._workspace.credential
        options: dict[str, Any] = {}
        if self._workspace.transport is not None:
            options["transport"] = self._workspace.transport
        client = ContainerClient(
            f"{found.protocol}://{found.account_name}.blob.{found.endpoint}",
            found.container_name,
            credential=credential,
            **options,
        )
        self._containers[datastore] = client
        return client

    def url(self, where: DatastorePath) -> str:
        return f"{self.container(where.datastore).url}/{where.path}"

    def upload(self, data: bytes, where: DatastorePath, *, content_type: str) -> None:
        """Never overwrites; the MD5 travels with the upload, so Storage refuses a corrupted transfer."""
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(digest))
        try:
            self.container(where.datastore).upload_blob(
                where.path, data, overwrite=False, content_settings=settings, validate_content=True
            )
        except ResourceExistsError as exc:
            raise AzureMLError(f"{where.uri} already exists; stored files are never overwritten") from exc
        except AzureError as exc:
            raise AzureMLError(f"upload to {where.uri}: {_reason(exc)}") from exc

    def read(self, where: DatastorePath) -> bytes:
        try:
            return self.container(where.datastore).download_blob(where.path).readall()
        except AzureError as exc:
            raise AzureMLError(f"download of {where.uri}: {_reason(exc)}") from exc

    def download(self, where: DatastorePath, dest: Path) -> None:
        """Into a temporary name beside `dest`, renamed once complete: a reader never sees half a file."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            staged.write_bytes(self.read(where))
            staged.replace(dest)
        finally:
            staged.unlink(missing_ok=True)

    def list(self, prefix: DatastorePath) -> list[DatastorePath]:
        try:
            names = self.container(prefix.datastore).list_blob_names(name_starts_with=prefix.path)
            return [DatastorePath(prefix.datastore, name) for name in names]
        except AzureError as exc:
            raise AzureMLError(f"listing {prefix.uri}: {_reason(exc)}") from exc


def _reason(exc: AzureError) -> str:
    # The first line only: later ones repeat request details, never needed to act on the refusal.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
