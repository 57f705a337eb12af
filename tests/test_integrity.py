"""Data integrity under faults, on real mounts of the real Swift (issue 8).

Each test injects one fault (through ``FaultProxy`` where Swift must misbehave, or by killing a
process, or with a tiny workbench on tmpfs) and checks one promise with a direct swiftclient
look at the store, never through the mount alone:

1. an overwrite is old-or-new; a killed writer or a failing Swift leaves the old content;
   a deliberate truncation is published;
2. one 503 on a PUT at close is retried: ``cp`` succeeds with the right content;
3. reads are right or fail, even when the workbench is smaller than the object;
4. ENOSPC in the workbench while overwriting: the writer gets an error, the old content stays;
5. Dynamic Large Objects read with their size and content; ``rm`` removes their segments;
6. segments of an interrupted upload do not stay orphaned (503s, ``kill -9`` + remount);
7. staged data whose upload failed is uploaded at the next mount, or kept in
   ``<workbench>/recovered/<store>/<path>`` if the object changed meanwhile;
8. ``rmdir`` of a ``name/`` object holding data is ENOTDIR and keeps it;
9. a hung Swift gives EIO within 30 s, and the mount recovers when it answers again;
10. a reader that outlives the writer does not pin stale data (nor a staging file);
11. flush/fsync/release racing with reads/writes never serve, cache or publish wrong bytes.

Everything started here (daemons, writers, tmpfs) is stopped by PID / mountpoint at teardown.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import drop_container
from .mountutil import Mounted, force_unmount, is_mounted, wait_until, write_swift_config

MiB = 1048576
OPTS = "attr_timeout=1,dir_timeout=1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




class Bench:
    """One test's world: a container pair, configs (direct and, on demand, through a FaultProxy),
    a workbench, and everything started, for teardown by PID and mountpoint."""

    def __init__(self, swift_env: dict[str, Any], tmp: Path) -> None:
        import swiftclient

        self.swift_env = swift_env
        self.tmp = tmp
        self.container = f"gfi-{uuid.uuid4().hex[:12]}"
        self.segments = self.container + "_segments"
        self.wb = tmp / "wb"
        self.wb.mkdir()
        self.mnt = tmp / "mnt"
        self.conn = swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"],
                                           key=swift_env["key"], retries=2, timeout=30)
        self.mounts: list[Mounted] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.tmpfs: list[Path] = []
        self.proxy: Any = None

    # -- set-up --------------------------------------------------------------------------

    def config(self, fault: Any = None, extra: str = "") -> Path:
        """A config of both stores; through the proxy when fault (the fault_swift fixture) is given."""
        if fault is None:
            return write_swift_config(self.tmp / "cfg", self.swift_env, self.container, extra=extra)
        self.proxy = fault.proxy
        return write_swift_config(self.tmp / "cfg-proxy", fault.env, self.container, extra=extra)

    def mount(self, config: Path | None = None, options: str = "") -> Mounted:
        opts = f"cache_dir={self.wb},{OPTS}" + (f",{options}" if options else "")
        m = Mounted(config or self.config(), self.mnt, options=opts)
        self.mounts.append(m)
        m.__enter__()
        return m

    def unmount(self, m: Mounted) -> None:
        status = m.stop()
        assert status == 0, f"daemon exit status {status}:\n{m.log()}"

    def kill9(self, m: Mounted) -> None:
        """kill -9 of the daemon (by its PID), then the dead mount is cleared."""
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        m.proc = None
        force_unmount(m.mountpoint)

    def tiny_workbench(self, size: str = "8m") -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(self.wb)], check=True)
        self.tmpfs.append(self.wb)

    def popen(self, args: list[str], **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def py(self, code: str, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
        """A Python helper process (a writer or reader we can kill), stdout piped."""
        return self.popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stdin=stdin,
                          stderr=subprocess.PIPE, text=True)

    @property
    def public(self) -> Path:
        return self.mnt / "public"

    # -- looking at the store directly -----------------------------------------------------

    def get(self, name: str) -> bytes:
        """The object as a direct GET returns it.  A GET of an SLO that another client (here:
        goblinfs) replaces meanwhile is cut when the old segments go: it is asked again (a
        cut GET is an error for the reader, never data; Swift itself behaves so)."""
        import urllib3

        for attempt in range(3):
            try:
                headers, body = self.conn.get_object(self.container, name)
            except urllib3.exceptions.ProtocolError:
                if attempt == 2:
                    raise
                continue
            assert len(body) == int(headers["content-length"]), "short GET"
            return body
        raise AssertionError("unreachable")

    def sha_of(self, name: str) -> str | None:
        import swiftclient

        try:
            return sha(self.get(name))
        except swiftclient.ClientException as exc:
            if exc.http_status == 404:
                return None
            raise

    def put_slo(self, name: str, data: bytes, segment: int = 4 * MiB) -> None:
        """An SLO written directly with swiftclient (segments in <container>_segments)."""
        self.conn.put_container(self.container)
        self.conn.put_container(self.segments)
        manifest = []
        for i in range(0, len(data), segment):
            part = data[i:i + segment]
            seg = f"direct/{name}/{i // segment:08d}"
            etag = self.conn.put_object(self.segments, seg, part)
            manifest.append({"path": f"/{self.segments}/{seg}", "etag": etag, "size_bytes": len(part)})
        self.conn.put_object(self.container, name, json.dumps(manifest), query_string="multipart-manifest=put",
                             content_type="application/octet-stream")

    def orphan_segments(self) -> list[str]:
        """Segments no SLO manifest of the container refers to."""
        import swiftclient

        try:
            _, segs = self.conn.get_container(self.segments, full_listing=True)
        except swiftclient.ClientException as exc:
            if exc.http_status == 404:
                return []
            raise
        referenced: set[str] = set()
        _, objects = self.conn.get_container(self.container, full_listing=True)
        for obj in objects:
            headers = self.conn.head_object(self.container, obj["name"])
            if headers.get("x-static-large-object", "").lower() == "true":
                _, body = self.conn.get_object(self.container, obj["name"], query_string="multipart-manifest=get")
                for item in json.loads(body):
                    referenced.add(str(item["name"]).lstrip("/").partition("/")[2])
        return [s["name"] for s in segs if s["name"] not in referenced]

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.clear()  # no fault left for the unmounts below
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for m in self.mounts:
            m.stop(clean=False)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        force_unmount(self.mnt)
        for path in self.tmpfs:
            if is_mounted(path) and subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
        drop_container(self.swift_env, self.container)
        drop_container(self.swift_env, self.container + "-queue")


@pytest.fixture
def bench(swift_env: dict[str, Any], tmp_path: Path) -> Iterator[Bench]:
    """Tests that also use fault_swift name it first, so their mounts stop before the proxy does."""
    b = Bench(swift_env, tmp_path)
    try:
        yield b
    finally:
        b.close()


def readline(p: subprocess.Popen[str], timeout: float = 30) -> str:
    """One line of a helper's stdout, within timeout."""
    assert p.stdout is not None
    # Byte by byte from the pipe itself: the text wrapper's readline() may read the next lines
    # into its buffer too, where finish()'s communicate(), which reads the pipe, never sees them.
    fd = p.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no output from helper {p.args!r} in {timeout} s")
        byte = os.read(fd, 1)
        if not byte:
            err = p.stderr.read() if p.stderr is not None and p.poll() is not None else ""
            raise AssertionError(f"helper ended without a whole line ({line!r}): {err}")
        line += byte
    return line.decode().strip()


