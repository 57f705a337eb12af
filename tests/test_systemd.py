"""systemd readiness (Type=notify): READY=1, STATUS=, STOPPING=1 on a real notify socket.

Each mount test binds a real AF_UNIX datagram socket, as systemd's notify socket is, with
SO_PASSCRED so every message carries the sender's PID (what ``NotifyAccess=main`` checks),
runs ``goblinfs mount`` on a real FUSE mount with NOTIFY_SOCKET pointing at it, and reads what
arrives.  The shipped service unit is checked against the command line the code accepts
(``systemd-analyze verify`` of both units: tests/test_mount_cli.py).
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from goblinfs.systemd import JournalFormatter, Notifier, safe_status_line, status_line, stderr_is_journal

from .conftest import drop_container
from .mountutil import ROOT, Mounted, force_unmount, is_mounted, wait_until, write_local_config, write_swift_config

CONTRIB = ROOT / "contrib"
CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotifySocket:
    """A notify socket like systemd's: datagrams, each with the sender's credentials."""

    def __init__(self, address: str) -> None:
        """address: a path, or ``@name`` for the abstract namespace (NOTIFY_SOCKET's syntax)."""
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []  # (sender pid, one line), in arrival order
        self.datagrams: list[tuple[int, list[str]]] = []  # (sender pid, its lines): systemd checks each once

    def receive(self, timeout: float) -> bool:
        """Wait up to timeout for one datagram; keep its lines; False if none came."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
        except TimeoutError:
            return False
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = CREDENTIALS.unpack(payload[:CREDENTIALS.size])[0]
        self.messages.extend((pid, line) for line in data.decode().splitlines())
        self.datagrams.append((pid, data.decode().splitlines()))
        return True

    def wait_for(self, predicate: Callable[[int, str], bool], timeout: float) -> tuple[int, str]:
        """The first message (already received or arriving within timeout) matching predicate."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for pid, line in self.messages[seen:]:
                if predicate(pid, line):
                    return pid, line
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notification in {timeout} s; got {self.messages}")
            self.receive(left)

    def drain(self, quiet: float = 0.2) -> None:
        """Receive until nothing arrives for ``quiet`` seconds."""
        while self.receive(quiet):
            pass

    def lines(self) -> list[str]:
        return [line for _pid, line in self.messages]

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)


def fstype(path: Path) -> str | None:
    """The filesystem type of the mount at path (mountinfo), or None.

    Never touches path itself (realpath would lstat it: a held daemon would hang this).
    """
    real = os.path.join(os.path.realpath(Path(path).parent), Path(path).name)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                return fields[fields.index("-") + 1]
    return None


