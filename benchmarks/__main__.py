"""`make bench`: run every benchmark, write benchmarks/results.json (DESIGN.md §8), print a table.

Each benchmark module exposes `run() -> list[dict]`; a result is {"name", "value", "unit", "baseline_value",
"ratio", "params"}, the ratio taken against a raw baseline measured in the same run (higher is better).
`python -m benchmarks [NAME ...]` runs only the named ones; `--quick` runs smaller sizes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"
# module name -> keyword arguments for a quick run (sizes a few seconds each on 2 cores)
BENCHMARKS: dict[str, dict[str, Any]] = {
    "transformer_bench": {"rows": 200_000, "repeat": 2},
    "inferencer_bench": {},
}


def _shape(params: dict[str, Any]) -> str:
    """The parameters that tell apart the results of one benchmark (batch size, threads, rows)."""
    keys = ("rows", "batch_rows", "intra_op_threads", "rows_per_request", "clients")
    return " ".join(f"{key.split('_')[0]}={params[key]}" for key in keys if key in params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {sorted(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(unknown)}")
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        kwargs = BENCHMARKS[name] if args.quick else {}
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            produced = module.run(**kwargs)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        for result in produced:
            number = result["value"]
            value = (
                f"{number:,.0f} {result['unit']}" if abs(number) >= 100 else f"{number:.3g} {result['unit']}"
            )
            print(
                f"   {result['name']:<40} {_shape(result['params']):<22} {value:>20}  ratio {result['ratio']}"
            )
        results.extend(produced)
        print(f"   ({time.monotonic() - started:.1f} s)", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results in {args.out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
