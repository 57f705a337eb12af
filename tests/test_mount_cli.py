"""The command line and the system around it, for real: background mode, errors, signals,
crash recovery, --store, the embedded default, mount(8) / fstab through mount.fuse3, the
systemd units in contrib/ and scripts/mount-default.

Facts this file relies on (checked on Debian 12: util-linux 2.38, fuse3 3.14, systemd 252):

* ``mount -t fuse.goblinfs SRC MNT -o OPTS`` runs ``/sbin/mount.fuse SRC MNT -o rw,OPTS -t
  fuse.goblinfs`` (x-systemd.* dropped); mount.fuse3 drops _netdev, nofail, user, adds dev,suid
  and runs ``/bin/sh -c "'goblinfs' 'SRC' 'MNT' '-o' 'rw,...,dev,suid'"``.  mount(8) clears
  PATH for its helpers, so sh finds ``goblinfs`` only in its default path (/usr/local/bin, ...):
  a PATH given to mount(8) is not used.  The tests that run the literal ``fuse.goblinfs`` type
  therefore run in a private mount namespace (``unshare --mount``) in which a directory holding
  a ``goblinfs`` symlink to the venv's script is bind-mounted over /usr/local/bin (nothing
  leaks out; the whole scenario, checks included, runs inside: see ``_ns_scenario``).  The
  other form, type ``fuse`` with source ``PROGRAM#SRC``, names the program by absolute path
  and runs in the test's own namespace.
* ``systemd-analyze verify`` works without systemd as PID 1: it exits non-zero on a .mount
  unit whose name does not match Where= or on a non-executable ExecStart, and prints
  (exit 0) "Unknown key ..., ignoring" for unknown settings.
* A background daemon (``goblinfs mount`` without -f) is found by PID by scanning
  /proc/*/cmdline for its mountpoint argument; it is never killed by name.  Its parent is
  PID 1, which may leave it a zombie: a zombie counts as exited.

Every mount is torn down by PID and by mountpoint, even when a test fails (``mounts``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .mountutil import Mounted, force_unmount, is_mounted, wait_until, write_local_config

pytestmark = pytest.mark.fuse

ROOT = Path(__file__).resolve().parent.parent
GOBLINFS = ROOT / ".venv" / "bin" / "goblinfs"
CONTRIB = ROOT / "contrib"
MOUNT_DEFAULT = ROOT / "scripts" / "mount-default"
#: The options the brief's fstab/systemd users pass: generic ones goblinfs must ignore, and its own.
MOUNT8_OPTIONS = "allow_other,_netdev,nofail,x-systemd.automount,cache_size=1G,attr_timeout=2"
#: Words in systemd-analyze output that mean a unit is wrong.
VERIFY_BAD_WORDS = ("error", "unknown", "failed", "refusing", "not executable", "ignoring", "invalid", "bad ")


# ------------------------------------------------------------------ processes and mounts


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    """True while any thread of the process is running (a zombie leader may wait for its threads)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
            return True
    return False


def daemon_pids(mountpoint: Path | str) -> list[int]:
    """PIDs of live goblinfs processes whose command line has this mountpoint as an argument."""
    wanted = {str(mountpoint), os.path.realpath(mountpoint)}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        args = _cmdline(int(entry))
        if not wanted.intersection(args[1:]):
            continue
        if not any(os.path.basename(a) == "goblinfs" for a in args[:3]):
            continue  # mount, mount.fuse3, sh -c: not the daemon
        if alive(int(entry)):
            pids.append(int(entry))
    return pids


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until these processes have exited; returns those still alive after timeout."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def kill_by_pid(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL, these PIDs only."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = [p for p in pids if alive(p)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = wait_gone(pids, grace)
        if not pids:
            return


def mount_entries(mountpoint: Path | str) -> list[list[str]]:
    """The /proc/self/mountinfo lines (split) mounted exactly at mountpoint."""
    path = os.path.realpath(mountpoint).replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f if line.split()[4] == path]


def fstype(mountpoint: Path | str) -> str | None:
    entries = mount_entries(mountpoint)
    if not entries:
        return None
    fields = entries[-1]
    return fields[fields.index("-") + 1]


