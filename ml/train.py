"""Train the default anomaly model and write MODEL_DIR: `model.onnx` + `model.json`.

Steps: load and window the data; split normal windows into train / validation (early stopping) /
calibration (threshold, score baseline); fit the autoencoder on normalised inputs; export ONNX and check
it against PyTorch; calibrate the threshold on ONNX scores (what the inferencer will compute); write the card.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ml import __version__
from ml.card import (
    CARD_SCHEMA,
    MODEL_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    FeatureBaseline,
    Histogram,
    InputSpec,
    ModelCard,
    OutputSpec,
    ScoreBaseline,
    write_card,
)
from ml.errors import DataError
from ml.export import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    build_onnx,
    check_parity,
    onnx_scores,
    onnx_session,
    serialize_onnx,
    write_model_file,
)
from ml.features import MISSING_TIME, Dataset, Windows, content_sha256, load_dataset, make_windows
from ml.model import AutoEncoder, ScoringModel, default_widths

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 20
BASELINE_QUANTILES = (0.5, 0.9, 0.95, 0.99)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TrainConfig(BaseModel):
    """Every training option; the CLI and a `--config` JSON file fill the same fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    out: Path
    name: str = "sensor-ae"
    version: str = "1"
    features: list[str] | None = None
    window: int = Field(default=1, ge=1, le=1024)
    device_column: str | None = None
    timestamp_column: str | None = None
    label_column: str | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    hidden: list[int] | None = Field(default=None, min_length=1)
    bottleneck: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=40, ge=1)
    patience: int = Field(default=5, ge=1)
    min_improvement: float = Field(default=5e-3, ge=0.0, lt=1.0)
    batch_size: int = Field(default=512, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    validation_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    calibration_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    threshold_quantile: float = Field(default=0.995, gt=0.0, lt=1.0)
    max_rows: int | None = Field(default=None, ge=10)
    # One thread: this network's matrices are small enough that a second thread costs more than it gives
    # (measured: 5x slower on a 2-core machine). It also keeps results independent of the core count.
    threads: int = Field(default=1, ge=1)
    export_atol: float = Field(default=1e-5, gt=0.0)
    export_rtol: float = Field(default=1e-4, ge=0.0)
    min_training_rows: int = Field(default=20, ge=2)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("name: letters, digits, '.', '_', '-', starting with a letter or digit")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_PATTERN.match(value):
            raise ValueError("version must be a positive integer as a string")
        return value

    @field_validator("hidden")
    @classmethod
    def _widths(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(width < 1 for width in value):
            raise ValueError("hidden widths must be positive")
        return value

    @model_validator(mode="after")
    def _fractions(self) -> TrainConfig:
        if self.validation_fraction + self.calibration_fraction >= 0.8:
            raise ValueError("validation_fraction + calibration_fraction must leave >= 20% to train on")
        return self


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    card: ModelCard
    epochs_run: int


@dataclass(frozen=True)
class _Split:
    train: npt.NDArray[np.int64]
    validation: npt.NDArray[np.int64]
    calibration: npt.NDArray[np.int64]


def train(config: TrainConfig) -> TrainResult:
    dataset = load_dataset(
        config.data,
        features=config.features,
        device_column=config.device_column,
        timestamp_column=config.timestamp_column,
        label_column=config.label_column,
    )
    windows = make_windows(dataset, config.window)
    normal, anomalous = _partition_by_label(dataset, windows)
    rng = np.random.default_rng(config.seed)
    if config.max_rows is not None and normal.size > config.max_rows:
        normal = np.sort(rng.choice(normal, size=config.max_rows, replace=False))
    split = _split(normal, config, rng)
    if split.train.size < config.min_training_rows:
        raise DataError(
            f"only {split.train.size} training inputs after windowing and the split "
            f"(need {config.min_training_rows}); add data or lower --window"
        )
    log.info(
        "data: %d files, %d rows, %d inputs (window %d, %d features); train %d, validation %d, "
        "calibration %d, labelled anomalies %d",
        dataset.files,
        dataset.rows,
        windows.inputs.shape[0],
        config.window,
        len(dataset.roles.features),
        split.train.size,
        split.validation.size,
        split.calibration.size,
        anomalous.size,
    )

    inputs = windows.inputs
    train_inputs = inputs[split.train]
    mean = train_inputs.mean(axis=0)
    std = train_inputs.std(axis=0)
    # A constant feature would divide by zero; scaling it by 1 keeps any later change visible in the score.
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)

    with _torch_settings(config.threads):
        torch.manual_seed(config.seed)
        hidden, bottleneck = default_widths(inputs.shape[1])
        autoencoder = AutoEncoder(inputs.shape[1], config.hidden or hidden, config.bottleneck or bottleneck)
        history = _fit(autoencoder, inputs, mean, std, split, config)
        scorer = ScoringModel(autoencoder, mean, std).eval()
        parity_inputs = inputs[split.calibration] if split.calibration.size else inputs[split.validation]
        reference = scorer.score(parity_inputs)
        # The score is the per-row loss, so these are the training objective on each split.
        train_loss = float(scorer.score(train_inputs).mean())
        early_stopping_loss = float(scorer.score(inputs[split.validation]).mean())

    onnx_model = build_onnx(autoencoder.dense_layers(), mean.astype(np.float32), std.astype(np.float32))
    model_bytes = serialize_onnx(onnx_model)
    session = onnx_session(model_bytes)
    parity = check_parity(session, reference, parity_inputs, atol=config.export_atol, rtol=config.export_rtol)

    calibration_scores = onnx_scores(session, inputs[split.calibration])
    threshold = _threshold(calibration_scores, config.threshold_quantile)
    # "val" is the calibration split: held out from both fitting and early stopping.
    metrics: dict[str, Any] = {
        "train_loss": train_loss,
        "val_loss": float(calibration_scores.astype(np.float64).mean()),
        "val_rows": int(split.calibration.size),
        "anomaly_rate_val": float(np.mean(calibration_scores >= threshold)),
        "train_rows": int(split.train.size),
        "early_stopping_rows": int(split.validation.size),
        "early_stopping_loss": early_stopping_loss,
        "epochs": history.epochs_run,
        "best_epoch": history.best_epoch,
        "export_max_abs_diff": parity.max_abs_diff,
        "export_checked_rows": parity.rows,
    }
    if anomalous.size:
        metrics.update(_detection_metrics(session, inputs[anomalous], calibration_scores, threshold))

    used_rows = np.concatenate([windows.rows[normal].ravel(), windows.rows[anomalous].ravel()])
    card = ModelCard(
        schema=CARD_SCHEMA,
        name=config.name,
        version=config.version,
        created=_now(),
        task="anomaly-detection",
        model_file=MODEL_FILE,
        model_sha256=_sha256_bytes(model_bytes),
        inputs=InputSpec(name=INPUT_NAME, dtype="float32"),
        outputs=OutputSpec(score=OUTPUT_NAME),
        feature_columns=list(dataset.roles.features),
        window=config.window,
        device_column=dataset.roles.device,
        timestamp_column=dataset.roles.timestamp,
        threshold=threshold,
        threshold_quantile=config.threshold_quantile,
        score_baseline=_score_baseline(calibration_scores),
        feature_baseline=_feature_baseline(dataset, np.unique(windows.rows[normal])),
        training_data=_training_data(dataset, used_rows),
        metrics=metrics,
        framework={
            "trainer": "edgeloop.ml",
            "trainer_version": __version__,
            "torch": torch.__version__,
            "onnx_opset": OPSET,
        },
        lineage={"job_id": os.environ.get("EDGELOOP_JOB_ID"), "parent_version": None, "registered_by": None},
        training={
            "seed": config.seed,
            "label_column": dataset.roles.label,
            "architecture": {
                "type": "dense-autoencoder",
                "inputs": int(inputs.shape[1]),
                "hidden": list(config.hidden or hidden),
                "bottleneck": config.bottleneck or bottleneck,
            },
            "normalisation": "inside the graph: (features - mean) / std, from the training split",
            "score": "mean squared reconstruction error over the normalised input",
        },
    )
    # Nothing is written until the export check has passed.
    config.out.mkdir(parents=True, exist_ok=True)
    write_model_file(model_bytes, config.out / MODEL_FILE)
    write_card(card, config.out)
    log.info(
        "wrote %s: threshold %.6g, val loss %.4g, %d epochs",
        config.out,
        threshold,
        metrics["val_loss"],
        history.epochs_run,
    )
    return TrainResult(model_dir=config.out, card=card, epochs_run=history.epochs_run)


def _partition_by_label(
    dataset: Dataset, windows: Windows
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Normal windows (no anomalous row in them) and anomalous ones (the scored, last row is anomalous).
    A window whose anomaly lies only in its history is neither: it would teach the model anomalies."""
    everything = np.arange(windows.rows.shape[0], dtype=np.int64)
    if dataset.labels is None:
        return everything, np.empty(0, dtype=np.int64)
    labels = dataset.labels[windows.rows]
    return everything[~labels.any(axis=1)], everything[labels[:, -1]]


def _split(normal: npt.NDArray[np.int64], config: TrainConfig, rng: np.random.Generator) -> _Split:
    shuffled = rng.permutation(normal)
    n_validation = max(1, round(normal.size * config.validation_fraction))
    n_calibration = max(1, round(normal.size * config.calibration_fraction))
    return _Split(
        train=np.sort(shuffled[n_validation + n_calibration :]),
        validation=np.sort(shuffled[:n_validation]),
        calibration=np.sort(shuffled[n_validation : n_validation + n_calibration]),
    )


@dataclass(frozen=True)
class _History:
    epochs_run: int
    best_epoch: int


def _fit(
    autoencoder: AutoEncoder,
    inputs: npt.NDArray[np.float64],
    mean: npt.NDArray[np.float64],
    std: npt.NDArray[np.float64],
    split: _Split,
    config: TrainConfig,
) -> _History:
    normalised = torch.as_tensor(((inputs - mean) / std).astype(np.float32))
    train_x = normalised[torch.as_tensor(split.train)]
    validation_x = normalised[torch.as_tensor(split.validation)]
    optimiser = torch.optim.Adam(
        autoencoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    best_loss = math.inf
    best_epoch = 0
    best_state = {k: v.detach().clone() for k, v in autoencoder.state_dict().items()}
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        autoencoder.train()
        order = torch.randperm(train_x.shape[0], generator=generator)
        for start in range(0, train_x.shape[0], config.batch_size):
            batch = train_x[order[start : start + config.batch_size]]
            optimiser.zero_grad(set_to_none=True)
            loss = torch.mean((autoencoder(batch) - batch) ** 2)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        autoencoder.eval()
        with torch.no_grad():
            validation_loss = float(torch.mean((autoencoder(validation_x) - validation_x) ** 2))
        if not math.isfinite(validation_loss):
            raise RuntimeError(f"training diverged at epoch {epoch} (validation loss {validation_loss})")
        if validation_loss < best_loss * (1.0 - config.min_improvement):
            best_loss, best_epoch = validation_loss, epoch
            best_state = {k: v.detach().clone() for k, v in autoencoder.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    autoencoder.load_state_dict(best_state)
    autoencoder.eval()
    return _History(epochs_run=epoch, best_epoch=best_epoch)


@contextlib.contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Fixed threads and deterministic kernels for the duration of training, restored afterwards (torch's
    settings are process-wide, and a caller may be a test or a notebook)."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def _threshold(scores: npt.NDArray[np.float32], quantile: float) -> float:
    # "higher" picks an actual score, so `score >= threshold` is exact in float32 on the inferencer side.
    return float(np.quantile(scores.astype(np.float64), quantile, method="higher"))


def _detection_metrics(
    session: Any,
    anomalous_inputs: npt.NDArray[np.float64],
    normal_scores: npt.NDArray[np.float32],
    threshold: float,
) -> dict[str, Any]:
    anomaly_scores = onnx_scores(session, anomalous_inputs)
    true_positives = int(np.sum(anomaly_scores >= threshold))
    false_positives = int(np.sum(normal_scores >= threshold))
    recall = true_positives / anomaly_scores.size
    precision = (
        true_positives / (true_positives + false_positives) if true_positives + false_positives else 0.0
    )
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "labelled_anomalies": int(anomaly_scores.size),
        "detection": {
            "recall": recall,
            "precision": precision,
            "f1": f1,
            "true_positives": true_positives,
            "false_positives": false_positives,
            "negatives": int(normal_scores.size),
        },
    }


def histogram(values: npt.NDArray[np.floating], bins: int = HISTOGRAM_BINS) -> Histogram:
    """Quantile edges (about equal mass per bin, the most sensitive choice for PSI), made strictly
    increasing where values repeat."""
    data = np.asarray(values, dtype=np.float64)
    edges = np.quantile(data, np.linspace(0.0, 1.0, bins + 1))
    for i in range(1, edges.size):
        if edges[i] <= edges[i - 1]:
            edges[i] = np.nextafter(edges[i - 1], np.inf)
    counts, _ = np.histogram(np.clip(data, edges[0], edges[-1]), bins=edges)
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def _score_baseline(scores: npt.NDArray[np.float32]) -> ScoreBaseline:
    data = scores.astype(np.float64)
    return ScoreBaseline(
        count=int(data.size),
        mean=float(data.mean()),
        std=float(data.std()),
        quantiles={str(q): float(np.quantile(data, q)) for q in BASELINE_QUANTILES},
        histogram=histogram(data),
    )


def _feature_baseline(dataset: Dataset, rows: npt.NDArray[np.int64]) -> dict[str, FeatureBaseline]:
    baseline: dict[str, FeatureBaseline] = {}
    for index, name in enumerate(dataset.roles.features):
        column = dataset.values[rows, index]
        baseline[name] = FeatureBaseline(
            mean=float(column.mean()), std=float(column.std()), histogram=histogram(column)
        )
    return baseline


def _training_data(dataset: Dataset, rows: npt.NDArray[np.int64]) -> dict[str, Any]:
    unique_rows = np.unique(rows)
    time_range: dict[str, str | None] = {"min": None, "max": None}
    if dataset.timestamps_us is not None and unique_rows.size:
        micros = dataset.timestamps_us[unique_rows]
        micros = micros[micros != MISSING_TIME]
        if micros.size:
            time_range = {"min": _iso(int(micros.min())), "max": _iso(int(micros.max()))}
    return {
        "sha256": content_sha256(dataset, unique_rows),
        "rows": int(unique_rows.size),
        "files": dataset.files,
        "time_range": time_range,
        "rows_loaded": dataset.rows,
    }


def _iso(micros: int) -> str:
    moment = _EPOCH + timedelta(microseconds=micros)
    text = moment.isoformat(timespec="microseconds" if micros % 1_000_000 else "seconds")
    return text.replace("+00:00", "Z")


def _now() -> str:
    # SOURCE_DATE_EPOCH (the reproducible-builds convention) pins the card's date for byte-identical output.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), tz=UTC) if epoch else datetime.now(UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
