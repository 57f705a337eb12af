"""Reads are right or fail: remote reads through the Vfs (no mount) and through a real FUSE mount,
with a read cache on a tiny tmpfs, a disk that fills up, and GETs cut short by a fault proxy.

Every read either returns exactly the object's bytes or raises; a whole read's sha256 is the
object's, and the size shown is the object's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from goblinfs.storage import Entry, ExactPath
from goblinfs.vfs import ROOT_INO, Node, Options, StoreMount, Vfs, reads
from goblinfs.vfs.reads import TRANSITIONS, Download, Event, State
from goblinfs.workbench import ReadCache

from .conftest import FaultSwift, drop_container, make_cloud_storage
from .mountutil import Mounted, run, write_swift_config
from .test_workbench import FakeRemoteStorage, tmpfs

MIB = 1048576
READ = 131072  # what the kernel asks at a time


class QuickRemoteStorage(FakeRemoteStorage):
    """A local directory that claims to be remote, without the test delay of FakeRemoteStorage."""

    def copy_locally(self, filepath: Any, dest_path: str) -> None:
        self.downloads += 1
        with self.get_file(filepath, "rb") as src, open(dest_path, "wb") as dst:
            while chunk := src.read(MIB):
                dst.write(chunk)


@contextlib.asynccontextmanager
async def running_vfs(storage: Any, tmp_path: Path, cache_dir: Path, cache_size: int = 1 << 30,
                      **options: Any) -> AsyncIterator[Vfs]:
    """A Vfs with one store at its root and a read cache in cache_dir, its nursery running."""
    staging = tmp_path / f"staging-{uuid.uuid4().hex[:6]}"
    staging.mkdir()
    opts = Options(staging_dir=str(staging), **options)
    vfs = Vfs([StoreMount("public", storage, opts)], opts, cache=ReadCache(str(cache_dir), cache_size), single=True)
    async with trio.open_nursery() as nursery:
        vfs.nursery = nursery
        try:
            yield vfs
        finally:
            nursery.cancel_scope.cancel()


async def read_all(vfs: Vfs, fh: int, size: int, start: int = 0) -> bytes:
    """Read like the kernel, READ bytes at a time; every read but the last must be full."""
    out = bytearray()
    offset = start
    while True:
        data = bytes(await vfs.read(fh, offset, READ))
        assert len(data) == min(READ, max(0, size - offset)), f"short read at {offset}: {len(data)}"
        if not data:
            return bytes(out)
        out += data
        offset += len(data)


async def open_file(vfs: Vfs, name: str) -> tuple[Node, int]:
    node = await vfs.lookup(ROOT_INO, name.encode())
    handle = await vfs.open(node.ino, os.O_RDONLY)
    return node, handle.fh


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def part_files(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if ".part-" in n]


def no_part_files_after(directory: Path, seconds: float = 30.0) -> list[str]:
    """The part files still there after a download outlived its readers (it goes on to fill the
    cache, then is adopted or removed): [] once they all settled."""
    deadline = time.monotonic() + seconds
    while (left := part_files(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


async def settled(download: Download, timeout: float = 60.0) -> State:
    """Wait until the download left FETCHING/COMPLETE (its worker and the cache answered)."""
    with trio.fail_after(timeout):
        while download.state in (State.NEW, State.FETCHING, State.COMPLETE):
            await trio.sleep(0.02)
    return download.state


def local_remote(tmp_path: Path, files: dict[str, bytes]) -> QuickRemoteStorage:
    root = tmp_path / "remote"
    root.mkdir(exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return QuickRemoteStorage(str(root))


def resident_bytes(path: Path | str) -> int:
    """How many bytes of the file are in the page cache (mincore(2) of a shared mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(page for v in vec if v & 1)
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def takes_direct_writes(directory: Path) -> bool:
    """Whether files there can be written with O_DIRECT, bypassing the page cache (not tmpfs,
    whose pages are its storage)."""
    if subprocess.run(["stat", "-f", "-c", "%T", str(directory)], capture_output=True,
                      text=True).stdout.strip() == "tmpfs":
        return False
    probe = directory / f"probe-{uuid.uuid4().hex[:6]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


class PacedRemoteStorage(QuickRemoteStorage):
    """Its reader gives at most 1 MiB per read, each after a pause: a download slower than its
    readers, as a real one is."""

    pause = 0.02

    def get_file(self, filepath: Any, mode: str = "r") -> Any:
        source = super().get_file(filepath, mode)
        pause = self.pause

        class Paced:
            raw = None

            def read(self, size: int = -1) -> bytes:
                time.sleep(pause)
                return source.read(min(size, MIB))

            def seek(self, offset: int) -> int:
                return source.seek(offset)

            def close(self) -> None:
                source.close()

        return Paced()


# ------------------------------------------------------------------ the state machine


def test_state_table_in_the_docstring_is_the_code() -> None:
    doc = reads.__doc__ or ""
    rows = set()
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in State.__members__:
            rows.add((State[cells[0]], Event[cells[1]], State[cells[2]]))
    assert rows == {(s, e, n) for (s, e), n in TRANSITIONS.items()}
    # Every state but NEW is reachable, and every state can reach CLOSED.
    assert {n for n in TRANSITIONS.values()} == set(State) - {State.NEW}
    for state in State:
        seen, todo = {state}, [state]
        while todo:
            here = todo.pop()
            for (s, _e), n in TRANSITIONS.items():
                if s is here and n not in seen:
                    seen.add(n)
                    todo.append(n)
        assert state is State.NEW or State.CLOSED in seen, state


async def test_fire_follows_the_table_and_ignores_the_rest(tmp_path: Path) -> None:
    node = Node(7, None, ExactPath(("x.bin",)), Entry("x.bin", False, 10))
    download = Download(node, 10, "etag")
    node.download = download
    assert download.fire(Event.KEPT) is State.NEW  # not in the table: ignored
    part = tmp_path / "x.part-1"
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    assert download.fire(Event.START, part=str(part), fd=fd) is State.FETCHING
    assert download.fire(Event.UNUSED) is State.FETCHING and part.exists()  # the worker goes on
    assert download.fire(Event.WRITE_FAILED, "disk full") is State.DEGRADED
    assert download.fd is None and not part.exists() and download.reason == "disk full"
    assert not download.holds(1)
    assert download.fire(Event.FETCHED) is State.DEGRADED
    assert download.fire(Event.UNUSED) is State.CLOSED and node.download is None
    assert download.fire(Event.UNUSED) is State.CLOSED


def test_window_answers_only_what_it_holds_whole() -> None:
    node = Node(7, None, ExactPath(("x.bin",)), Entry("x.bin", False, 40))
    download = Download(node, 40, "etag")
    assert download.from_window(0, 4) is None  # nothing yet
    chunks = [bytes(range(i * 10, i * 10 + 10)) for i in range(4)]
    download.window = tuple((i * 10, c) for i, c in enumerate(chunks[1:], start=1))  # bytes 10..40
    one = download.from_window(12, 18)
    assert isinstance(one, memoryview) and bytes(one) == chunks[1][2:8]  # within one chunk: a slice
    across = download.from_window(15, 35)
    assert across is not None and bytes(across) == b"".join(chunks)[15:35]
    assert bytes(download.from_window(30, 40) or b"x") == chunks[3]
    assert download.from_window(5, 15) is None  # starts before the window: the part file answers
    assert download.from_window(35, 45) is None  # past what was fetched


# ------------------------------------------------------------------ Vfs, local stand-in for a remote store


async def test_disk_full_during_a_download_evicts_then_degrades(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The part file's writes fail (ENOSPC) midway: cached copies are evicted first, then the
    download is DEGRADED, its part file dropped, and every read still right."""
    data = os.urandom(12 * MIB)
    old = os.urandom(MIB)
    store = local_remote(tmp_path, {"big.bin": data, "old.bin": old})
    with tmpfs(tmp_path / "fs", "4m") as fs:
        async with running_vfs(store, tmp_path, fs / "cache") as vfs:
            assert vfs.cache is not None
            _node, fh = await open_file(vfs, "old.bin")
            assert await read_all(vfs, fh, MIB) == old
            await vfs.release(fh)
            assert vfs.cache.usage()[0] == MIB
            monkeypatch.setattr(ReadCache, "make_room", lambda self, size, limit=True: True)  # pretend it fits
            node, fh = await open_file(vfs, "big.bin")
            download = vfs.handle(fh).download
            assert download is not None
            first = await vfs.read(fh, 0, READ)
            assert bytes(first) == data[:READ]
            assert await settled(download) is State.DEGRADED
            assert "part file" in download.reason
            assert vfs.cache.lookup(store, ["old.bin"], store.stat(["old.bin"]).etag or "") is None  # evicted first
            assert part_files(fs / "cache") == [] and vfs.cache.usage()[0] == 0
            whole = await read_all(vfs, fh, len(data))
            assert sha(whole) == sha(data)
            assert (await vfs.getattr(node.ino)).size == len(data)
            await vfs.release(fh)
            assert download.state is State.CLOSED and node.download is None


async def test_small_object_without_room_is_read_by_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects fetched whole (below stream_threshold) that the cache cannot keep: ranged GETs."""
    data = os.urandom(3 * MIB)
    store = local_remote(tmp_path, {"small.bin": data})
    with tmpfs(tmp_path / "fs", "1m") as fs:
        async with running_vfs(store, tmp_path, fs / "cache") as vfs:
            node, fh = await open_file(vfs, "small.bin")  # the disk is too small: refused up front
            download = vfs.handle(fh).download
            assert download is not None and download.state is State.DEGRADED
            assert sha(await read_all(vfs, fh, len(data))) == sha(data)
            await vfs.release(fh)
            monkeypatch.setattr(ReadCache, "make_room", lambda self, size, limit=True: True)
            node, fh = await open_file(vfs, "small.bin")  # ENOSPC while fetching it
            download = vfs.handle(fh).download
            assert download is not None and download.state is State.DEGRADED
            assert sha(await read_all(vfs, fh, len(data))) == sha(data)
            assert (await vfs.getattr(node.ino)).size == len(data)
            await vfs.release(fh)
            assert os.listdir(fs / "cache") == []


async def test_object_bigger_than_the_cache_is_read_by_ranges(tmp_path: Path) -> None:
    data = os.urandom(6 * MIB)
    store = local_remote(tmp_path, {"big.bin": data})
    async with running_vfs(store, tmp_path, tmp_path / "cache", cache_size=2 * MIB) as vfs:
        _node, fh = await open_file(vfs, "big.bin")
        download = vfs.handle(fh).download
        assert download is not None and download.state is State.DEGRADED
        assert sha(await read_all(vfs, fh, len(data))) == sha(data)
        assert download.ranges.gets == 6  # 1 MiB blocks, each fetched once
        await vfs.release(fh)
        assert os.listdir(tmp_path / "cache") == []


async def test_download_with_room_is_adopted_after_evicting(tmp_path: Path) -> None:
    """A big object on a small disk: least recently used copies make room, then it is cached."""
    data = os.urandom(5 * MIB)
    olds = {f"old{i}.bin": os.urandom(MIB) for i in range(3)}
    store = local_remote(tmp_path, {"big.bin": data, **olds})
    with tmpfs(tmp_path / "fs", "8m") as fs:
        async with running_vfs(store, tmp_path, fs / "cache") as vfs:
            assert vfs.cache is not None
            for name, content in olds.items():
                _node, fh = await open_file(vfs, name)
                assert await read_all(vfs, fh, MIB) == content
                await vfs.release(fh)
            assert vfs.cache.usage()[0] == 3 * MIB
            node, fh = await open_file(vfs, "big.bin")
            download = vfs.handle(fh).download
            assert download is not None
            assert sha(await read_all(vfs, fh, len(data))) == sha(data)
            assert await settled(download) is State.ADOPTED
            await vfs.release(fh)
            assert download.state is State.CLOSED
            etag = store.stat(["big.bin"]).etag or ""
            cached = vfs.cache.lookup(store, ["big.bin"], etag, len(data))
            assert cached is not None and os.path.getsize(cached) == len(data)
            assert vfs.cache.lookup(store, ["old0.bin"], store.stat(["old0.bin"]).etag or "") is None
            assert part_files(fs / "cache") == []


async def test_readers_at_the_head_are_answered_from_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A download slower than its reader: every read comes from the window (no pread of the part
    file), right, and the copy is adopted whole."""
    data = os.urandom(12 * MIB + 4321)
    store = local_remote(tmp_path, {"big.bin": data})
    store.__class__ = PacedRemoteStorage
    real_pread, real_preadv = os.pread, os.preadv
    part_reads: list[int] = []

    def counting_pread(fd: int, length: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part-x"):
            part_reads.append(offset)
        return real_pread(fd, length, offset)

    def counting_preadv(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part-x"):
            part_reads.append(offset)
        return real_preadv(fd, buffers, offset, flags)

    async with running_vfs(store, tmp_path, tmp_path / "cache") as vfs:
        assert vfs.cache is not None
        monkeypatch.setattr(reads.os, "pread", counting_pread)
        monkeypatch.setattr(reads.os, "preadv", counting_preadv)
        node, fh = await open_file(vfs, "big.bin")
        download = vfs.handle(fh).download
        assert download is not None
        assert sha(await read_all(vfs, fh, len(data))) == sha(data)
        monkeypatch.undo()
        assert part_reads == []
        assert await settled(download) is State.ADOPTED
        assert download.window == ()  # the memory goes once the part file is complete
        await vfs.release(fh)
        cached = vfs.cache.lookup(store, ["big.bin"], store.stat(["big.bin"]).etag or "", len(data))
        assert cached is not None and Path(cached).read_bytes() == data


async def test_refused_direct_writes_go_through_the_page_cache(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses a direct write (EINVAL): the chunk, and the rest, are written
    normally; the copy is whole."""
    data = os.urandom(9 * MIB + 100)
    store = local_remote(tmp_path, {"big.bin": data})
    real_pwrite = os.pwrite
    refused: list[int] = []

    def picky_pwrite(fd: int, buf: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "no direct I/O here")
        return real_pwrite(fd, buf, offset)

    monkeypatch.setattr(reads.os, "pwrite", picky_pwrite)
    async with running_vfs(store, tmp_path, tmp_path / "cache") as vfs:
        assert vfs.cache is not None
        _node, fh = await open_file(vfs, "big.bin")
        download = vfs.handle(fh).download
        assert download is not None
        assert sha(await read_all(vfs, fh, len(data))) == sha(data)
        assert await settled(download) is State.ADOPTED
        await vfs.release(fh)
        monkeypatch.undo()
        if takes_direct_writes(tmp_path):
            assert refused == [0]  # tried once, then never again for this download
        cached = vfs.cache.lookup(store, ["big.bin"], store.stat(["big.bin"]).etag or "", len(data))
        assert cached is not None and Path(cached).read_bytes() == data


# ------------------------------------------------------------------ Vfs on the real Swift


@pytest.fixture
def container(swift_env: dict[str, Any]) -> Iterator[str]:
    name = f"gfs-{uuid.uuid4().hex[:12]}"
    yield name
    drop_container(swift_env, name)


def upload(storage: Any, tmp_path: Path, name: str, data: bytes) -> None:
    local = tmp_path / f"upload-{uuid.uuid4().hex[:6]}"
    local.write_bytes(data)
    storage.store_local_file(str(local), [name])
    local.unlink()


async def test_swift_tiny_tmpfs_reads_are_right(swift_env: dict[str, Any], container: str, tmp_path: Path) -> None:
    """A 12 MiB SLO and a 3 MiB object with a 4 MiB workbench: right bytes, right size, twice."""
    storage = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path))
    big, small = os.urandom(12 * MIB), os.urandom(3 * MIB)
    upload(storage, tmp_path, "big.bin", big)
    upload(storage, tmp_path, "small.bin", small)
    with tmpfs(tmp_path / "fs", "4m") as fs:
        async with running_vfs(storage, tmp_path, fs / "cache") as vfs:
            assert vfs.cache is not None
            for attempt in range(2):
                node, fh = await open_file(vfs, "big.bin")
                download = vfs.handle(fh).download
                assert download is not None and download.state is State.DEGRADED
                assert sha(await read_all(vfs, fh, len(big))) == sha(big), attempt
                assert (await vfs.getattr(node.ino)).size == len(big)
                await vfs.release(fh)
                node, fh = await open_file(vfs, "small.bin")
                assert sha(await read_all(vfs, fh, len(small))) == sha(small), attempt
                assert (await vfs.getattr(node.ino)).size == len(small)
                await vfs.release(fh)
            assert vfs.cache.usage()[0] == len(small)  # the small one is cached, the big one never
            assert part_files(fs / "cache") == []


