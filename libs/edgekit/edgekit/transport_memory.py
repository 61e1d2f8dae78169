"""`InMemoryTransport`: the fake beside `EdgeHubTransport`, for unit tests of services."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections import defaultdict
from typing import Any

from .messages import Message, MethodRequest, MethodResponse
from .transport import DesiredHandler, Dispatcher, InputHandler, MethodHandler
from .twin import merge_patch


class InMemoryTransport:
    """Records what a service sends and lets a test play edgeHub.

    `sent[output]` lists sent messages; `reported` is the reported-properties document (patches merged
    with JSON merge-patch semantics, None deletes); `desired` the desired-properties document.
    """

    def __init__(self, desired: dict[str, Any] | None = None) -> None:
        self.sent: dict[str, list[Message]] = defaultdict(list)
        self.desired: dict[str, Any] = {"$version": 1, **copy.deepcopy(desired or {})}
        self.reported: dict[str, Any] = {}
        self.reported_patches: list[dict[str, Any]] = []
        self.connected = False
        self._dispatcher = Dispatcher()
        self._sent_event: asyncio.Event | None = None

    @property
    def dropped(self) -> int:
        """Arrivals dropped: no handler for the input, or the module was stopping."""
        return self._dispatcher.dropped

    # Transport protocol
    async def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def send(self, output: str, message: Message) -> None:
        self._require_connected()
        self.sent[output].append(_with_output(message, output))
        if self._sent_event is not None:
            self._sent_event.set()

    def on_input(self, input_name: str, handler: InputHandler, *, concurrency: int = 1) -> None:
        self._dispatcher.on_input(input_name, handler, concurrency=concurrency)

    def on_method(self, name: str, handler: MethodHandler) -> None:
        self._dispatcher.on_method(name, handler)

    def on_desired(self, handler: DesiredHandler) -> None:
        self._dispatcher.on_desired(handler)

    async def get_twin(self) -> dict[str, Any]:
        self._require_connected()
        return {"desired": copy.deepcopy(self.desired), "reported": copy.deepcopy(self.reported)}

    async def patch_reported(self, patch: dict[str, Any]) -> None:
        self._require_connected()
        self.reported_patches.append(copy.deepcopy(patch))
        self.reported = merge_patch(self.reported, patch)

    def start_intake(self) -> None:
        self._dispatcher.start_intake()

    def stop_intake(self) -> None:
        self._dispatcher.stop_intake()

    async def drain(self, grace_s: float) -> bool:
        return await self._dispatcher.drain(grace_s)

    # Playing edgeHub
    def deliver_nowait(self, input_name: str, message: Message) -> asyncio.Future[None]:
        """Hand a message to the module; the future resolves once its handler has finished."""
        return self._dispatcher.submit_input(input_name, _with_input(message, input_name))

    async def deliver(self, input_name: str, message: Message) -> None:
        """Deliver and wait until handled; a handler's exception is raised here."""
        await self.deliver_nowait(input_name, message)

    def set_desired_nowait(self, patch: dict[str, Any]) -> asyncio.Future[None]:
        """Apply a desired-properties patch as the hub would: merge it, bump $version, notify."""
        version = int(self.desired.get("$version", 0)) + 1
        self.desired = merge_patch(self.desired, patch)
        self.desired["$version"] = version
        return self._dispatcher.submit_desired({**copy.deepcopy(patch), "$version": version})

    async def set_desired(self, patch: dict[str, Any]) -> None:
        await self.set_desired_nowait(patch)

    async def call_method(self, name: str, payload: Any = None) -> MethodResponse:
        request = MethodRequest(name=name, payload=copy.deepcopy(payload), request_id=str(id(payload)))
        return await self._dispatcher.call_method(request)

    async def wait_sent(self, output: str, count: int, within_s: float = 10.0) -> list[Message]:
        """Wait until `count` messages went to `output` (for services that send from background tasks)."""

        async def reached() -> None:
            while len(self.sent[output]) < count:
                self._sent_event = asyncio.Event()
                await self._sent_event.wait()

        await asyncio.wait_for(reached(), within_s)
        return list(self.sent[output])

    def _require_connected(self) -> None:
        if not self.connected:
            raise ConnectionError("InMemoryTransport is not connected (call connect() first)")


def _with_input(message: Message, input_name: str) -> Message:
    return dataclasses.replace(message, properties=dict(message.properties), input_name=input_name)


def _with_output(message: Message, output: str) -> Message:
    return dataclasses.replace(message, properties=dict(message.properties), output_name=output)
