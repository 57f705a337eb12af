"""scripts/bench --quick runs end to end: a smoke test of the benchmark, never a speed test.

It starts its own Swift all-in-one and mounts for real, so it needs root like the other mount
tests.  Only that it runs, reports every workload for every subject and leaves nothing mounted
is checked; no timing is compared with anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"

WORKLOADS = ("write", "read_cold", "read_warm", "ttfb", "tree_cp", "ls_cold", "ls_warm", "find_newer",
             "tree_rm", "par_write", "par_read", "big_write", "big_read")
MOUNT_ONLY = {"big_write", "big_read"}
SUBJECTS = {"local": ("native", "goblinfs"), "swift": ("swiftclient", "goblinfs")}

pytestmark = [pytest.mark.fuse, pytest.mark.swift]


def _mounts_under(path: Path) -> list[str]:
    prefix = os.path.realpath(path) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def test_bench_quick_runs_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    out_json = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    try:
        result = subprocess.run([sys.executable, str(BENCH), "--quick", "--backend", "both", "--json", str(out_json),
                                 "--workdir", str(workdir)], capture_output=True, text=True, timeout=420, env=env,
                                cwd=str(ROOT))
    finally:
        leftover = _mounts_under(tmp_path)
        for mnt in leftover:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    assert result.returncode == 0, f"bench failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert not leftover, f"left mounted: {leftover}"

    doc = json.loads(out_json.read_text())
    assert doc["status"] == 0
    assert not doc["problems"], doc["problems"]
    for backend, subjects in SUBJECTS.items():
        for workload in WORKLOADS:
            for subject in subjects:
                if workload in MOUNT_ONLY and subject != "goblinfs":
                    continue
                slot = doc["results"][backend][workload].get(subject)
                assert slot is not None, f"{backend}/{workload}/{subject} missing"
                assert slot["times"] and all(t > 0 for t in slot["times"]), (backend, workload, subject, slot)
    # The table went to stdout, with the targets.
    assert "== local ==" in result.stdout and "== swift ==" in result.stdout
    assert "targets:" in result.stdout
    # Correctness checks made along the way: find -newer found the right files, mtimes exact.
    for backend in SUBJECTS:
        checks = doc["checks"][backend]["goblinfs"]
        assert checks["find_newer_found"] == checks["find_newer_expected"], checks
        assert checks["mtime_mismatches"] == 0, checks
    # The Swift all-in-one the bench started is stopped: none of its recorded processes is alive.
    spec = importlib.util.spec_from_file_location("swift_aio_for_bench_test", ROOT / "scripts" / "swift_aio.py")
    assert spec and spec.loader
    aio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aio)
    procs = json.loads((workdir / "swift" / "procs.json").read_text())["procs"]
    assert procs, "the bench recorded no Swift processes"
    alive = [rec for rec in procs if aio._alive(rec)]  # same PID, start time and command line
    assert not alive, f"Swift processes still running: {alive}"
