"""Pure decisions of the uploader: names, temp files, block plans, backoff, bandwidth, retention.

Nothing here touches the disk, the network or the clock; callers pass what is needed.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# %h IoT Hub name, %d device id, %m module id, %c the local container (the file's top-level folder in the
# cloud share, "" for a file at the root), %p the file's path relative to the cloud share, %f its path
# relative to the local container, %% a literal percent sign. Paths always use "/".
TEMPLATE_PLACEHOLDERS = frozenset("hdmcpf%")
_TOKEN = re.compile(r"%(.?)", re.DOTALL)

# Blob storage's rules for container names: 3-63 of [a-z0-9-], starting and ending alphanumeric, no "--".
_CONTAINER_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
MAX_BLOB_NAME = 1024
MAX_BLOCKS = 50_000
TEMP_SUFFIXES = (".tmp", ".partial")


class TargetError(ValueError):
    """A file's container or blob name, once expanded, is not one Blob storage accepts."""


@dataclass(frozen=True, slots=True)
class Identity:
    hub: str
    device: str
    module: str

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Identity:
        """From the variables edgeAgent sets in every module (the hub name is the first label of its host)."""
        host = env.get("IOTEDGE_IOTHUBHOSTNAME", "")
        return cls(
            hub=host.split(".", 1)[0],
            device=env.get("IOTEDGE_DEVICEID", ""),
            module=env.get("IOTEDGE_MODULEID", ""),
        )


def validate_template(template: str) -> str:
    for match in _TOKEN.finditer(template):
        char = match.group(1)
        if char == "":
            raise ValueError("a template may not end in a lone %")
        if char not in TEMPLATE_PLACEHOLDERS:
            raise ValueError(f"unknown placeholder %{char} (known: %h %d %m %c %p %f %%)")
    return template


def split_share_path(rel_path: str) -> tuple[str, str]:
    """("folder", "rest/of/path") for a path relative to the cloud share; ("", name) at the root."""
    head, sep, tail = rel_path.partition("/")
    return (head, tail) if sep else ("", head)


