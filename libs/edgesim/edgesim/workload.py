"""The IoT Edge workload API on a Unix socket: what `create_from_edge_environment()` calls at start.

azure-iot-device 2.14.0 (`iothub/edge_hsm.py`) asks for `GET /trust-bundle?api-version=..` and reads
`{"certificate": <PEM>}`, then signs its SAS tokens with
`POST /modules/{module}/genid/{genid}/sign?api-version=..`, body
`{"keyId": "primary", "algo": "HMACSHA256", "data": <base64 of the string to sign>}` (sent without a JSON
content type), and reads `{"digest": <base64 HMAC-SHA256>}`. The key is the module's key in the hub, so a
token made here verifies exactly like one made from the module's connection string.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from edgesim.sas import sign

if TYPE_CHECKING:
    from edgesim.hub import EdgeHub


class WorkloadApi:
    def __init__(self, socket_path: Path, hub: EdgeHub) -> None:
        self._socket_path = socket_path
        self._hub = hub
        self._runner: web.AppRunner | None = None

    @property
    def uri(self) -> str:
        return f"unix://{self._socket_path.resolve()}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/trust-bundle", self._trust_bundle)
        app.router.add_post("/modules/{module}/genid/{genid}/sign", self._sign)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()
        await web.UnixSite(self._runner, str(self._socket_path)).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

    async def _trust_bundle(self, request: web.Request) -> web.Response:
        return web.json_response({"certificate": self._hub.ca_certificate_pem()})

    async def _sign(self, request: web.Request) -> web.Response:
        module = request.match_info["module"]
        try:
            expected_genid = self._hub.generation_id(module)
        except KeyError:
            return _error(404, f"module {module!r} not found")
        if request.match_info["genid"] != expected_genid:
            return _error(404, f"module {module!r} has no generation {request.match_info['genid']!r}")
        try:
            body = json.loads(await request.text())
            if not isinstance(body, dict):
                raise TypeError("body is not an object")
            if body.get("keyId") != "primary" or body.get("algo") != "HMACSHA256":
                return _error(400, "only keyId 'primary' and algo 'HMACSHA256' are supported")
            data = base64.b64decode(body["data"], validate=True)
        except (ValueError, TypeError, KeyError, binascii.Error) as exc:
            return _error(400, f"bad sign request: {exc}")
        return web.json_response({"digest": sign(self._hub.module_key(module), data)})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)
