"""Where training runs, and how a trained model is registered.

`TrainingBackend` is the seam: `submit(request) -> job id`, `status(job id)`, `result(job id) -> MODEL_DIR`.
`LocalProcessBackend` runs a command line (by default `python -m ml train ...`) as a child process, without
waiting for it: its output goes to the log line by line, a timeout kills its whole process group. An Azure ML
backend (a command job) implements the same Protocol; it comes with the Azure adapter work.

`RegistryCli` registers a model folder with `python -m ml registry register` (a subprocess: this module does
not import ml/, which needs torch) and returns the version the registry gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

TRAIN_PLACEHOLDERS = ("python", "data", "cloud_share", "out", "name", "seed", "request_id")
REGISTER_PLACEHOLDERS = ("python", "model_dir", "registry_root", "name")
_LINE_LIMIT = 1 << 20


class CommandError(ValueError):
    """A command line template with an unknown placeholder or a bad brace."""


class JobError(RuntimeError):
    """A job that is unknown, not finished, or finished without a model."""


class RegistryError(RuntimeError):
    """Registration failed (exit code, timeout, or no version in its output)."""


def format_command(template: Sequence[str], values: Mapping[str, object]) -> list[str]:
    """Fill `{placeholder}`s in each argument (`{{` for a literal brace)."""
    try:
        return [part.format_map(values) for part in template]
    except KeyError as error:
        known = ", ".join("{" + name + "}" for name in values)
        raise CommandError(f"unknown placeholder {{{error.args[0]}}} (known: {known})") from error
    except (ValueError, IndexError) as error:
        raise CommandError(f"bad command template {list(template)!r}: {error}") from error


def check_template(template: Sequence[str], placeholders: Sequence[str]) -> list[str]:
    """Validate a template against the placeholders it may use (for settings validators)."""
    if not template:
        raise CommandError("the command is empty")
    format_command(template, {name: "x" for name in placeholders})
    return list(template)


@dataclass(frozen=True)
class TrainingRequest:
    request_id: str
    name: str
    data_dir: Path
    out_dir: Path
    seed: int
    reason: str = ""


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"

    @property
    def finished(self) -> bool:
        return self is not JobState.RUNNING


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    exit_code: int | None
    detail: str
    output_tail: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "exit_code": self.exit_code,
            "detail": self.detail,
            "output_tail": list(self.output_tail[-10:]),
        }


class TrainingBackend(Protocol):
    async def submit(self, request: TrainingRequest) -> str: ...

    async def status(self, job_id: str) -> JobStatus: ...

    async def result(self, job_id: str) -> Path: ...

    async def close(self) -> None:
        """Stop what is still running (the module is stopping)."""


@dataclass
class _Job:
    request: TrainingRequest
    process: asyncio.subprocess.Process
    tail: deque[str]
    state: JobState = JobState.RUNNING
    detail: str = "running"
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class LocalProcessBackend:
    """Training as a child process. Constructed with settings only; processes start in `submit`."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cloud_share: Path,
        timeout_s: float,
        python: str = sys.executable,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        kill_grace_s: float = 5.0,
        tail_lines: int = 50,
        logger: logging.Logger | None = None,
        data: str | None = None,
    ) -> None:
        self.command = check_template(command, TRAIN_PLACEHOLDERS)
        # {data} is the local training folder, unless the job reads its data elsewhere (Azure ML: a datastore
        # path over the Blob container the uploader fills).
        self.data = data
        self.cloud_share = cloud_share
        self.timeout_s = timeout_s
        self.python = python
        self.cwd = cwd
        self.env = dict(env or {})
        self.kill_grace_s = kill_grace_s
        self.tail_lines = tail_lines
        self.logger = logger or logging.getLogger("edgeloop.retrain.backend")
        self._jobs: dict[str, _Job] = {}

    def argv(self, request: TrainingRequest) -> list[str]:
        return format_command(
            self.command,
            {
                "python": self.python,
                "data": self.data if self.data is not None else str(request.data_dir),
                "cloud_share": str(self.cloud_share),
                "out": str(request.out_dir),
                "name": request.name,
                "seed": request.seed,
                "request_id": request.request_id,
            },
        )

    async def submit(self, request: TrainingRequest) -> str:
        job_id = f"local-{request.request_id[:16]}"
        if job_id in self._jobs and not self._jobs[job_id].state.finished:
            return job_id
        argv = self.argv(request)
        request.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.logger.info("job %s: starting %s", job_id, argv)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            # Its own process group, so a timeout kills what the job started too.
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        job = _Job(request, process, deque(maxlen=self.tail_lines))
        job.watcher = asyncio.ensure_future(self._watch(job_id, job))
        self._jobs[job_id] = job
        return job_id

    async def status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        return JobStatus(job_id, job.state, job.process.returncode, job.detail, tuple(job.tail))

    async def wait(self, job_id: str) -> JobStatus:
        """Until the job has finished (tests, and callers that do not poll)."""
        job = self._job(job_id)
        if job.watcher is not None:
            await asyncio.shield(job.watcher)
        return await self.status(job_id)

    async def result(self, job_id: str) -> Path:
        job = self._job(job_id)
        if job.state is not JobState.SUCCEEDED:
            raise JobError(f"job {job_id} has no model: {job.state.value} ({job.detail})")
        return job.request.out_dir

    async def close(self) -> None:
        for job_id, job in list(self._jobs.items()):
            if not job.state.finished:
                self.logger.warning("job %s: stopped with the module", job_id)
                job.detail = "stopped with the module"
                await self._kill(job.process)
            if job.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await job.watcher

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobError(f"no job {job_id} here (started before a restart?)") from None

    async def _watch(self, job_id: str, job: _Job) -> None:
        pump = asyncio.ensure_future(self._pump(job_id, job))
        timed_out = False
        try:
            await asyncio.wait_for(job.process.wait(), self.timeout_s)
        except TimeoutError:
            timed_out = True
            self.logger.warning("job %s: timed out after %g s, killing it", job_id, self.timeout_s)
            await self._kill(job.process)
        try:
            # A grandchild that kept the pipe open must not keep the job unfinished.
            await asyncio.wait_for(pump, self.kill_grace_s)
        except TimeoutError:
            pump.cancel()
        code = job.process.returncode
        out = job.request.out_dir
        if timed_out:
            job.state, job.detail = JobState.TIMED_OUT, f"timed out after {self.timeout_s:g} s"
        elif code != 0:
            job.state, job.detail = JobState.FAILED, job.detail if job.detail != "running" else f"exit {code}"
        elif not (out / "model.json").is_file() or not (out / "model.onnx").is_file():
            job.state, job.detail = JobState.FAILED, f"exit 0 but no model.json and model.onnx in {out}"
        else:
            job.state, job.detail = JobState.SUCCEEDED, f"model in {out}"
        log = self.logger.info if job.state is JobState.SUCCEEDED else self.logger.warning
        log("job %s: %s (%s)", job_id, job.state.value, job.detail)

    async def _pump(self, job_id: str, job: _Job) -> None:
        stream = job.process.stdout
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                # A line past the limit: keep going with what follows rather than lose the rest.
                raw = await stream.read(_LINE_LIMIT)
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            job.tail.append(line)
            self.logger.info("job %s | %s", job_id, line)

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if process.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), self.kill_grace_s)


