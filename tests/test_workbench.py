"""Workbench, WorkbenchManager, localized_file (MediaGoblin's four cases) and the read cache."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goblinfs.storage.filestorage import BasicFileStorage
from goblinfs.workbench import NoCacheSpace, ReadCache, Workbench, WorkbenchManager

from .conftest import drop_container, make_cloud_storage


class FakeRemoteStorage(BasicFileStorage):
    """A local directory that claims to be remote, as in MediaGoblin's tests; counts downloads."""

    local_storage = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.downloads = 0

    def copy_locally(self, filepath: Any, dest_path: str) -> None:
        self.downloads += 1
        time.sleep(0.05)  # widen the window for concurrent readers
        with self.get_file(filepath, "rb") as src, open(dest_path, "wb") as dst:
            dst.write(src.read())


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A private tmpfs of this size mounted at path for the block (we are root), always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


class ShortRemoteStorage(FakeRemoteStorage):
    """Its downloads stop early, as a GET whose body was cut short without an error."""

    def copy_locally(self, filepath: Any, dest_path: str) -> None:
        self.downloads += 1
        with self.get_file(filepath, "rb") as src, open(dest_path, "wb") as dst:
            dst.write(src.read()[:-10])


@pytest.fixture
def manager(tmp_path: Any) -> Any:
    base = tmp_path / "workbench"
    mgr = WorkbenchManager(str(base))
    yield mgr
    leftovers = [n for n in os.listdir(base) if n != "cache"]
    assert leftovers == []  # every workbench destroyed


def test_create_and_destroy(manager: WorkbenchManager) -> None:
    wb = manager.create()
    assert os.path.isdir(wb.dir) and wb.dir.startswith(manager.base_workbench_dir)
    assert oct(os.stat(wb.dir).st_mode & 0o777) == "0o700"
    assert wb.joinpath("temp.txt") == os.path.join(wb.dir, "temp.txt")
    with open(wb.joinpath("temp.txt"), "w") as f:
        f.write("x")
    path = wb.dir
    wb.destroy()
    assert not os.path.exists(path)
    assert repr(wb) == "None"
    with manager.create() as wb2:
        inside = wb2.dir
    assert not os.path.exists(inside)


def test_localized_file_four_cases(manager: WorkbenchManager, tmp_path: Any) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "remote").mkdir()
    local = BasicFileStorage(str(tmp_path / "local"))
    remote = FakeRemoteStorage(str(tmp_path / "remote"))
    fp = ["dir1", "dir2", "ourfile.txt"]
    for store in (local, remote):
        with store.get_file(fp, "wb") as f:
            f.write(b"Our file")
    with manager.create() as wb:
        assert wb.localized_file(local, fp) == os.path.join(str(tmp_path / "local"), "dir1/dir2/ourfile.txt")
        path = wb.localized_file(remote, fp)
        assert path == os.path.join(wb.dir, "ourfile.txt") and Path(path).read_bytes() == b"Our file"
        path = wb.localized_file(remote, fp, "thisfile")
        assert path == os.path.join(wb.dir, "thisfile.txt") and Path(path).read_bytes() == b"Our file"
        path = wb.localized_file(remote, fp, "thisfile.text", False)
        assert path == os.path.join(wb.dir, "thisfile.text") and Path(path).read_bytes() == b"Our file"


def test_localized_file_from_swift(manager: WorkbenchManager, swift_env: Any, tmp_path: Any) -> None:
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    store = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path))
    try:
        with store.get_file(["media_entries", "1", "a.png"], "wb") as f:
            f.write(b"png bytes")
        with manager.create() as wb:
            path = wb.localized_file(store, ["media_entries", "1", "a.png"], "source")
            assert path == os.path.join(wb.dir, "source.png") and Path(path).read_bytes() == b"png bytes"
            cached = manager.cache.localize(store, ["media_entries", "1", "a.png"])
            assert Path(cached).read_bytes() == b"png bytes"
            assert manager.cache.misses == 1
            again = manager.cache.localize(store, ["media_entries", "1", "a.png"])
            assert again == cached and manager.cache.hits == 1
            with store.get_file(["media_entries", "1", "a.png"], "wb") as f:
                f.write(b"new png bytes")
            fresh = manager.cache.localize(store, ["media_entries", "1", "a.png"])
            assert Path(fresh).read_bytes() == b"new png bytes" and manager.cache.misses == 2
    finally:
        drop_container(swift_env, container)


