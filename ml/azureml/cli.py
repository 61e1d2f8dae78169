"""`python -m ml azureml ...`: the Azure ML registry and training jobs from the command line.

`add_subcommands(subparsers)` adds the `azureml` command to the ml CLI; each parsed command carries
`handler(args) -> JSON-able result`, raising `AzureMLError` / registry errors (all `MlError`s) on refusal.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml.azureml import jobs
from ml.azureml.config import AzureMLSettings, load_settings
from ml.azureml.registry import AzureMLRegistry
from ml.azureml.workspace import Workspace, connect
from ml.registry import LATEST

log = logging.getLogger("ml.azureml")
DEFAULT_CACHE = Path("models/azureml-cache")
WorkspaceFactory = Callable[[AzureMLSettings], Workspace]


def add_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "azureml", help="Azure ML: model registry and training jobs", description=__doc__
    )
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default .env)")
    for flag, setting in (
        ("--subscription-id", "AZUREML_SUBSCRIPTION_ID"),
        ("--resource-group", "AZUREML_RESOURCE_GROUP"),
        ("--workspace", "AZUREML_WORKSPACE"),
        ("--compute", "AZUREML_COMPUTE"),
        ("--environment", "AZUREML_ENVIRONMENT"),
        ("--datastore", "AZUREML_DATASTORE"),
        ("--experiment", "AZUREML_EXPERIMENT"),
    ):
        parser.add_argument(flag, default=None, help=f"overrides {setting}")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"where cards are cached ({DEFAULT_CACHE})"
    )
    actions = parser.add_subparsers(dest="azureml_action", required=True)

    register = actions.add_parser("register", help="upload MODEL_DIR as a new model version")
    register.add_argument("model_dir", type=Path)
    register.add_argument("--name", default=None, help="register under this name (default: the card's)")
    register.add_argument("--version", default=None, help="this version (default: the highest + 1)")
    listing = actions.add_parser("list", help="edgeloop model versions in the workspace")
    listing.add_argument("name", nargs="?", default=None)
    show = actions.add_parser("show", help="one version's card")
    show.add_argument("name")
    show.add_argument("version", nargs="?", default=LATEST)
    fetch = actions.add_parser("fetch", help="download a version to DIR, integrity-checked")
    fetch.add_argument("name")
    fetch.add_argument("version")
    fetch.add_argument("--out", type=Path, required=True)

    train = actions.add_parser(
        "train",
        help="submit `python -m ml train` as a command job",
        description="Arguments after `--` go to `python -m ml train` (e.g. -- --window 4 --epochs 30).",
    )
    train.add_argument(
        "--data", required=True, help="azureml://datastores/<ds>/paths/<dir>/ or azureml:<asset>:<v>"
    )
    train.add_argument("--name", default=None, help="job name (default edgeloop-train-<random>)")
    train.add_argument("--wait", action="store_true", help="poll until the job ends")
    train.add_argument("--download", type=Path, default=None, help="with --wait: fetch MODEL_DIR here")
    train.add_argument("--register", action="store_true", help="with --download: register it")
    train.add_argument("--poll-s", type=float, default=30.0)
    train.add_argument("--timeout-s", type=float, default=None)
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then `python -m ml train` options")
    job_status = actions.add_parser("job-status", help="a job's state")
    job_status.add_argument("job")
    job_wait = actions.add_parser("job-wait", help="poll a job until it ends")
    job_wait.add_argument("job")
    job_wait.add_argument("--poll-s", type=float, default=30.0)
    job_wait.add_argument("--timeout-s", type=float, default=None)
    job_download = actions.add_parser("job-download", help="a finished job's MODEL_DIR")
    job_download.add_argument("job")
    job_download.add_argument("--out", type=Path, required=True)

    parser.set_defaults(handler=run)
    return parser


def settings_from(args: argparse.Namespace) -> AzureMLSettings:
    return load_settings(
        args.env_file,
        subscription_id=args.subscription_id,
        resource_group=args.resource_group,
        workspace=args.workspace,
        compute=args.compute,
        environment=args.environment,
        datastore=args.datastore,
        experiment=args.experiment,
    )


def run(args: argparse.Namespace, *, workspace_factory: WorkspaceFactory | None = None) -> Any:
    factory: WorkspaceFactory = workspace_factory or (lambda settings: connect(settings))
    workspace = factory(settings_from(args))
    action = args.azureml_action
    registry = AzureMLRegistry(workspace, cache_dir=args.cache_dir)
    if action == "register":
        return registry.register(args.model_dir, name=args.name, version=args.version).summary()
    if action == "list":
        return [ref.summary() for ref in registry.list(args.name)]
    if action == "show":
        ref = registry.get(args.name, args.version)
        return {**ref.summary(), "card": ref.card.model_dump(mode="json", by_alias=True, exclude_unset=True)}
    if action == "fetch":
        return registry.fetch(args.name, args.version, args.out).summary()
    if action == "train":
        return _train(args, workspace, registry)
    if action == "job-status":
        return {"job": args.job, "status": jobs.status(workspace, args.job)}
    if action == "job-wait":
        final = jobs.wait(workspace, args.job, poll_s=args.poll_s, timeout_s=args.timeout_s, on_status=_say)
        return {"job": args.job, "status": final}
    if action == "job-download":
        return {"job": args.job, "model_dir": str(jobs.download_result(workspace, args.job, args.out))}
    raise AssertionError(f"unhandled azureml action {action}")


def _train(args: argparse.Namespace, workspace: Workspace, registry: AzureMLRegistry) -> Any:
    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    job = jobs.TrainJob(data=args.data, train_args=train_args, **({"name": args.name} if args.name else {}))
    with tempfile.TemporaryDirectory(prefix="edgeloop-code-") as code:
        created = jobs.submit(workspace, job, jobs.stage_code(Path(code)))
    result: dict[str, Any] = {"job": created.name, "status": created.status, "studio_url": created.studio_url}
    if not args.wait:
        return result
    result["status"] = jobs.wait(
        workspace, job.name, poll_s=args.poll_s, timeout_s=args.timeout_s, on_status=_say
    )
    if args.download is not None and result["status"] == jobs.SUCCEEDED:
        result["model_dir"] = str(jobs.download_result(workspace, job.name, args.download))
        if args.register:
            result["registered"] = registry.register(args.download).summary()
    return result


def _say(state: str) -> None:
    log.info("job state: %s", state)
