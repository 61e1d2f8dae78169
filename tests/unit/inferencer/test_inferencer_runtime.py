"""Loading models with ONNX Runtime: what is refused, provider fallback, and the I/O-binding path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferencer import ModelLoadError, RuntimeOptions, available_providers, load_model, read_card
from inferencer.providers import CPU, CUDA, DEFAULT_PROVIDERS
from tests.unit.inferencer.kit import COLUMNS, model_bytes, reference_scores, write_model


def load(folder: Path, **options: object) -> object:
    settings = {"providers": (CPU,), **options}
    return load_model(folder, read_card(folder), RuntimeOptions(**settings))  # type: ignore[arg-type]


def test_a_good_model_loads_warms_up_and_scores(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", bias=1.5)
    model = load_model(folder, read_card(folder), RuntimeOptions(providers=(CPU,)))
    assert model.runs == 1  # the warm-up
    x = np.random.default_rng(0).normal(size=(5, len(COLUMNS)))
    assert model.run(x) == pytest.approx(reference_scores(x, bias=1.5), rel=1e-6)
    assert model.active_providers == (CPU,)
    assert not model.use_binding


def test_asking_for_cuda_where_absent_falls_back_to_cpu_and_says_so(tmp_path: Path) -> None:
    if CUDA in available_providers():
        pytest.skip("this ONNX Runtime build has CUDA: the fallback cannot be observed here")
    folder = write_model(tmp_path / "m")
    model = load_model(folder, read_card(folder), RuntimeOptions(providers=DEFAULT_PROVIDERS))
    assert model.active_providers == (CPU,)
    assert CUDA in model.choice.unavailable
    assert model.choice.fell_back
    assert model.binding_device == "cpu"
    assert not model.use_binding  # auto binds only under a GPU provider


def test_io_binding_path_gives_the_same_scores(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", weights=[1, 2, 3, 4], bias=0.25)
    bound = load_model(folder, read_card(folder), RuntimeOptions(providers=(CPU,), io_binding="always"))
    plain = load_model(folder, read_card(folder), RuntimeOptions(providers=(CPU,), io_binding="never"))
    assert bound.use_binding
    assert not plain.use_binding
    x = np.random.default_rng(1).normal(size=(1000, 4))
    assert bound.run(x, chunk_rows=300) == pytest.approx(plain.run(x), rel=1e-6)
    assert bound.run(x) == pytest.approx(reference_scores(x, [1, 2, 3, 4], 0.25), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "card", "fragment"),
    [
        (
            {"input_name": "x"},
            {"inputs": {"name": "features"}},
            "input 'features' of the card is not in the graph",
        ),
        (
            {"output_name": "y"},
            {"outputs": {"score": "score"}},
            "output 'score' of the card is not in the graph",
        ),
        ({"onnx_bytes": model_bytes(5, declared_width=5)}, {}, r"takes 5 features; the card's 4 columns"),
        ({}, {"inputs": {"name": "features", "dtype": "float64"}}, "the card says float64"),
    ],
)
def test_mismatched_models_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], card: dict[str, Any], fragment: str
) -> None:
    folder = write_model(tmp_path / "m", card=card, **kwargs)
    with pytest.raises(ModelLoadError, match=fragment):
        load(folder)


def test_feature_count_mismatch_found_by_the_warm_up(tmp_path: Path) -> None:
    # A symbolic input width passes the shape check; the warm-up run is what finds the mismatch.
    data = model_bytes(6)  # weights for 6 features, card says 4 columns
    folder = write_model(tmp_path / "m", onnx_bytes=data)
    with pytest.raises(ModelLoadError, match="warm-up"):
        load(folder)


def test_corrupt_model_file_is_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", onnx_bytes=b"\x08\x07garbage-not-onnx")
    with pytest.raises(ModelLoadError, match=r"cannot load model\.onnx"):
        load(folder)


def test_extra_graph_inputs_are_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["features", "other"], ["sum"]),
            helper.make_node("ReduceMean", ["sum"], ["score"], axes=[1], keepdims=0),
        ],
        "two",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = write_model(tmp_path / "m", onnx_bytes=model.SerializeToString())
    with pytest.raises(ModelLoadError, match="inputs the card does not describe"):
        load(folder)


def test_output_that_is_not_one_score_per_row_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["score"])],
        "identity",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = write_model(tmp_path / "m", onnx_bytes=model.SerializeToString())
    with pytest.raises(ModelLoadError, match="shape"):
        load(folder)
    card = json.loads((folder / "model.json").read_text())
    assert card["feature_columns"] == list(COLUMNS)
