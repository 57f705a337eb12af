"""Real FUSE mounts for tests: a daemon in a subprocess, always unmounted, never left behind.

``Mounted`` starts ``python -m goblinfs mount CONFIG MNT -f`` (foreground, so the PID we
hold is the daemon's), waits until the mountpoint is mounted while checking the daemon is
alive, and on exit unmounts with ``fusermount3 -u`` (lazily if that fails), then waits for
the daemon and kills it by PID if it does not exit.  The daemon's log is kept; a test can
read it, and ``check_log`` fails on tracebacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

BASIC_CLASS = "goblinfs.storage.filestorage:BasicFileStorage"


def write_local_config(directory: Path, extra: str = "") -> Path:
    """A mediagoblin.ini with two local stores under directory/data."""
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("data/media/public", "data/media/queue"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    config = directory / "mediagoblin.ini"
    config.write_text(
        "[DEFAULT]\ndata_basedir = %(here)s/data\n"
        "[mediagoblin]\nemail_sender_address = \"notice@example.org\"\n"
        "[storage:queuestore]\nbase_dir = %(data_basedir)s/media/queue\n"
        "[storage:publicstore]\nbase_dir = %(data_basedir)s/media/public\nbase_url = /mgoblin_media/\n"
        "[plugins]\n[[mediagoblin.plugins.basic_auth]]\n" + extra)
    return config


def write_swift_config(directory: Path, swift_env: dict[str, Any], container: str, extra: str = "") -> Path:
    """A mediagoblin.ini with both stores in one Swift container pair (queue: container-queue)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "mediagoblin.ini"
    common = (f"storage_class = mediagoblin.storage.cloudfiles:CloudFilesStorage\n"
              f"cloudfiles_user = {swift_env['user']}\ncloudfiles_api_key = {swift_env['key']}\n"
              f"cloudfiles_host = {swift_env['auth_url']}\nsegment_size = 1048576\n")
    config.write_text(
        "[DEFAULT]\ndata_basedir = %(here)s/data\n"
        f"[storage:queuestore]\n{common}cloudfiles_container = {container}-queue\n"
        f"[storage:publicstore]\n{common}cloudfiles_container = {container}\nbase_url = /mgoblin_media/\n"
        + extra)
    return config


def is_mounted(path: Path | str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def force_unmount(path: Path | str) -> None:
    """Unmount by mountpoint: plain, then lazily."""
    if not is_mounted(path):
        return
    if subprocess.run(["fusermount3", "-u", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class Mounted:
    """Context manager: a goblinfs daemon mounted at mountpoint."""

    def __init__(self, config: Path | str | None, mountpoint: Path, options: str = "", extra_args: tuple = (),
                 env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        self.config = config
        self.mountpoint = Path(mountpoint)
        self.options = options
        self.extra_args = list(extra_args)
        self.env = env
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.mountpoint.parent / f"{self.mountpoint.name}.daemon.log"

    def __enter__(self) -> Mounted:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        return self._start()

    def _ready(self) -> bool:
        return is_mounted(self.mountpoint)

    def _start(self) -> Mounted:
        """Start the daemon; return once _ready() (or stop it and raise)."""
        args = [sys.executable, "-m", "goblinfs", "mount"]
        if self.config is not None:
            args.append(str(self.config))
        args += [str(self.mountpoint), "-f"] + self.extra_args
        if self.options:
            args += ["-o", self.options]
        env = dict(os.environ)
        env.update(self.env or {})
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + self.timeout
        try:
            while not self._ready():
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited ({self.proc.returncode}) before mounting:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"not mounted after {self.timeout} s:\n{self.log()}")
                time.sleep(0.05)
        except BaseException:
            self.stop(clean=False)
            raise
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check_log(self) -> None:
        text = self.log()
        assert "Traceback" not in text, text

    def stop(self, clean: bool = True) -> int | None:
        """Unmount, wait for the daemon; returns its exit status (killed if it hangs)."""
        force_unmount(self.mountpoint)
        status = None
        if self.proc is not None:
            try:
                status = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    status = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    status = self.proc.wait()
                if clean:
                    raise AssertionError(f"daemon did not exit after unmount:\n{self.log()}") from None
            self.proc = None
        force_unmount(self.mountpoint)
        if hasattr(self, "_log"):
            self._log.close()
        return status

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        status = self.stop(clean=exc_type is None)
        if exc_type is None:
            assert status == 0, f"daemon exit status {status}:\n{self.log()}"


def run(cmd: list[str] | str, cwd: Path | str | None = None, check: bool = True,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a real tool; on failure the assertion shows its output."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, shell=isinstance(cmd, str),
                            timeout=kw.pop("timeout", 300), **kw)
    if check and result.returncode != 0:
        pytest.fail(f"{cmd!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def mount_ids(path: Path | str) -> list[int]:
    """The mount IDs (first field of /proc/self/mountinfo) of every mount at path, dead ones too."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return [int(line.split()[0]) for line in f if line.split()[4].replace("\\040", " ") == path]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll predicate until it is true (True) or timeout seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def live_mount(path: Path | str) -> bool:
    """A mount is at path and answers: statvfs reaches a daemon (a dead mount gives ENOTCONN).

    statvfs first: if it succeeds, what it reached was a live mount or the bare directory, so a
    mount listed afterwards cannot be the dead one (it never comes back once cleared).
    """
    try:
        os.statvfs(path)
    except OSError:
        return False
    return bool(mount_ids(path))


class Remounted(Mounted):
    """``Mounted`` at a mountpoint that may still hold a dead mount (after kill -9 of a daemon).

    The mountpoint is not touched (mkdir on a dead mount fails with ENOTCONN): the new daemon is
    expected to clear the dead mount itself.  Ready once ``live_mount`` is true (mount IDs are
    reused, so a new ID cannot tell the new mount from the dead one).
    """

    def __enter__(self) -> Mounted:
        return self._start()

    def _ready(self) -> bool:
        return live_mount(self.mountpoint)
