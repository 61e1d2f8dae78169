"""What the image tests share with their fixture."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    host: str  # the engine's address, unix://...
    registry: str  # host:port of the OCI registry, on loopback