def _remote(tmp_path: Any, files: dict[str, bytes]) -> FakeRemoteStorage:
    (tmp_path / "remote").mkdir(exist_ok=True)
    store = FakeRemoteStorage(str(tmp_path / "remote"))
    for name, data in files.items():
        with store.get_file([name], "wb") as f:
            f.write(data)
    return store


def test_cache_reuse_and_etag_invalidation(tmp_path: Any) -> None:
    store = _remote(tmp_path, {"a.bin": b"A" * 100})
    cache = ReadCache(str(tmp_path / "cache"), 10_000)
    first = cache.localize(store, ["a.bin"])
    second = cache.localize(store, ["a.bin"])
    assert first == second and store.downloads == 1 and cache.hits == 1
    assert cache.lookup(store, ["a.bin"], store.stat(["a.bin"]).etag) == first
    with store.get_file(["a.bin"], "wb") as f:
        f.write(b"B" * 120)
    assert cache.lookup(store, ["a.bin"], store.stat(["a.bin"]).etag) is None
    third = cache.localize(store, ["a.bin"])
    assert Path(third).read_bytes() == b"B" * 120 and store.downloads == 2
    assert cache.total == 120 and len(cache) == 1


def test_cache_lru_eviction_bounded(tmp_path: Any) -> None:
    store = _remote(tmp_path, {f"f{i}.bin": bytes([i]) * 400 for i in range(5)})
    cache = ReadCache(str(tmp_path / "cache"), 1000)
    paths = {}
    for i in range(3):
        paths[i] = cache.localize(store, [f"f{i}.bin"])
        assert cache.total <= 1000
    # f0 was least recently used when f2 came in: evicted; f1 and f2 stay.
    assert not os.path.exists(paths[0]) and os.path.exists(paths[1]) and os.path.exists(paths[2])
    cache.localize(store, ["f1.bin"])  # f1 is now the most recent
    cache.localize(store, ["f3.bin"])
    assert os.path.exists(paths[1]) and not os.path.exists(paths[2])
    assert cache.total == 800
    data_files = [n for n in os.listdir(tmp_path / "cache") if n.endswith(".data")]
    assert len(data_files) == 2


def test_cache_survives_restart(tmp_path: Any) -> None:
    store = _remote(tmp_path, {"a.bin": b"A" * 100})
    cache = ReadCache(str(tmp_path / "cache"), 10_000)
    path = cache.localize(store, ["a.bin"])
    open(os.path.join(tmp_path, "cache", "junk.part-1"), "wb").close()
    reopened = ReadCache(str(tmp_path / "cache"), 10_000)
    assert reopened.localize(store, ["a.bin"]) == path and store.downloads == 1
    assert not os.path.exists(os.path.join(tmp_path, "cache", "junk.part-1"))


def test_cache_concurrent_readers_download_once(tmp_path: Any) -> None:
    store = _remote(tmp_path, {"a.bin": os.urandom(50_000)})
    cache = ReadCache(str(tmp_path / "cache"), 1_000_000)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.localize(store, ["a.bin"]))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and store.downloads == 1
    assert Path(results[0]).read_bytes() == Path(store.get_local_path(["a.bin"])).read_bytes()


def test_failed_download_leaves_nothing(tmp_path: Any) -> None:
    store = _remote(tmp_path, {})
    cache = ReadCache(str(tmp_path / "cache"), 1000)
    with pytest.raises(FileNotFoundError):
        cache.localize(store, ["missing.bin"], etag="x")
    assert os.listdir(tmp_path / "cache") == [] and cache.total == 0


def test_workbench_str(tmp_path: Any) -> None:
    wb = Workbench(str(tmp_path))
    assert str(wb) == str(tmp_path) and repr(wb) == str(tmp_path)


def test_cache_keys_differ_per_store(tmp_path: Any) -> None:
    class Remote:
        local_storage = False

        def __init__(self, container: str) -> None:
            self.auth_url = "http://127.0.0.1:1/auth/v1.0"
            self.user = "test:tester"
            self.container = container

    queue_key = ReadCache.key_for(Remote("media-queue"), ["a.jpg"])[0]  # type: ignore[arg-type]
    public_key = ReadCache.key_for(Remote("media"), ["a.jpg"])[0]  # type: ignore[arg-type]
    assert queue_key != public_key
    assert ReadCache.key_for(Remote("media"), ["a.jpg"])[0] == public_key  # type: ignore[arg-type]


