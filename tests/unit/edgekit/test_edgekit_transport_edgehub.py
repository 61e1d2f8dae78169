"""EdgeHubTransport against a fake SDK client that, like the real one, calls handlers on its own thread
and event loop. The transport against the real SDK and the emulator is tests/integration."""

import asyncio
import threading
from typing import Any

from azure.iot.device import Message as SdkMessage
from azure.iot.device import MethodRequest as SdkMethodRequest

from edgekit import EdgeHubTransport, Message
from edgekit.messages import MethodRequest, MethodResponse
from edgekit.transport_edgehub import from_sdk_message, to_sdk_message


class FakeSdkClient:
    def __init__(self) -> None:
        self.on_message_received: Any = None
        self.on_method_request_received: Any = None
        self.on_twin_desired_properties_patch_received: Any = None
        self.on_connection_state_change: Any = None
        self.connected = False
        self.sent: list[tuple[str, Any]] = []
        self.method_responses: list[Any] = []
        self.reported: list[dict[str, Any]] = []
        self.shut_down = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def connect(self) -> None:
        self.connected = True

    async def shutdown(self) -> None:
        self.shut_down = True
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def send_message_to_output(self, message: Any, output: str) -> None:
        self.sent.append((output, message))

    async def send_method_response(self, response: Any) -> None:
        self.method_responses.append(response)

    async def get_twin(self) -> dict[str, Any]:
        return {"desired": {"$version": 3, "x": 1}, "reported": {"$version": 1}}

    async def patch_twin_reported_properties(self, patch: dict[str, Any]) -> None:
        self.reported.append(patch)

    def fire(self, handler: Any, arg: Any) -> None:
        """Invoke a handler the way the SDK does: a coroutine on the SDK's own loop and thread."""
        asyncio.run_coroutine_threadsafe(handler(arg), self.loop).result(5)


def sdk_message(body: bytes, input_name: str, **props: str) -> Any:
    message = SdkMessage(  # type: ignore[no-untyped-call]
        body, message_id="m-1", content_encoding="utf-8", content_type="application/json"
    )
    message.custom_properties = dict(props)
    message.correlation_id = "c-1"
    message.input_name = input_name
    return message


def test_message_mapping_both_ways():
    ours = Message(
        body="Grüße".encode(),
        properties={"schema": "edgeloop.x/1", "severity": "high"},
        content_type="application/json",
        content_encoding="utf-8",
        message_id="id-1",
        correlation_id="corr-1",
    )
    sdk = to_sdk_message(ours, "anomalies")
    assert (sdk.data, sdk.output_name, sdk.message_id, sdk.correlation_id) == (
        ours.body,
        "anomalies",
        "id-1",
        "corr-1",
    )
    assert (sdk.content_type, sdk.content_encoding, sdk.custom_properties) == (
        "application/json",
        "utf-8",
        {"schema": "edgeloop.x/1", "severity": "high"},
    )
    sdk.input_name = "in"
    back = from_sdk_message(sdk)
    assert back.body == ours.body
    assert back.properties == ours.properties
    assert (back.message_id, back.correlation_id, back.input_name) == ("id-1", "corr-1", "in")


def test_text_bodies_from_the_sdk_become_bytes():
    message = SdkMessage("plain text")  # type: ignore[no-untyped-call]
    message.input_name = "in"
    assert from_sdk_message(message).body == b"plain text"


async def test_handlers_run_on_the_service_loop_in_order():
    fake = FakeSdkClient()
    transport = EdgeHubTransport(client_factory=lambda: fake)
    service_thread = threading.get_ident()
    seen: list[tuple[str, bytes, int]] = []
    patches: list[dict[str, Any]] = []
    all_seen = asyncio.Event()

    async def on_files(message: Message) -> None:
        seen.append((message.input_name or "", message.body, threading.get_ident()))
        if len(seen) == 10:
            all_seen.set()

    async def on_desired(patch: dict[str, Any]) -> None:
        patches.append(patch)

    async def on_method(request: MethodRequest) -> MethodResponse:
        assert threading.get_ident() == service_thread
        return MethodResponse.ok({"got": request.payload})

    await transport.connect()
    assert fake.connected
    transport.on_input("files", on_files)
    transport.on_desired(on_desired)
    transport.on_method("ping", on_method)
    transport.start_intake()

    for index in range(10):
        await asyncio.to_thread(fake.fire, fake.on_message_received, sdk_message(bytes([index]), "files"))
    await asyncio.wait_for(all_seen.wait(), 5)
    assert [body for _, body, _ in seen] == [bytes([i]) for i in range(10)]
    assert {name for name, _, _ in seen} == {"files"}
    assert {thread for _, _, thread in seen} == {service_thread}

    await asyncio.to_thread(
        fake.fire, fake.on_twin_desired_properties_patch_received, {"x": 2, "$version": 4}
    )
    await asyncio.to_thread(
        fake.fire, fake.on_method_request_received, SdkMethodRequest("rid-9", "ping", {"a": 1})
    )
    for _ in range(100):
        if patches and fake.method_responses:
            break
        await asyncio.sleep(0.01)
    assert patches == [{"x": 2, "$version": 4}]
    response = fake.method_responses[0]
    assert (response.request_id, response.status, response.payload) == ("rid-9", 200, {"got": {"a": 1}})

    await transport.send("files", Message(b"out", {"k": "v"}))
    output, sent = fake.sent[0]
    assert (output, sent.output_name, sent.custom_properties) == ("files", "files", {"k": "v"})
    assert await transport.get_twin() == {"desired": {"$version": 3, "x": 1}, "reported": {"$version": 1}}
    await transport.patch_reported({"status": "running"})
    assert fake.reported == [{"status": "running"}]

    assert await transport.drain(5)
    await transport.disconnect()
    assert fake.shut_down
