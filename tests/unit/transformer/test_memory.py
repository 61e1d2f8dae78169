"""A file several times larger than the memory budget is transformed in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from tests.unit.transformer.kit import MODULE_ROOT

ROWS = 3_000_000
BUDGET = 256 << 20

PROBE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from transformer import Limits, infer_contract, transform_file

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

source, cloud, budget = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
limits = Limits(max_memory_bytes=budget)
contract = infer_contract(source, limits=limits)  # also imports everything the transform uses
baseline = status("VmRSS")
# VmHWM, not ru_maxrss: the latter carries the parent's peak over fork and exec.
result = transform_file(
    source, source_id="big", dataset="big", contract=contract, cloud_share=cloud, limits=limits
)
print(json.dumps({
    "baseline": baseline,
    "peak": status("VmHWM"),
    "rows_written": result.rows_written,
    "rejection": str(result.rejection),
    "dedupe_complete": result.dedupe_complete,
}))
"""


def write_big_csv(path: Path) -> None:
    rng = np.random.default_rng(11)
    notes = np.array([f"note {i} " + "lorem ipsum dolor sit amet " * 3 for i in range(1000)])
    fields: list[pa.Field[Any]] = [
        pa.field("ts", pa.string()),
        pa.field("device_id", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("note", pa.string()),
    ]
    schema = pa.schema(fields)
    with pa_csv.CSVWriter(str(path), schema) as writer:
        for start in range(0, ROWS, 500_000):
            index = np.arange(start, start + 500_000)
            stamps = np.datetime64("2024-06-01T00:00:00", "s") + index.astype("timedelta64[s]")
            writer.write_table(
                pa.table(
                    {
                        "ts": pa.array(stamps.astype(str)),
                        "device_id": pa.array(np.char.add("dev-", (index % 100).astype(str))),
                        "value": rng.normal(0, 1, index.size),
                        "note": pa.array(notes[index % 1000]),
                    },
                    schema=schema,
                )
            )


@pytest.mark.timeout(120)
def test_peak_memory_stays_within_budget_on_a_file_larger_than_it(tmp_path: Path) -> None:
    source = tmp_path / "big.csv"
    write_big_csv(source)
    size = source.stat().st_size
    assert size > 1.5 * BUDGET  # loading it whole could not fit the budget

    completed = subprocess.run(
        [sys.executable, "-c", PROBE, str(MODULE_ROOT), str(source), str(tmp_path / "cloud"), str(BUDGET)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["rejection"] == "None"
    assert report["rows_written"] == ROWS
    assert report["dedupe_complete"]
    growth = report["peak"] - report["baseline"]
    assert growth < BUDGET, f"peak grew {growth >> 20} MiB over a {BUDGET >> 20} MiB budget"
    assert report["peak"] < size
