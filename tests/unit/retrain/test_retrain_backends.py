"""The local training backend's process handling (success, failure exit code, timeout, output) and the
registry CLI, with small Python scripts standing in for `python -m ml` (no torch)."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retrain import (
    CommandError,
    JobError,
    JobState,
    LocalProcessBackend,
    RegistryCli,
    RegistryError,
    TrainingRequest,
    load_card,
    parse_registered_version,
)

HERE = Path(__file__).resolve().parent
MODELS_SCRIPT = str(HERE / "retrain_models.py")
TRAIN = ["{python}", MODELS_SCRIPT, "train", "--data", "{data}", "--out", "{out}", "--name", "{name}"]


def request(tmp_path: Path, request_id: str = "a" * 64) -> TrainingRequest:
    return TrainingRequest(
        request_id=request_id,
        name="sensor-ae",
        data_dir=tmp_path / "cloud" / "sensors",
        out_dir=tmp_path / "jobs" / request_id[:16] / "model",
        seed=3,
        reason="drift",
    )


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake_job.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def backend(tmp_path: Path, command: list[str], **kwargs: object) -> LocalProcessBackend:
    return LocalProcessBackend(
        command,
        cloud_share=tmp_path / "cloud",
        timeout_s=float(kwargs.pop("timeout_s", 60.0)),  # type: ignore[arg-type]
        kill_grace_s=float(kwargs.pop("kill_grace_s", 2.0)),  # type: ignore[arg-type]
        logger=logging.getLogger("test.retrain.backend"),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_successful_job_yields_its_model_dir_and_logs_its_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.retrain.backend")
    local = backend(tmp_path, TRAIN)
    job_id = await local.submit(request(tmp_path))
    status = await local.wait(job_id)
    assert status.state is JobState.SUCCEEDED
    assert status.exit_code == 0
    assert status.output_tail[0] == f"training on {tmp_path / 'cloud' / 'sensors'}"
    model_dir = await local.result(job_id)
    assert model_dir == tmp_path / "jobs" / ("a" * 16) / "model"
    assert load_card(model_dir).name == "sensor-ae"
    assert any(f"job {job_id} | wrote" in record.getMessage() for record in caplog.records)


async def test_placeholders_reach_the_command(tmp_path: Path) -> None:
    echo = script(
        tmp_path,
        """
        import json, sys
        print(json.dumps(sys.argv[1:]))
        sys.exit(4)
        """,
    )
    local = backend(
        tmp_path,
        ["{python}", echo, "{data}", "{cloud_share}", "{out}", "{name}", "{seed}", "{request_id}", "{{x}}"],
    )
    status = await local.wait(await local.submit(request(tmp_path)))
    req = request(tmp_path)
    assert json.loads(status.output_tail[0]) == [
        str(req.data_dir),
        str(tmp_path / "cloud"),
        str(req.out_dir),
        "sensor-ae",
        "3",
        "a" * 64,
        "{x}",
    ]


async def test_the_azureml_command_gets_the_datastore_path_as_data(tmp_path: Path) -> None:
    from retrain.settings import RetrainSettings

    settings = RetrainSettings.model_validate(
        {"backend": "azureml", "azureml": {"data": "azureml://datastores/edge/paths/dev1/sensors/"}}
    )
    remote = LocalProcessBackend(
        settings.azureml.command,
        cloud_share=tmp_path / "cloud",
        timeout_s=5,
        python="python3",
        data=settings.azureml.data,
    )
    req = request(tmp_path)
    assert remote.argv(req) == [
        "python3", "-m", "ml", "azureml", "train",
        "--data", "azureml://datastores/edge/paths/dev1/sensors/",
        "--wait", "--download", str(req.out_dir),
        "--", "--name", "sensor-ae", "--seed", "3",
    ]  # fmt: skip


async def test_a_failing_job_reports_its_exit_code_and_output(tmp_path: Path) -> None:
    failing = script(
        tmp_path,
        """
        import sys
        print("loading data")
        print("error: no Parquet under the data folder", file=sys.stderr)
        sys.exit(3)
        """,
    )
    local = backend(tmp_path, ["{python}", failing])
    job_id = await local.submit(request(tmp_path))
    status = await local.wait(job_id)
    assert status.state is JobState.FAILED
    assert status.exit_code == 3
    assert status.detail == "exit 3"
    assert status.output_tail == ("loading data", "error: no Parquet under the data folder")
    with pytest.raises(JobError, match="failed"):
        await local.result(job_id)


async def test_exit_zero_without_a_model_is_a_failure(tmp_path: Path) -> None:
    silent = script(tmp_path, "print('done, I think')\n")
    local = backend(tmp_path, ["{python}", silent])
    status = await local.wait(await local.submit(request(tmp_path)))
    assert status.state is JobState.FAILED
    assert "no model.json" in status.detail


async def test_a_job_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    sleeper = script(
        tmp_path,
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
        """,
    )
    local = backend(tmp_path, ["{python}", sleeper], timeout_s=1.5, kill_grace_s=1.0)
    job_id = await local.submit(request(tmp_path))
    assert (await local.status(job_id)).state is JobState.RUNNING
    status = await local.wait(job_id)
    assert status.state is JobState.TIMED_OUT
    assert status.exit_code is not None
    assert status.exit_code < 0
    assert status.output_tail == ("started",)
    assert not _alive_after(int(pid_file.read_text()), 5.0)


