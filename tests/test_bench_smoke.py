"""scripts/bench --quick runs end to end: a smoke test of the benchmark, never a speed test.

It starts its own Swift all-in-one and mounts for real, so it needs root like the other mount
tests.  Only that it runs, reports every workload for every subject (the local ``passthrough``
subject and a tiny ``--scale`` group included) and leaves nothing mounted is checked; no timing
is compared with anything.  scripts/passthroughfs.py, the bench's passthrough subject, also gets
a direct check of what it forwards and of its command line.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mountutil import force_unmount, is_mounted, wait_until

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"
PASSTHROUGHFS = ROOT / "scripts" / "passthroughfs.py"

WORKLOADS = ("write", "read_cold", "read_warm", "ttfb", "tree_cp", "ls_cold", "ls_warm", "find_newer", "du",
             "rsync_noop", "tree_rm", "par_write", "par_read", "big_write", "big_read")
SCALE_WORKLOADS = ("scale_ls_cold", "scale_ls_warm", "scale_du", "scale_find_newer", "scale_rsync_noop")
MOUNT_ONLY = {"big_write", "big_read"}
PASSTHROUGH = {"ls_cold", "ls_warm", "find_newer", "du", "rsync_noop", "tree_rm", "tree_cp", "par_write",
               *SCALE_WORKLOADS}
SUBJECTS = {"local": ("native", "goblinfs", "passthrough"), "swift": ("swiftclient", "goblinfs")}
SCALE_FILES = 200

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
                                 "--workdir", str(workdir), "--scale", "--scale-files", str(SCALE_FILES)],
                                capture_output=True, text=True, timeout=480, env=env, cwd=str(ROOT))
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
        for workload in WORKLOADS + SCALE_WORKLOADS:
            for subject in subjects:
                if workload in MOUNT_ONLY and subject != "goblinfs":
                    continue
                if subject == "passthrough" and workload not in PASSTHROUGH:
                    assert subject not in doc["results"][backend][workload], (workload, "passthrough ran it")
                    continue
                slot = doc["results"][backend][workload].get(subject)
                assert slot is not None, f"{backend}/{workload}/{subject} missing"
                assert slot["times"] and all(t > 0 for t in slot["times"]), (backend, workload, subject, slot)
    # The table went to stdout, with the targets and the goblinfs/passthrough ratios.
    assert "== local ==" in result.stdout and "== swift ==" in result.stdout
    assert "targets:" in result.stdout
    assert "gfs/pt" in result.stdout and "within 1.3x of passthrough" in result.stdout
    rows = doc["summary"]["rows"]
    for workload in PASSTHROUGH:
        assert rows["local"][workload]["ratio_vs_passthrough"] > 0, (workload, rows["local"][workload])
    assert "ratio_vs_passthrough" not in rows["swift"]["ls_warm"]
    # Correctness checks made along the way: find -newer found the right files, mtimes exact, a second
    # rsync -a transferred nothing, at both scales.
    for backend, subjects in SUBJECTS.items():
        for subject in subjects:
            checks = doc["checks"][backend][subject]
            assert checks["rsync_noop_transferred"] == 0, (backend, subject, checks)
            assert checks["scale_rsync_noop_transferred"] == 0, (backend, subject, checks)
            if subject in ("swiftclient",):
                continue
            assert checks["find_newer_found"] == checks["find_newer_expected"], (backend, subject, checks)
            assert checks["scale_find_newer_found"] == checks["scale_find_newer_expected"] == SCALE_FILES // 2 - 1
            assert checks["mtime_mismatches"] == 0, (backend, subject, checks)
        # The goblinfs daemon's memory was sampled through the whole scale session.
        assert doc["checks"][backend]["goblinfs"]["scale_rss_peak_mb"] > 0
    assert doc["params"]["scale_files"] == SCALE_FILES
    # The Swift all-in-one the bench started is stopped: none of its recorded processes is alive.
    spec = importlib.util.spec_from_file_location("swift_aio_for_bench_test", ROOT / "scripts" / "swift_aio.py")
    assert spec and spec.loader
    aio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aio)
    procs = json.loads((workdir / "swift" / "procs.json").read_text())["procs"]
    assert procs, "the bench recorded no Swift processes"
    alive = [rec for rec in procs if aio._alive(rec)]  # same PID, start time and command line
    assert not alive, f"Swift processes still running: {alive}"


def _passthrough(source: Path, mnt: Path, *extra: str) -> subprocess.Popen[bytes]:
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(PASSTHROUGHFS), str(source), str(mnt), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, timeout=30):
        raise AssertionError("passthroughfs did not mount within 30 s")
    return proc


def _stop(proc: subprocess.Popen[bytes], mnt: Path) -> tuple[int, str]:
    """Unmount by mountpoint (lazily if needed), then wait for the PID (killed if it hangs)."""
    force_unmount(mnt)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    force_unmount(mnt)
    return proc.returncode, err.decode(errors="replace")


def test_passthroughfs_forwards_and_exits_cleanly(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    (src / "d").mkdir(parents=True)
    (src / "d" / "old.txt").write_bytes(b"0123456789")
    proc = _passthrough(src, mnt)
    try:
        assert is_mounted(mnt), proc.stderr.read().decode() if proc.stderr else ""
        # Reads, writes, truncation, times and renames land in the source directory.
        assert (mnt / "d" / "old.txt").read_bytes() == b"0123456789"
        (mnt / "d" / "new.bin").write_bytes(b"x" * 300_000)
        assert (src / "d" / "new.bin").read_bytes() == b"x" * 300_000
        os.truncate(mnt / "d" / "old.txt", 4)
        assert (src / "d" / "old.txt").read_bytes() == b"0123"
        os.utime(mnt / "d" / "old.txt", ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
        assert os.stat(src / "d" / "old.txt").st_mtime_ns == 1_700_000_000_987_654_321
        assert os.stat(mnt / "d" / "old.txt").st_mtime_ns == 1_700_000_000_987_654_321
        (mnt / "e").mkdir()
        os.rename(mnt / "d", mnt / "e" / "moved")
        assert sorted(os.listdir(mnt / "e" / "moved")) == ["new.bin", "old.txt"]
        assert (mnt / "e" / "moved" / "old.txt").read_bytes() == b"0123"  # known inodes follow the rename
        assert sorted(os.listdir(src / "e" / "moved")) == ["new.bin", "old.txt"]
        # Failed calls come back with their errno.
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "missing")
        with pytest.raises(OSError) as exc_info:
            os.rmdir(mnt / "e")
        assert exc_info.value.errno == errno.ENOTEMPTY
        with pytest.raises(OSError) as exc_info:
            os.symlink("x", mnt / "link")
        assert exc_info.value.errno in (errno.ENOSYS, errno.EPERM)
        # Removal.
        os.unlink(mnt / "e" / "moved" / "new.bin")
        os.unlink(mnt / "e" / "moved" / "old.txt")
        os.rmdir(mnt / "e" / "moved")
        os.rmdir(mnt / "e")
        assert os.listdir(src) == []
    finally:
        status, err = _stop(proc, mnt)
    assert status == 0, err
    assert "Traceback" not in err, err
    assert not is_mounted(mnt)


@pytest.mark.parametrize("args, message", [
    (["-o", "bogus"], "unknown mount option 'bogus'"),
    (["--timeout", "-1"], "--timeout -1.0: must be >= 0"),
])
def test_passthroughfs_bad_arguments_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "mnt").mkdir()
    result = subprocess.run([sys.executable, str(PASSTHROUGHFS), str(tmp_path), str(tmp_path / "mnt"), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"passthroughfs: {message}"]
    assert not is_mounted(tmp_path / "mnt")


def test_passthroughfs_missing_source_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    result = subprocess.run([sys.executable, str(PASSTHROUGHFS), str(tmp_path / "nope"), str(tmp_path / "mnt")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"passthroughfs: source {tmp_path / 'nope'} is not a directory"]
