"""Authentication, authorisation and robustness of the emulator against bad clients."""

from __future__ import annotations

import asyncio
import base64
import ssl

import pytest

from edgesim.sas import generate_key

TO_CONSUMER = (
    'FROM /messages/modules/producer/outputs/out INTO BrokeredEndpoint("/modules/consumer/inputs/in")'
)
ROUTES = {"toConsumer": TO_CONSUMER}
MODULES = ("producer", "consumer")


def _connect(harness, module: str, token: str, **kwargs):
    return harness.connect_packet(
        f"{harness.device_id}/{module}",
        f"{harness.iothub_hostname}/{harness.device_id}/{module}/?api-version=2021-04-12",
        token,
        **kwargs,
    )


async def _good_client_still_works(harness) -> None:
    consumer = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "ready"}, {"op": "receive", "count": 1, "timeout": 30}]
    )
    await consumer.wait_for("ready")
    producer = await harness.spawn("producer", [{"op": "send", "output": "out", "body": "still alive"}])
    assert await producer.finish() == 0
    assert (await consumer.wait_for("input"))["data"] == "still alive"


async def test_sdk_with_wrong_key_is_refused(harness):
    await harness.start(MODULES, ROUTES)
    env = harness.environment("producer", "connection_string")
    wrong = base64.b64encode(generate_key()).decode()
    env["EdgeHubConnectionString"] = env["EdgeHubConnectionString"].rsplit("SharedAccessKey=", 1)[0] + (
        f"SharedAccessKey={wrong}"
    )
    producer = await harness.spawn("producer", [{"op": "connect"}], env=env)
    with pytest.raises(AssertionError, match="failed"):
        await producer.wait_for("done", timeout=60)
    assert harness.hub.stats().refused_connections >= 1
    assert "producer" not in harness.hub.stats().connected


@pytest.mark.parametrize(
    ("case", "expected_code"),
    [("expired", 5), ("wrong_key", 5), ("other_module_token", 5), ("unknown_module", 5), ("bad_protocol", 1)],
)
async def test_raw_connect_is_refused_with_the_right_connack(harness, case, expected_code):
    await harness.start(MODULES, ROUTES)
    module, token, kwargs = "producer", harness.token("producer"), {}
    if case == "expired":
        token = harness.token("producer", lifetime=-10)
    elif case == "wrong_key":
        token = harness.token("producer", key=generate_key())
    elif case == "other_module_token":
        token = harness.token("consumer")
    elif case == "unknown_module":
        module = "intruder"
    elif case == "bad_protocol":
        kwargs = {"level": 3, "name": "MQIsdp"}
    client = await harness.raw_client()
    await client.send(_connect(harness, module, token, **kwargs))
    first, body = await client.read_packet()
    assert first == 0x20
    assert body[1] == expected_code
    assert await client.closed_by_server()
    assert harness.hub.stats().refused_connections == 1
    assert harness.hub.stats().connected == []


async def test_module_cannot_subscribe_to_another_modules_inputs(harness):
    await harness.start(MODULES, ROUTES)
    client = await harness.raw_module("producer")
    await client.send(harness.subscribe_packet(7, f"devices/{harness.device_id}/modules/consumer/inputs/#"))
    assert await client.read_packet() == (0x90, b"\x00\x07\x80")
    await client.send(harness.subscribe_packet(8, "#"))
    assert await client.read_packet() == (0x90, b"\x00\x08\x80")
    await client.send(harness.subscribe_packet(9, f"devices/{harness.device_id}/modules/producer/inputs/#"))
    assert await client.read_packet() == (0x90, b"\x00\x09\x01")
    await client.close()


async def test_module_cannot_publish_as_another_module(harness):
    await harness.start(MODULES, ROUTES)
    client = await harness.raw_module("producer")
    forged = f"devices/{harness.device_id}/modules/consumer/messages/events/%24.on=out"
    await client.send(harness.publish_packet(forged, b"forged", 1))
    assert await client.closed_by_server()
    assert harness.hub.stats().routed == {}


async def test_oversized_message_is_refused_and_not_routed(harness):
    await harness.start(MODULES, ROUTES, max_message_bytes=1024)
    client = await harness.raw_module("producer")
    topic = f"devices/{harness.device_id}/modules/producer/messages/events/%24.on=out"
    await client.send(harness.publish_packet(topic, b"x" * 1024, 1))
    assert await client.read_packet() == (0x40, b"\x00\x01")  # at the limit: accepted
    await client.send(harness.publish_packet(topic, b"x" * 1025, 2))
    assert await client.closed_by_server()
    assert harness.hub.stats().routed == {"toConsumer": 1}


async def test_second_connection_with_same_client_id_takes_over(harness):
    await harness.start(MODULES, ROUTES)
    first = await harness.raw_module("producer")
    second = await harness.raw_module("producer")
    assert await first.closed_by_server()
    await second.send(harness.mqtt_packet(0xC0, b""))  # PINGREQ
    assert await second.read_packet() == (0xD0, b"")
    assert harness.hub.stats().connected == ["producer"]
    await second.close()


async def _raw_tls_send(harness, data: bytes):
    client = await harness.raw_client()
    await client.send(data)
    return await client.closed_by_server()


async def test_malformed_traffic_does_not_take_the_emulator_down(harness):
    await harness.start(MODULES, ROUTES, connect_timeout_secs=1.0)
    # Garbage instead of CONNECT.
    assert await _raw_tls_send(harness, b"\x00\xff\xfe garbage " * 10)
    # A remaining length of ~256 MB (the maximum the encoding allows).
    assert await _raw_tls_send(harness, b"\x10\xff\xff\xff\x7f")
    # A remaining length encoded in more than four bytes.
    assert await _raw_tls_send(harness, b"\x10\xff\xff\xff\xff\x01")
    # A CONNECT whose body is cut short, then silence: closed when the CONNECT deadline passes.
    client = await harness.raw_client()
    await client.send(b"\x10\x20\x00\x04MQ")
    assert await client.closed_by_server(timeout=10)
    # An authenticated client that then sends an undecodable SUBSCRIBE.
    authenticated = await harness.raw_module("producer")
    await authenticated.send(b"\x82\x03\x00\x01\x00")
    assert await authenticated.closed_by_server()
    # Plain TCP (no TLS) to the TLS port.
    reader, writer = await asyncio.open_connection(harness.host, 8883)
    writer.write(b"\x10\x0cnot tls at all\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 15) == b""
    writer.close()
    # A client that does not trust the emulator's CA cannot complete the handshake.
    untrusting = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(harness.host, 8883, ssl=untrusting)
    assert harness.hub.stats().refused_connections >= 5
    await _good_client_still_works(harness)
