"""share-ingest as a module (edgekit Runner + InMemoryTransport): announcements, confirmations,
re-announcements of unconfirmed files, refusals in the twin."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from edgekit import InMemoryTransport, Runner, make_message, parse_message
from share_ingest.service import ShareIngestService
from share_ingest.settings import ShareIngestSettings

pytestmark = pytest.mark.timeout(30)


async def _runner(tmp_path: Path, **settings: str) -> tuple[Runner[Any], InMemoryTransport, Path]:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    environ = {
        "EDGEKIT_STATE_DIR": str(tmp_path / "state"),
        "EDGEKIT_METRICS_PORT": "0",
        "EDGEKIT_REPORT_INTERVAL_S": "0.1",
        "SHARE_INGEST_SHARE_DIR": str(share),
        "SHARE_INGEST_MODE": "poll",
        "SHARE_INGEST_POLL_INTERVAL_SECONDS": "0.1",
        "SHARE_INGEST_STABLE_SECONDS": "0.2",
        **{f"SHARE_INGEST_{name.upper()}": value for name, value in settings.items()},
    }
    transport = InMemoryTransport()
    runner: Runner[Any] = Runner(
        ShareIngestService(),
        ShareIngestSettings,
        module="share-ingest",
        env_prefix="SHARE_INGEST_",
        environ=environ,
        transport_factory=lambda: transport,
    )
    await runner.start()
    return runner, transport, share


async def _until(check: Any, within_s: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), within_s)


async def test_a_complete_file_is_announced_once_with_its_content_id(tmp_path: Path) -> None:
    runner, transport, share = await _runner(tmp_path)
    try:
        (share / "line1").mkdir()
        content = b"ts,device\n2026-11-01T00:00:00Z,d1\n"
        (share / "line1" / "a.csv.gz").write_bytes(content)
        [message] = await transport.wait_sent("files", 1)
        await asyncio.sleep(0.6)  # several more polls: still one announcement
    finally:
        await runner.stop()
    assert len(transport.sent["files"]) == 1
    _, body = parse_message(message, "file-ready")
    assert body["file_id"] == hashlib.sha256(content).hexdigest()
    assert message.message_id == body["file_id"]
    assert (body["path"], body["dataset"], body["format"], body["compression"], body["size"]) == (
        "line1/a.csv.gz",
        "line1",
        "csv",
        "gzip",
        len(content),
    )
    assert message.properties["dataset"] == "line1"
    assert transport.reported["counters"] == {"files": 1, "bytes": len(content)}


async def test_unconfirmed_files_are_announced_again_confirmed_ones_are_not(tmp_path: Path) -> None:
    runner, transport, share = await _runner(tmp_path, reannounce_after_seconds="0.4")
    try:
        (share / "confirmed.csv").write_bytes(b"a\n1\n")
        (share / "lost.csv").write_bytes(b"a\n2\n")
        first = await transport.wait_sent("files", 2)
        confirmed = next(m for m in first if parse_message(m, "file-ready")[1]["path"] == "confirmed.csv")
        file_id = parse_message(confirmed, "file-ready")[1]["file_id"]
        await transport.deliver(
            "processed", make_message("file-processed", 1, {"file_id": file_id, "path": "confirmed.csv"})
        )
        # The lost one comes again (the transformer's confirmation never came), the confirmed one never.
        await transport.wait_sent("files", 4, within_s=10)
    finally:
        await runner.stop()
    paths = [parse_message(m, "file-ready")[1]["path"] for m in transport.sent["files"]]
    assert paths.count("confirmed.csv") == 1
    assert paths.count("lost.csv") >= 3
    counters = transport.reported["counters"]
    assert counters["confirmed"] == 1
    assert counters["reannounced"] >= 2


async def test_symlinks_and_hostile_names_are_refused_in_the_twin(tmp_path: Path) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_bytes(b"a\n1\n")
    runner, transport, share = await _runner(tmp_path)
    try:
        os.symlink(outside, share / "link.csv")
        with open(os.path.join(os.fsencode(share), b"bad\nname.csv"), "wb") as handle:
            handle.write(b"a\n1\n")
        (share / "fine.csv").write_bytes(b"a\n3\n")
        await transport.wait_sent("files", 1)
        await _until(lambda: len(transport.reported.get("refused") or []) == 2)
        status = await transport.call_method("status")
    finally:
        await runner.stop()
    assert [parse_message(m, "file-ready")[1]["path"] for m in transport.sent["files"]] == ["fine.csv"]
    refused = {entry["path"]: entry["reason"] for entry in transport.reported["refused"]}
    assert "symbolic link leading out of the share" in refused["link.csv"]
    assert refused["bad\\x0aname.csv"] == "control character U+000A in name"
    assert transport.reported["counters"]["refused"] == 2
    assert status.status == 200
    assert len(status.payload["refused"]) == 2


async def test_an_invalid_twin_patch_is_rejected_and_the_watcher_keeps_going(tmp_path: Path) -> None:
    runner, transport, share = await _runner(tmp_path)
    try:
        await transport.set_desired({"stable_seconds": -1})
        assert transport.reported["settings"]["status"] == "rejected"
        (share / "after.csv").write_bytes(b"a\n1\n")
        await transport.wait_sent("files", 1)
    finally:
        await runner.stop()
    assert parse_message(transport.sent["files"][0], "file-ready")[1]["path"] == "after.csv"
