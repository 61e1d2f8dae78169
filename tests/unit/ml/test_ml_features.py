from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from ml.errors import DataError
from ml.features import (
    build_dataset,
    content_sha256,
    detect_roles,
    discover_files,
    load_dataset,
    make_windows,
)
from tests.unit.ml.ml_kit import FEATURES, sensor_table, write_cloud_share


def test_discovery_skips_quarantine_hidden_and_temporary_files(tmp_path: Path) -> None:
    table = sensor_table(devices=1, steps=10)
    write_cloud_share(tmp_path, table, parts=2)
    day = tmp_path / "sensors" / "date=2026-11-01"
    quarantine = tmp_path / "_quarantine" / "sensors"
    quarantine.mkdir(parents=True)
    pq.write_table(table, quarantine / "bad.parquet")
    pq.write_table(table, day / f".{'cd' * 32}-00000.parquet.tmp-123")
    pq.write_table(table, day / ".hidden.parquet")
    (day / "notes.txt").write_text("not data")
    found = discover_files(tmp_path)
    assert [p.name for p in found] == [f"{'ab' * 32}-00000.parquet", f"{'ab' * 32}-00001.parquet"]


def test_cloud_share_layout_loads_every_row_once_without_partition_columns(tmp_path: Path) -> None:
    table = sensor_table(devices=3, steps=50)
    write_cloud_share(tmp_path, table, parts=4)
    (tmp_path / "_quarantine").mkdir()
    pq.write_table(table, tmp_path / "_quarantine" / "rows.parquet")
    dataset = load_dataset(tmp_path)
    assert dataset.rows == 150
    assert dataset.files == 4
    assert dataset.roles.features == FEATURES  # no `date` column from the folder names
    assert dataset.roles.device == "device_id"
    assert dataset.roles.timestamp == "timestamp"
    np.testing.assert_allclose(dataset.values[:, 0], table.column("temperature").to_numpy())


def test_csv_and_parquet_of_the_same_rows_give_the_same_content_hash(tmp_path: Path) -> None:
    table = sensor_table(devices=2, steps=40, label=True, anomaly_rate=0.1)
    write_cloud_share(tmp_path / "parquet", table, parts=3)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    # Shuffled and split differently: the hash must not depend on order or files.
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    pcsv.write_csv(shuffled.slice(0, 30), csv_dir / "a.csv")
    pcsv.write_csv(shuffled.slice(30), csv_dir / "b.csv")
    from_parquet = load_dataset(tmp_path / "parquet")
    from_csv = load_dataset(csv_dir)
    assert from_csv.roles == from_parquet.roles
    assert from_csv.rows == from_parquet.rows == 80
    assert content_sha256(from_csv, np.arange(80)) == content_sha256(from_parquet, np.arange(80))
    assert from_csv.labels is not None
    assert from_parquet.labels is not None
    assert from_csv.labels.sum() == from_parquet.labels.sum() > 0


def test_content_hash_changes_with_one_value_and_ignores_row_order(tmp_path: Path) -> None:
    table = sensor_table(devices=2, steps=20)
    dataset = build_dataset(table, detect_roles(table.schema), files=1)
    rows = np.arange(dataset.rows)
    digest = content_sha256(dataset, rows)
    assert content_sha256(dataset, rows[::-1]) == digest
    assert content_sha256(dataset, rows[:-1]) != digest
    dataset.values[3, 1] += 1e-9
    assert content_sha256(dataset, rows) != digest


def test_default_features_are_numeric_columns_except_time_ids_and_labels() -> None:
    table = pa.table(
        {
            "ts": pa.array([1, 2], type=pa.timestamp("s")),
            "deviceId": ["a", "b"],
            "id": [1, 2],
            "batch_id": [7, 8],
            "line": ["x", "y"],
            "temperature": [1.5, 2.5],
            "rpm": pa.array([100, 200], type=pa.int32()),
            "label": [0, 1],
            "ok": [True, False],
        }
    )
    roles = detect_roles(table.schema)
    assert roles.features == ("temperature", "rpm")
    assert (roles.timestamp, roles.device, roles.label) == ("ts", "deviceId", "label")


def test_epoch_number_timestamp_column_is_recognised_by_name() -> None:
    table = pa.table({"time": [1_700_000_000_000, 1_700_000_001_000], "device": ["a", "a"], "x": [1.0, 2.0]})
    roles = detect_roles(table.schema)
    assert roles.timestamp == "time"
    assert roles.features == ("x",)
    dataset = build_dataset(table, roles, files=1)
    assert dataset.timestamps_us is not None
    assert dataset.timestamps_us.tolist() == [1_700_000_000_000_000, 1_700_000_001_000_000]


