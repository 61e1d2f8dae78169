"""The IoT Edge workload API as azure-iot-device calls it."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp

from edgesim.sas import sign


async def _request(harness, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
    connector = aiohttp.UnixConnector(path=str(harness.socket_dir / "workload.sock"))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, f"http://workload{path}?api-version=2019-01-30", data=body) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_trust_bundle_is_the_hub_ca(harness):
    await harness.start(("producer",), {})
    status, body = await _request(harness, "GET", "/trust-bundle")
    assert status == 200
    assert body["certificate"] == harness.hub.ca_cert_path.read_text()


async def test_sign_uses_the_module_key(harness):
    await harness.start(("producer",), {})
    genid = harness.hub.edge_environment("producer", "unix:///x")["IOTEDGE_MODULEGENERATIONID"]
    data = "edgeloop-sim.azure-devices.net%2Fdevices%2Fsim-device%2Fmodules%2Fproducer\n1700000000"
    request = {"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(data.encode()).decode()}
    status, body = await _request(
        harness, "POST", f"/modules/producer/genid/{genid}/sign", json.dumps(request)
    )
    assert status == 200
    assert body["digest"] == sign(harness.hub.module_key("producer"), data)


async def test_sign_refuses_unknown_module_wrong_generation_and_bad_requests(harness):
    await harness.start(("producer",), {})
    genid = harness.hub.edge_environment("producer", "unix:///x")["IOTEDGE_MODULEGENERATIONID"]
    good = {"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(b"x").decode()}
    assert (await _request(harness, "POST", f"/modules/nobody/genid/{genid}/sign", json.dumps(good)))[
        0
    ] == 404
    assert (await _request(harness, "POST", "/modules/producer/genid/old/sign", json.dumps(good)))[0] == 404
    bad_algo = {**good, "algo": "SHA1"}
    assert (await _request(harness, "POST", f"/modules/producer/genid/{genid}/sign", json.dumps(bad_algo)))[
        0
    ] == 400
    assert (await _request(harness, "POST", f"/modules/producer/genid/{genid}/sign", "{not json"))[0] == 400
    not_b64 = {**good, "data": "***"}
    assert (await _request(harness, "POST", f"/modules/producer/genid/{genid}/sign", json.dumps(not_b64)))[
        0
    ] == 400
