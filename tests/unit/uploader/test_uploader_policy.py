"""Pure rules: names, temp files, blocks, backoff, bandwidth, retention selection."""

from __future__ import annotations

import hashlib

import pytest

from uploader.policy import (
    Backoff,
    Identity,
    TargetError,
    TokenBucket,
    UploadedFile,
    block_id,
    expand_template,
    is_temporary,
    normalise_share_path,
    plan_blocks,
    resolve_target,
    select_expired,
    select_for_pressure,
    validate_template,
)
from uploader.settings import ContainerTarget

ID = Identity(hub="myhub", device="dev-7", module="uploader")


def test_template_expands_every_placeholder() -> None:
    path = "sensors/date=2026-01-01/abc-0.parquet"
    assert expand_template("%h|%d|%m|%c|%p|%f|%%", ID, path) == (
        "myhub|dev-7|uploader|sensors|sensors/date=2026-01-01/abc-0.parquet|date=2026-01-01/abc-0.parquet|%"
    )
    assert expand_template("%d/%m/%p", ID, "root.csv") == "dev-7/uploader/root.csv"
    assert expand_template("%c-%f", ID, "root.csv") == "-root.csv"


@pytest.mark.parametrize("bad", ["%x", "abc%", "%d/%q/%p"])
def test_unknown_or_dangling_placeholders_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="%"):
        validate_template(bad)


def test_identity_from_environment() -> None:
    env = {
        "IOTEDGE_IOTHUBHOSTNAME": "myhub.azure-devices.net",
        "IOTEDGE_DEVICEID": "d",
        "IOTEDGE_MODULEID": "m",
    }
    assert Identity.from_environ(env) == Identity("myhub", "d", "m")


def test_folder_entry_wins_over_wildcard_and_root_files_need_the_wildcard() -> None:
    mapping = {
        "sensors": ContainerTarget.model_validate({"target": "%h-sensors", "blobName": "%d/%f"}),
        "*": ContainerTarget(target="edge-%m"),
    }
    assert resolve_target(mapping, ID, "sensors/a/b.parquet") == ("myhub-sensors", "dev-7/a/b.parquet")
    assert resolve_target(mapping, ID, "_quarantine/x.csv") == (
        "edge-uploader",
        "dev-7/uploader/_quarantine/x.csv",
    )
    assert resolve_target(mapping, ID, "top.csv") == ("edge-uploader", "dev-7/uploader/top.csv")
    only_sensors = {"sensors": ContainerTarget(target="sensors")}
    assert resolve_target(only_sensors, ID, "other/file") is None
    assert resolve_target(only_sensors, ID, "sensors") is None  # a root file named like the folder


def test_expanded_container_name_must_be_valid() -> None:
    upper = Identity(hub="h", device="Device_1", module="m")
    with pytest.raises(TargetError, match="container"):
        resolve_target({"*": ContainerTarget(target="%d")}, upper, "a/b")
    with pytest.raises(TargetError, match="blob name"):
        resolve_target(
            {"*": ContainerTarget.model_validate({"target": "data", "blobName": "%p/"})}, ID, "a/b"
        )


@pytest.mark.parametrize(
    ("path", "temporary"),
    [
        ("a/b.parquet", False),
        ("a/.b.parquet", True),
        ("a/b.parquet.tmp", True),
        ("a/b.partial", True),
        (".staging/b.parquet", True),
        ("a/tmp.parquet", False),
    ],
)
def test_temporary_names(path: str, temporary: bool) -> None:
    assert is_temporary(path) is temporary


def test_share_paths_are_normalised_and_confined() -> None:
    assert normalise_share_path("./a//b/c.csv") == "a/b/c.csv"
    assert normalise_share_path("a\\b") == "a/b"
    for bad in ("../etc/passwd", "a/../../b", "/abs/path", "", "."):
        with pytest.raises(ValueError, match="inside the cloud share"):
            normalise_share_path(bad)