def expand_template(template: str, identity: Identity, rel_path: str) -> str:
    container, inner = split_share_path(rel_path)
    values = {
        "h": identity.hub,
        "d": identity.device,
        "m": identity.module,
        "c": container,
        "p": rel_path,
        "f": inner,
        "%": "%",
    }

    def substitute(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in values:
            raise ValueError(f"unknown placeholder %{char}")
        return values[char]

    return _TOKEN.sub(substitute, template)


def is_valid_container_name(name: str) -> bool:
    return bool(_CONTAINER_NAME.match(name))


def normalise_share_path(rel_path: str) -> str:
    """The canonical "a/b/c" form of a path relative to the cloud share; ValueError if it leaves the share."""
    parts = [p for p in rel_path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or rel_path.startswith("/"):
        raise ValueError(f"{rel_path!r} is not a path inside the cloud share")
    return "/".join(parts)


def is_temporary(rel_path: str) -> bool:
    """Files still being written by convention: a hidden name (or folder), or a .tmp/.partial suffix."""
    parts = rel_path.split("/")
    return any(p.startswith(".") for p in parts) or parts[-1].endswith(TEMP_SUFFIXES)


class _TargetLike(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def blob_name(self) -> str: ...


def covers(mapping: Mapping[str, object], rel_path: str) -> bool:
    """Whether an entry of storageContainersForUpload (its folder's, or "*") takes this file."""
    folder, _ = split_share_path(rel_path)
    return "*" in mapping or (bool(folder) and folder in mapping)


def resolve_target(
    mapping: Mapping[str, _TargetLike], identity: Identity, rel_path: str
) -> tuple[str, str] | None:
    """(container, blob name) for a file, or None when no entry of storageContainersForUpload covers it."""
    folder, _ = split_share_path(rel_path)
    entry = mapping.get(folder) if folder else None
    if entry is None:
        entry = mapping.get("*")
    if entry is None:
        return None
    container = expand_template(entry.target, identity, rel_path)
    blob_name = expand_template(entry.blob_name, identity, rel_path)
    if not is_valid_container_name(container):
        raise TargetError(f"container {container!r} (from {entry.target!r}) is not a valid container name")
    if not blob_name or len(blob_name) > MAX_BLOB_NAME or blob_name.endswith(("/", ".")):
        raise TargetError(f"blob name {blob_name!r} (from {entry.blob_name!r}) is not a valid blob name")
    return container, blob_name


# ---- blocks ------------------------------------------------------------------------------------------------


def plan_blocks(size: int, block_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each block of a file; a block blob holds at most 50,000."""
    count = max(1, math.ceil(size / block_size))
    if count > MAX_BLOCKS:
        raise ValueError(
            f"{size} bytes in blocks of {block_size} would need {count} blocks (max {MAX_BLOCKS})"
        )
    return [(i * block_size, min(block_size, size - i * block_size)) for i in range(count)]


def block_id(content_id: str, index: int, block_md5: bytes) -> str:
    """A block id that survives a restart: the file's content id, the block's index and the block's own MD5.

    The same file cut the same way yields the same ids, so a resumed upload recognises what it staged before;
    the block's MD5 makes a staged block impossible to mistake for different bytes (e.g. after the block size
    setting changed). Every id of a blob has the same length (54 bytes, under the 64-byte limit).
    """
    digest = base64.urlsafe_b64encode(block_md5).decode("ascii").rstrip("=")
    return f"{content_id[:24]}.{index:06d}.{digest}"


# ---- retry -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: initial * 2**attempt capped at maximum, less up to `jitter` of it at random.

    Taking a random share off (rather than adding) keeps the cap a true upper bound, and spreads the retries
    of devices that lost the same uplink at the same moment.
    """

    initial: float
    maximum: float
    jitter: float = 0.5
    multiplier: float = 2.0

    def delay(self, attempt: int, random_unit: float) -> float:
        """Seconds to wait before retry number `attempt` (0 = the first retry); random_unit is in [0, 1)."""
        exponent = min(attempt, 64)
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base * (1.0 - self.jitter * random_unit)


# ---- bandwidth ---------------------------------------------------------------------------------------------


class TokenBucket:
    """A bandwidth cap in bytes/s that allows bursts up to `capacity` bytes.

    `reserve(n, now)` takes n bytes' worth of tokens and says how long the caller must wait before sending
    them. Tokens may go negative (a debt later callers wait out), so a request larger than the bucket still
    goes, at the capped rate, and concurrent callers are served in order of reservation.
    """

    def __init__(self, rate: float, capacity: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._updated: float | None = None

    def reserve(self, nbytes: int, now: float) -> float:
        if self._updated is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


# ---- retention ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A local file known to be in the cloud, as the queue recorded it when the upload was verified."""

    path: str
    size: int
    mtime_ns: int
    uploaded_at: float


def select_expired(files: Iterable[UploadedFile], now: float, after_minutes: int) -> list[UploadedFile]:
    """Uploaded files older (by modification time) than `after_minutes`."""
    limit = now - after_minutes * 60
    return [f for f in files if f.mtime_ns / 1e9 <= limit]


def select_for_pressure(
    files: Sequence[UploadedFile], *, total: int, free: int, min_free_bytes: int, min_free_percent: float
) -> list[UploadedFile]:
    """The oldest uploaded files whose removal brings free space back over both thresholds, if it can."""
    wanted = max(min_free_bytes, math.ceil(total * min_free_percent / 100))
    chosen: list[UploadedFile] = []
    for f in sorted(files, key=lambda f: (f.mtime_ns, f.path)):
        if free >= wanted:
            break
        chosen.append(f)
        free += f.size
    return chosen


# ---- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadResult:
    """One file in the cloud: what the `uploaded` message carries (DESIGN.md §4)."""

    path: str
    container: str
    blob_name: str
    etag: str
    md5: str  # base64, as Blob storage shows Content-MD5
    bytes: int
    skipped: bool  # it was already there with the same MD5; nothing was sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "container": self.container,
            "blob_name": self.blob_name,
            "etag": self.etag,
            "md5": self.md5,
            "bytes": self.bytes,
            "skipped": self.skipped,
        }