class Mounts:
    """Mountpoints a test uses; at teardown, daemons are ended by PID and mounts removed."""

    def __init__(self) -> None:
        self.mountpoints: list[Path] = []
        self.pids: set[int] = set()

    def watch(self, mountpoint: Path) -> Path:
        """Create mountpoint (the first time) and tear down whatever gets mounted there."""
        if mountpoint not in self.mountpoints:
            mountpoint.mkdir(parents=True, exist_ok=True)
            self.mountpoints.append(mountpoint)
        return mountpoint

    def daemon(self, mountpoint: Path) -> int:
        """The one daemon serving mountpoint (remembered for teardown)."""
        pids = daemon_pids(mountpoint)
        self.pids.update(pids)
        assert len(pids) == 1, f"expected one goblinfs daemon for {mountpoint}, found {pids}"
        return pids[0]

    def cleanup(self) -> None:
        for mnt in self.mountpoints:
            pids = sorted(self.pids.union(daemon_pids(mnt)))
            force_unmount(mnt)
            kill_by_pid(wait_gone(pids, 15.0))
            force_unmount(mnt)
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            if is_mounted(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    registry = Mounts()
    try:
        yield registry
    finally:
        registry.cleanup()


def goblinfs(*args: str | Path, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (.venv/bin/goblinfs)."""
    assert GOBLINFS.exists(), f"{GOBLINFS} missing: create the venv (scripts/test)"
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(GOBLINFS), *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd="/")


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode != 0, f"exit 0\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("goblinfs: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def local_setup(tmp_path: Path, name: str = "cfg", extra: str = "") -> tuple[Path, Path]:
    """(config, public store directory) of a local two-store config."""
    config = write_local_config(tmp_path / name, extra)
    return config, tmp_path / name / "data" / "media" / "public"


def background_mount(mounts: Mounts, config: Path | str | None, mnt: Path, *extra: str,
                     env: dict[str, str] | None = None) -> int:
    """``goblinfs mount [CONFIG] MNT`` (background); returns the daemon's PID."""
    mounts.watch(mnt)
    args = ["mount"] + ([str(config)] if config is not None else []) + [str(mnt), *extra]
    result = goblinfs(*args, env=env)
    assert_ok(result)
    # Ready means ready: mounted, and serving, the moment the command returns.
    assert fstype(mnt) == "fuse.goblinfs", mount_entries(mnt)
    os.listdir(mnt)
    return mounts.daemon(mnt)


def unmount_and_wait(mnt: Path, pid: int, command: list[str] | None = None) -> None:
    """Unmount (goblinfs umount by default) and check the daemon exits and nothing stays mounted."""
    result = subprocess.run(command or [str(GOBLINFS), "umount", str(mnt)], capture_output=True, text=True,
                            timeout=60)
    assert_ok(result)
    assert not mount_entries(mnt), mount_entries(mnt)
    assert wait_gone([pid], 30.0) == [], f"daemon {pid} still running after unmount"


# ------------------------------------------------------------------ background mode


def test_background_mount_is_ready_on_return_and_umount_ends_it(tmp_path: Path, mounts: Mounts) -> None:
    config, public = local_setup(tmp_path)
    mnt = tmp_path / "mnt"
    pid = background_mount(mounts, config, mnt)
    assert sorted(os.listdir(mnt)) == ["public", "queue"]
    (mnt / "public" / "ready.txt").write_bytes(b"at once")
    assert (mnt / "public" / "ready.txt").read_bytes() == b"at once"
    assert (public / "ready.txt").read_bytes() == b"at once"
    unmount_and_wait(mnt, pid)
    assert os.listdir(mnt) == []
    assert (public / "ready.txt").read_bytes() == b"at once"


def test_mount8_convention_ignores_generic_options(tmp_path: Path, mounts: Mounts) -> None:
    """What mount.fuse3 runs, called directly: `goblinfs CONFIG MNT -o ...` with fstab/systemd words."""
    config, public = local_setup(tmp_path)
    mnt = mounts.watch(tmp_path / "mnt")
    options = f"rw,{MOUNT8_OPTIONS},dev,suid,noauto,user,defaults,x-systemd.requires=network-online.target"
    result = goblinfs(config, mnt, "-o", options)
    assert_ok(result)
    pid = mounts.daemon(mnt)
    assert "allow_other" in mount_entries(mnt)[-1][-1]
    (mnt / "public" / "opt.txt").write_text("options")
    assert (public / "opt.txt").read_text() == "options"
    unmount_and_wait(mnt, pid)


ERROR_CASES = ["missing_mountpoint", "mountpoint_is_file", "busy", "unknown_storage_class", "no_such_config",
               "directory_without_config", "not_utf8_config", "syntax_error", "unknown_option", "bad_option_value",
               "unknown_store", "unusable_data_dir"]


#: With -f the checks before the fork are the same code; these take the other path (prepare in-process).
FOREGROUND_ERROR_CASES = ["missing_mountpoint", "unknown_storage_class", "unknown_store", "unusable_data_dir"]


@pytest.mark.parametrize(("case", "foreground"), [(c, False) for c in ERROR_CASES]
                         + [(c, True) for c in FOREGROUND_ERROR_CASES],
                         ids=ERROR_CASES + [f"{c}-f" for c in FOREGROUND_ERROR_CASES])
def test_mount_errors(tmp_path: Path, mounts: Mounts, case: str, foreground: bool) -> None:
    """Non-zero exit, exactly one 'goblinfs: ' line on stderr, nothing mounted, no daemon left."""
    config, _public = local_setup(tmp_path)
    mnt = mounts.watch(tmp_path / "mnt")
    extra: list[str] = []
    env: dict[str, str] = {}
    embedded_default = False
    words: tuple[str, ...]
    busy_pid = None
    if case == "missing_mountpoint":
        mnt.rmdir()
        words = ("does not exist", str(mnt))
    elif case == "mountpoint_is_file":
        mnt.rmdir()
        mnt.write_text("a file")
        words = ("not a directory",)
    elif case == "busy":
        busy_pid = background_mount(mounts, config, mnt)
        words = ("busy",)
    elif case == "unknown_storage_class":
        config, _ = local_setup(tmp_path, "bad")
        # Into the one [storage:publicstore]: ConfigObj, as MediaGoblin, refuses a repeated section.
        config.write_text(config.read_text().replace(
            "[storage:publicstore]\n", "[storage:publicstore]\nstorage_class = nosuchpackage.x:Storage\n"))
        words = ("storage_class", "nosuchpackage")
    elif case == "no_such_config":
        config = tmp_path / "nothere.ini"
        words = ("cannot read config", "nothere.ini")
    elif case == "directory_without_config":
        config = tmp_path / "emptydir"
        config.mkdir()
        words = ("no mediagoblin_local.ini or mediagoblin.ini",)
    elif case == "not_utf8_config":
        config = tmp_path / "latin1.ini"
        config.write_bytes(b"[mediagoblin]\nemail_sender_address = caf\xe9@example.org\n")
        words = ("not UTF-8",)
    elif case == "syntax_error":
        config = tmp_path / "syntax.ini"
        config.write_text("[DEFAULT]\ndata_basedir = /tmp\n[storage:publicstore\nbase_dir = /tmp\n")
        words = ("syntax.ini:3", "bad section header")
    elif case == "unknown_option":
        extra = ["-o", "allow_other,no_such_option=1"]
        words = ("unknown mount option", "no_such_option")
    elif case == "bad_option_value":
        extra = ["-o", "cache_size=lots"]
        words = ("bad size",)
    elif case == "unknown_store":
        extra = ["--store", "attic"]
        words = ("attic",)
    elif case == "unusable_data_dir":
        # The embedded default, with its data directory under a regular file.
        (tmp_path / "plainfile").write_text("not a directory")
        env = {"XDG_DATA_HOME": str(tmp_path / "plainfile"), "HOME": str(tmp_path)}
        embedded_default = True
        words = (str(tmp_path / "plainfile"),)
    else:  # pragma: no cover
        raise AssertionError(case)
    before = mount_entries(mnt)
    args = ["mount"] + ([] if embedded_default else [str(config)]) + [str(mnt), *extra] + (["-f"] if foreground else [])
    result = goblinfs(*args, env=env, timeout=30)
    assert_one_error_line(result, *words)
    assert mount_entries(mnt) == before, "the failed mount changed what is mounted"
    daemons = daemon_pids(mnt)
    if busy_pid is None:
        assert daemons == []
        assert not mount_entries(mnt)
    else:
        # The mount that was there is untouched and still serving.
        assert daemons == [busy_pid]
        assert sorted(os.listdir(mnt)) == ["public", "queue"]
        unmount_and_wait(mnt, busy_pid)


def test_umount_of_something_not_mounted_fails_with_one_line(tmp_path: Path) -> None:
    result = goblinfs("umount", tmp_path)
    assert_one_error_line(result)


# ------------------------------------------------------------------ signals, fusermount3, crashes


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(tmp_path: Path, mounts: Mounts, signum: int) -> None:
    config, public = local_setup(tmp_path)
    mnt = mounts.watch(tmp_path / "mnt")
    with Mounted(config, mnt) as mounted:
        assert mounted.proc is not None
        mounts.pids.add(mounted.proc.pid)
        (mnt / "public" / "closed.txt").write_bytes(b"written and closed")
        fd = os.open(mnt / "queue" / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"still open at the signal")
            mounted.proc.send_signal(signum)
            status = mounted.proc.wait(timeout=30)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        assert status == 0, f"exit status {status} after signal {signum}:\n{mounted.log()}"
        assert not is_mounted(mnt), "still mounted after the daemon exited"
        mounted.check_log()
    assert (public / "closed.txt").read_bytes() == b"written and closed"
    assert (tmp_path / "cfg" / "data" / "media" / "queue" / "open.bin").read_bytes() == b"still open at the signal"


def test_fusermount_u_ends_the_daemon_with_status_0(tmp_path: Path, mounts: Mounts) -> None:
    config, public = local_setup(tmp_path)
    mnt = mounts.watch(tmp_path / "mnt")
    mounted = Mounted(config, mnt)
    with mounted:
        (mnt / "public" / "f.txt").write_text("kept")
        assert mounted.proc is not None
        proc = mounted.proc
        result = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True, timeout=30)
        assert_ok(result)
        assert proc.wait(timeout=30) == 0, mounted.log()
        assert not is_mounted(mnt)
    assert (public / "f.txt").read_text() == "kept"


def _kill_9(mnt: Path, pid: int) -> None:
    """SIGKILL the daemon; the dead mount stays, and answers ENOTCONN."""
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid], 10.0) == []
    assert len(mount_entries(mnt)) == 1
    with pytest.raises(OSError) as info:
        os.listdir(mnt)
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def _mount_again_after_crash(mounts: Mounts, config: Path, mnt: Path, public: Path, old_pid: int,
                             *extra: str) -> None:
    new_pid = background_mount(mounts, config, mnt, *extra)
    assert new_pid != old_pid
    assert len(mount_entries(mnt)) == 1, "the dead mount was not cleared (or the new one stacked on it)"
    assert (mnt / "public" / "before.txt").read_text() == "before the crash"
    (mnt / "public" / "after.txt").write_text("after the crash")
    assert (public / "after.txt").read_text() == "after the crash"
    unmount_and_wait(mnt, new_pid)