async def test_swift_ranged_reads_never_mix_versions(swift_env: dict[str, Any], container: str,
                                                     tmp_path: Path) -> None:
    """Read by ranged GETs (the cache is too small), the object replaced meanwhile: reads of the
    open file fail (ESTALE), they never return bytes of the new version."""
    storage = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path))
    old, new = os.urandom(6 * MIB), os.urandom(6 * MIB)
    upload(storage, tmp_path, "v.bin", old)
    async with running_vfs(storage, tmp_path, tmp_path / "cache", cache_size=MIB) as vfs:
        node, fh = await open_file(vfs, "v.bin")
        download = vfs.handle(fh).download
        assert download is not None and download.state is State.DEGRADED
        assert bytes(await vfs.read(fh, 0, READ)) == old[:READ]
        upload(storage, tmp_path, "v.bin", new)
        with pytest.raises(OSError) as info:
            await vfs.read(fh, 3 * MIB, READ)
        assert info.value.errno in (errno.ESTALE, errno.EIO)
        assert bytes(await vfs.read(fh, READ, READ)) == old[READ:2 * READ]  # its block was fetched before
        await vfs.release(fh)
        node, fh = await open_file(vfs, "v.bin")  # a new open sees the new version
        assert sha(await read_all(vfs, fh, len(new))) == sha(new)
        await vfs.release(fh)


