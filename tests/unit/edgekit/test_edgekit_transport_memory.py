import asyncio
import logging
from typing import Any

import pytest

from edgekit import InMemoryTransport, Message, MethodRequest, MethodResponse, make_message


async def connected(**kwargs) -> InMemoryTransport:
    transport = InMemoryTransport(**kwargs)
    await transport.connect()
    return transport


async def test_records_sent_messages_per_output():
    transport = await connected()
    message = make_message("file-ready", 1, {"file_id": "x"})
    await transport.send("files", message)
    await transport.send("files", message)
    assert [m.output_name for m in transport.sent["files"]] == ["files", "files"]
    assert transport.sent["files"][0].body == message.body
    assert transport.sent["other"] == []


async def test_send_requires_connect():
    with pytest.raises(ConnectionError):
        await InMemoryTransport().send("out", Message(b""))


async def test_inputs_handled_in_order_one_at_a_time():
    transport = await connected()
    seen: list[str] = []
    active = 0
    most = 0

    async def handler(message: Message) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0)
        seen.append(message.text())
        assert message.input_name == "files"
        active -= 1

    transport.on_input("files", handler)
    transport.start_intake()
    futures = [transport.deliver_nowait("files", Message(str(i).encode())) for i in range(20)]
    await asyncio.gather(*futures)
    assert seen == [str(i) for i in range(20)]
    assert most == 1


async def test_concurrency_allows_parallel_handlers():
    transport = await connected()
    gate = asyncio.Event()
    running = 0

    async def handler(message: Message) -> None:
        nonlocal running
        running += 1
        if running == 3:
            gate.set()
        await gate.wait()

    transport.on_input("batches", handler, concurrency=3)
    transport.start_intake()
    await asyncio.wait_for(
        asyncio.gather(*(transport.deliver("batches", Message(b"")) for _ in range(3))), timeout=5
    )
    assert running == 3


async def test_arrivals_are_held_until_intake_starts():
    transport = await connected()
    seen: list[bytes] = []

    async def handler(message: Message) -> None:
        seen.append(message.body)

    transport.on_input("files", handler)
    pending = transport.deliver_nowait("files", Message(b"early"))
    await asyncio.sleep(0.01)
    assert seen == []
    transport.start_intake()
    await asyncio.wait_for(pending, 5)
    assert seen == [b"early"]


async def test_unknown_input_is_dropped_and_logged(caplog):
    transport = await connected()
    transport.start_intake()
    with caplog.at_level(logging.WARNING):
        await transport.deliver("nobody", Message(b"x"))
    assert transport.dropped == 1
    assert "no handler" in caplog.text


async def test_handler_exception_reaches_deliver_and_worker_survives():
    transport = await connected()
    calls = 0

    async def handler(message: Message) -> None:
        nonlocal calls
        calls += 1
        if message.body == b"bad":
            raise ValueError("bad message")

    transport.on_input("in", handler)
    transport.start_intake()
    with pytest.raises(ValueError, match="bad message"):
        await transport.deliver("in", Message(b"bad"))
    await transport.deliver("in", Message(b"good"))
    assert calls == 2


async def test_stop_intake_drops_new_but_drains_queued():
    transport = await connected()
    release = asyncio.Event()
    finished: list[bytes] = []

    async def handler(message: Message) -> None:
        await release.wait()
        finished.append(message.body)

    transport.on_input("in", handler)
    transport.start_intake()
    queued = [transport.deliver_nowait("in", Message(bytes([i]))) for i in range(3)]
    await asyncio.sleep(0)
    transport.stop_intake()
    late = transport.deliver_nowait("in", Message(b"late"))
    assert late.done()
    assert transport.dropped == 1
    asyncio.get_running_loop().call_later(0.05, release.set)
    assert await transport.drain(5)
    assert finished == [b"\x00", b"\x01", b"\x02"]
    assert all(f.done() for f in queued)


async def test_drain_gives_up_after_grace():
    transport = await connected()

    async def handler(message: Message) -> None:
        await asyncio.Event().wait()

    transport.on_input("in", handler)
    transport.start_intake()
    transport.deliver_nowait("in", Message(b""))
    await asyncio.sleep(0)
    assert not await transport.drain(0.05)


async def test_methods():
    transport = await connected()

    async def echo(request: MethodRequest) -> MethodResponse:
        if request.payload == "boom":
            raise RuntimeError("kaputt")
        return MethodResponse.ok({"echo": request.payload, "name": request.name})

    transport.on_method("echo", echo)
    transport.start_intake()
    response = await transport.call_method("echo", {"a": 1})
    assert response == MethodResponse(200, {"echo": {"a": 1}, "name": "echo"})
    assert (await transport.call_method("missing")).status == 404
    failed = await transport.call_method("echo", "boom")
    assert failed.status == 500
    assert "kaputt" in failed.payload["error"]
    transport.stop_intake()
    assert (await transport.call_method("echo", 1)).status == 503


async def test_desired_patches_in_order_with_versions():
    transport = await connected(desired={"batch_rows": 5})
    seen: list[dict[str, Any]] = []

    async def slow(patch: dict[str, Any]) -> None:
        await asyncio.sleep(0.01 if patch.get("n") == 0 else 0)
        seen.append(patch)

    transport.on_desired(slow)
    transport.start_intake()
    futures = [transport.set_desired_nowait({"n": n}) for n in range(3)]
    await asyncio.gather(*futures)
    assert [p["n"] for p in seen] == [0, 1, 2]
    assert [p["$version"] for p in seen] == [2, 3, 4]
    twin = await transport.get_twin()
    assert twin["desired"] == {"$version": 4, "batch_rows": 5, "n": 2}


async def test_reported_merges_with_null_deleting():
    transport = await connected()
    await transport.patch_reported({"a": {"b": 1, "c": 2}, "d": 1})
    await transport.patch_reported({"a": {"b": None}, "d": None, "e": [1]})
    assert transport.reported == {"a": {"c": 2}, "e": [1]}
    assert (await transport.get_twin())["reported"] == {"a": {"c": 2}, "e": [1]}
    assert len(transport.reported_patches) == 2


async def test_wait_sent():
    transport = await connected()

    async def later() -> None:
        for _ in range(2):
            await asyncio.sleep(0.01)
            await transport.send("out", Message(b"x"))

    task = asyncio.ensure_future(later())
    assert len(await transport.wait_sent("out", 2, within_s=5)) == 2
    await task
    with pytest.raises(TimeoutError):
        await transport.wait_sent("out", 3, within_s=0.05)


def test_duplicate_registrations_are_errors():
    transport = InMemoryTransport()

    async def handler(message: Message) -> None:
        return None

    transport.on_input("in", handler)
    with pytest.raises(ValueError, match="already"):
        transport.on_input("in", handler)
    with pytest.raises(ValueError, match="concurrency"):
        transport.on_input("other", handler, concurrency=0)