def test_kill_9_then_mount_again_at_the_same_place(tmp_path: Path, mounts: Mounts) -> None:
    config, public = local_setup(tmp_path)
    mnt = tmp_path / "mnt"
    pid = background_mount(mounts, config, mnt)
    (mnt / "public" / "before.txt").write_text("before the crash")
    _kill_9(mnt, pid)
    # Past the default attr_timeout (1 s): the kernel no longer answers stat(mnt) from its cache.
    time.sleep(1.5)
    _mount_again_after_crash(mounts, config, mnt, public, pid)


def test_kill_9_then_mount_again_while_root_attributes_are_cached(tmp_path: Path, mounts: Mounts) -> None:
    """A restart right after a crash, with the mountpoint's attributes still in the kernel's cache.

    Swift configs default to attr_timeout=10: stat(MOUNTPOINT) of the dead mount keeps
    succeeding (from the cache, no request) that long after the crash, while everything that
    reaches the daemon (opendir, statfs) fails with ENOTCONN.  The mount must still be seen as dead.
    """
    config, public = local_setup(tmp_path)
    mnt = tmp_path / "mnt"
    pid = background_mount(mounts, config, mnt, "-o", "attr_timeout=30")
    (mnt / "public" / "before.txt").write_text("before the crash")
    os.stat(mnt)
    _kill_9(mnt, pid)
    os.stat(mnt)  # served from the attribute cache: the dead mount looks alive to stat()
    with pytest.raises(OSError) as info:
        os.statvfs(mnt)
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    _mount_again_after_crash(mounts, config, mnt, public, pid, "-o", "attr_timeout=30")


