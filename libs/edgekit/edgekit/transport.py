"""The Transport protocol modules talk through, and the dispatcher both transports share.

Handlers run on the service's asyncio loop. Messages on one input are handled in arrival order, one
at a time unless the input was registered with more concurrency. Until `start_intake()` arrivals are
held (so nothing is lost between connecting and the service registering its handlers); after
`stop_intake()` new arrivals are dropped with a warning while held and in-flight work is drained.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .messages import Message, MethodRequest, MethodResponse

InputHandler = Callable[[Message], Awaitable[None]]
MethodHandler = Callable[[MethodRequest], Awaitable[MethodResponse]]
DesiredHandler = Callable[[dict[str, Any]], Awaitable[None]]

logger = logging.getLogger(__name__)


class Transport(Protocol):
    """How a module reaches edgeHub. `EdgeHubTransport` in production, `InMemoryTransport` in tests."""

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def send(self, output: str, message: Message) -> None: ...

    def on_input(self, input_name: str, handler: InputHandler, *, concurrency: int = 1) -> None: ...

    def on_method(self, name: str, handler: MethodHandler) -> None: ...

    def on_desired(self, handler: DesiredHandler) -> None: ...

    async def get_twin(self) -> dict[str, Any]: ...

    async def patch_reported(self, patch: dict[str, Any]) -> None: ...

    def start_intake(self) -> None: ...

    def stop_intake(self) -> None: ...

    async def drain(self, grace_s: float) -> bool: ...


# Desired patches share the input machinery under a name no edgeHub input can have.
_DESIRED = "$desired"


@dataclass
class _Arrival:
    message: Message
    payload: dict[str, Any] | None
    done: asyncio.Future[None]


@dataclass
class _Input:
    handler: Callable[[_Arrival], Awaitable[None]]
    concurrency: int
    queue: asyncio.Queue[_Arrival] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)


class Dispatcher:
    """Routes arrivals to the registered handlers on the loop it is used from.

    All methods must be called on the service loop; a transport whose SDK calls back on another
    thread hands arrivals over with `loop.call_soon_threadsafe` first.
    """

    def __init__(self) -> None:
        self._inputs: dict[str, _Input] = {}
        self._methods: dict[str, MethodHandler] = {}
        self._desired: list[DesiredHandler] = []
        self._desired_input: _Input | None = None
        self._held: list[Callable[[], None]] = []
        self._open = False
        self._closed = False
        self._busy: set[asyncio.Future[Any]] = set()
        self.dropped = 0

    # Registration
    def on_input(self, input_name: str, handler: InputHandler, *, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if input_name in self._inputs:
            raise ValueError(f"input {input_name!r} already has a handler")
        if input_name.startswith("$"):
            raise ValueError(f"input names cannot start with '$': {input_name!r}")

        async def handle(arrival: _Arrival) -> None:
            await handler(arrival.message)

        self._inputs[input_name] = _Input(handle, concurrency)

    def on_method(self, name: str, handler: MethodHandler) -> None:
        if name in self._methods:
            raise ValueError(f"method {name!r} already has a handler")
        self._methods[name] = handler

    def on_desired(self, handler: DesiredHandler) -> None:
        self._desired.append(handler)

    # Lifecycle
    @property
    def accepting(self) -> bool:
        return self._open and not self._closed

    def start_intake(self) -> None:
        if self._open or self._closed:
            return
        self._open = True
        held, self._held = self._held, []
        for release in held:
            release()

    def stop_intake(self) -> None:
        self._closed = True

    async def drain(self, grace_s: float) -> bool:
        """Wait for held, queued and in-flight work; True if all finished within `grace_s` seconds."""
        self.stop_intake()
        if not self._open:
            # Arrivals held before intake ever started are released so they are not lost silently.
            self._open = True
            held, self._held = self._held, []
            for release in held:
                release()
        pending = {fut for fut in self._busy if not fut.done()}
        finished = True
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=grace_s)
            finished = not not_done
        entries = [*self._inputs.values(), *([self._desired_input] if self._desired_input else [])]
        for entry in entries:
            for worker in entry.workers:
                worker.cancel()
            entry.workers.clear()
        return finished

    # Arrivals
    def submit_input(
        self, input_name: str, message: Message, *, payload: dict[str, Any] | None = None
    ) -> asyncio.Future[None]:
        """Queue a message for its input's handler; the future resolves when it has been handled."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = _Arrival(message, payload, done)
        if self._closed:
            self._drop(f"{_describe(input_name)}: module is stopping", done)
            return done
        if not self._open:
            self._held.append(lambda: self._enqueue(input_name, item))
            self._track(done)
            return done
        self._enqueue(input_name, item)
        return done

    def submit_desired(self, patch: dict[str, Any]) -> asyncio.Future[None]:
        """Queue a desired-properties patch; patches reach the handlers one at a time, in order."""
        return self.submit_input(_DESIRED, Message(body=b"", properties={}), payload=patch)

    async def call_method(self, request: MethodRequest) -> MethodResponse:
        if self._closed:
            return MethodResponse.error(503, "module is stopping")
        handler = self._methods.get(request.name)
        if handler is None:
            return MethodResponse.error(404, f"no method {request.name!r}")
        task = asyncio.ensure_future(handler(request))
        self._track(task)
        try:
            return await task
        except Exception as error:
            logger.exception("direct method %s failed", request.name)
            return MethodResponse.error(500, f"{type(error).__name__}: {error}")

    # Internals
    def _drop(self, what: str, done: asyncio.Future[None]) -> None:
        self.dropped += 1
        logger.warning("dropped %s", what, extra={"dropped_total": self.dropped})
        done.set_result(None)

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._busy.add(fut)
        fut.add_done_callback(self._busy.discard)

    def _enqueue(self, input_name: str, item: _Arrival) -> None:
        entry = self._desired_entry() if input_name == _DESIRED else self._inputs.get(input_name)
        if entry is None:
            # The SDK has already acknowledged it to edgeHub, so this message is gone: say so loudly.
            self._drop(f"a message on input {input_name!r}: the module has no handler for it", item.done)
            return
        self._track(item.done)
        entry.queue.put_nowait(item)
        if len(entry.workers) < entry.concurrency:
            entry.workers.append(asyncio.ensure_future(self._work(input_name, entry)))

    def _desired_entry(self) -> _Input | None:
        if not self._desired:
            return None
        if self._desired_input is None:
            self._desired_input = _Input(self._run_desired, 1)
        return self._desired_input

    async def _run_desired(self, arrival: _Arrival) -> None:
        for handler in list(self._desired):
            await handler(arrival.payload or {})

    async def _work(self, input_name: str, entry: _Input) -> None:
        while True:
            item = await entry.queue.get()
            try:
                await entry.handler(item)
            except asyncio.CancelledError:
                if not item.done.done():
                    item.done.cancel()
                raise
            except Exception as error:
                logger.exception(
                    "%s failed", _describe(input_name), extra={"message_id": item.message.message_id}
                )
                if not item.done.done():
                    item.done.set_exception(error)
                    # Already logged: a caller that did not keep the future must not be warned again.
                    item.done.exception()
            else:
                if not item.done.done():
                    item.done.set_result(None)


def _describe(input_name: str) -> str:
    return "desired-properties handler" if input_name == _DESIRED else f"handler for input {input_name!r}"
