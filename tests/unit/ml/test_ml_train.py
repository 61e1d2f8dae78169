from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from ml.card import read_card
from ml.errors import DataError, ExportMismatchError
from ml.export import onnx_scores, onnx_session
from ml.features import build_dataset, detect_roles, make_windows
from ml.model import DenseLayer
from ml.train import TrainConfig, train
from tests.unit.ml.ml_kit import DEVICES, FEATURES, STEPS, Trained, sensor_table, write_cloud_share

CONSUMER_REQUIRED = [
    "model_file",
    "model_sha256",
    "inputs",
    "outputs",
    "feature_columns",
    "window",
    "threshold",
    "name",
    "version",
]


def _scores_of(model_dir: Path, table, window: int = 1) -> np.ndarray:
    card = read_card(model_dir)
    dataset = build_dataset(table, detect_roles(table.schema, features=card.feature_columns), files=1)
    session = onnx_session((model_dir / card.model_file).read_bytes())
    return onnx_scores(session, make_windows(dataset, window).inputs)


def test_model_dir_holds_a_card_that_follows_the_contract(trained: Trained) -> None:
    model_dir = trained.model_dir
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.onnx"]
    raw = json.loads((model_dir / "model.json").read_text())
    for key in CONSUMER_REQUIRED:
        assert key in raw
    assert raw["schema"] == "edgeloop.model-card/1"
    assert raw["model_sha256"] == hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest()
    assert raw["inputs"] == {"name": "features", "dtype": "float32"}
    assert raw["outputs"] == {"score": "score"}
    assert raw["feature_columns"] == list(FEATURES)
    assert (raw["window"], raw["device_column"], raw["timestamp_column"]) == (1, "device_id", "timestamp")
    assert raw["threshold_quantile"] == 0.995
    assert raw["framework"]["onnx_opset"] == 17
    baseline = raw["score_baseline"]
    assert len(baseline["histogram"]["edges"]) == 21
    assert sum(baseline["histogram"]["counts"]) == baseline["count"] == raw["metrics"]["val_rows"]
    assert set(baseline["quantiles"]) >= {"0.5", "0.9", "0.99"}
    for name in FEATURES:
        histogram = raw["feature_baseline"][name]["histogram"]
        assert len(histogram["edges"]) == 21
        assert all(b > a for a, b in zip(histogram["edges"], histogram["edges"][1:], strict=False))
    data = raw["training_data"]
    assert data["files"] == 3
    # Labelled anomalies are excluded from training but count as rows used (for detection metrics).
    assert data["rows"] == DEVICES * STEPS
    assert data["time_range"] == {"min": "2026-11-01T00:00:00Z", "max": "2026-11-02T09:19:00Z"}
    assert len(data["sha256"]) == 64


