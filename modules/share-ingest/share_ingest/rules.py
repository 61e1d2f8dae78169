"""Pure decisions about names: which paths are safe, which are candidates, their dataset and format.

Hostile names are refused with a reason rather than announced in an escaped form: a name downstream cannot
open byte-for-byte, or that breaks a log line or a blob name, is not worth announcing. Refused:
- names that are not valid UTF-8 (Python hands them over with lone surrogates);
- control characters (C0, DEL, C1: newlines, tabs, escapes), line/paragraph separators and bidi overrides;
- backslashes (a separator to the Windows side of an SMB share and to blob tooling);
- '.'/'..' or empty components, absolute paths, components over 255 bytes, paths over `max_path_bytes`.
Names that merely start with dots ('..data.csv') are ordinary hidden names, not traversal.
"""

from __future__ import annotations

import enum
import fnmatch
import unicodedata
from dataclasses import dataclass

from wcmatch import glob

from .config import GLOB_FLAGS, IngestConfig

NAME_MAX_BYTES = 255
_DISPLAY_MAX_CHARS = 512
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def name_problem(name: str) -> str | None:
    """Why one path component is refused, or None when it is acceptable."""
    if name in ("", ".", ".."):
        return f"'{name}' is not a file name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > NAME_MAX_BYTES:
        return f"name longer than {NAME_MAX_BYTES} bytes"
    for char in name:
        if char == "\\":
            return "backslash in name"
        if char in _BIDI_CONTROLS:
            return f"bidirectional control character U+{ord(char):04X} in name"
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"control character U+{ord(char):04X} in name"
    return None


def path_problem(rel: str, max_path_bytes: int) -> str | None:
    """Why a share-relative path is refused, or None. Checks every component, so '..' cannot slip through."""
    if not rel or rel.startswith("/"):
        return "not a relative path"
    for part in rel.split("/"):
        problem = name_problem(part)
        if problem is not None:
            return problem
    if len(rel.encode("utf-8")) > max_path_bytes:
        return f"path longer than {max_path_bytes} bytes"
    return None


def display_path(rel: str) -> str:
    """A printable, single-line stand-in for any name, hostile ones included (for refusals and logs)."""
    raw = rel.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "backslashreplace")
    shown = "".join(
        f"\\x{ord(c):02x}"
        if ord(c) < 0x100 and unicodedata.category(c) == "Cc"
        else f"\\u{ord(c):04x}"
        if c in _BIDI_CONTROLS or unicodedata.category(c) in _REFUSED_CATEGORIES
        else c
        for c in text
    )
    if len(shown) > _DISPLAY_MAX_CHARS:
        return shown[: _DISPLAY_MAX_CHARS - 1] + "…"
    return shown


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_of(rel: str) -> str:
    return rel.rpartition("/")[0]


def is_within(rel: str, folder: str) -> bool:
    return not folder or rel == folder or rel.startswith(folder + "/")


class Kind(enum.Enum):
    CANDIDATE = "candidate"
    MARKER = "marker"
    HIDDEN = "hidden"
    TEMPORARY = "temporary"
    EXCLUDED = "excluded"


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    compression: str | None


_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def format_of(rel: str) -> Format:
    name = rel.rpartition("/")[2].lower()
    compression = None
    if name.endswith(".gz"):
        compression = "gzip"
        name = name[: -len(".gz")]
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return Format(fmt, compression)
    return Format("unknown", compression)


class Rules:
    """The configured naming rules, compiled once."""

    def __init__(self, config: IngestConfig) -> None:
        self._config = config
        self._include = glob.compile(list(config.include), flags=GLOB_FLAGS)
        self._exclude = glob.compile(list(config.exclude), flags=GLOB_FLAGS) if config.exclude else None
        self._datasets = [(glob.compile([p], flags=GLOB_FLAGS), name) for p, name in config.datasets.items()]
        self._temp = tuple(p.lower() for p in config.temp_patterns)

    def is_hidden(self, name: str) -> bool:
        return not self._config.include_hidden and name.startswith(".")

    def is_temporary(self, name: str) -> bool:
        lowered = name.lower()
        return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in self._temp)

    def classify(self, rel: str) -> Kind:
        """Assumes `rel` passed path_problem."""
        name = rel.rpartition("/")[2]
        if name.endswith(self._config.marker_suffix):
            return Kind.MARKER
        if any(self.is_hidden(part) for part in rel.split("/")):
            return Kind.HIDDEN
        if self.is_temporary(name):
            return Kind.TEMPORARY
        if not self._include.match(rel) or (self._exclude is not None and self._exclude.match(rel)):
            return Kind.EXCLUDED
        return Kind.CANDIDATE

    def marker_for(self, rel: str) -> str:
        return rel + self._config.marker_suffix

    def marker_target(self, marker_rel: str) -> str:
        return marker_rel[: -len(self._config.marker_suffix)]

    def dataset_for(self, rel: str) -> str:
        for matcher, name in self._datasets:
            if matcher.match(rel):
                return name
        top, slash, _ = rel.partition("/")
        return top if slash else self._config.default_dataset
