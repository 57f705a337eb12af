"""The semantics layer without mounting, on local stores and on the real Swift."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from goblinfs.fuse_ops import Operations
from goblinfs.storage import ExactPath, StorageUnavailable
from goblinfs.storage.filestorage import BasicFileStorage
from goblinfs.vfs import ROOT_INO, Options, StoreMount, Vfs
from goblinfs.workbench import ReadCache

from .conftest import drop_container, make_cloud_storage


class Env:
    def __init__(self, vfs: Vfs, stores: dict[str, Any], kind: str) -> None:
        self.vfs = vfs
        self.stores = stores
        self.kind = kind

    async def dir(self, *names: str) -> int:
        ino = ROOT_INO
        for name in names:
            ino = (await self.vfs.lookup(ino, name.encode())).ino
        return ino

    async def write_file(self, parent: int, name: str, data: bytes) -> int:
        handle, node = await self.vfs.create(parent, name.encode(), os.O_WRONLY | os.O_CREAT)
        await self.vfs.write(handle.fh, 0, data)
        await self.vfs.flush(handle.fh)
        await self.vfs.release(handle.fh)
        return node.ino

    async def read_file(self, ino: int) -> bytes:
        handle = await self.vfs.open(ino, os.O_RDONLY)
        try:
            return await self.vfs.read(handle.fh, 0, 1 << 30)
        finally:
            await self.vfs.release(handle.fh)


@pytest.fixture(params=["local", "swift"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    options = Options(staging_dir=str(tmp_path), dir_timeout=1.0, attr_timeout=1.0)
    containers: list[str] = []
    stores: dict[str, Any] = {}
    for name in ("queue", "public"):
        if request.param == "local":
            (tmp_path / name).mkdir()
            stores[name] = BasicFileStorage(str(tmp_path / name), "/mgoblin_media/" if name == "public" else None)
        else:
            swift_env = request.getfixturevalue("swift_env")
            container = f"gfs-{uuid.uuid4().hex[:12]}"
            containers.append(container)
            kw = {"base_url": "/mgoblin_media/"} if name == "public" else {}
            stores[name] = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path), **kw)
    cache = ReadCache(str(tmp_path / "cache"), 1 << 30)
    vfs = Vfs([StoreMount(n, s, options) for n, s in stores.items()], options, cache=cache)
    try:
        async with trio.open_nursery() as nursery:
            vfs.nursery = nursery
            yield Env(vfs, stores, request.param)
            nursery.cancel_scope.cancel()
    finally:
        for container in containers:
            drop_container(request.getfixturevalue("swift_env"), container)


async def test_root_holds_the_stores(env: Env) -> None:
    fh = await env.vfs.opendir(ROOT_INO)
    names = [name for _pos, name, _node in env.vfs.readdir_entries(fh, 0)]
    assert names == ["public", "queue"]
    assert env.vfs.attr(env.vfs.node(await env.dir("public"))).mode & 0o040000


async def test_readdir_makes_nodes_only_for_the_entries_it_hands_out(env: Env) -> None:
    """The kernel takes only part of a big directory per readdir; the rest must not be made into
    nodes at each call, only the entries handed out."""
    for i in range(60):
        with env.stores["public"].get_file(["big", f"f{i:03d}"], "wb") as f:
            f.write(b"x")
    big = await env.dir("public", "big")
    fh = await env.vfs.opendir(big)
    before = len(env.vfs.nodes)
    taken = []
    for position, name, _node in env.vfs.readdir_entries(fh, 10):
        taken.append((position, name))
        if len(taken) == 5:
            break
    assert taken == [(11 + i, f"f{10 + i:03d}") for i in range(5)]
    assert len(env.vfs.nodes) - before == 5
    rest = [name for _pos, name, _node in env.vfs.readdir_entries(fh, 15)]
    assert rest == [f"f{i:03d}" for i in range(15, 60)]
    env.vfs.releasedir(fh)


async def test_create_write_read_and_store(env: Env) -> None:
    public = await env.dir("public")
    ino = await env.write_file(public, "My Photo.jpg", b"jpeg bytes")
    assert await env.read_file(ino) == b"jpeg bytes"
    # Stored under the cleaned name; the exact name still finds it.
    assert env.stores["public"].read_range(["My_Photo.jpg"], 0, 100) == b"jpeg bytes"
    assert (await env.vfs.lookup(public, b"My Photo.jpg")).ino == ino
    assert (await env.vfs.lookup(public, b"My_Photo.jpg")).ino == ino
    attr = await env.vfs.getattr(ino)
    assert attr.size == 10


async def test_read_your_writes_before_close(env: Env) -> None:
    public = await env.dir("public")
    handle, node = await env.vfs.create(public, b"rw.bin", os.O_RDWR | os.O_CREAT)
    await env.vfs.write(handle.fh, 0, b"hello world")
    await env.vfs.write(handle.fh, 6, b"WORLD")
    assert await env.vfs.read(handle.fh, 0, 100) == b"hello WORLD"
    reader = await env.vfs.open(node.ino, os.O_RDONLY)
    assert await env.vfs.read(reader.fh, 0, 5) == b"hello"
    await env.vfs.release(reader.fh)
    await env.vfs.release(handle.fh)
    assert env.stores["public"].read_range(["rw.bin"], 0, 100) == b"hello WORLD"


async def test_open_trunc_and_append(env: Env) -> None:
    public = await env.dir("public")
    ino = await env.write_file(public, "t.txt", b"0123456789")
    handle = await env.vfs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await env.vfs.write(handle.fh, 0, b"ab")
    await env.vfs.release(handle.fh)
    assert env.stores["public"].read_range(["t.txt"], 0, 100) == b"ab"
    handle = await env.vfs.open(ino, os.O_WRONLY | os.O_APPEND)
    await env.vfs.write(handle.fh, 0, b"cd")
    await env.vfs.release(handle.fh)
    assert env.stores["public"].read_range(["t.txt"], 0, 100) == b"abcd"
    handle = await env.vfs.open(ino, os.O_RDWR)
    await env.vfs.write(handle.fh, 1, b"X")
    await env.vfs.release(handle.fh)
    assert await env.read_file(ino) == b"aXcd"


async def test_truncate_by_setattr(env: Env) -> None:
    public = await env.dir("public")
    ino = await env.write_file(public, "s.bin", b"x" * 100)
    attr = await env.vfs.setattr(ino, size=10)
    assert attr.size == 10
    assert env.stores["public"].get_file_size(["s.bin"]) == 10
    await env.vfs.setattr(ino, size=50)
    assert await env.read_file(ino) == b"x" * 10 + b"\0" * 40


async def test_mtime_set_and_kept(env: Env) -> None:
    public = await env.dir("public")
    ino = await env.write_file(public, "m.txt", b"m")
    mtime = 1_577_934_245_123_456_789
    attr = await env.vfs.setattr(ino, mtime_ns=mtime)
    assert attr.mtime_ns == mtime
    assert env.stores["public"].stat(["m.txt"]).mtime_ns == mtime
    # Written, then the mtime set before close (what cp -a does): both reach the store.
    handle, node = await env.vfs.create(public, b"n.txt", os.O_WRONLY | os.O_CREAT)
    await env.vfs.write(handle.fh, 0, b"data")
    await env.vfs.setattr(node.ino, mtime_ns=mtime, fh=handle.fh)
    await env.vfs.flush(handle.fh)
    await env.vfs.release(handle.fh)
    entry = env.stores["public"].stat(["n.txt"])
    assert entry.mtime_ns == mtime and entry.size == 4


async def test_names(env: Env) -> None:
    public = await env.dir("public")
    with pytest.raises(OSError) as exc:
        await env.vfs.create(public, "日本".encode(), os.O_WRONLY | os.O_CREAT)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        await env.vfs.mkdir(public, b"...")
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        await env.vfs.create(public, b"x" * 256, os.O_WRONLY | os.O_CREAT)
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as exc:
        await env.vfs.lookup(public, b"missing")
    assert exc.value.errno == errno.ENOENT
    env.vfs.options.names = "strict"
    with pytest.raises(OSError) as exc:
        await env.vfs.create(public, b"with space.txt", os.O_WRONLY | os.O_CREAT)
    assert exc.value.errno == errno.EINVAL
    await env.write_file(public, "clean_name.txt", b"ok")


async def test_unclean_names_from_other_tools(env: Env) -> None:
    with env.stores["public"].get_file(ExactPath(["Weird Name (1).txt"]), "wb") as f:
        f.write(b"weird")
    public = await env.dir("public")
    env.vfs.node(public).children = None
    node = await env.vfs.lookup(public, b"Weird Name (1).txt")
    assert await env.read_file(node.ino) == b"weird"


async def test_mkdir_rmdir(env: Env) -> None:
    public = await env.dir("public")
    d = await env.vfs.mkdir(public, b"album")
    assert env.stores["public"].list_dir(["album"]) == []
    await env.write_file(d.ino, "a.jpg", b"a")
    with pytest.raises(OSError) as exc:
        await env.vfs.rmdir(public, b"album")
    assert exc.value.errno == errno.ENOTEMPTY
    await env.vfs.unlink(d.ino, b"a.jpg")
    await env.vfs.rmdir(public, b"album")
    assert not env.stores["public"].file_exists(["album"])
    with pytest.raises(OSError) as exc:
        await env.vfs.mkdir(public, b"album2") and await env.vfs.mkdir(public, b"album2")
    assert exc.value.errno == errno.EEXIST


async def test_rename(env: Env) -> None:
    public = await env.dir("public")
    queue = await env.dir("queue")
    await env.write_file(public, "a.txt", b"A")
    await env.write_file(public, "b.txt", b"B")
    await env.vfs.rename(public, b"a.txt", public, b"b.txt")
    assert env.stores["public"].read_range(["b.txt"], 0, 10) == b"A"
    assert not env.stores["public"].file_exists(["a.txt"])
    with pytest.raises(OSError) as exc:
        await env.vfs.rename(public, b"b.txt", queue, b"b.txt")
    assert exc.value.errno == errno.EXDEV
    d = await env.vfs.mkdir(public, b"dir")
    await env.write_file(d.ino, "inner.txt", b"inner")
    await env.vfs.rename(public, b"dir", public, b"dir2")
    assert env.stores["public"].read_range(["dir2", "inner.txt"], 0, 10) == b"inner"
    inner = await env.vfs.lookup(await env.dir("public", "dir2"), b"inner.txt")
    assert await env.read_file(inner.ino) == b"inner"
    with pytest.raises(OSError) as exc:
        await env.vfs.rename(public, b"dir2", await env.dir("public", "dir2"), b"sub")
    assert exc.value.errno == errno.EINVAL
    await env.write_file(public, "c.txt", b"C")
    with pytest.raises(OSError) as exc:
        await env.vfs.rename(public, b"c.txt", public, b"b.txt", noreplace=True)
    assert exc.value.errno == errno.EEXIST


async def test_unlink_while_open(env: Env) -> None:
    public = await env.dir("public")
    ino = await env.write_file(public, "gone.txt", b"still here")
    handle = await env.vfs.open(ino, os.O_RDONLY)
    await env.vfs.unlink(public, b"gone.txt")
    assert not env.stores["public"].file_exists(["gone.txt"])
    assert await env.vfs.read(handle.fh, 0, 100) == b"still here"
    await env.vfs.release(handle.fh)
    with pytest.raises(OSError):
        await env.vfs.lookup(public, b"gone.txt")


async def test_xattrs(env: Env) -> None:
    public = await env.dir("public")
    queue = await env.dir("queue")
    ino = await env.write_file(public, "x.png", b"png")
    assert await env.vfs.getxattr(ino, b"user.goblinfs.url") == b"/mgoblin_media/x.png"
    etag = await env.vfs.getxattr(ino, b"user.goblinfs.etag")
    assert etag.decode() == env.stores["public"].stat(["x.png"]).etag
    assert await env.vfs.getxattr(ino, b"user.goblinfs.content_type") == b"image/png"
    with pytest.raises(OSError) as exc:
        await env.vfs.getxattr(ino, b"user.other")
    assert exc.value.errno == errno.ENODATA
    qino = await env.write_file(queue, "q.txt", b"q")
    url_of_queue = None
    try:
        url_of_queue = await env.vfs.getxattr(qino, b"user.goblinfs.url")
    except OSError as exc2:
        assert exc2.errno == errno.ENODATA and env.kind == "local"  # no base_url: no URL
    if env.kind == "swift":
        assert url_of_queue and url_of_queue.startswith(b"http://127.0.0.1")


async def test_read_only(env: Env) -> None:
    public = await env.dir("public")
    ino = await env.write_file(public, "r.txt", b"r")
    env.vfs.options.ro = True
    for call in (env.vfs.create(public, b"new.txt", os.O_WRONLY | os.O_CREAT), env.vfs.mkdir(public, b"d"),
                 env.vfs.unlink(public, b"r.txt"), env.vfs.open(ino, os.O_WRONLY)):
        with pytest.raises(OSError) as exc:
            await call
        assert exc.value.errno == errno.EROFS
    assert await env.read_file(ino) == b"r"


async def test_listing_ttl_sees_other_writers(env: Env) -> None:
    public = await env.dir("public")
    fh = await env.vfs.opendir(public)
    assert list(env.vfs.readdir_entries(fh, 0)) == []
    env.vfs.releasedir(fh)
    with env.stores["public"].get_file(["from_elsewhere.txt"], "wb") as f:
        f.write(b"e")
    env.vfs.node(public).children_time -= 10  # the listing TTL has passed
    node = await env.vfs.lookup(public, b"from_elsewhere.txt")
    assert await env.read_file(node.ino) == b"e"


async def test_changed_elsewhere_is_read_fresh(env: Env) -> None:
    """Swift: the cached copy is revalidated by ETag on open; local: read in place."""
    public = await env.dir("public")
    ino = await env.write_file(public, "c.txt", b"version 1")
    assert await env.read_file(ino) == b"version 1"
    with env.stores["public"].get_file(["c.txt"], "wb") as f:
        f.write(b"version 2, changed elsewhere")
    assert await env.read_file(ino) == b"version 2, changed elsewhere"


async def test_large_remote_read_streams(env: Env, tmp_path: Path) -> None:
    data = os.urandom(6 * 1048576)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    env.stores["public"].store_local_file(str(local), ["big.bin"])
    public = await env.dir("public")
    node = await env.vfs.lookup(public, b"big.bin")
    handle = await env.vfs.open(node.ino, os.O_RDONLY)
    assert await env.vfs.read(handle.fh, 0, 4096) == data[:4096]
    assert await env.vfs.read(handle.fh, 5 * 1048576, 4096) == data[5 * 1048576:5 * 1048576 + 4096]
    await env.vfs.release(handle.fh)
    assert await env.read_file(node.ino) == data


async def test_forget_frees_nodes(env: Env) -> None:
    public = await env.dir("public")
    ino = await env.write_file(public, "f.txt", b"f")
    node = env.vfs.node(ino)
    env.vfs.forget([(ino, node.lookups)])
    assert ino not in env.vfs.nodes
    again = await env.vfs.lookup(public, b"f.txt")
    assert again.lookups == 1


async def test_statfs(env: Env) -> None:
    total, free, files, ffree = await env.vfs.statfs()
    assert total >= free > 0 and files >= ffree > 0


class CountingSpace(BasicFileStorage):
    calls = 0

    def space(self) -> Any:
        CountingSpace.calls += 1
        return super().space()


async def test_statfs_answer_is_reused_for_dir_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`find` and `df` ask statfs; each store's figures are one Swift HEAD: one answer serves
    the calls of dir_timeout seconds, then the stores are asked again."""
    clock = [1000.0]
    monkeypatch.setattr("goblinfs.vfs.core.time.monotonic", lambda: clock[0])
    options = Options(staging_dir=str(tmp_path), dir_timeout=5.0)
    CountingSpace.calls = 0
    vfs = Vfs([StoreMount("public", CountingSpace(str(tmp_path)), options)], options)
    first = await vfs.statfs()
    clock[0] += 4.9
    assert await vfs.statfs() == first
    assert CountingSpace.calls == 1
    clock[0] += 0.2
    await vfs.statfs()
    assert CountingSpace.calls == 2