def finish(p: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    """Wait for a helper and parse its last output line as JSON."""
    out, err = p.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, f"helper printed nothing (exit {p.returncode}): {err}"
    return json.loads(lines[-1])


class Poller(threading.Thread):
    """GETs an object directly, again and again; records the sha256 of every complete answer."""

    def __init__(self, bench: Bench, name: str) -> None:
        super().__init__(daemon=True)
        self.bench = bench
        self.name_ = name
        self.seen: list[tuple[int, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        import swiftclient

        conn = swiftclient.Connection(authurl=self.bench.swift_env["auth_url"], user=self.bench.swift_env["user"],
                                      key=self.bench.swift_env["key"], retries=0, timeout=30)
        while not self.stopping.is_set():
            try:
                headers, body = conn.get_object(self.bench.container, self.name_)
            except Exception:  # a GET racing with segment deletion may fail: not an observation
                continue
            if len(body) == int(headers["content-length"]):
                self.seen.append((len(body), sha(body)))
            self.stopping.wait(0.05)

    def stop(self) -> list[tuple[int, str]]:
        self.stopping.set()
        self.join(30)
        return self.seen


# Helper processes ---------------------------------------------------------------------------

#: argv: path, data file, bytes to write before "ready", flags (trunc|rw); then waits for a line
#: on stdin ("go": write the rest), or is killed.  Prints JSON {"write": errno, "close": errno}.
WRITER = r"""
import json, os, sys
path, data_file, first, flags = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(data_file, "rb").read()
mode = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if flags == "trunc" else 0)
fd = os.open(path, mode)
result = {"write": None, "close": None, "written": 0}
def write(start, end):
    off = start
    while off < end:
        try:
            n = os.pwrite(fd, data[off:min(end, off + 262144)], off)
        except OSError as exc:
            result["write"] = exc.errno
            return False
        off += n
        result["written"] = off
    return True
ok = write(0, first)
print("ready", flush=True)
if ok and first < len(data):
    sys.stdin.readline()
    write(first, len(data))
try:
    os.close(fd)
except OSError as exc:
    result["close"] = exc.errno
print(json.dumps(result), flush=True)
"""


def make_data(tmp: Path, name: str, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp / name
    path.write_bytes(data)
    return path, data


def cp_in(bench: Bench, src: Path, name: str) -> None:
    result = subprocess.run(["cp", str(src), str(bench.public / name)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# 1. Overwrites are old-or-new --------------------------------------------------------------------


def test_overwrite_by_shell_redirect_keeps_old_until_done(bench: Bench) -> None:
    old_path, old = make_data(bench.tmp, "old", 3 * MiB)
    new_path, new = make_data(bench.tmp, "new", 3 * MiB + 12345)
    bench.mount()
    cp_in(bench, old_path, "x.bin")
    assert bench.conn.head_object(bench.container, "x.bin").get("x-static-large-object") == "True"
    poller = Poller(bench, "x.bin")
    poller.start()
    # The shell opens x.bin with O_TRUNC, then waits for a line on its stdin before it writes.
    writer = bench.popen(["sh", "-c", f'( read go; cat "{new_path}" ) > "{bench.public / "x.bin"}"'],
                         stdin=subprocess.PIPE)
    assert wait_until(lambda: (bench.public / "x.bin").stat().st_size == 0, 30), "the shell never truncated x.bin"
    assert writer.poll() is None
    during = bench.get("x.bin")
    assert (len(during), sha(during)) == (len(old), sha(old)), \
        f"while the writer runs, Swift has {len(during)} bytes, not the old {len(old)}"
    writer.communicate(b"go\n", timeout=60)
    assert writer.returncode == 0
    assert wait_until(lambda: bench.sha_of("x.bin") == sha(new), 10), "new content not published at close"
    seen = poller.stop()
    assert {s for _, s in seen} <= {sha(old), sha(new)}, f"torn or empty object seen: {sorted(set(seen))}"
    assert sha((bench.public / "x.bin").read_bytes()) == sha(new)


def test_overwrite_by_dd_keeps_old_until_done(bench: Bench) -> None:
    old_path, old = make_data(bench.tmp, "old", 3 * MiB)
    _, new = make_data(bench.tmp, "new", 3 * MiB - 777)
    bench.mount()
    cp_in(bench, old_path, "x.bin")
    fifo = bench.tmp / "fifo"
    os.mkfifo(fifo)
    poller = Poller(bench, "x.bin")
    poller.start()
    dd = bench.popen(["dd", f"if={fifo}", f"of={bench.public / 'x.bin'}", "bs=1M", "iflag=fullblock",
                      "conv=fsync"], stderr=subprocess.PIPE)
    # O_RDWR: never blocks, even if dd died before opening its input; dd sees EOF when this closes.
    with open(os.open(fifo, os.O_RDWR), "wb") as feed:
        time.sleep(1.5)  # dd opens its input, then its output (O_TRUNC), then waits for data
        assert dd.poll() is None
        during = bench.get("x.bin")
        assert (len(during), sha(during)) == (len(old), sha(old)), \
            f"while dd runs, Swift has {len(during)} bytes, not the old {len(old)}"
        feed.write(new)
    assert dd.wait(60) == 0
    assert bench.sha_of("x.bin") == sha(new)  # conv=fsync: on Swift when dd returns
    seen = poller.stop()
    assert {s for _, s in seen} <= {sha(old), sha(new)}, f"torn or empty object seen: {sorted(set(seen))}"


@pytest.mark.parametrize("written", [100_000, 1536 * 1024], ids=["staged", "streaming"])
def test_overwrite_writer_killed_publishes_what_it_wrote(bench: Bench, written: int) -> None:
    """A writer killed by a signal: the kernel closes its descriptor (FUSE flush, then release,
    which carry no process information), and that close publishes the file as the writer left
    it, as a local disk keeps it (README, Guarantees).  Never torn: exactly the bytes written."""
    old_path, old = make_data(bench.tmp, "old", 3 * MiB)
    new_path, new = make_data(bench.tmp, "new", 3 * MiB)
    bench.mount()
    cp_in(bench, old_path, "x.bin")
    writer = bench.py(WRITER, str(bench.public / "x.bin"), str(new_path), str(written), "trunc",
                      stdin=subprocess.PIPE)
    assert readline(writer) == "ready"
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    expected = sha(new[:written])
    deadline = time.monotonic() + 10
    while bench.sha_of("x.bin") != expected and time.monotonic() < deadline:
        time.sleep(0.2)  # the kernel's flush and release of the dead writer's descriptor
    assert bench.sha_of("x.bin") == expected, "the object is not exactly what the killed writer wrote"
    assert sha((bench.public / "x.bin").read_bytes()) == expected


@pytest.mark.parametrize("how", ["python", "shell"])
def test_overwrite_swift_failing_keeps_old(fault_swift: Any, bench: Bench, how: str) -> None:
    old_path, old = make_data(bench.tmp, "old", 3 * MiB)
    new_path, _ = make_data(bench.tmp, "new", 2 * MiB + 5)
    bench.mount(bench.config(fault_swift, extra="retries = 1\n"))
    cp_in(bench, old_path, "x.bin")
    rule = fault_swift.proxy.add_rule("PUT", None, status=503, times=None)
    try:
        if how == "python":
            writer = bench.py(WRITER, str(bench.public / "x.bin"), str(new_path), str(2 * MiB + 5), "trunc")
            assert readline(writer, 60) == "ready"
            result = finish(writer)
            assert result["write"] is not None or result["close"] is not None, \
                f"the writer was told nothing of the failed upload: {result}"
            assert result["close"] is not None or result["write"] is not None
        else:
            subprocess.run(["sh", "-c", f'cat "{new_path}" > "{bench.public / "x.bin"}"'], capture_output=True,
                           timeout=120)
        time.sleep(1.0)
        assert rule.hits >= 1
        assert bench.sha_of("x.bin") == sha(old), "the object changed although every PUT failed"
    finally:
        fault_swift.proxy.clear()


def test_deliberate_truncation_is_published(bench: Bench) -> None:
    old_path, _ = make_data(bench.tmp, "old", 3 * MiB)
    bench.mount()
    cp_in(bench, old_path, "a.bin")
    cp_in(bench, old_path, "b.bin")
    subprocess.run(["sh", "-c", f': > "{bench.public / "a.bin"}"'], check=True, timeout=60)
    assert wait_until(lambda: bench.sha_of("a.bin") == sha(b""), 15), "': > f' not published"
    subprocess.run(["truncate", "-s", "0", str(bench.public / "b.bin")], check=True, timeout=60)
    assert bench.sha_of("b.bin") == sha(b""), "truncate -s 0 not published when it returned"
    assert (bench.public / "a.bin").stat().st_size == 0


# 2. One 503 at close is retried --------------------------------------------------------------------


@pytest.mark.parametrize("case", ["new-small", "overwrite-small", "segment", "manifest"])
def test_one_503_on_put_cp_succeeds(fault_swift: Any, bench: Bench, case: str) -> None:
    size = 200_000 if case.endswith("small") else 3 * MiB + 3
    src, data = make_data(bench.tmp, "src", size)
    bench.mount(bench.config(fault_swift))
    c = bench.container
    if case == "overwrite-small":
        bench.conn.put_container(c)
        bench.conn.put_object(c, "f.bin", b"previous content")
        time.sleep(1.1)
    pattern = {"new-small": rf"/{c}/f\.bin$", "overwrite-small": rf"/{c}/f\.bin$",
               "segment": rf"/{c}_segments/", "manifest": rf"/{c}/f\.bin\?multipart-manifest=put"}[case]
    rule = fault_swift.proxy.add_rule("PUT", pattern, status=503, times=1)
    result = subprocess.run(["cp", str(src), str(bench.public / "f.bin")], capture_output=True, text=True,
                            timeout=120)
    assert rule.hits == 1, f"the fault was not injected: {fault_swift.proxy.requests}"
    assert result.returncode == 0, f"cp failed after one 503: {result.stderr}"
    assert bench.sha_of("f.bin") == sha(data)
    assert wait_until(lambda: bench.orphan_segments() == [], 5), f"orphaned segments: {bench.orphan_segments()}"


# 3. Reads right or fail, with a workbench smaller than the object ----------------------------------


@pytest.mark.parametrize("maker", ["swiftclient-slo", "goblinfs-slo"])
def test_read_bigger_than_workbench(bench: Bench, maker: str) -> None:
    data = os.urandom(20 * MiB)
    if maker == "swiftclient-slo":
        bench.put_slo("big.bin", data)
    else:
        m = bench.mount()  # written by goblinfs itself (a streamed SLO), workbench on disk
        (bench.public / "big.bin").write_bytes(data)
        bench.unmount(m)
    assert bench.sha_of("big.bin") == sha(data)
    bench.tiny_workbench("8m")
    bench.mount()
    assert (bench.public / "big.bin").stat().st_size == len(data)
    for attempt in range(2):
        result = subprocess.run(["sha256sum", str(bench.public / "big.bin")], capture_output=True, text=True,
                                timeout=120)
        if result.returncode == 0:
            assert result.stdout.split()[0] == sha(data), f"read {attempt}: exit 0 with a wrong hash"
        else:
            assert result.stderr, "failed without saying why"


# 4. ENOSPC in the workbench while overwriting --------------------------------------------------------


def test_enospc_in_workbench_keeps_old(bench: Bench) -> None:
    old = os.urandom(100_000)
    bench.conn.put_container(bench.container)
    bench.conn.put_object(bench.container, "x.bin", old)
    new_path, new = make_data(bench.tmp, "new", 12 * MiB)
    bench.tiny_workbench("8m")
    m = bench.mount()
    writer = bench.py(WRITER, str(bench.public / "x.bin"), str(new_path), str(12 * MiB), "rw")
    assert readline(writer, 60) == "ready"
    result = finish(writer)
    errors = {result["write"], result["close"]} - {None}
    # Old or new: told of an error, the old content stays; told nothing, all of the new is stored.
    expected = sha(old) if errors else sha(new)
    assert errors <= {errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EDQUOT}, result
    time.sleep(1.0)
    assert bench.sha_of("x.bin") == expected, \
        f"writer told {sorted(errors)}, but the object is neither the old nor the new content"
    bench.unmount(m)
    assert bench.sha_of("x.bin") == expected, "the unmount published a partly staged file"


# 5. Dynamic Large Objects ------------------------------------------------------------------------


def test_dlo_reads_and_rm_removes_segments(bench: Bench) -> None:
    c = bench.container
    bench.conn.put_container(c)
    bench.conn.put_container(bench.segments)
    parts = [os.urandom(700_000), os.urandom(1_300_000), os.urandom(5)]
    for i, part in enumerate(parts):
        bench.conn.put_object(bench.segments, f"dlo/movie/{i:04d}", part)
    bench.conn.put_object(c, "movie.bin", b"", headers={"X-Object-Manifest": f"{bench.segments}/dlo/movie/"})
    whole = b"".join(parts)
    assert bench.get("movie.bin") == whole
    bench.mount()
    assert (bench.public / "movie.bin").stat().st_size == len(whole)
    assert [e.stat().st_size for e in os.scandir(bench.public) if e.name == "movie.bin"] == [len(whole)]
    assert sha((bench.public / "movie.bin").read_bytes()) == sha(whole)
    subprocess.run(["rm", str(bench.public / "movie.bin")], check=True, timeout=60)
    assert bench.sha_of("movie.bin") is None

    def segments_left() -> list[str]:
        return [o["name"] for o in bench.conn.get_container(bench.segments, prefix="dlo/movie/")[1]]

    assert wait_until(lambda: segments_left() == [], 5), f"rm left the DLO's segments: {segments_left()}"


# 6. No orphaned segments -------------------------------------------------------------------------


def test_segment_503s_leave_no_orphans(fault_swift: Any, bench: Bench) -> None:
    src, _ = make_data(bench.tmp, "src", 6 * MiB)
    bench.mount(bench.config(fault_swift, extra="retries = 1\n"))
    writer = bench.py(WRITER, str(bench.public / "big.bin"), str(src), str(3 * MiB), "trunc", stdin=subprocess.PIPE)
    assert readline(writer, 60) == "ready"
    seg_puts = lambda: [r for r in fault_swift.proxy.requests  # noqa: E731
                        if r[0] == "PUT" and "_segments/" in r[1] and r[2] == 201]
    assert wait_until(lambda: len(seg_puts()) >= 1, 20), "no segment was streamed"
    rule = fault_swift.proxy.add_rule("PUT", r"_segments/", status=503, times=None)
    assert writer.stdin is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    result = finish(writer)
    assert rule.hits >= 1
    assert result["write"] is not None or result["close"] is not None, result
    assert bench.sha_of("big.bin") is None
    assert wait_until(lambda: bench.orphan_segments() == [], 5), f"orphaned segments: {bench.orphan_segments()}"


def test_kill9_mid_stream_segments_cleaned_at_remount(bench: Bench) -> None:
    src, _ = make_data(bench.tmp, "src", 6 * MiB)
    m = bench.mount()
    writer = bench.py(WRITER, str(bench.public / "big.bin"), str(src), str(3 * MiB + 1000), "trunc",
                      stdin=subprocess.PIPE)
    assert readline(writer, 60) == "ready"
    assert wait_until(lambda: len(bench.orphan_segments()) >= 2, 20), "the stream sent no segments"
    bench.kill9(m)
    writer.kill()
    writer.wait(30)
    assert bench.orphan_segments(), "nothing to clean up: the test proves nothing"
    bench.mount()
    assert wait_until(lambda: bench.orphan_segments() == [], 30), \
        f"segments of the interrupted upload left after the remount: {bench.orphan_segments()}"
    assert bench.sha_of("big.bin") is None


# 7. Staged data whose upload failed is not lost ------------------------------------------------------

STAGED_WRITER = r"""
import json, sys
path, data_file = sys.argv[1], sys.argv[2]
result = {"close": None}
f = open(path, "wb")
f.write(open(data_file, "rb").read())
try:
    f.close()
except OSError as exc:
    result["close"] = exc.errno
print(json.dumps(result), flush=True)
"""


def test_failed_upload_journaled_and_uploaded_at_next_mount(fault_swift: Any, bench: Bench) -> None:
    src, data = make_data(bench.tmp, "src", 300_000)
    config = bench.config(fault_swift, extra="retries = 1\n")
    m = bench.mount(config)
    os.listdir(bench.public)
    fault_swift.proxy.add_rule("PUT", rf"/{bench.container}/f\.bin", status=503, times=None)
    result = finish(bench.py(STAGED_WRITER, str(bench.public / "f.bin"), str(src)))
    assert result["close"] == errno.EIO, f"close() did not report the failed upload: {result}"
    assert bench.sha_of("f.bin") is None
    bench.kill9(m)
    fault_swift.proxy.clear()
    bench.mount(config)
    assert wait_until(lambda: bench.sha_of("f.bin") == sha(data), 30), \
        "the staged data of the failed upload was not uploaded at the next mount"


def test_failed_upload_object_changed_meanwhile_is_recovered(fault_swift: Any, bench: Bench) -> None:
    src, data = make_data(bench.tmp, "src", 300_000)
    bench.conn.put_container(bench.container)
    bench.conn.put_object(bench.container, "f.bin", b"version zero")
    config = bench.config(fault_swift, extra="retries = 1\n")
    m = bench.mount(config)
    fault_swift.proxy.add_rule("PUT", rf"/{bench.container}/f\.bin", status=503, times=None)
    result = finish(bench.py(STAGED_WRITER, str(bench.public / "f.bin"), str(src)))
    assert result["close"] == errno.EIO, f"close() did not report the failed upload: {result}"
    m.stop(clean=False)  # unmount: its last upload attempt fails too
    other = b"written by someone else meanwhile"
    bench.conn.put_object(bench.container, "f.bin", other)
    fault_swift.proxy.clear()
    bench.mount(config)
    recovered = bench.wb / "recovered" / "public"

    def kept() -> list[Path]:
        return [p for p in recovered.glob("f.bin*") if p.is_file() and sha(p.read_bytes()) == sha(data)]

    assert wait_until(lambda: bool(kept()), 30), \
        f"not kept in {recovered}/f.bin*; the workbench has: {sorted(str(p) for p in bench.wb.rglob('*'))}"
    assert bench.sha_of("f.bin") == sha(other), "the newer object was overwritten by the old staged data"


# 8. rmdir of a name/ object with data -------------------------------------------------------------


def test_rmdir_of_data_object_is_enotdir(bench: Bench) -> None:
    bench.conn.put_container(bench.container)
    bench.conn.put_object(bench.container, "name/", b"some bytes, not a directory marker",
                          content_type="text/plain")
    bench.conn.put_object(bench.container, "other", b"x")
    bench.mount()
    os.listdir(bench.public)
    with pytest.raises(OSError) as err:
        os.rmdir(bench.public / "name")
    assert err.value.errno == errno.ENOTDIR, err.value
    assert bench.get("name/") == b"some bytes, not a directory marker"


# 9. A hung Swift ---------------------------------------------------------------------------------


def test_hung_swift_gives_eio_in_30s_and_recovers(fault_swift: Any, bench: Bench) -> None:
    bench.mount(bench.config(fault_swift))
    assert os.listdir(bench.public) == []
    bench.conn.put_object(bench.container, "later.txt", b"hello")
    time.sleep(1.2)  # the listing of public/ expires
    fault_swift.proxy.add_rule(None, None, action="hang", times=None)
    # A process waiting for a FUSE answer cannot be killed: the hang is lifted after 32 s at most.
    stat = bench.popen(["stat", str(bench.public / "unseen.txt")], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    try:
        wait_until(lambda: stat.poll() is not None, 32)
        elapsed = time.monotonic() - start
    finally:
        fault_swift.proxy.clear()
    _, err = stat.communicate(timeout=60)
    problems = []
    if elapsed >= 30:
        problems.append(f"stat of a new name on a hung Swift took {elapsed:.1f} s")
    if stat.returncode == 0 or "Input/output error" not in err:
        problems.append(f"stat on a hung Swift: exit {stat.returncode}, {err.strip()!r}, not EIO")
    start = time.monotonic()
    ls = subprocess.run(["ls", str(bench.public)], capture_output=True, text=True, timeout=60)
    if ls.returncode != 0 or "later.txt" not in ls.stdout.split():
        problems.append(f"ls after the hang: {ls.returncode} {ls.stdout!r} {ls.stderr!r}")
    st = subprocess.run(["stat", "-c", "%s", str(bench.public / "later.txt")], capture_output=True, text=True,
                        timeout=60)
    if st.returncode != 0 or st.stdout.strip() != "5":
        problems.append(f"stat after the hang: {st.returncode} {st.stdout!r} {st.stderr!r}")
    recovery = time.monotonic() - start
    if recovery >= 15:  # no leftover from the hang (a retry deadline would be 25 s); slack for a busy machine
        problems.append(f"ls and stat after the hang took {recovery:.1f} s")
    assert not problems, problems


# 10. A reader that outlives the writer --------------------------------------------------------------


def test_reader_outliving_writer_does_not_pin_stale_data(bench: Bench) -> None:
    bench.mount()
    path = bench.public / "f.txt"
    v1, v2 = b"version one\n" * 100, b"version two, from elsewhere\n" * 50
    writer = open(path, "wb")  # noqa: SIM115
    try:
        writer.write(v1)
        writer.flush()
        reader = open(path, "rb")  # noqa: SIM115
        try:
            writer.close()
            assert wait_until(lambda: bench.sha_of("f.txt") == sha(v1), 2), "v1 not published at close"
            assert reader.read() == v1
            bench.conn.put_object(bench.container, "f.txt", v2)
        finally:
            reader.close()
    finally:
        writer.close()
    time.sleep(1.5)  # attr_timeout
    assert wait_until(lambda: path.read_bytes() == v2, 3), f"still reads {path.read_bytes()[:30]!r}"
    staging = bench.wb / "staging"
    left = list(staging.iterdir()) if staging.exists() else []
    assert left == [], f"a staging file outlived its handles: {left}"


# 11. Racing flush/fsync/release with reads and writes ---------------------------------------------------

BLOCK = 4096
#: 3 MiB: bigger than the socket buffers, so an upload still reads the file while Swift is slow.
BLOCKS = 768


def version_data(version: int) -> bytes:
    return b"".join((b"v%08d b%06d " % (version, i)).ljust(BLOCK, b"%c" % (65 + version % 26))
                    for i in range(BLOCKS))


_VERSIONS: dict[int, bytes] = {}


def _version(version: int) -> bytes:
    if version not in _VERSIONS:
        _VERSIONS[version] = version_data(version)
    return _VERSIONS[version]


def check_blocks(data: bytes, versions: set[int]) -> str | None:
    """None if every byte is the byte some written version has at that offset; else what is wrong.

    A read racing with a write may mix versions (even inside a page), but never shows a byte
    that no write put at that offset: zeros, a short file, another offset's data.
    """
    if len(data) != BLOCK * BLOCKS:
        return f"size {len(data)}, not {BLOCK * BLOCKS}"
    candidates = [_version(v) for v in sorted(versions)]
    for i in range(BLOCKS):
        lo, hi = i * BLOCK, (i + 1) * BLOCK
        block = data[lo:hi]
        try:
            stamped = int(block[1:9])
        except ValueError:
            stamped = -1
        if stamped in versions and block == _version(stamped)[lo:hi]:
            continue  # the usual case: one whole block of one version
        for pos in range(lo, hi):
            if all(data[pos] != c[pos] for c in candidates):
                return f"offset {pos} (block {i}) holds a byte no write put there: {data[pos - 8:pos + 24]!r}"
    return None


def test_racing_close_fsync_reads_writes(fault_swift: Any, bench: Bench) -> None:
    """On one remote file: a writer closing after each version, another keeping its fd open
    (fsync now and then), a syncer (open, close: a flush) and two readers.  Swift is only slow
    (every PUT of the file waits 0.3 s before the proxy reads its body, so each upload is still
    reading the file while writes go on): no call may fail and no read may show bytes never
    written.  Then one last close, whose version the store, the mount and the mount after a
    remount all hold."""
    bench.conn.put_container(bench.container)
    bench.conn.put_object(bench.container, "race.bin", version_data(0))
    config = bench.config(fault_swift)
    # One plain object (segment_size 4 MiB here; the test Swift takes up to 5 MiB in one PUT).
    config.write_text(config.read_text().replace("segment_size = 1048576", "segment_size = 4194304"))
    m = bench.mount(config)
    slow = fault_swift.proxy.add_rule("PUT", r"/race\.bin$", action="delay", delay=0.3, times=None)
    path = str(bench.public / "race.bin")
    started: set[int] = {0}
    problems: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    closes = [0, 0]

    def write_version(version: int, fsync: bool) -> None:
        data = version_data(version)
        with lock:
            started.add(version)
        fd = os.open(path, os.O_WRONLY)
        try:
            for off in range(0, len(data), 65536):
                os.pwrite(fd, data[off:off + 65536], off)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def writer(first: int) -> None:
        version = first
        while not stop.is_set():
            try:
                write_version(version, fsync=version % 3 == 0)
                closes[first - 1] += 1
            except OSError as exc:
                problems.append(f"writer of version {version}: {exc}")
            version += 2

    def streamer(first: int) -> None:
        """Keeps one descriptor open, rewriting the file again and again, fsync now and then."""
        version = first
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            problems.append(f"streamer open: {exc}")
            return
        try:
            while not stop.is_set():
                data = version_data(version)
                with lock:
                    started.add(version)
                for off in range(0, len(data), 65536):
                    os.pwrite(fd, data[off:off + 65536], off)
                if version % 5 == 0:
                    os.fsync(fd)
                closes[first - 1] += 1
                version += 2
        except OSError as exc:
            problems.append(f"streamer at version {version}: {exc}")
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                problems.append(f"streamer close: {exc}")

    def syncer() -> None:
        """Opens the file for writing and closes it (a flush, which uploads the dirty file while
        the others write: fsync would hold the inode lock and keep writes out), fsync now and then."""
        count = 0
        while not stop.is_set():
            count += 1
            try:
                fd = os.open(path, os.O_RDWR)
                try:
                    os.pread(fd, BLOCK, 0)
                    if count % 10 == 0:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                problems.append(f"syncer: {exc}")

    def reader() -> None:
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                problems.append(f"reader: {exc}")
                continue
            with lock:
                versions = set(started)
            wrong = check_blocks(data, versions)
            if wrong:
                problems.append(f"reader: {wrong}")

    threads = [threading.Thread(target=writer, args=(1,), daemon=True),
               threading.Thread(target=streamer, args=(2,), daemon=True),
               threading.Thread(target=syncer, daemon=True),
               threading.Thread(target=reader, daemon=True),
               threading.Thread(target=reader, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(60)
    fault_swift.proxy.clear()
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    assert slow.hits >= 3, f"only {slow.hits} uploads during the race"
    assert min(closes) > 0, f"a writer never closed successfully: {closes}"
    assert not problems, f"{len(problems)} problems, e.g. {problems[:5]}"
    final = 99_999
    write_version(final, fsync=False)
    assert bench.get("race.bin") == version_data(final), "the store does not hold the last close's version"
    time.sleep(1.2)
    with open(path, "rb") as f:
        assert f.read() == version_data(final), "the mount serves other bytes than the last close published"
    bench.unmount(m)
    assert bench.get("race.bin") == version_data(final), "the unmount published something else"
    bench.mount(config)
    with open(path, "rb") as f:
        assert f.read() == version_data(final), "after a remount, the mount serves other bytes"
