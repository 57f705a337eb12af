"""Write-back (``-o writeback``) on real FUSE mounts over the real Swift, with faults injected.

What write-back promises (README, "Guarantees"): close() returns once the content is durable in
the workbench journal; uploads run in the background; a kill -9 loses nothing a close
acknowledged (the next mount uploads it); listings, stat and reads see queued files at once;
fsync waits for Swift; unmount drains; a failed upload is retried and kept, never dropped.

The fault proxy holds every file PUT back (``delay``) so that the uploads lag far behind the
closes: each test first checks that Swift does *not* yet hold what was acknowledged, otherwise
it would prove nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import swiftclient

from goblinfs.storage.swift.listing import MTIME_PARAM, format_mtime
from goblinfs.vfs.writes import XATTR_RECORD

from .conftest import drop_container
from .mountutil import Mounted, Remounted, mount_ids, wait_until, write_swift_config

STORE = "public"
#: Objects the delay rules hold back (the test files; not directory markers).
DAT = r"\.dat(\?|$)"


def content(index: int) -> bytes:
    """File index's bytes: 4 KiB (plus a few) that differ from every other file's."""
    seed = hashlib.sha256(f"file-{index}".encode()).digest()
    return (seed * 129)[: 4096 + index % 7]


def swift_conn(env: dict[str, Any]) -> swiftclient.Connection:
    return swiftclient.Connection(authurl=env["auth_url"], user=env["user"], key=env["key"], retries=2,
                                  timeout=30)


def stored_names(conn: swiftclient.Connection, container: str) -> set[str]:
    try:
        _headers, listing = conn.get_container(container, full_listing=True)
    except swiftclient.ClientException as exc:
        if exc.http_status == 404:
            return set()
        raise
    return {item["name"] for item in listing if not item["name"].endswith("/")}


def write_tree(root: Path, count: int, dirs: int = 10) -> dict[str, bytes]:
    """count files in dirs directories under root: {relative name: bytes}."""
    files = {}
    for index in range(count):
        rel = f"d{index % dirs:02d}/f{index:04d}.dat"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content(index)
        path.write_bytes(data)
        files[rel] = data
    return files


class Rig:
    """A write-back mount of a fresh container through the fault proxy; always torn down."""

    def __init__(self, tmp_path: Path, swift_env: dict[str, Any], fault: Any, options: str = "",
                 extra: str = "") -> None:
        self.tmp_path = tmp_path
        self.fault = fault
        self.container = f"gfs-wb-{os.urandom(5).hex()}"
        self.config = write_swift_config(tmp_path / "cfg", fault.env, self.container, extra=extra)
        self.cache_dir = tmp_path / "cache"
        self.mnt = tmp_path / "mnt"
        self.options = f"writeback,cache_dir={self.cache_dir},op_timeout=30" + (f",{options}" if options else "")
        self.swift_env = swift_env
        self.conn = swift_conn(swift_env)  # direct, never through the proxy
        self.mounts: list[Mounted] = []

    def mount(self) -> Mounted:
        mounted = Mounted(self.config, self.mnt, options=self.options)
        mounted.log_path = self.tmp_path / f"mount{len(self.mounts)}.daemon.log"
        self.mounts.append(mounted)
        return mounted.__enter__()

    def remount(self) -> Mounted:
        assert mount_ids(self.mnt), "the dead mount should still be there before the remount"
        mounted = Remounted(self.config, self.mnt, options=self.options)
        mounted.log_path = self.tmp_path / f"mount{len(self.mounts)}.daemon.log"
        self.mounts.append(mounted)
        return mounted.__enter__()

    def kill(self, mounted: Mounted) -> None:
        daemon = mounted.proc
        assert daemon is not None and daemon.poll() is None, f"daemon died before the kill:\n{mounted.log()}"
        daemon.kill()
        daemon.wait(timeout=30)

    def stored(self) -> set[str]:
        return stored_names(self.conn, self.container)

    def check_bytes(self, files: dict[str, bytes]) -> list[str]:
        """Every file in Swift with exactly its bytes: the problems found."""
        problems = []
        for rel, data in sorted(files.items()):
            try:
                _headers, body = self.conn.get_object(self.container, rel)
            except swiftclient.ClientException as exc:
                problems.append(f"{rel}: {exc.http_status}")
                continue
            if body != data:
                problems.append(f"{rel}: {len(body)} bytes, not the {len(data)} written")
        return problems

    def journal_records(self) -> list[Path]:
        """Journal record files, and staging files carrying their own queued record (xattr)."""
        journal = self.cache_dir / "journal"
        staging = self.cache_dir / "staging"
        records = sorted(journal.glob("*.json")) if journal.is_dir() else []
        for path in sorted(staging.iterdir()) if staging.is_dir() else []:
            try:
                os.getxattr(path, XATTR_RECORD)
            except OSError:
                continue
            records.append(path)
        return records

    def recovered(self) -> list[Path]:
        top = self.cache_dir / "recovered"
        return sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []

    def close(self) -> None:
        self.fault.proxy.clear()
        for mounted in reversed(self.mounts):
            mounted.stop(clean=False)
        for container in (self.container, f"{self.container}-queue"):
            drop_container(self.swift_env, container)


@pytest.fixture
def rig(tmp_path: Path, swift_env: dict[str, Any], fault_swift: Any) -> Iterator[Any]:
    made: list[Rig] = []

    def make(options: str = "", extra: str = "") -> Rig:
        r = Rig(tmp_path, swift_env, fault_swift, options=options, extra=extra)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


WRITER = r"""
import os, sys
src, dst, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = sorted(os.path.relpath(os.path.join(d, f), src) for d, _s, fs in os.walk(src) for f in fs)
for rel in names[start:]:
    with open(os.path.join(src, rel), "rb") as f:
        data = f.read()
    target = os.path.join(dst, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    print(rel, flush=True)
"""


@pytest.mark.parametrize("when", ["after_cp", "mid_cp"])
def test_kill_9_during_write_back_loses_no_acknowledged_file(rig: Any, tmp_path: Path, when: str) -> None:
    """1,000 files copied with write-back while Swift takes 0.2 s per PUT; kill -9 of the daemon
    (after `cp -r` returned, or in the middle of a copy after ~400 closes returned), remount: every
    file whose close returned is in Swift with its exact bytes, nothing set aside, journal empty."""
    r = rig()
    source = tmp_path / "src"
    files = write_tree(source, 1000)
    first = r.mount()
    target = r.mnt / STORE / "tree"
    os.makedirs(target)
    r.fault.proxy.add_rule("PUT", DAT, action="delay", delay=0.2, times=None)
    if when == "after_cp":
        started = time.monotonic()
        subprocess.run(["cp", "-r", f"{source}/.", str(target)], check=True, timeout=600)
        copy_seconds = time.monotonic() - started
        acknowledged = set(files)
        assert sorted(os.listdir(target)) == [f"d{i:02d}" for i in range(10)]
        assert sum(len(os.listdir(target / d)) for d in os.listdir(target)) == 1000
    else:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(source), str(target), "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        acknowledged = set()
        started = time.monotonic()
        try:
            for line in writer.stdout:
                acknowledged.add(line.strip())
                if len(acknowledged) >= 400:
                    break
        finally:
            copy_seconds = time.monotonic() - started
    r.kill(first)
    # Listed after the kill: a record is deleted only once its upload is in Swift, so every
    # acknowledged file not listed here must still have one.
    in_swift_at_kill = {name.removeprefix("tree/") for name in r.stored()}
    if when == "mid_cp":
        try:
            out, _err = writer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            out, _err = writer.communicate()
        # Closes that returned after our last read but before the kill count as acknowledged too.
        acknowledged |= {line.strip() for line in out.splitlines() if line.strip()}
    # The uploads lagged: the kill really had acknowledged files that Swift did not hold yet.
    pending = acknowledged - in_swift_at_kill
    assert len(pending) >= 100, (f"only {len(pending)} of {len(acknowledged)} acknowledged files were not yet in "
                                 f"Swift at the kill (copy took {copy_seconds:.1f} s): the test proves nothing")
    records = r.journal_records()
    assert len(records) >= len(pending) - 8, f"{len(records)} journal records for {len(pending)} pending files"
    r.fault.proxy.clear()
    second = r.remount()
    expected = {rel: files[rel] for rel in acknowledged}
    wanted = {f"tree/{rel}" for rel in acknowledged}
    assert wait_until(lambda: wanted <= r.stored(), 240, interval=1.0), (
        f"{len(wanted - r.stored())} acknowledged files not in Swift 240 s after the remount:\n{second.log()[-3000:]}")
    assert r.check_bytes({f"tree/{rel}": data for rel, data in expected.items()}) == []
    assert wait_until(lambda: not r.journal_records(), 30), r.journal_records()[:3]
    set_aside = [p for p in r.recovered() if not p.name.endswith(".why")]
    if when == "after_cp":
        assert set_aside == [], set_aside
    else:
        # At most the file being written at the kill (never closed) is kept aside, not published.
        assert len(set_aside) <= 1, set_aside
        for p in set_aside:
            assert p.relative_to(r.cache_dir / "recovered" / STORE).as_posix().removeprefix("tree/") \
                not in acknowledged
    # Through the remounted filesystem too: every acknowledged file reads back its bytes.
    for rel in sorted(acknowledged)[::97]:
        assert (target / rel).read_bytes() == files[rel]
    second.check_log()


def test_queued_files_are_listed_stated_and_read_before_swift_holds_them(rig: Any, tmp_path: Path) -> None:
    """With uploads held back, the copied files are listed (also after the listing's cache
    expired and the directory was listed afresh from Swift), stat gives their size and the
    source's mtime (`cp -a`), reads give their bytes; Swift holds none of them yet.  Unmount then
    drains: the daemon exits 0 only once Swift holds every one, with its mtime."""
    r = rig(options="dir_timeout=0.2,attr_timeout=0.2")
    source = tmp_path / "src"
    files = write_tree(source, 40, dirs=2)
    for index, rel in enumerate(sorted(files)):
        os.utime(source / rel, ns=(1_600_000_000_000_000_000 + index, 1_600_000_000_123_456_789 + index * 1000))
    mounted = r.mount()
    target = r.mnt / STORE / "t"
    os.makedirs(target)
    r.fault.proxy.add_rule("PUT", DAT, action="hang", times=None)  # every upload held until clear()
    started = time.monotonic()
    subprocess.run(["cp", "-a", f"{source}/.", str(target)], check=True, timeout=300)
    copy_seconds = time.monotonic() - started
    time.sleep(0.5)  # past dir_timeout: the next listing is fetched from Swift again
    assert r.stored() == set()
    assert copy_seconds < 20, f"cp -a took {copy_seconds:.1f} s: close waited for the uploads"
    listed = {f"{d}/{name}" for d in os.listdir(target) for name in os.listdir(target / d)}
    assert listed == set(files)
    for index, rel in enumerate(sorted(files)):
        st = os.stat(target / rel)
        assert st.st_size == len(files[rel]), rel
        assert st.st_mtime_ns == 1_600_000_000_123_456_789 + index * 1000, rel
        assert (target / rel).read_bytes() == files[rel], rel
    r.fault.proxy.clear()
    r.fault.proxy.add_rule("PUT", DAT, action="delay", delay=0.3, times=None)
    status = mounted.stop()
    assert status == 0, mounted.log()
    assert "still to upload before stopping" in mounted.log()
    assert {f"t/{rel}" for rel in files} <= r.stored()
    assert r.check_bytes({f"t/{rel}": data for rel, data in files.items()}) == []
    for index, rel in enumerate(sorted(files)):
        headers = r.conn.head_object(r.container, f"t/{rel}")
        want = f"{MTIME_PARAM}={format_mtime(1_600_000_000_123_456_789 + index * 1000)}"
        assert want in headers.get("content-type", ""), (rel, headers.get("content-type"))
    assert r.journal_records() == []
    mounted.check_log()


def test_fsync_waits_for_swift_in_write_back(rig: Any) -> None:
    """fsync() still returns only once Swift holds the bytes, even with uploads held back."""
    r = rig()
    mounted = r.mount()
    r.fault.proxy.add_rule("PUT", DAT, action="delay", delay=1.0, times=None)
    path = r.mnt / STORE / "synced.dat"
    data = content(7)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        started = time.monotonic()
        os.fsync(fd)
        waited = time.monotonic() - started
        _headers, body = r.conn.get_object(r.container, "synced.dat")
        assert body == data
        assert waited >= 0.9, f"fsync returned after {waited:.2f} s, before the held PUT went through"
    finally:
        os.close(fd)
    r.fault.proxy.clear()
    mounted.stop()
    mounted.check_log()


def test_failed_upload_is_retried_and_kept(rig: Any) -> None:
    """Swift refuses the upload (503 past the request's retries) for a while: close() has
    returned anyway, the daemon logs the failure and retries with back-off (status and metrics
    show it); once Swift takes it, the file is there with its bytes and the journal is empty."""
    from .test_metrics import free_port, scrape

    port = free_port()
    r = rig(options=f"metrics=127.0.0.1:{port}", extra="retry_deadline = 2\ntimeout = 2\n")
    mounted = r.mount()
    refuse = r.fault.proxy.add_rule("PUT", DAT, action="status", status=503, times=None)
    path = r.mnt / STORE / "kept.dat"
    data = content(3)
    started = time.monotonic()
    path.write_bytes(data)
    assert time.monotonic() - started < 2, "close waited for a Swift that refuses"
    assert wait_until(lambda: mounted.log().count("write-back of kept.dat failed") >= 2, 60), mounted.log()
    assert "kept.dat" not in r.stored()
    assert path.read_bytes() == data  # still readable here
    status = subprocess.run([sys.executable, "-m", "goblinfs", "status", str(r.mnt)], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith("write-back:"))
    assert line.startswith("write-back: 1 file(s) queued"), status.stdout
    assert int(re.search(r"(\d+) failed attempt", line).group(1)) >= 2, line  # type: ignore[union-attr]
    # Between attempts it is queued or sealed; during one (every ~2 s here) it is publishing.
    assert re.search(r"kept\.dat  (queued|sealed|publishing)", status.stdout), status.stdout
    figures = scrape(port)
    assert figures.get("goblinfs_writeback_failed_attempts_total") >= 2
    assert figures.get("goblinfs_writeback_uploads_total") == 0
    assert sum(figures.get("goblinfs_pending_uploads", state=state)
               for state in ("queued", "sealed", "publishing")) == 1
    assert len(r.journal_records()) == 1
    r.fault.proxy.remove_rule(refuse)
    assert wait_until(lambda: "kept.dat" in r.stored(), 90, interval=0.5), mounted.log()
    assert r.check_bytes({"kept.dat": data}) == []
    assert wait_until(lambda: not r.journal_records(), 10)
    assert refuse.hits >= 2
    assert scrape(port).get("goblinfs_writeback_uploads_total") == 1
    mounted.stop()


def test_stop_with_swift_refusing_leaves_the_journal_for_the_next_mount(rig: Any) -> None:
    """SIGTERM while Swift refuses every upload: the daemon does not hang trying file by file;
    it exits with every acknowledged file journaled, and the next mount uploads them all."""
    r = rig(extra="retry_deadline = 2\ntimeout = 2\n")
    mounted = r.mount()
    r.fault.proxy.add_rule("PUT", DAT, action="status", status=503, times=None)
    files = {f"s{i:02d}.dat": content(100 + i) for i in range(30)}
    for name, data in files.items():
        (r.mnt / STORE / name).write_bytes(data)
    assert mounted.proc is not None
    started = time.monotonic()
    mounted.proc.send_signal(signal.SIGTERM)
    mounted.proc.wait(timeout=120)
    stop_seconds = time.monotonic() - started
    assert stop_seconds < 60, f"stopping took {stop_seconds:.0f} s"
    assert mounted.proc.returncode == 0, mounted.log()
    assert "uploaded at the next mount" in mounted.log()
    assert not set(files) & r.stored()
    assert len(r.journal_records()) == len(files)
    mounted.stop()
    r.fault.proxy.clear()
    second = r.mount()
    assert wait_until(lambda: set(files) <= r.stored(), 120, interval=0.5), second.log()
    assert r.check_bytes(files) == []
    assert wait_until(lambda: not r.journal_records(), 10)
    second.stop()
    second.check_log()


def test_writeback_options_parse_and_bad_values_are_one_clear_error() -> None:
    from goblinfs.mount import MountFailed, parse_options

    opts = parse_options(["writeback", "transfers=3"])
    assert opts.vfs.writeback is True and opts.vfs.transfers == 3
    assert parse_options([]).vfs.writeback is False
    for bad, says in (("transfers=0", "from 1 to 64"), ("transfers=65", "from 1 to 64"),
                      ("transfers=x", "bad value"), ("writeback=yes", "unknown mount option")):
        with pytest.raises(MountFailed, match=says):
            parse_options([bad])


class InProcess:
    """Write-back Vfs objects in this process over one workbench and a fresh container: one
    left without its nursery is a daemon killed at that point, and the next recovers."""

    def __init__(self, tmp_path: Path, swift_env: dict[str, Any], prefix: str) -> None:
        from .conftest import make_cloud_storage

        self.container = f"{prefix}-{os.urandom(5).hex()}"
        self.workbench = tmp_path / "wb"
        (self.workbench / "staging").mkdir(parents=True)
        self.storage = make_cloud_storage(swift_env, self.container, staging_dir=str(self.workbench / "spool"))
        self.conn = swift_conn(swift_env)

    def new_vfs(self) -> Any:
        """A write-back Vfs with no background tasks (no nursery: nothing uploads)."""
        from goblinfs.vfs import Options, StoreMount, Vfs
        from goblinfs.workbench import ReadCache

        options = Options(staging_dir=str(self.workbench / "staging"), workbench_dir=str(self.workbench),
                          op_timeout=60, writeback=True)
        return Vfs([StoreMount("public", self.storage, options)], options,
                   cache=ReadCache(str(self.workbench / "cache"), 1 << 30), single=True)

    async def recover_until(self, done: Any) -> None:
        """A new Vfs on the same workbench, running (its recovery too) until done() (60 s at most)."""
        import trio

        second = self.new_vfs()
        async with trio.open_nursery() as nursery:
            second.nursery = nursery  # starts recovery
            with trio.fail_after(60):
                while not done():
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("xattrs", [True, False], ids=["record-in-xattr", "no-user-xattrs"])
async def test_queued_record_survives_an_abandoned_vfs_with_and_without_xattrs(
        swift_env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xattrs: bool) -> None:
    """In-process crash: a write-back Vfs with no background tasks acknowledges two closes (one
    an overwrite of a stored object) and is abandoned; a new Vfs on the same workbench uploads
    both at recovery.  Where the workbench refuses user xattrs (ENOTSUP), the record goes to a
    journal file instead, and recovery acts the same."""
    import errno

    from goblinfs.vfs import ROOT_INO
    from goblinfs.vfs import writes as writes_module

    if not xattrs:
        def refuse(*_args: Any) -> None:
            raise OSError(errno.ENOTSUP, "no user xattrs here")
        monkeypatch.setattr(writes_module.os, "setxattr", refuse)
    rig = InProcess(tmp_path, swift_env, "gfs-wbx")
    container, workbench, conn, new_vfs = rig.container, rig.workbench, rig.conn, rig.new_vfs

    try:
        conn.put_object(container, "old.dat", b"old bytes")
        vfs = new_vfs()  # no nursery: nothing uploads in the background
        new = content(11)
        handle, node = await vfs.create(ROOT_INO, b"new.dat", os.O_WRONLY | os.O_CREAT)
        await vfs.write(handle.fh, 0, new)
        await vfs.flush(handle.fh)
        await vfs.release(handle.fh)
        assert node.remote is not None and node.remote.state.value == "queued"
        over = content(12)
        old = await vfs.lookup(ROOT_INO, b"old.dat")
        handle = await vfs.open(old.ino, os.O_WRONLY | os.O_TRUNC)
        await vfs.write(handle.fh, 0, over)
        await vfs.flush(handle.fh)
        assert stored_names(conn, container) == {"old.dat"}
        assert conn.get_object(container, "old.dat")[1] == b"old bytes"
        records = list((workbench / "journal").glob("*.json"))
        marked = [p for p in (workbench / "staging").iterdir() if XATTR_RECORD in os.listxattr(p)]
        if xattrs:
            assert (len(records), len(marked)) == (0, 2)
        else:
            assert (len(records), len(marked)) == (2, 0)
            assert all('"state": "queued"' in p.read_text() for p in records)
        # The daemon "dies" here: the next Vfs recovers what the first acknowledged.
        await rig.recover_until(lambda: stored_names(conn, container) == {"new.dat", "old.dat"}
                                and conn.get_object(container, "old.dat")[1] == over
                                and not list((workbench / "journal").glob("*.json"))
                                and not any(p.name.startswith("staging-") for p in (workbench / "staging").iterdir()))
        assert conn.get_object(container, "new.dat")[1] == new
        assert conn.get_object(container, "old.dat")[1] == over
        assert not list((workbench / "journal").glob("*.json"))
        assert not (workbench / "recovered").exists() or not any((workbench / "recovered").rglob("*"))
    finally:
        drop_container(swift_env, container)


def test_rename_of_a_queued_new_file_uploads_it_once_at_its_new_name(rig: Any, tmp_path: Path) -> None:
    """rsync's pattern (write `.name.XXXX`, close, rename to `name`) with uploads held back:
    the rename returns at once without any request for the temporary name; after a kill -9 the
    next mount uploads each file at its final name, replacing what was there (an existing
    object stays untouched until then); the temporary names never reach Swift."""
    r = rig(options="transfers=1")
    first = r.mount()
    store = r.mnt / STORE
    r.conn.put_object(r.container, "keep-old.dat", b"the old object")
    r.fault.proxy.add_rule("PUT", r"\.dat", action="hang", times=None)  # temporary names too
    # The one transfer place is taken by an upload that hangs: the next files stay queued.
    (store / "blocker.dat").write_bytes(content(198))
    assert wait_until(lambda: any("blocker.dat" in req[1] for req in r.fault.proxy.requests), 10)
    files = {f"r{i:02d}.dat": content(200 + i) for i in range(20)}
    files["keep-old.dat"] = content(299)
    for name, data in files.items():
        temp = store / f".{name}.tmp{os.getpid()}"
        temp.write_bytes(data)
        started = time.monotonic()
        os.rename(temp, store / name)
        assert time.monotonic() - started < 2, "the rename waited for an upload"
    assert sorted(os.listdir(store)) == sorted([*files, "blocker.dat"])
    for name, data in files.items():
        assert (store / name).read_bytes() == data
    assert r.conn.get_object(r.container, "keep-old.dat")[1] == b"the old object"
    r.kill(first)
    r.fault.proxy.clear()
    second = r.remount()
    assert wait_until(lambda: set(files) <= r.stored() and
                      r.conn.get_object(r.container, "keep-old.dat")[1] == files["keep-old.dat"], 120,
                      interval=0.5), second.log()
    assert r.check_bytes(files) == []
    assert not [name for name in r.stored() if ".tmp" in name]
    assert not any(".tmp" in req[1] and req[0] == "PUT" for req in r.fault.proxy.requests)
    assert [p for p in r.recovered() if not p.name.endswith(".why")] == []
    second.stop()
    second.check_log()


async def test_workbench_full_at_close_is_the_close_error_and_acknowledges_nothing(
        swift_env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workbench cannot make the content durable (fsync gives ENOSPC): close() fails with
    ENOSPC, nothing is queued, Swift keeps nothing; the next close, with room again, queues it,
    and a crash then loses nothing (the next Vfs uploads exactly those bytes)."""
    import errno

    from goblinfs.vfs import ROOT_INO
    from goblinfs.vfs import writes as writes_module

    rig = InProcess(tmp_path, swift_env, "gfs-wbf")
    container, conn, new_vfs = rig.container, rig.conn, rig.new_vfs
    real_fsync = os.fsync

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        vfs = new_vfs()
        data = content(21)
        handle, node = await vfs.create(ROOT_INO, b"full.dat", os.O_WRONLY | os.O_CREAT)
        await vfs.write(handle.fh, 0, data)
        monkeypatch.setattr(writes_module.os, "fsync", full)
        with pytest.raises(OSError) as failed:
            await vfs.flush(handle.fh)
        assert failed.value.errno == errno.ENOSPC
        assert node.remote is not None and node.remote.state.value == "dirty"
        assert stored_names(conn, container) == set()
        monkeypatch.setattr(writes_module.os, "fsync", real_fsync)
        await vfs.flush(handle.fh)
        assert node.remote.state.value == "queued"
        # The first "dies" with the file queued.
        await rig.recover_until(lambda: "full.dat" in stored_names(conn, container))
        assert conn.get_object(container, "full.dat")[1] == data
    finally:
        drop_container(swift_env, container)
