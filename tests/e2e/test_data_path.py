"""Issue 3's promise, whole: mixed input through share-ingest, transformer and cloud-share-uploader under
`python -m edgesim run`, and every good row in Blob storage exactly once, every rejected row and file in the
quarantine with its reason."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/ is not a package: the repo root goes on sys.path so the shared kit imports by its full name.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.e2e.datapath_kit import (
    DataGenerator,
    EdgesimRun,
    assert_clean_run,
    check_cloud_share_uploaded,
    check_exactly_once,
    default_plan,
    describe,
    make_test_manifest,
    write_atomically,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SEED = int(os.environ.get("EDGELOOP_TEST_SEED", "3"))


def test_mixed_formats_sizes_and_duplicates_land_exactly_once(tmp_path: Path) -> None:
    print(f"seed {SEED} (EDGELOOP_TEST_SEED reproduces)")
    data = tmp_path / "data"
    expected = DataGenerator(SEED).write(data, default_plan())
    # Whole files the transformer must refuse: a required column missing, and a format it does not know.
    write_atomically(data / "meters" / "no-voltage.csv", b"time,meter,kwh\n2026-11-02T00:00:00Z,m1,3.5\n")
    expected.expect_rejected_file("meters", "no-voltage.csv", "missing_columns", "meters/no-voltage.csv")
    write_atomically(data / "lab" / "readings.xlsx", b"PK\x03\x04 a spreadsheet, not a data file")
    expected.expect_rejected_file("lab", "readings.xlsx", "unknown_format", "lab/readings.xlsx")

    run = EdgesimRun.start(tmp_path / "run", make_test_manifest(tmp_path), data, timeout_s=200)
    report = run.finish(within_s=230)
    assert_clean_run(report, run)

    checked = check_exactly_once(run.run_dir, expected)
    assert checked.good_rows == expected.good_rows
    assert checked.rejected_rows == expected.rejected_row_count
    assert checked.rejected_files == 2
    uploaded_files = check_cloud_share_uploaded(run.run_dir)

    modules = report["modules"]
    distinct = expected.distinct_files
    copies = len(expected.files) - len(distinct)
    ingest = modules["share-ingest"]["counters"]
    # Every name is announced (copies too: their content id tells the transformer they are repeats).
    assert ingest["files"] == len(expected.files), describe(report, run)
    assert ingest["confirmed"] == len(expected.files), describe(report, run)
    assert ingest["bytes"] == sum((data / f.path).stat().st_size for f in expected.files)
    transformer = modules["transformer"]["counters"]
    assert transformer["rows"] == expected.good_rows, describe(report, run)
    assert transformer["duplicate_rows"] == expected.duplicate_rows
    assert transformer["quarantined_rows"] == expected.rejected_row_count
    assert transformer["quarantined_files"] == 2
    assert transformer["files"] == len(distinct) - 2
    assert transformer["duplicates"] == copies
    uploader = modules["cloud-share-uploader"]["counters"]
    assert uploader["uploaded"] == uploaded_files, describe(report, run)
    assert uploader["bytes"] == sum(
        p.stat().st_size for p in (run.run_dir / "cloud").rglob("*") if p.is_file()
    )
    assert uploader.get("bad_messages", 0) == 0
    # Routes: one announcement per name, one confirmation back, one uploaded notice per blob upstream.
    assert report["routes"]["ingestToTransformer"] == len(expected.files)
    assert report["routes"]["processedToIngest"] == len(expected.files)
    assert report["routes"]["uploadedToUpstream"] == uploaded_files
    assert report["routes"]["transformerToUploader"] == transformer["batches"]
