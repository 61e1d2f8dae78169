"""share-ingest as an IoT Edge module: the core's announcements become `file-ready` messages on `files`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
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

from .catalog import SqliteCatalog
from .ingestor import ShareIngestor
from .records import FileReady, Refusal
from .settings import ShareIngestSettings

OUTPUT_FILES = "files"
INPUT_PROCESSED = "processed"


class ShareIngestService:
    def __init__(self) -> None:
        self._ctx: Context[ShareIngestSettings] | None = None
        self._catalog: SqliteCatalog | None = None
        self._ingestor: ShareIngestor | None = None
        self._stop_ingestor = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refusals: list[dict[str, str]] = []
        self._reannouncer: asyncio.Task[None] | None = None

    async def start(self, ctx: Context[ShareIngestSettings]) -> None:
        self._ctx = ctx
        self._catalog = SqliteCatalog(ctx.state_dir / "catalog.sqlite")
        self._catalog.open()
        ctx.settings.subscribe(self._restart_with)
        ctx.transport.on_method("status", self._status)
        ctx.transport.on_input(INPUT_PROCESSED, self._on_processed)
        self._launch(ctx.settings.current)
        self._reannouncer = asyncio.create_task(self._reannounce_unconfirmed(ctx))

    async def stop(self) -> None:
        if self._reannouncer is not None:
            self._reannouncer.cancel()
            await asyncio.gather(self._reannouncer, return_exceptions=True)
        await self._halt()
        if self._catalog is not None:
            self._catalog.close()

    def _launch(self, settings: ShareIngestSettings) -> None:
        assert self._catalog is not None
        self._stop_ingestor = asyncio.Event()
        self._ingestor = ShareIngestor(Path(settings.share_dir), settings, self._catalog)
        self._task = asyncio.create_task(self._run(self._ingestor, self._stop_ingestor))

    async def _run(self, ingestor: ShareIngestor, stop: asyncio.Event) -> None:
        ctx = self._require_ctx()
        try:
            await ingestor.run(stop, self._announce, self._refused)
        except Exception as error:  # the watcher dying must stop the module, so edgeAgent restarts it
            ctx.logger.exception("share watcher failed")
            ctx.fail(f"share watcher failed: {error}")

    async def _halt(self) -> None:
        self._stop_ingestor.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _restart_with(self, settings: ShareIngestSettings) -> None:
        # The core takes its config at construction; a new one means a new watcher over the same catalog,
        # which already knows what was announced, so nothing is announced twice.
        await self._halt()
        self._launch(settings)

    async def _announce(self, ready: FileReady) -> None:
        ctx = self._require_ctx()
        message = make_message(
            "file-ready",
            1,
            ready.as_dict(),
            {"dataset": ready.dataset, "format": ready.format, "size": ready.size},
            message_id=ready.file_id,
        )
        await ctx.transport.send(OUTPUT_FILES, message)
        ctx.counters.inc("files")
        ctx.counters.inc("bytes", ready.size)
        ctx.logger.info(
            "announced %s", ready.path, extra={"file_id": ready.file_id, "dataset": ready.dataset}
        )

    async def _on_processed(self, message: Message) -> None:
        ctx = self._require_ctx()
        try:
            _, body = parse_message(message, "file-processed")
            file_id = str(body["file_id"])
        except (EnvelopeError, KeyError) as error:
            ctx.logger.warning("ignored a message on %s: %s", INPUT_PROCESSED, error)
            return
        assert self._catalog is not None
        self._catalog.mark_processed(file_id)
        ctx.counters.inc("confirmed")

    async def _reannounce_unconfirmed(self, ctx: Context[ShareIngestSettings]) -> None:
        while not ctx.stopping.is_set():
            after = ctx.settings.current.reannounce_after_seconds
            if after <= 0:
                await asyncio.sleep(30)
                continue
            await asyncio.sleep(min(after / 4, 30))
            assert self._catalog is not None
            assert self._ingestor is not None
            for entry in self._catalog.unprocessed(announced_before=time.time() - after):
                ready = self._ingestor.file_ready(entry.path, entry.sha256, entry.size, entry.mtime_ns)
                try:
                    await self._announce(ready)
                except Exception:  # edgeHub unreachable: the next round tries again
                    ctx.logger.exception("re-announcing %s failed", entry.path)
                    break
                self._catalog.mark_announced(entry.path, entry.sha256)
                ctx.counters.inc("reannounced")

    async def _refused(self, refusal: Refusal) -> None:
        ctx = self._require_ctx()
        ctx.counters.inc("refused")
        ctx.logger.warning("refused %s: %s", refusal.path, refusal.reason)
        keep = ctx.settings.current.refusals_reported
        self._refusals = [refusal.as_dict(), *self._refusals][:keep]
        await ctx.transport.patch_reported({"refused": self._refusals})

    async def _status(self, request: MethodRequest) -> MethodResponse:
        stats = dataclasses.asdict(self._ingestor.stats) if self._ingestor is not None else None
        return MethodResponse.ok({"stats": stats, "refused": self._refusals})

    def _require_ctx(self) -> Context[ShareIngestSettings]:
        if self._ctx is None:
            raise RuntimeError("service not started")
        return self._ctx
