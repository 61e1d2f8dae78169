"""The run's control API: a small HTTP server on loopback, and the client the CLI uses.

While a run goes on, `RUN_DIR/control.json` (mode 0600) holds `{"url", "token"}`; every request carries
`Authorization: Bearer <token>`. The token keeps other local users and stray processes away from a run that
can kill modules and rewrite twins; it is not meant to protect against the account that started the run.

Routes: GET /status, GET /twins/{m}, PATCH /twins/{m}/desired, POST /modules/{m}/methods/{name}
(`{"payload", "timeout"}` -> `{"status", "payload"}`), POST /modules/{m}/{stop|kill|start|restart},
POST /storage/{stop|start} (Blob storage taken away and brought back, for fault tests).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web

ModuleAction = Literal["stop", "kill", "start", "restart"]
MODULE_ACTIONS: tuple[ModuleAction, ...] = ("stop", "kill", "start", "restart")
StorageAction = Literal["stop", "start"]
STORAGE_ACTIONS: tuple[StorageAction, ...] = ("stop", "start")
CONTROL_FILE = "control.json"


class UnknownModuleError(KeyError):
    pass


class ControlTarget(Protocol):
    """What the control API drives; the run implements it. Errors: UnknownModuleError -> 404,
    ValueError (e.g. an invalid twin patch) -> 400, RuntimeError -> 409."""

    def status(self) -> dict[str, Any]: ...

    def get_twin(self, module: str) -> dict[str, Any]: ...

    async def patch_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...

    async def invoke_method(
        self, module: str, method: str, payload: Any, wait_s: float
    ) -> tuple[int, Any]: ...

    async def module_action(self, module: str, action: ModuleAction) -> dict[str, Any]: ...


class StorageTarget(Protocol):
    """Blob storage a run can take away and bring back (same port, same data). RuntimeError -> 409."""

    async def storage_action(self, action: StorageAction) -> dict[str, Any]: ...


class ControlServer:
    """`storage`: what /storage/{stop|start} drives; without one those routes answer 409."""

    def __init__(
        self,
        target: ControlTarget,
        run_dir: Path,
        host: str = "127.0.0.1",
        storage: StorageTarget | None = None,
    ) -> None:
        self._target = target
        self._storage = storage
        self._run_dir = run_dir
        self._host = host
        self._token = ""
        self._runner: web.AppRunner | None = None
        self._url = ""

    @property
    def url(self) -> str:
        return self._url

    @property
    def control_file(self) -> Path:
        return self._run_dir / CONTROL_FILE

    async def start(self) -> None:
        self._token = secrets.token_urlsafe(32)
        app = web.Application(middlewares=[self._authenticate, self._errors])
        app.router.add_get("/status", self._status)
        app.router.add_get("/twins/{module}", self._get_twin)
        app.router.add_patch("/twins/{module}/desired", self._patch_desired)
        app.router.add_post("/modules/{module}/methods/{method}", self._invoke_method)
        app.router.add_post("/modules/{module}/{action}", self._module_action)
        app.router.add_post("/storage/{action}", self._storage_action)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._url = f"http://{self._host}:{port}"
        _write_private_json(self.control_file, {"url": self._url, "token": self._token})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # The file announces a live run; a finished run must not point at a dead port.
        self.control_file.unlink(missing_ok=True)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        supplied = request.headers.get("Authorization", "")
        expected = f"Bearer {self._token}"
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException:
            raise
        except UnknownModuleError as error:
            return web.json_response({"error": f"unknown module {error.args[0]!r}"}, status=404)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        except RuntimeError as error:
            return web.json_response({"error": str(error)}, status=409)
        return response

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self._target.status())

    async def _get_twin(self, request: web.Request) -> web.Response:
        return web.json_response(self._target.get_twin(request.match_info["module"]))

    async def _patch_desired(self, request: web.Request) -> web.Response:
        patch = await _json_body(request)
        if not isinstance(patch, dict):
            raise ValueError("the desired-properties patch must be a JSON object")
        delivered = await self._target.patch_desired(request.match_info["module"], patch)
        return web.json_response(delivered)

    async def _invoke_method(self, request: web.Request) -> web.Response:
        body = await _json_body(request) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise ValueError('the body must be {"payload": ..., "timeout": seconds}')
        wait_s = body.get("timeout", 30)
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool) or not 0 < wait_s <= 300:
            raise ValueError("timeout must be a number of seconds in (0, 300]")
        status, payload = await self._target.invoke_method(
            request.match_info["module"], request.match_info["method"], body.get("payload"), float(wait_s)
        )
        return web.json_response({"status": status, "payload": payload})

    async def _module_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in MODULE_ACTIONS:
            return web.json_response(
                {"error": f"unknown action {action!r}; one of {', '.join(MODULE_ACTIONS)}"}, status=404
            )
        state = await self._target.module_action(request.match_info["module"], action)
        return web.json_response(state)

    async def _storage_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in STORAGE_ACTIONS:
            return web.json_response(
                {"error": f"unknown storage action {action!r}; one of {', '.join(STORAGE_ACTIONS)}"},
                status=404,
            )
        if self._storage is None:
            raise RuntimeError("this run has no Blob storage to stop or start")
        state = await self._storage.storage_action(action)
        return web.json_response(state)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as error:
        raise ValueError(f"the body is not JSON: {error}") from None


def _write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


class ControlError(RuntimeError):
    pass


@dataclass(frozen=True)
class ControlClient:
    """Blocking client for the CLI and tests; reads `RUN_DIR/control.json`."""

    url: str
    token: str

    @classmethod
    def for_run(cls, run_dir: Path) -> ControlClient:
        path = run_dir / CONTROL_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ControlError(f"no run in progress at {run_dir} ({path} does not exist)") from None
        except (OSError, json.JSONDecodeError) as error:
            raise ControlError(f"cannot read {path}: {error}") from None
        url = data.get("url", "")
        if not isinstance(url, str) or not url.startswith("http://127."):
            # The token must never travel anywhere but this machine's loopback.
            raise ControlError(f"{path}: url {url!r} is not a loopback http address")
        return cls(url=url, token=str(data.get("token", "")))

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def get_twin(self, module: str) -> dict[str, Any]:
        return self._call("GET", f"/twins/{_segment(module)}")

    def patch_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"/twins/{_segment(module)}/desired", dict(patch))

    def invoke_method(
        self, module: str, method: str, payload: Any = None, wait_s: float = 30
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/modules/{_segment(module)}/methods/{_segment(method)}",
            {"payload": payload, "timeout": wait_s},
            read_within=wait_s + 10,
        )

    def module_action(self, module: str, action: ModuleAction) -> dict[str, Any]:
        # A graceful stop may take the module's whole grace period.
        return self._call("POST", f"/modules/{_segment(module)}/{action}", read_within=60)

    def storage_action(self, action: StorageAction) -> dict[str, Any]:
        # Starting waits until Azurite answers again, which can take its whole start-up time.
        return self._call("POST", f"/storage/{_segment(action)}", read_within=90)

    def _call(
        self, verb: str, path: str, body: Mapping[str, Any] | None = None, read_within: float = 30
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - url checked to be loopback http in for_run
            self.url + path,
            data=data,
            method=verb,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=read_within) as response:  # noqa: S310
                result: dict[str, Any] = json.loads(response.read() or b"{}")
                return result
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise ControlError(f"{verb} {path}: HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ControlError(f"{verb} {path}: cannot reach the run at {self.url}: {error}") from None


def _segment(name: str) -> str:
    return urllib.parse.quote(name, safe="")
