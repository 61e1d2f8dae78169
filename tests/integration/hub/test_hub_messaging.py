"""Module-to-module and upstream messaging through the emulator, with real SDK clients."""

from __future__ import annotations

import json

TO_CONSUMER = (
    'FROM /messages/modules/producer/outputs/out INTO BrokeredEndpoint("/modules/consumer/inputs/in")'
)
ROUTES = {
    "toConsumer": TO_CONSUMER,
    "up": {"route": "FROM /messages/modules/producer/outputs/telemetry INTO $upstream", "priority": 0},
}


async def test_output_reaches_input_with_properties_intact(harness):
    await harness.start(("producer", "consumer"), ROUTES)
    consumer = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "ready"}, {"op": "receive", "count": 1, "timeout": 30}]
    )
    await consumer.wait_for("ready")
    odd = {"a&b=c/d?e#f%g+h i": "v&=/?#%+ x", "température": "été ☃", "plain": "1"}
    producer = await harness.spawn(
        "producer",
        [
            {
                "op": "send",
                "output": "out",
                "body": json.dumps({"hello": "wörld"}),
                "properties": odd,
                "message_id": "mid-1&x",
                "correlation_id": "cid/2",
                "content_type": "application/json",
                "content_encoding": "utf-8",
            }
        ],
        start_path="connection_string",
    )
    assert await producer.finish() == 0
    received = await consumer.wait_for("input", timeout=30)
    assert received["input_name"] == "in"
    assert json.loads(received["data"]) == {"hello": "wörld"}
    app = {k: v for k, v in received["custom_properties"].items() if not k.startswith("$.")}
    assert app == odd
    assert received["custom_properties"]["$.cmid"] == "producer"
    assert received["message_id"] == "mid-1&x"
    assert received["correlation_id"] == "cid/2"
    assert received["content_type"] == "application/json"
    assert received["content_encoding"] == "utf-8"
    assert await consumer.finish() == 0
    stats = harness.hub.stats()
    assert stats.routed == {"toConsumer": 1}
    assert stats.delivered == {"consumer/inputs/in": 1}
    assert stats.pending == {}


async def test_upstream_messages_are_written_as_json_lines(harness):
    await harness.start(("producer", "consumer"), ROUTES)
    producer = await harness.spawn(
        "producer",
        [
            {
                "op": "send",
                "output": "telemetry",
                "body": json.dumps({"score": 0.9}),
                "properties": {"severity": "high"},
            },
            {"op": "send", "output": "telemetry", "body": "not json"},
        ],
    )
    assert await producer.finish() == 0
    await harness.wait_until(lambda: harness.hub.stats().upstream_messages == 2)
    lines = [json.loads(line) for line in harness.config.upstream_path.read_text("utf-8").splitlines()]
    assert [line["body"] for line in lines] == [{"score": 0.9}, "not json"]
    assert lines[0]["module"] == "producer"
    assert lines[0]["output"] == "telemetry"
    assert lines[0]["properties"] == {"severity": "high"}
    assert lines[0]["system_properties"]["connectionModuleId"] == "producer"
    assert harness.hub.stats().pending == {}


async def test_where_condition_filters_what_a_route_takes(harness):
    routes = {
        "highOnly": {
            "route": "FROM /messages/modules/producer/outputs/out WHERE severity = 'high' "
            'INTO BrokeredEndpoint("/modules/consumer/inputs/alerts")',
        },
        "everything": "FROM /messages/modules/producer/outputs/out INTO $upstream",
    }
    await harness.start(("producer", "consumer"), routes)
    consumer = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "ready"}, {"op": "receive", "count": 1, "timeout": 30}]
    )
    await consumer.wait_for("ready")
    producer = await harness.spawn(
        "producer",
        [
            {"op": "send", "output": "out", "body": "low one", "properties": {"severity": "low"}},
            {"op": "send", "output": "out", "body": "high one", "properties": {"severity": "high"}},
        ],
    )
    assert await producer.finish() == 0
    received = await consumer.wait_for("input")
    # Delivery is in order, so had the low one been routed here it would have come first.
    assert received["data"] == "high one"
    assert received["input_name"] == "alerts"
    await harness.wait_until(lambda: harness.hub.stats().upstream_messages == 2)
    assert harness.hub.stats().routed == {"highOnly": 1, "everything": 2}


async def test_message_for_offline_module_expires_after_its_ttl(harness):
    routes = {
        "short": {
            "route": TO_CONSUMER,
            "timeToLiveSecs": 1,
        }
    }
    await harness.start(("producer", "consumer"), routes)
    producer = await harness.spawn(
        "producer",
        [
            {"op": "send", "output": "out", "body": "stale"},
            {"op": "wait_stdin"},
            {"op": "send", "output": "out", "body": "fresh"},
        ],
    )
    await producer.wait_for("sent")
    assert harness.hub.stats().pending == {"consumer/inputs/in": 1}
    await harness.wait_until(lambda: harness.hub.stats().expired == {"consumer/inputs/in": 1}, timeout=10)
    assert harness.hub.stats().pending == {}
    consumer = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "ready"}, {"op": "receive", "count": 1, "timeout": 30}]
    )
    await consumer.wait_for("ready")
    await producer.go_on()
    assert await producer.finish() == 0
    assert (await consumer.wait_for("input"))["data"] == "fresh"