def _object_get(container: str, name: str) -> str:
    return rf"/{re.escape(container)}/{re.escape(name)}(\?|$)"


async def test_swift_cut_short_get_is_resumed(fault_swift: FaultSwift, container: str, tmp_path: Path) -> None:
    """A GET body cut short once: the download resumes, its copy is whole and cached."""
    storage = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path), retry_deadline="3")
    data = os.urandom(12 * MIB)
    upload(storage, tmp_path, "big.bin", data)
    rule = fault_swift.proxy.add_rule(method="GET", path=_object_get(container, "big.bin"), action="truncate",
                                      after_bytes=3 * MIB, times=1)
    async with running_vfs(storage, tmp_path, tmp_path / "cache") as vfs:
        assert vfs.cache is not None
        node, fh = await open_file(vfs, "big.bin")
        download = vfs.handle(fh).download
        assert download is not None
        assert sha(await read_all(vfs, fh, len(data))) == sha(data)
        assert rule.hits == 1
        assert await settled(download) is State.ADOPTED
        await vfs.release(fh)
        cached = vfs.cache.lookup(storage, ["big.bin"], node.entry.etag or "", len(data))
        assert cached is not None and Path(cached).read_bytes() == data


async def test_swift_download_skips_the_page_cache_and_resumes_anywhere(fault_swift: FaultSwift, container: str,
                                                                        tmp_path: Path) -> None:
    """An object of an odd size whose GET is cut at an odd byte: the download resumes there, the
    cached copy is the object, and (where the disk takes O_DIRECT) it was written around the page
    cache: only its unaligned tail is resident."""
    storage = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path), retry_deadline="3")
    data = os.urandom(12 * MIB + 5000)
    upload(storage, tmp_path, "odd.bin", data)
    rule = fault_swift.proxy.add_rule(method="GET", path=_object_get(container, "odd.bin"), action="truncate",
                                      after_bytes=3 * MIB + 1234, times=1)
    async with running_vfs(storage, tmp_path, tmp_path / "cache") as vfs:
        assert vfs.cache is not None
        node, fh = await open_file(vfs, "odd.bin")
        download = vfs.handle(fh).download
        assert download is not None
        assert await settled(download) is State.ADOPTED  # no reader read anything yet
        assert rule.hits == 1
        cached = vfs.cache.lookup(storage, ["odd.bin"], node.entry.etag or "", len(data))
        assert cached is not None
        if takes_direct_writes(tmp_path / "cache"):
            assert resident_bytes(cached) <= reads.CHUNK + 2 * mmap.PAGESIZE
        assert sha(await read_all(vfs, fh, len(data))) == sha(data)
        await vfs.release(fh)
        assert Path(cached).read_bytes() == data


