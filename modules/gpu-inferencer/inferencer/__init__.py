"""gpu-inferencer: scores `batch-ready` data with ONNX Runtime as it arrives (see README.md)."""

from .card import CardError, ModelCard, parse_card, read_card
from .endpoint import ScoreEndpoint
from .fetch import FetchError, FetchOptions, ModelRequest, fetch_model
from .frames import Frame, FrameError, json_rows_frame, read_parquet_frame
from .models import ModelManager
from .pipeline import Job, MicroBatcher
from .providers import DEFAULT_PROVIDERS, ProviderChoice, canonical_provider, choose_providers
from .runtime import LoadedModel, ModelLoadError, RuntimeOptions, available_providers, load_model
from .scoring import FrameToScore, ScoredFrame, Scorer
from .service import InferencerService
from .settings import InferencerSettings, ModelRef
from .windows import WindowState, assemble, layout_of

__all__ = [
    "DEFAULT_PROVIDERS",
    "CardError",
    "FetchError",
    "FetchOptions",
    "Frame",
    "FrameError",
    "FrameToScore",
    "InferencerService",
    "InferencerSettings",
    "Job",
    "LoadedModel",
    "MicroBatcher",
    "ModelCard",
    "ModelLoadError",
    "ModelManager",
    "ModelRef",
    "ModelRequest",
    "ProviderChoice",
    "RuntimeOptions",
    "ScoreEndpoint",
    "ScoredFrame",
    "Scorer",
    "WindowState",
    "assemble",
    "available_providers",
    "canonical_provider",
    "choose_providers",
    "fetch_model",
    "json_rows_frame",
    "layout_of",
    "load_model",
    "parse_card",
    "read_card",
    "read_parquet_frame",
]
