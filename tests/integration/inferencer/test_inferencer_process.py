"""`python -m inferencer` as a process: settings from the environment, the model loaded from a registry
folder, the endpoint serving on loopback, and a graceful exit on SIGTERM."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.unit.inferencer.kit import COLUMNS, write_model

MODULE_DIR = Path(__file__).resolve().parents[3] / "modules" / "gpu-inferencer"
KEY = "process-test-key"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def wait_for_line(process: subprocess.Popen[str], pattern: str, within_s: float = 30.0) -> re.Match[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + within_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"{pattern!r} not logged; output:\n{''.join(seen)}")


def request(url: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json", **({"x-api-key": key} if key else {})}
    try:
        # Only http://127.x URLs this test builds.
        prepared = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
        with urllib.request.urlopen(prepared, timeout=10) as reply:  # noqa: S310
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_module_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    write_model(tmp_path / "registry" / "sensor-ae" / "3", version="3", bias=1.0, threshold=0.5)
    host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    env = {
        **os.environ,
        "IOTEDGE_MODULEID": "gpu-inferencer",
        "EDGEKIT_TRANSPORT": "memory",
        "EDGEKIT_METRICS_PORT": "0",
        "EDGEKIT_STATE_DIR": str(tmp_path / "state"),
        "INFERENCER_CLOUD_SHARE_DIR": str(tmp_path / "cloud"),
        "INFERENCER_REGISTRY_ROOT": str(tmp_path / "registry"),
        "INFERENCER_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "INFERENCER_MODEL": json.dumps(
            {"name": "sensor-ae", "version": "latest", "uri": "registry://sensor-ae/latest"}
        ),
        "INFERENCER_PROVIDERS": json.dumps(["cuda", "cpu"]),
        "INFERENCER_ENDPOINT_HOST": host,
        "INFERENCER_ENDPOINT_PORT": "0",
        "INFERENCER_API_KEY": KEY,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "inferencer"],
        cwd=MODULE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = int(wait_for_line(process, rf"scoring endpoint at http://{re.escape(host)}:(\d+)/score")[1])
        wait_for_line(process, r"serving model sensor-ae/3 on .*CPUExecutionProvider")
        base = f"http://{host}:{port}"
        assert request(f"{base}/healthz")[0] == 200
        status, body = request(f"{base}/score", {"rows": [dict.fromkeys(COLUMNS, 1.0)]}, KEY)
        assert status == 200
        assert body["model"] == {"name": "sensor-ae", "version": "3"}
        assert body["scores"] == [0.0]
        assert request(f"{base}/score", {"rows": []}, "nope")[0] == 401
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        assert KEY not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
