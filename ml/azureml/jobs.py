"""Training as an Azure ML command job: `python -m ml train` unchanged, on the configured compute and
environment, reading a datastore folder (or a data asset) and writing MODEL_DIR to a job output.

The code snapshot is the `ml` package alone, staged into a folder whose root holds `ml/`, so the command's
`python -m ml` finds it; its content hash is stable, so Azure ML reuses a snapshot it already has. An attached
on-premises machine or Kubernetes cluster is just another compute name. The job's output folder is chosen
here (`edgeloop/jobs/<job>/model/` in the configured datastore), so the result is fetched through the same
transport as everything else.
"""

from __future__ import annotations

import shlex
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from azure.ai.ml import Input, Output, command
from azure.ai.ml.entities import Job
from azure.core.exceptions import AzureError

from ml.azureml.config import AzureMLError, require
from ml.azureml.workspace import DatastoreFiles, DatastorePath, Workspace
from ml.card import read_card, sha256_file, write_card

ML_PACKAGE = Path(__file__).resolve().parents[1]
OUTPUT_NAME = "model"
JOB_OUTPUT_ROOT = "edgeloop/jobs"
# Azure ML's terminal states; anything else is still on its way.
SUCCEEDED = "Completed"
TERMINAL = frozenset({"Completed", "Failed", "Canceled", "NotResponding"})
# Flags the job sets itself: passing them through would point the script somewhere else.
_RESERVED_FLAGS = frozenset({"--data", "--out"})
_SNAPSHOT_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache")


@dataclass(frozen=True)
class TrainJob:
    """What to run. `data` is an `azureml://datastores/<ds>/paths/<folder>/` path over the container the
    cloud-share-uploader fills, a data asset `azureml:<name>:<version>`, or an https folder URL."""

    data: str
    train_args: Sequence[str] = ()
    name: str = field(default_factory=lambda: f"edgeloop-train-{uuid.uuid4().hex[:12]}")
    display_name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def training_command(train_args: Sequence[str]) -> str:
    """The job's command line: the training CLI with the job's input and output put in by Azure ML."""
    for arg in train_args:
        if arg.split("=", 1)[0] in _RESERVED_FLAGS:
            raise AzureMLError(f"{arg.split('=', 1)[0]} is set by the job itself; leave it out")
    extra = f" {shlex.join(train_args)}" if train_args else ""
    return "python -m ml train --data ${{inputs.data}} --out ${{outputs." + OUTPUT_NAME + "}}" + extra


def environment_reference(environment: str) -> str:
    """`name` means its newest version (`name@latest`); `name:version`, `name@label` and `azureml:...` ids
    pass unchanged."""
    if environment.startswith("azureml:") or ":" in environment or "@" in environment:
        return environment
    return f"{environment}@latest"


def output_path(workspace: Workspace, job_name: str) -> DatastorePath:
    return DatastorePath(workspace.settings.datastore, f"{JOB_OUTPUT_ROOT}/{job_name}/{OUTPUT_NAME}/")


def stage_code(dest: Path, package: Path = ML_PACKAGE) -> Path:
    """A folder holding `ml/` (caches left out): the job's code snapshot."""
    if dest.exists() and any(dest.iterdir()):
        raise AzureMLError(f"{dest} is not empty; the code snapshot needs a folder of its own")
    shutil.copytree(package, dest / package.name, ignore=_SNAPSHOT_IGNORE, dirs_exist_ok=True)
    return dest


def submit(workspace: Workspace, job: TrainJob, code_dir: Path) -> Job:
    settings = workspace.settings
    compute, environment = settings.compute, settings.environment
    if not compute or not environment:
        require(settings, "compute", "environment")
        raise AssertionError("require() raises when either is missing")
    spec = command(
        name=job.name,
        display_name=job.display_name or job.name,
        experiment_name=settings.experiment,
        code=str(code_dir),
        command=training_command(job.train_args),
        environment=environment_reference(environment),
        compute=compute,
        inputs={"data": Input(type="uri_folder", path=job.data)},
        outputs={
            OUTPUT_NAME: Output(type="uri_folder", path=output_path(workspace, job.name).uri, mode="rw_mount")
        },
        tags={"edgeloop.kind": "train", **job.tags},
    )
    try:
        created: Job = workspace.client.jobs.create_or_update(spec)
    except AzureError as exc:
        raise AzureMLError(f"Azure ML refused job {job.name}: {_first_line(exc)}") from exc
    return created


def status(workspace: Workspace, job_name: str) -> str:
    try:
        found: Job = workspace.client.jobs.get(job_name)
    except AzureError as exc:
        raise AzureMLError(f"job {job_name}: {_first_line(exc)}") from exc
    # The SDK hands back a JobStatus enum for known states and a plain string for ones it does not know.
    state = found.status
    return str(getattr(state, "value", state) or "Unknown")


def wait(
    workspace: Workspace,
    job_name: str,
    *,
    poll_s: float = 30.0,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_status: Callable[[str], None] | None = None,
) -> str:
    """Poll until a terminal state and return it; `on_status` hears each change."""
    deadline = None if timeout_s is None else clock() + timeout_s
    last = None
    while True:
        current = status(workspace, job_name)
        if current != last and on_status is not None:
            on_status(current)
        last = current
        if current in TERMINAL:
            return current
        if deadline is not None and clock() >= deadline:
            raise AzureMLError(f"job {job_name} is still {current} after {timeout_s:g} s")
        sleep(poll_s)


def download_result(workspace: Workspace, job_name: str, dest: Path) -> Path:
    """The job's MODEL_DIR into `dest`, checked (model.onnx against the card's sha256), with the job's
    name recorded in the card's lineage so the registry carries it into the asset's properties."""
    state = status(workspace, job_name)
    if state != SUCCEEDED:
        raise AzureMLError(f"job {job_name} is {state}; only a {SUCCEEDED} job has a model to download")
    files = DatastoreFiles(workspace)
    prefix = output_path(workspace, job_name)
    found = files.list(prefix)
    if not found:
        raise AzureMLError(f"job {job_name} left nothing in {prefix.uri}")
    for item in found:
        relative = item.path[len(prefix.path) :]
        target = (dest / relative).resolve()
        if not target.is_relative_to(dest.resolve()):
            raise AzureMLError(f"{item.uri} would land outside {dest}")
        files.download(item, target)
    card = read_card(dest)
    actual = sha256_file(dest / card.model_file)
    if actual != card.model_sha256:
        raise AzureMLError(f"job {job_name}: {card.model_file} has sha256 {actual}, its card says otherwise")
    lineage = {**(card.lineage or {}), "job_id": job_name}
    write_card(card.model_copy(update={"lineage": lineage}), dest)
    return dest


def _first_line(exc: AzureError) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
