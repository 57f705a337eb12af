"""Plain streams (goblinfs.storage.swift.plainstream): a new file sent as one chunked PUT while it
is written, against the real Swift all-in-one (through the fault proxy) and real FUSE mounts.

Storage level: what ``CloudFileStorage.stream_file`` stores (bytes, ETag, the final mtime by
POST), that an abort or a changed object leaves the name as it was, and the PLAIN_STREAMS slots.
Mount level (segment_size 4 MiB, so files of 1.5-3.5 MiB are one plain object): the metric
``goblinfs_plain_streams_total{outcome}`` proves which path was taken; a refused or dropped PUT,
a write that is not an append and a kill -9 never cost a byte nor leave a partial object.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import swiftclient

from goblinfs.storage.swift.listing import format_mtime
from goblinfs.storage.swift.plainstream import PLAIN_STREAMS, PlainState
from goblinfs.vfs.writes import EMPTY_MD5

from .conftest import drop_container, make_cloud_storage
from .mountutil import Mounted, Remounted, live_mount, mount_ids, wait_until, write_swift_config
from .test_metrics import free_port, scrape
from .test_writeback import swift_conn

MiB = 1 << 20
SEGMENT = 4 * MiB
STORE = "public"
METRIC = "goblinfs_plain_streams_total"


def payload(size: int, seed: str) -> bytes:
    """size bytes that differ from any other seed's (and from one block to the next)."""
    block = b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(2048))  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def object_or_none(conn: swiftclient.Connection, container: str, name: str) -> tuple[dict[str, str], bytes] | None:
    try:
        return conn.get_object(container, name)
    except swiftclient.ClientException as exc:
        if exc.http_status == 404:
            return None
        raise


def puts_of(proxy: Any, name: str) -> list[tuple[str, Any]]:
    """(method, outcome) of the object requests to name the proxy saw, in order (PUT and POST)."""
    return [(method, outcome) for method, target, outcome in list(proxy.requests)
            if method in ("PUT", "POST") and target.split("?")[0].endswith("/" + name)]


# ------------------------------------------------------------------------------ storage level


class StoreRig:
    """A CloudFileStorage (segment_size 4 MiB) on a fresh container, through the fault proxy."""

    def __init__(self, swift_env: dict[str, Any], fault: Any) -> None:
        self.swift_env = swift_env
        self.proxy = fault.proxy
        self.container = f"gfs-plain-{uuid.uuid4().hex[:10]}"
        self.conn = swift_conn(swift_env)  # direct, never through the proxy
        self.conn.put_container(self.container)
        self.store = make_cloud_storage(fault.env, self.container, segment_size=str(SEGMENT))
        self.streams: list[Any] = []

    def stream(self, name: str, mtime_ns: int, replaces: str | None = None) -> Any:
        stream = self.store.stream_file([name], mtime_ns, replaces)
        if stream is not None:
            self.streams.append(stream)
        return stream

    def close(self) -> None:
        for stream in self.streams:
            stream.abort()  # a no-op once final
        self.store.close()
        drop_container(self.swift_env, self.container)


@pytest.fixture
def srig(swift_env: dict[str, Any], fault_swift: Any) -> Iterator[StoreRig]:
    rig = StoreRig(swift_env, fault_swift)
    yield rig
    rig.close()


def feed(stream: Any, data: bytes, piece: int = 128 * 1024) -> None:
    for off in range(0, len(data), piece):
        chunk = data[off:off + piece]
        if not stream.offer(chunk):
            stream.put(chunk)


