"""Pieces of `edgesim run` that need no hub: run-dir policy, loopback choice, data copy, report shape."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgesim import run as run_module
from edgesim.report import HubFigures, build_report, module_entry
from edgesim.run import RunError, copy_tree_atomically, pick_loopback_host, port_free, prepare_run_dir
from edgesim.supervisor import ModuleState


def test_prepare_run_dir_creates_the_layout(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare_run_dir(run, force=False)
    assert sorted(p.name for p in run.iterdir()) == ["azurite", "cloud", "hub", "logs", "volumes"]


def test_prepare_run_dir_wipes_an_earlier_run_but_refuses_other_folders(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    (earlier / "logs").mkdir(parents=True)
    (earlier / "report.json").write_text("{}")
    (earlier / "logs" / "old.log").write_text("old")
    prepare_run_dir(earlier, force=False)
    assert not (earlier / "report.json").exists()
    assert not (earlier / "logs" / "old.log").exists()

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(RunError, match="--force"):
        prepare_run_dir(precious, force=False)
    assert (precious / "thesis.txt").exists()
    prepare_run_dir(precious, force=True)
    assert not (precious / "thesis.txt").exists()


def test_pick_loopback_host_avoids_a_taken_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        host = pick_loopback_host(port)
    assert host.startswith("127.")
    assert host != "127.0.0.1"


def test_pick_loopback_host_gives_up_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "port_free", lambda host, port: False)
    with pytest.raises(RunError, match="no loopback address"):
        pick_loopback_host(8883, attempts=3)


def test_copy_tree_keeps_folders_and_leaves_no_partial_files(tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "site-a" / "2026").mkdir(parents=True)
    (source / "top.csv").write_bytes(b"a,b\n1,2\n")
    (source / "site-a" / "2026" / "deep.csv").write_bytes(b"x" * 100_000)
    share = tmp_path / "share"
    assert copy_tree_atomically(source, share) == 2
    assert (share / "top.csv").read_bytes() == b"a,b\n1,2\n"
    assert (share / "site-a" / "2026" / "deep.csv").stat().st_size == 100_000
    assert not [p for p in share.rglob("*") if "partial" in p.name]


def test_report_lists_every_route_and_module_contract_keys() -> None:
    state = ModuleState(
        name="m", exit_code=0, restarts=2, starts=3, crash_exit_code=-9, killed_on_request=True
    )
    twin = {"desired": {"$version": 1}, "reported": {"counters": {"rows": 7}, "$version": 4}}
    report = build_report(
        ok=True,
        started=0.0,
        ended=1.5,
        modules={"m": module_entry(state, "always", "running", twin)},
        twins={"m": twin},
        hub=HubFigures(
            routed={"a": 3}, upstream_messages=1, delivered={}, pending={}, expired={}, refused_connections=0
        ),
        route_names=["a", "never_fired"],
        problems=[],
    )
    assert report["routes"] == {"a": 3, "never_fired": 0}
    assert report["modules"]["m"]["counters"] == {"rows": 7}
    assert report["modules"]["m"]["exit_code"] == -9
    assert report["modules"]["m"]["restarts"] == 2
    assert report["started"] == "1970-01-01T00:00:00.000Z"
    for key in ("ok", "ended", "upstream_messages", "twins", "models_served", "retrain_requests"):
        assert key in report