# ------------------------------------------------------------------ --store and the embedded default


def test_store_public_alone_at_the_mountpoint(tmp_path: Path, mounts: Mounts) -> None:
    config, public = local_setup(tmp_path)
    (public / "existing.txt").write_text("already there")
    mnt = mounts.watch(tmp_path / "mnt")
    with Mounted(config, mnt, extra_args=("--store", "public")) as mounted:
        assert sorted(os.listdir(mnt)) == ["existing.txt"]
        (mnt / "alone.txt").write_text("at the root")
        assert (mnt / "alone.txt").read_text() == "at the root"
        mounted.check_log()
    assert (public / "alone.txt").read_text() == "at the root"
    assert not (tmp_path / "cfg" / "data" / "media" / "queue" / "alone.txt").exists()


def test_embedded_default_lands_in_xdg_data_home(tmp_path: Path, mounts: Mounts) -> None:
    xdg = tmp_path / "xdg"
    env = {"XDG_DATA_HOME": str(xdg), "HOME": str(tmp_path / "home")}
    mnt = tmp_path / "mnt"
    pid = background_mount(mounts, None, mnt, env=env)
    assert sorted(os.listdir(mnt)) == ["public", "queue"]
    (mnt / "public" / "default.txt").write_text("embedded default")
    (mnt / "queue" / "q.txt").write_text("queued")
    unmount_and_wait(mnt, pid)
    assert (xdg / "goblinfs" / "media" / "public" / "default.txt").read_text() == "embedded default"
    assert (xdg / "goblinfs" / "media" / "queue" / "q.txt").read_text() == "queued"
    assert not (tmp_path / "home" / ".local").exists(), "the default ignored XDG_DATA_HOME"


