"""`EdgeHubTransport`: the production transport, over azure-iot-device's module client.

Why the asyncio client rather than the sync one: its calls are awaited on the service loop without a
thread per call. Why handlers are still handed over: the SDK invokes them on its own handler thread
and loop. Its coroutine handlers run one after another on that single loop, so an `async def` handler
that only calls `loop.call_soon_threadsafe` keeps arrival order, whereas plain-function handlers go
to a four-thread pool and could be reordered.

Delivery: over MQTT the SDK acknowledges a message to edgeHub as it arrives, before any handler
runs, so a message is lost if the process dies before handling it. Modules make up for that with
content ids, the ledger and idempotent re-scans, not with redelivery.

Reconnection is the SDK's job (`connection_retry=True`); state changes are logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from .messages import Message, MethodRequest, MethodResponse
from .transport import DesiredHandler, Dispatcher, InputHandler, MethodHandler

logger = logging.getLogger(__name__)

ClientFactory = Callable[[], Any]


def default_client_factory() -> Any:
    """The SDK's module client from the IoT Edge environment (IOTEDGE_* and the workload API, or
    EdgeHubConnectionString + EdgeModuleCACertificateFile)."""
    from azure.iot.device.aio import IoTHubModuleClient

    return IoTHubModuleClient.create_from_edge_environment(connection_retry=True)


def to_sdk_message(message: Message, output: str) -> Any:
    from azure.iot.device import Message as SdkMessage

    sdk = SdkMessage(  # type: ignore[no-untyped-call]
        message.body,
        message_id=message.message_id,
        content_encoding=message.content_encoding,
        content_type=message.content_type,
        output_name=output,
    )
    sdk.custom_properties = dict(message.properties)
    sdk.correlation_id = message.correlation_id
    return sdk


def from_sdk_message(sdk: Any) -> Message:
    data = sdk.data
    if isinstance(data, str):
        body = data.encode(sdk.content_encoding or "utf-8")
    elif data is None:
        body = b""
    else:
        body = bytes(data)
    return Message(
        body=body,
        properties={str(key): str(value) for key, value in (sdk.custom_properties or {}).items()},
        content_type=sdk.content_type,
        content_encoding=sdk.content_encoding,
        message_id=sdk.message_id,
        correlation_id=sdk.correlation_id,
        input_name=sdk.input_name,
    )


class EdgeHubTransport:
    """Talks to edgeHub through `IoTHubModuleClient`; must be connected from the service's loop."""

    def __init__(self, client_factory: ClientFactory = default_client_factory) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher = Dispatcher()

    @property
    def dropped(self) -> int:
        return self._dispatcher.dropped

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        # Both blocking: creating the client reads the trust bundle and signs through the workload
        # API, and each handler setter waits for the SDK to subscribe (connecting first).
        client = await asyncio.to_thread(self._create_client)
        self._client = client
        await client.connect()
        logger.info("connected to edgeHub")

    def _create_client(self) -> Any:
        client = self._client_factory()
        client.on_connection_state_change = self._sdk_on_connection_state
        client.on_message_received = self._sdk_on_message
        client.on_method_request_received = self._sdk_on_method
        client.on_twin_desired_properties_patch_received = self._sdk_on_desired
        return client

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # shutdown() also stops the SDK's handler threads, so the process can exit.
            await client.shutdown()
            logger.info("disconnected from edgeHub")

    async def send(self, output: str, message: Message) -> None:
        await self._require_client().send_message_to_output(to_sdk_message(message, output), output)

    def on_input(self, input_name: str, handler: InputHandler, *, concurrency: int = 1) -> None:
        self._dispatcher.on_input(input_name, handler, concurrency=concurrency)

    def on_method(self, name: str, handler: MethodHandler) -> None:
        self._dispatcher.on_method(name, handler)

    def on_desired(self, handler: DesiredHandler) -> None:
        self._dispatcher.on_desired(handler)

    async def get_twin(self) -> dict[str, Any]:
        twin = await self._require_client().get_twin()
        return {"desired": dict(twin.get("desired", {})), "reported": dict(twin.get("reported", {}))}

    async def patch_reported(self, patch: dict[str, Any]) -> None:
        await self._require_client().patch_twin_reported_properties(patch)

    def start_intake(self) -> None:
        self._dispatcher.start_intake()

    def stop_intake(self) -> None:
        self._dispatcher.stop_intake()

    async def drain(self, grace_s: float) -> bool:
        return await self._dispatcher.drain(grace_s)

    # SDK callbacks: these run on the SDK's handler loop/thread, never on ours.
    async def _sdk_on_message(self, sdk_message: Any) -> None:
        message = from_sdk_message(sdk_message)
        input_name = message.input_name or ""
        self._service_loop().call_soon_threadsafe(self._dispatcher.submit_input, input_name, message)

    async def _sdk_on_desired(self, patch: dict[str, Any]) -> None:
        self._service_loop().call_soon_threadsafe(self._dispatcher.submit_desired, dict(patch))

    async def _sdk_on_method(self, sdk_request: Any) -> None:
        request = MethodRequest(
            name=sdk_request.name, payload=sdk_request.payload, request_id=sdk_request.request_id
        )
        # The response is sent from the service loop, where the client's awaitables belong.
        asyncio.run_coroutine_threadsafe(self._answer_method(request), self._service_loop())

    async def _sdk_on_connection_state(self) -> None:
        client = self._client
        if client is not None:
            logger.info("edgeHub connection state changed", extra={"connected": bool(client.connected)})

    async def _answer_method(self, request: MethodRequest) -> None:
        from azure.iot.device import MethodResponse as SdkMethodResponse

        response = await self._dispatcher.call_method(request)
        payload = response.payload
        try:
            json.dumps(payload)
        except (TypeError, ValueError) as error:
            response = MethodResponse.error(500, f"method result is not JSON: {error}")
            payload = response.payload
        client = self._client
        if client is None:
            logger.warning("direct method %s finished after disconnect; no response sent", request.name)
            return
        try:
            await client.send_method_response(SdkMethodResponse(request.request_id, response.status, payload))
        except Exception:
            logger.exception("could not send the response to direct method %s", request.name)

    def _service_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("EdgeHubTransport is not connected")
        return self._loop

    def _require_client(self) -> Any:
        if self._client is None:
            raise ConnectionError("EdgeHubTransport is not connected (call connect() first)")
        return self._client
