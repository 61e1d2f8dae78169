"""The local scoring endpoint (aiohttp): `POST /score`, `GET /healthz`, `GET /metrics`.

`/score` runs through the same `Scorer` as batch scoring, on the model serving at the time of the
request. Rows of a windowed model are windowed within the request (per device, by timestamp): the
endpoint never reads or moves the history of batch scoring, and rows without enough history in the
request get `null`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import SecretStr

from .frames import FrameError, json_rows_frame
from .scoring import FrameToScore, Scorer
from .windows import WindowState

API_KEY_HEADER = "x-api-key"
REQUEST_DATASET = "$request"


@dataclass(frozen=True)
class EndpointLimits:
    api_key: SecretStr | None
    max_rows: int
    max_batch_rows: int


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class ScoreEndpoint:
    def __init__(
        self,
        scorer: Scorer,
        limits: Callable[[], EndpointLimits],
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, str]],
        *,
        max_body_bytes: int,
        on_scored: Callable[[int], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._scorer = scorer
        self._limits = limits
        self._registry = registry
        self._health = health
        self._max_body_bytes = max_body_bytes
        self._on_scored = on_scored
        self._logger = logger or logging.getLogger("edgeloop.inferencer.endpoint")
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_post("/score", self._score)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            site = web.SockSite(runner, sock)
            await site.start()
        except Exception:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _score(self, request: web.Request) -> web.Response:
        limits = self._limits()
        given = request.headers.get(API_KEY_HEADER, "")
        key = limits.api_key.get_secret_value() if limits.api_key is not None else ""
        if not key or not hmac.compare_digest(given.encode(), key.encode()):
            return _error(401, f"missing or wrong {API_KEY_HEADER} header")
        model = self._scorer.model
        if model is None:
            return _error(503, "no model is serving yet")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {self._max_body_bytes} bytes")
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return _error(400, f"body is not JSON: {error}")
        if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
            return _error(400, 'body must be an object {"rows": [{column: value, ...}, ...]}')
        rows: list[Any] = document["rows"]
        if len(rows) > limits.max_rows:
            return _error(413, f"{len(rows)} rows; at most {limits.max_rows} per request")
        try:
            frame = json_rows_frame(rows, model.card)
        except FrameError as error:
            return _error(400, str(error))
        history = WindowState().stage() if model.card.window > 1 else None
        try:
            (result,) = await asyncio.to_thread(
                self._scorer.score,
                [FrameToScore(frame, REQUEST_DATASET)],
                model,
                history,
                limits.max_batch_rows,
            )
        except Exception as error:
            self._logger.exception("scoring a request failed")
            return _error(500, f"scoring failed: {type(error).__name__}")
        scores: list[float | None] = [None] * frame.rows
        anomalies: list[bool | None] = [None] * frame.rows
        for row, score, flag in zip(
            result.rows.tolist(), result.scores.tolist(), result.anomalous.tolist(), strict=True
        ):
            scores[row] = score if score == score else None  # NaN is not JSON
            anomalies[row] = bool(flag)
        if self._on_scored is not None:
            self._on_scored(len(result.rows))
        return web.json_response(
            {
                "model": {"name": model.name, "version": model.version},
                "scores": scores,
                "anomalies": anomalies,
                "threshold": model.card.threshold,
            }
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        serving, detail = self._health()
        if serving:
            return web.json_response({"status": "ok", "detail": detail})
        return web.json_response({"status": "unavailable", "reason": detail}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self._registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
