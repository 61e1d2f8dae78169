"""An Azure REST boundary for tests: a TokenCredential that hands out a fixed token and an azure-core
transport that answers from a route table and records every request. The SDKs run unmodified above it;
nothing leaves the process."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpRequest, HttpResponse, HttpTransport
from azure.core.rest import HttpRequest as RestHttpRequest
from azure.core.rest import HttpResponse as RestHttpResponse
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

TOKEN = "test-token-not-a-secret"


class FixedTokenCredential:
    """A TokenCredential (the protocol azure-core checks) whose token never expires within a test."""

    def __init__(self) -> None:
        self.scopes_asked: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes_asked.append(scopes)
        return AccessToken(TOKEN, 4_102_444_800)


@dataclass
class Recorded:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def path(self) -> str:
        return unquote(urlsplit(self.url).path)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] | list[Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Recorded, "re.Match[str]"], Reply]


class _Chunks:
    """A body stream as azure-core's transports hand it out: an iterator object that callers may annotate
    (azure-storage-blob hangs the blob's properties on it)."""

    def __init__(self, response: Any, payload: bytes) -> None:
        # The attributes azure-core's StreamDownloadGenerator has, which callers read.
        self.response = response
        self.request = response.request
        self.block_size = 4096
        self.content_length = len(payload)
        self._pending = [payload] if payload else []

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        if not self._pending:
            raise StopIteration
        return self._pending.pop(0)


class _NothingToClose:
    def close(self) -> None:
        return None


def _encode(reply: Reply) -> tuple[bytes, dict[str, str]]:
    if isinstance(reply.body, (dict, list)):
        payload = json.dumps(reply.body).encode()
        content_type = "application/json; charset=utf-8"
    else:
        payload = reply.body or b""
        content_type = "application/octet-stream"
    return payload, {"Content-Type": content_type, "Content-Length": str(len(payload)), **reply.headers}


class LegacyCannedResponse(HttpResponse):
    """For pipelines that send `azure.core.pipeline.transport.HttpRequest` (azure-storage-blob's)."""

    def __init__(self, request: HttpRequest, reply: Reply) -> None:
        super().__init__(request, internal_response=_NothingToClose())
        payload, headers = _encode(reply)
        self.status_code = reply.status
        self.reason = "OK" if reply.status < 400 else "Error"
        self.headers = CaseInsensitiveDict(headers)
        self.content_type = self.headers.get("Content-Type")
        self._payload = payload

    def body(self) -> bytes:
        return self._payload

    def stream_download(self, pipeline: Any, **kwargs: Any) -> Iterator[bytes]:
        return _Chunks(self, self._payload)


def canned_response(request: HttpRequest | RestHttpRequest, reply: Reply) -> HttpResponse | RestHttpResponse:
    """The response type must match the request's: rest requests (azure-ai-ml's generated clients)
    expect `azure.core.rest` responses with `.json()`, legacy ones `.body()`, like azure-core's own."""
    if not isinstance(request, RestHttpRequest):
        return LegacyCannedResponse(request, reply)
    payload, headers = _encode(reply)

    def chunks(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        # azure-core calls this (pipeline, response) or with keywords, depending on the caller.
        return _Chunks(kwargs.get("response", args[1] if len(args) > 1 else None), payload)

    return HttpResponseImpl(
        request=request,
        internal_response=_NothingToClose(),
        status_code=reply.status,
        reason="OK" if reply.status < 400 else "Error",
        content_type=headers["Content-Type"],
        headers=CaseInsensitiveDict(headers),
        stream_download_generator=chunks,
    )


class RecordingTransport(HttpTransport[Any, Any]):
    """Routes are (METHOD, regex over the decoded URL path) → handler; an unrouted request is answered 501 and
    kept in `unrouted` so a test can fail on it rather than on whatever the SDK makes of the error."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.unrouted: list[Recorded] = []
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def route(self, method: str, pattern: str, handler: Handler | Reply, *, first: bool = False) -> None:
        """`first` puts the route before the others: a test overriding one answer of a wired service."""
        if isinstance(handler, Reply):
            canned = handler
            handler = lambda _request, _match: canned  # noqa: E731
        entry = (method, re.compile(pattern), handler)
        self._routes.insert(0, entry) if first else self._routes.append(entry)

    def __enter__(self) -> RecordingTransport:
        return self

    def __exit__(self, *args: object) -> None:
        return None

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def send(self, request: Any, **kwargs: Any) -> Any:
        body: Any = request.body if request.body is not None else b""
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode()
        recorded = Recorded(request.method, request.url, dict(request.headers), bytes(body))
        self.requests.append(recorded)
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(recorded.path)
            if method == recorded.method and match:
                return canned_response(request, handler(recorded, match))
        self.unrouted.append(recorded)
        return canned_response(
            request,
            Reply(501, {"error": {"code": "NotRouted", "message": f"{recorded.method} {recorded.path}"}}),
        )

    def find(self, method: str, pattern: str) -> list[Recorded]:
        compiled = re.compile(pattern)
        return [r for r in self.requests if r.method == method and compiled.fullmatch(r.path)]


SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "edge-rg"
WORKSPACE = "edge-ws"
WS_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
ACCOUNT = "edgeloopstore"
CONTAINER = "azureml-blobstore-0001"
BLOB_HOST = f"{ACCOUNT}.blob.core.windows.net"
ACCOUNT_KEY = "a2V5LWZvci10ZXN0cy1vbmx5LW5vdC1hLXNlY3JldA=="


def _not_found(what: str) -> Reply:
    return Reply(404, {"error": {"code": "UserError", "message": f"{what} not found"}})


class FakeWorkspace:
    """Azure ML's REST API and the workspace's Blob container, as far as edgeloop uses them, held in dicts.
    Replies are shaped like the service's (ARM ids, `properties`, Blob headers and XML listings)."""

    def __init__(self) -> None:
        self.transport = RecordingTransport()
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_states: dict[str, list[str]] = {}
        self.code_versions: dict[str, dict[str, Any]] = {}
        self._wire()

    # --- routes ---------------------------------------------------------------------------------------------

    def _wire(self) -> None:
        t = self.transport
        ws = re.escape(WS_PATH)
        t.route("GET", ws + r"/models", self._list_containers)
        t.route("GET", ws + r"/models/(?P<name>[^/]+)/versions", self._list_versions)
        t.route("GET", ws + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._get_version)
        t.route("PUT", ws + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._put_version)
        t.route("GET", ws + r"/datastores/(?P<name>[^/]+)", self._get_datastore)
        t.route(
            "POST",
            ws + r"/datastores/(?P<name>[^/]+)/listSecrets",
            Reply(200, {"secretsType": "AccountKey", "key": ACCOUNT_KEY}),
        )
        t.route("GET", ws + r"/codes/(?P<name>[^/]+)/versions", self._list_codes)
        t.route("GET", ws + r"/codes/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._get_code)
        t.route("GET", ws + r"/environments/(?P<name>[^/]+)/versions", self._list_environments)
        t.route("PUT", ws + r"/jobs/(?P<name>[^/]+)", self._put_job)
        t.route("GET", ws + r"/jobs/(?P<name>[^/]+)", self._get_job)
        t.route("PUT", rf"/{CONTAINER}/(?P<blob>.+)", self._put_blob)
        t.route("GET", rf"/{CONTAINER}/(?P<blob>.+)", self._get_blob)
        t.route("GET", rf"/{CONTAINER}", self._list_blobs)

    def _version_json(self, name: str, version: str, properties: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"{WS_PATH}/models/{name}/versions/{version}",
            "name": version,
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            # The service always answers with `flavors`, and the SDK relies on it.
            "properties": {"flavors": {}, **properties},
            "systemData": {"createdAt": "2026-11-23T02:00:00Z", "createdBy": "test"},
        }

    def _list_containers(self, request: Recorded, match: re.Match[str]) -> Reply:
        names = sorted({name for name, _ in self.models})
        value = [{"id": f"{WS_PATH}/models/{n}", "name": n, "properties": {}} for n in names]
        return Reply(200, {"value": value})

    def _list_versions(self, request: Recorded, match: re.Match[str]) -> Reply:
        name = match["name"]
        value = [body for (n, _), body in self.models.items() if n == name]
        return Reply(200, {"value": value})

    def _get_version(self, request: Recorded, match: re.Match[str]) -> Reply:
        body = self.models.get((match["name"], match["version"]))
        return Reply(200, body) if body else _not_found(f"model {match['name']}:{match['version']}")

    def _put_version(self, request: Recorded, match: re.Match[str]) -> Reply:
        key = (match["name"], match["version"])
        sent = request.json()["properties"]
        existing = self.models.get(key)
        if existing and existing["properties"]["modelUri"] != sent["modelUri"]:
            # What Azure ML answers when a version's files would change.
            return Reply(400, {"error": {"code": "UserError", "message": "asset path cannot be changed"}})
        self.models[key] = self._version_json(*key, sent)
        return Reply(201 if existing is None else 200, self.models[key])

    def _get_datastore(self, request: Recorded, match: re.Match[str]) -> Reply:
        name = match["name"]
        return Reply(
            200,
            {
                "id": f"{WS_PATH}/datastores/{name}",
                "name": name,
                "properties": {
                    "datastoreType": "AzureBlob",
                    "accountName": ACCOUNT,
                    "containerName": CONTAINER,
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "credentials": {"credentialsType": "AccountKey"},
                    "isDefault": True,
                },
            },
        )

    def add_code_version(self, name: str = "code-0001", version: str = "1") -> None:
        self.code_versions[name] = {
            "id": f"{WS_PATH}/codes/{name}/versions/{version}",
            "name": version,
            "properties": {"codeUri": f"https://{BLOB_HOST}/{CONTAINER}/LocalUpload/x", "isAnonymous": True},
        }

    def _list_codes(self, request: Recorded, match: re.Match[str]) -> Reply:
        return Reply(200, {"value": list(self.code_versions.values())})

    def _get_code(self, request: Recorded, match: re.Match[str]) -> Reply:
        body = self.code_versions.get(match["name"])
        return Reply(200, body) if body else _not_found(f"code {match['name']}")

    def _list_environments(self, request: Recorded, match: re.Match[str]) -> Reply:
        name = match["name"]
        version = {
            "id": f"{WS_PATH}/environments/{name}/versions/7",
            "name": "7",
            "properties": {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04"},
        }
        return Reply(200, {"value": [version]})

    def _put_job(self, request: Recorded, match: re.Match[str]) -> Reply:
        name = match["name"]
        body = request.json()
        body["properties"]["status"] = "NotStarted"
        body["properties"]["services"] = {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}"}}
        self.jobs[name] = {"id": f"{WS_PATH}/jobs/{name}", "name": name, **body}
        return Reply(201, self.jobs[name])

    def _get_job(self, request: Recorded, match: re.Match[str]) -> Reply:
        name = match["name"]
        if name not in self.jobs:
            return _not_found(f"job {name}")
        states = self.job_states.get(name, [])
        if states:
            # Each read moves the job on by one state; the last one stays.
            self.jobs[name]["properties"]["status"] = states.pop(0) if len(states) > 1 else states[0]
        return Reply(200, self.jobs[name])

    def _put_blob(self, request: Recorded, match: re.Match[str]) -> Reply:
        blob = match["blob"]
        if request.headers.get("If-None-Match") == "*" and blob in self.blobs:
            return Reply(409, b"", {"x-ms-error-code": "BlobAlreadyExists"})
        self.blobs[blob] = request.body
        return Reply(201, b"", {"ETag": '"0x1"', "Last-Modified": "Mon, 23 Nov 2026 02:00:00 GMT"})

    def _get_blob(self, request: Recorded, match: re.Match[str]) -> Reply:
        blob = match["blob"]
        if blob not in self.blobs:
            return Reply(404, b"", {"x-ms-error-code": "BlobNotFound"})
        data = self.blobs[blob]
        headers = {
            "ETag": '"0x1"',
            "Last-Modified": "Mon, 23 Nov 2026 02:00:00 GMT",
            "x-ms-blob-type": "BlockBlob",
            "Content-Range": f"bytes 0-{max(len(data) - 1, 0)}/{len(data)}",
        }
        return Reply(
            206 if "Range" in request.headers or "x-ms-range" in request.headers else 200, data, headers
        )

    def _list_blobs(self, request: Recorded, match: re.Match[str]) -> Reply:
        prefix = request.query.get("prefix", [""])[0]
        items = "".join(
            f"<Blob><Name>{name}</Name><Properties><Content-Length>{len(data)}</Content-Length>"
            f"<BlobType>BlockBlob</BlobType></Properties></Blob>"
            for name, data in sorted(self.blobs.items())
            if name.startswith(prefix)
        )
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<EnumerationResults ServiceEndpoint="https://{BLOB_HOST}/" ContainerName="{CONTAINER}">'
            f"<Prefix>{prefix}</Prefix><Blobs>{items}</Blobs><NextMarker /></EnumerationResults>"
        )
        return Reply(200, xml.encode(), {"Content-Type": "application/xml"})

    # --- views for assertions ---------------------------------------------------------------------------

    def arm_requests(self) -> list[Recorded]:
        return [r for r in self.transport.requests if r.host == "management.azure.com"]

    def blob_requests(self) -> list[Recorded]:
        return [r for r in self.transport.requests if r.host == BLOB_HOST]


def write_model_dir(folder: Path, *, name: str = "sensor-ae", payload: bytes | None = None) -> Path:
    """A MODEL_DIR as `python -m ml train` writes it; the registry never parses the ONNX bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    model = payload if payload is not None else b"onnx-graph:" + os.urandom(64)
    (folder / "model.onnx").write_bytes(model)
    card = {
        "schema": "edgeloop.model-card/1",
        "name": name,
        "version": "1",
        "created": "2026-11-23T02:00:00Z",
        "task": "anomaly-detection",
        "model_file": "model.onnx",
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "inputs": {"name": "features", "dtype": "float32"},
        "outputs": {"score": "score"},
        "feature_columns": ["temperature", "vibration", "pressure", "current"],
        "window": 2,
        "threshold": 0.0123,
        "threshold_quantile": 0.995,
        "training_data": {"sha256": "ab" * 32, "rows": 10000, "files": 4},
        "framework": {"trainer": "edgeloop.ml", "torch": "2.13.0", "onnx_opset": 17},
        "lineage": {"job_id": "edgeloop-train-abc", "parent_version": None, "registered_by": "local"},
    }
    (folder / "model.json").write_text(json.dumps(card), encoding="utf-8")
    return folder
