"""`python -m ml.azureml ...`, the same commands as `python -m ml azureml ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from ml.azureml.cli import add_subcommands
from ml.errors import MlError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.azureml")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["azureml", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = args.handler(args)
    except MlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
