"""`make run`: the whole loop on bundled sample data, under edgesim, in a few minutes.

1. Trains the first model (v1) on samples/history (normal operation).
2. Runs every module of deployment.template.json under edgesim with v1 assigned, streaming samples/stream one
   file at a time: normal data, a few bad files, then a fleet that drifts to a new operating point.
3. retrain-trigger sees the drift, trains v2 on what reached the cloud share (the local backend a disconnected
   site uses), compares it with v1 on recent data, promotes it, and gpu-inferencer swaps to it.
4. Prints what happened; everything is in the run directory (report.json, upstream.jsonl, logs/, cloud/).

The demo's only departures from the template are a few faster timings and the local training backend, passed
to the run with `--desired` the way a site would patch the twins; the template's values stay production ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def demo_desired(repo: Path) -> dict[str, dict[str, Any]]:
    return {
        "share-ingest": {"stable_seconds": 1},
        "cloud-share-uploader": {"transferProperties": {"scanIntervalSeconds": 5}},
        "retrain-trigger": {
            "backend": "local",
            "local": {"cwd": str(repo)},
            "evaluate_interval_s": 2,
            "debounce_s": 4,
            "drift": {"window_rows": 3000, "min_rows": 1000},
            "promotion": {"eval_rows": 3000},
        },
    }


def run(command: list[str]) -> int:
    print("$ " + " ".join(command), flush=True)
    return subprocess.call(command, cwd=REPO)


def summarise(run_dir: Path) -> list[str]:
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    modules = report["modules"]

    def counter(module: str, name: str) -> int:
        return int(modules.get(module, {}).get("counters", {}).get(name, 0))

    verdict = "ok" if report["ok"] else "NOT ok"
    ingested, refused = counter("share-ingest", "files"), counter("share-ingest", "refused")
    rows, batches = counter("transformer", "rows"), counter("transformer", "batches")
    lines = [
        "",
        f"== edgeloop demo: {verdict} in {report['duration_s']:.0f} s ({run_dir})",
        f"ingested     {ingested} files, {refused} refused",
        f"transformed  {rows} rows into {batches} batches;"
        f" quarantined {counter('transformer', 'quarantined_rows')} rows and"
        f" {counter('transformer', 'quarantined_files')} files; {counter('transformer', 'duplicates')}"
        " duplicate files skipped",
        f"uploaded     {counter('cloud-share-uploader', 'uploaded')} blobs"
        f" ({counter('cloud-share-uploader', 'bytes'):,} bytes) to Blob storage (Azurite)",
        f"scored       {counter('gpu-inferencer', 'rows_scored')} rows;"
        f" {counter('gpu-inferencer', 'anomalies')} anomalies"
        f" ({counter('gpu-inferencer', 'anomalies_suppressed')} beyond the per-batch message cap)",
        f"upstream     {report['upstream_messages']} messages to IoT Hub (upstream.jsonl)",
    ]
    for request in report["retrain_requests"]:
        drift = request.get("evidence", {}).get("drift", {})
        lines.append(
            f"retrain      {request['reason']} at {request['at']}: score PSI {drift.get('score')},"
            f" drifted {', '.join(drift.get('drifted', []))}"
        )
    candidate = modules and report["twins"].get("retrain-trigger", {}).get("reported", {}).get(
        "lastCandidate"
    )
    if candidate:
        verdict = "promoted" if candidate.get("promoted") else "rejected"
        lines.append(f"candidate    v{candidate.get('version')} {verdict}: {candidate.get('reason')}")
    served = ", then ".join(f"{m['name']} v{m['version']} ({m['since']})" for m in report["models_served"])
    lines.append(f"served       {served or 'nothing'}")
    for problem in report.get("problems", []):
        lines.append(f"problem      {problem}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/latest"))
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between streamed files")
    parser.add_argument("--timeout", type=float, default=420.0, help="cap on the run (seconds)")
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else REPO / args.out
    model_v1 = REPO / "runs" / "models" / "sensor-ae-v1"
    python = sys.executable
    trained = run(
        [python, "-m", "ml", "train", "--data", "samples/history", "--out", str(model_v1),
         "--name", "sensor-ae", "--version", "1", "--seed", "1"]
    )  # fmt: skip
    if trained != 0:
        print("demo: training the first model failed", file=sys.stderr)
        return trained
    command = [
        python, "-m", "edgesim", "run",
        "--manifest", "deployment.template.json",
        "--model", str(model_v1),
        "--data", "samples/stream", "--data-interval", str(args.interval),
        "--until-idle", "--idle-seconds", "15", "--timeout", str(args.timeout),
        "--out", str(out),
    ]  # fmt: skip
    for module, patch in demo_desired(REPO).items():
        command += ["--desired", f"{module}={json.dumps(patch)}"]
    code = run(command)
    if (out / "report.json").is_file():
        print("\n".join(summarise(out)))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