# ------------------------------------------------------------------ mount(8), fstab, mount.fuse3


def _ns_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """Run inside a private mount namespace (see the module docstring); returns what it saw.

    spec: bin (directory with a goblinfs symlink), mnt, file (relative path to write through
    the mount), and either config + options (mount -t fuse.goblinfs) or fstab (mount -T).
    Always ends every goblinfs daemon of mnt (by PID) before returning.
    """
    mnt = spec["mnt"]
    seen: dict[str, Any] = {}
    try:
        subprocess.run(["mount", "--bind", spec["bin"], "/usr/local/bin"], check=True, capture_output=True)
        if "fstab" in spec:
            cmd = ["mount", "-T", spec["fstab"], mnt]
        else:
            cmd = ["mount", "-t", "fuse.goblinfs", spec["config"], mnt, "-o", spec["options"]]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        seen["mount_rc"] = result.returncode
        seen["mount_output"] = result.stdout + result.stderr
        seen["fstype"] = fstype(mnt)
        seen["mount_options"] = mount_entries(mnt)[-1][-1] if mount_entries(mnt) else None
        pids = daemon_pids(mnt)
        seen["daemons"] = [_cmdline(p) for p in pids]
        if result.returncode == 0:
            seen["listing"] = sorted(os.listdir(mnt))
            target = os.path.join(mnt, spec["file"])
            with open(target, "w") as f:
                f.write("through mount(8)")
            with open(target) as f:
                seen["read_back"] = f.read()
            result = subprocess.run(["umount", mnt], capture_output=True, text=True, timeout=60)
            seen["umount_rc"] = result.returncode
            seen["mounted_after_umount"] = bool(mount_entries(mnt))
            seen["daemons_after_umount"] = wait_gone(pids, 30.0)
    finally:
        kill_by_pid(daemon_pids(mnt))
        if mount_entries(mnt):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    return seen


