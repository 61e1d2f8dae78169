"""The default anomaly model: a dense autoencoder whose score is the reconstruction error."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


@dataclass(frozen=True)
class DenseLayer:
    """One affine layer as numbers: y = x @ weight.T + bias, then ReLU if `relu`."""

    weight: npt.NDArray[np.float32]  # [out, in]
    bias: npt.NDArray[np.float32]  # [out]
    relu: bool


def default_widths(n_inputs: int) -> tuple[tuple[int, ...], int]:
    """Hidden widths and bottleneck for `n_inputs` features: wide enough to learn the normal manifold,
    a bottleneck narrower than the input so the identity cannot be learned (16 inputs: 16-64-8-64-16)."""
    hidden = min(256, max(16, 4 * n_inputs))
    bottleneck = max(1, min(32, n_inputs // 2))
    return (hidden,), bottleneck


class AutoEncoder(nn.Module):
    """Dense encoder/decoder, mirror-symmetric. ReLU after every hidden layer; the bottleneck and the output
    stay linear (a ReLU bottleneck can lose units for good, and the output lives in normalised space)."""

    def __init__(self, n_inputs: int, hidden: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        if n_inputs < 1 or bottleneck < 1 or any(width < 1 for width in hidden):
            raise ValueError("layer widths must be positive")
        widths = [n_inputs, *hidden, bottleneck, *reversed(hidden), n_inputs]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        bottleneck_index = len(hidden)
        last_index = len(widths) - 2
        self.relu_after = tuple(i not in (bottleneck_index, last_index) for i in range(len(self.linears)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, relu in zip(self.linears, self.relu_after, strict=True):
            x = linear(x)
            if relu:
                x = torch.relu(x)
        return x

    def dense_layers(self) -> list[DenseLayer]:
        layers: list[DenseLayer] = []
        for linear, relu in zip(self.linears, self.relu_after, strict=True):
            assert isinstance(linear, nn.Linear)
            layers.append(
                DenseLayer(
                    weight=linear.weight.detach().cpu().numpy().astype(np.float32),
                    bias=linear.bias.detach().cpu().numpy().astype(np.float32),
                    relu=relu,
                )
            )
        return layers


class ScoringModel(nn.Module):
    """Raw features in, anomaly score out: normalise, reconstruct, mean squared error per row. This is the
    computation the ONNX graph reproduces, and the reference its export is checked against."""

    def __init__(self, autoencoder: AutoEncoder, mean: npt.ArrayLike, std: npt.ArrayLike) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        normalised = (features - self.mean) / self.std
        error: torch.Tensor = self.autoencoder(normalised) - normalised
        return (error * error).mean(dim=1)

    def score(self, features: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        with torch.no_grad():
            result = self(torch.as_tensor(np.asarray(features, dtype=np.float32)))
        return np.asarray(result.numpy(), dtype=np.float32)