def test_stream_file_stores_bytes_etag_and_the_final_mtime_by_post(srig: StoreRig) -> None:
    """offer/put then finish(later mtime): Swift holds the bytes with their MD5 as ETag and the
    final mtime (one POST after the PUT); finish with the headers' mtime sends no POST."""
    data = payload(2 * MiB + 12345, "a")
    first, final = 1_700_000_000_123_456_789, 1_700_000_100_987_654_321
    stream = srig.stream("a.bin", first)
    assert stream is not None and stream.state is PlainState.OPEN
    feed(stream, data)
    entry = stream.finish(final)
    assert stream.state is PlainState.STORED
    assert (entry.size, entry.etag, entry.mtime_ns) == (len(data), md5(data), final)
    headers, body = srig.conn.get_object(srig.container, "a.bin")
    assert body == data
    assert headers["etag"].strip('"') == md5(data)
    assert headers["x-object-meta-mtime"] == format_mtime(final)
    assert puts_of(srig.proxy, "a.bin") == [("PUT", 201), ("POST", 202)]

    same = srig.stream("b.bin", first)
    feed(same, data[:MiB + 7])
    same.finish(first)
    headers, body = srig.conn.get_object(srig.container, "b.bin")
    assert body == data[:MiB + 7]
    assert headers["x-object-meta-mtime"] == format_mtime(first)
    assert puts_of(srig.proxy, "b.bin") == [("PUT", 201)], "a POST although the mtime did not change"