def test_localize_refuses_a_short_download(tmp_path: Any) -> None:
    store = _remote(tmp_path, {"a.bin": os.urandom(5000)})
    short = ShortRemoteStorage(str(tmp_path / "remote"))
    cache = ReadCache(str(tmp_path / "cache"), 1_000_000)
    with pytest.raises(OSError) as info:
        cache.localize(short, ["a.bin"])  # the size comes with the stat
    assert info.value.errno == errno.EIO
    etag = store.stat(["a.bin"]).etag or ""
    with pytest.raises(OSError):
        cache.localize(short, ["a.bin"], etag, size=5000)
    assert os.listdir(tmp_path / "cache") == [] and cache.total == 0 and len(cache) == 0
    assert cache.lookup(short, ["a.bin"], etag) is None


def test_put_refuses_and_lookup_drops_a_copy_of_the_wrong_size(tmp_path: Any) -> None:
    store = _remote(tmp_path, {"a.bin": b"A" * 100})
    cache = ReadCache(str(tmp_path / "cache"), 10_000)
    part = tmp_path / "cache" / "x.part-1"
    part.write_bytes(b"A" * 60)
    with pytest.raises(OSError) as info:
        cache.put(store, ["a.bin"], "e1", str(part), size=100)
    assert info.value.errno == errno.EIO and part.exists() and cache.total == 0 and len(cache) == 0
    cache.put(store, ["a.bin"], "e1", str(part))  # an older copy recorded with its own size
    assert cache.lookup(store, ["a.bin"], "e1", 60) is not None
    assert cache.lookup(store, ["a.bin"], "e1", 100) is None  # not the object: dropped
    assert len(cache) == 0 and cache.total == 0 and [n for n in os.listdir(tmp_path / "cache")] == []


def test_usage(tmp_path: Any) -> None:
    store = _remote(tmp_path, {"a.bin": b"A" * 100, "b.bin": b"B" * 50})
    cache = ReadCache(str(tmp_path / "cache"), 10_000)
    assert cache.usage() == (0, 10_000)
    cache.localize(store, ["a.bin"])
    cache.localize(store, ["b.bin"])
    assert cache.usage() == (150, 10_000)


def test_make_room_evicts_lru_for_the_disk(tmp_path: Any) -> None:
    mib = 1048576
    with tmpfs(tmp_path / "fs", "4m") as fs:
        store = _remote(tmp_path, {f"f{i}.bin": bytes([i]) * mib for i in range(3)})
        cache = ReadCache(str(fs / "cache"), 100 * mib)
        paths = [cache.localize(store, [f"f{i}.bin"]) for i in range(3)]
        assert cache.total == 3 * mib
        assert not cache.make_room(5 * mib)  # can never fit on this disk: nothing evicted for it
        assert cache.total == 3 * mib and all(os.path.exists(p) for p in paths)
        assert cache.make_room(2 * mib + mib // 2)  # the least recently used go first
        assert not os.path.exists(paths[0]) and os.path.exists(paths[2])
        assert cache.total < 3 * mib
        assert not cache.make_room(200 * mib) and not cache.fits(200 * mib)  # bigger than the bound


def test_localize_on_a_full_disk_keeps_nothing(tmp_path: Any) -> None:
    mib = 1048576
    with tmpfs(tmp_path / "fs", "1m") as fs:
        store = _remote(tmp_path, {"big.bin": os.urandom(2 * mib), "ok.bin": b"ok"})
        cache = ReadCache(str(fs / "cache"), 100 * mib)
        cache.localize(store, ["ok.bin"])
        with pytest.raises(NoCacheSpace) as info:
            cache.localize(store, ["big.bin"])  # known size: refused before downloading
        assert info.value.errno == errno.ENOSPC and store.downloads == 1
        etag = store.stat(["big.bin"]).etag or ""
        with pytest.raises(NoCacheSpace):
            cache.localize(store, ["big.bin"], etag)  # unknown size: ENOSPC while writing, evict, again
        assert store.downloads == 3
        # The small copy was evicted to try again; no part file or copy of big.bin is left.
        assert sorted(os.listdir(fs / "cache")) == [] and cache.total == 0
