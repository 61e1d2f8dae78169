"""Blob storage behind a small interface: the real one over azure-storage-blob, and an in-memory one for
tests.

`AzureBlobStore` uses the SDK's asyncio client (`azure.storage.blob.aio`, over aiohttp). The module's service
runs on an event loop (edgekit's runner); with the aio client, concurrency is tasks rather than threads, and a
SIGTERM can cancel an upload that is waiting on the network, which a call blocked inside a worker thread
cannot be. The SDK's own retries are off by default: the uploader's engine owns the one retry policy (backoff
with jitter, offline queue), and a block upload resumes where it stopped, so a failed request costs little.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from .redact import redact, secrets_of


@dataclass(frozen=True, slots=True)
class BlobProps:
    etag: str
    size: int
    md5: bytes | None  # the blob's Content-MD5 property, None when the blob has none

    @property
    def md5_base64(self) -> str:
        return base64.b64encode(self.md5).decode("ascii") if self.md5 is not None else ""


class StoreError(Exception):
    """Storage answered and refused (a 4xx): retrying the same request soon will not help."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StorageUnavailable(StoreError):
    """Storage is unreachable or overloaded (connection errors, timeouts, 408, 429, 5xx): try later."""


class BlobStore(Protocol):
    async def ensure_container(self, container: str) -> None: ...

    async def get_properties(self, container: str, name: str) -> BlobProps | None:
        """The committed blob's properties, None if there is none."""
        ...

    async def upload(self, container: str, name: str, data: bytes, md5: bytes) -> BlobProps:
        """One request; the service checks `md5` against what arrived and keeps it as Content-MD5."""
        ...

    async def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None: ...

    async def uncommitted_blocks(self, container: str, name: str) -> dict[str, int]:
        """Staged, not yet committed blocks: id -> size."""
        ...

    async def commit_blocks(
        self, container: str, name: str, block_ids: Sequence[str], md5: bytes
    ) -> BlobProps:
        """Makes the blob these blocks in order, with Content-MD5 `md5`; returns the committed properties."""
        ...

    async def delete(self, container: str, name: str) -> None: ...


# ---- the real one ------------------------------------------------------------------------------------------