class Exploding(BasicFileStorage):
    def list_dir(self, dirpath: Any) -> Any:
        raise RuntimeError("a bug in a store")


async def test_adapter_maps_every_failure_to_an_errno(tmp_path: Path) -> None:
    options = Options(staging_dir=str(tmp_path))
    vfs = Vfs([StoreMount("public", Exploding(str(tmp_path)), options)], options)
    ops = Operations(vfs)
    public = await ops.lookup(ROOT_INO, b"public", None)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.lookup(public.st_ino, b"anything", None)
    assert exc.value.errno == errno.EIO
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.lookup(public.st_ino, b"x" * 300, None)
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.getattr(12345, None)
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.symlink(public.st_ino, b"l", b"target", None)
    assert exc.value.errno == errno.EPERM


def _segment_names(env: Env) -> set[str]:
    store = env.stores["public"]
    conn = store._conn()
    try:
        _, items = conn.get_container(store.segment_container, full_listing=True)
    except Exception:  # no segments container yet
        return set()
    return {item["name"] for item in items}


@pytest.mark.parametrize("env", ["swift"], indirect=True)
async def test_appending_writer_streams_segments_before_close(env: Env) -> None:
    """Swift (1 MiB segments here): past one segment, appended bytes stream to Swift from
    memory as they come, not through the staging file; close adds the manifest.  A writer
    that leaves the append-only path loses nothing."""
    public = await env.dir("public")
    data = os.urandom(5 * 1048576 + 12345)
    handle, node = await env.vfs.create(public, b"stream.bin", os.O_WRONLY | os.O_CREAT)
    for offset in range(0, len(data), 131072):
        await env.vfs.write(handle.fh, offset, data[offset:offset + 131072])
    # Five whole 1 MiB segments are below the end: all sent before the close.
    with trio.move_on_after(20):
        while len(_segment_names(env)) < 5:
            await trio.sleep(0.1)
    assert len(_segment_names(env)) == 5
    assert os.fstat(node.remote.fd).st_size < 2 * 1048576  # only the start was staged
    assert env.vfs.attr(node).size == len(data)
    with pytest.raises(FileNotFoundError):
        env.stores["public"].stat_file(["stream.bin"])  # nothing visible before close
    await env.vfs.flush(handle.fh)
    await env.vfs.release(handle.fh)
    assert len(_segment_names(env)) == 6
    assert env.stores["public"].read_range(["stream.bin"], 0, len(data) + 1) == data
    assert await env.read_file(node.ino) == data
    kept = _segment_names(env)

    # Rewriting the start after segments went up: they are dropped, the file is right.
    handle, node = await env.vfs.create(public, b"rewrite.bin", os.O_WRONLY | os.O_CREAT)
    first = os.urandom(3 * 1048576)
    await env.vfs.write(handle.fh, 0, first)
    await env.vfs.write(handle.fh, 0, b"REWRITTEN")
    await env.vfs.setattr(node.ino, size=2 * 1048576 + 7, fh=handle.fh)
    await env.vfs.flush(handle.fh)
    await env.vfs.release(handle.fh)
    expected = b"REWRITTEN" + first[9:2 * 1048576 + 7]
    assert env.stores["public"].read_range(["rewrite.bin"], 0, len(first)) == expected
    # The stream was read back into the staging file and its segments deleted; the SLO
    # written at close has its own three.
    with trio.move_on_after(20):
        while len(_segment_names(env) - kept) != 3:
            await trio.sleep(0.2)
    rewrite_segments = _segment_names(env) - kept
    assert len(rewrite_segments) == 3, rewrite_segments
    assert all(name.startswith("rewrite.bin/") for name in rewrite_segments)
    assert len({name.split("/")[1] for name in rewrite_segments}) == 1


