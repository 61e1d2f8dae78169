"""The promotion rule, and both models run with ONNX Runtime on recent rows (tiny models, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrain import (
    CardError,
    Evaluation,
    Frame,
    decide,
    evaluate,
    load_card,
    model_inputs,
    read_frame,
    resolve_model_dir,
    summarise,
)
from tests.unit.retrain.retrain_models import write_model_dir, write_rows


def ev(rate: float | None, ratio: float | None = None, rows: int = 1000) -> Evaluation:
    return Evaluation("m", "1", rows, rate, None, ratio)


@pytest.mark.parametrize(
    ("candidate", "serving", "tolerance", "promoted"),
    [
        (0.01, 0.02, 0.0, True),  # better
        (0.02, 0.02, 0.0, True),  # as good
        (0.025, 0.02, 0.01, True),  # worse, within tolerance
        (0.035, 0.02, 0.01, False),  # worse beyond tolerance
        (0.021, 0.02, 0.0, False),
    ],
)
def test_anomaly_rate_rule(candidate: float, serving: float, tolerance: float, promoted: bool) -> None:
    verdict = decide(ev(candidate), ev(serving), "anomaly_rate", tolerance)
    assert verdict.promoted is promoted
    assert verdict.metrics() == {
        "metric": "anomaly_rate",
        "candidate": candidate,
        "serving": serving,
        "tolerance": tolerance,
    }


def test_mean_score_ratio_rule_and_its_missing_values() -> None:
    assert decide(ev(0.5, 1.1), ev(0.0, 1.3), "mean_score_ratio", 0.0).promoted
    worse = decide(ev(0.0, 1.5), ev(0.5, 1.3), "mean_score_ratio", 0.1)
    assert not worse.promoted
    assert "by more than 0.1" in worse.reason
    no_value = decide(ev(0.0, None), ev(0.0, 1.0), "mean_score_ratio", 0.0)
    assert not no_value.promoted
    assert "score_baseline.mean" in no_value.reason
    assert decide(ev(0.0, 1.0), ev(0.0, None), "mean_score_ratio", 0.0).promoted


def test_without_rows_or_serving_model() -> None:
    assert not decide(ev(0.0, rows=0), ev(0.0), "anomaly_rate", 0.0).promoted
    first = decide(ev(0.3), None, "anomaly_rate", 0.0)
    assert first.promoted
    assert first.reason == "no serving model to compare with"
    with pytest.raises(ValueError, match="tolerance"):
        decide(ev(0.1), ev(0.1), "anomaly_rate", -1.0)


def test_models_run_on_recent_rows_and_the_wider_model_loses(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "s", threshold=4.0)
    write_model_dir(tmp_path / "c", scale=1.5, threshold=4.0)
    serving, candidate = load_card(tmp_path / "s"), load_card(tmp_path / "c")
    rng = np.random.default_rng(5)
    write_rows(tmp_path / "rows.parquet", rng.standard_normal((4000, 2)), devices=("a", "b"))
    frame = read_frame(
        tmp_path / "rows.parquet",
        serving.feature_columns,
        timestamp_column="timestamp",
        device_column="device_id",
    )
    mine, theirs = evaluate(candidate, frame), evaluate(serving, frame)
    values = frame.matrix(serving.feature_columns)
    expected = (values**2).mean(axis=1)
    assert theirs.rows == 4000
    assert theirs.mean_score == pytest.approx(float(expected.mean()), rel=1e-5)
    assert theirs.anomaly_rate == pytest.approx(float((expected >= 4.0).mean()), abs=1e-9)
    assert mine.anomaly_rate is not None
    assert theirs.anomaly_rate is not None
    assert mine.anomaly_rate > theirs.anomaly_rate
    assert mine.mean_score_ratio == pytest.approx(
        theirs.mean_score_ratio, rel=0.1
    )  # both ~ 1 by own baseline
    verdict = decide(mine, theirs, "anomaly_rate", 0.0)
    assert not verdict.promoted


def test_windows_are_per_device_time_ordered_and_time_major(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "w", window=3)
    card = load_card(tmp_path / "w")
    # Device "a" at t=0,2,4,6; device "b" at t=1,3,5 (interleaved and shuffled on arrival).
    times = np.array([6.0, 1.0, 0.0, 3.0, 2.0, 5.0, 4.0])
    devices = np.array(["a", "b", "a", "b", "a", "b", "a"])
    temperature = times * 10
    vibration = times * 10 + 1
    frame = Frame(times, devices, {"temperature": temperature, "vibration": vibration})
    inputs = model_inputs(card, frame)
    assert inputs.shape == (3, 6)
    assert inputs.tolist() == [
        [0, 1, 20, 21, 40, 41],  # a: t=0,2,4
        [20, 21, 40, 41, 60, 61],  # a: t=2,4,6
        [10, 11, 30, 31, 50, 51],  # b: t=1,3,5
    ]
    scores = summarise(card, np.array([1.0, 2.0, np.nan]))
    assert scores.rows == 2
    assert scores.mean_score == 1.5


def test_cards_are_verified_and_references_resolved(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "m")
    card = load_card(tmp_path / "m")
    assert card.feature_columns == ("temperature", "vibration")
    assert card.window == 1
    assert card.training_max is not None
    assert card.training_max.isoformat() == "2026-01-01T00:00:00+00:00"
    with pytest.raises(CardError, match="the reference says"):
        load_card(tmp_path / "m", sha256="0" * 64)
    (tmp_path / "m" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(CardError, match="the card says"):
        load_card(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "model.json").read_text())
    del raw["feature_columns"]
    (tmp_path / "m" / "model.json").write_text(json.dumps(raw))
    with pytest.raises(CardError, match="feature_columns"):
        load_card(tmp_path / "m", verify=False)
    root = tmp_path / "registry"
    assert resolve_model_dir("registry://sensor-ae/3", root) == root / "sensor-ae" / "3"
    assert resolve_model_dir("file:///srv/models/x", root) == Path("/srv/models/x")
    for bad in ("registry://sensor-ae/../x", "registry://only-name", "https://acct/blob/", "file://host/x"):
        with pytest.raises(CardError):
            resolve_model_dir(bad, root)
