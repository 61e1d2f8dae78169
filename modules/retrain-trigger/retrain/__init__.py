"""retrain-trigger: decides when the serving model must be retrained (drift, new data, a schedule, a
person), starts the job where configured, and promotes or rejects what it produced."""

from .backends import (
    CommandError,
    JobError,
    JobState,
    JobStatus,
    LocalProcessBackend,
    ModelRegistry,
    RegistryCli,
    RegistryError,
    TrainingBackend,
    TrainingRequest,
    parse_registered_version,
)
from .card import CardError, Histogram, ModelCard, ModelRef, load_card, resolve_model_dir
from .data import DataError, Frame, read_frame
from .drift import DriftResult, baseline_cdf, feature_drift, histogram_counts, ks_statistic, measure, psi
from .policy import BatchSeen, Decision, RetrainPolicy, Signal, Suppressed, Trigger, new_rows_since
from .promotion import Verdict, decide
from .schedule import CronSchedule, ScheduleError, validate_cron
from .scoring import Evaluation, OnnxScorer, evaluate, model_inputs, summarise
from .service import RetrainService
from .settings import RetrainSettings
from .window import RecentWindow

__all__ = [
    "BatchSeen",
    "CardError",
    "CommandError",
    "CronSchedule",
    "DataError",
    "Decision",
    "DriftResult",
    "Evaluation",
    "Frame",
    "Histogram",
    "JobError",
    "JobState",
    "JobStatus",
    "LocalProcessBackend",
    "ModelCard",
    "ModelRef",
    "ModelRegistry",
    "OnnxScorer",
    "RecentWindow",
    "RegistryCli",
    "RegistryError",
    "RetrainPolicy",
    "RetrainService",
    "RetrainSettings",
    "ScheduleError",
    "Signal",
    "Suppressed",
    "TrainingBackend",
    "TrainingRequest",
    "Trigger",
    "Verdict",
    "baseline_cdf",
    "decide",
    "evaluate",
    "feature_drift",
    "histogram_counts",
    "ks_statistic",
    "load_card",
    "measure",
    "model_inputs",
    "new_rows_since",
    "parse_registered_version",
    "psi",
    "read_frame",
    "resolve_model_dir",
    "summarise",
    "validate_cron",
]
