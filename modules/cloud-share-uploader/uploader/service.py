"""cloud-share-uploader as an IoT Edge module: `batch-ready` claim checks in, `uploaded` notices out."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from edgekit import (
    Context,
    EnvelopeError,
    Message,
    MethodRequest,
    MethodResponse,
    make_message,
    parse_message,
)

from .blobstore import AzureBlobStore, BlobProps, BlobStore, StorageUnavailable
from .engine import Uploader
from .module_settings import UploaderModuleSettings
from .policy import Identity, UploadResult
from .queue import UploadQueue
from .redact import RedactingFilter, secrets_of

# Input -> the claim check it carries and the keys naming files in the cloud share. Rejected rows and files
# go up too, with their reason files, so nothing is lost at the edge; so do the inferencer's per-row scores.
CLAIM_CHECKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "batches": ("batch-ready", ("path",)),
    "quarantine": ("quarantined", ("path", "reason_path")),
    "scores": ("scores", ("path",)),
}
OUTPUT_UPLOADED = "uploaded"


class UploaderService:
    def __init__(self) -> None:
        self._ctx: Context[UploaderModuleSettings] | None = None
        self._queue: UploadQueue | None = None
        self._store: AzureBlobStore | None = None
        self._connection: str | None = None
        self._engine: Uploader | None = None
        self._stop_engine = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._redactor: RedactingFilter | None = None

    async def start(self, ctx: Context[UploaderModuleSettings]) -> None:
        self._ctx = ctx
        settings = ctx.settings.current
        self._queue = UploadQueue(ctx.state_dir / "queue.sqlite")
        self._queue.open()
        await self._open_store(settings)
        self._engine = Uploader(
            settings,
            share_root=Path(settings.cloud_share_dir),
            store=self._store_or_offline(),
            queue=self._queue,
            identity=Identity.from_environ(os.environ),
            on_uploaded=self._announce,
            on_trouble=self._count_trouble,
        )
        ctx.settings.subscribe(self._settings_changed)
        for input_name in CLAIM_CHECKS:
            ctx.transport.on_input(input_name, self._claim_check_handler(input_name))
        ctx.transport.on_method("status", self._status)
        self._task = asyncio.create_task(self._run(self._engine))

    async def stop(self) -> None:
        self._stop_engine.set()
        if self._task is not None:
            await self._task
        if self._store is not None:
            await self._store.close()
        if self._queue is not None:
            self._queue.close()

    async def _run(self, engine: Uploader) -> None:
        ctx = self._require_ctx()
        try:
            await engine.run(self._stop_engine)
        except Exception as error:  # an engine bug must end the process so edgeAgent restarts it
            ctx.logger.exception("upload engine failed")
            ctx.fail(f"upload engine failed: {error}")

    async def _open_store(self, settings: UploaderModuleSettings) -> None:
        secret = settings.device_to_cloud_upload_properties.cloud_storage_connection_string
        connection = secret.get_secret_value() if secret is not None else None
        if connection == self._connection:
            return
        if self._store is not None:
            await self._store.close()
            self._store = None
        self._connection = connection
        self._install_redactor(connection)
        if connection:
            store = AzureBlobStore(connection)
            await store.open()
            self._store = store

    def _install_redactor(self, connection: str | None) -> None:
        # Whatever logs an SDK error or a URL, the key and SAS signature never reach stdout.
        root = logging.getLogger()
        if self._redactor is not None:
            for handler in root.handlers:
                handler.removeFilter(self._redactor)
        self._redactor = RedactingFilter(secrets_of(connection) if connection else [])
        for handler in root.handlers:
            handler.addFilter(self._redactor)

    def _store_or_offline(self) -> BlobStore:
        if self._store is not None:
            return self._store
        # No credential yet (uploadOn false): the engine holds everything queued until one arrives.
        return _NoStore()

    async def _settings_changed(self, settings: UploaderModuleSettings) -> None:
        engine = self._require_engine()
        await self._open_store(settings)
        engine.replace_store(self._store_or_offline())
        engine.update_settings(settings)

    def _claim_check_handler(self, input_name: str) -> Callable[[Message], Awaitable[None]]:
        kind, path_keys = CLAIM_CHECKS[input_name]

        async def handle(message: Message) -> None:
            ctx = self._require_ctx()
            try:
                _, body = parse_message(message, kind)
            except EnvelopeError as error:
                ctx.counters.inc("bad_messages")
                ctx.logger.warning("ignored a message on %s: %s", input_name, error)
                return
            paths = [str(body[key]) for key in path_keys if body.get(key)]
            if not paths:
                ctx.counters.inc("bad_messages")
                ctx.logger.warning("a %s message on %s names no file", kind, input_name)
                return
            self._submit(paths)

        return handle

    def _submit(self, paths: list[str]) -> None:
        ctx = self._require_ctx()
        for path in paths:
            try:
                if self._require_engine().submit(path):
                    ctx.counters.inc("queued")
            except ValueError as error:
                ctx.counters.inc("bad_messages")
                ctx.logger.warning("refused %r: %s", path, error)

    async def _announce(self, result: UploadResult) -> None:
        ctx = self._require_ctx()
        body = result.as_dict()
        message = make_message(
            "uploaded",
            1,
            body,
            {"container": result.container, "skipped": result.skipped},
            message_id=f"{result.container}/{result.blob_name}",
        )
        await ctx.transport.send(OUTPUT_UPLOADED, message)
        ctx.counters.inc("skipped" if result.skipped else "uploaded")
        if not result.skipped:
            ctx.counters.inc("bytes", result.bytes)

    def _count_trouble(self, kind: str) -> None:
        self._require_ctx().counters.inc("offline" if kind == "offline" else "retries")

    async def _status(self, request: MethodRequest) -> MethodResponse:
        return MethodResponse.ok(dataclasses.asdict(self._require_engine().stats()))

    def _require_ctx(self) -> Context[UploaderModuleSettings]:
        if self._ctx is None:
            raise RuntimeError("service not started")
        return self._ctx

    def _require_engine(self) -> Uploader:
        if self._engine is None:
            raise RuntimeError("service not started")
        return self._engine


class _NoStore:
    """Stands in while no credential is configured: every call says storage is unavailable, so the engine
    keeps files queued (it does not even try while uploadOn is false)."""

    async def _unavailable(self) -> None:
        raise StorageUnavailable("no storage connection string is configured")

    async def ensure_container(self, container: str) -> None:
        await self._unavailable()

    async def get_properties(self, container: str, name: str) -> BlobProps | None:
        await self._unavailable()
        return None

    async def upload(self, container: str, name: str, data: bytes, md5: bytes) -> BlobProps:
        await self._unavailable()
        raise AssertionError("unreachable")

    async def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None:
        await self._unavailable()

    async def uncommitted_blocks(self, container: str, name: str) -> dict[str, int]:
        await self._unavailable()
        return {}

    async def commit_blocks(
        self, container: str, name: str, block_ids: Sequence[str], md5: bytes
    ) -> BlobProps:
        await self._unavailable()
        raise AssertionError("unreachable")

    async def delete(self, container: str, name: str) -> None:
        await self._unavailable()
