"""Execution-provider selection: pure logic, so it is tested where no GPU exists.

The preference list (TensorRT -> CUDA -> CPU by default) is filtered by what this ONNX Runtime build
offers; CPU always closes the list, so a model loads wherever the module runs, and what was skipped is
said (reported and logged) rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA, CPU)
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})

ALIASES = {
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "cuda": CUDA,
    "gpu": CUDA,
    "cpu": CPU,
}


def canonical_provider(name: str) -> str:
    """`cuda` -> `CUDAExecutionProvider`; full provider names pass unchanged."""
    stripped = name.strip()
    alias = ALIASES.get(stripped.lower())
    if alias is not None:
        return alias
    if not stripped.endswith("ExecutionProvider"):
        raise ValueError(f"unknown execution provider {name!r} (use e.g. tensorrt, cuda, cpu)")
    return stripped


@dataclass(frozen=True)
class ProviderChoice:
    chosen: tuple[str, ...]
    unavailable: tuple[str, ...]

    @property
    def fell_back(self) -> bool:
        """A provider asked for is not in this build: the model runs on what is left."""
        return bool(self.unavailable)

    def describe(self) -> str:
        text = " -> ".join(self.chosen)
        if self.unavailable:
            text += f" ({', '.join(self.unavailable)} not available here)"
        return text


def choose_providers(requested: Sequence[str], available: Iterable[str]) -> ProviderChoice:
    offered = set(available)
    wanted: list[str] = []
    for name in requested:
        canonical = canonical_provider(name)
        if canonical not in wanted:
            wanted.append(canonical)
    chosen = [name for name in wanted if name in offered]
    unavailable = [name for name in wanted if name not in offered]
    if CPU not in chosen:
        chosen.append(CPU)
    return ProviderChoice(tuple(chosen), tuple(unavailable))


def binding_device(active: Sequence[str]) -> str:
    """Where I/O binding puts inputs and outputs: on the GPU when a GPU provider runs the graph."""
    return "cuda" if active and active[0] in GPU_PROVIDERS else "cpu"
