"""Pure rules: name safety, classification, datasets, formats, config validation, inotify translation."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncinotify import Mask
from pydantic import ValidationError

from share_ingest import FileReady, IngestConfig
from share_ingest.records import iso_utc_from_ns
from share_ingest.rules import Kind, Rules, display_path, format_of, name_problem, path_problem
from share_ingest.watcher import (
    FolderAppeared,
    FolderGone,
    PathChanged,
    PathGone,
    Rescan,
    filesystem_type,
    is_network_filesystem,
    translate,
)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("..", "not a file name"),
        (".", "not a file name"),
        ("", "not a file name"),
        ("line\nbreak.csv", "U+000A"),
        ("tab\t.csv", "U+0009"),
        ("esc\x1b[31m.csv", "U+001B"),
        ("del\x7f.csv", "U+007F"),
        ("c1\x85.csv", "U+0085"),
        ("sep\u2028.csv", "U+2028"),
        ("evil\u202ecod.csv", "bidirectional"),
        ("back\\slash.csv", "backslash"),
        ("bad\udcff.csv", "not valid UTF-8"),
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),
    ],
)
def test_hostile_names_are_refused_with_a_reason(name: str, fragment: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize(
    "name", ["data.csv", "..data.csv", "...", "ünïcødé 测试.csv", "x" * 255, "a b (1).csv"]
)
def test_ordinary_names_pass(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize("rel", ["../etc/passwd", "a/../../b", "a/./b", "/abs/x.csv", "a//b", "a/", ""])
def test_traversal_and_malformed_paths_are_refused(rel: str) -> None:
    assert path_problem(rel, 1024) is not None


def test_path_length_limit_counts_utf8_bytes() -> None:
    rel = "é" * 20 + "/" + "x.csv"  # 46 bytes, 26 characters
    assert path_problem(rel, 46) is None
    assert "longer than 45 bytes" in (path_problem(rel, 45) or "")


@pytest.mark.parametrize(
    "rel", ["line\nbreak", "bad\udcff", "evil\u202e", "esc\x1b[2J", "nul\x00", "x" * 2000, "ok/name.csv"]
)
def test_display_path_is_always_printable_and_bounded(rel: str) -> None:
    shown = display_path(rel)
    assert shown.isprintable()
    assert len(shown) <= 512
    if rel == "ok/name.csv":
        assert shown == rel


def test_display_path_shows_undecodable_bytes_as_escapes() -> None:
    assert display_path("bad\udcff.csv") == "bad\\xff.csv"
    assert display_path("a\nb") == "a\\x0ab"


def rules(**config: object) -> Rules:
    return Rules(IngestConfig.model_validate(config))


def test_classification_defaults() -> None:
    r = rules()
    assert r.classify("plant1/data.csv") is Kind.CANDIDATE
    assert r.classify("plant1/data.csv.ready") is Kind.MARKER
    assert r.classify(".data.csv.tmp") is Kind.HIDDEN
    assert r.classify("plant1/.cache/data.csv") is Kind.HIDDEN
    assert r.classify("data.csv.partial") is Kind.TEMPORARY
    assert r.classify("data.CSV.TMP") is Kind.TEMPORARY
    assert r.classify("~$report.csv") is Kind.TEMPORARY
    assert r.classify("big.parquet.part") is Kind.TEMPORARY


def test_include_exclude_with_globstar() -> None:
    r = rules(include=["**/*.csv", "**/*.csv.gz"], exclude=["archive/**", "**/*_old.csv"])
    assert r.classify("top.csv") is Kind.CANDIDATE
    assert r.classify("a/b/c/deep.csv") is Kind.CANDIDATE
    assert r.classify("a/b/c/deep.csv.gz") is Kind.CANDIDATE
    assert r.classify("a/notes.txt") is Kind.EXCLUDED
    assert r.classify("archive/2020/x.csv") is Kind.EXCLUDED
    assert r.classify("plant/x_old.csv") is Kind.EXCLUDED


def test_hidden_names_can_be_included_on_request() -> None:
    assert rules(include_hidden=True).classify("..data.csv") is Kind.CANDIDATE
    assert rules(include_hidden=True).classify(".x/data.csv") is Kind.CANDIDATE


def test_dataset_mapping_then_top_folder_then_default() -> None:
    r = rules(datasets={"plant-*/line1/**": "line1", "**/*.jsonl": "events"}, default_dataset="loose")
    assert r.dataset_for("plant-a/line1/x.csv") == "line1"
    assert r.dataset_for("plant-a/line2/x.csv") == "plant-a"
    assert r.dataset_for("plant-a/x.jsonl") == "events"
    assert r.dataset_for("root.csv") == "loose"
    assert rules().dataset_for("root.csv") == "default"


@pytest.mark.parametrize(
    ("rel", "fmt", "compression"),
    [
        ("a.csv", "csv", None),
        ("a.CSV.GZ", "csv", "gzip"),
        ("d/a.jsonl", "jsonl", None),
        ("a.ndjson.gz", "jsonl", "gzip"),
        ("a.parquet", "parquet", None),
        ("a.pq", "parquet", None),
        ("a.txt", "unknown", None),
        ("a.gz", "unknown", "gzip"),
        (".csv", "unknown", None),
    ],
)
def test_format_from_extension(rel: str, fmt: str, compression: str | None) -> None:
    found = format_of(rel)
    assert (found.name, found.compression) == (fmt, compression)


@pytest.mark.parametrize(
    "config",
    [
        {"mode": "fanotify"},
        {"completion": "magic"},
        {"unknown_key": 1},
        {"include": ["../x/**"]},
        {"include": ["/abs/**"]},
        {"include": []},
        {"exclude": ["a\\b"]},
        {"datasets": {"**": "has space"}},
        {"default_dataset": "../up"},
        {"marker_suffix": "ready"},
        {"temp_patterns": ["dir/*.tmp"]},
        {"stable_seconds": 0},
        {"poll_interval_seconds": -1},
    ],
)
def test_invalid_config_is_rejected(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        IngestConfig.model_validate(config)


def test_config_is_immutable() -> None:
    config = IngestConfig()
    with pytest.raises(ValidationError):
        config.mode = "poll"


def test_mtime_is_utc_iso8601_with_microseconds() -> None:
    assert iso_utc_from_ns(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_utc_from_ns(1_767_225_600_123_456_789) == "2026-01-01T00:00:00.123456Z"


def test_file_ready_as_dict_has_the_contract_fields() -> None:
    record = FileReady("ab" * 32, "p/x.csv", 3, "2026-01-01T00:00:00.000000Z", "csv", None, "p")
    assert record.as_dict() == {
        "file_id": "ab" * 32,
        "path": "p/x.csv",
        "size": 3,
        "mtime": "2026-01-01T00:00:00.000000Z",
        "format": "csv",
        "compression": None,
        "dataset": "p",
    }


def test_translate_inotify_events() -> None:
    assert translate(Mask.Q_OVERFLOW, None, None) == [Rescan("inotify queue overflow")]
    assert translate(Mask.UNMOUNT, "", None) == [Rescan("share unmounted")]
    assert translate(Mask.DELETE_SELF, "", None) == [Rescan("share root moved or deleted")]
    assert translate(Mask.DELETE_SELF, "sub", None) == []
    assert translate(Mask.CREATE, "a", "x.csv") == [PathChanged("a/x.csv")]
    assert translate(Mask.CLOSE_WRITE, "", "x.csv") == [PathChanged("x.csv")]
    assert translate(Mask.MOVED_TO, "", "x.csv") == [PathChanged("x.csv")]
    assert translate(Mask.ATTRIB, "", "x.csv") == [PathChanged("x.csv")]
    assert translate(Mask.MOVED_FROM, "a", "x.csv") == [PathGone("a/x.csv")]
    assert translate(Mask.DELETE, "a", "x.csv") == [PathGone("a/x.csv")]
    assert translate(Mask.CREATE | Mask.ISDIR, "a", "b") == [FolderAppeared("a/b")]
    assert translate(Mask.MOVED_TO | Mask.ISDIR, "", "b") == [FolderAppeared("b")]
    assert translate(Mask.MOVED_FROM | Mask.ISDIR, "", "b") == [FolderGone("b")]
    assert translate(Mask.CREATE, None, "x.csv") == []  # a watch we no longer know
    assert translate(Mask.IGNORED, "a", None) == []


MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:50 / /mnt/plant\\040share rw,relatime shared:2 - cifs //nas/plant rw,vers=3.1.1
41 22 0:51 / /mnt/nfs rw,relatime shared:3 - nfs4 nas:/export rw
42 41 0:52 / /mnt/nfs/local rw,relatime shared:4 - tmpfs tmpfs rw
"""


def test_filesystem_type_picks_the_longest_mount(tmp_path: Path) -> None:
    assert filesystem_type(Path("/mnt/plant share/x"), MOUNTINFO) == "cifs"
    assert filesystem_type(Path("/mnt/nfs/data"), MOUNTINFO) == "nfs4"
    assert filesystem_type(Path("/mnt/nfs/local/data"), MOUNTINFO) == "tmpfs"
    assert filesystem_type(Path("/srv"), MOUNTINFO) == "ext4"
    assert is_network_filesystem("cifs")
    assert is_network_filesystem("nfs4")
    assert is_network_filesystem("fuse.sshfs")
    assert not is_network_filesystem("ext4")
    assert not is_network_filesystem(None)
    assert filesystem_type(tmp_path) is not None  # the real /proc/self/mountinfo parses