def test_onnx_input_width_and_dynamic_batch(trained: Trained) -> None:
    model = onnx.load(str(trained.model_dir / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert dims[1].dim_value == len(FEATURES)


def test_threshold_quantile_holds_on_held_out_normal_data(trained: Trained) -> None:
    card = trained.result.card
    assert card.metrics is not None
    # On the calibration split itself: about 0.5% at or above the threshold.
    assert 0.0 < card.metrics["anomaly_rate_val"] <= 0.005 + 1.0 / card.metrics["val_rows"]
    # On fresh normal data from the same process, the rate stays near 0.5% (generous: a small sample).
    fresh = sensor_table(devices=DEVICES, steps=STEPS, seed=99, start_step=STEPS)
    rate = float(np.mean(_scores_of(trained.model_dir, fresh) >= card.threshold))
    assert rate < 0.02


def test_injected_anomalies_score_above_the_threshold(trained: Trained) -> None:
    table = sensor_table(devices=DEVICES, steps=500, seed=5, anomaly_rate=0.2, label=True)
    scores = _scores_of(trained.model_dir, table)
    labels = table.column("is_anomaly").to_numpy(zero_copy_only=False)
    assert float(np.mean(scores[labels] >= trained.result.card.threshold)) > 0.95
    assert float(np.mean(scores[~labels] >= trained.result.card.threshold)) < 0.03
    assert scores[labels].mean() > 10 * scores[~labels].mean()


def test_labelled_anomalies_are_reported_not_trained_on(trained: Trained) -> None:
    metrics = trained.result.card.metrics
    assert metrics is not None
    labelled = metrics["labelled_anomalies"]
    assert labelled > 0
    normal = DEVICES * STEPS - labelled
    assert metrics["train_rows"] + metrics["early_stopping_rows"] + metrics["val_rows"] == normal
    assert metrics["detection"]["recall"] > 0.95
    assert metrics["export_max_abs_diff"] < 1e-5


def test_same_seed_same_bytes_other_seed_other_model(labelled_share: Path, tmp_path: Path) -> None:
    first = train(TrainConfig(data=labelled_share, out=tmp_path / "a", seed=11, epochs=5))
    second = train(TrainConfig(data=labelled_share, out=tmp_path / "b", seed=11, epochs=5))
    third = train(TrainConfig(data=labelled_share, out=tmp_path / "c", seed=12, epochs=5))
    a, b, c = ((tmp_path / n / "model.onnx").read_bytes() for n in "abc")
    assert a == b
    assert a != c
    assert first.card.threshold == second.card.threshold
    assert first.card.training_data == second.card.training_data == third.card.training_data


def test_windowed_model_scores_windows(tmp_path: Path) -> None:
    table = sensor_table(devices=3, steps=800, seed=2)
    write_cloud_share(tmp_path / "data", table)
    result = train(TrainConfig(data=tmp_path / "data", out=tmp_path / "m", window=4, epochs=15))
    card = result.card
    assert card.window == 4
    assert card.feature_columns == list(FEATURES)  # the card names rows' columns, not window slots
    model = onnx.load(str(tmp_path / "m" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 4 * len(FEATURES)
    scores = _scores_of(tmp_path / "m", sensor_table(devices=1, steps=50, seed=3), window=4)
    assert scores.shape == (47,)
    assert card.training_data is not None
    assert card.training_data["rows"] == 3 * 800


def test_univariate_series_with_window(tmp_path: Path) -> None:
    table = sensor_table(devices=2, steps=600, seed=4).select(["timestamp", "device_id", "pressure"])
    write_cloud_share(tmp_path / "data", table)
    card = train(TrainConfig(data=tmp_path / "data", out=tmp_path / "m", window=8, epochs=10)).card
    assert card.feature_columns == ["pressure"]
    graph_input = onnx.load(str(tmp_path / "m" / "model.onnx")).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[1].dim_value == 8


def test_too_little_data_is_refused(tmp_path: Path) -> None:
    write_cloud_share(tmp_path / "data", sensor_table(devices=1, steps=10), parts=1)
    with pytest.raises(DataError, match="training inputs"):
        train(TrainConfig(data=tmp_path / "data", out=tmp_path / "m"))
    assert not (tmp_path / "m" / "model.onnx").exists()


def test_config_rejects_unknown_and_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig.model_validate({"data": tmp_path, "out": tmp_path, "epoch": 3})
    with pytest.raises(ValidationError):
        TrainConfig(data=tmp_path, out=tmp_path, threshold_quantile=1.5)
    with pytest.raises(ValidationError):
        TrainConfig(data=tmp_path, out=tmp_path, version="v2")


def test_an_export_that_does_not_match_pytorch_fails_training(
    labelled_share: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml.export import build_onnx as real_build

    def skewed_build(layers: list[DenseLayer], mean: np.ndarray, std: np.ndarray) -> onnx.ModelProto:
        # The normalisation constants drift by 0.1%: small, and still far past the tolerance.
        return real_build(layers, mean, std * np.float32(1.001))

    monkeypatch.setattr("ml.train.build_onnx", skewed_build)
    with pytest.raises(ExportMismatchError):
        train(TrainConfig(data=labelled_share, out=tmp_path / "m", epochs=2))
    assert not (tmp_path / "m").exists()