def test_explicit_features_and_bad_names() -> None:
    table = sensor_table(devices=1, steps=5)
    assert detect_roles(table.schema, features=["pressure", "current"]).features == ("pressure", "current")
    with pytest.raises(DataError, match="not in the data"):
        detect_roles(table.schema, features=["nope"])
    with pytest.raises(DataError, match="not numeric"):
        detect_roles(table.schema, features=["device_id"])
    with pytest.raises(DataError, match="no numeric feature"):
        detect_roles(pa.table({"device": ["a"], "ts": pa.array([1], type=pa.timestamp("s"))}).schema)


def test_string_labels_are_understood() -> None:
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "anomaly": ["normal", "Anomaly", " TRUE ", None]})
    dataset = build_dataset(table, detect_roles(table.schema), files=1)
    assert dataset.labels is not None
    assert dataset.labels.tolist() == [False, True, True, False]


def _series_table() -> pa.Table:
    # Rows deliberately out of time order and interleaved between devices.
    return pa.table(
        {
            "timestamp": pa.array([3, 1, 2, 1, 4, 2, 3, 5], type=pa.timestamp("s", tz="UTC")),
            "device_id": ["a", "a", "a", "b", "a", "b", "b", "a"],
            "value": [30.0, 10.0, 20.0, 100.0, 40.0, 200.0, 300.0, 50.0],
        }
    )


def test_windows_are_per_device_time_ordered_and_time_major() -> None:
    table = _series_table()
    dataset = build_dataset(table, detect_roles(table.schema), files=1)
    windows = make_windows(dataset, 3)
    assert windows.inputs.shape == (4, 3)
    got = {tuple(row) for row in windows.inputs.tolist()}
    # device a: 10 20 30 40 50 -> three windows; device b: 100 200 300 -> one; none mixes a and b.
    assert got == {(10.0, 20.0, 30.0), (20.0, 30.0, 40.0), (30.0, 40.0, 50.0), (100.0, 200.0, 300.0)}
    for rows in windows.rows:
        assert len(set(dataset.devices[rows])) == 1
        assert dataset.timestamps_us is not None
        assert np.all(np.diff(dataset.timestamps_us[rows]) > 0)
    # The score of a window belongs to its last row.
    last_values = dataset.values[windows.last_rows, 0]
    np.testing.assert_array_equal(last_values, windows.inputs[:, -1])


def test_multivariate_windows_concatenate_rows_time_major() -> None:
    table = pa.table(
        {
            "timestamp": pa.array([1, 2, 3], type=pa.timestamp("s")),
            "device_id": ["a", "a", "a"],
            "x": [1.0, 2.0, 3.0],
            "y": [10.0, 20.0, 30.0],
        }
    )
    windows = make_windows(build_dataset(table, detect_roles(table.schema), files=1), 2)
    assert windows.inputs.tolist() == [[1.0, 10.0, 2.0, 20.0], [2.0, 20.0, 3.0, 30.0]]


def test_windows_skip_missing_values_and_short_devices() -> None:
    table = pa.table(
        {
            "timestamp": pa.array([1, 2, 3, 4, 1], type=pa.timestamp("s")),
            "device_id": ["a", "a", "a", "a", "short"],
            "x": [1.0, None, 3.0, 4.0, 9.0],
        }
    )
    dataset = build_dataset(table, detect_roles(table.schema), files=1)
    assert make_windows(dataset, 2).inputs.tolist() == [[3.0, 4.0]]
    assert make_windows(dataset, 1).inputs.tolist() == [[1.0], [3.0], [4.0], [9.0]]
    assert make_windows(dataset, 5).inputs.shape == (0, 5)


def test_no_files_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no Parquet or CSV"):
        load_dataset(tmp_path)


def test_csv_with_unparseable_times_keeps_rows_but_not_in_windows(tmp_path: Path) -> None:
    (tmp_path / "line.csv").write_text(
        "timestamp,device_id,x\n"
        "2026-11-01T00:00:02Z,a,3\n"
        "not a time,a,99\n"
        "2026-11-01T00:00:00Z,a,1\n"
        "2026-11-01T01:00:01+01:00,a,2\n"  # 00:00:01 UTC
    )
    dataset = load_dataset(tmp_path)
    assert dataset.roles.timestamp == "timestamp"
    assert dataset.timestamps_us is not None
    assert dataset.timestamps_us[2] == 1_793_491_200_000_000
    assert make_windows(dataset, 2).inputs.tolist() == [[1.0, 2.0], [2.0, 3.0]]
    assert sorted(make_windows(dataset, 1).inputs[:, 0].tolist()) == [1.0, 2.0, 3.0, 99.0]


def test_an_unreadable_file_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "dump.csv").write_bytes(b"a,b\n1,2,3,4\n\xff\xfe")
    with pytest.raises(DataError, match=r"dump\.csv: unreadable"):
        load_dataset(tmp_path)
