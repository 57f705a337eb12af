"""Crash tests: kill -9 of the goblinfs daemon at many points of an overwrite on the real Swift.

Each crash point mounts a fresh container, writes the old content through the mount, then a
writer subprocess (driven step by step through pipes) overwrites it with new content, and the
test kills the daemon by PID at an exact point: after N bytes were written, after a dup'd
descriptor was closed (flush) but before the final close (release), while the final close's
upload is held up by the fault proxy, or right after close returned.  Then the writer is killed
by PID, the filesystem is mounted again at the same mountpoint (the new daemon clears the dead
mount) with the same ``cache_dir``, and the test checks, directly on Swift and through the new
mount, by sha256:

* the object is exactly the old or exactly the new content, never empty, truncated or mixed;
* data whose writer never called close/fsync is never published (store: old), and is kept in
  ``<cache_dir>/recovered/<store>/<path>[suffix]``, listed by ``goblinfs status MNT --json``;
* data whose close was called but not confirmed is either uploaded from the journal within a
  few seconds of the remount or kept in recovered/ (the new bytes exist somewhere);
* data whose close/flush returned 0 is the stored object;
* no orphaned segment is left in ``<container>_segments`` a few seconds after the remount.

Overwrites are made two ways: open with O_TRUNC and append (streamed to Swift past
segment_size), and in place (no O_TRUNC, write from offset 0, ftruncate: staged, so a sealed
one can be uploaded again from the journal).  Two more tests: an object replaced by another
client between the crash and the remount (the journal must not upload over the new ETag), and
two crashes in a row mid-write (both partial data kept, the second with a suffix).

``GOBLINFS_SLOW=1`` runs a denser sweep.  The points tried and the bytes lost are printed at
the end of the module.  Nothing is left behind: the writer and both daemons are ended by PID,
the mountpoint unmounted with fusermount3 (lazily if needed), the containers deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import random
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import drop_container
from .mountutil import ROOT, Mounted, Remounted, force_unmount, is_mounted, mount_ids, wait_until, write_swift_config

SEG = 1048576  # segment_size of write_swift_config
MIB = 1048576
SLOW = os.environ.get("GOBLINFS_SLOW", "") not in ("", "0")
NAME = "victim.bin"
STORE = "public"
#: How long recovery after the remount may take (journal upload, recovered/ files, segment cleanup).
SETTLE = 6.0
ORPHAN_WAIT = 5.0
#: Delay of the fault proxy on the close's slow PUTs.
SLOW_PUT = 3.0

# ---------------------------------------------------------------------------------------------
# The writer: a python one-liner driven through stdin, answering one line per command on stdout.

WRITER = r"""
import os, sys
src = memoryview(open(sys.argv[1], "rb").read())
fds = {}
pos = 0
def reply(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
reply("ready")
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "open":
            flags = os.O_WRONLY | (os.O_TRUNC if args[0] == "trunc" else 0)
            fds["main"] = os.open(sys.argv[2], flags)
        elif cmd == "write":
            end = int(args[0])
            while pos < end:
                pos += os.write(fds["main"], src[pos:min(end, pos + 131072)])
        elif cmd == "truncate":
            os.ftruncate(fds["main"], int(args[0]))
        elif cmd == "dup":
            fds["dup"] = os.dup(fds["main"])
        elif cmd == "closedup":
            os.close(fds.pop("dup"))
        elif cmd == "fsync":
            os.fsync(fds["main"])
        elif cmd == "close":
            os.close(fds.pop("main"))
        reply(f"ok {pos}")
    except OSError as exc:
        reply(f"err {exc.errno} {pos}")
"""


class Writer:
    """The writer subprocess; ``send`` a command, ``reply`` waits for its answer line."""

    def __init__(self, source: Path, target: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(source), str(target)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = b""
        assert self.reply(30) == "ready"

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float) -> str | None:
        """The next answer line, or None if none came within timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"writer exited ({self.proc.poll()}): {self.stderr()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def ask(self, command: str, timeout: float = 60) -> str:
        self.send(command)
        answer = self.reply(timeout)
        assert answer is not None, f"writer: no answer to {command!r} within {timeout} s"
        return answer

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        """By PID; waits so no process is left."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


# ---------------------------------------------------------------------------------------------
# Crash points.

@dataclasses.dataclass(frozen=True)
class Point:
    """One crash point.

    ``kind``: "write" (kill after ``at`` bytes written, no close), "flush" (all written, a dup'd
    descriptor closed, kill before the final close), "close-delay-segment" /
    "close-delay-manifest" / "close-hang-manifest" (kill while the final close's segment or
    manifest PUT is held by the fault proxy), "close" (kill right after close returned),
    "fsync" (all written, fsync returned, kill before close).  ``at`` is a function of the new
    content's length; ``pause``: seconds between the last answer and the kill.  ``mode``:
    "trunc" (open with O_TRUNC and append: the file is streamed to Swift past segment_size) or
    "inplace" (open without O_TRUNC, write over the old bytes from offset 0, then ftruncate to
    the new length before any close: the file is staged, so a sealed one is uploaded again from
    the journal at the next mount).
    """

    id: str
    kind: str
    at: Callable[[int], int] = dataclasses.field(default=lambda n: n, compare=False)
    pause: float = 0.0
    mode: str = "trunc"

    @property
    def proxied(self) -> bool:
        return self.kind.startswith("close-")


def _points() -> list[Point]:
    points = [
        Point("write-0", "write", lambda n: 0),
        Point("write-7", "write", lambda n: 7),
        Point("write-seg-1", "write", lambda n: SEG - 1),
        Point("write-seg", "write", lambda n: SEG),
        Point("write-seg+1", "write", lambda n: SEG + 1),
        Point("write-mid", "write", lambda n: n // 2 + 12345, pause=0.5),
        Point("write-all-no-close", "write", lambda n: n),
        Point("flush-dup-before-release", "flush"),
        Point("close-delay-segment", "close-delay-segment"),
        Point("close-hang-manifest", "close-hang-manifest"),
        Point("close-delay-manifest", "close-delay-manifest"),
        Point("after-close", "close"),
        Point("inplace-close-hang-manifest", "close-hang-manifest", mode="inplace"),
    ]
    if SLOW:
        points += [
            Point("write-1", "write", lambda n: 1),
            Point("write-4096", "write", lambda n: 4096),
            Point("write-seg-1-paused", "write", lambda n: SEG - 1, pause=0.5),
            Point("write-seg+1-paused", "write", lambda n: SEG + 1, pause=0.5),
            Point("write-2seg-1", "write", lambda n: 2 * SEG - 1),
            Point("write-2seg", "write", lambda n: 2 * SEG),
            Point("write-2seg+1", "write", lambda n: 2 * SEG + 1, pause=0.5),
            Point("write-all-1", "write", lambda n: n - 1),
            Point("write-all-paused", "write", lambda n: n, pause=1.0),
            Point("flush-dup-paused", "flush", pause=1.0),
            Point("fsync-before-close", "fsync"),
            Point("write-mid-now", "write", lambda n: n // 2 + 12345),
            Point("after-close-paused", "close", pause=1.0),
            Point("inplace-write-mid", "write", lambda n: n // 2 + 12345, pause=0.5, mode="inplace"),
            Point("inplace-write-all-no-close", "write", mode="inplace"),
            Point("inplace-flush-dup", "flush", mode="inplace"),
            Point("inplace-close-delay-segment", "close-delay-segment", mode="inplace"),
            Point("inplace-after-close", "close", mode="inplace"),
        ]
        rng = random.Random(4242)
        for i in range(6):
            frac = rng.random()
            points.append(Point(f"write-random{i}", "write", lambda n, f=frac: int(n * f),
                                pause=rng.choice((0.0, 0.3))))
    return points


POINTS = _points()

#: (point id, outcome, bytes acknowledged to the writer, bytes lost) of every point tried.
RESULTS: list[tuple[str, str, int, int]] = []


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = [f"crash points tried: {len(RESULTS)} "
             f"({'GOBLINFS_SLOW sweep' if SLOW else 'default sweep; GOBLINFS_SLOW=1 for the dense one'}); "
             f"bytes lost in total: {sum(r[3] for r in RESULTS)}"]
    lines += [f"  {pid:28} {outcome:44} acked {acked:>8}  lost {lost:>8}" for pid, outcome, acked, lost in RESULTS]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


# ---------------------------------------------------------------------------------------------
# Looking behind the mount.

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def swift_conn(swift_env: dict[str, Any]) -> Any:
    import swiftclient

    return swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"], key=swift_env["key"],
                                  retries=2)


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """A GET of the object failed three times (e.g. an SLO whose segments are gone)."""

    error: str


def stored(conn: Any, container: str) -> bytes | None | Unreadable:
    """The object's bytes read directly from Swift (None if absent).  A GET cut short (its
    segments deleted while it ran, as when an overwrite lands meanwhile) is tried again."""
    import swiftclient

    error = ""
    for attempt in range(3):
        try:
            _headers, body = conn.get_object(container, NAME)
            return bytes(body)
        except swiftclient.ClientException as exc:
            if exc.http_status == 404:
                return None
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # urllib3/http.client errors of a body cut short
            error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5 * (attempt + 1))
    return Unreadable(error[:300])


def orphan_segments(conn: Any, container: str) -> list[str]:
    """Segments in <container>_segments that no manifest of the container refers to."""
    import swiftclient

    try:
        _h, segments = conn.get_container(container + "_segments", full_listing=True)
    except swiftclient.ClientException as exc:
        if exc.http_status == 404:
            return []
        raise
    names = {s["name"] for s in segments}
    if not names:
        return []
    referenced: set[str] = set()
    _h, objects = conn.get_container(container, full_listing=True)
    for obj in objects:
        referenced |= manifest_segments(conn, container, obj["name"], names)
    return sorted(names - referenced)


def manifest_segments(conn: Any, container: str, name: str, existing: set[str] | None = None) -> set[str]:
    """The names in <container>_segments that the object's manifest (SLO or DLO) refers to."""
    import swiftclient

    try:
        headers = conn.head_object(container, name)
    except swiftclient.ClientException:
        return set()
    if headers.get("x-static-large-object", "").lower() == "true":
        _h, body = conn.get_object(container, name, query_string="multipart-manifest=get")
        out = set()
        for seg in json.loads(body):
            seg_container, _, seg_name = seg["name"].lstrip("/").partition("/")
            if seg_container == container + "_segments":
                out.add(seg_name)
        return out
    if "x-object-manifest" in headers:
        prefix = headers["x-object-manifest"].partition("/")[2]
        return {n for n in existing or () if n.startswith(prefix)}
    return set()