@pytest.mark.parametrize("env", ["swift"], indirect=True)
async def test_stream_fsync_then_more_and_unlink(env: Env) -> None:
    """fsync publishes a streamed file; writing on after it still gives the whole file.
    Unlinking a file while it streams publishes nothing and leaves no segment behind."""
    public = await env.dir("public")
    first, second = os.urandom(3 * 1048576), os.urandom(1048576 + 5)
    handle, node = await env.vfs.create(public, b"grow.bin", os.O_RDWR | os.O_CREAT)
    await env.vfs.write(handle.fh, 0, first)
    await env.vfs.fsync(handle.fh, False)
    assert env.stores["public"].stat_file(["grow.bin"]).size == len(first)
    await env.vfs.write(handle.fh, len(first), second)
    assert await env.vfs.read(handle.fh, len(first) - 3, 8) == first[-3:] + second[:5]
    await env.vfs.flush(handle.fh)
    await env.vfs.release(handle.fh)
    assert env.stores["public"].read_range(["grow.bin"], 0, 8 << 20) == first + second
    kept = _segment_names(env)

    handle, node = await env.vfs.create(public, b"gone.bin", os.O_WRONLY | os.O_CREAT)
    await env.vfs.write(handle.fh, 0, os.urandom(4 * 1048576))
    await env.vfs.unlink(public, b"gone.bin")
    await env.vfs.flush(handle.fh)
    await env.vfs.release(handle.fh)
    with pytest.raises(FileNotFoundError):
        env.stores["public"].stat_file(["gone.bin"])
    with trio.move_on_after(20):
        while _segment_names(env) != kept:
            await trio.sleep(0.2)
    assert _segment_names(env) == kept


