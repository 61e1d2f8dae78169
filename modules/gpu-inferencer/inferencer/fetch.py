"""Model references to verified local copies: `registry://<name>/<version>`, `file:///abs/dir`, or an
`http(s)://` blob prefix ending in `/` (a SAS query string is appended to both file names).

Each version is copied into the cache (`<cache>/<name>/<version>`) through a staging folder that is
renamed into place only once verified: the sha256 of the model file equals the card's (and the twin's
when given), and the card names the version asked for. A cache entry is reused only if it still
verifies, so a damaged copy is fetched again instead of being served.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import aiohttp

from edgekit import content_id

from .card import CARD_FILE, SAFE_SEGMENT, CardError, ModelCard, parse_card, read_card

MAX_CARD_BYTES = 4 * 2**20
_CHUNK = 1 << 20


class FetchError(ValueError):
    """The model cannot be fetched or does not verify; the message never contains a SAS token."""


@dataclass(frozen=True)
class ModelRequest:
    name: str
    version: str
    uri: str
    sha256: str | None = None


@dataclass(frozen=True)
class FetchOptions:
    registry_root: Path
    cache_root: Path
    timeout_s: float = 300.0
    max_bytes: int = 2 * 2**30


@dataclass(frozen=True)
class Fetched:
    directory: Path
    card: ModelCard
    from_cache: bool


def redact(uri: str) -> str:
    """The URI without its query string (a SAS token is a credential)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(query="", fragment="")) if parts.query or parts.fragment else uri


async def fetch_model(request: ModelRequest, options: FetchOptions) -> Fetched:
    parts = urlsplit(request.uri)
    scheme = parts.scheme.lower()
    if scheme == "registry":
        source = _registry_dir(parts, request, options.registry_root)
        version = source.name
    elif scheme == "file":
        source = _file_dir(parts)
        version = request.version
    elif scheme in ("http", "https"):
        if not parts.path.endswith("/"):
            raise FetchError(f"{redact(request.uri)} must be a prefix ending in '/'")
        source = None
        version = request.version
    else:
        raise FetchError(f"unsupported model uri scheme {parts.scheme!r} (registry, file, http, https)")
    if not SAFE_SEGMENT.match(version) or version == "latest":
        raise FetchError(f"model version {version!r} is not a concrete version")
    target = options.cache_root / request.name / version
    if target.is_dir():
        try:
            card = await asyncio.to_thread(_verify, target, request, version)
            return Fetched(target, card, from_cache=True)
        except FetchError:
            pass  # a damaged or stale copy: fetched again below
    staging = options.cache_root / request.name / f".{version}.{uuid.uuid4().hex}.partial"
    staging.mkdir(parents=True)
    try:
        if source is not None:
            await asyncio.to_thread(_copy_dir, source, staging, options.max_bytes)
        else:
            await _download(request.uri, staging, options)
        card = await asyncio.to_thread(_verify, staging, request, version)
        await asyncio.to_thread(_install, staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return Fetched(target, card, from_cache=False)


def _registry_dir(parts: SplitResult, request: ModelRequest, root: Path) -> Path:
    name = unquote(parts.netloc)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if len(segments) != 1 or not SAFE_SEGMENT.match(name) or not SAFE_SEGMENT.match(segments[0]):
        raise FetchError(f"{request.uri!r} is not registry://<name>/<version>")
    if name != request.name:
        raise FetchError(f"{request.uri} names model {name!r}, not {request.name!r}")
    wanted = _latest(root / name) if segments[0] == "latest" else segments[0]
    if request.version not in (wanted, "latest"):
        raise FetchError(f"{request.uri} names version {wanted!r}, not {request.version!r}")
    folder = root / name / wanted
    if not folder.is_dir():
        raise FetchError(f"{request.uri}: no such version in the registry at {root}")
    return folder


def _latest(model_root: Path) -> str:
    versions = (
        [p.name for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()]
        if model_root.is_dir()
        else []
    )
    if not versions:
        raise FetchError(f"no versions of {model_root.name!r} in the registry")
    return max(versions, key=int)


def _file_dir(parts: SplitResult) -> Path:
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file uri with a host ({parts.netloc!r}) is not a local folder")
    folder = Path(unquote(parts.path))
    if not folder.is_absolute():
        raise FetchError(f"file uri path {folder} is not absolute")
    if not folder.is_dir():
        raise FetchError(f"{folder} is not a folder")
    return folder


def _copy_dir(source: Path, staging: Path, max_bytes: int) -> None:
    try:
        card = read_card(source)
    except CardError as error:
        raise FetchError(str(error)) from error
    model = source / card.model_file
    if not model.is_file():
        raise FetchError(f"{model} is missing")
    if model.stat().st_size > max_bytes:
        raise FetchError(f"{model} is larger than {max_bytes} bytes")
    shutil.copyfile(source / CARD_FILE, staging / CARD_FILE)
    shutil.copyfile(model, staging / card.model_file)


async def _download(uri: str, staging: Path, options: FetchOptions) -> None:
    parts = urlsplit(uri)
    timeout = aiohttp.ClientTimeout(total=options.timeout_s)

    def url_of(name: str) -> str:
        return urlunsplit(parts._replace(path=parts.path + name, fragment=""))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        card_bytes = await _get(session, url_of(CARD_FILE), MAX_CARD_BYTES)
        try:
            card = parse_card(card_bytes)
        except CardError as error:
            raise FetchError(str(error)) from error
        (staging / CARD_FILE).write_bytes(card_bytes)
        await _get(session, url_of(card.model_file), options.max_bytes, staging / card.model_file)


async def _get(session: aiohttp.ClientSession, url: str, limit: int, into: Path | None = None) -> bytes:
    shown = redact(url)
    try:
        async with session.get(url) as response:
            if response.status != 200:
                raise FetchError(f"GET {shown}: HTTP {response.status}")
            received = 0
            chunks: list[bytes] = []
            handle = into.open("wb") if into is not None else None
            try:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    received += len(chunk)
                    if received > limit:
                        raise FetchError(f"GET {shown}: larger than {limit} bytes")
                    if handle is not None:
                        handle.write(chunk)
                    else:
                        chunks.append(chunk)
            finally:
                if handle is not None:
                    handle.close()
            return b"".join(chunks)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise FetchError(f"GET {shown}: {type(error).__name__}: {error}".replace(url, shown)) from error


def _verify(folder: Path, request: ModelRequest, version: str) -> ModelCard:
    try:
        card = read_card(folder)
    except CardError as error:
        raise FetchError(str(error)) from error
    if card.name != request.name or card.version != version:
        raise FetchError(
            f"the card is {card.name}/{card.version}, but {request.name}/{version} was asked for"
        )
    model = folder / card.model_file
    if not model.is_file():
        raise FetchError(f"{card.model_file} is missing")
    digest = content_id(model)
    if digest != card.model_sha256:
        raise FetchError(f"sha256 of {card.model_file} is {digest}, the card says {card.model_sha256}")
    if request.sha256 is not None and digest != request.sha256.lower():
        raise FetchError(f"sha256 of {card.model_file} is {digest}, the twin says {request.sha256.lower()}")
    return card


def _install(staging: Path, target: Path) -> None:
    for path in staging.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
