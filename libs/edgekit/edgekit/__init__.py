"""edgekit: the runtime every edgeloop module uses (transport, runner, settings, ledger, envelopes,
metrics, logging). See README.md for how a module uses it."""

from .envelope import EnvelopeError, content_id, json_content_id, make_message, parse_message, schema_name
from .ledger import Item, Ledger, LedgerCorruptError, LedgerError, LedgerStateError
from .logging import JsonFormatter, configure_logging
from .messages import Message, MethodRequest, MethodResponse
from .metrics import Counters, MetricsServer
from .runner import (
    EXIT_BAD_SETTINGS,
    EXIT_FAILED,
    EXIT_OK,
    Context,
    Runner,
    RuntimeSettings,
    Service,
    run_module,
)
from .settings import SettingsError, SettingsManager, SettingsUpdate
from .transport import Transport
from .transport_edgehub import EdgeHubTransport
from .transport_memory import InMemoryTransport
from .twin import diff_patch, merge_patch

__all__ = [
    "EXIT_BAD_SETTINGS",
    "EXIT_FAILED",
    "EXIT_OK",
    "Context",
    "Counters",
    "EdgeHubTransport",
    "EnvelopeError",
    "InMemoryTransport",
    "Item",
    "JsonFormatter",
    "Ledger",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerStateError",
    "Message",
    "MethodRequest",
    "MethodResponse",
    "MetricsServer",
    "Runner",
    "RuntimeSettings",
    "Service",
    "SettingsError",
    "SettingsManager",
    "SettingsUpdate",
    "Transport",
    "configure_logging",
    "content_id",
    "diff_patch",
    "json_content_id",
    "make_message",
    "merge_patch",
    "parse_message",
    "run_module",
    "schema_name",
]
