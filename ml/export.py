"""ONNX export of the scoring model: normalisation, autoencoder and score all inside one graph.

The graph is written with `onnx.helper` from the trained weights rather than traced by `torch.onnx.export`:
torch 2.13's default exporter needs onnxscript and writes version-dependent metadata, and the TorchScript
exporter is deprecated. The network is a handful of standard ops, so writing them out keeps the file
byte-for-byte reproducible and readable by older ONNX Runtime builds on edge devices (IR 8, opset 17). The
export is then checked against PyTorch's own output (`check_parity`), so the two cannot silently diverge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
from onnx import TensorProto, helper, numpy_helper

from ml import __version__
from ml.errors import ExportMismatchError
from ml.model import DenseLayer

OPSET = 17
IR_VERSION = 8  # the lowest IR that carries opset 17
INPUT_NAME = "features"
OUTPUT_NAME = "score"
BATCH_AXIS = "batch"


def build_onnx(
    layers: list[DenseLayer],
    mean: npt.NDArray[np.float32],
    std: npt.NDArray[np.float32],
    *,
    graph_name: str = "edgeloop_autoencoder",
) -> onnx.ModelProto:
    n_features = int(mean.shape[0])
    initializers = [
        numpy_helper.from_array(np.asarray(mean, dtype=np.float32), "norm_mean"),
        numpy_helper.from_array(np.asarray(std, dtype=np.float32), "norm_std"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "norm_mean"], ["centred"], name="centre"),
        helper.make_node("Div", ["centred", "norm_std"], ["normalised"], name="scale"),
    ]
    current = "normalised"
    for index, layer in enumerate(layers):
        weight, bias = f"dense{index}_weight", f"dense{index}_bias"
        initializers += [
            numpy_helper.from_array(layer.weight, weight),
            numpy_helper.from_array(layer.bias, bias),
        ]
        affine = f"dense{index}_out"
        nodes.append(
            helper.make_node("Gemm", [current, weight, bias], [affine], name=f"dense{index}", transB=1)
        )
        current = affine
        if layer.relu:
            activated = f"dense{index}_relu"
            nodes.append(helper.make_node("Relu", [current], [activated], name=f"relu{index}"))
            current = activated
    nodes += [
        helper.make_node("Sub", [current, "normalised"], ["error"], name="error"),
        helper.make_node("Mul", ["error", "error"], ["squared_error"], name="square"),
        helper.make_node(
            "ReduceMean", ["squared_error"], [OUTPUT_NAME], name="mean_squared_error", axes=[1], keepdims=0
        ),
    ]
    graph = helper.make_graph(
        nodes,
        graph_name,
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_AXIS, n_features])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_AXIS])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgeloop.ml",
        producer_version=__version__,
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def serialize_onnx(model: onnx.ModelProto) -> bytes:
    """The model file's bytes; deterministic serialisation keeps equal models byte-identical."""
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def write_model_file(data: bytes, path: Path) -> None:
    """Write via a temporary name and rename, so a reader never sees half a model."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def onnx_session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_scores(session: ort.InferenceSession, features: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    result = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(features, dtype=np.float32)})
    return np.asarray(result[0], dtype=np.float32)


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    rows: int


def check_parity(
    session: ort.InferenceSession,
    reference_scores: npt.NDArray[np.float32],
    features: npt.NDArray[np.floating],
    *,
    atol: float,
    rtol: float,
) -> Parity:
    """Raise ExportMismatchError unless ONNX scores match the reference: |onnx - ref| <= atol + rtol*|ref|."""
    scores = onnx_scores(session, features)
    if scores.shape != reference_scores.shape:
        raise ExportMismatchError(f"ONNX score shape {scores.shape} != PyTorch {reference_scores.shape}")
    diff = np.abs(scores.astype(np.float64) - reference_scores.astype(np.float64))
    allowed = atol + rtol * np.abs(reference_scores.astype(np.float64))
    max_abs_diff = float(diff.max()) if diff.size else 0.0
    if not np.all(np.isfinite(scores)) or np.any(diff > allowed):
        raise ExportMismatchError(
            f"ONNX export differs from PyTorch: max |diff| {max_abs_diff:.3g} over {diff.size} rows "
            f"(atol {atol:g}, rtol {rtol:g})"
        )
    return Parity(max_abs_diff=max_abs_diff, rows=int(diff.size))