def run_in_namespace(tmp_path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run _ns_scenario under `unshare --mount`; the daemon is ended by PID whatever happens."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to run mount(8) with goblinfs in /usr/local/bin")
    bin_dir = tmp_path / "helper-bin"
    bin_dir.mkdir()
    (bin_dir / "goblinfs").symlink_to(GOBLINFS)
    spec = dict(spec, bin=str(bin_dir))
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", "tests.test_mount_cli",
             "--ns-scenario", json.dumps(spec)],
            capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    finally:
        # A daemon outlives the namespace's shell only if the scenario failed to end it.
        kill_by_pid(daemon_pids(spec["mnt"]))
    assert result.returncode == 0, f"scenario failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_mount8_scenario(seen: dict[str, Any], store_file: Path) -> None:
    assert seen["mount_rc"] == 0, seen["mount_output"]
    assert seen["fstype"] == "fuse.goblinfs"
    assert "allow_other" in seen["mount_options"]
    assert len(seen["daemons"]) == 1, seen["daemons"]
    daemon_args = seen["daemons"][0]
    # mount.fuse3 ran the goblinfs it found in sh's default path, with the options it passes on.
    assert daemon_args[1] == "/usr/local/bin/goblinfs", daemon_args
    options = daemon_args[daemon_args.index("-o") + 1].split(",")
    assert "allow_other" in options and "dev" in options and "suid" in options, options
    assert seen["listing"] == ["public", "queue"]
    assert seen["read_back"] == "through mount(8)"
    assert seen["umount_rc"] == 0
    assert seen["mounted_after_umount"] is False
    assert seen["daemons_after_umount"] == [], "daemon still running after umount"
    assert store_file.read_text() == "through mount(8)"