class AzureBlobStore:
    """Blob storage over azure-storage-blob's aio client.

    `connection` is a storage connection string or an account SAS URL (https://<account>.blob…/?sv=…&sig=…).
    Extra keyword arguments go to the SDK client (e.g. `raw_request_hook` to observe requests).
    """

    def __init__(
        self,
        connection: str,
        *,
        retry_total: int = 0,
        connection_timeout: float = 10.0,
        read_timeout: float = 60.0,
        **client_kwargs: Any,
    ) -> None:
        self._connection = connection
        self._secrets = secrets_of(connection)
        self._client_kwargs: dict[str, Any] = {
            "retry_total": retry_total,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            # The engine decides what goes in one request; the SDK must not split an upload on its own.
            "max_single_put_size": 256 * 2**20,
            **client_kwargs,
        }
        self._client: Any = None

    def __repr__(self) -> str:
        return "AzureBlobStore(<credentials hidden>)"

    async def open(self) -> None:
        from azure.storage.blob.aio import BlobServiceClient

        if self._connection.lower().startswith(("https://", "http://")):
            self._client = BlobServiceClient(account_url=self._connection, **self._client_kwargs)
        else:
            self._client = BlobServiceClient.from_connection_string(self._connection, **self._client_kwargs)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> AzureBlobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _blob(self, container: str, name: str) -> Any:
        if self._client is None:
            raise RuntimeError("AzureBlobStore.open() was not called")
        return self._client.get_blob_client(container, name)

    @asynccontextmanager
    async def _translated(self, what: str) -> AsyncIterator[None]:
        """SDK and network errors become StoreError/StorageUnavailable, with credentials masked."""
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        try:
            yield
        except HttpResponseError as error:
            status = error.status_code
            code = getattr(error, "error_code", None)
            text = str(error.message or error)
            first_line = text.splitlines()[0] if text else ""
            message = redact(f"{what}: HTTP {status} {code or ''} {first_line}".strip(), self._secrets)
            if status is None or status in (408, 429) or status >= 500:
                raise StorageUnavailable(message, status=status, code=code) from None
            raise StoreError(message, status=status, code=code) from None
        except (ServiceRequestError, ServiceResponseError, OSError, TimeoutError) as error:
            message = redact(f"{what}: {type(error).__name__}: {error}", self._secrets)
            raise StorageUnavailable(message) from None

    async def ensure_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            async with self._translated(f"create container {container}"):
                with suppress(ResourceExistsError):
                    await self._client.create_container(container)
        except StoreError as error:
            # A SAS allowed to write blobs but not to create containers: the container is someone else's job,
            # and the blob operations that follow say clearly if it is missing.
            if error.code != "AuthorizationPermissionMismatch":
                raise

    async def get_properties(self, container: str, name: str) -> BlobProps | None:
        from azure.core.exceptions import ResourceNotFoundError

        async with self._translated(f"properties of {container}/{name}"):
            try:
                props = await self._blob(container, name).get_blob_properties()
            except ResourceNotFoundError:
                return None
        md5 = props.content_settings.content_md5
        return BlobProps(etag=props.etag, size=props.size, md5=bytes(md5) if md5 else None)

    async def upload(self, container: str, name: str, data: bytes, md5: bytes) -> BlobProps:
        from azure.storage.blob import ContentSettings

        async with self._translated(f"upload {container}/{name}"):
            reply = await self._blob(container, name).upload_blob(
                data,
                overwrite=True,
                validate_content=True,
                content_settings=ContentSettings(content_md5=bytearray(md5)),
            )
        stored = reply.get("content_md5")
        return BlobProps(etag=reply["etag"], size=len(data), md5=bytes(stored) if stored else None)

    async def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None:
        async with self._translated(f"stage block of {container}/{name}"):
            await self._blob(container, name).stage_block(block_id, data, validate_content=True)

    async def uncommitted_blocks(self, container: str, name: str) -> dict[str, int]:
        from azure.core.exceptions import ResourceNotFoundError

        async with self._translated(f"block list of {container}/{name}"):
            try:
                _, uncommitted = await self._blob(container, name).get_block_list("uncommitted")
            except ResourceNotFoundError:
                return {}
        return {block.id: block.size for block in uncommitted}

    async def commit_blocks(
        self, container: str, name: str, block_ids: Sequence[str], md5: bytes
    ) -> BlobProps:
        from azure.storage.blob import BlobBlock, ContentSettings

        async with self._translated(f"commit {container}/{name}"):
            await self._blob(container, name).commit_block_list(
                [BlobBlock(block_id) for block_id in block_ids],
                content_settings=ContentSettings(content_md5=bytearray(md5)),
            )
        # The commit's reply does not describe the blob; read back what was stored to verify it.
        props = await self.get_properties(container, name)
        if props is None:
            raise StorageUnavailable(f"commit {container}/{name}: blob not visible after commit")
        return props

    async def delete(self, container: str, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        async with self._translated(f"delete {container}/{name}"):
            with suppress(ResourceNotFoundError):
                await self._blob(container, name).delete_blob()


# ---- the in-memory one
# --------------------------------------------------------------------------------------


@dataclass
class FakeBlob:
    data: bytes
    md5: bytes | None
    etag: str


@dataclass
class FakeBlobStore:
    """Blob storage in memory, with the service's checks that matter here and fault injection.

    `calls` records every operation as (operation, container, name, detail). `fail_next(n)` makes the next n
    operations raise (StorageUnavailable unless told otherwise); `available = False` makes all of them raise
    StorageUnavailable until set back, like an uplink that is down.
    """

    blobs: dict[tuple[str, str], FakeBlob] = field(default_factory=dict)
    staged: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    containers: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, str, str]] = field(default_factory=list)
    available: bool = True
    before_call: Callable[[str], None] | None = None
    _failures: list[StoreError] = field(default_factory=list)
    _etags: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, count: int, error: StoreError | None = None) -> None:
        for _ in range(count):
            self._failures.append(error or StorageUnavailable("injected: connection refused"))

    def _enter(self, operation: str, container: str, name: str = "", detail: str = "") -> None:
        if self.before_call is not None:
            self.before_call(operation)
        if not self.available:
            raise StorageUnavailable(f"{operation}: storage unreachable")
        if self._failures:
            raise self._failures.pop(0)
        self.calls.append((operation, container, name, detail))
        if operation != "ensure_container" and container not in self.containers:
            raise StoreError(
                f"{operation}: container {container} not found", status=404, code="ContainerNotFound"
            )

    def count(self, operation: str) -> int:
        return sum(1 for call in self.calls if call[0] == operation)

    def _props(self, key: tuple[str, str]) -> BlobProps:
        blob = self.blobs[key]
        return BlobProps(etag=blob.etag, size=len(blob.data), md5=blob.md5)

    async def ensure_container(self, container: str) -> None:
        self._enter("ensure_container", container)
        self.containers.add(container)

    async def get_properties(self, container: str, name: str) -> BlobProps | None:
        self._enter("get_properties", container, name)
        return self._props((container, name)) if (container, name) in self.blobs else None

    async def upload(self, container: str, name: str, data: bytes, md5: bytes) -> BlobProps:
        self._enter("upload", container, name, f"{len(data)}")
        if hashlib.md5(data, usedforsecurity=False).digest() != md5:
            raise StoreError("upload: Md5Mismatch", status=400, code="Md5Mismatch")
        self.blobs[(container, name)] = FakeBlob(data, md5, f'"0x{next(self._etags):X}"')
        return self._props((container, name))

    async def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None:
        self._enter("stage_block", container, name, block_id)
        if len(block_id.encode()) > 64:
            raise StoreError("stage_block: block id too long", status=400, code="InvalidQueryParameterValue")
        self.staged.setdefault((container, name), {})[block_id] = data

    async def uncommitted_blocks(self, container: str, name: str) -> dict[str, int]:
        self._enter("uncommitted_blocks", container, name)
        return {bid: len(data) for bid, data in self.staged.get((container, name), {}).items()}

    async def commit_blocks(
        self, container: str, name: str, block_ids: Sequence[str], md5: bytes
    ) -> BlobProps:
        self._enter("commit_blocks", container, name, f"{len(block_ids)}")
        staged = self.staged.get((container, name), {})
        missing = [bid for bid in block_ids if bid not in staged]
        if missing:
            raise StoreError(f"commit: {len(missing)} blocks not staged", status=400, code="InvalidBlockList")
        data = b"".join(staged[bid] for bid in block_ids)
        # As in Blob storage, a commit discards the blocks it did not use.
        self.staged.pop((container, name), None)
        self.blobs[(container, name)] = FakeBlob(data, md5, f'"0x{next(self._etags):X}"')
        return self._props((container, name))

    async def delete(self, container: str, name: str) -> None:
        self._enter("delete", container, name)
        self.blobs.pop((container, name), None)
