"""The edgeHub emulator: what azure-iot-device needs from edgeHub, on one loopback address.

Modules connect with MQTT 3.1.1 over TLS (see `mqtt_server` for the transport and why it is not an amqtt
`Broker`), authenticate with SAS tokens signed by their per-module keys, and then:

- publish to their outputs; the routes of the deployment manifest (`routing`) decide which endpoints take a
  message, and it is stored durably (`store`) before the PUBACK, so nothing acknowledged is lost;
- receive on their inputs: per endpoint, in the store's order (priority, then FIFO), one message in flight at
  a time so priority order is exact; a message leaves the store only on the module's PUBACK and is sent again
  (DUP) after a reconnect if that never came;
- get and patch their twin and receive desired-property patches live; answer direct methods.

`$upstream` stands for IoT Hub: messages are appended to `upstream_path` (JSON lines) and fsynced before they
leave the store (at least once: a crash between the two repeats a line, as edgeHub may repeat a message).

Like edgeHub, sessions are persistent when a client connects with clean-session 0 (azure-iot-device always
does, and never re-subscribes after a reconnect): subscriptions are kept per module across connections and
across emulator restarts (`sessions.json` in the state directory).

Everything runs on the one asyncio loop that called `start()`; the stores are single-threaded by design.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.pingreq import PingReqPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.subscribe import SubscribePacket
from amqtt.mqtt.unsubscribe import UnsubscribePacket

from edgesim import mqtt_server as mqtt
from edgesim.certs import CertPaths, ensure_certificates, server_ssl_context
from edgesim.messages import HubMessage
from edgesim.routing import Route, parse_routes, route_message
from edgesim.sas import SasError, generate_key, module_resource, verify_token
from edgesim.store import MessageStore
from edgesim.twins import TwinError, TwinStore

log = logging.getLogger(__name__)

UPSTREAM = "$upstream"
WORKLOAD_API_VERSION = "2019-01-30"
MAX_CONNECT_BYTES = 64 * 1024
MAX_TOPIC_BYTES = 64 * 1024
EXPIRY_SWEEP_SECS = 1.0
UPSTREAM_BATCH = 100
SERVER_HOSTNAMES = ("edgehub", "localhost")

# Wire names of system properties on module topics (azure-iot-device's mqtt_topic_iothub.py and edgeHub's
# converter) and the query names HubMessage uses for them.
_WIRE_TO_SYSTEM = {
    "$.mid": "messageId",
    "$.cid": "correlationId",
    "$.uid": "userId",
    "$.ct": "contentType",
    "$.ce": "contentEncoding",
    "$.exp": "expiryTimeUtc",
    "$.ifid": "interfaceId",
    "$.on": "outputName",
    "$.schema": "messageSchema",
    "$.ctime": "creationTimeUtc",
}
# What goes to a receiving module. edgeHub also tells it who sent the message ($.cdid/$.cmid); the Python SDK
# has no fields for those and surfaces them as custom properties, exactly as against the real edgeHub.
_SYSTEM_TO_WIRE_OUT = [
    ("messageId", "$.mid"),
    ("correlationId", "$.cid"),
    ("userId", "$.uid"),
    ("contentType", "$.ct"),
    ("contentEncoding", "$.ce"),
    ("expiryTimeUtc", "$.exp"),
    ("connectionDeviceId", "$.cdid"),
    ("connectionModuleId", "$.cmid"),
]


@dataclass(frozen=True)
class HubConfig:
    host: str
    device_id: str
    iothub_hostname: str
    state_dir: Path
    upstream_path: Path
    modules: tuple[str, ...]
    routes: Mapping[str, Any]
    initial_desired: Mapping[str, Mapping[str, Any]]
    default_ttl_secs: int = 7200
    port: int = 8883
    max_message_bytes: int = 262144
    connect_timeout_secs: float = 10.0  # a connection must have sent CONNECT by then


@dataclass
class HubStats:
    routed: dict[str, int]
    upstream_messages: int
    delivered: dict[str, int]
    pending: dict[str, int]
    expired: dict[str, int]
    connected: list[str]
    refused_connections: int
    last_activity: float


@dataclass
class _Session:
    """One authenticated module connection."""

    module: str
    connection: mqtt.MqttConnection
    persistent: bool
    subscriptions: set[str]
    inflight: dict[int, tuple[str, int]] = field(default_factory=dict)  # packet id -> (endpoint, seq)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _parse_query(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        result[urllib.parse.unquote(name)] = urllib.parse.unquote(value)
    return result


def _body_for_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return body.decode("utf-8", errors="replace")


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class EdgeHub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self._keys: dict[str, dict[str, str]] = {}
        self._certs: CertPaths | None = None
        self._store = MessageStore(config.state_dir / "store.db")
        self._twins = TwinStore(config.state_dir / "twins.json")
        self._routes: list[Route] = []
        self._server: mqtt.MqttServer | None = None
        self._sessions: dict[str, _Session] = {}
        self._saved_subscriptions: dict[str, list[str]] = {}
        self._sent_seqs: set[int] = set()
        self._method_calls: dict[str, tuple[_Session, asyncio.Future[tuple[int, Any]]]] = {}
        self._method_ids = itertools.count(1)
        self._routed: Counter[str] = Counter()
        self._delivered: Counter[str] = Counter()
        self._upstream_messages = 0
        self._refused = 0
        self._last_activity = 0.0
        self._upstream_wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._started = False

    # ----------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cfg.upstream_path.parent.mkdir(parents=True, exist_ok=True)
        self._routes = parse_routes(cfg.routes, cfg.default_ttl_secs)
        self._load_keys()
        self._certs = ensure_certificates(cfg.state_dir / "certs", cfg.host, SERVER_HOSTNAMES)
        sessions_path = cfg.state_dir / "sessions.json"
        if sessions_path.exists():
            self._saved_subscriptions = {
                module: list(topics)
                for module, topics in json.loads(sessions_path.read_text("utf-8")).items()
            }
        self._store.open()
        self._twins.open(cfg.initial_desired)
        self._upstream_wake = asyncio.Event()
        self._upstream_wake.set()  # drain what a previous run left
        self._server = mqtt.MqttServer(
            cfg.host,
            cfg.port,
            server_ssl_context(self._certs),
            self._handle,
            on_handshake_failure=self._on_handshake_failure,
            handshake_timeout=cfg.connect_timeout_secs,
        )
        try:
            await self._server.start()
        except OSError:
            self._store.close()  # e.g. the address is taken: leave nothing open behind a failed start
            raise
        self._background = [
            asyncio.create_task(self._upstream_pump(), name="edgesim-upstream"),
            asyncio.create_task(self._expiry_sweep(), name="edgesim-expiry"),
        ]
        self._started = True
        self._last_activity = time.time()
        log.info("edgeHub emulator listening on %s:%d", cfg.host, cfg.port)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._server is not None:
            await self._server.stop()
            self._server = None
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        for _, future in self._method_calls.values():
            if not future.done():
                future.set_result((503, {"message": "edgeHub stopped"}))
        self._save_sessions()
        self._store.close()

    # -------------------------------------------------------------------------------------- facade

    @property
    def ca_cert_path(self) -> Path:
        if self._certs is None:
            raise RuntimeError("EdgeHub.start() has not run")
        return self._certs.ca_cert

    def module_key(self, module: str) -> bytes:
        return base64.b64decode(self._module_entry(module)["key"])

    def connection_string(self, module: str) -> str:
        cfg = self.config
        key = self._module_entry(module)["key"]
        return (
            f"HostName={cfg.iothub_hostname};GatewayHostName={cfg.host};DeviceId={cfg.device_id};"
            f"ModuleId={module};SharedAccessKey={key}"
        )

    def edge_environment(self, module: str, workload_uri: str) -> dict[str, str]:
        cfg = self.config
        return {
            "IOTEDGE_WORKLOADURI": workload_uri,
            "IOTEDGE_DEVICEID": cfg.device_id,
            "IOTEDGE_MODULEID": module,
            "IOTEDGE_MODULEGENERATIONID": self.generation_id(module),
            "IOTEDGE_IOTHUBHOSTNAME": cfg.iothub_hostname,
            "IOTEDGE_GATEWAYHOSTNAME": cfg.host,
            "IOTEDGE_APIVERSION": WORKLOAD_API_VERSION,
            "IOTEDGE_AUTHSCHEME": "sasToken",
        }

    def generation_id(self, module: str) -> str:
        return self._module_entry(module)["generation_id"]

    def ca_certificate_pem(self) -> str:
        return self.ca_cert_path.read_text("ascii")

    async def patch_desired(self, module: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        delivered = self._twins.patch_desired(module, patch)
        session = self._sessions.get(module)
        if session is not None and "$iothub/twin/PATCH/properties/desired/#" in session.subscriptions:
            topic = f"$iothub/twin/PATCH/properties/desired/?$version={delivered.get('$version', '')}"
            with contextlib.suppress(ConnectionError, OSError):
                await session.connection.send(mqtt.publish(topic, json.dumps(delivered).encode(), None, 0))
        return delivered

    def get_twin(self, module: str) -> dict[str, Any]:
        return self._twins.get(module)

    async def invoke_method(
        self,
        module: str,
        method: str,
        payload: Any,
        timeout: float = 30,  # noqa: ASYNC109 - the facade's contract, as IoT Hub's responseTimeoutInSeconds
    ) -> tuple[int, Any]:
        session = self._sessions.get(module)
        if session is None or "$iothub/methods/POST/#" not in session.subscriptions:
            return 404, {"errorCode": 404103, "message": f"module {module} is not connected for methods"}
        rid = format(next(self._method_ids), "x")
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._method_calls[rid] = (session, future)
        try:
            topic = f"$iothub/methods/POST/{_quote(method)}/?$rid={rid}"
            await session.connection.send(mqtt.publish(topic, json.dumps(payload).encode(), None, 0))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return 504, {
                "errorCode": 504101,
                "message": "Timed out waiting for the response from the module.",
            }
        except (ConnectionError, OSError):
            return 404, {"errorCode": 404103, "message": f"module {module} disconnected"}
        finally:
            self._method_calls.pop(rid, None)

    def stats(self) -> HubStats:
        pending = {
            endpoint: self._store.pending(endpoint) for endpoint in self._store.endpoints_with_pending()
        }
        return HubStats(
            routed=dict(self._routed),
            upstream_messages=self._upstream_messages,
            delivered=dict(self._delivered),
            pending={endpoint: count for endpoint, count in pending.items() if count},
            expired=dict(self._store.expired()),
            connected=sorted(self._sessions),
            refused_connections=self._refused,
            last_activity=self._last_activity,
        )

    # ------------------------------------------------------------------------------------ identities

    def _module_entry(self, module: str) -> dict[str, str]:
        try:
            return self._keys[module]
        except KeyError:
            raise KeyError(
                f"unknown module {module!r} (not in HubConfig.modules, or start() not run)"
            ) from None

    def _load_keys(self) -> None:
        path = self.config.state_dir / "keys.json"
        keys: dict[str, dict[str, str]] = json.loads(path.read_text("utf-8")) if path.exists() else {}
        changed = False
        for module in self.config.modules:
            if module not in keys:
                keys[module] = {
                    "key": base64.b64encode(generate_key()).decode("ascii"),
                    "generation_id": base64.b32encode(os.urandom(10)).decode("ascii").lower(),
                }
                changed = True
        if changed or not path.exists():
            _write_json_atomic(path, keys)
            path.chmod(0o600)
        self._keys = {module: keys[module] for module in self.config.modules}

    def _save_sessions(self) -> None:
        _write_json_atomic(self.config.state_dir / "sessions.json", self._saved_subscriptions)

    def _authenticate(self, packet: ConnectPacket) -> tuple[str | None, int]:
        cfg = self.config
        header, payload = packet.variable_header, packet.payload
        if header is None or payload is None:
            return None, mqtt.CONNACK_BAD_PROTOCOL
        if header.proto_name != "MQTT" or header.proto_level != 4:
            return None, mqtt.CONNACK_BAD_PROTOCOL
        device, sep, module = (payload.client_id or "").partition("/")
        if not sep or payload.client_id_is_random:
            return None, mqtt.CONNACK_IDENTIFIER_REJECTED
        if device != cfg.device_id or module not in self._keys:
            return None, mqtt.CONNACK_NOT_AUTHORIZED
        prefix = f"{cfg.iothub_hostname}/{device}/{module}/".lower()
        if not payload.username or not payload.username.lower().startswith(prefix) or not payload.password:
            return None, mqtt.CONNACK_BAD_CREDENTIALS
        try:
            verify_token(
                payload.password,
                self.module_key(module),
                module_resource(cfg.iothub_hostname, device, module),
            )
        except SasError as exc:
            log.warning("refused %s: %s", payload.client_id, exc)
            return None, mqtt.CONNACK_NOT_AUTHORIZED
        return module, mqtt.CONNACK_ACCEPTED

    # ----------------------------------------------------------------------------------- connections

    def _on_handshake_failure(self, peer: str, exc: Exception) -> None:
        self._refused += 1
        log.info("refused %s: TLS handshake failed: %s", peer, exc or type(exc).__name__)

    async def _handle(self, connection: mqtt.MqttConnection) -> None:
        try:
            packet = await asyncio.wait_for(
                mqtt.read_packet(connection.reader, MAX_CONNECT_BYTES), self.config.connect_timeout_secs
            )
        except (mqtt.ProtocolViolation, EOFError, TimeoutError, OSError) as exc:
            self._refused += 1
            log.info("refused %s before CONNECT: %s", connection.peer, exc or type(exc).__name__)
            return
        if not isinstance(packet, ConnectPacket):
            self._refused += 1
            log.info("refused %s: first packet is not CONNECT", connection.peer)
            return
        module, code = self._authenticate(packet)
        if module is None or code != mqtt.CONNACK_ACCEPTED:
            self._refused += 1
            with contextlib.suppress(ConnectionError, OSError):
                await connection.send(mqtt.connack(code))
            return
        previous = self._sessions.pop(module, None)
        if previous is not None:
            # MQTT 3.1.4-2: a second connection with the same client id takes over.
            log.info("%s connected again; closing its previous connection", module)
            await previous.connection.close()
        assert packet.variable_header is not None
        clean = packet.variable_header.clean_session_flag
        if clean:
            self._saved_subscriptions.pop(module, None)
            self._save_sessions()
        session_present = not clean and module in self._saved_subscriptions
        session = _Session(
            module=module,
            connection=connection,
            persistent=not clean,
            subscriptions=set(self._saved_subscriptions.get(module, [])),
        )
        self._sessions[module] = session
        self._last_activity = time.time()
        pump = asyncio.create_task(self._pump(session), name=f"edgesim-deliver-{module}")
        try:
            await connection.send(mqtt.connack(mqtt.CONNACK_ACCEPTED, session_present))
            log.info("%s connected from %s", module, connection.peer)
            await self._read_loop(session, packet.variable_header.keep_alive)
        except (mqtt.ProtocolViolation, EOFError, TimeoutError, OSError) as exc:
            log.info("closing %s: %s", module, exc or type(exc).__name__)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            if self._sessions.get(module) is session:
                del self._sessions[module]
            for rid, (caller, future) in list(self._method_calls.items()):
                if caller is session and not future.done():
                    future.set_result(
                        (404, {"errorCode": 404103, "message": f"module {module} disconnected"})
                    )
                    self._method_calls.pop(rid, None)
            log.info("%s disconnected", module)

    async def _read_loop(self, session: _Session, keep_alive: int) -> None:
        # MQTT 3.1.2.10: the server may close after 1.5 keep-alive periods without a packet.
        timeout = keep_alive * 1.5 if keep_alive else None
        limit = self.config.max_message_bytes + MAX_TOPIC_BYTES
        connection = session.connection
        while True:
            packet = await asyncio.wait_for(mqtt.read_packet(connection.reader, limit), timeout)
            if not isinstance(packet, PingReqPacket):  # keep-alives are not work: they must not hold off idle
                self._last_activity = time.time()
            if isinstance(packet, PublishPacket):
                await self._on_publish(session, packet)
            elif isinstance(packet, PubackPacket):
                self._on_puback(session, packet.packet_id)
            elif isinstance(packet, SubscribePacket):
                await self._on_subscribe(session, packet)
            elif isinstance(packet, UnsubscribePacket):
                await self._on_unsubscribe(session, packet)
            elif isinstance(packet, PingReqPacket):
                await connection.send(mqtt.pingresp())
            elif isinstance(packet, DisconnectPacket):
                return
            else:
                raise mqtt.ProtocolViolation(f"unexpected {type(packet).__name__}")

    # ------------------------------------------------------------------------------- subscriptions

    def _allowed_filters(self, module: str) -> set[str]:
        return {
            f"devices/{self.config.device_id}/modules/{module}/inputs/#",
            "$iothub/methods/POST/#",
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
        }

    def _inputs_filter(self, module: str) -> str:
        return f"devices/{self.config.device_id}/modules/{module}/inputs/#"

    async def _on_subscribe(self, session: _Session, packet: SubscribePacket) -> None:
        allowed = self._allowed_filters(session.module)
        codes: list[int] = []
        topics = packet.payload.topics if packet.payload else []
        if not topics:
            raise mqtt.ProtocolViolation("SUBSCRIBE without a topic filter (MQTT-3.8.3-3)")
        for topic_filter, qos in topics:
            if topic_filter in allowed:
                session.subscriptions.add(topic_filter)
                codes.append(min(qos, 1))
            else:
                log.warning("%s may not subscribe to %r", session.module, topic_filter)
                codes.append(mqtt.SUBACK_FAILURE)
        self._remember_subscriptions(session)
        assert packet.variable_header is not None
        await session.connection.send(mqtt.suback(packet.variable_header.packet_id, codes))
        session.wake.set()

    async def _on_unsubscribe(self, session: _Session, packet: UnsubscribePacket) -> None:
        topics = packet.payload.topics if packet.payload else []
        if not topics:
            raise mqtt.ProtocolViolation("UNSUBSCRIBE without a topic filter (MQTT-3.10.3-2)")
        for topic_filter in topics:
            session.subscriptions.discard(topic_filter)
        self._remember_subscriptions(session)
        assert packet.variable_header is not None
        await session.connection.send(mqtt.unsuback(packet.variable_header.packet_id))

    def _remember_subscriptions(self, session: _Session) -> None:
        if not session.persistent:
            return
        topics = sorted(session.subscriptions)
        if self._saved_subscriptions.get(session.module) != topics:
            self._saved_subscriptions[session.module] = topics
            self._save_sessions()

    # -------------------------------------------------------------------------------------- publish

    async def _on_publish(self, session: _Session, packet: PublishPacket) -> None:
        topic = packet.topic_name or ""
        body = packet.data or b""
        events = f"devices/{self.config.device_id}/modules/{session.module}/messages/events"
        if topic == events or topic.startswith(events + "/"):
            if len(body) > self.config.max_message_bytes:
                raise mqtt.ProtocolViolation(
                    f"message of {len(body)} bytes over the limit of {self.config.max_message_bytes}"
                )
            message = self._message_from_topic(session.module, topic[len(events) + 1 :], body)
            self._route(message)
        elif topic.startswith("$iothub/twin/"):
            await self._on_twin_request(session, topic, body)
        elif topic.startswith("$iothub/methods/res/"):
            self._on_method_response(session, topic, body)
        else:
            raise mqtt.ProtocolViolation(f"{session.module} may not publish to {topic!r}")
        if packet.qos == 1 and packet.packet_id is not None:
            await session.connection.send(mqtt.puback(packet.packet_id))

    def _message_from_topic(self, module: str, properties: str, body: bytes) -> HubMessage:
        app: dict[str, str] = {}
        system: dict[str, str] = {}
        for name, value in _parse_query(properties.lstrip("?")).items():
            system_name = _WIRE_TO_SYSTEM.get(name)
            if system_name is not None:
                system[system_name] = value
            elif name == "$.to":
                continue
            else:
                app[name] = value
        system["connectionDeviceId"] = self.config.device_id
        system["connectionModuleId"] = module
        system["enqueuedTime"] = (
            dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        return HubMessage(body=body, app_properties=app, system_properties=system)

    def _route(self, message: HubMessage) -> None:
        for route in route_message(self._routes, message):
            endpoint = route.sink.endpoint_id
            ttl = route.ttl_secs if route.ttl_secs is not None else self.config.default_ttl_secs
            self._store.add(endpoint, route.name, message, route.priority, ttl)
            self._routed[route.name] += 1
            if endpoint == UPSTREAM:
                self._upstream_wake.set()
            elif route.sink.module is not None and (session := self._sessions.get(route.sink.module)):
                session.wake.set()

    # ----------------------------------------------------------------------------------------- twins

    async def _on_twin_request(self, session: _Session, topic: str, body: bytes) -> None:
        path, _, query = topic.partition("?")
        rid = _parse_query(query).get("$rid", "")
        status, reply, version = 200, b"", None
        try:
            if path == "$iothub/twin/GET/":
                reply = json.dumps(self._twins.get(session.module)).encode()
            elif path == "$iothub/twin/PATCH/properties/reported/":
                patch = json.loads(body.decode("utf-8"))
                if not isinstance(patch, dict):
                    raise TwinError("reported patch must be a JSON object")
                version = self._twins.patch_reported(session.module, patch)
                status = 204
            else:
                status = 404
        except (TwinError, ValueError, UnicodeDecodeError) as exc:
            status, reply = 400, json.dumps({"message": str(exc)}).encode()
        if "$iothub/twin/res/#" not in session.subscriptions:
            return
        reply_topic = f"$iothub/twin/res/{status}/?$rid={_quote(rid)}"
        if version is not None:
            reply_topic += f"&$version={version}"
        await session.connection.send(mqtt.publish(reply_topic, reply, None, 0))

    # --------------------------------------------------------------------------------------- methods

    def _on_method_response(self, session: _Session, topic: str, body: bytes) -> None:
        path, _, query = topic.partition("?")
        rid = _parse_query(query).get("$rid", "")
        call = self._method_calls.get(rid)
        if call is None or call[0] is not session or call[1].done():
            log.info("%s answered unknown method call %r", session.module, rid)
            return
        try:
            status = int(path.rstrip("/").rsplit("/", 1)[-1])
        except ValueError:
            raise mqtt.ProtocolViolation(f"bad method response topic {topic!r}") from None
        payload: Any = None if not body else _body_for_json(body)
        call[1].set_result((status, payload))

    # -------------------------------------------------------------------------------------- delivery

    def _module_endpoints(self, module: str) -> list[str]:
        endpoints = {
            route.sink.endpoint_id
            for route in self._routes
            if route.sink.kind == "module" and route.sink.module == module
        }
        prefix = f"{module}/inputs/"
        endpoints.update(e for e in self._store.endpoints_with_pending() if e.startswith(prefix))
        return sorted(endpoints)

    async def _pump(self, session: _Session) -> None:
        """Feed a connected module its inputs, one message in flight per endpoint."""
        inputs_filter = self._inputs_filter(session.module)
        prefix = f"{session.module}/inputs/"
        while not session.connection.closed.is_set():
            session.wake.clear()
            if inputs_filter in session.subscriptions:
                busy = {endpoint for endpoint, _ in session.inflight.values()}
                for endpoint in self._module_endpoints(session.module):
                    if endpoint in busy:
                        continue
                    batch = self._store.next_batch(endpoint, 1)
                    if not batch:
                        continue
                    stored = batch[0]
                    packet_id = session.connection.next_packet_id(session.inflight)
                    topic = self._input_topic(session.module, endpoint[len(prefix) :], stored.message)
                    duplicate = stored.seq in self._sent_seqs
                    session.inflight[packet_id] = (endpoint, stored.seq)
                    self._sent_seqs.add(stored.seq)
                    try:
                        await session.connection.send(
                            mqtt.publish(topic, stored.message.body, packet_id, 1, duplicate)
                        )
                    except (ConnectionError, OSError):
                        return
            await session.wake.wait()

    def _input_topic(self, module: str, input_name: str, message: HubMessage) -> str:
        pairs = [
            (wire, message.system_properties[name])
            for name, wire in _SYSTEM_TO_WIRE_OUT
            if message.system_properties.get(name)
        ]
        pairs.extend(message.app_properties.items())
        properties = "&".join(f"{_quote(name)}={_quote(value)}" for name, value in pairs)
        return f"devices/{self.config.device_id}/modules/{module}/inputs/{_quote(input_name)}/{properties}"

    def _on_puback(self, session: _Session, packet_id: int) -> None:
        entry = session.inflight.pop(packet_id, None)
        if entry is None:
            return
        endpoint, seq = entry
        self._store.remove(seq)
        self._sent_seqs.discard(seq)
        self._delivered[endpoint] += 1
        session.wake.set()

    async def _upstream_pump(self) -> None:
        while True:
            await self._upstream_wake.wait()
            self._upstream_wake.clear()
            while batch := self._store.next_batch(UPSTREAM, UPSTREAM_BATCH):
                lines = []
                for stored in batch:
                    message = stored.message
                    record = {
                        "module": message.source_module,
                        "output": message.source_output,
                        "properties": message.app_properties,
                        "body": _body_for_json(message.body),
                        "system_properties": message.system_properties,
                    }
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
                await asyncio.to_thread(self._append_upstream, "".join(lines))
                for stored in batch:
                    self._store.remove(stored.seq)
                self._upstream_messages += len(batch)

    def _append_upstream(self, text: str) -> None:
        with self.config.upstream_path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    async def _expiry_sweep(self) -> None:
        """Drop expired messages even for endpoints nobody reads, so pending/expired counts stay true."""
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_SECS)
            self._store.purge_expired()