def test_mount_t_fuse_goblinfs_with_fstab_and_systemd_options(tmp_path: Path) -> None:
    config, public = local_setup(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    seen = run_in_namespace(tmp_path, {"mnt": str(mnt), "config": str(config), "options": MOUNT8_OPTIONS,
                                       "file": "public/mount8.txt"})
    check_mount8_scenario(seen, public / "mount8.txt")
    options = seen["daemons"][0][seen["daemons"][0].index("-o") + 1].split(",")
    # Our own options got through; what mount(8) and mount.fuse3 strip did not.
    assert "cache_size=1G" in options and "attr_timeout=2" in options
    assert not {"_netdev", "nofail", "x-systemd.automount"} & set(options)


def _fstab_example_lines() -> tuple[list[str], list[str]]:
    """(the active line, the commented PROGRAM#SOURCE alternative) of contrib/fstab.example, split."""
    active = []
    alternative = []
    for line in (CONTRIB / "fstab.example").read_text().splitlines():
        fields = line.split()
        if line.strip() and not line.lstrip().startswith("#"):
            active.append(fields)
        elif len(fields) == 7 and "#/" in fields[1] and fields[3] == "fuse":
            alternative.append(fields[1:])
    assert len(active) == 1, active
    assert len(alternative) == 1, alternative
    return active[0], alternative[0]


def _localize(text: str, tmp_path: Path) -> str:
    return text.replace("/srv/mediagoblin", str(tmp_path / "srv")).replace(
        "/path/to/goblinfs/.venv/bin/goblinfs", str(GOBLINFS))


def _srv_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The contrib paths under tmp_path/srv: (config, mountpoint, public store)."""
    srv = tmp_path / "srv"
    config = write_local_config(srv)
    mnt = srv / "mnt"
    mnt.mkdir()
    return config, mnt, srv / "data" / "media" / "public"


def test_fstab_example_line_mounts_with_mount_T(tmp_path: Path) -> None:
    active, _ = _fstab_example_lines()
    assert active[1:4] == ["/srv/mediagoblin/mnt", "fuse.goblinfs", "defaults,_netdev,nofail,allow_other"]
    assert active[0] == "/srv/mediagoblin/mediagoblin.ini"
    config, mnt, public = _srv_setup(tmp_path)
    assert active[0].replace("/srv/mediagoblin", str(tmp_path / "srv")) == str(config)
    fstab = tmp_path / "fstab"
    fstab.write_text(_localize(" ".join(active), tmp_path) + "\n")
    seen = run_in_namespace(tmp_path, {"mnt": str(mnt), "fstab": str(fstab), "file": "queue/fstab.txt"})
    check_mount8_scenario(seen, public.parent / "queue" / "fstab.txt")


def test_fstab_example_program_hash_source_form(tmp_path: Path, mounts: Mounts) -> None:
    """The documented alternative names goblinfs by absolute path: works in our own namespace."""
    _, alternative = _fstab_example_lines()
    config, mnt, public = _srv_setup(tmp_path)
    mounts.watch(mnt)
    fstab = tmp_path / "fstab"
    fstab.write_text(_localize(" ".join(alternative), tmp_path) + "\n")
    assert f"{GOBLINFS}#{config}" in fstab.read_text()
    result = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True, timeout=60)
    assert_ok(result)
    assert fstype(mnt) == "fuse.goblinfs"
    pid = mounts.daemon(mnt)
    assert _cmdline(pid)[1] == str(GOBLINFS)
    (mnt / "public" / "hash.txt").write_text("program#source")
    assert (public / "hash.txt").read_text() == "program#source"
    unmount_and_wait(mnt, pid, ["umount", str(mnt)])


# ------------------------------------------------------------------ systemd units


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze (package systemd) is needed to check contrib/ units")
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          cwd=str(unit.parent))


def _bad_verify_lines(result: subprocess.CompletedProcess[str], unit: Path) -> list[str]:
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if unit.name in line and any(w in line.lower() for w in VERIFY_BAD_WORDS)]


def _escape_path(path: Path | str) -> str:
    result = subprocess.run(["systemd-escape", "--path", str(path)], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def _unit_value(text: str, key: str) -> str:
    values = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{key}= {values}"
    return values[0]


def test_mount_unit_verifies(tmp_path: Path) -> None:
    units = sorted(CONTRIB.glob("*.mount"))
    assert len(units) == 1, units
    text = units[0].read_text()
    where = _unit_value(text, "Where")
    assert units[0].name == _escape_path(where) + ".mount", "unit name does not match Where="
    assert _unit_value(text, "Type") == "fuse.goblinfs"
    assert _unit_value(text, "What").endswith(".ini")
    assert {"allow_other", "_netdev"} <= set(_unit_value(text, "Options").split(","))
    _srv_setup(tmp_path)
    local = _localize(text, tmp_path)
    local_where = _unit_value(local, "Where")
    assert Path(_unit_value(local, "What")).is_file() and Path(local_where).is_dir()
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / (_escape_path(local_where) + ".mount")
    unit.write_text(local)
    result = _verify(unit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _bad_verify_lines(result, unit) == [], result.stdout + result.stderr
    # The check has teeth here (no systemd as PID 1): a misnamed copy is refused.
    misnamed = unit_dir / "not-the-where-path.mount"
    misnamed.write_text(local)
    result = _verify(misnamed)
    assert result.returncode != 0 and "doesn't match unit name" in result.stdout + result.stderr


def test_service_unit_verifies(tmp_path: Path) -> None:
    units = sorted(CONTRIB.glob("*.service"))
    assert len(units) == 1, units
    text = units[0].read_text()
    exec_start = shlex.split(_unit_value(text, "ExecStart"))
    assert exec_start[0] == "/usr/local/bin/goblinfs" and exec_start[1] == "mount", exec_start
    assert exec_start[2] == "/srv/mediagoblin/mediagoblin.ini" and exec_start[3] == "/srv/mediagoblin/mnt"
    assert "network-online.target" in _unit_value(text, "After")
    assert _unit_value(text, "Restart") == "on-failure"
    # Type=forking goes with the background mode, Type=simple/exec/notify with -f: never mixed.
    assert ("-f" in exec_start) == (_unit_value(text, "Type") in ("simple", "exec", "notify"))
    _srv_setup(tmp_path)
    local = _localize(text, tmp_path).replace("/usr/local/bin/goblinfs", str(GOBLINFS))
    assert str(GOBLINFS) in _unit_value(local, "ExecStart")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / units[0].name
    unit.write_text(local)
    result = _verify(unit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _bad_verify_lines(result, unit) == [], result.stdout + result.stderr
    # The check has teeth: the same unit with a goblinfs that does not exist is refused.
    broken = unit_dir / ("broken-" + units[0].name)
    broken.write_text(local.replace(str(GOBLINFS), str(tmp_path / "no" / "goblinfs")))
    result = _verify(broken)
    assert result.returncode != 0 and "not executable" in result.stdout + result.stderr


def test_service_exec_start_mounts_and_sigterm_stops(tmp_path: Path, mounts: Mounts) -> None:
    """Run the service's ExecStart as systemd would (in the foreground: Type=notify, -f), then stop it
    as systemd would (SIGTERM).  The notifications themselves: tests/test_systemd.py."""
    text = (sorted(CONTRIB.glob("*.service"))[0]).read_text()
    _config, mnt, public = _srv_setup(tmp_path)
    mounts.watch(mnt)
    local = _localize(text, tmp_path).replace("/usr/local/bin/goblinfs", str(GOBLINFS))
    exec_start = shlex.split(_unit_value(local, "ExecStart"))
    assert "-f" in exec_start, "this test runs the foreground form"
    service = subprocess.Popen(exec_start, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/")
    mounts.pids.add(service.pid)
    assert wait_until(lambda: fstype(mnt) == "fuse.goblinfs" or service.poll() is not None, 60)
    assert service.poll() is None, service.communicate()[0]
    assert mounts.daemon(mnt) == service.pid  # the main process is the daemon
    (mnt / "public" / "svc.txt").write_text("service")
    service.send_signal(signal.SIGTERM)
    out, _err = service.communicate(timeout=30)
    assert service.returncode == 0, out
    assert not mount_entries(mnt)
    assert (public / "svc.txt").read_text() == "service"


# ------------------------------------------------------------------ scripts/mount-default


def test_mount_default_script(tmp_path: Path, mounts: Mounts) -> None:
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(xdg))
    mnt = mounts.watch(tmp_path / "my mnt")

    def run_script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(MOUNT_DEFAULT), *args], capture_output=True, text=True, env=env, timeout=120)

    first = run_script(str(mnt))
    assert_ok(first)
    assert f"at {mnt}" in first.stdout, first.stdout
    assert fstype(mnt) == "fuse.goblinfs"
    pid = mounts.daemon(mnt)
    (mnt / "public" / "hello.txt").write_text("from the default mount")
    assert (xdg / "goblinfs" / "media" / "public" / "hello.txt").read_text() == "from the default mount"
    # Again: quick, nothing reinstalled, the same mount kept.
    again = run_script(str(mnt))
    assert_ok(again)
    assert "already mounted" in again.stdout
    assert "installing" not in again.stdout + again.stderr
    assert len(mount_entries(mnt)) == 1 and daemon_pids(mnt) == [pid]
    # The unmount command it prints works.
    lines = [line for line in first.stdout.splitlines() if "unmount with: " in line]
    assert len(lines) == 1, first.stdout
    unmount_and_wait(mnt, pid, shlex.split(lines[0].split("unmount with: ", 1)[1]))
    assert not (home / ".local").exists()


def test_mount_default_script_default_mountpoint(tmp_path: Path, mounts: Mounts) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_DATA_HOME"}
    env["HOME"] = str(home)
    mnt = mounts.watch(home / "goblinfs")
    result = subprocess.run([str(MOUNT_DEFAULT)], capture_output=True, text=True, env=env, timeout=120)
    assert_ok(result)
    assert fstype(mnt) == "fuse.goblinfs"
    pid = mounts.daemon(mnt)
    (mnt / "queue" / "q.txt").write_text("queued")
    assert (home / ".local" / "share" / "goblinfs" / "media" / "queue" / "q.txt").read_text() == "queued"
    unmount_and_wait(mnt, pid)


if __name__ == "__main__":
    # python -m tests.test_mount_cli --ns-scenario SPEC: the part of a test run inside a namespace.
    if len(sys.argv) == 3 and sys.argv[1] == "--ns-scenario":
        print(json.dumps(_ns_scenario(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit("usage: python -m tests.test_mount_cli --ns-scenario SPEC")
