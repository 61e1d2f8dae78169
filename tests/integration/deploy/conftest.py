"""A stand-in IoT Hub: HTTPS on a random loopback address, checking SAS auth and recording every request.

It answers the configuration REST calls the way IoT Hub does (status codes and JSON shapes), so the real
azure-iot-hub SDK runs unpatched against it; only the CA it trusts (REQUESTS_CA_BUNDLE) differs.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edgesim.certs import ensure_certificates, server_ssl_context
from edgesim.sas import SasError, verify_token

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

KEY = b"edgeloop-test-shared-access-key!"
KEY_NAME = "iothubowner"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeHub:
    host: str
    port: int
    ca_file: Path
    requests: list[Recorded] = field(default_factory=list)
    configurations: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hostname(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        key = base64.b64encode(KEY).decode("ascii")
        return f"HostName={self.hostname};SharedAccessKeyName={KEY_NAME};SharedAccessKey={key}"

    @property
    def key_text(self) -> str:
        return base64.b64encode(KEY).decode("ascii")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def _answer(self, status: int, body: Any = None) -> None:
            payload = b"" if body is None else json.dumps(body).encode("utf-8")
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body: Any = json.loads(raw) if raw else {}
            with hub.lock:
                hub.requests.append(
                    Recorded(self.command, url.path, parse_qs(url.query), dict(self.headers.items()), body)
                )
            try:
                verify_token(self.headers.get("Authorization", ""), KEY, hub.hostname)
            except SasError as error:
                self._answer(401, {"Message": f"unauthorized: {error}"})
                return
            parts = url.path.strip("/").split("/")
            if self.command == "PUT" and len(parts) == 2 and parts[0] == "configurations":
                with hub.lock:
                    if parts[1] in hub.configurations and "If-Match" not in self.headers:
                        self._answer(409, {"Message": "ErrorCode:ConfigurationAlreadyExists"})
                        return
                    created = {**body, "etag": "MQ==", "createdTimeUtc": "2026-01-01T00:00:00Z"}
                    hub.configurations[parts[1]] = created
                self._answer(200, created)
            elif self.command == "GET" and parts == ["configurations"]:
                with hub.lock:
                    self._answer(200, list(hub.configurations.values()))
            elif self.command == "POST" and len(parts) == 3 and parts[2] == "applyConfigurationContent":
                self._answer(204)
            else:
                self._answer(404, {"Message": "not found"})

        do_GET = do_PUT = do_POST = _handle

    return Handler


def _free_loopback() -> str:
    for _ in range(200):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, 0))
            except OSError:
                continue
            return host
    raise RuntimeError("no loopback address found")


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    host = _free_loopback()
    certs = ensure_certificates(tmp_path / "certs", host)
    server = ThreadingHTTPServer((host, 0), BaseHTTPRequestHandler)
    hub = FakeHub(host=host, port=server.server_address[1], ca_file=certs.ca_cert)
    server.RequestHandlerClass = _handler(hub)
    server.socket = server_ssl_context(certs).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="fake-iothub", daemon=True)
    thread.start()
    # requests (under msrest) trusts this CA for the test's duration; nothing may go through a proxy.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs.ca_cert))
    monkeypatch.setenv("NO_PROXY", "*")
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