async def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a short command; on timeout its process group is killed."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    code = process.returncode if process.returncode is not None else -1
    return code, out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace")


class ModelRegistry(Protocol):
    async def register(self, model_dir: Path, name: str) -> str:
        """Register `model_dir` under `name`; returns the new version."""
        ...


class RegistryCli:
    """The local registry through its CLI (`python -m ml registry register MODEL_DIR --root R --name N`)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        registry_root: Path,
        timeout_s: float,
        python: str = sys.executable,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = check_template(command, REGISTER_PLACEHOLDERS)
        self.registry_root = registry_root
        self.timeout_s = timeout_s
        self.python = python
        self.cwd = cwd
        self.env = dict(env or {})

    async def register(self, model_dir: Path, name: str) -> str:
        argv = format_command(
            self.command,
            {
                "python": self.python,
                "model_dir": str(model_dir),
                "registry_root": str(self.registry_root),
                "name": name,
            },
        )
        try:
            code, out, err = await run_command(argv, timeout_s=self.timeout_s, cwd=self.cwd, env=self.env)
        except TimeoutError:
            raise RegistryError(f"registration timed out after {self.timeout_s:g} s") from None
        if code != 0:
            raise RegistryError(f"registration failed (exit {code}): {_last_lines(err or out)}")
        return parse_registered_version(out)


def parse_registered_version(output: str) -> str:
    """The `version` of the JSON object the register command printed (the whole output, or its last
    JSON line when it also printed other text)."""
    candidates = [output, *reversed(output.strip().splitlines())]
    for text in candidates:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("version") is not None:
            return str(value["version"])
    raise RegistryError(f"no version in the register command's output: {_last_lines(output)!r}")


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-count:])
