"""The demo is the whole loop: `make run`'s script, end to end, under edgesim.

First model trained on history; data streamed that drifts halfway; retrain-trigger requests a retrain with
its evidence; v2 is trained, compared, promoted and served; every row lands in the cloud once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    completed = subprocess.run(
        [sys.executable, "scripts/demo.py", "--out", str(out), "--interval", "1.5", "--timeout", "300"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert "== edgeloop demo: ok" in completed.stdout
    return out


def test_models_served_v1_then_v2_after_a_drift_retrain(demo_run: Path) -> None:
    report = json.loads((demo_run / "report.json").read_text())
    assert report["ok"], report["problems"]
    assert [(m["name"], m["version"]) for m in report["models_served"]] == [
        ("sensor-ae", "1"),
        ("sensor-ae", "2"),
    ]
    [request] = report["retrain_requests"]
    assert request["reason"] == "drift"
    drift = request["evidence"]["drift"]
    assert drift["score"] > drift["score_threshold"]
    assert "temperature" in drift["drifted"]
    candidate = report["twins"]["retrain-trigger"]["reported"]["lastCandidate"]
    assert candidate["promoted"] is True
    assert candidate["metrics"]["rule"]["candidate"] < candidate["metrics"]["rule"]["serving"]
    # The request also went upstream, as IoT Hub would receive it.
    upstream = [json.loads(line) for line in (demo_run / "upstream.jsonl").read_text().splitlines()]
    assert any(
        m["output"] == "retrain" and m["body"]["request_id"] == request["request_id"] for m in upstream
    )
    assert any(m["output"] == "anomalies" for m in upstream)


def test_every_row_transformed_scored_and_uploaded_once(demo_run: Path) -> None:
    report = json.loads((demo_run / "report.json").read_text())
    counters = {name: module["counters"] for name, module in report["modules"].items()}
    for name, module in report["modules"].items():
        assert module["restarts"] == 0, name
    rows = counters["transformer"]["rows"]
    # 14 stream files: one a copy (skipped), one garbage (quarantined), 3 bad rows quarantined.
    assert rows == 12 * 3600 - 1800 - 3
    assert counters["gpu-inferencer"]["rows_scored"] == rows
    cloud = demo_run / "cloud" / "edgeloop" / "edgesim-device"
    clean = sorted((cloud / "sensors").rglob("*.parquet"))
    scores = sorted((cloud / "scores" / "sensors").rglob("*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in clean) == rows
    assert sum(pq.read_metadata(p).num_rows for p in scores) == rows
    keys: set[tuple[object, object]] = set()
    for path in clean:
        table = pq.read_table(path, columns=["timestamp", "device_id"])
        keys.update(zip(table["timestamp"].to_pylist(), table["device_id"].to_pylist(), strict=True))
    assert len(keys) == rows  # no row twice, even across files
    versions: set[object] = set()
    for path in scores:
        versions.update(pq.read_table(path, columns=["model_version"])["model_version"].to_pylist())
    # v1 scored the stream; v2 scores whatever arrives after its promotion (none, if the stream ended first).
    assert "1" in versions
    assert versions <= {"1", "2"}
    serving = report["twins"]["gpu-inferencer"]["reported"]["model"]["serving"]
    assert (serving["name"], serving["version"]) == ("sensor-ae", "2")