def test_abort_midway_stores_nothing(srig: StoreRig) -> None:
    """abort() after 1.5 MiB were sent: the connection closes before the last chunk, and Swift
    has nothing at the name, then or a second later; the slot is given back."""
    stream = srig.stream("gone.bin", time.time_ns())
    feed(stream, payload(3 * MiB // 2, "gone"))
    assert wait_until(lambda: stream._sent == stream.accepted, 10), "the sender did not take the chunks"
    stream.abort()
    assert stream.state is PlainState.ABORTED
    stream._thread.join(10)
    assert not stream._thread.is_alive()
    assert object_or_none(srig.conn, srig.container, "gone.bin") is None
    time.sleep(1.0)
    assert object_or_none(srig.conn, srig.container, "gone.bin") is None
    with pytest.raises(OSError):
        stream.finish()
    assert srig.store._plain_slots._value == PLAIN_STREAMS


def test_object_created_meanwhile_is_file_exists_and_untouched(srig: StoreRig) -> None:
    """A new file's stream (If-None-Match: *) while another client creates the object: finish
    raises FileExistsError and the other object stays as it was.  (Swift checks If-None-Match
    only when the PUT begins and orders PUTs by their start: it answers 201 to the stream yet
    keeps the newer object, so only a check after its answer can tell.)"""
    data = payload(2 * MiB, "race")
    stream = srig.stream("race.bin", time.time_ns())
    feed(stream, data[:MiB])
    assert wait_until(lambda: stream._sent == stream.accepted, 10)
    srig.conn.put_object(srig.container, "race.bin", b"the other writer's")
    feed(stream, data[MiB:])
    with pytest.raises(FileExistsError):
        stream.finish()
    _headers, body = srig.conn.get_object(srig.container, "race.bin")
    assert body == b"the other writer's"


def test_replaces_an_etag_that_no_longer_matches_is_file_exists_and_untouched(srig: StoreRig) -> None:
    """A stream over an empty object (dd's pattern, replaces=its ETag) whose object another client
    replaced meanwhile: finish raises FileExistsError, the object stays; and with the empty
    object still there, the same stream stores."""
    srig.conn.put_object(srig.container, "over.bin", b"")
    data = payload(2 * MiB, "over")
    stream = srig.stream("over.bin", time.time_ns(), replaces=EMPTY_MD5)
    feed(stream, data[:MiB])
    srig.conn.put_object(srig.container, "over.bin", b"changed meanwhile")
    feed(stream, data[MiB:])
    with pytest.raises(FileExistsError):
        stream.finish()
    time.sleep(0.5)
    _headers, body = srig.conn.get_object(srig.container, "over.bin")
    assert body == b"changed meanwhile"

    srig.conn.put_object(srig.container, "kept.bin", b"")
    ok = srig.stream("kept.bin", time.time_ns(), replaces=EMPTY_MD5)
    feed(ok, data)
    assert ok.finish().etag == md5(data)
    assert srig.conn.get_object(srig.container, "kept.bin")[1] == data


def test_slots_the_ninth_stream_waits_for_one_to_end(srig: StoreRig) -> None:
    """PLAIN_STREAMS streams at once: the next stream_file is None; finishing one (stored) or
    aborting one gives its slot back."""
    streams = [srig.stream(f"s{i}.bin", time.time_ns()) for i in range(PLAIN_STREAMS)]
    assert all(s is not None for s in streams)
    assert srig.stream("ninth.bin", time.time_ns()) is None
    small = payload(MiB + 1, "slot")
    feed(streams[0], small)
    streams[0].finish()
    assert srig.conn.get_object(srig.container, "s0.bin")[1] == small
    ninth = srig.stream("ninth.bin", time.time_ns())
    assert ninth is not None
    assert srig.stream("tenth.bin", time.time_ns()) is None
    feed(streams[1], small)  # under way: its abort too gives the slot back
    streams[1].abort()
    tenth = srig.stream("tenth.bin", time.time_ns())
    assert tenth is not None
    assert srig.stream("eleventh.bin", time.time_ns()) is None
    for stream in streams[2:] + [ninth, tenth]:
        stream.abort()
    assert srig.store._plain_slots._value == PLAIN_STREAMS


# ------------------------------------------------------------------------------ mount level


class MountRig:
    """A durable mount (segment_size 4 MiB, metrics on) of a fresh container through the fault
    proxy; every daemon is stopped by PID and the mountpoint unmounted, even on failure."""

    def __init__(self, tmp_path: Path, swift_env: dict[str, Any], fault: Any) -> None:
        self.tmp_path = tmp_path
        self.swift_env = swift_env
        self.proxy = fault.proxy
        self.container = f"gfs-plain-{uuid.uuid4().hex[:10]}"
        config = write_swift_config(tmp_path / "cfg", fault.env, self.container)
        text = config.read_text()
        assert "segment_size = 1048576" in text
        config.write_text(text.replace("segment_size = 1048576", f"segment_size = {SEGMENT}"))
        self.config = config
        self.port = free_port()
        self.options = (f"cache_dir={tmp_path / 'wb'},attr_timeout=1,dir_timeout=1,op_timeout=30,"
                        f"metrics=127.0.0.1:{self.port}")
        self.mnt = tmp_path / "mnt"
        self.conn = swift_conn(swift_env)  # direct, never through the proxy
        self.mounts: list[Mounted] = []

    def mount(self, remount: bool = False) -> Mounted:
        mounted = (Remounted if remount else Mounted)(self.config, self.mnt, options=self.options)
        mounted.log_path = self.tmp_path / f"mount{len(self.mounts)}.daemon.log"
        self.mounts.append(mounted)
        mounted.__enter__()
        return mounted

    def path(self, name: str) -> Path:
        return self.mnt / STORE / name

    def outcomes(self) -> dict[str, float]:
        figures = scrape(self.port)
        return {o: figures.get(METRIC, outcome=o) for o in ("stored", "failed", "given_up")}

    def stored(self, name: str) -> tuple[dict[str, str], bytes] | None:
        return object_or_none(self.conn, self.container, name)

    def close(self) -> None:
        self.proxy.clear()
        for mounted in reversed(self.mounts):
            mounted.stop(clean=False)
        for container in (self.container, f"{self.container}-queue"):
            drop_container(self.swift_env, container)


@pytest.fixture
def mrig(tmp_path: Path, swift_env: dict[str, Any], fault_swift: Any) -> Iterator[MountRig]:
    rig = MountRig(tmp_path, swift_env, fault_swift)
    try:
        yield rig
    finally:
        rig.close()


def write_new(path: Path, data: bytes, piece: int = 128 * 1024, mtime_ns: int | None = None) -> None:
    """A writer appending data to a new file in pieces, then fsync (or, given mtime_ns, utime
    instead: the mtime is set before anything is published), close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off in range(0, len(data), piece):
            os.write(fd, data[off:off + piece])
        if mtime_ns is None:
            os.fsync(fd)
        else:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def stop(rig: MountRig, mounted: Mounted) -> None:
    mounted.check_log()
    status = mounted.stop()
    assert status == 0, f"daemon exit status {status}:\n{mounted.log()}"


def test_dd_of_a_new_file_is_one_plain_stream(mrig: MountRig, tmp_path: Path) -> None:
    """dd (bs=128k, conv=fsync) of a 3 MiB new file: sent by its plain stream (the metric says
    stored, nothing failed or given up), Swift holds the exact bytes and the mtime stat shows."""
    mounted = mrig.mount()
    data = payload(3 * MiB, "dd")
    source = tmp_path / "dd.src"
    source.write_bytes(data)
    subprocess.run(["dd", f"if={source}", f"of={mrig.path('dd.bin')}", "bs=128k", "conv=fsync"],
                   check=True, capture_output=True, timeout=120)
    assert mrig.outcomes() == {"stored": 1, "failed": 0, "given_up": 0}, mounted.log()
    got = mrig.stored("dd.bin")
    assert got is not None and got[1] == data
    assert got[0]["etag"].strip('"') == md5(data)
    assert all(outcome in (201, 202) for _method, outcome in puts_of(mrig.proxy, "dd.bin"))
    time.sleep(1.1)  # attr_timeout: stat asks the daemon again
    assert format_mtime(os.stat(mrig.path("dd.bin")).st_mtime_ns) == got[0]["x-object-meta-mtime"]
    assert mrig.path("dd.bin").read_bytes() == data
    stop(mrig, mounted)


@pytest.mark.parametrize("action", ["status", "drop", "reset"])
def test_failed_plain_put_sends_the_staged_copy(mrig: MountRig, action: str) -> None:
    """The streamed PUT refused (503) or its connection dropped/reset: fsync and close succeed
    anyway, Swift holds exactly the bytes (the staged copy, one later PUT), the stream is counted
    failed (or given up, when the writer saw the failure first), never stored."""
    mounted = mrig.mount()
    name = f"{action}.bin"
    rule = mrig.proxy.add_rule("PUT", rf"/{action}\.bin$", action=action, status=503, times=1)
    data = payload(5 * MiB // 2 + 3, action)
    write_new(mrig.path(name), data)
    assert rule.hits == 1
    got = mrig.stored(name)
    assert got is not None and got[1] == data
    outcomes = mrig.outcomes()
    assert outcomes["stored"] == 0, outcomes
    if action == "status":
        assert outcomes == {"stored": 0, "failed": 1, "given_up": 0}
    else:
        assert outcomes["failed"] + outcomes["given_up"] == 1, outcomes
    puts = [outcome for method, outcome in puts_of(mrig.proxy, name) if method == "PUT"]
    assert puts == [503 if action == "status" else action, 201], puts
    stop(mrig, mounted)


def test_non_append_write_gives_the_stream_up(mrig: MountRig) -> None:
    """2 MiB appended (the stream is under way), 3 bytes overwritten at 1000, 1 MiB appended:
    the stream is given up, Swift holds the final content (sent at close)."""
    mounted = mrig.mount()
    first = payload(2 * MiB, "d1")
    more = payload(MiB, "d2")
    fd = os.open(mrig.path("d.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off in range(0, len(first), 128 * 1024):
            os.write(fd, first[off:off + 128 * 1024])
        os.lseek(fd, 1000, os.SEEK_SET)
        os.write(fd, b"XYZ")
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, more)
    finally:
        os.close(fd)
    final = first[:1000] + b"XYZ" + first[1003:] + more
    got = mrig.stored("d.bin")
    assert got is not None and got[1] == final
    assert mrig.outcomes() == {"stored": 0, "failed": 0, "given_up": 1}, mounted.log()
    assert mrig.path("d.bin").read_bytes() == final
    stop(mrig, mounted)


def test_utime_before_close_is_the_swift_mtime(mrig: MountRig) -> None:
    """write 2 MiB, utime(fd) to a past time, close: the stream stored it and Swift's mtime is
    exactly the one set (not the first write's, sent in the PUT's headers: finish POSTs it)."""
    mounted = mrig.mount()
    wanted = 1_600_000_000_123_456_789
    data = payload(2 * MiB, "f")
    write_new(mrig.path("f.bin"), data, mtime_ns=wanted)
    assert mrig.outcomes()["stored"] == 1, mounted.log()
    got = mrig.stored("f.bin")
    assert got is not None and got[1] == data
    assert got[0]["x-object-meta-mtime"] == format_mtime(wanted)
    time.sleep(1.1)
    assert format_mtime(os.stat(mrig.path("f.bin")).st_mtime_ns) == format_mtime(wanted)
    stop(mrig, mounted)


def test_kill_9_mid_stream_leaves_nothing_at_the_name(mrig: MountRig) -> None:
    """kill -9 of the daemon while a writer holds a new file open after 2 MiB (its plain stream
    under way): Swift has nothing at the name, then or seconds later; the remount works."""
    mounted = mrig.mount()
    data = payload(2 * MiB, "e")
    mrig.conn.put_object(mrig.container, "other.bin", b"an object elsewhere")
    fd = os.open(mrig.path("e.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off in range(0, len(data), 128 * 1024):
            os.write(fd, data[off:off + 128 * 1024])
        time.sleep(1.0)  # the stream sends what it has
        assert mrig.stored("e.bin") is None
        assert mounted.proc is not None
        mounted.proc.kill()
        mounted.proc.wait(timeout=30)
        mounted.proc = None
    finally:
        with contextlib.suppress(OSError):  # the dead mount: ENOTCONN
            os.close(fd)
    assert mrig.stored("e.bin") is None
    time.sleep(3.0)
    assert mrig.stored("e.bin") is None
    assert mount_ids(mrig.mnt), "the dead mount should still be there"
    again = mrig.mount(remount=True)
    assert live_mount(mrig.mnt)
    assert "other.bin" in os.listdir(mrig.mnt / STORE)
    assert mrig.stored("e.bin") is None
    assert mrig.stored("other.bin")[1] == b"an object elsewhere"  # type: ignore[index]
    status = again.stop()
    assert status == 0, again.log()



def test_object_created_during_the_stream_the_writer_still_wins(mrig: MountRig) -> None:
    """A new file written through the mount while another client creates the same object
    mid-stream: the close that returns last replaces it (as the staged path does on
    FileExistsError), so Swift holds the writer's bytes."""
    mounted = mrig.mount()
    data = payload(3 * MiB, "late")
    fd = os.open(mrig.path("late.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off in range(0, 2 * MiB, 128 * 1024):
            os.write(fd, data[off:off + 128 * 1024])
        time.sleep(0.5)  # the stream is under way
        mrig.conn.put_object(mrig.container, "late.bin", b"the other writer's")
        for off in range(2 * MiB, len(data), 128 * 1024):
            os.write(fd, data[off:off + 128 * 1024])
    finally:
        os.close(fd)
    got = mrig.stored("late.bin")
    assert got is not None
    assert got[1] == data, f"close returned 0, Swift holds {len(got[1])} bytes: {got[1][:40]!r}"
    assert mrig.outcomes() == {"stored": 0, "failed": 1, "given_up": 0}
    stop(mrig, mounted)


@pytest.mark.parametrize("change", ["rename", "unlink"])
def test_rename_or_unlink_mid_stream_leaves_nothing_at_the_old_name(mrig: MountRig, change: str) -> None:
    """2 MiB appended (the stream under way to old.bin), then the open file renamed to new.bin
    (or unlinked), 1 MiB more, close: nothing is left at old.bin; a renamed file is at new.bin
    with all its bytes; an unlinked one's stream is given up and nothing is stored."""
    mounted = mrig.mount()
    data = payload(3 * MiB, change)
    fd = os.open(mrig.path("old.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off in range(0, 2 * MiB, 128 * 1024):
            os.write(fd, data[off:off + 128 * 1024])
        if change == "rename":
            os.rename(mrig.path("old.bin"), mrig.path("new.bin"))
        else:
            os.unlink(mrig.path("old.bin"))
        for off in range(2 * MiB, len(data), 128 * 1024):
            os.write(fd, data[off:off + 128 * 1024])
    finally:
        os.close(fd)
    time.sleep(0.5)
    assert mrig.stored("old.bin") is None
    outcomes = mrig.outcomes()
    if change == "rename":
        got = mrig.stored("new.bin")
        assert got is not None and got[1] == data
        # rename publishes what is written before it moves: the stream ends there (stored).
        assert outcomes["stored"] + outcomes["given_up"] == 1 and outcomes["failed"] == 0, outcomes
    else:
        assert mrig.stored("new.bin") is None
        assert outcomes == {"stored": 0, "failed": 0, "given_up": 1}, outcomes
    stop(mrig, mounted)