@pytest.mark.parametrize("env", ["swift"], indirect=True)
async def test_failed_stream_gives_eio_and_changes_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Swift failing in the middle of a streamed write (injected on the second segment's PUT):
    the writer gets EIO, the stored file keeps its old content, no segment stays, and the
    file can be written again."""
    public = await env.dir("public")
    ino = await env.write_file(public, "keep.bin", b"old content")
    store = env.stores["public"]
    before = _segment_names(env)
    real = store._put_chunked
    calls: list[str] = []

    def failing(container: str, name: str, chunks: Any, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) >= 2:
            raise StorageUnavailable("injected: Swift went away")
        return real(container, name, chunks, **kwargs)

    monkeypatch.setattr(store, "_put_chunked", failing)
    handle = await env.vfs.open(ino, os.O_WRONLY | os.O_TRUNC)
    with pytest.raises(OSError) as failure:
        for offset in range(0, 8 << 20, 1 << 20):
            await env.vfs.write(handle.fh, offset, os.urandom(1 << 20))
        await env.vfs.flush(handle.fh)
    assert failure.value.errno == errno.EIO
    await env.vfs.release(handle.fh)
    assert len(calls) >= 2
    assert store.read_range(["keep.bin"], 0, 100) == b"old content"
    assert await env.read_file(ino) == b"old content"
    with trio.move_on_after(20):
        while _segment_names(env) != before:
            await trio.sleep(0.2)
    assert _segment_names(env) == before
    monkeypatch.setattr(store, "_put_chunked", real)
    await env.vfs.setattr(ino, size=0)
    assert await env.write_file(public, "keep.bin", b"new content") == ino
    assert store.read_range(["keep.bin"], 0, 100) == b"new content"