async def test_swift_failed_get_gives_right_bytes_or_eio(fault_swift: FaultSwift, container: str,
                                                         tmp_path: Path) -> None:
    """The GET is cut short, then the object's GETs all fail: reads below what was fetched are
    right, reads past it are EIO (never short), then right again once the store answers; the
    part file is never adopted."""
    storage = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path), retry_deadline="2")
    data = os.urandom(12 * MIB)
    upload(storage, tmp_path, "big.bin", data)
    path = _object_get(container, "big.bin")
    fault_swift.proxy.add_rule(method="GET", path=path, action="truncate", after_bytes=3 * MIB, times=1)
    fault_swift.proxy.add_rule(method="GET", path=path, action="status", status=503, times=None)
    async with running_vfs(storage, tmp_path, tmp_path / "cache") as vfs:
        assert vfs.cache is not None
        node, fh = await open_file(vfs, "big.bin")
        download = vfs.handle(fh).download
        assert download is not None
        assert await settled(download, timeout=120) is State.FAILED
        fetched = download.done
        assert 0 < fetched < len(data)
        assert bytes(await vfs.read(fh, 0, READ)) == data[:READ]  # from the part file
        offset = 0
        got = bytearray()
        with pytest.raises(OSError) as info:
            while True:
                piece = bytes(await vfs.read(fh, offset, READ))
                assert piece == data[offset:offset + READ]  # right, and never short
                got += piece
                offset += len(piece)
        assert info.value.errno == errno.EIO
        assert fetched - READ < len(got) < len(data)
        fault_swift.proxy.clear()
        rest = await read_all(vfs, fh, len(data), start=offset)  # ranged GETs, retried: right
        assert sha(bytes(got) + rest) == sha(data)
        assert (await vfs.getattr(node.ino)).size == len(data)
        await vfs.release(fh)
        assert download.state is State.CLOSED
        assert vfs.cache.lookup(storage, ["big.bin"], node.entry.etag or "") is None
        assert part_files(tmp_path / "cache") == []


