"""Regenerate the bundled sample data in samples/ (deterministic: same seed, same bytes).

The samples are what `make run` feeds the pipeline: normal sensor readings from a small fleet, in the
formats the transformer reads, plus a few files that must end in quarantine, to show that path too.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
HISTORY = SAMPLES / "history" / "sensors"
STREAM = SAMPLES / "stream" / "sensors"
DEVICES = [f"press-{n:02d}" for n in range(1, 7)]
START = datetime(2026, 11, 1, tzinfo=UTC)
STEP = timedelta(seconds=10)


def reading(rng: random.Random, device_index: int, t: int, drift: float = 0.0) -> dict[str, object]:
    """One reading; `drift` (0..1) moves the fleet to a new operating point: hotter, shakier, more current
    (a new product on the line, say) — normal for the plant, unlike anything the first model saw."""
    phase = device_index * 0.7
    return {
        "timestamp": (START + t * STEP).isoformat().replace("+00:00", "Z"),
        "device_id": DEVICES[device_index],
        "temperature": round(60 + 9 * drift + 5 * math.sin(t / 90 + phase) + rng.gauss(0, 0.4), 3),
        "vibration": round(0.8 * (1 + 0.8 * drift) + 0.2 * math.sin(t / 30 + phase) + rng.gauss(0, 0.03), 4),
        "pressure": round(101.3 + 1.5 * math.cos(t / 120 + phase) + rng.gauss(0, 0.1), 3),
        "current": round(12 + 2.5 * drift + 0.8 * math.sin(t / 45 + phase) + rng.gauss(0, 0.05), 3),
    }


def rows(rng: random.Random, first_step: int, steps: int, drift: float = 0.0) -> list[dict[str, object]]:
    return [
        reading(rng, d, t, drift) for t in range(first_step, first_step + steps) for d in range(len(DEVICES))
    ]


def write_csv(path: Path, records: list[dict[str, object]]) -> None:
    header = list(records[0])
    lines = [",".join(header)] + [",".join(str(r[c]) for c in header) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def file_name(step: int) -> str:
    """Files are named by the hour their first reading falls in."""
    moment = START + step * STEP
    return f"line1-{moment:%Y-%m-%dT%H%M}"


def main() -> None:
    rng = random.Random(20261101)
    # history/: the days before, all normal, clean: what the first model is trained on.
    HISTORY.mkdir(parents=True, exist_ok=True)
    for index in range(3):
        write_csv(HISTORY / f"{file_name(-1800 + index * 600)}.csv", rows(rng, -1800 + index * 600, 600))
    # stream/: what `make run` feeds, one file at a time: normal first, then the fleet drifts.
    STREAM.mkdir(parents=True, exist_ok=True)
    write_csv(STREAM / f"{file_name(0)}.csv", rows(rng, 0, 600))
    write_csv(STREAM / f"{file_name(600)}.csv", rows(rng, 600, 600))
    jsonl = "".join(json.dumps(record) + "\n" for record in rows(rng, 1200, 600))
    # mtime=0 keeps the gzip header, and so the file's content id, the same on every regeneration.
    (STREAM / f"{file_name(1200)}.jsonl.gz").write_bytes(gzip.compress(jsonl.encode("utf-8"), mtime=0))
    # Some bad rows among good ones: the good rows go on, the bad ones to quarantine with a reason.
    mixed = rows(rng, 1800, 300)
    mixed[10]["temperature"] = "n/a"
    mixed[20]["pressure"] = 9999.0
    mixed[30]["timestamp"] = "not a time"
    write_csv(STREAM / f"{file_name(1800)}.csv", mixed)
    # The same content as the first file under another name: must not land twice in the cloud.
    first = STREAM / f"{file_name(0)}.csv"
    (STREAM / f"{file_name(2100)}-resent.csv").write_bytes(first.read_bytes())
    # Not data at all: quarantined whole.
    (STREAM / f"{file_name(2100)}-firmware-dump.csv").write_bytes(
        bytes(rng.randrange(256) for _ in range(2048))
    )
    # The drift: it sets in over two files, then stays.
    for index in range(8):
        step = 2400 + index * 600
        write_csv(STREAM / f"{file_name(step)}.csv", rows(rng, step, 600, drift=min(1.0, (index + 1) / 2)))


if __name__ == "__main__":
    main()
