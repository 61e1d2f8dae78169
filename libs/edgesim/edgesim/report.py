"""`RUN_DIR/report.json`: the contract scripts, CI and tests read after a run (DESIGN.md section 8).

Keys of the contract: ok, started, ended, modules {name: {exit_code, restarts, counters}}, routes,
upstream_messages, twins, models_served, retrain_requests. Everything else here is an extension; never rename
a key. Per module, `exit_code` is the code of the last exit that was not a graceful stop by edgesim (a crash,
a kill through the control API, the module ending by itself), null when the module only ever ended because
edgesim stopped it; `final_exit_code` is the code of its last exit whatever the cause.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesim.supervisor import ModuleState


def iso_utc(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class HubFigures:
    """What the report takes from the hub's stats (kept separate so the report builds without a hub)."""

    routed: Mapping[str, int]
    upstream_messages: int
    delivered: Mapping[str, int]
    pending: Mapping[str, int]
    expired: Mapping[str, int]
    refused_connections: int


def module_entry(
    state: ModuleState, restart_policy: str, status: str, twin: Mapping[str, Any] | None
) -> dict[str, Any]:
    reported = (twin or {}).get("reported", {})
    counters = reported.get("counters") if isinstance(reported, dict) else None
    return {
        "exit_code": state.crash_exit_code,
        "killed_on_request": state.killed_on_request,
        "restarts": state.restarts,
        "counters": counters if isinstance(counters, dict) else {},
        "final_exit_code": state.exit_code,
        "starts": state.starts,
        "restart_policy": restart_policy,
        "status": status,
        "spawn_error": state.spawn_error,
    }


def build_report(
    *,
    ok: bool,
    started: float,
    ended: float,
    modules: Mapping[str, dict[str, Any]],
    twins: Mapping[str, Mapping[str, Any]],
    hub: HubFigures | None,
    route_names: Sequence[str],
    problems: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    routed = dict(hub.routed) if hub is not None else {}
    report: dict[str, Any] = {
        "ok": ok,
        "started": iso_utc(started),
        "ended": iso_utc(ended),
        "modules": dict(modules),
        # Every route of the manifest appears, zero included, so a route that never fired is visible.
        "routes": {name: routed.get(name, 0) for name in route_names} | routed,
        "upstream_messages": hub.upstream_messages if hub is not None else 0,
        "twins": {
            name: {"desired": twin.get("desired", {}), "reported": twin.get("reported", {})}
            for name, twin in twins.items()
        },
        # What modules report of themselves: gpu-inferencer its `modelsServed`, retrain-trigger its
        # `retrainRequests` (any module may report either).
        "models_served": _collect(twins, "modelsServed"),
        "retrain_requests": _collect(twins, "retrainRequests"),
        "duration_s": round(ended - started, 3),
        "delivered": dict(hub.delivered) if hub is not None else {},
        "pending": dict(hub.pending) if hub is not None else {},
        "expired": dict(hub.expired) if hub is not None else {},
        "refused_connections": hub.refused_connections if hub is not None else 0,
        "problems": list(problems),
    }
    if extra:
        report.update({key: value for key, value in extra.items() if key not in report})
    return report


def _collect(twins: Mapping[str, Mapping[str, Any]], key: str) -> list[Any]:
    found: list[Any] = []
    for twin in twins.values():
        value = twin.get("reported", {}).get(key)
        if isinstance(value, list):
            found.extend(value)
    return found


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
