"""`python -m ml train ...` and `python -m ml registry ...`: results as JSON on stdout, logs on stderr.

Exit status: 0 done, 1 refused (bad data, integrity failure, existing version, ...), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ml.errors import DataError, MlError
from ml.registry import LATEST, LocalRegistry, default_root

if TYPE_CHECKING:
    from ml.train import TrainConfig

log = logging.getLogger("ml")
_ROOT_HELP = "registry folder (default $EDGELOOP_REGISTRY or ./models/registry)"

# CLI flags that map one-to-one onto TrainConfig fields (dest = field name).
_TRAIN_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--data", Path, "folder (or file) of Parquet/CSV training data; the cloud-share layout works as is"),
    ("--out", Path, "MODEL_DIR to write model.onnx and model.json into"),
    ("--name", str, "model name (default sensor-ae)"),
    ("--version", str, "model version written in the card (default 1; the registry assigns its own)"),
    ("--window", int, "rows per model input: N consecutive rows of one device (default 1)"),
    ("--seed", int, "random seed (default 0); same seed and data give the same model.onnx"),
    ("--epochs", int, "maximum epochs (default 40; early stopping may end sooner)"),
    ("--threshold-quantile", float, "quantile of held-out normal scores used as threshold (default 0.995)"),
    ("--device-column", str, "device column (default: detected by name)"),
    ("--timestamp-column", str, "timestamp column (default: detected by type and name)"),
    ("--label-column", str, "label column, anomalous rows excluded from training (default: detected)"),
    ("--max-rows", int, "train on at most this many normal inputs (a seeded sample)"),
)


# Command -> the module adding it. Imported only when asked for (azure-ai-ml alone takes 1.5 s to import),
# so `ml train` and `ml registry` stay quick; all of them for help and usage errors.
_EXTENSIONS = {
    "manifest": "ml.deploy.cli",
    "deploy": "ml.deploy.cli",
    "azureml": "ml.azureml.cli",
    "images": "ml.images.cli",
}
_OWN_COMMANDS = ("train", "registry")


def _extensions_for(argv: Sequence[str]) -> list[str]:
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in _OWN_COMMANDS:
        return []
    if command in _EXTENSIONS:
        return [_EXTENSIONS[command]]
    return sorted(set(_EXTENSIONS.values()))


def _build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train the default anomaly model and write MODEL_DIR")
    for flag, kind, text in _TRAIN_OPTIONS:
        train_parser.add_argument(flag, type=kind, default=None, help=text)
    train_parser.add_argument("--features", default=None, help="comma-separated feature columns")
    train_parser.add_argument("--config", type=Path, default=None, help="JSON file of options (the CLI wins)")

    registry = commands.add_parser("registry", help="the local model registry")
    registry.add_argument("--root", type=Path, default=None, help=_ROOT_HELP)
    actions = registry.add_subparsers(dest="action", required=True)
    register = actions.add_parser("register", help="add MODEL_DIR as a new version")
    register.add_argument("model_dir", type=Path)
    register.add_argument("--name", default=None, help="register under this name (default: the card's)")
    register.add_argument("--version", default=None, help="this version (default: the highest + 1)")
    listing = actions.add_parser("list", help="versions, all models or one")
    listing.add_argument("name", nargs="?", default=None)
    show = actions.add_parser("show", help="one version's card")
    show.add_argument("name")
    show.add_argument("version", nargs="?", default=LATEST)
    fetch = actions.add_parser("fetch", help="copy a version to DIR, integrity-checked")
    fetch.add_argument("name")
    fetch.add_argument("version")
    fetch.add_argument("--out", type=Path, required=True)
    verify = actions.add_parser("verify", help="check a version's model.onnx against its card")
    verify.add_argument("name")
    verify.add_argument("version", nargs="?", default=LATEST)

    # Commands that own their output and exit code register a `func` handler (text, not JSON, on stdout).
    for extension in _extensions_for(argv):
        importlib.import_module(extension).add_subcommands(commands)
    # `--root` is accepted after the action too (`registry list --root R`), which is where people put it.
    for action in (register, listing, show, fetch, verify):
        action.add_argument("--root", type=Path, default=None, dest="action_root", help=_ROOT_HELP)
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Options from `--config`, then the command line over them; TrainConfig rejects unknown keys."""
    from ml.train import TrainConfig  # torch and onnxruntime load only for training, not registry commands

    options: dict[str, Any] = {}
    if args.config is not None:
        try:
            loaded = json.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"--config {args.config}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise DataError(f"--config {args.config}: expected a JSON object")
        options.update(loaded)
    for flag, _kind, _text in _TRAIN_OPTIONS:
        field = flag.removeprefix("--").replace("-", "_")
        value = getattr(args, field)
        if value is not None:
            options[field] = value
    if args.features is not None:
        options["features"] = [name.strip() for name in args.features.split(",") if name.strip()]
    return TrainConfig.model_validate(options)


def _run(args: argparse.Namespace) -> Any:
    if args.command == "train":
        from ml.train import train

        result = train(train_config(args))
        card = result.card
        return {
            "model_dir": str(result.model_dir),
            "name": card.name,
            "version": card.version,
            "model_sha256": card.model_sha256,
            "threshold": card.threshold,
            "feature_columns": card.feature_columns,
            "window": card.window,
            "metrics": card.metrics,
        }
    registry = LocalRegistry(args.action_root or args.root or default_root())
    if args.action == "register":
        return registry.register(args.model_dir, name=args.name, version=args.version).summary()
    if args.action == "list":
        return [ref.summary() for ref in registry.list(args.name)]
    if args.action == "show":
        ref = registry.get(args.name, args.version)
        return {**ref.summary(), "card": ref.card.model_dump(mode="json", by_alias=True)}
    if args.action == "fetch":
        return registry.fetch(args.name, args.version, args.out).summary()
    if args.action == "verify":
        return {**registry.verify(args.name, args.version).summary(), "ok": True}
    raise AssertionError(f"unhandled action {args.action}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser(arguments).parse_args(arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handler = getattr(args, "func", None) or getattr(args, "handler", None)
    if handler is not None:
        try:
            return int(handler(args))
        except MlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        result = _run(args)
    except ValidationError as exc:
        print(f"error: invalid options: {exc}", file=sys.stderr)
        return 2
    except MlError as exc:  # card, data, export and registry refusals alike
        print(f"error: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
