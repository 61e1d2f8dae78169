"""What retrain-trigger must remember across a restart (cooldown, the serving model it follows, the job in
flight, the history it reports), in one JSON file on the state volume, replaced atomically."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RetrainState:
    last_request_at: float | None = None
    last_schedule_check: float | None = None
    serving: dict[str, Any] | None = None
    """The followed model reference plus "source" (setting, message, promotion)."""
    setting_model: dict[str, Any] | None = None
    """The `model` setting as last adopted, so a restart tells a changed setting from an unchanged one."""
    job: dict[str, Any] | None = None
    last_job: dict[str, Any] | None = None
    last_candidate: dict[str, Any] | None = None
    last_decision: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, logger: logging.Logger) -> RetrainState:
        """The saved state; a damaged file is moved aside (starting afresh beats a crash loop)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError) as error:
            aside = path.with_name(path.name + ".damaged")
            path.replace(aside)
            logger.error("%s was unreadable (%s); moved to %s, starting afresh", path, error, aside.name)
            return cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        with temp.open("w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)


def keep_last(items: list[dict[str, Any]], item: dict[str, Any], count: int) -> list[dict[str, Any]]:
    return [*items, item][-count:]