async def test_swift_small_object_cut_short_is_never_short(fault_swift: FaultSwift, container: str,
                                                           tmp_path: Path) -> None:
    storage = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path), retry_deadline="2")
    data = os.urandom(2 * MIB)
    upload(storage, tmp_path, "small.bin", data)
    fault_swift.proxy.add_rule(method="GET", path=_object_get(container, "small.bin"), action="truncate",
                               after_bytes=500_000, times=1)
    async with running_vfs(storage, tmp_path, tmp_path / "cache") as vfs:
        assert vfs.cache is not None
        for _attempt in range(2):
            try:
                node, fh = await open_file(vfs, "small.bin")
            except Exception as exc:  # the first open may fail: then with EIO, nothing cached
                assert not isinstance(exc, AssertionError)
                assert vfs.cache.usage()[0] == 0
                continue
            assert sha(await read_all(vfs, fh, len(data))) == sha(data)
            await vfs.release(fh)
        cached = vfs.cache.lookup(storage, ["small.bin"], node.entry.etag or "", len(data))
        assert cached is not None and os.path.getsize(cached) == len(data)
        assert vfs.cache.usage()[0] == len(data)


# ------------------------------------------------------------------ a real FUSE mount


def sha256sum(path: Path) -> subprocess.CompletedProcess[str]:
    return run(["sha256sum", str(path)], check=False, timeout=300)


