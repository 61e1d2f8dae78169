"""Module twins and direct methods through the emulator, with real SDK clients."""

from __future__ import annotations

import asyncio

import pytest

MODULES = ("inferencer", "other")
DESIRED = {
    "inferencer": {"model": {"name": "sensor-ae", "version": "1"}, "threshold": 0.5},
    "other": {"secret": "only for other"},
}


async def test_twin_get_desired_patch_and_reported_patch(harness):
    await harness.start(MODULES, {}, DESIRED)
    client = await harness.spawn(
        "inferencer",
        [
            {"op": "listen"},
            {"op": "get_twin"},
            {"op": "ready"},
            {"op": "wait_desired", "timeout": 30},
            {
                "op": "patch_reported",
                "patch": {"model": {"name": "sensor-ae", "version": "2"}, "health": "ok"},
            },
        ],
        start_path="connection_string",
    )
    twin = (await client.wait_for("twin"))["twin"]
    assert {k: v for k, v in twin["desired"].items() if k != "$version"} == DESIRED["inferencer"]
    assert "secret" not in twin["desired"]  # a module sees only its own twin
    await client.wait_for("ready")
    delivered = await harness.hub.patch_desired("inferencer", {"model": {"version": "2"}, "threshold": None})
    patch = (await client.wait_for("desired"))["patch"]
    assert patch == delivered
    assert patch["model"] == {"version": "2"}
    assert patch["$version"] > twin["desired"]["$version"]
    await client.wait_for("reported")
    assert await client.finish() == 0
    stored = harness.hub.get_twin("inferencer")
    assert stored["reported"]["model"] == {"name": "sensor-ae", "version": "2"}
    assert stored["reported"]["health"] == "ok"
    assert stored["desired"]["model"] == {"name": "sensor-ae", "version": "2"}
    assert "threshold" not in stored["desired"]


async def test_invalid_reported_patch_is_rejected(harness):
    await harness.start(MODULES, {}, DESIRED)
    client = await harness.spawn(
        "inferencer",
        [{"op": "patch_reported", "patch": {"ok": 1}}, {"op": "patch_reported", "patch": {"bad.name": 1}}],
    )
    await client.wait_for("reported")
    # The SDK turns the hub's 400 into a ClientError for the caller.
    with pytest.raises(AssertionError, match=r"patch_reported.*ClientError"):
        await client.wait_for("reported", timeout=30)
    reported = harness.hub.get_twin("inferencer")["reported"]
    assert reported["ok"] == 1
    assert "bad.name" not in reported


async def test_direct_method_gets_the_module_response(harness):
    await harness.start(MODULES, {}, DESIRED)
    client = await harness.spawn(
        "inferencer",
        [
            {"op": "listen"},
            {"op": "ready"},
            {"op": "serve_methods", "count": 1, "timeout": 30, "status": 201},
        ],
    )
    await client.wait_for("ready")
    status, payload = await harness.hub.invoke_method(
        "inferencer", "reload", {"force": True, "why": "été"}, timeout=20
    )
    assert (status, payload) == (201, {"echo": {"force": True, "why": "été"}})
    assert (await client.wait_for("method"))["name"] == "reload"


async def test_direct_method_times_out_with_504(harness):
    await harness.start(MODULES, {}, DESIRED)
    client = await harness.spawn(
        "inferencer",
        [
            {"op": "listen"},
            {"op": "ready"},
            {"op": "serve_methods", "count": 1, "timeout": 30, "delay": 2},
            {"op": "ready"},
            {"op": "wait_stdin"},
        ],
    )
    await client.wait_for("ready")
    status, payload = await harness.hub.invoke_method("inferencer", "slow", None, timeout=1)
    assert status == 504
    assert "Timed out" in payload["message"]
    # The late answer is dropped without harm; the hub still serves the module.
    await client.wait_for("method")
    await client.wait_for("ready")  # the late answer has been sent
    await asyncio.sleep(0.5)
    assert "inferencer" in harness.hub.stats().connected
    await client.go_on()
    assert await client.finish() == 0


async def test_direct_method_to_a_disconnected_module_is_404(harness):
    await harness.start(MODULES, {}, DESIRED)
    status, _ = await harness.hub.invoke_method("other", "ping", {}, timeout=2)
    assert status == 404


async def test_desired_patch_while_offline_is_in_the_twin_at_next_start(harness):
    await harness.start(MODULES, {}, DESIRED)
    await harness.hub.patch_desired("inferencer", {"threshold": 0.9})
    await harness.restart()
    client = await harness.spawn("inferencer", [{"op": "get_twin"}])
    twin = (await client.wait_for("twin"))["twin"]
    assert twin["desired"]["threshold"] == 0.9