def test_block_plan_covers_the_file_exactly() -> None:
    assert plan_blocks(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert plan_blocks(8, 4) == [(0, 4), (4, 4)]
    plan = plan_blocks(1_000_003, 65_536)
    assert sum(length for _, length in plan) == 1_000_003
    assert all(plan[i][0] + plan[i][1] == plan[i + 1][0] for i in range(len(plan) - 1))
    with pytest.raises(ValueError, match="50000"):
        plan_blocks(50_001 * 1024, 1024)


def test_block_ids_are_deterministic_fixed_length_and_distinct() -> None:
    content_id = hashlib.sha256(b"file").hexdigest()
    md5_a = hashlib.md5(b"a", usedforsecurity=False).digest()
    md5_b = hashlib.md5(b"b", usedforsecurity=False).digest()
    ids = {block_id(content_id, i, md5_a) for i in range(100)}
    assert len(ids) == 100
    assert block_id(content_id, 3, md5_a) == block_id(content_id, 3, md5_a)
    assert block_id(content_id, 3, md5_a) != block_id(content_id, 3, md5_b)
    assert block_id(content_id, 3, md5_a) != block_id(hashlib.sha256(b"other").hexdigest(), 3, md5_a)
    lengths = {len(i.encode()) for i in ids} | {len(block_id(content_id, 999_999, md5_b))}
    assert len(lengths) == 1
    assert lengths.pop() <= 64


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, jitter=0.5)
    assert [backoff.delay(n, 0.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(3, 0.5) == pytest.approx(8 * 0.75)
    assert backoff.delay(3, 0.999) > 4.0
    assert backoff.delay(10_000, 0.0) == 30.0


def test_token_bucket_holds_the_rate_over_any_window() -> None:
    bucket = TokenBucket(rate=100.0, capacity=100.0)
    assert bucket.reserve(100, now=0.0) == 0.0
    assert bucket.reserve(50, now=0.0) == pytest.approx(0.5)
    # The debt of 50 bytes has been half repaid at t=0.25; 50 more need 0.75 s from then.
    assert bucket.reserve(50, now=0.25) == pytest.approx(0.75)
    # Idle time refills only up to the capacity.
    assert bucket.reserve(100, now=100.0) == 0.0
    assert bucket.reserve(1, now=100.0) == pytest.approx(0.01)


def test_token_bucket_lets_oversized_requests_through_at_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0)
    assert bucket.reserve(25, now=0.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate=0, capacity=1)


def test_token_bucket_never_exceeds_capacity_plus_rate_times_time() -> None:
    bucket, now, sent = TokenBucket(rate=1000.0, capacity=4000.0), 0.0, 0
    for size in [3000, 10, 7000, 1, 500, 4000, 4000, 123, 9999] * 5:
        now += bucket.reserve(size, now)  # the caller waits, then sends
        sent += size
        assert sent <= 4000 + 1000 * now + 1e-6


def _uploaded(path: str, size: int, mtime_s: float) -> UploadedFile:
    return UploadedFile(path=path, size=size, mtime_ns=int(mtime_s * 1e9), uploaded_at=mtime_s)


def test_expiry_counts_from_modification_time() -> None:
    files = [_uploaded("old", 1, 1000.0), _uploaded("new", 1, 1000.0 + 3600)]
    assert [f.path for f in select_expired(files, now=1000.0 + 3600 + 60, after_minutes=60)] == ["old"]
    assert select_expired(files, now=1000.0, after_minutes=60) == []


def test_disk_pressure_picks_oldest_until_enough_is_free() -> None:
    files = [_uploaded("c", 30, 3.0), _uploaded("a", 10, 1.0), _uploaded("b", 20, 2.0)]
    chosen = select_for_pressure(files, total=1000, free=80, min_free_bytes=100, min_free_percent=0)
    assert [f.path for f in chosen] == ["a", "b"]
    assert select_for_pressure(files, total=1000, free=200, min_free_bytes=100, min_free_percent=10) == []
    # 15 % of 1000 = 150 free wanted: everything uploaded goes, and that is all it can do.
    chosen = select_for_pressure(files, total=1000, free=50, min_free_bytes=0, min_free_percent=15)
    assert [f.path for f in chosen] == ["a", "b", "c"]
