"""Pure parts: the card, provider choice, frames, windows, scoring, summaries and anomaly picking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferencer import (
    CardError,
    FrameError,
    FrameToScore,
    RuntimeOptions,
    Scorer,
    WindowState,
    choose_providers,
    json_rows_frame,
    layout_of,
    load_model,
    parse_card,
    read_card,
    read_parquet_frame,
)
from inferencer.outputs import iso_micros, pick_anomalies, severity, summarize
from inferencer.providers import CPU, CUDA, TENSORRT, binding_device, canonical_provider
from inferencer.scoring import ScoredFrame
from tests.unit.inferencer.kit import COLUMNS, reference_scores, series, write_model

CPU_ONLY = RuntimeOptions(providers=(CPU,))


def card_dict(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "m",
        "version": "1",
        "model_file": "model.onnx",
        "model_sha256": "a" * 64,
        "inputs": {"name": "features"},
        "outputs": {"score": "score"},
        "feature_columns": ["a", "b"],
        "window": 1,
        "threshold": 0.5,
    }
    base.update(changes)
    return base


def test_card_keeps_unknown_keys_and_defaults() -> None:
    card = parse_card(card_dict(score_baseline={"count": 3}, model_sha256="A" * 64))
    assert card.model_extra == {"score_baseline": {"count": 3}}
    assert card.model_sha256 == "a" * 64
    assert (card.device_column, card.timestamp_column, card.inputs.dtype) == (
        "device_id",
        "timestamp",
        "float32",
    )
    assert parse_card(card_dict(window=3)).feature_count == 6


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"model_file": "../model.onnx"}, "model_file"),
        ({"window": 0}, "window"),
        ({"threshold": float("nan")}, "threshold"),
        ({"feature_columns": []}, "feature_columns"),
        ({"feature_columns": ["a", "a"]}, "duplicates"),
        ({"feature_columns": ["a", "device_id"]}, "device"),
        ({"outputs": {}}, "outputs.score"),
        ({"model_sha256": "xyz"}, "model_sha256"),
    ],
)
def test_card_refuses_what_cannot_be_served(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(CardError, match=fragment):
        parse_card(card_dict(**changes))


def test_card_missing_required_key_and_not_json(tmp_path: Path) -> None:
    incomplete = card_dict()
    del incomplete["threshold"]
    with pytest.raises(CardError, match="threshold"):
        parse_card(incomplete)
    with pytest.raises(CardError, match="not JSON"):
        parse_card(b"{nope")
    with pytest.raises(CardError, match="cannot read"):
        read_card(tmp_path)


def test_provider_choice_prefers_in_order_and_always_ends_on_cpu() -> None:
    gpu_build = [TENSORRT, CUDA, CPU]
    assert choose_providers(["tensorrt", "cuda", "cpu"], gpu_build).chosen == (TENSORRT, CUDA, CPU)
    choice = choose_providers(["cuda"], [CPU, "AzureExecutionProvider"])
    assert choice.chosen == (CPU,)
    assert choice.unavailable == (CUDA,)
    assert choice.fell_back
    assert "CUDAExecutionProvider not available" in choice.describe()
    assert choose_providers([CUDA, CUDA], gpu_build).chosen == (CUDA, CPU)
    assert not choose_providers(["cpu"], gpu_build).fell_back
    with pytest.raises(ValueError, match="unknown execution provider"):
        canonical_provider("quantum")
    assert binding_device([CUDA, CPU]) == "cuda"
    assert binding_device([TENSORRT, CUDA, CPU]) == "cuda"
    assert binding_device([CPU]) == "cpu"


def test_parquet_frame_reads_named_columns_and_marks_nulls(tmp_path: Path) -> None:
    table = series(6)
    temperature = table.column("temperature").to_pylist()
    temperature[2] = None
    table = table.set_column(
        table.schema.get_field_index("temperature"), "temperature", pa.array(temperature)
    )
    path = tmp_path / "b.parquet"
    pq.write_table(table, path)
    card = parse_card(card_dict(feature_columns=list(COLUMNS)))
    frame, keys = read_parquet_frame(path, card)
    assert frame.rows == 6
    assert frame.valid.tolist() == [True, True, False, True, True, True]
    assert frame.features.dtype == np.float32  # the card's input dtype
    assert frame.features[0].tolist() == pytest.approx(
        [table.column(c)[0].as_py() for c in COLUMNS], rel=1e-6
    )
    assert keys.column_names == ["timestamp", "device"]
    assert keys.column("device")[4].as_py() == "dev-1"
    windowed, _ = read_parquet_frame(path, parse_card(card_dict(feature_columns=list(COLUMNS), window=2)))
    assert windowed.device_of(4) == "dev-1"
    assert iso_micros(int(windowed.timestamps[1])) == "2026-03-01T00:00:01Z"
    assert windowed.valid.tolist() == frame.valid.tolist()


def test_parquet_frame_errors_name_the_column(tmp_path: Path) -> None:
    path = tmp_path / "b.parquet"
    pq.write_table(series(3).drop_columns(["pressure"]), path)
    card = parse_card(card_dict(feature_columns=list(COLUMNS)))
    with pytest.raises(FrameError, match="pressure"):
        read_parquet_frame(path, card)
    with pytest.raises(FrameError, match="'label' is string"):
        read_parquet_frame(path, parse_card(card_dict(feature_columns=["temperature", "label"])))
    with pytest.raises(FrameError, match="does not exist"):
        read_parquet_frame(tmp_path / "gone.parquet", card)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(FrameError, match="not readable"):
        read_parquet_frame(tmp_path / "junk.parquet", card)


def test_json_rows_frame_validation() -> None:
    card = parse_card(card_dict(window=2))
    good = [{"a": 1, "b": 2.5, "device_id": "d", "timestamp": "2026-01-01T00:00:00Z"}]
    frame = json_rows_frame(good, card)
    assert frame.features.tolist() == [[1.0, 2.5]]
    assert frame.timestamps.tolist() == [1_767_225_600_000_000]
    with pytest.raises(FrameError, match=r"row 0: missing column 'b'"):
        json_rows_frame([{"a": 1, "device_id": "d", "timestamp": 0}], card)
    with pytest.raises(FrameError, match=r"row 1: column 'a' is not a number \(str\)"):
        json_rows_frame([good[0], {**good[0], "a": "hot"}], card)
    with pytest.raises(FrameError, match="not a number"):
        json_rows_frame([{**good[0], "a": True}], card)
    with pytest.raises(FrameError, match="device_id"):
        json_rows_frame([{"a": 1, "b": 2, "timestamp": 0}], card)
    with pytest.raises(FrameError, match="ISO 8601"):
        json_rows_frame([{**good[0], "timestamp": "yesterday"}], card)
    with pytest.raises(FrameError, match="row 0: column 'b' is not a finite number"):
        json_rows_frame([{**good[0], "b": 10**400}], card)
    with pytest.raises(FrameError, match="row 0: column 'a' is not a finite number"):
        json_rows_frame([{**good[0], "a": float("nan")}], card)
    with pytest.raises(FrameError, match="row 0 is not an object"):
        json_rows_frame([[1, 2]], card)
    unwindowed = parse_card(card_dict())
    assert json_rows_frame([{"a": 1, "b": 2}], unwindowed).valid.tolist() == [True]


def windowed_reference(table: pa.Table, window: int, weights: np.ndarray) -> dict[tuple[str, int], float]:
    """Scores computed the slow, obvious way over the whole series: device -> rows by time -> windows."""
    expected: dict[tuple[str, int], float] = {}
    devices = [str(d) for d in table.column("device_id").to_pylist()]
    stamps = [int(t or 0) for t in table.column("timestamp").cast(pa.int64()).to_pylist()]
    features = np.column_stack([table.column(c).to_numpy() for c in COLUMNS])
    for device in sorted(set(devices)):
        rows = sorted((stamps[i], i) for i in range(len(devices)) if devices[i] == device)
        for end in range(window - 1, len(rows)):
            block = np.concatenate([features[rows[j][1]] for j in range(end - window + 1, end + 1)])
            expected[(device, rows[end][0])] = float(reference_scores(block[None, :], weights)[0])
    return expected


def test_windowed_scores_across_three_batches_equal_the_whole_series(tmp_path: Path) -> None:
    window = 4
    weights = np.linspace(0.5, 2.0, window * len(COLUMNS))
    model = load_model(
        write_model(tmp_path / "m", window=window, weights=weights),
        read_card(tmp_path / "m"),
        CPU_ONLY,
    )
    table = series(90, devices=4, seed=3)
    # Shuffle rows inside the file: the window must follow timestamps, not file order.
    table = table.take(np.random.default_rng(1).permutation(90))
    expected = windowed_reference(table, window, weights)
    scorer = Scorer()
    got: dict[tuple[str, int], float] = {}
    by_time = table.sort_by("timestamp")
    state = WindowState()
    state.adopt(layout_of(model.card))
    waiting = 0
    for number, (start, stop) in enumerate([(0, 2), (2, 41), (41, 90)]):
        path = tmp_path / f"part{number}.parquet"
        pq.write_table(by_time.slice(start, stop - start), path)
        frame, _ = read_parquet_frame(path, model.card)
        staged = state.stage()
        (result,) = scorer.score([FrameToScore(frame, "sensors")], model, staged)
        staged.commit()
        waiting += result.waiting
        for row, score in zip(result.rows.tolist(), result.scores.tolist(), strict=True):
            got[(frame.device_of(row) or "", int(frame.timestamps[row]))] = score
    assert waiting == 4 * (window - 1)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5)


def test_window_history_is_per_dataset_and_survives_save_and_load(tmp_path: Path) -> None:
    card = parse_card(card_dict(window=3))
    state = WindowState()
    state.adopt(layout_of(card))
    frame = json_rows_frame([{"a": i, "b": -i, "device_id": "d", "timestamp": i} for i in range(5)], card)
    from inferencer.windows import assemble

    staged = state.stage()
    first = assemble(frame, 3, "one", staged)
    assert first.rows.tolist() == [2, 3, 4]
    assert first.features[0].tolist() == [0, 0, 1, -1, 2, -2]
    assert state.get(("one", "d")) is None  # not committed yet
    staged.commit()
    state.save(tmp_path / "w.npz", ["b1"])
    loaded, applied = WindowState.load(tmp_path / "w.npz")
    assert applied == ["b1"]
    assert loaded.layout == layout_of(card)
    tail = loaded.get(("one", "d"))
    assert tail is not None
    assert tail.tolist() == [[3, -3], [4, -4]]
    nxt = json_rows_frame([{"a": 9, "b": -9, "device_id": "d", "timestamp": 9}], card)
    assert assemble(nxt, 3, "one", loaded.stage()).features.tolist() == [[3, -3, 4, -4, 9, -9]]
    assert assemble(nxt, 3, "other", loaded.stage()).rows.tolist() == []
    assert loaded.adopt(layout_of(parse_card(card_dict(window=2)))) is True
    assert len(loaded) == 0


def test_scorer_combines_frames_in_one_run(tmp_path: Path) -> None:
    model = load_model(write_model(tmp_path / "m", bias=0.5), read_card(tmp_path / "m"), CPU_ONLY)
    frames = []
    for seed in range(3):
        path = tmp_path / f"{seed}.parquet"
        pq.write_table(series(10 + seed, seed=seed), path)
        frames.append(FrameToScore(read_parquet_frame(path, model.card)[0], "s"))
    before = model.runs
    results = Scorer().score(frames, model, None)
    assert model.runs == before + 1
    for item, result in zip(frames, results, strict=True):
        assert result.scores == pytest.approx(reference_scores(item.frame.features, bias=0.5), rel=1e-5)
    chunked = Scorer().score(frames, model, None, chunk_rows=7)
    assert model.runs == before + 1 + 5  # 33 rows in chunks of 7
    assert np.concatenate([r.scores for r in chunked]) == pytest.approx(
        np.concatenate([r.scores for r in results])
    )


def test_summary_anomaly_picking_and_severity() -> None:
    scores = np.array([0.1, 5.0, 0.2, 3.0, 9.0, 1.0])
    scored = ScoredFrame(rows=np.arange(10, 16), scores=scores, anomalous=scores >= 1.0, waiting=0, invalid=0)
    summary = summarize(scores)
    assert summary["min"] == 0.1
    assert summary["max"] == 9.0
    assert summary["mean"] == pytest.approx(scores.mean())
    assert summary["p50"] == pytest.approx(np.quantile(scores, 0.5))
    assert summary["p99"] == pytest.approx(np.quantile(scores, 0.99))
    assert summarize(np.empty(0))["p95"] is None
    chosen, suppressed = pick_anomalies(scored, 2)
    assert [(a.row, a.score) for a in chosen] == [(11, 5.0), (14, 9.0)]
    assert suppressed == 2
    everything, none_held = pick_anomalies(scored, 100)
    assert [a.row for a in everything] == [11, 13, 14, 15]
    assert none_held == 0
    assert severity(2.0, 1.0) == "high"
    assert severity(1.99, 1.0) == "medium"


def test_card_file_written_by_kit_is_readable(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", window=2)
    card = read_card(folder)
    assert card.feature_count == 8
    assert json.loads((folder / "model.json").read_text())["future_key"] == {"kept": True}
