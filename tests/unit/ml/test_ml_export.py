from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from ml.errors import ExportMismatchError
from ml.export import build_onnx, check_parity, onnx_scores, onnx_session, serialize_onnx, write_model_file
from ml.model import AutoEncoder, DenseLayer, ScoringModel


def _scorer(n_inputs: int = 6, seed: int = 0) -> ScoringModel:
    torch.manual_seed(seed)
    autoencoder = AutoEncoder(n_inputs, (24,), 3).eval()
    rng = np.random.default_rng(seed)
    mean = rng.normal(50.0, 10.0, n_inputs)
    std = rng.uniform(0.5, 5.0, n_inputs)
    return ScoringModel(autoencoder, mean, std).eval()


def _raw_rows(count: int, n_inputs: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(50.0, 8.0, (count, n_inputs)).astype(np.float32)


def _export(scorer: ScoringModel) -> bytes:
    model = build_onnx(scorer.autoencoder.dense_layers(), scorer.mean.numpy(), scorer.std.numpy())
    data: bytes = model.SerializeToString(deterministic=True)
    return data


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_onnx_scores_match_pytorch_at_any_batch_size(batch: int) -> None:
    scorer = _scorer()
    session = onnx_session(_export(scorer))
    rows = _raw_rows(batch)
    reference = scorer.score(rows)
    got = onnx_scores(session, rows)
    assert got.shape == (batch,)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
    parity = check_parity(session, reference, rows, atol=1e-5, rtol=1e-4)
    assert parity.rows == batch


def test_normalisation_is_inside_the_graph() -> None:
    scorer = _scorer()
    session = onnx_session(_export(scorer))
    rows = _raw_rows(50)
    normalised = (rows - scorer.mean.numpy()) / scorer.std.numpy()
    inputs = torch.as_tensor(normalised)
    with torch.no_grad():
        expected = ((scorer.autoencoder(inputs) - inputs) ** 2).mean(1)
    # Raw sensor values in, the score of the normalised reconstruction out.
    np.testing.assert_allclose(onnx_scores(session, rows), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_graph_signature_follows_the_model_contract(tmp_path) -> None:
    data = serialize_onnx(onnx.load_from_string(_export(_scorer(n_inputs=8))))
    write_model_file(data, tmp_path / "model.onnx")
    model = onnx.load_from_string(data)
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == "features"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in in_dims] == ["batch", 8]
    assert graph_output.name == "score"
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["batch"]
    assert {o.domain: o.version for o in model.opset_import} == {"": 17}
    assert (tmp_path / "model.onnx").read_bytes() == data


def test_export_is_byte_identical_for_identical_weights() -> None:
    assert _export(_scorer(seed=3)) == _export(_scorer(seed=3))
    assert _export(_scorer(seed=3)) != _export(_scorer(seed=4))


def test_parity_check_catches_a_graph_that_differs() -> None:
    scorer = _scorer()
    layers = scorer.autoencoder.dense_layers()
    broken = [DenseLayer(layers[0].weight * 1.01, layers[0].bias, layers[0].relu), *layers[1:]]
    session = onnx_session(build_onnx(broken, scorer.mean.numpy(), scorer.std.numpy()).SerializeToString())
    rows = _raw_rows(200)
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        check_parity(session, scorer.score(rows), rows, atol=1e-5, rtol=1e-4)