async def test_backlog_is_delivered_by_priority_then_fifo(harness):
    target = 'INTO BrokeredEndpoint("/modules/consumer/inputs/in")'
    routes = {
        "urgent": {
            "route": f"FROM /messages/modules/producer/outputs/out WHERE p = 'hi' {target}",
            "priority": 0,
        },
        "bulk": {
            "route": f"FROM /messages/modules/producer/outputs/out WHERE p = 'lo' {target}",
            "priority": 5,
        },
    }
    await harness.start(("producer", "consumer"), routes)
    order = [("lo1", "lo"), ("hi1", "hi"), ("lo2", "lo"), ("hi2", "hi"), ("lo3", "lo")]
    producer = await harness.spawn(
        "producer",
        [{"op": "send", "output": "out", "body": body, "properties": {"p": p}} for body, p in order],
    )
    assert await producer.finish() == 0
    assert harness.hub.stats().pending == {"consumer/inputs/in": 5}
    consumer = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "receive", "count": 5, "timeout": 30}]
    )
    received = [event["data"] for event in await consumer.collect("input", 5)]
    assert received == ["hi1", "hi2", "lo1", "lo2", "lo3"]


async def test_messages_wait_for_a_restarted_module(harness):
    await harness.start(("producer", "consumer"), ROUTES)
    consumer = await harness.spawn(
        "consumer",
        [{"op": "listen"}, {"op": "receive", "count": 1, "timeout": 30}, {"op": "sleep", "seconds": 60}],
    )
    producer = await harness.spawn(
        "producer",
        [
            {"op": "send", "output": "out", "body": "first"},
            {"op": "wait_stdin"},
            {"op": "send", "output": "out", "body": "second"},
            {"op": "send", "output": "out", "body": "third"},
        ],
    )
    assert (await consumer.wait_for("input"))["data"] == "first"
    await consumer.kill()  # a crash: no DISCONNECT, no unsubscribe
    await harness.wait_until(lambda: "consumer" not in harness.hub.stats().connected)
    await producer.go_on()
    assert await producer.finish() == 0
    assert harness.hub.stats().pending == {"consumer/inputs/in": 2}
    # The restarted module only connects; its persistent session (clean session 0) carries the subscription.
    restarted = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "receive", "count": 2, "timeout": 30}]
    )
    assert [event["data"] for event in await restarted.collect("input", 2)] == ["second", "third"]
    await harness.wait_until(lambda: harness.hub.stats().pending == {})


async def test_messages_survive_an_emulator_restart(harness):
    await harness.start(("producer", "consumer"), ROUTES)
    producer = await harness.spawn(
        "producer",
        [
            {"op": "send", "output": "out", "body": "kept 1"},
            {"op": "send", "output": "out", "body": "kept 2"},
            {"op": "send", "output": "telemetry", "body": "{}"},
        ],
    )
    assert await producer.finish() == 0
    await harness.wait_until(lambda: harness.hub.stats().upstream_messages == 1)
    key_before = harness.hub.module_key("consumer")
    await harness.restart()
    assert harness.hub.module_key("consumer") == key_before
    assert harness.hub.stats().pending == {"consumer/inputs/in": 2}
    consumer = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "receive", "count": 2, "timeout": 30}]
    )
    assert [event["data"] for event in await consumer.collect("input", 2)] == ["kept 1", "kept 2"]
    assert len(harness.config.upstream_path.read_text("utf-8").splitlines()) == 1


async def test_connected_module_keeps_receiving_across_an_emulator_restart(harness):
    await harness.start(("producer", "consumer"), ROUTES)
    consumer = await harness.spawn(
        "consumer", [{"op": "listen"}, {"op": "receive", "count": 2, "timeout": 60}]
    )
    first = await harness.spawn("producer", [{"op": "send", "output": "out", "body": "before"}])
    assert await first.finish() == 0
    assert (await consumer.wait_for("input"))["data"] == "before"
    await harness.restart()
    # The SDK reconnects by itself and does not subscribe again: the persisted session must carry it.
    await harness.wait_until(lambda: "consumer" in harness.hub.stats().connected, timeout=30)
    second = await harness.spawn("producer", [{"op": "send", "output": "out", "body": "after"}])
    assert await second.finish() == 0
    assert (await consumer.wait_for("input", timeout=30))["data"] == "after"


def _split_publish(body: bytes) -> tuple[str, int, bytes]:
    topic_length = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + topic_length].decode()
    packet_id = int.from_bytes(body[2 + topic_length : 4 + topic_length], "big")
    return topic, packet_id, body[4 + topic_length :]


async def test_unacknowledged_message_is_sent_again_with_dup_after_reconnect(harness):
    await harness.start(("producer", "consumer"), ROUTES)
    inputs = f"devices/{harness.device_id}/modules/consumer/inputs/#"
    first = await harness.raw_module("consumer")
    await first.send(harness.subscribe_packet(1, inputs))
    assert (await first.read_packet())[0] == 0x90
    producer = await harness.spawn("producer", [{"op": "send", "output": "out", "body": "needs ack"}])
    assert await producer.finish() == 0
    kind, body = await first.read_packet()
    assert kind == 0x32  # PUBLISH, QoS 1, first delivery
    topic, _, payload = _split_publish(body)
    assert topic.startswith(f"devices/{harness.device_id}/modules/consumer/inputs/in/")
    assert payload == b"needs ack"
    await first.close()  # no PUBACK
    await harness.wait_until(lambda: "consumer" not in harness.hub.stats().connected)
    assert harness.hub.stats().pending == {"consumer/inputs/in": 1}
    second = await harness.raw_module("consumer")
    await second.send(harness.subscribe_packet(1, inputs))
    assert (await second.read_packet())[0] == 0x90
    kind, body = await second.read_packet()
    assert kind == 0x3A  # PUBLISH, QoS 1, DUP
    _, packet_id, payload = _split_publish(body)
    assert payload == b"needs ack"
    await second.send(harness.mqtt_packet(0x40, packet_id.to_bytes(2, "big")))
    await harness.wait_until(lambda: harness.hub.stats().pending == {})
    assert harness.hub.stats().delivered == {"consumer/inputs/in": 1}
    await second.close()