def _alive_after(pid: int, seconds: float) -> bool:
    """Whether `pid` still runs after up to `seconds` (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


async def test_close_stops_a_running_job(tmp_path: Path) -> None:
    sleeper = script(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    local = backend(tmp_path, ["{python}", sleeper], kill_grace_s=1.0)
    job_id = await local.submit(request(tmp_path))
    await local.close()
    status = await local.status(job_id)
    assert status.state is JobState.FAILED
    assert status.detail == "stopped with the module"


async def test_unknown_jobs_and_bad_templates(tmp_path: Path) -> None:
    local = backend(tmp_path, TRAIN)
    with pytest.raises(JobError, match="no job"):
        await local.status("local-unknown")
    with pytest.raises(CommandError, match=r"unknown placeholder \{dataset\}"):
        backend(tmp_path, ["{python}", "{dataset}"])
    with pytest.raises(CommandError, match="empty"):
        backend(tmp_path, [])
    with pytest.raises(FileNotFoundError):
        await backend(tmp_path, [str(tmp_path / "no-such-program")]).submit(request(tmp_path))


async def test_the_registry_cli_returns_the_new_version(tmp_path: Path) -> None:
    from tests.unit.retrain.retrain_models import write_model_dir

    write_model_dir(tmp_path / "m")
    cli = RegistryCli(
        [
            "{python}",
            MODELS_SCRIPT,
            "register",
            "{model_dir}",
            "--root",
            "{registry_root}",
            "--name",
            "{name}",
        ],
        registry_root=tmp_path / "registry",
        timeout_s=60,
        python=sys.executable,
    )
    assert await cli.register(tmp_path / "m", "sensor-ae") == "1"
    assert await cli.register(tmp_path / "m", "sensor-ae") == "2"
    assert load_card(tmp_path / "registry" / "sensor-ae" / "2").version == "2"
    failing = RegistryCli(
        ["{python}", "-c", "import sys; print('refused: duplicate', file=sys.stderr); sys.exit(1)"],
        registry_root=tmp_path / "registry",
        timeout_s=60,
    )
    with pytest.raises(RegistryError, match=r"exit 1.*refused: duplicate"):
        await failing.register(tmp_path / "m", "sensor-ae")
    slow = RegistryCli(
        ["{python}", "-c", "import time; time.sleep(30)"], registry_root=tmp_path, timeout_s=0.5
    )
    with pytest.raises(RegistryError, match="timed out"):
        await slow.register(tmp_path / "m", "sensor-ae")


def test_the_version_is_found_in_indented_or_mixed_output() -> None:
    assert parse_registered_version('{\n  "name": "s",\n  "version": "7"\n}\n') == "7"
    assert parse_registered_version('registering...\n{"version": 3}\n') == "3"
    with pytest.raises(RegistryError, match="no version"):
        parse_registered_version("ok\n")
