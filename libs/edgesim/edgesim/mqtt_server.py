"""MQTT 3.1.1 over TLS: framing, packet codec and connection handling for the edgeHub emulator.

Choice: amqtt's packet classes (`amqtt.mqtt.*Packet`) encode and decode packets, and this module owns the
asyncio connection handling rather than subclassing amqtt's `Broker`. The broker's session and retry machinery
is built for publish/subscribe fan-out; edgeHub is not that: `$iothub` replies must go to exactly the
connection that asked, a module may publish only as itself, and an input message may leave the store only
after the receiving module's PUBACK. Owning the read loop gives that control directly, and framing here
(remaining length read and bounded *before* the body is read) means a hostile length can never make the
emulator buffer gigabytes.

Only the server side of 3.1.1 is implemented: CONNECT, PUBLISH QoS 0/1, PUBACK, SUBSCRIBE, UNSUBSCRIBE,
PINGREQ, DISCONNECT. QoS 2 is refused (IoT Hub refuses it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.adapters import BufferReader
from amqtt.errors import AMQTTError, CodecError, MQTTError, NoDataError
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.packet import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.pingreq import PingReqPacket
from amqtt.mqtt.pingresp import PingRespPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.subscribe import SubscribePacket
from amqtt.mqtt.unsuback import UnsubackPacket
from amqtt.mqtt.unsubscribe import UnsubscribePacket

log = logging.getLogger(__name__)

# CONNACK return codes (MQTT 3.1.1, 3.2.2.3).
CONNACK_ACCEPTED = 0x00
CONNACK_BAD_PROTOCOL = 0x01
CONNACK_IDENTIFIER_REJECTED = 0x02
CONNACK_BAD_CREDENTIALS = 0x04
CONNACK_NOT_AUTHORIZED = 0x05
SUBACK_FAILURE = 0x80

_DECODERS: dict[int, type[Any]] = {
    CONNECT: ConnectPacket,
    PUBLISH: PublishPacket,
    PUBACK: PubackPacket,
    SUBSCRIBE: SubscribePacket,
    UNSUBSCRIBE: UnsubscribePacket,
    PINGREQ: PingReqPacket,
    DISCONNECT: DisconnectPacket,
}
# Fixed-header flags the spec requires for each type a client may send (3.1.1, 2.2.2); PUBLISH is free.
_REQUIRED_FLAGS = {CONNECT: 0, PUBACK: 0, SUBSCRIBE: 2, UNSUBSCRIBE: 2, PINGREQ: 0, DISCONNECT: 0}


class ProtocolViolation(Exception):
    """The peer broke the protocol (or a limit); the connection is closed, nothing else is affected."""


async def read_packet(reader: asyncio.StreamReader, max_remaining_length: int) -> Any:
    """Read one packet; raise ProtocolViolation for anything malformed or over the limit, EOFError at EOF."""
    try:
        first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        raise EOFError from None
    packet_type, flags = first[0] >> 4, first[0] & 0x0F
    remaining = 0
    for shift in range(0, 28, 7):
        try:
            byte = (await reader.readexactly(1))[0]
        except asyncio.IncompleteReadError:
            raise EOFError from None
        remaining |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise ProtocolViolation("remaining length longer than 4 bytes")
    if remaining > max_remaining_length:
        raise ProtocolViolation(f"packet of {remaining} bytes over the limit of {max_remaining_length}")
    decoder = _DECODERS.get(packet_type)
    if decoder is None:
        raise ProtocolViolation(f"packet type {packet_type} not accepted from a client")
    required = _REQUIRED_FLAGS.get(packet_type)
    if required is not None and flags != required:
        raise ProtocolViolation(f"bad flags {flags:#x} for packet type {packet_type}")
    if packet_type == PUBLISH and (flags >> 1) & 0x03 == 3:
        raise ProtocolViolation("PUBLISH with QoS 3")
    try:
        body = await reader.readexactly(remaining)
    except asyncio.IncompleteReadError:
        raise EOFError from None
    try:
        packet = await decoder.from_stream(
            BufferReader(body), fixed_header=MQTTFixedHeader(packet_type, flags, remaining)
        )
    except (
        AMQTTError,
        CodecError,
        MQTTError,
        NoDataError,
        ValueError,
        UnicodeDecodeError,
        IndexError,
    ) as exc:
        raise ProtocolViolation(f"undecodable packet type {packet_type}: {exc}") from None
    return packet


def connack(return_code: int, session_present: bool = False) -> bytes:
    return bytes(ConnackPacket.build(1 if session_present else 0, return_code).to_bytes())


def publish(topic: str, payload: bytes, packet_id: int | None, qos: int, dup: bool = False) -> bytes:
    return bytes(PublishPacket.build(topic, payload, packet_id, dup, qos, retain=False).to_bytes())


def puback(packet_id: int) -> bytes:
    return bytes(PubackPacket.build(packet_id).to_bytes())


def suback(packet_id: int, return_codes: list[int]) -> bytes:
    return bytes(SubackPacket.build(packet_id, return_codes).to_bytes())


def unsuback(packet_id: int) -> bytes:
    return bytes(UnsubackPacket.build(packet_id).to_bytes())


def pingresp() -> bytes:
    return bytes(PingRespPacket.build().to_bytes())


class MqttConnection:
    """One client connection: serialised writes, outgoing packet ids, and a close that is safe to repeat."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._next_packet_id = 0
        self.closed = asyncio.Event()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def next_packet_id(self, in_use: set[int] | dict[int, Any]) -> int:
        for _ in range(65535):
            self._next_packet_id = self._next_packet_id % 65535 + 1
            if self._next_packet_id not in in_use:
                return self._next_packet_id
        raise RuntimeError("no free packet id")

    async def send(self, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionError("connection closed")
        async with self._write_lock:
            self._writer.write(data)
            await self._writer.drain()

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), timeout=2)


ConnectionHandler = Callable[[MqttConnection], Awaitable[None]]


class MqttServer:
    """A TLS listener that hands every accepted connection to `handler` and closes it when that returns."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        handler: ConnectionHandler,
        on_handshake_failure: Callable[[str, Exception], None] | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._handler = handler
        self._on_handshake_failure = on_handshake_failure
        self._handshake_timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[MqttConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        # TLS is started per connection (not by start_server) so a failed handshake is seen and counted
        # here instead of only being logged by the event loop.
        self._server = await asyncio.start_server(
            self._accept, host=self._host, port=self._port, reuse_address=True
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = MqttConnection(reader, writer)
        self._connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                await writer.start_tls(self._ssl_context, ssl_handshake_timeout=self._handshake_timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                if self._on_handshake_failure is not None:
                    self._on_handshake_failure(connection.peer, exc)
                writer.transport.abort()
                return
            await self._handler(connection)
        except Exception:
            # One client's failure must never take the emulator down; the handler logs what it knows.
            log.exception("connection handler for %s failed", connection.peer)
        finally:
            await connection.close()
            self._connections.discard(connection)
            if task is not None:
                self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            await connection.close()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None
