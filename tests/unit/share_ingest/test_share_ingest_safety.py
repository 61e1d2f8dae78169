"""Path safety, hostile names, unreadable files, overflow: refused with reasons, no crash, no write."""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401  (preloaded: the uid-dropped child cannot read root's stdlib)
import hashlib
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from share_ingest import IngestConfig, Refusal, ShareIngestor, SqliteCatalog
from share_ingest.watcher import FolderAppeared, HintSink, InotifyWatcher, Rescan, WatchLimitReached

if TYPE_CHECKING:
    from tests.unit.share_ingest.conftest import Harness

pytestmark = pytest.mark.timeout(60)

MODES = ["inotify", "poll"]


def snapshot(root: Path) -> dict[bytes, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of everything under root, links not followed: a write on the share shows."""
    out: dict[bytes, tuple[int, int, int]] = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in [b".", *dirs, *files]:
            st = os.lstat(os.path.join(folder, name))
            out[os.path.join(folder, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("mode", MODES)
async def test_symlinks_are_refused_and_never_followed(harness: Harness, mode: str) -> None:
    outside = harness.base / "secret"
    outside.mkdir()
    (outside / "secret.csv").write_bytes(b"secret\n")
    (harness.share / "real.csv").write_bytes(b"real\n")
    await harness.start(mode=mode)
    await harness.wait_until(lambda: harness.paths() == ["real.csv"])
    os.symlink(outside / "secret.csv", harness.share / "file_out.csv")
    os.symlink(outside, harness.share / "dir_out")
    os.symlink("../secret/secret.csv", harness.share / "relative_out.csv")
    os.symlink("real.csv", harness.share / "inside.csv")
    await harness.wait_until(lambda: len(harness.refusals) == 4)
    await harness.settle()
    refused = harness.refused_paths()
    assert "leading out of the share" in refused["file_out.csv"]
    assert "leading out of the share" in refused["dir_out"]
    assert "leading out of the share" in refused["relative_out.csv"]
    assert "not followed" in refused["inside.csv"]
    assert "out of the share" not in refused["inside.csv"]
    assert harness.paths() == ["real.csv"]
    assert harness.ingestor is not None
    assert {r.path for r in harness.ingestor.refused} == set(refused)


async def test_a_symlinked_folder_is_not_descended_by_a_walk(harness: Harness) -> None:
    outside = harness.base / "elsewhere"
    outside.mkdir()
    (outside / "x.csv").write_bytes(b"x\n")
    os.symlink(outside, harness.share / "linked")
    await harness.start(mode="poll")
    await harness.wait_until(lambda: len(harness.refusals) == 1)
    await harness.settle()
    assert harness.announced == []
    assert "leading out of the share" in harness.refusals[0].reason


HOSTILE: dict[bytes, str] = {
    b"new\nline.csv": "U+000A",
    b"tab\t.csv": "U+0009",
    b"esc\x1b[2J.csv": "U+001B",
    b"bad\xff\xfe.csv": "not valid UTF-8",
    "rtl\u202ecsv.exe".encode(): "bidirectional",
    b"back\\slash.csv": "backslash",
}


@pytest.mark.parametrize("mode", MODES)
async def test_hostile_names_are_refused_with_printable_paths(harness: Harness, mode: str) -> None:
    share = os.fsencode(harness.share)
    await harness.start(mode=mode)
    before = snapshot(harness.share)
    for name in HOSTILE:
        with open(os.path.join(share, name), "wb") as stream:
            stream.write(b"data\n")
    os.mkdir(os.path.join(share, b"dir\nwith newline"))
    with open(os.path.join(share, b"dir\nwith newline", b"inner.csv"), "wb") as stream:
        stream.write(b"inner\n")
    long_name = "é" * 125 + ".csv"  # 254 bytes: legal on disk and accepted
    (harness.share / long_name).write_bytes(b"long\n")
    (harness.share / "fine.csv").write_bytes(b"fine\n")
    refusals = len(HOSTILE) + 1  # and the folder
    await harness.wait_until(lambda: len(harness.refusals) == refusals and len(harness.announced) == 2)
    await harness.settle()
    assert sorted(harness.paths()) == sorted([long_name, "fine.csv"])
    for refusal in harness.refusals:
        assert refusal.path.isprintable()
        assert "\n" not in refusal.path
    reasons = harness.refused_paths()
    assert reasons["bad\\xff\\xfe.csv"] == "name is not valid UTF-8"
    assert "U+000A" in reasons["new\\x0aline.csv"]
    assert "U+000A" in reasons["dir\\x0awith newline"]  # the folder is refused, not descended
    for name, fragment in HOSTILE.items():
        assert any(fragment in r.reason for r in harness.refusals), name
    json.dumps([r.as_dict() for r in harness.refusals]).encode("utf-8")  # reportable as is
    changed = {k for k, v in snapshot(harness.share).items() if before.get(k) != v}
    written_by_test = {os.path.join(share, n) for n in HOSTILE} | {
        share + b"/.",
        os.path.join(share, b"dir\nwith newline"),
        os.path.join(share, b"dir\nwith newline", b"."),
        os.path.join(share, b"dir\nwith newline", b"inner.csv"),
        os.fsencode(harness.share / long_name),
        os.fsencode(harness.share / "fine.csv"),
    }
    assert changed <= written_by_test  # the module wrote nothing on the share


async def test_dot_dot_names_are_ordinary_hidden_names(harness: Harness) -> None:
    for name in ["..data.csv", "...", "..%2F..%2Fetc%2Fpasswd.csv"]:
        (harness.share / name).write_bytes(b"dots\n")
    (harness.share / "..folder").mkdir()
    (harness.share / "..folder" / "x.csv").write_bytes(b"x\n")
    await harness.start(mode="poll", include_hidden=True)
    await harness.wait_until(lambda: len(harness.announced) == 4)
    await harness.settle()
    expected = ["...", "..%2F..%2Fetc%2Fpasswd.csv", "..data.csv", "..folder/x.csv"]
    assert sorted(harness.paths()) == sorted(expected)
    for record in harness.announced:
        resolved = (harness.share / record.path).resolve()
        assert resolved.is_relative_to(harness.share.resolve())


async def test_dot_dot_names_are_hidden_by_default(harness: Harness) -> None:
    (harness.share / "..data.csv").write_bytes(b"dots\n")
    (harness.share / "ok.csv").write_bytes(b"ok\n")
    await harness.start(mode="poll")
    await harness.wait_until(lambda: len(harness.announced) == 1)
    await harness.settle()
    assert harness.paths() == ["ok.csv"]
    assert harness.refusals == []


async def test_paths_over_the_length_limit_are_refused(harness: Harness) -> None:
    deep = harness.share / ("a" * 40) / ("b" * 40)
    deep.mkdir(parents=True)
    (deep / "short.csv").write_bytes(b"1\n")
    (deep / ("c" * 40 + ".csv")).write_bytes(b"2\n")
    await harness.start(mode="poll", max_path_bytes=100)
    await harness.wait_until(lambda: len(harness.announced) == 1 and len(harness.refusals) == 1)
    assert harness.refusals[0].reason == "path longer than 100 bytes"
    assert harness.paths() == [f"{'a' * 40}/{'b' * 40}/short.csv"]


@pytest.mark.parametrize("mode", MODES)
async def test_fifo_is_refused_without_blocking(harness: Harness, mode: str) -> None:
    await harness.start(mode=mode)
    os.mkfifo(harness.share / "pipe.csv")
    (harness.share / "after.csv").write_bytes(b"after\n")
    await harness.wait_until(lambda: len(harness.refusals) == 1 and len(harness.announced) == 1)
    assert harness.refusals[0] == Refusal(path="pipe.csv", reason="a FIFO")


@pytest.mark.parametrize("mode", MODES)
async def test_missing_share_is_reported_then_picked_up(harness: Harness, mode: str) -> None:
    harness.share.rmdir()
    ingestor = await harness.start(mode=mode, first_scan=False)
    await harness.wait_until(lambda: ingestor.stats.share_problem is not None)
    assert ingestor.stats.share_problem == "share unavailable: No such file or directory"
    harness.share.mkdir()
    (harness.share / "x.csv").write_bytes(b"x\n")
    await harness.wait_until(lambda: len(harness.announced) == 1)
    recovered = ingestor.stats
    assert recovered.share_problem is None
    (harness.share / "y.csv").write_bytes(b"y\n")  # and, in inotify mode, the root is now watched
    await harness.wait_until(lambda: len(harness.announced) == 2)


# ---- unreadable files ------------------------------------------------------------------------------------

NOBODY = 65534


async def _unreadable_scenario(base: Path, mode: str) -> dict[str, Any]:
    """Owner-unreadable file and folder are refused (and retried); once readable, announced once."""
    share = base / "share"
    target = share / "locked.csv"
    target.write_bytes(b"locked\n")
    target.chmod(0)
    folder = share / "lockeddir"
    folder.mkdir()
    (folder / "inner.csv").write_bytes(b"inner\n")
    folder.chmod(0)
    announced: list[str] = []
    refusals: list[Refusal] = []

    async def emit(record: Any) -> None:
        announced.append(record.path)

    async def on_refused(refusal: Refusal) -> None:
        refusals.append(refusal)

    config = IngestConfig.model_validate(
        {"mode": mode, "stable_seconds": 0.2, "poll_interval_seconds": 0.1, "retry_seconds": 0.2}
    )
    with SqliteCatalog(base / "state" / "catalog.db") as catalog:
        ingestor = ShareIngestor(share, config, catalog)
        stop = asyncio.Event()
        task = asyncio.create_task(ingestor.run(stop, emit, on_refused))
        for _ in range(500):
            if len(refusals) >= 2:
                break
            await asyncio.sleep(0.02)
        refused_while_locked = [r.as_dict() for r in ingestor.refused]
        await asyncio.sleep(0.6)  # several retries: reported once, not once per retry
        refusal_reports = len(refusals)
        target.chmod(0o644)
        folder.chmod(0o755)
        for _ in range(500):
            if len(announced) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)
        refused_after = [r.as_dict() for r in ingestor.refused]
        stop.set()
        await task
    return {
        "refused_while_locked": refused_while_locked,
        "refusal_reports": refusal_reports,
        "announced": announced,
        "refused_after": refused_after,
    }


def _run_as_nobody(base: Path, mode: str) -> dict[str, Any]:
    """Root reads anything, so drop to an unprivileged uid in a child process for the real check."""
    for path in [base, *base.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = asyncio.run(_unreadable_scenario(base, mode))
            os.write(write_end, json.dumps(result).encode())
        except BaseException:
            os.write(write_end, json.dumps({"error": traceback.format_exc()}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return dict(json.loads(b"".join(chunks)))


@pytest.mark.parametrize("mode", MODES)
def test_unreadable_file_and_folder_are_refused_then_announced_once_readable(mode: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="share-ingest-perm-"))
    try:
        (base / "share").mkdir()
        (base / "state").mkdir()
        if os.geteuid() == 0:
            result = _run_as_nobody(base, mode)
        else:
            result = asyncio.run(_unreadable_scenario(base, mode))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "error" not in result, result.get("error")
    assert result["refused_while_locked"] == [
        {"path": "locked.csv", "reason": "cannot read: Permission denied (retrying every 0.2s)"},
        {"path": "lockeddir", "reason": "cannot open folder: Permission denied"},
    ]
    assert result["refusal_reports"] == 2
    assert sorted(result["announced"]) == ["locked.csv", "lockeddir/inner.csv"]
    assert result["refused_after"] == []


# ---- inotify overflow ----------------------------------------------------------------------------------


class SilentSource:
    """A ChangeSource that delivers only what the test pushes: files appear 'unnoticed' until then."""

    def __init__(self) -> None:
        self.sink: HintSink | None = None
        self.watched: list[str] = []

    def start(self, sink: HintSink) -> None:
        self.sink = sink

    def watch_folder(self, rel: str) -> None:
        self.watched.append(rel)

    def forget_folder(self, rel: str) -> None:
        self.watched = [w for w in self.watched if w != rel and not w.startswith(rel + "/")]

    async def aclose(self) -> None:
        self.sink = None


async def test_overflow_triggers_a_full_rescan(harness: Harness) -> None:
    (harness.share / "sub").mkdir()
    source = SilentSource()
    ingestor = await harness.start(change_source=source, rescan_interval_seconds=0)
    assert sorted(source.watched) == ["", "sub"]  # each folder watched by the walk
    (harness.share / "sub" / "missed.csv").write_bytes(b"missed\n")
    (harness.share / "missed_too.csv").write_bytes(b"missed\n")
    await harness.settle()
    assert harness.announced == []  # nothing polls behind inotify's back
    assert source.sink is not None
    source.sink(Rescan("inotify queue overflow"))
    await harness.wait_until(lambda: len(harness.announced) == 2)
    assert ingestor.stats.overflows == 1
    assert ingestor.stats.full_scans == 2
    # A new-folder hint walks (and watches) just that subtree.
    (harness.share / "new" / "deeper").mkdir(parents=True)
    (harness.share / "new" / "deeper" / "x.csv").write_bytes(b"x\n")
    source.sink(FolderAppeared("new"))
    await harness.wait_until(lambda: len(harness.announced) == 3)
    assert "new/deeper" in source.watched
    assert ingestor.stats.full_scans == 2


class ExhaustedSource(SilentSource):
    def watch_folder(self, rel: str) -> None:
        raise WatchLimitReached("fs.inotify.max_user_watches reached")


async def test_watch_limit_falls_back_to_polling_in_auto_mode(harness: Harness) -> None:
    (harness.share / "sub").mkdir()
    (harness.share / "sub" / "a.csv").write_bytes(b"a\n")
    ingestor = await harness.start(change_source=ExhaustedSource(), mode="auto", first_scan=False)
    await harness.wait_until(lambda: len(harness.announced) == 1)
    assert ingestor.stats.mode == "poll"
    (harness.share / "sub" / "b.csv").write_bytes(b"b\n")  # found by polling
    await harness.wait_until(lambda: len(harness.announced) == 2)


async def test_watch_limit_is_an_error_when_inotify_was_asked_for(harness: Harness) -> None:
    await harness.start(change_source=ExhaustedSource(), mode="inotify", first_scan=False)
    with pytest.raises(WatchLimitReached):
        await harness.wait_until(lambda: False)


async def test_real_inotify_queue_overflow_is_reported_as_rescan(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events={limit}: overflowing it would take too long here")
    hints: list[object] = []
    watcher = InotifyWatcher(tmp_path)
    watcher.start(hints.append)
    try:
        watcher.watch_folder("")
        # No await: the reader cannot drain while the kernel queue fills (2 events per file).
        folder = os.fsencode(tmp_path)
        for i in range(limit // 2 + 64):
            os.close(os.open(b"%s/f%d" % (folder, i), os.O_CREAT | os.O_WRONLY, 0o644))
        for _ in range(500):
            if any(isinstance(h, Rescan) for h in hints):
                break
            await asyncio.sleep(0.01)
    finally:
        await watcher.aclose()
    assert Rescan("inotify queue overflow") in hints


def test_sha256_of_large_files_streams(tmp_path: Path) -> None:
    from share_ingest.config import IngestConfig as Config
    from share_ingest.rules import Rules
    from share_ingest.scanner import ShareFS

    data = os.urandom(3 * (1 << 20) + 123)
    (tmp_path / "big.bin").write_bytes(data)
    config = Config()
    digest, signature = ShareFS(tmp_path, config, Rules(config)).sha256("big.bin")
    assert digest == hashlib.sha256(data).hexdigest()
    assert signature.size == len(data)


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("share-ingest targets Linux (inotify, O_NOFOLLOW walks)", allow_module_level=True)