def test_mount_tiny_tmpfs_workbench(swift_env: dict[str, Any], container: str, tmp_path: Path) -> None:
    """Through FUSE, with the workbench on a 4 MiB tmpfs: sha256sum exits 0 with the right hash,
    stat shows the right size, and so again."""
    storage = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path))
    big, small = os.urandom(12 * MIB), os.urandom(3 * MIB)
    upload(storage, tmp_path, "big.bin", big)
    upload(storage, tmp_path, "small.bin", small)
    config = write_swift_config(tmp_path / "cfg", swift_env, container)
    try:
        with tmpfs(tmp_path / "wb", "4m") as wb, \
                Mounted(config, tmp_path / "mnt", options=f"cache_dir={wb}") as mounted:
            public = mounted.mountpoint / "public"
            for _attempt in range(2):
                for name, data in (("big.bin", big), ("small.bin", small)):
                    result = sha256sum(public / name)
                    assert result.returncode == 0, result.stderr
                    assert result.stdout.split()[0] == sha(data)
                    assert os.stat(public / name).st_size == len(data)
            assert no_part_files_after(wb / "cache") == []
            mounted.check_log()
    finally:
        drop_container(swift_env, container + "-queue")


def test_mount_parallel_downloads_fill_the_workbench(swift_env: dict[str, Any], container: str,
                                                    tmp_path: Path) -> None:
    """Two 6 MiB objects read at once with an 8 MiB workbench: each fits alone, not both, so a
    download runs out of disk midway (ENOSPC, no stand-in): both sha256sums are still right."""
    storage = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path))
    objects = {f"o{i}.bin": os.urandom(6 * MIB) for i in range(2)}
    for name, data in objects.items():
        upload(storage, tmp_path, name, data)
    config = write_swift_config(tmp_path / "cfg", swift_env, container)
    try:
        with tmpfs(tmp_path / "wb", "8m") as wb, \
                Mounted(config, tmp_path / "mnt", options=f"cache_dir={wb}") as mounted:
            public = mounted.mountpoint / "public"
            for _attempt in range(2):
                procs = {name: subprocess.Popen(["sha256sum", str(public / name)], stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True) for name in objects}
                for name, proc in procs.items():
                    try:
                        out, err = proc.communicate(timeout=300)
                    finally:
                        if proc.poll() is None:
                            proc.kill()
                            proc.wait()
                    assert proc.returncode == 0, err
                    assert out.split()[0] == sha(objects[name])
                    assert os.stat(public / name).st_size == len(objects[name])
            assert no_part_files_after(wb / "cache") == []
            mounted.check_log()
    finally:
        drop_container(swift_env, container + "-queue")