def read_through(path: Path) -> bytes | None | Unreadable:
    """The file's bytes read through the mount (None if absent)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Unreadable(f"{type(exc).__name__}: {exc}")


def kept_bytes(path: Path) -> bytes:
    """A recovered file's bytes (b"" if it vanished meanwhile)."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def recovered_files(cache_dir: Path) -> list[Path]:
    """Files kept for our object under <cache_dir>/recovered/<store>/<path> (any suffix; not the
    ``.why`` note that goes with each)."""
    pattern = str(cache_dir / "recovered" / STORE / NAME) + "*"
    return sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p) and not p.endswith(".why"))


def goblinfs_status(mountpoint: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "goblinfs", "status", str(mountpoint), "--json"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT))
    assert result.returncode == 0, f"goblinfs status failed ({result.returncode}): {result.stderr.strip()}"
    status = json.loads(result.stdout)
    assert isinstance(status, dict), result.stdout
    return status




def contents(point: Point) -> tuple[bytes, bytes]:
    """Old and new content: random bytes, a few MiB, several segments, different lengths."""
    rng = random.Random(point.id)
    old_len = rng.randint(2 * MIB + MIB // 2, 3 * MIB + MIB // 2)
    new_len = old_len
    while abs(new_len - old_len) < 1000:
        new_len = rng.randint(2 * MIB + MIB // 4, 4 * MIB)
    return rng.randbytes(old_len), rng.randbytes(new_len)


# ---------------------------------------------------------------------------------------------
# The test.

class Rig:
    """One container, one mountpoint, one cache_dir; every daemon and writer it starts is ended
    by PID in ``close`` and the mountpoint unmounted (lazily if needed), even when a test fails."""

    def __init__(self, tmp_path: Path, swift_env: dict[str, Any], fault: Any = None) -> None:
        self.tmp_path = tmp_path
        self.swift_env = swift_env
        self.fault = fault
        self.container = f"gfs-crash-{uuid.uuid4().hex[:10]}"
        self.config = write_swift_config(tmp_path / "cfg", fault.env if fault is not None else swift_env,
                                         self.container)
        self.cache_dir = tmp_path / "cache"
        self.mnt = tmp_path / "mnt"
        self.options = f"cache_dir={self.cache_dir},attr_timeout=1,dir_timeout=1,op_timeout=30"
        self.conn = swift_conn(swift_env)  # direct, never through the proxy
        self.mounts: list[Mounted] = []
        self.writers: list[Writer] = []
        self.file = self.mnt / STORE / NAME
        self.old_segments: set[str] = set()

    def mount(self) -> Mounted:
        """The first mount (nothing at the mountpoint yet)."""
        mounted = Mounted(self.config, self.mnt, options=self.options)
        self.mounts.append(mounted)
        return mounted.__enter__()

    def remount(self) -> Remounted:
        """Mount again at the mountpoint that holds the dead mount; the daemon clears it."""
        assert mount_ids(self.mnt), "the dead mount should still be there before the remount"
        mounted = Remounted(self.config, self.mnt, options=self.options)
        mounted.log_path = self.tmp_path / f"mount{len(self.mounts)}.daemon.log"
        self.mounts.append(mounted)
        mounted.__enter__()
        return mounted

    def writer(self, content: bytes) -> Writer:
        source = self.tmp_path / f"new{len(self.writers)}.bin"
        source.write_bytes(content)
        writer = Writer(source, self.file)
        self.writers.append(writer)
        return writer

    def kill(self, mounted: Mounted) -> None:
        """kill -9 of the daemon, by the PID we hold."""
        daemon = mounted.proc
        assert daemon is not None and daemon.poll() is None, f"daemon died before the kill:\n{mounted.log()}"
        daemon.kill()
        daemon.wait(timeout=30)

    def stored(self) -> bytes | None | Unreadable:
        return stored(self.conn, self.container)

    def recovered(self) -> list[Path]:
        return recovered_files(self.cache_dir)

    def orphan_problems(self) -> list[str]:
        """Orphaned segments still there ORPHAN_WAIT seconds from now (none: at once), told apart:
        the old object's (not deleted after it was replaced) and those of other uploads."""
        if wait_until(lambda: not orphan_segments(self.conn, self.container), ORPHAN_WAIT):
            return []
        orphans = orphan_segments(self.conn, self.container)
        if not orphans:
            return []
        of_old = [o for o in orphans if o in self.old_segments]
        if len(of_old) == len(orphans):
            # Killed between the new manifest and the deletion of the old object's segments:
            # nothing names them any more; goblinfs gc (and a mount, after the grace period)
            # collects them.  Prove it with no grace, and that nothing else is touched.
            gc = subprocess.run([sys.executable, "-m", "goblinfs", "gc", str(self.config), "--grace", "0"],
                                capture_output=True, text=True, timeout=120)
            left = orphan_segments(self.conn, self.container)
            if gc.returncode == 0 and not left:
                return []
            return [f"{len(of_old)} orphaned segments of the replaced object; goblinfs gc --grace 0 "
                    f"exited {gc.returncode} and left {len(left)}: {gc.stdout[-500:]}{gc.stderr[-500:]}"]
        others = sorted({o.rsplit("/", 1)[0] for o in orphans if o not in self.old_segments})
        return [f"{len(orphans)} orphaned segments in {self.container}_segments {ORPHAN_WAIT} s after the "
                f"remount: {len(of_old)} of the old object's (replaced, never deleted), "
                f"{len(orphans) - len(of_old)} of other uploads {others}"]

    def close(self) -> None:
        for writer in self.writers:
            writer.kill()
        for mounted in reversed(self.mounts):
            mounted.stop(clean=False)
        for _ in range(5):
            if not is_mounted(self.mnt):
                break
            force_unmount(self.mnt)
        if self.fault is not None:
            self.fault.proxy.clear()
        drop_container(self.swift_env, self.container)
        drop_container(self.swift_env, self.container + "-queue")
        assert not is_mounted(self.mnt), f"{self.mnt} still mounted"
        assert all(m.proc is None or m.proc.poll() is not None for m in self.mounts), "a daemon is still running"
        assert all(w.proc.poll() is not None for w in self.writers), "a writer is still running"


@contextlib.contextmanager
def rig(tmp_path: Path, swift_env: dict[str, Any], fault: Any = None) -> Iterator[Rig]:
    r = Rig(tmp_path, swift_env, fault)
    try:
        yield r
    finally:
        r.close()


def after_kill(rig: Rig, writer: Writer, point: Point, problems: list[str]) -> bool:
    """The writer gets errors once the daemon is dead; then it is killed.  True if a close that
    was held at the kill reported success anyway (its data then counts as confirmed)."""
    confirmed = False
    if point.proxied:
        late = writer.reply(5)
        if late is not None and late.startswith("ok "):
            problems.append(f"close returned {late!r} after the daemon was killed")
            confirmed = True
    elif point.kind != "close":
        late = writer.ask("fsync", timeout=30)
        if not late.startswith("err "):
            problems.append(f"fsync on the dead mount answered {late!r}, not an error")
    writer.kill()
    if rig.fault is not None:
        # Let the held request end (the delayed one is forwarded late, the hung one dropped)
        # before the next daemon starts, then mount again without faults.
        time.sleep(SLOW_PUT + 0.5 if "delay" in point.kind else 0.2)
        rig.fault.proxy.clear()
    return confirmed


def put_old(rig: Rig, old: bytes) -> None:
    rig.file.write_bytes(old)
    assert rig.stored() == old, "setup: the old content is not on Swift"
    assert not orphan_segments(rig.conn, rig.container), "setup: orphaned segments before the crash"
    rig.old_segments = manifest_segments(rig.conn, rig.container, NAME)


@pytest.mark.swift
@pytest.mark.fuse
@pytest.mark.parametrize("point", POINTS, ids=[p.id for p in POINTS])
def test_kill_during_overwrite(point: Point, swift_env: dict[str, Any], tmp_path: Path,
                               request: pytest.FixtureRequest) -> None:
    fault = request.getfixturevalue("fault_swift") if point.proxied else None
    old, new = contents(point)
    problems: list[str] = []
    with rig(tmp_path, swift_env, fault) as r:
        first = r.mount()
        put_old(r, old)
        writer = r.writer(new)
        sealed, confirmed, acked = drive(point, writer, new, fault)
        r.kill(first)
        confirmed = after_kill(r, writer, point, problems) or confirmed
        second = r.remount()

        def settled() -> bool:
            data = r.stored()
            if confirmed or (sealed and isinstance(data, bytes) and sha(data) == sha(new)):
                return True
            return bool(r.recovered()) or (not sealed and acked == 0)

        wait_until(settled, SETTLE)
        on_swift = describe(r.stored(), old, new)
        on_mount = describe(read_through(r.file), old, new)
        outcome = f"swift:{on_swift} mount:{on_mount}"
        if on_swift not in ("old", "new"):
            problems.append(f"object on Swift is {on_swift}, neither exactly the old nor the new content")
        if on_mount != on_swift:
            problems.append(f"read through the new mount: {on_mount}, on Swift: {on_swift}")
        if not sealed and on_swift == "new":
            problems.append("data whose writer never called close/fsync was published")
        if confirmed and on_swift != "new":
            problems.append(f"close/flush/fsync returned 0 but the object is {on_swift}")

        # Where are the acknowledged new bytes now?  image: the file as the writer left it.
        image = new if sealed else new[:acked] + (old[acked:] if point.mode == "inplace" else b"")
        kept = r.recovered()
        kept_prefix = max((common_prefix(kept_bytes(f), image) for f in kept), default=0)
        lost = 0 if on_swift == "new" else max(0, acked - kept_prefix)
        # What the README promises to keep of a close that never returned: everything staged
        # locally (in place: all of it; a stream: at least its staged start, segment_size bytes,
        # plus what its segments hold).  Bytes a stream had in memory die with the daemon: only
        # a close or fsync that returned promises durability.
        promised = acked if point.mode == "inplace" else min(acked, SEG)
        if kept:
            outcome += f" recovered:{len(kept)}"
        if lost and not confirmed and kept_prefix < promised:
            problems.append(f"{lost} of {acked} acknowledged new bytes are neither on Swift nor in "
                            f"{r.cache_dir / 'recovered'}; at least {promised} were staged (files there: "
                            f"{[f.name for f in kept]})")
        for f in kept:
            data = kept_bytes(f)
            if data != image[:len(data)]:
                problems.append(f"recovered/{f.name} is not a prefix of what the writer wrote "
                                f"({len(data)} bytes, {common_prefix(data, image)} agree)")
        if on_swift != "new" and acked and not any(common_prefix(kept_bytes(f), image) >= promised for f in kept):
            problems.append(f"data ({acked} bytes written, close not confirmed) not kept in "
                            f"recovered/{STORE}/{NAME}* (at least the first {promised} bytes)")
        if kept:
            problems += check_reported(r.mnt, second, kept)
        problems += r.orphan_problems()
        problems += stop_cleanly(second)
        # Unmounting (which uploads what is still dirty) publishes nothing more.
        after = describe(r.stored(), old, new)
        if after != on_swift:
            problems.append(f"after the new daemon's unmount the object is {after} (was {on_swift})")
        RESULTS.append((point.id, outcome, acked, lost))
        if problems:
            pytest.fail(f"{point.id} ({outcome}, acked {acked}):\n- " + "\n- ".join(problems), pytrace=False)


def _kept_start(data: bytes, written: bytes) -> bool:
    """Partial data of a stream is kept from its start: a prefix of what was written, at least
    the staged segment_size bytes (what was still in the stream's memory dies with the daemon)."""
    return data == written[:len(data)] and len(data) >= min(len(written), SEG)


def stop_cleanly(mounted: Mounted) -> list[str]:
    problems = []
    if "Traceback" in mounted.log():
        problems.append(f"traceback in the log of the new daemon:\n{mounted.log()[-3000:]}")
    status = mounted.stop(clean=False)
    if status != 0:
        problems.append(f"the new daemon exited with {status}")
    return problems


def drive(point: Point, writer: Writer, new: bytes, fault: Any) -> tuple[bool, bool, int]:
    """Bring the overwrite to the crash point; returns (sealed, confirmed, bytes acknowledged)."""
    total = len(new)

    def ok(answer: str, what: str) -> int:
        assert answer.startswith("ok "), f"{point.id}: {what} before the crash failed: {answer}"
        return int(answer.split()[1])

    ok(writer.ask(f"open {point.mode}"), f"open ({point.mode})")
    if point.kind == "write":
        at = point.at(total)
        acked = ok(writer.ask(f"write {at}"), f"write up to {at}")
        assert acked == at
        time.sleep(point.pause)
        return False, False, acked
    if point.kind == "close-delay-segment":
        assert fault is not None
        rule = fault.proxy.add_rule(method="PUT", path=r"_segments/", action="delay", delay=SLOW_PUT, times=None)
    acked = ok(writer.ask(f"write {total}"), "write everything")
    if point.mode == "inplace":
        ok(writer.ask(f"truncate {total}"), "ftruncate to the new length")
    if point.kind == "flush":
        ok(writer.ask("dup"), "dup")
        answer = writer.ask("closedup")
        time.sleep(point.pause)
        return True, answer.startswith("ok "), acked
    if point.kind == "fsync":
        answer = writer.ask("fsync")
        time.sleep(point.pause)
        return True, answer.startswith("ok "), acked
    if point.kind == "close":
        answer = writer.ask("close")
        time.sleep(point.pause)
        return True, answer.startswith("ok "), acked
    assert fault is not None
    if point.kind in ("close-delay-manifest", "close-hang-manifest"):
        action = "delay" if point.kind == "close-delay-manifest" else "hang"
        rule = fault.proxy.add_rule(method="PUT", path=r"^/v1/[^/]+/[^/]+(?<!_segments)/[^?]*\?.*manifest",
                                    action=action, delay=SLOW_PUT, times=None)
    writer.send("close")
    # Kill while the close's upload is held by the proxy: it was hit, and close has not returned.
    deadline = time.monotonic() + 30
    while rule.hits == 0:
        answer = writer.reply(0.05)
        assert answer is None, f"{point.id}: close returned ({answer}) before its upload reached the slow PUT"
        assert time.monotonic() < deadline, f"{point.id}: no PUT reached the proxy rule within 30 s"
    answer = writer.reply(0.5)
    assert answer is None, f"{point.id}: close returned ({answer}) while its upload was held"
    return True, False, acked


def describe(data: bytes | None | Unreadable, old: bytes, new: bytes) -> str:
    if data is None:
        return "absent"
    if isinstance(data, Unreadable):
        return f"unreadable({data.error})"
    digest = sha(data)
    if digest == sha(old):
        return "old"
    if digest == sha(new):
        return "new"
    if not data:
        return "empty"
    if old.startswith(data) or new.startswith(data):
        return f"truncated({len(data)})"
    return f"mixed({len(data)})"


def common_prefix(data: bytes, image: bytes) -> int:
    """How many leading bytes of image the file holds exactly (0 if it holds anything else)."""
    if len(data) <= len(image) and image[:len(data)] == data:
        return len(data)
    return 0


def check_reported(mnt: Path, mounted: Mounted, kept: list[Path]) -> list[str]:
    """Recovered files are reported in the log and in ``goblinfs status --json``."""
    problems = []
    log = mounted.log()
    if not any("recover" in line.lower() and NAME in line for line in log.splitlines()):
        problems.append("recovered data not reported in the log of the new daemon")
    try:
        status = goblinfs_status(mnt)
    except (AssertionError, ValueError, subprocess.TimeoutExpired) as exc:
        return problems + [f"goblinfs status {mnt} --json: {exc}"]
    entries = status.get("recovered")
    if not isinstance(entries, list):
        return problems + [f"goblinfs status --json has no 'recovered' list: {status}"]
    by_file = {os.path.realpath(str(e.get("file", ""))): e for e in entries if isinstance(e, dict)}
    for f in kept:
        entry = by_file.get(os.path.realpath(f))
        if entry is None:
            problems.append(f"{f} not listed in goblinfs status --json: {entries}")
            continue
        wrong = {k: entry.get(k) for k, want in (("store", STORE), ("path", NAME)) if entry.get(k) != want}
        if not entry.get("reason"):
            wrong["reason"] = entry.get("reason")
        if wrong:
            problems.append(f"goblinfs status --json lists {f.name} with {wrong} (want store {STORE!r}, path "
                            f"{NAME!r}, a reason)")
    return problems


@pytest.mark.swift
@pytest.mark.fuse
def test_sealed_data_not_uploaded_over_an_object_changed_meanwhile(
        swift_env: dict[str, Any], fault_swift: Any, tmp_path: Path) -> None:
    """Killed while close's manifest PUT is held; someone else replaces the object before the
    remount: the journal must not upload over it (ETag changed): the new data goes to recovered/."""
    point = Point("changed-meanwhile", "close-hang-manifest")
    old, new = contents(point)
    third = random.Random("third").randbytes(300_000)
    problems: list[str] = []
    with rig(tmp_path, swift_env, fault_swift) as r:
        first = r.mount()
        put_old(r, old)
        writer = r.writer(new)
        _sealed, confirmed, acked = drive(point, writer, new, fault_swift)
        r.kill(first)
        confirmed = after_kill(r, writer, point, problems) or confirmed
        if confirmed:
            pytest.fail("close returned success although its manifest PUT never reached Swift")
        # Another client replaces it (deleting the old SLO with its segments, as swift delete does).
        r.conn.delete_object(r.container, NAME, query_string="multipart-manifest=delete")
        r.conn.put_object(r.container, NAME, third, content_type="application/octet-stream")
        second = r.remount()
        wait_until(lambda: any(sha(kept_bytes(f)) == sha(new) for f in r.recovered()), SETTLE)
        data = r.stored()
        outcome = f"swift:{'third' if data == third else describe(data, old, new)}"
        if data != third:
            problems.append(f"the object replaced meanwhile is now {describe(data, old, new)}, not the "
                            "replacement (the journal uploaded over a changed ETag?)")
        if read_through(r.file) != third:
            problems.append("read through the new mount: not the replacement")
        kept = r.recovered()
        lost = acked - max((common_prefix(kept_bytes(f), new) for f in kept), default=0)
        if not any(sha(kept_bytes(f)) == sha(new) for f in kept):
            problems.append(f"the sealed new data ({acked} bytes) is not in recovered/ ({lost} bytes missing; "
                            f"files: {[f.name for f in kept]})")
        if kept:
            outcome += f" recovered:{len(kept)}"
            problems += check_reported(r.mnt, second, kept)
        problems += r.orphan_problems()
        problems += stop_cleanly(second)
        if r.stored() != third:
            problems.append("after the new daemon's unmount the object is no longer the replacement")
        RESULTS.append((point.id, outcome, acked, lost))
        if problems:
            pytest.fail(f"{point.id} ({outcome}):\n- " + "\n- ".join(problems), pytrace=False)


@pytest.mark.swift
@pytest.mark.fuse
def test_partial_data_of_two_crashes_both_kept(swift_env: dict[str, Any], tmp_path: Path) -> None:
    """Two crashes in a row mid-write on the same path: both partial data kept (a suffix for the
    second), neither published, both listed by goblinfs status."""
    point = Point("twice-partial", "write")
    old, new = contents(point)
    other = random.Random("other").randbytes(len(new) + 4321)
    parts = [(new, SEG + 4567), (other, 2 * SEG + 89)]
    problems: list[str] = []
    with rig(tmp_path, swift_env) as r:
        mounted: Mounted = r.mount()
        put_old(r, old)
        for content, at in parts:
            writer = r.writer(content)
            assert writer.ask("open trunc").startswith("ok "), "open O_TRUNC before the crash failed"
            assert writer.ask(f"write {at}") == f"ok {at}", "write before the crash failed"
            time.sleep(0.5)
            r.kill(mounted)
            after_kill(r, writer, point, problems)
            mounted = r.remount()
            wait_until(lambda c=content, a=at: any(_kept_start(kept_bytes(f), c[:a]) for f in r.recovered()),
                       SETTLE)
            if r.stored() != old:
                problems.append(f"after the crash at {at} bytes the object is {describe(r.stored(), old, new)}")
        kept = r.recovered()
        found = [any(_kept_start(kept_bytes(f), c[:a]) for f in kept) for c, a in parts]
        lost = sum(a for (_c, a), ok in zip(parts, found, strict=True) if not ok)
        outcome = f"swift:{describe(r.stored(), old, new)} recovered:{len(kept)}"
        if not all(found):
            problems.append(f"partial data kept in recovered/ (first, second): {found}; files: "
                            f"{[f.name for f in kept]}")
        if kept:
            problems += check_reported(r.mnt, mounted, kept)
        problems += r.orphan_problems()
        problems += stop_cleanly(mounted)
        if r.stored() != old:
            problems.append("after the last unmount the partial data was published")
        RESULTS.append((point.id, outcome, sum(a for _c, a in parts), lost))
        if problems:
            pytest.fail(f"{point.id} ({outcome}):\n- " + "\n- ".join(problems), pytrace=False)
