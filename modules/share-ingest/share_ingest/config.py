"""share-ingest configuration: one validated, immutable model (pydantic, unknown keys refused).

The module's settings layer (defaults <- environment <- twin) builds this; the core only reads it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from wcmatch import glob

# Dataset names end up in folder and blob names downstream, so keep them to a portable alphabet.
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.FORCEUNIX


def _check_pattern(pattern: str) -> str:
    if not pattern or pattern.startswith("/") or "\\" in pattern:
        raise ValueError(f"pattern {pattern!r} must be a non-empty relative POSIX glob")
    if ".." in pattern.split("/"):
        raise ValueError(f"pattern {pattern!r} must not contain '..'")
    glob.compile([pattern], flags=GLOB_FLAGS)
    return pattern


class IngestConfig(BaseModel):
    """What share-ingest watches, when a file counts as complete, and how it is named downstream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "inotify", "poll"] = "auto"
    """auto: inotify on local filesystems, polling on network ones (SMB/NFS deliver no inotify events)."""
    poll_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    rescan_interval_seconds: float = Field(default=600.0, ge=0, le=86400)
    """In inotify mode, a full rescan this often as a safety net (0: never)."""

    completion: Literal["stable", "marker", "rename"] = "stable"
    stable_seconds: float = Field(default=10.0, gt=0, le=86400)
    """stable: size and mtime unchanged this long. Also the re-check delay after a change during hashing."""
    marker_suffix: str = ".ready"
    """marker: `<name><marker_suffix>` beside a file says it is complete. Markers are never announced."""
    temp_patterns: tuple[str, ...] = ("*.tmp", "*.partial", "*.part", "*.filepart", "~$*")
    """Basename globs of files still being written: never announced (under `rename`, how writers write)."""

    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    """Hidden names (a leading dot: files, and folders such as NFS `.snapshot`) are skipped unless set."""
    datasets: dict[str, str] = Field(default_factory=dict)
    """Glob on the relative path -> dataset name; first match in order wins, before the top-folder rule."""
    default_dataset: str = "default"
    """Dataset of files at the share root that no `datasets` glob names."""

    max_path_bytes: int = Field(default=1024, ge=16, le=4096)
    """Longer relative paths are refused (Azure blob names stop at 1024 characters)."""
    max_depth: int = Field(default=32, ge=1, le=256)
    retry_seconds: float = Field(default=30.0, gt=0, le=86400)
    """Delay before retrying a file that could not be read or whose announcement failed."""

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_pattern(p) for p in patterns)

    @field_validator("temp_patterns")
    @classmethod
    def _temp_patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            if not pattern or "/" in pattern:
                raise ValueError(f"temp pattern {pattern!r} must be a non-empty basename glob")
        return patterns

    @field_validator("marker_suffix")
    @classmethod
    def _marker_suffix(cls, suffix: str) -> str:
        if len(suffix) < 2 or not suffix.startswith(".") or "/" in suffix:
            raise ValueError("marker_suffix must look like '.ready'")
        return suffix

    @field_validator("default_dataset")
    @classmethod
    def _default_dataset(cls, name: str) -> str:
        if not _DATASET_NAME.match(name):
            raise ValueError(f"dataset name {name!r} must match {_DATASET_NAME.pattern}")
        return name

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, mapping: dict[str, str]) -> dict[str, str]:
        for pattern, name in mapping.items():
            _check_pattern(pattern)
            if not _DATASET_NAME.match(name):
                raise ValueError(f"dataset name {name!r} must match {_DATASET_NAME.pattern}")
        return mapping

    @model_validator(mode="after")
    def _include_something(self) -> IngestConfig:
        if not self.include:
            raise ValueError("include must name at least one pattern")
        return self