def test_mount_failing_gets_are_eio_never_a_short_success(fault_swift: FaultSwift, container: str,
                                                          tmp_path: Path) -> None:
    """Through FUSE, every GET of the object failing after a cut-short body: sha256sum fails
    (EIO), it never exits 0 with another hash; once Swift answers again it is right."""
    storage = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path))
    data = os.urandom(12 * MIB)
    upload(storage, tmp_path, "big.bin", data)
    config = write_swift_config(tmp_path / "cfg", fault_swift.env, container, extra="retry_deadline = 2\n")
    path = _object_get(container, "big.bin")
    try:
        with Mounted(config, tmp_path / "mnt") as mounted:
            target = mounted.mountpoint / "public" / "big.bin"
            assert os.stat(target).st_size == len(data)
            fault_swift.proxy.add_rule(method="GET", path=path, action="truncate", after_bytes=3 * MIB, times=1)
            fault_swift.proxy.add_rule(method="GET", path=path, action="status", status=503, times=None)
            result = sha256sum(target)
            assert result.returncode != 0, result.stdout
            assert "Input/output error" in result.stderr
            assert os.stat(target).st_size == len(data)
            fault_swift.proxy.clear()
            result = sha256sum(target)
            assert result.returncode == 0, result.stderr
            assert result.stdout.split()[0] == sha(data)
            assert os.stat(target).st_size == len(data)
    finally:
        drop_container(fault_swift.env, container + "-queue")
