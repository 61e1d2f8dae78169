"""Helpers for the data-path e2e tests: a seeded input generator, an exactly-once checker, and a run driver.

The generator writes a share folder (datasets as folders, each with a `_schema.json`) and returns what the
cloud must end up holding: every good row once (keyed by (device, timestamp) with its values), every rejected
row in the quarantine Parquet with its reason, every rejected file whole with its reason file. Rejected rows
carry a device id `rej-...` unique to them, so the checker can find them in the quarantine, in `_raw` for
records that could not even be split into fields. Good rows get devices unique to their file, so keys never
collide across files and a row landing twice is always visible.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "deployment.template.json"
CONTAINER = "edgeloop"
DEVICE = "edgesim-device"
SHARE_VOLUME = "edgeloop-local-share"
CLOUD_SHARE_VOLUME = "edgeloop-cloud-share"

Format = Literal["csv", "csv.gz", "jsonl", "jsonl.gz", "parquet"]
TEXT_FORMATS: tuple[Format, ...] = ("csv", "csv.gz", "jsonl", "jsonl.gz")
_TAG = re.compile(r"rej-[A-Za-z0-9]+-\d+")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# ---------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class ValueColumn:
    name: str
    low: float
    high: float


@dataclass(frozen=True)
class Dataset:
    name: str
    timestamp_column: str
    device_column: str
    values: tuple[ValueColumn, ...]

    @property
    def columns(self) -> list[str]:
        return [self.timestamp_column, self.device_column, *(v.name for v in self.values)]

    def contract(self) -> dict[str, Any]:
        columns: list[dict[str, Any]] = [
            {"name": self.timestamp_column, "type": "timestamp", "nullable": False},
            {"name": self.device_column, "type": "string", "nullable": False},
        ]
        columns += [
            {"name": v.name, "type": "float64", "min": v.low, "max": v.high, "nullable": False}
            for v in self.values
        ]
        return {
            "columns": columns,
            "timestamp_column": self.timestamp_column,
            "timezone": "UTC",
            "device_column": self.device_column,
            "on_invalid": "quarantine",
        }


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "sensors",
            "timestamp",
            "device_id",
            (
                ValueColumn("temperature", -40, 150),
                ValueColumn("vibration", 0, 50),
                ValueColumn("pressure", 50, 200),
            ),
        ),
        Dataset("meters", "time", "meter", (ValueColumn("kwh", 0, 1e6), ValueColumn("voltage", 180, 260))),
        Dataset("lab", "ts", "rig", (ValueColumn("flow", 0, 100),)),
    )
}

RowReason = Literal["out_of_range", "unparseable", "missing", "bad_timestamp", "malformed"]
ROW_REASONS_BY_FORMAT: dict[str, tuple[RowReason, ...]] = {
    "csv": ("out_of_range", "unparseable", "missing", "bad_timestamp", "malformed"),
    "jsonl": ("out_of_range", "unparseable", "missing", "bad_timestamp", "malformed"),
    "parquet": ("out_of_range", "missing"),
}


@dataclass(frozen=True)
class FilePlan:
    dataset: str
    fmt: Format
    rows: int
    rejected: int = 0
    duplicate_rows: int = 0
    copies: int = 0
    """Exact copies of the file under other names in the same dataset (same content id: announced once
    downstream, landed once)."""


def default_plan() -> list[FilePlan]:
    """Mixed formats and sizes: a few rows to 200k, malformed rows, duplicate rows and duplicate files."""
    return [
        FilePlan("sensors", "csv", 200_000, rejected=40, duplicate_rows=25),
        FilePlan("sensors", "csv", 3),
        FilePlan("sensors", "csv.gz", 20_000, rejected=12, duplicate_rows=5, copies=2),
        FilePlan("sensors", "jsonl", 1_500, rejected=9, duplicate_rows=3),
        FilePlan("sensors", "parquet", 30_000, rejected=6),
        FilePlan("meters", "jsonl.gz", 12_000, rejected=10, duplicate_rows=4, copies=1),
        FilePlan("meters", "parquet", 5, rejected=1),
        FilePlan("meters", "csv", 700, rejected=7),
        FilePlan("lab", "csv", 1, copies=1),
        FilePlan("lab", "jsonl", 400, rejected=4),
        FilePlan("lab", "parquet", 9_000, duplicate_rows=2),
    ]


# --------------------------------------------------------------------------------------------- expected


@dataclass(frozen=True)
class GeneratedFile:
    path: str
    """Relative to the share."""
    dataset: str
    fmt: Format
    copy_of: str | None = None


@dataclass
class Expected:
    """What the cloud must hold after a run over the generated input."""

    good: dict[str, dict[tuple[str, int], tuple[float, ...]]] = field(default_factory=dict)
    """dataset -> (device, timestamp in UTC microseconds) -> values in column order."""
    rejected_rows: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    """dataset -> (row tag, reason) counts; a reason matches `reason` or `reason:...`."""
    rejected_files: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    """dataset -> (original file name, reason) counts."""
    files: list[GeneratedFile] = field(default_factory=list)
    duplicate_rows: int = 0

    @property
    def good_rows(self) -> int:
        return sum(len(rows) for rows in self.good.values())

    @property
    def rejected_row_count(self) -> int:
        return sum(sum(c.values()) for c in self.rejected_rows.values())

    @property
    def distinct_files(self) -> list[GeneratedFile]:
        return [f for f in self.files if f.copy_of is None]

    def merge(self, other: Expected) -> None:
        for dataset, rows in other.good.items():
            mine = self.good.setdefault(dataset, {})
            overlap = mine.keys() & rows.keys()
            assert not overlap, f"generator bug: keys repeat across waves: {sorted(overlap)[:3]}"
            mine.update(rows)
        for dataset, counts in other.rejected_rows.items():
            self.rejected_rows.setdefault(dataset, Counter()).update(counts)
        for dataset, counts in other.rejected_files.items():
            self.rejected_files.setdefault(dataset, Counter()).update(counts)
        self.files += other.files
        self.duplicate_rows += other.duplicate_rows

    def expect_rejected_file(self, dataset: str, name: str, reason: str, path: str) -> None:
        self.rejected_files.setdefault(dataset, Counter())[(name, reason)] += 1
        self.files.append(GeneratedFile(path, dataset, "csv"))


# -------------------------------------------------------------------------------------------- generator


class DataGenerator:
    """Deterministic by seed. Each `write` call gives its files new tags, so waves never share keys."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self._files = 0

    def write_schemas(self, share: Path, datasets: Iterable[str] = DATASETS) -> None:
        for name in datasets:
            folder = share / name
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(
                folder / "_schema.json", json.dumps(DATASETS[name].contract(), indent=2).encode()
            )

    def write(self, share: Path, plans: Sequence[FilePlan]) -> Expected:
        expected = Expected()
        self.write_schemas(share, sorted({p.dataset for p in plans}))
        for plan in plans:
            self._write_one(share, plan, expected)
        return expected

    def _write_one(self, share: Path, plan: FilePlan, expected: Expected) -> None:
        dataset = DATASETS[plan.dataset]
        self._files += 1
        tag = f"s{self.seed}f{self._files}"
        rng = self._rng
        devices = [f"{tag}-d{k}" for k in range(1 + min(7, plan.rows // 1000))]
        # Files spread over a few days, so rows partition into several date= folders.
        start = _EPOCH + dt.timedelta(days=20_758 + rng.randrange(0, 4), seconds=rng.randrange(0, 86_400))
        start_us = int((start - _EPOCH).total_seconds()) * 1_000_000
        good: dict[tuple[str, int], tuple[float, ...]] = {}
        records: list[_Record] = []
        for index in range(plan.rows):
            device = devices[index % len(devices)]
            ts_us = start_us + (index // len(devices)) * 1_000_000
            values = tuple(
                round(rng.uniform(v.low + 0.01 * (v.high - v.low), v.high - 0.01 * (v.high - v.low)), 3)
                for v in dataset.values
            )
            good[(device, ts_us)] = values
            records.append(_Record(device, ts_us, values))
        for _ in range(plan.duplicate_rows):
            original = records[rng.randrange(len(records))]
            records.insert(rng.randrange(len(records) + 1), original)
        base = ROW_REASONS_BY_FORMAT[plan.fmt.removesuffix(".gz")]
        rejected: Counter[tuple[str, str]] = Counter()
        for index in range(plan.rejected):
            kind = base[index % len(base)]
            column = dataset.values[rng.randrange(len(dataset.values))]
            row_tag = f"rej-{tag}-{index}"
            ts_us = start_us + rng.randrange(0, 3600) * 1_000_000
            values = tuple(round(rng.uniform(v.low, v.high), 3) for v in dataset.values)
            record = _Record(row_tag, ts_us, values, kind=kind, column=column.name)
            records.insert(rng.randrange(len(records) + 1), record)
            rejected[(row_tag, record.expected_reason(dataset))] += 1
        name = f"{tag}-{plan.rows}rows.{plan.fmt}"
        path = share / plan.dataset / name
        data = _encode(dataset, plan.fmt, records)
        write_atomically(path, data)
        rel = f"{plan.dataset}/{name}"
        expected.files.append(GeneratedFile(rel, plan.dataset, plan.fmt))
        for copy_index in range(plan.copies):
            copy_name = f"copy{copy_index}-of-{name}"
            write_atomically(share / plan.dataset / copy_name, data)
            expected.files.append(GeneratedFile(f"{plan.dataset}/{copy_name}", plan.dataset, plan.fmt, rel))
        expected.good.setdefault(plan.dataset, {}).update(good)
        expected.rejected_rows.setdefault(plan.dataset, Counter()).update(rejected)
        expected.duplicate_rows += plan.duplicate_rows


@dataclass(frozen=True)
class _Record:
    device: str
    ts_us: int
    values: tuple[float, ...]
    kind: RowReason | None = None
    column: str = ""

    def expected_reason(self, dataset: Dataset) -> str:
        if self.kind == "bad_timestamp":
            return f"unparseable:{dataset.timestamp_column}"
        if self.kind == "malformed":
            return "malformed"  # malformed_record (CSV) or malformed_json (JSONL)
        return f"{self.kind}:{self.column}"

    def text_cells(self, dataset: Dataset) -> dict[str, str | None]:
        cells: dict[str, str | None] = {
            dataset.timestamp_column: _iso(self.ts_us),
            dataset.device_column: self.device,
        }
        for spec, value in zip(dataset.values, self.values, strict=True):
            cells[spec.name] = repr(value)
        if self.kind == "out_of_range":
            spec = next(v for v in dataset.values if v.name == self.column)
            cells[self.column] = repr(spec.high + 1000.5)
        elif self.kind == "unparseable":
            cells[self.column] = "n/a!"
        elif self.kind == "missing":
            cells[self.column] = None
        elif self.kind == "bad_timestamp":
            cells[dataset.timestamp_column] = "yesterday-ish"
        return cells


def _iso(ts_us: int) -> str:
    moment = _EPOCH + dt.timedelta(microseconds=ts_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode(dataset: Dataset, fmt: Format, records: list[_Record]) -> bytes:
    if fmt == "parquet":
        return _encode_parquet(dataset, records)
    base = fmt.removesuffix(".gz")
    lines: list[str] = []
    if base == "csv":
        lines.append(",".join(dataset.columns))
        for record in records:
            cells = record.text_cells(dataset)
            line = ",".join(cells[c] or "" for c in dataset.columns)
            if record.kind == "malformed":
                line += ",surplus,fields"
            lines.append(line)
    else:
        for record in records:
            if record.kind == "malformed":
                lines.append(f'{{"{dataset.device_column}": "{record.device}", "broken": ')
                continue
            cells = record.text_cells(dataset)
            document: dict[str, Any] = {}
            for column in dataset.columns:
                text = cells[column]
                as_text = column in (dataset.timestamp_column, dataset.device_column) or (
                    record.kind == "unparseable" and column == record.column
                )
                if as_text or text is None:
                    document[column] = text
                else:
                    document[column] = float(text)
            lines.append(json.dumps(document))
    data = ("\n".join(lines) + "\n").encode()
    # mtime=0: the same records give the same bytes, so the seed alone decides every content id.
    return gzip.compress(data, mtime=0) if fmt.endswith(".gz") else data


def _encode_parquet(dataset: Dataset, records: list[_Record]) -> bytes:
    columns: dict[str, list[Any]] = {c: [] for c in dataset.columns}
    for record in records:
        columns[dataset.timestamp_column].append(record.ts_us)
        columns[dataset.device_column].append(record.device)
        for spec, value in zip(dataset.values, record.values, strict=True):
            cell: float | None = value
            if record.column == spec.name and record.kind == "out_of_range":
                cell = spec.high + 1000.5
            elif record.column == spec.name and record.kind == "missing":
                cell = None
            columns[spec.name].append(cell)
    table = pa.table(
        {
            dataset.timestamp_column: pa.array(columns[dataset.timestamp_column], pa.timestamp("us", "UTC")),
            dataset.device_column: pa.array(columns[dataset.device_column], pa.string()),
            **{v.name: pa.array(columns[v.name], pa.float64()) for v in dataset.values},
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a hidden temporary name, then rename: a watcher never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def copy_tree_atomically(source: Path, dest: Path) -> int:
    copied = 0
    for path in sorted(source.rglob("*")):
        if path.is_file():
            write_atomically(dest / path.relative_to(source), path.read_bytes())
            copied += 1
    return copied


# ---------------------------------------------------------------------------------------------- checker


@dataclass
class CloudCheck:
    good_rows: int
    rejected_rows: int
    rejected_files: int
    parquet_files: int


def cloud_root(run_dir: Path) -> Path:
    return run_dir / "cloud" / CONTAINER / DEVICE


def check_exactly_once(run_dir: Path, expected: Expected) -> CloudCheck:
    """Assert the cloud holds every good row exactly once with its values, every rejected row in the
    quarantine with its reason, and every rejected file whole with its reason file. Raises AssertionError."""
    root = cloud_root(run_dir)
    assert root.is_dir(), f"nothing reached the cloud: {root} does not exist"
    parquet_files = 0
    good_total = 0
    for name, dataset in DATASETS.items():
        want = expected.good.get(name, {})
        seen, files = _read_good_rows(root / name, dataset)
        parquet_files += files
        repeats = [key for key, count in seen.items() if len(count) > 1]
        assert not repeats, f"{name}: {len(repeats)} rows landed more than once, e.g. {repeats[:3]}"
        got = {key: values[0] for key, values in seen.items()}
        rejected_in_good = [key for key in got if key[0].startswith("rej-")]
        assert not rejected_in_good, f"{name}: rejected rows among clean rows: {rejected_in_good[:3]}"
        missing = want.keys() - got.keys()
        extra = got.keys() - want.keys()
        assert not missing, (
            f"{name}: {len(missing)} of {len(want)} good rows missing, e.g. {sorted(missing)[:3]}"
        )
        assert not extra, f"{name}: {len(extra)} rows nobody wrote, e.g. {sorted(extra)[:3]}"
        wrong = [
            (key, want[key], got[key])
            for key in want
            if not all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(want[key], got[key], strict=True))
        ]
        assert not wrong, f"{name}: {len(wrong)} rows with other values, e.g. {wrong[:3]}"
        good_total += len(got)

    rejected_rows = 0
    rejected_files = 0
    for name, dataset in DATASETS.items():
        quarantine = root / "_quarantine" / name
        found_rows = _read_quarantined_rows(quarantine, dataset)
        want_rows = expected.rejected_rows.get(name, Counter())
        unmatched = _match_reasons(want_rows, found_rows)
        assert not unmatched, f"{name}: quarantine does not match: {unmatched}"
        rejected_rows += sum(found_rows.values())
        found_files = _read_quarantined_files(quarantine)
        want_files = expected.rejected_files.get(name, Counter())
        assert found_files == want_files, (
            f"{name}: quarantined files differ:\n missing {want_files - found_files}\n"
            f" unexpected {found_files - want_files}"
        )
        rejected_files += sum(found_files.values())
    return CloudCheck(good_total, rejected_rows, rejected_files, parquet_files)


def _read_good_rows(
    folder: Path, dataset: Dataset
) -> tuple[dict[tuple[str, int], list[tuple[float, ...]]], int]:
    seen: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    files = 0
    for path in sorted(folder.glob("date=*/*.parquet")):
        files += 1
        table = pq.read_table(path)
        assert table.column_names == dataset.columns, f"{path}: columns {table.column_names}"
        # Both columns are non-nullable in the contract, so the Parquet schema says so too.
        ts = cast("list[int]", pc.cast(table.column(dataset.timestamp_column), pa.int64()).to_pylist())
        devices = cast("list[str]", table.column(dataset.device_column).to_pylist())
        values = list(zip(*(table.column(v.name).to_pylist() for v in dataset.values), strict=True))
        day = path.parent.name.removeprefix("date=")
        for device, micros, row in zip(devices, ts, values, strict=True):
            assert _iso(micros)[:10] == day, f"{path}: a row of {_iso(micros)} in partition {day}"
            seen.setdefault((device, micros), []).append(row)
    return seen, files


def _read_quarantined_rows(folder: Path, dataset: Dataset) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(folder.glob("*.parquet")):
        reason_file = path.with_suffix(".reason.json")
        assert reason_file.is_file(), f"{path} has no reason file beside it in the cloud"
        table = pq.read_table(path)
        for row in table.to_pylist():
            reason = row["_reason"]
            assert reason, f"{path}: a row without a _reason: {row}"
            device = row.get(dataset.device_column)
            if device is None:
                match = _TAG.search(row.get("_raw") or "")
                device = match.group(0) if match else f"<untagged {row.get('_raw')!r}>"
            found[(device, reason)] += 1
    return found


def _match_reasons(want: Counter[tuple[str, str]], found: Counter[tuple[str, str]]) -> dict[str, Any]:
    by_tag: dict[str, list[str]] = {}
    for (tag, reason), count in found.items():
        by_tag.setdefault(tag, []).extend([reason] * count)
    problems: dict[str, Any] = {}
    for (tag, reason), count in want.items():
        reasons = by_tag.pop(tag, [])
        fits = [r for r in reasons if r == reason or r.startswith(reason + ":") or r.startswith(reason + "_")]
        if len(reasons) != count or len(fits) != count:
            problems[tag] = {"want": [reason] * count, "found": reasons}
    for tag, reasons in by_tag.items():
        problems[tag] = {"want": [], "found": reasons}
    return problems


def _read_quarantined_files(folder: Path) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for reason_path in sorted(folder.glob("*/*.reason.json")):
        document = json.loads(reason_path.read_text(encoding="utf-8"))
        assert document["kind"] == "file", reason_path
        kept = reason_path.with_name(reason_path.name.removesuffix(".reason.json"))
        assert kept.is_file(), f"{reason_path}: the rejected file itself is not in the cloud"
        assert kept.stat().st_size == document["bytes"], f"{kept}: size differs from its reason file"
        found[(document["original_name"], document["reason"])] += 1
    return found


def check_cloud_share_uploaded(run_dir: Path) -> int:
    """Every file the transformer published in the cloud share is in the cloud, byte for byte."""
    local = run_dir / "volumes" / CLOUD_SHARE_VOLUME
    remote = cloud_root(run_dir)
    missing: list[str] = []
    different: list[str] = []
    count = 0
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        count += 1
        target = remote / rel
        if not target.is_file():
            missing.append(rel.as_posix())
        elif target.read_bytes() != path.read_bytes():
            different.append(rel.as_posix())
    assert not missing, f"{len(missing)} cloud-share files never reached the cloud: {missing[:5]}"
    assert not different, f"{len(different)} blobs differ from their files: {different[:5]}"
    leftovers = [p for p in remote.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert not leftovers, f"temporary files reached the cloud: {leftovers[:5]}"
    return count


# ----------------------------------------------------------------------------------------- run driving


def make_test_manifest(
    dest: Path,
    *,
    share_ingest: dict[str, Any] | None = None,
    transformer: dict[str, Any] | None = None,
    transfer: dict[str, Any] | None = None,
) -> Path:
    """deployment.template.json with test timings merged into the modules' desired properties. The product
    defaults stay as they are; only this copy is faster."""
    manifest = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    content = manifest["modulesContent"]
    for module in content["$edgeAgent"]["properties.desired"]["modules"].values():
        # Counters reach the twin within a second instead of ten, so a test can follow progress there.
        module.setdefault("env", {})["EDGEKIT_REPORT_INTERVAL_S"] = {"value": "1"}
    ingest = content["share-ingest"]["properties.desired"]
    ingest.update({"stable_seconds": 1, "reannounce_after_seconds": 8, "retry_seconds": 2})
    ingest.update(share_ingest or {})
    content["transformer"]["properties.desired"].update(transformer or {})
    uploader = content["cloud-share-uploader"]["properties.desired"]
    uploader["transferProperties"] = {
        **uploader.get("transferProperties", {}),
        "scanIntervalSeconds": 3,
        "retryInitialSeconds": 0.5,
        "retryMaxSeconds": 2,
        **(transfer or {}),
    }
    path = dest / "deployment.test.json"
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path


def template_desired(module: str) -> dict[str, Any]:
    manifest = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    return copy.deepcopy(manifest["modulesContent"][module]["properties.desired"])


class NotYet(Exception):
    """Raised by a check that cannot answer yet (a module not connected): `wait_for` tries again."""


@dataclass
class EdgesimRun:
    """`python -m edgesim run` as a subprocess; output goes to a file so a long run never blocks a pipe."""

    run_dir: Path
    process: subprocess.Popen[bytes]
    output_path: Path
    started: float

    @classmethod
    def start(
        cls,
        run_dir: Path,
        manifest: Path,
        data: Path | None,
        *,
        timeout_s: float = 150,
        idle_seconds: float = 6,
    ) -> EdgesimRun:
        output_path = run_dir.with_name(run_dir.name + ".out")
        command = [
            sys.executable,
            "-m",
            "edgesim",
            "run",
            "--manifest",
            str(manifest),
            "--out",
            str(run_dir),
            "--repo-root",
            str(REPO_ROOT),
            "--until-idle",
            "--idle-seconds",
            str(idle_seconds),
            "--timeout",
            str(timeout_s),
            *(["--data", str(data)] if data is not None else []),
        ]
        with output_path.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return cls(run_dir, process, output_path, time.monotonic())

    @property
    def output(self) -> str:
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def finish(self, within_s: float = 200) -> dict[str, Any]:
        try:
            self.process.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the run did not end:\n{self.output[-4000:]}") from None
        report_path = self.run_dir / "report.json"
        assert report_path.is_file(), f"no report (exit {self.process.returncode}):\n{self.output[-4000:]}"
        report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
        return report

    def share(self) -> Path:
        return self.run_dir / "volumes" / SHARE_VOLUME

    def control(self) -> Any:
        from edgesim.control import ControlClient

        return ControlClient.for_run(self.run_dir)

    def wait_for(self, what: str, check: Callable[[], Any], within_s: float = 60) -> Any:
        from edgesim.control import ControlError

        deadline = time.monotonic() + within_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{what}: the run ended first:\n{self.output[-4000:]}")
            try:
                result = check()
            except (ControlError, OSError, KeyError, NotYet) as error:
                last, result = error, None
            if result:
                return result
            time.sleep(0.3)
        raise AssertionError(f"{what}: not within {within_s} s (last error: {last})")


def describe(report: dict[str, Any], run: EdgesimRun) -> str:
    """Context for a failed assertion: the run's problems, counters and last progress lines."""
    counters = {name: entry.get("counters") for name, entry in report.get("modules", {}).items()}
    return (
        f"problems={report.get('problems')} stop_reason={report.get('stop_reason')}\n"
        f"counters={json.dumps(counters)}\n{run.output[-2500:]}"
    )


def assert_clean_run(report: dict[str, Any], run: EdgesimRun, *, killed: bool = False) -> None:
    assert report["ok"], describe(report, run)
    assert report["idle_reached"], describe(report, run)
    for name, entry in report["modules"].items():
        if killed:
            # Only kills on request: no module crashed by itself.
            assert entry["exit_code"] in (None, 0, -9, 137) or entry["killed_on_request"], (name, entry)
        else:
            assert entry["exit_code"] in (None, 0), (name, entry, describe(report, run))
            assert entry["restarts"] == 0, (name, entry, describe(report, run))
        assert entry["final_exit_code"] == 0, (name, entry)


def crashed_without_request(run_dir: Path) -> list[str]:
    """Exit lines in module logs other than edgesim's SIGKILLs (-9) and graceful stops (0)."""
    found: list[str] = []
    for log in sorted((run_dir / "logs").glob("*.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            match = re.search(r"exited with code (-?\d+)", line)
            if match and int(match.group(1)) not in (0, -9):
                found.append(f"{log.name}: {line}")
    return found


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
