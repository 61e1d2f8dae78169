"""transformer as an IoT Edge module: `file-ready` in; Parquet, `batch-ready`, `quarantined` and
`file-processed` out.

Exactly once rests on content ids: outputs are named by the source's sha256, so a file handled twice
(a redelivered message, a resumed item, the same content under another name) writes nothing new, and the
ledger (`seen` -> `done`) lets a restart resume what a kill interrupted. Every `file-ready` is answered
with one `file-processed`, which share-ingest takes as the confirmation that ends its re-announcements.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from edgekit import Context, EnvelopeError, Ledger, Message, make_message, parse_message

from .contract import DatasetContract
from .core import TransformResult, transform_file
from .settings import TransformerSettings
from .writer import QuarantineOutput, quarantine_file

INPUT_FILES = "files"
OUTPUT_BATCHES = "batches"
OUTPUT_QUARANTINE = "quarantine"
OUTPUT_PROCESSED = "processed"


class ContractFileError(ValueError):
    """A contract file beside the data that does not validate: its dataset's files are quarantined rather
    than transformed with inferred types the user did not ask for."""


class SourcePathError(ValueError):
    """A `file-ready` path that does not name a file inside the share."""


def source_path(share: Path, relative: str) -> Path:
    """The announced file on the share; refuses absolute paths and `..` (share-ingest refuses them too)."""
    parts = PurePosixPath(relative).parts
    if not relative or PurePosixPath(relative).is_absolute() or any(p in ("..", "") for p in parts):
        raise SourcePathError(f"not a path inside the share: {relative!r}")
    return share.joinpath(*parts)


class TransformerService:
    def __init__(self) -> None:
        self._ctx: Context[TransformerSettings] | None = None
        self._ledger: Ledger | None = None
        self._pinned: dict[str, DatasetContract] = {}

    async def start(self, ctx: Context[TransformerSettings]) -> None:
        self._ctx = ctx
        self._ledger = ctx.open_ledger(("seen", "done"), terminal=("done",))
        self._pinned = self._load_pinned()
        await self._report_pinned()
        # Items a kill interrupted: their message was acknowledged and will not come again.
        for item in self._ledger.items_in_state("seen"):
            ctx.logger.info("resuming %s", item.key)
            await self._handle(item.attributes["announcement"])
        ctx.transport.on_input(INPUT_FILES, self._on_file)

    async def stop(self) -> None:
        """Nothing to release: the runner drains the handler in flight and closes the ledger."""

    async def _on_file(self, message: Message) -> None:
        ctx = self._require_ctx()
        try:
            _, body = parse_message(message, "file-ready")
            for key in ("file_id", "path", "dataset"):
                if not isinstance(body.get(key), str) or not body[key]:
                    raise EnvelopeError(f"file-ready without a {key}")
        except EnvelopeError as error:
            ctx.counters.inc("bad_messages")
            ctx.logger.warning("ignored a message on %s: %s", INPUT_FILES, error)
            return
        await self._handle(body)

    async def _handle(self, announcement: dict[str, Any]) -> None:
        ctx = self._require_ctx()
        ledger = self._require_ledger()
        file_id = str(announcement["file_id"])
        item = ledger.get(file_id)
        if item is not None and item.state == "done":
            ctx.counters.inc("duplicates")
            await self._confirm(announcement, {**item.attributes.get("outcome", {}), "repeat": True})
            return
        ledger.record(file_id, "seen", {"announcement": announcement})
        settings = ctx.settings.current
        outcome = await self._transform(announcement, settings)
        ledger.advance(file_id, "done", {"outcome": outcome})
        await self._confirm(announcement, outcome)

    async def _transform(self, announcement: dict[str, Any], settings: TransformerSettings) -> dict[str, Any]:
        file_id, dataset = str(announcement["file_id"]), str(announcement["dataset"])
        share, cloud_share = Path(settings.share_dir), Path(settings.cloud_share_dir)
        try:
            source = source_path(share, str(announcement["path"]))
        except SourcePathError as error:
            return await self._reject_without_copy(announcement, "unsafe_path", str(error))
        if not source.is_file():
            return await self._reject_without_copy(announcement, "source_missing", f"{source} is gone")
        try:
            contract = self._contract_for(dataset, share, settings)
        except ContractFileError as error:
            return await self._reject(source, announcement, "invalid_contract", str(error))
        if contract is None and not settings.infer_contracts:
            return await self._reject(source, announcement, "no_contract", f"no contract for {dataset!r}")
        fmt = announcement.get("format")
        result = await asyncio.to_thread(
            transform_file,
            source,
            source_id=file_id,
            dataset=dataset,
            contract=contract,
            cloud_share=cloud_share,
            limits=settings.limits(),
            fmt=fmt if fmt in ("csv", "jsonl", "parquet") else None,
            scratch_dir=Path(tempfile.gettempdir()),
        )
        if result.rejection is not None:
            return await self._reject(
                source, announcement, result.rejection.reason.value, result.rejection.detail
            )
        if result.contract is not None and result.contract_inferred and dataset not in self._pinned:
            self._pin(dataset, result.contract)
            await self._report_pinned()
        await self._announce_result(announcement, result)
        return {
            "outcome": "transformed",
            "batches": len(result.batches),
            "rows": result.rows_written,
            "rows_quarantined": result.rows_quarantined,
        }

    async def _announce_result(self, announcement: dict[str, Any], result: TransformResult) -> None:
        ctx = self._require_ctx()
        file_id, dataset = result.source_id, result.dataset
        for batch in result.batches:
            body = {
                "batch_id": batch.batch_id,
                "source_file_id": file_id,
                "source_path": announcement["path"],
                "dataset": dataset,
                "path": batch.path,
                "rows": batch.rows,
                "date": batch.date,
                "schema_fingerprint": batch.schema_fingerprint,
                "time_range": {"min": _iso(batch.min_timestamp), "max": _iso(batch.max_timestamp)},
                "rows_quarantined": result.rows_quarantined,
                "label_columns": list(result.contract.label_columns) if result.contract else [],
            }
            props: dict[str, str | int] = {"dataset": dataset, "rows": batch.rows, "date": batch.date}
            await ctx.transport.send(
                OUTPUT_BATCHES, make_message("batch-ready", 1, body, props, message_id=batch.batch_id)
            )
        ctx.counters.inc("files")
        ctx.counters.inc("batches", len(result.batches))
        ctx.counters.inc("rows", result.rows_written)
        ctx.counters.inc("duplicate_rows", result.duplicates_dropped)
        if result.quarantine is not None:
            ctx.counters.inc("quarantined_rows", result.rows_quarantined)
            await self._send_quarantined(
                announcement, "rows_rejected", _describe_reasons(result), result.quarantine
            )

    async def _reject(
        self, source: Path, announcement: dict[str, Any], reason: str, detail: str
    ) -> dict[str, Any]:
        ctx = self._require_ctx()
        settings = ctx.settings.current
        output = await asyncio.to_thread(
            quarantine_file,
            source,
            source_id=str(announcement["file_id"]),
            dataset=str(announcement["dataset"]),
            cloud_share=Path(settings.cloud_share_dir),
            reason=reason,
            detail=detail,
            original_name=PurePosixPath(str(announcement["path"])).name,
        )
        ctx.counters.inc("quarantined_files")
        await self._send_quarantined(announcement, reason, detail, output)
        return {"outcome": "quarantined", "reason": reason}

    async def _reject_without_copy(
        self, announcement: dict[str, Any], reason: str, detail: str
    ) -> dict[str, Any]:
        ctx = self._require_ctx()
        ctx.counters.inc("quarantined_files")
        await self._send_quarantined(announcement, reason, detail, None)
        return {"outcome": "quarantined", "reason": reason}

    async def _send_quarantined(
        self, announcement: dict[str, Any], reason: str, detail: str, output: QuarantineOutput | None
    ) -> None:
        ctx = self._require_ctx()
        body = {
            "source_file_id": announcement["file_id"],
            "source_path": announcement["path"],
            "dataset": announcement["dataset"],
            "reason": reason,
            "detail": detail,
            "kind": output.kind if output is not None else "file",
            "path": output.path if output is not None else None,
            "reason_path": output.reason_path if output is not None else None,
            "rows": output.rows if output is not None else None,
        }
        ctx.logger.warning("quarantined %s: %s (%s)", announcement["path"], reason, detail)
        props = {"dataset": str(announcement["dataset"]), "reason": reason}
        await ctx.transport.send(OUTPUT_QUARANTINE, make_message("quarantined", 1, body, props))

    async def _confirm(self, announcement: dict[str, Any], outcome: dict[str, Any]) -> None:
        ctx = self._require_ctx()
        body = {"file_id": announcement["file_id"], "path": announcement["path"], **outcome}
        await ctx.transport.send(
            OUTPUT_PROCESSED,
            make_message("file-processed", 1, body, {"outcome": str(outcome.get("outcome", ""))}),
        )

    # ---- contracts --------------------------------------------------------------------------------------

    def _contract_for(
        self, dataset: str, share: Path, settings: TransformerSettings
    ) -> DatasetContract | None:
        if dataset in settings.datasets:
            return settings.datasets[dataset]
        beside = share / dataset / settings.contract_file
        if beside.is_file():
            try:
                return DatasetContract.model_validate_json(beside.read_bytes())
            except ValidationError as error:
                raise ContractFileError(f"{beside.name} of {dataset!r} is invalid: {error}") from error
        return self._pinned.get(dataset)

    def _pinned_dir(self) -> Path:
        return self._require_ctx().state_dir / "contracts"

    def _load_pinned(self) -> dict[str, DatasetContract]:
        folder = self._pinned_dir()
        if not folder.is_dir():
            return {}
        return {
            path.stem: DatasetContract.model_validate_json(path.read_bytes())
            for path in sorted(folder.glob("*.json"))
        }

    def _pin(self, dataset: str, contract: DatasetContract) -> None:
        folder = self._pinned_dir()
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{dataset}.json"
        temp = folder / f".{dataset}.json.tmp"
        with temp.open("w", encoding="utf-8") as handle:
            handle.write(contract.model_dump_json(indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(final)
        self._pinned[dataset] = contract
        self._require_ctx().logger.info("pinned the contract inferred for %s", dataset)

    async def _report_pinned(self) -> None:
        pinned = {name: json.loads(c.model_dump_json()) for name, c in self._pinned.items()}
        await self._require_ctx().transport.patch_reported({"pinned_contracts": pinned or None})

    def _require_ctx(self) -> Context[TransformerSettings]:
        if self._ctx is None:
            raise RuntimeError("service not started")
        return self._ctx

    def _require_ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("service not started")
        return self._ledger


def _iso(moment: Any) -> str:
    return str(moment.isoformat().replace("+00:00", "Z"))


def _describe_reasons(result: TransformResult) -> str:
    return ", ".join(
        f"{reason}: {count}" for reason, count in sorted(result.rows_quarantined_by_reason.items())
    )


__all__ = ["ContractFileError", "SourcePathError", "TransformerService", "source_path"]
