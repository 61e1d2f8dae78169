"""The local scoring endpoint: auth, errors with reasons, limits, health, metrics, and the same scorer."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.unit.inferencer.kit import (
    COLUMNS,
    Harness,
    model_ref,
    reference_scores,
    series,
    start_harness,
    write_batch,
    write_model,
)

pytestmark = pytest.mark.timeout(60)
KEY = "k3y-for-tests"


def loopback() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


async def endpoint_harness(
    tmp_path: Path, desired: dict[str, Any] | None = None, **extra: Any
) -> tuple[Harness, str]:
    h = await start_harness(
        tmp_path,
        desired,
        INFERENCER_ENDPOINT_ENABLED="true",
        INFERENCER_ENDPOINT_HOST=loopback(),
        INFERENCER_ENDPOINT_PORT="0",
        INFERENCER_API_KEY=KEY,
        INFERENCER_MAX_REQUEST_ROWS="50",
        **extra,
    )
    endpoint = h.transport.reported["endpoint"]
    assert endpoint["enabled"] is True
    return h, f"http://{endpoint['host']}:{endpoint['port']}"


def rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            **{c: float(v) for c, v in zip(COLUMNS, rng.normal(size=4), strict=True)},
            "device_id": "d1",
            "timestamp": i,
        }
        for i in range(count)
    ]


async def test_score_health_and_metrics(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path / "m", bias=0.5, threshold=0.8)
    h, base = await endpoint_harness(tmp_path)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base}/healthz") as response:
                assert response.status == 503
                assert "no model" in (await response.json())["reason"]
            async with client.post(
                f"{base}/score", json={"rows": rows(2)}, headers={"x-api-key": KEY}
            ) as response:
                assert response.status == 503
            await h.transport.set_desired({"model": model_ref(model_dir)})
            await h.service.models.settled()  # type: ignore[union-attr]
            async with client.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert "sensor-ae/1" in (await response.json())["detail"]
            payload = rows(20, seed=3)
            async with client.post(
                f"{base}/score", json={"rows": payload}, headers={"x-api-key": KEY}
            ) as response:
                assert response.status == 200
                body = await response.json()
            x = np.array([[row[c] for c in COLUMNS] for row in payload])
            expected = reference_scores(x, bias=0.5)
            assert body["model"] == {"name": "sensor-ae", "version": "1"}
            assert body["threshold"] == 0.8
            assert body["scores"] == pytest.approx(expected.tolist(), rel=1e-5)
            assert body["anomalies"] == (expected >= np.float32(0.8)).tolist()
            # Batch traffic shows in the same registry the endpoint serves.
            await h.transport.deliver("batches", write_batch(h.cloud, series(10), "b"))
            await h.transport.wait_sent("scores", 1)
            async with client.get(f"{base}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert "edgeloop_rows_scored_total 10.0" in text
            assert "edgeloop_endpoint_rows_total 20.0" in text
            assert "edgeloop_inferencer_batch_latency_seconds_count 1.0" in text
    finally:
        await h.stop()


@pytest.mark.parametrize(
    ("headers", "data", "status", "reason"),
    [
        ({}, b'{"rows": []}', 401, "x-api-key"),
        ({"x-api-key": "wrong"}, b'{"rows": []}', 401, "x-api-key"),
        ({"x-api-key": KEY}, b"{not json", 400, "not JSON"),
        ({"x-api-key": KEY}, b'{"data": []}', 400, "rows"),
        (
            {"x-api-key": KEY},
            b'{"rows": [{"temperature": 1, "vibration": 2, "pressure": 3}]}',
            400,
            "'current'",
        ),
        (
            {"x-api-key": KEY},
            b'{"rows": [{"temperature": 1, "vibration": "x", "pressure": 3, "current": 4}]}',
            400,
            "column 'vibration' is not a number",
        ),
        ({"x-api-key": KEY}, b'{"rows": [' + b",".join([b"{}"] * 51) + b"]}", 413, "at most 50"),
    ],
)
async def test_errors_have_status_and_reason(
    tmp_path: Path, headers: dict[str, str], data: bytes, status: int, reason: str
) -> None:
    model_dir = write_model(tmp_path / "m")
    h, base = await endpoint_harness(tmp_path, {"model": model_ref(model_dir)})
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"{base}/score", data=data, headers={"content-type": "application/json", **headers}
            ) as response,
        ):
            assert response.status == status
            assert reason in (await response.json())["error"]
    finally:
        await h.stop()


async def test_body_too_large_is_413_and_the_key_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = write_model(tmp_path / "m")
    h, base = await endpoint_harness(
        tmp_path, {"model": model_ref(model_dir)}, INFERENCER_MAX_REQUEST_BYTES="2048"
    )
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        async with (
            aiohttp.ClientSession() as client,
            client.post(f"{base}/score", data=b"x" * 5000, headers={"x-api-key": KEY}) as response,
        ):
            assert response.status == 413
        assert KEY not in caplog.text
        assert KEY not in str(h.transport.reported)
        assert h.transport.reported["settings"]["effective"]["api_key"] == "**********"
    finally:
        await h.stop()


async def test_windowed_requests_window_within_the_request(tmp_path: Path) -> None:
    weights = np.linspace(1, 2, 8)
    model_dir = write_model(tmp_path / "m", window=2, weights=weights)
    h, base = await endpoint_harness(tmp_path, {"model": model_ref(model_dir)})
    try:
        await h.service.models.settled()  # type: ignore[union-attr]
        payload = rows(4, seed=1)
        payload[1]["device_id"] = "d2"
        payload.reverse()  # order comes from timestamps, not from the request
        async with (
            aiohttp.ClientSession() as client,
            client.post(f"{base}/score", json={"rows": payload}, headers={"x-api-key": KEY}) as response,
        ):
            body = await response.json()
        by_time = {row["timestamp"]: row for row in payload}
        assert body["scores"][2] is None  # d2 has a single row
        assert body["anomalies"][2] is None
        assert body["scores"][3] is None  # d1's first row (t=0) has no history
        first = np.concatenate([[by_time[0][c] for c in COLUMNS], [by_time[2][c] for c in COLUMNS]])
        assert body["scores"][1] == pytest.approx(
            float(reference_scores(first[None, :], weights)[0]), rel=1e-5
        )
    finally:
        await h.stop()


async def test_endpoint_off_without_an_api_key_and_moves_with_the_twin(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, INFERENCER_ENDPOINT_ENABLED="true", INFERENCER_ENDPOINT_PORT="0")
    try:
        assert h.transport.reported["endpoint"] == {"enabled": False, "reason": "no api_key set"}
        host = loopback()
        await h.transport.set_desired({"api_key": KEY, "endpoint_host": host})
        await asyncio.sleep(0)
        endpoint = h.transport.reported["endpoint"]
        assert endpoint["enabled"] is True
        assert endpoint["host"] == host
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://{host}:{endpoint['port']}/healthz") as response,
        ):
            assert response.status == 503
    finally:
        await h.stop()
