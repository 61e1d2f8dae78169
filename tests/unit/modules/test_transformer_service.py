"""transformer as a module (edgekit Runner + InMemoryTransport): messages in and out, the ledger, counters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from edgekit import InMemoryTransport, Ledger, Message, Runner, make_message, parse_message
from transformer.service import TransformerService
from transformer.settings import TransformerSettings

pytestmark = pytest.mark.timeout(30)

CONTRACT = {
    "columns": [
        {"name": "ts", "type": "timestamp", "nullable": False},
        {"name": "device", "type": "string", "nullable": False},
        {"name": "temp", "type": "float64", "min": -40, "max": 150, "nullable": False},
    ],
    "timestamp_column": "ts",
    "device_column": "device",
}
GOOD_CSV = (
    "ts,device,temp\n"
    "2026-11-01T00:00:00Z,d1,20.5\n"
    "2026-11-01T00:00:01Z,d1,21.5\n"
    "2026-11-01T00:00:01Z,d1,21.5\n"  # an exact duplicate row: kept once
    "2026-11-02T00:00:00Z,d2,999\n"  # out of range: quarantined
)


def _share(tmp_path: Path) -> tuple[Path, Path]:
    share, cloud = tmp_path / "share", tmp_path / "cloud"
    (share / "plant").mkdir(parents=True)
    (share / "plant" / "_schema.json").write_text(json.dumps(CONTRACT))
    cloud.mkdir()
    return share, cloud


def _environ(tmp_path: Path, share: Path, cloud: Path) -> dict[str, str]:
    return {
        "EDGEKIT_STATE_DIR": str(tmp_path / "state"),
        "EDGEKIT_METRICS_PORT": "0",
        "TRANSFORMER_SHARE_DIR": str(share),
        "TRANSFORMER_CLOUD_SHARE_DIR": str(cloud),
    }


def _announce(share: Path, rel: str, content: bytes) -> tuple[dict[str, Any], Message]:
    (share / rel).write_bytes(content)
    body: dict[str, Any] = {
        "file_id": hashlib.sha256(content).hexdigest(),
        "path": rel,
        "size": len(content),
        "mtime": "2026-11-01T00:00:00Z",
        "format": "csv",
        "compression": None,
        "dataset": "plant",
    }
    return body, make_message("file-ready", 1, body, message_id=str(body["file_id"]))


async def _runner(tmp_path: Path, share: Path, cloud: Path) -> tuple[Runner[Any], InMemoryTransport]:
    transport = InMemoryTransport()
    runner: Runner[Any] = Runner(
        TransformerService(),
        TransformerSettings,
        module="transformer",
        env_prefix="TRANSFORMER_",
        environ=_environ(tmp_path, share, cloud),
        transport_factory=lambda: transport,
    )
    await runner.start()
    return runner, transport


async def test_a_file_becomes_parquet_batches_quarantine_and_a_confirmation(tmp_path: Path) -> None:
    share, cloud = _share(tmp_path)
    runner, transport = await _runner(tmp_path, share, cloud)
    try:
        body, message = _announce(share, "plant/a.csv", GOOD_CSV.encode())
        await transport.deliver("files", message)
    finally:
        await runner.stop()

    batches = [parse_message(m, "batch-ready")[1] for m in transport.sent["batches"]]
    assert sorted(b["date"] for b in batches) == ["2026-11-01"]
    assert batches[0]["source_file_id"] == body["file_id"]
    assert batches[0]["rows"] == 2
    table = pq.read_table(cloud / batches[0]["path"])
    assert table.column("temp").to_pylist() == [20.5, 21.5]
    [quarantined] = [parse_message(m, "quarantined")[1] for m in transport.sent["quarantine"]]
    assert quarantined["reason"] == "rows_rejected"
    assert quarantined["rows"] == 1
    assert pq.read_table(cloud / quarantined["path"]).column("_reason").to_pylist() == ["out_of_range:temp"]
    [processed] = [parse_message(m, "file-processed")[1] for m in transport.sent["processed"]]
    assert processed == {
        "schema": "edgeloop.file-processed/1",
        "file_id": body["file_id"],
        "path": "plant/a.csv",
        "outcome": "transformed",
        "batches": 1,
        "rows": 2,
        "rows_quarantined": 1,
    }
    counters = transport.reported["counters"]
    assert counters == {
        "files": 1,
        "batches": 1,
        "rows": 2,
        "duplicate_rows": 1,
        "quarantined_rows": 1,
    }


async def test_a_redelivered_or_copied_file_is_confirmed_but_not_written_again(tmp_path: Path) -> None:
    share, cloud = _share(tmp_path)
    runner, transport = await _runner(tmp_path, share, cloud)
    try:
        _, message = _announce(share, "plant/a.csv", GOOD_CSV.encode())
        await transport.deliver("files", message)
        await transport.deliver("files", message)
        _, copy = _announce(share, "plant/copy-of-a.csv", GOOD_CSV.encode())
        await transport.deliver("files", copy)
    finally:
        await runner.stop()
    assert len(transport.sent["batches"]) == 1
    assert len(transport.sent["quarantine"]) == 1
    processed = [parse_message(m, "file-processed")[1] for m in transport.sent["processed"]]
    assert [p.get("repeat", False) for p in processed] == [False, True, True]
    assert processed[2]["path"] == "plant/copy-of-a.csv"
    assert transport.reported["counters"]["duplicates"] == 2
    assert transport.reported["counters"]["files"] == 1


async def test_an_item_a_kill_interrupted_is_resumed_at_start(tmp_path: Path) -> None:
    share, cloud = _share(tmp_path)
    body, _ = _announce(share, "plant/a.csv", GOOD_CSV.encode())
    # What a kill leaves: the message acknowledged and recorded as seen, nothing published.
    (tmp_path / "state").mkdir()
    with Ledger(tmp_path / "state" / "ledger.sqlite", states=("seen", "done"), terminal=("done",)) as ledger:
        ledger.record(body["file_id"], "seen", {"announcement": body})
    runner, transport = await _runner(tmp_path, share, cloud)
    await runner.stop()
    assert len(transport.sent["batches"]) == 1
    assert parse_message(transport.sent["processed"][0], "file-processed")[1]["outcome"] == "transformed"
    with Ledger(tmp_path / "state" / "ledger.sqlite", states=("seen", "done"), terminal=("done",)) as ledger:
        assert ledger.is_done(body["file_id"])


async def test_unsafe_paths_missing_files_and_bad_messages(tmp_path: Path) -> None:
    share, cloud = _share(tmp_path)
    runner, transport = await _runner(tmp_path, share, cloud)
    try:
        body, _ = _announce(share, "plant/a.csv", GOOD_CSV.encode())
        escaping = make_message("file-ready", 1, {**body, "file_id": "1" * 64, "path": "../etc/passwd"})
        await transport.deliver("files", escaping)
        gone = make_message("file-ready", 1, {**body, "file_id": "2" * 64, "path": "plant/gone.csv"})
        await transport.deliver("files", gone)
        await transport.deliver("files", make_message("file-ready", 1, {"path": "plant/a.csv"}))
        await transport.deliver("files", Message(b"not json"))
    finally:
        await runner.stop()
    reasons = [parse_message(m, "quarantined")[1]["reason"] for m in transport.sent["quarantine"]]
    assert reasons == ["unsafe_path", "source_missing"]
    assert transport.sent["batches"] == []
    assert len(transport.sent["processed"]) == 2
    assert transport.reported["counters"]["bad_messages"] == 2
    assert transport.reported["counters"]["quarantined_files"] == 2