class NotifyMounted(Mounted):
    """``Mounted`` (foreground daemon, torn down by PID and mountpoint) that is ready on READY=1."""

    def __init__(self, notify: NotifySocket, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.notify = notify

    def _ready(self) -> bool:
        self.notify.receive(0.05)
        return "READY=1" in self.notify.lines()


class HeldAtReady(NotifyMounted):
    """Looks at the mount while the daemon is sending READY=1, before systemd could act on it.

    The notify socket's queue is filled first (by this process), so the daemon's first
    notification blocks it inside sendmsg(2) -- on its trio thread, so it serves nothing
    meanwhile.  While it is held there, ``at_ready`` records whether the mountpoint is a
    goblinfs mount and whether a stat of its root is answered from the kernel's attribute
    cache (which only a stat that went through the daemon before can have filled); then the
    queue is drained and READY=1 arrives.
    """

    SENDMSG = 46  # x86_64 syscall number, as /proc/PID/syscall shows it

    def __init__(self, notify: NotifySocket, *args: Any, **kw: Any) -> None:
        super().__init__(notify, *args, **kw)
        self.at_ready: dict[str, Any] | None = None
        self.filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.filler.setblocking(False)
        target = "\0" + notify.address[1:] if notify.address.startswith("@") else notify.address
        self.fill = 0
        with contextlib.suppress(BlockingIOError):
            while self.fill < 100_000:
                self.filler.sendto(b"FILLER=1", target)
                self.fill += 1
        assert self.fill < 100_000, "the notify socket's queue never filled"

    def _held_in_sendmsg(self) -> bool:
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/syscall") as f:
                return f.read().split()[0] == str(self.SENDMSG)
        except (FileNotFoundError, IndexError):
            return False

    def _ready(self) -> bool:
        if self.at_ready is None:
            if not self._held_in_sendmsg():
                return False
            result: dict[str, Any] = {}
            stat = threading.Thread(target=lambda: result.setdefault("stat", os.stat(self.mountpoint)), daemon=True)
            stat.start()
            stat.join(2.0)  # a daemon held in sendmsg cannot answer: only the kernel's cache can
            self.at_ready = {"fstype": fstype(self.mountpoint), "root_stat_cached": "stat" in result}
            for _ in range(self.fill):  # let the daemon's READY=1 through
                self.notify.receive(5)
            self.notify.messages = [(pid, line) for pid, line in self.notify.messages if line != "FILLER=1"]
            stat.join(10)
        return super()._ready()

    def stop(self, clean: bool = True) -> int | None:
        self.filler.close()
        return super().stop(clean)


def goblinfs_env(notify: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": notify.address}


@pytest.fixture
def abstract_socket() -> Any:
    sock = NotifySocket(f"@goblinfs-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    yield sock
    sock.close()


@pytest.fixture
def path_socket(tmp_path: Path) -> Any:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


# ------------------------------------------------------------------ real mounts


@pytest.mark.fuse
def test_ready_after_the_mount_answers_then_status_and_stopping_on_sigterm(
        tmp_path: Path, abstract_socket: NotifySocket) -> None:
    """Foreground daemon, abstract socket: READY=1 once mounted, STATUS=, STOPPING=1 once on SIGTERM,
    exit 0, nothing left mounted; every message from the daemon's own PID (NotifyAccess=main);
    stderr that is the journal (JOURNAL_STREAM) gets <priority> prefixes."""
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    log_path = tmp_path / "mnt.daemon.log"
    log_path.touch()
    st = os.stat(log_path)
    env = goblinfs_env(abstract_socket) | {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    # attr_timeout: the root's attributes the daemon fetched before READY=1 stay cached for the check.
    held = HeldAtReady(abstract_socket, config, mnt, env=env, options="attr_timeout=60")
    with held as mounted:
        assert mounted.proc is not None
        daemon = mounted.proc.pid
        # READY=1 was sent only once the mount was there and a stat of its root had been answered.
        assert held.at_ready == {"fstype": "fuse.goblinfs", "root_stat_cached": True}, held.at_ready
        assert sorted(os.listdir(mnt)) == ["public", "queue"]
        _pid, status = abstract_socket.wait_for(lambda p, line: line.startswith("STATUS="), 10)
        assert status == f"STATUS=serving {mnt}: 0 uploads pending, 0 journaled"
        (mnt / "public" / "a.txt").write_text("hello")  # it serves
        assert abstract_socket.lines()[0] == "READY=1"
        mounted.proc.send_signal(signal.SIGTERM)
        assert mounted.proc.wait(timeout=30) == 0
        abstract_socket.drain()
        lines = abstract_socket.lines()
        assert lines.count("STOPPING=1") == 1, lines
        after = lines[lines.index("STOPPING=1") + 1:]
        assert f"STATUS=stopping {mnt}: 0 uploads pending, 0 journaled" in after, lines
        assert "READY=1" not in after
        assert {pid for pid, _line in abstract_socket.messages} == {daemon}
        assert not is_mounted(mnt)
        text = mounted.log()
        assert f"<6>goblinfs.mount: goblinfs mounted at {mnt} (stores: queue, public)" in text.splitlines(), text
        assert f"<6>goblinfs.mount: goblinfs at {mnt}: stopped" in text.splitlines(), text
        mounted.check_log()
    assert (tmp_path / "cfg" / "data" / "media" / "public" / "a.txt").read_text() == "hello"


#: Opens argv[1] for writing, writes 100 kB, says so, and closes it when stdin ends.
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"p" * 100_000)
print("written", flush=True)
sys.stdin.read()
try:
    os.close(fd)
except OSError:
    pass
"""


@pytest.mark.fuse
@pytest.mark.swift
def test_status_counts_a_pending_upload_and_the_drain_on_stop(
        tmp_path: Path, swift_env: dict[str, Any], swift_container_name: str, path_socket: NotifySocket) -> None:
    """Swift: a file written and still open shows in STATUS= as 1 upload pending; SIGTERM while it
    is open sends STOPPING=1, then a "stopping" STATUS= still counting it, and the drain uploads it."""
    import swiftclient

    config = write_swift_config(tmp_path / "cfg", swift_env, swift_container_name)
    mnt = tmp_path / "mnt"
    writer: subprocess.Popen[str] | None = None
    try:
        with NotifyMounted(path_socket, config, mnt, env=goblinfs_env(path_socket)) as mounted:
            assert mounted.proc is not None
            assert fstype(mnt) == "fuse.goblinfs"
            # Another process writes: a file open here would be flushed by every fork+exec of this one.
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / "public" / "pending.bin")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert writer.stdout is not None and writer.stdout.readline() == "written\n"
            pending = f"STATUS=serving {mnt}: 1 upload pending, 0 journaled"
            path_socket.wait_for(lambda p, line: line == pending, 15)  # refreshed every 5 s
            mounted.proc.send_signal(signal.SIGTERM)
            assert mounted.proc.wait(timeout=60) == 0, mounted.log()
            path_socket.drain()
            lines = path_socket.lines()
            assert lines.count("STOPPING=1") == 1, lines
            after = lines[lines.index("STOPPING=1") + 1:]
            assert after[0] == f"STATUS=stopping {mnt}: 1 upload pending, 0 journaled", lines
            assert {pid for pid, _line in path_socket.messages} == {mounted.proc.pid}
            mounted.check_log()
        assert not is_mounted(mnt)
        conn = swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"], key=swift_env["key"])
        _headers, body = conn.get_object(swift_container_name, "pending.bin")
        assert body == b"p" * 100_000  # the drain uploaded what was still open
    finally:
        if writer is not None and writer.poll() is None:
            try:
                writer.communicate("", timeout=30)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()
        drop_container(swift_env, swift_container_name)
        drop_container(swift_env, swift_container_name + "-queue")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.fuse
def test_forking_mount_hands_over_with_mainpid(tmp_path: Path, path_socket: NotifySocket) -> None:
    """Without -f: the command sends MAINPID=<daemon> and READY=1 (one datagram) and returns; the daemon then sends
    STATUS=, and STOPPING=1 when unmounted from outside (fusermount3 -u), and exits."""
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ) | goblinfs_env(path_socket)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    daemon: int | None = None
    try:
        command = subprocess.Popen([sys.executable, "-m", "goblinfs", "mount", str(config), str(mnt),
                                    "-o", f"logfile={tmp_path / 'daemon.log'}"],
                                   env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = command.communicate(timeout=60)
        assert command.returncode == 0, err
        path_socket.drain()
        assert [line for _pid, line in path_socket.messages][1:] == ["READY=1"], path_socket.messages
        sender, mainpid = path_socket.messages[0]
        assert sender == command.pid and mainpid.startswith("MAINPID="), path_socket.messages
        daemon = int(mainpid.removeprefix("MAINPID="))
        assert daemon != command.pid and _alive(daemon)
        # One datagram: with NotifyAccess=main a READY=1 sent by the parent after MAINPID= is refused.
        assert path_socket.datagrams[0] == (command.pid, [mainpid, "READY=1"]), path_socket.datagrams
        assert is_mounted(mnt) and fstype(mnt) == "fuse.goblinfs"
        # The daemon's own first STATUS= comes one interval later, after systemd knows its PID.
        pid, status = path_socket.wait_for(lambda p, line: line.startswith("STATUS="), 15)
        assert (pid, status) == (daemon, f"STATUS=serving {mnt}: 0 uploads pending, 0 journaled")
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        assert wait_until(lambda: not _alive(daemon), 30), "the daemon did not exit after the unmount"
        path_socket.drain()
        assert (daemon, "STOPPING=1") in path_socket.messages, path_socket.messages
        assert (daemon, f"STATUS=stopping {mnt}: 0 uploads pending, 0 journaled") in path_socket.messages
        assert "Traceback" not in (tmp_path / "daemon.log").read_text()
    finally:
        force_unmount(mnt)
        if daemon is not None and _alive(daemon):
            os.kill(daemon, signal.SIGTERM)
            if not wait_until(lambda: not _alive(daemon), 10):
                os.kill(daemon, signal.SIGKILL)


@pytest.mark.fuse
def test_without_notify_socket_the_daemon_is_as_before(tmp_path: Path) -> None:
    """NOTIFY_SOCKET unset (empty counts as unset): mounts, stops on SIGTERM with 0, logs as before."""
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    with Mounted(config, mnt, env={"NOTIFY_SOCKET": ""}) as mounted:
        assert mounted.proc is not None
        assert fstype(mnt) == "fuse.goblinfs"
        # The kernel shows the mount before the daemon has checked that its root answers; a
        # SIGTERM in between is "stopped before it was ready", which is not this test's case.
        assert wait_until(lambda: "goblinfs mounted at" in mounted.log(), 30), mounted.log()
        mounted.proc.send_signal(signal.SIGTERM)
        assert mounted.proc.wait(timeout=30) == 0
        mounted.check_log()
    text = mounted.log()
    assert "systemd" not in text, text
    assert " INFO goblinfs.mount: goblinfs mounted at " in text, text  # the usual format, not the journal's


# ------------------------------------------------------------------ the unit files


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((CONTRIB / name).read_text())
    return parser


def test_service_unit_is_type_notify_and_runs_the_daemon_in_the_foreground() -> None:
    """goblinfs.service: Type=notify with NotifyAccess=main, and ExecStart is a `goblinfs mount`
    command line the CLI parses as foreground (-f), for the .mount unit's config and mountpoint."""
    from goblinfs.cli import _mount_parser

    service = _unit("goblinfs.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"  # SIGTERM to the daemon alone: it drains, then exits
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/goblinfs" and argv[1] == "mount"
    args = _mount_parser("goblinfs mount").parse_args(argv[2:])
    assert args.foreground, "Type=notify needs the daemon as the main process: -f"
    mount = _unit("srv-mediagoblin-mnt.mount")["Mount"]
    assert args.paths == [mount["What"], mount["Where"]]
    assert "allow_other" in args.options[0].split(",") and "allow_other" in mount["Options"].split(",")
    fstab = [line.split() for line in (CONTRIB / "fstab.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert fstab == [[mount["What"], mount["Where"], mount["Type"], "defaults,_netdev,nofail,allow_other", "0", "0"]]


# ------------------------------------------------------------------ the pieces


def test_notifier_without_socket_sends_nothing_and_with_a_dead_one_never_raises(
        tmp_path: Path, path_socket: NotifySocket, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = Notifier()
    assert not quiet.enabled
    quiet.ready("x")
    quiet.status("x")
    quiet.stopping()
    assert not quiet.stopping_sent
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert not Notifier.off().enabled
    dead = Notifier()
    with caplog.at_level(logging.DEBUG, logger="goblinfs.systemd"):
        dead.ready("serving")
        dead.status("serving")
        dead.stopping()
    failures = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    # READY=1 failed, so no STATUS= after it; then STATUS= and STOPPING=1: one warning, then debug.
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG, logging.DEBUG], caplog.records
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.address)
    live = Notifier()
    live.status("two\nlines  here")
    live.stopping()
    live.stopping()
    Notifier(forked=True).ready("not from the forked daemon")
    Notifier().forked_ready(4242)
    path_socket.drain()
    assert path_socket.lines() == ["STATUS=two lines here", "STOPPING=1", "MAINPID=4242", "READY=1"]
    assert path_socket.datagrams[-1][1] == ["MAINPID=4242", "READY=1"]  # one datagram
    assert {pid for pid, _line in path_socket.messages} == {os.getpid()}


def test_status_line() -> None:
    doc: dict[str, Any] = {"pending_uploads": [{}, {}], "journaled": [{}], "recovered": []}
    assert status_line(doc, "/m") == "serving /m: 2 uploads pending, 1 journaled"
    doc = {"pending_uploads": [{}], "journaled": [], "recovered": [{}, {}]}
    assert status_line(doc, "/m", stopping=True) == "stopping /m: 1 upload pending, 0 journaled, 2 recovered"

    def broken() -> dict[str, Any]:
        raise OSError("journal unreadable")

    assert safe_status_line(broken, "/m") == "serving /m: status unavailable (OSError)"


def test_journal_formatter_and_detection(tmp_path: Path) -> None:
    formatter = JournalFormatter()
    record = logging.LogRecord("goblinfs.x", logging.ERROR, __file__, 1, "upload of %s failed", ("a",), None)
    assert formatter.format(record) == "<3>goblinfs.x: upload of a failed"
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("goblinfs.x", logging.WARNING, __file__, 1, "w", (), exc_info)
    lines = formatter.format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<4>") for line in lines)
    record = logging.LogRecord("goblinfs.x", logging.DEBUG, __file__, 1, "d", (), None)
    assert formatter.format(record) == "<7>goblinfs.x: d"
    st = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stderr_is_journal({})
