"""ONNX Runtime behind a small typed surface: load, check against the card, warm up, run.

Everything that can be wrong with a model is found here, before it serves: an input or output name
the graph does not have, a feature count the input shape contradicts, a graph that needs inputs the
card does not name, an output that is not one score per row. Scoring then only feeds arrays.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .card import ModelCard
from .providers import CPU, GPU_PROVIDERS, ProviderChoice, binding_device, choose_providers

# onnxruntime ships no type information; its session API is wrapped here so the rest stays typed.
ort: Any = importlib.import_module("onnxruntime")

Array = npt.NDArray[Any]
Scores = npt.NDArray[np.floating[Any]]
IoBinding = Literal["auto", "always", "never"]
_ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)"}
_NP_TYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float64": np.float64}


class ModelLoadError(ValueError):
    """The model cannot be served; the message says why (it is reported in the twin)."""


@dataclass(frozen=True)
class RuntimeOptions:
    providers: tuple[str, ...]
    device_id: int = 0
    io_binding: IoBinding = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


class LoadedModel:
    """One loaded, checked and warmed-up model version. Immutable once built, so a swap is a single
    reference assignment and a batch holding the old one finishes on it."""

    def __init__(
        self,
        *,
        card: ModelCard,
        directory: Path,
        session: Any,
        choice: ProviderChoice,
        use_binding: bool,
        device_id: int,
    ) -> None:
        self.card = card
        self.directory = directory
        self.choice = choice
        self.active_providers: tuple[str, ...] = tuple(session.get_providers())
        self.use_binding = use_binding
        self.binding_device = binding_device(self.active_providers)
        self._session = session
        self._device_id = device_id
        self._dtype = _NP_TYPES[card.inputs.dtype]
        self._input = card.inputs.name
        self._output = card.outputs.score
        self._width = card.feature_count
        self._runs = 0

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def runs(self) -> int:
        """Session runs so far (tests use it to see that micro-batches were combined)."""
        return self._runs

    def run(self, features: Array, chunk_rows: int = 65_536) -> Scores:
        """Scores for `features` ([rows, feature_count]) in the model's output dtype, in chunks of at most
        `chunk_rows` rows. Checks here are kept to a few comparisons: they run on every micro-batch."""
        if features.ndim != 2 or features.shape[1] != self._width:
            raise ValueError(f"features of shape {features.shape}, the model takes [*, {self._width}]")
        rows = features.shape[0]
        if rows == 0:
            return np.empty(0, dtype=self._dtype)
        if features.dtype != self._dtype or not features.flags.c_contiguous:
            features = np.ascontiguousarray(features, dtype=self._dtype)
        if rows <= chunk_rows:
            return self._run_chunk(features)
        parts = [
            self._run_chunk(features[start : start + chunk_rows]) for start in range(0, rows, chunk_rows)
        ]
        return np.concatenate(parts)

    def warm_up(self) -> None:
        """One dummy batch: the first run allocates and (on GPUs) builds kernels or engines, which should
        not land on the first real batch; it is also the last check that the graph gives one float score
        per row."""
        probe = np.zeros((2, self._width), dtype=self._dtype)
        try:
            scores = self._run_chunk(probe)
        except ModelLoadError:
            raise
        except Exception as error:
            raise ModelLoadError(f"the warm-up run failed: {_first_line(error)}") from error
        if scores.dtype.kind != "f":
            raise ModelLoadError(f"output {self._output!r} is {scores.dtype}, not a float score")

    def _run_chunk(self, data: Array) -> Scores:
        if self.use_binding:
            raw = self._run_bound(data)
        else:
            raw = self._session.run([self._output], {self._input: data})[0]
        # Not locked: a lost count under concurrent requests is harmless, a lock on every run is not free.
        self._runs += 1
        out: Scores = raw if isinstance(raw, np.ndarray) else np.asarray(raw)
        if out.shape != (data.shape[0],):
            out = self._one_per_row(out, data.shape[0])
        return out

    def _one_per_row(self, out: Scores, rows: int) -> Scores:
        if out.ndim == 2 and out.shape == (rows, 1):
            return out[:, 0]
        raise ModelLoadError(f"output {self._output!r} has shape {out.shape} for {rows} rows, not [{rows}]")

    def _run_bound(self, data: Array) -> Array:
        # Inputs are copied to the device once and the output is allocated there, instead of ONNX
        # Runtime staging both through pageable host memory on every run.
        binding = self._session.io_binding()
        binding.bind_cpu_input(self._input, data)
        binding.bind_output(self._output, self.binding_device, self._device_id)
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])


def load_model(directory: Path, card: ModelCard, options: RuntimeOptions) -> LoadedModel:
    """Create the session with the chosen providers, check it against the card, and warm it up."""
    choice = choose_providers(options.providers, available_providers())
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.log_severity_level = 3
    providers: list[Any] = [
        (name, {"device_id": options.device_id}) if name in GPU_PROVIDERS else name for name in choice.chosen
    ]
    try:
        session = ort.InferenceSession(
            str(directory / card.model_file), sess_options=session_options, providers=providers
        )
    except Exception as error:
        raise ModelLoadError(f"ONNX Runtime cannot load {card.model_file}: {_first_line(error)}") from error
    _check_signature(session, card)
    active = tuple(session.get_providers())
    use_binding = options.io_binding == "always" or (
        options.io_binding == "auto" and bool(active) and active[0] in GPU_PROVIDERS
    )
    model = LoadedModel(
        card=card,
        directory=directory,
        session=session,
        choice=choice,
        use_binding=use_binding,
        device_id=options.device_id,
    )
    model.warm_up()
    return model


def _check_signature(session: Any, card: ModelCard) -> None:
    inputs = {node.name: node for node in session.get_inputs()}
    outputs = [node.name for node in session.get_outputs()]
    wanted = card.inputs.name
    if wanted not in inputs:
        raise ModelLoadError(f"input {wanted!r} of the card is not in the graph (inputs: {sorted(inputs)})")
    others = sorted(set(inputs) - {wanted})
    if others:
        raise ModelLoadError(f"the graph needs inputs the card does not describe: {others}")
    if card.outputs.score not in outputs:
        raise ModelLoadError(
            f"output {card.outputs.score!r} of the card is not in the graph (outputs: {outputs})"
        )
    node = inputs[wanted]
    expected_type = _ORT_TYPES[card.inputs.dtype]
    if node.type != expected_type:
        raise ModelLoadError(f"input {wanted!r} is {node.type}, the card says {card.inputs.dtype}")
    shape: Sequence[Any] = node.shape
    if len(shape) != 2:
        raise ModelLoadError(f"input {wanted!r} has {len(shape)} dimensions, not [batch, features]")
    width = shape[1]
    if isinstance(width, int) and width != card.feature_count:
        raise ModelLoadError(
            f"input {wanted!r} takes {width} features; the card's {len(card.feature_columns)} columns "
            f"x window {card.window} make {card.feature_count}"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:400] if text else type(error).__name__


__all__ = [
    "CPU",
    "LoadedModel",
    "ModelLoadError",
    "RuntimeOptions",
    "available_providers",
    "load_model",
]
