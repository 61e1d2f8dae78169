"""Model references: registry://, file://, http(s):// prefix (a loopback aiohttp server), and the cache."""

from __future__ import annotations

import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from inferencer import FetchError, FetchOptions, ModelRequest, fetch_model
from inferencer.fetch import redact
from tests.unit.inferencer.kit import sha256_of, write_model


def options(tmp_path: Path) -> FetchOptions:
    return FetchOptions(registry_root=tmp_path / "registry", cache_root=tmp_path / "cache", timeout_s=10)


async def test_registry_version_and_latest(tmp_path: Path) -> None:
    for version in ("1", "2", "10"):
        write_model(tmp_path / "registry" / "sensor-ae" / version, version=version, bias=float(version))
    fetched = await fetch_model(ModelRequest("sensor-ae", "2", "registry://sensor-ae/2"), options(tmp_path))
    assert fetched.directory == tmp_path / "cache" / "sensor-ae" / "2"
    assert fetched.card.version == "2"
    assert not fetched.from_cache
    latest = await fetch_model(
        ModelRequest("sensor-ae", "latest", "registry://sensor-ae/latest"), options(tmp_path)
    )
    assert latest.card.version == "10"  # numeric order, not text order
    again = await fetch_model(ModelRequest("sensor-ae", "2", "registry://sensor-ae/2"), options(tmp_path))
    assert again.from_cache
    with pytest.raises(FetchError, match="no such version"):
        await fetch_model(ModelRequest("sensor-ae", "3", "registry://sensor-ae/3"), options(tmp_path))
    with pytest.raises(FetchError, match="names version '2', not '3'"):
        await fetch_model(ModelRequest("sensor-ae", "3", "registry://sensor-ae/2"), options(tmp_path))
    with pytest.raises(FetchError, match="names model"):
        await fetch_model(ModelRequest("other", "2", "registry://sensor-ae/2"), options(tmp_path))


async def test_file_uri_verifies_sha_against_card_and_twin(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "src", version="4")
    digest = sha256_of(folder / "model.onnx")
    fetched = await fetch_model(
        ModelRequest("sensor-ae", "4", folder.as_uri(), digest.upper()), options(tmp_path)
    )
    assert sha256_of(fetched.directory / "model.onnx") == digest
    with pytest.raises(FetchError, match="the twin says"):
        await fetch_model(ModelRequest("sensor-ae", "4", folder.as_uri(), "0" * 64), options(tmp_path))
    with pytest.raises(FetchError, match=r"the card is sensor-ae/4, but sensor-ae/5 was asked for"):
        await fetch_model(ModelRequest("sensor-ae", "5", folder.as_uri()), options(tmp_path))
    with pytest.raises(FetchError, match="not a concrete version"):
        await fetch_model(ModelRequest("sensor-ae", "latest", folder.as_uri()), options(tmp_path))
    with pytest.raises(FetchError, match="unsupported model uri scheme"):
        await fetch_model(ModelRequest("sensor-ae", "4", "ftp://x/y/"), options(tmp_path))


async def test_sha_mismatch_with_the_card_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "src", version="1")
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"tampered")
    with pytest.raises(FetchError, match="the card says"):
        await fetch_model(ModelRequest("sensor-ae", "1", folder.as_uri()), options(tmp_path))
    cache = tmp_path / "cache" / "sensor-ae"
    assert not (cache / "1").exists()
    assert list(cache.iterdir()) == []  # the staging folder is gone too


async def test_a_damaged_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "src", version="1")
    first = await fetch_model(ModelRequest("sensor-ae", "1", folder.as_uri()), options(tmp_path))
    (first.directory / "model.onnx").write_bytes(b"bit rot")
    second = await fetch_model(ModelRequest("sensor-ae", "1", folder.as_uri()), options(tmp_path))
    assert not second.from_cache
    assert sha256_of(second.directory / "model.onnx") == sha256_of(folder / "model.onnx")
    assert [p.name for p in (tmp_path / "cache" / "sensor-ae").iterdir()] == ["1"]


@pytest.fixture
async def blob_server(tmp_path: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback stand-in for a Blob container: serves tmp_path/blobs, demands a SAS-like query."""
    root = tmp_path / "blobs"
    seen: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        if request.query.get("sig") != "secret":
            return web.Response(status=403)
        path = root / request.match_info["tail"]
        if not path.is_file():
            return web.Response(status=404)
        return web.Response(body=path.read_bytes())

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


async def test_http_prefix_fetch_from_a_loopback_server(
    tmp_path: Path, blob_server: tuple[str, list[str]]
) -> None:
    base, seen = blob_server
    write_model(tmp_path / "blobs" / "models" / "sensor-ae" / "7", version="7")
    uri = f"{base}/models/sensor-ae/7/?sv=2024&sig=secret"
    fetched = await fetch_model(ModelRequest("sensor-ae", "7", uri), options(tmp_path))
    assert fetched.card.version == "7"
    assert seen == [
        "/models/sensor-ae/7/model.json?sv=2024&sig=secret",
        "/models/sensor-ae/7/model.onnx?sv=2024&sig=secret",
    ]
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(FetchError) as refused:
        await fetch_model(
            ModelRequest("sensor-ae", "7", f"{base}/models/sensor-ae/7/?sig=wrong"), options(tmp_path)
        )
    assert "HTTP 403" in str(refused.value)
    assert "wrong" not in str(refused.value)  # the SAS never appears in a reason
    with pytest.raises(FetchError, match="HTTP 404"):
        await fetch_model(
            ModelRequest("sensor-ae", "8", f"{base}/models/sensor-ae/8/?sig=secret"), options(tmp_path)
        )
    with pytest.raises(FetchError, match="ending in '/'"):
        await fetch_model(
            ModelRequest("sensor-ae", "7", f"{base}/models/sensor-ae/7?sig=secret"), options(tmp_path)
        )


async def test_http_download_larger_than_the_limit_is_refused(
    tmp_path: Path, blob_server: tuple[str, list[str]]
) -> None:
    base, _ = blob_server
    write_model(tmp_path / "blobs" / "m" / "1", version="1")
    small = FetchOptions(tmp_path / "registry", tmp_path / "cache", timeout_s=10, max_bytes=16)
    with pytest.raises(FetchError, match="larger than 16 bytes"):
        await fetch_model(ModelRequest("sensor-ae", "1", f"{base}/m/1/?sig=secret"), small)


def test_redact_drops_the_query_and_settings_never_report_a_sas() -> None:
    from inferencer import InferencerSettings

    assert redact("https://a.blob/c/m/1/?sv=1&sig=abc") == "https://a.blob/c/m/1/"
    assert redact("registry://m/1") == "registry://m/1"
    uri = "https://a.blob/c/m/1/?sv=1&sig=abc"
    settings = InferencerSettings.model_validate({"model": {"name": "m", "version": "1", "uri": uri}})
    assert settings.model is not None
    assert settings.model.uri == uri  # kept for fetching
    assert settings.model_dump(mode="json")["model"]["uri"] == "https://a.blob/c/m/1/"
