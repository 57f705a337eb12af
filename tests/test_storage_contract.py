"""One contract suite, run against every backend: BasicFileStorage, CloudFileStorage on the
real Swift, and MountStorage over each of them."""

from __future__ import annotations

import errno
import io
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.utils import secure_filename

from goblinfs.storage import (
    Entry,
    ExactPath,
    InvalidFilepath,
    NoWebServing,
    StorageInterface,
)
from goblinfs.storage.filestorage import BasicFileStorage
from goblinfs.storage.mountstorage import MountStorage

from .conftest import drop_container, make_cloud_storage

BACKENDS = ["basic", "cloud", "mount-basic", "mount-cloud"]


def _make(kind: str, request: pytest.FixtureRequest, tmp_path: Any, base_url: str | None) -> Iterator[Any]:
    if kind.endswith("basic"):
        base = tmp_path / "store"
        base.mkdir()
        backend: StorageInterface = BasicFileStorage(str(base), base_url)
        cleanup = None
    else:
        swift_env = request.getfixturevalue("swift_env")
        container = f"gfs-{uuid.uuid4().hex[:12]}"
        kw = {"base_url": base_url} if base_url else {}
        backend = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path), **kw)

        def cleanup() -> None:
            drop_container(swift_env, container)

    if kind.startswith("mount-"):
        store = MountStorage()
        store.mount([], backend)
        store.backend = backend  # type: ignore[attr-defined]
    else:
        store = backend
    try:
        yield store
    finally:
        if cleanup:
            cleanup()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    yield from _make(request.param, request, tmp_path, None)


@pytest.fixture(params=BACKENDS)
def web_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    yield from _make(request.param, request, tmp_path, "http://media.example.org/ourmedia/")


def write(store: StorageInterface, path: Any, data: bytes) -> None:
    with store.get_file(path, "wb") as f:
        f.write(data)


def read(store: StorageInterface, path: Any) -> bytes:
    with store.get_file(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- MediaGoblin API


def test_cleaning_examples(store: Any) -> None:
    write(store, ["dir1/", "foo/../nasty", "linker.jpg"], b"nasty")
    assert store.file_exists(["dir1", "foo_.._nasty", "linker.jpg"])
    assert read(store, ["dir1", "foo_.._nasty", "linker.jpg"]) == b"nasty"
    write(store, ["../../../etc/", "passwd"], b"not the real one")
    assert read(store, ["etc", "passwd"]) == b"not the real one"
    assert {e.name for e in store.list_dir([])} >= {"dir1", "etc"}
    with pytest.raises(InvalidFilepath):
        store.get_file(["../../", "linker.jpg"], "wb")
    with pytest.raises(InvalidFilepath):
        store.file_exists(["../../", "linker.jpg"])


def test_file_exists(store: Any) -> None:
    write(store, ["dir1", "dir2", "ourfile.txt"], b"x")
    assert store.file_exists(["dir1", "dir2", "ourfile.txt"])
    assert store.file_exists(("dir1", "dir2", "ourfile.txt"))
    assert not store.file_exists(["dir1", "dir2", "not_ourfile.txt"])
    assert not store.file_exists(["not_dir1", "not_dir2", "ourfile.txt"])
    assert store.file_exists(["dir1", "dir2"])  # directories exist too, as in MediaGoblin


def test_get_file_roundtrip_and_tuples(store: Any) -> None:
    path = ("dir1", "dir2", "filename.txt")
    with store.get_file(path, "w") as f:
        f.write(b"First file")
    with store.get_file(list(path), "r") as f:
        assert f.read() == b"First file"
    with store.get_file(path) as f:  # default mode reads, and gives bytes
        data = f.read()
    assert isinstance(data, bytes) and data == b"First file"
    with pytest.raises(FileNotFoundError):
        store.get_file(["dir1", "missing.txt"], "rb")


def test_write_accepts_a_file_object(store: Any) -> None:
    payload = os.urandom(300_000)
    with store.get_file(["up", "stream.bin"], "wb") as f:
        f.write(io.BytesIO(payload))
    assert read(store, ["up", "stream.bin"]) == payload
    assert store.get_file_size(["up", "stream.bin"]) == len(payload)


def test_writer_is_not_seen_until_close(store: Any) -> None:
    write(store, ["w", "f.txt"], b"old content")
    f = store.get_file(["w", "f.txt"], "wb")
    f.write(b"new content, half")
    assert read(store, ["w", "f.txt"]) == b"old content"
    f.write(b" written")
    f.close()
    assert read(store, ["w", "f.txt"]) == b"new content, half written"
    g = store.get_file(["w", "new.txt"], "wb")
    g.write(b"x")
    assert not store.file_exists(["w", "new.txt"])
    g.close()
    assert store.file_exists(["w", "new.txt"])


def test_failed_write_keeps_old_content(store: Any) -> None:
    write(store, ["k.txt"], b"keep me")
    with pytest.raises(RuntimeError), store.get_file(["k.txt"], "wb") as f:
        f.write(b"garbage")
        raise RuntimeError("crash in the middle")
    assert read(store, ["k.txt"]) == b"keep me"
    assert [e.name for e in store.list_dir([])] == ["k.txt"]


def test_modes_append_and_exclusive(store: Any) -> None:
    write(store, ["m.txt"], b"abc")
    with store.get_file(["m.txt"], "ab") as f:
        f.write(b"def")
    assert read(store, ["m.txt"]) == b"abcdef"
    with pytest.raises(FileExistsError):
        store.get_file(["m.txt"], "xb")
    with store.get_file(["x.txt"], "xb") as f:
        f.write(b"only once")
    assert read(store, ["x.txt"]) == b"only once"
    with pytest.raises(ValueError):
        store.get_file(["m.txt"], "rt")


def test_get_unique_filepath(store: Any) -> None:
    fresh = store.get_unique_filepath(["dir1", "dir2", "file name.txt"])
    assert fresh == ["dir1", "dir2", "file_name.txt"]
    write(store, fresh, b"taken")
    new = store.get_unique_filepath(("dir1", "dir2", "file name.txt"))
    assert new[:-1] == ["dir1", "dir2"]
    assert new[-1].endswith("file_name.txt") and len(new[-1]) > len("file_name.txt")
    assert new[-1] == secure_filename(new[-1])
    uuid.UUID(new[-1][:36])
    assert not store.file_exists(new)


def test_delete_file(store: Any) -> None:
    write(store, ["dir1", "dir2", "ourfile.txt"], b"x")
    assert store.delete_dir(["dir1", "dir2"]) is False
    store.delete_file(["dir1", "dir2", "ourfile.txt"])
    assert not store.file_exists(["dir1", "dir2", "ourfile.txt"])
    with pytest.raises(FileNotFoundError):
        store.delete_file(["dir1", "dir2", "ourfile.txt"])
    with pytest.raises(OSError):
        store.delete_file(["nothing", "here.txt"])


def test_delete_dir(store: Any) -> None:
    store.make_dir(["empty"])
    assert store.delete_dir(["empty"]) is True
    assert not store.file_exists(["empty"])
    assert store.delete_dir(["empty"]) is False  # already gone
    write(store, ["full", "a", "b.txt"], b"1")
    write(store, ["full", "c.txt"], b"2")
    assert store.delete_dir(["full"]) is False
    assert store.file_exists(["full", "c.txt"])
    assert store.delete_dir(["full"], recursive=True) is True
    assert not store.file_exists(["full"])
    assert not store.file_exists(["full", "a", "b.txt"])
    write(store, ["plain.txt"], b"1")
    assert store.delete_dir(["plain.txt"]) is False


def test_file_url(web_store: Any) -> None:
    assert web_store.file_url(["dir1", "dir2", "filename.txt"]) == \
        "http://media.example.org/ourmedia/dir1/dir2/filename.txt"
    assert web_store.file_url(["médià", "ĉu vi.jpg"]) == "http://media.example.org/ourmedia/media/cu_vi.jpg"


def test_file_url_without_base_url(store: Any) -> None:
    backend = getattr(store, "backend", store)
    if isinstance(backend, BasicFileStorage):
        with pytest.raises(NoWebServing):
            store.file_url(["dir1", "filename.txt"])
    else:
        url = store.file_url(["dir1", "file name.txt"])
        assert url.startswith("http://127.0.0.1:") and url.endswith("/dir1/file_name.txt")


def test_get_file_size(store: Any) -> None:
    write(store, ["s", "size.bin"], b"x" * 12345)
    assert store.get_file_size(["s", "size.bin"]) == 12345
    with pytest.raises(FileNotFoundError):
        store.get_file_size(["s", "missing.bin"])


def test_copy_locally_and_back(store: Any, tmp_path: Any) -> None:
    write(store, ["dir1", "dir2", "ourfile.txt"], b"Testing this file")
    dest = tmp_path / "file2.txt"
    store.copy_locally(["dir1", "dir2", "ourfile.txt"], str(dest))
    store.delete_file(["dir1", "dir2", "ourfile.txt"])
    assert dest.read_bytes() == b"Testing this file"
    local = tmp_path / "local.txt"
    local.write_bytes(b"haha")
    store.copy_local_to_storage(str(local), ["new1", "new2", "copiedto.txt"])
    assert read(store, ["new1", "new2", "copiedto.txt"]) == b"haha"


# ---------------------------------------------------------------- filesystem extension


def test_list_dir_and_stat(store: Any) -> None:
    write(store, ["d", "a.txt"], b"12345")
    write(store, ["d", "sub", "b.txt"], b"1")
    store.make_dir(["d", "empty"])
    entries = {e.name: e for e in store.list_dir(["d"])}
    assert set(entries) == {"a.txt", "sub", "empty"}
    assert entries["a.txt"].is_dir is False and entries["a.txt"].size == 5
    assert entries["a.txt"].etag
    assert entries["sub"].is_dir and entries["empty"].is_dir
    assert entries["a.txt"].mtime_ns > 0
    st = store.stat(["d", "a.txt"])
    assert isinstance(st, Entry) and st.size == 5 and not st.is_dir
    assert st.etag == entries["a.txt"].etag
    assert store.stat(["d", "sub"]).is_dir
    assert store.list_dir(["d", "empty"]) == []
    with pytest.raises(FileNotFoundError):
        store.list_dir(["nope"])
    with pytest.raises(NotADirectoryError):
        store.list_dir(["d", "a.txt"])
    with pytest.raises(FileNotFoundError):
        store.stat(["d", "nope.txt"])


def test_etag_changes_with_content(store: Any) -> None:
    write(store, ["e.txt"], b"one")
    first = store.stat(["e.txt"]).etag
    write(store, ["e.txt"], b"two!")
    second = store.stat(["e.txt"]).etag
    assert first and second and first != second


def test_read_range(store: Any) -> None:
    data = bytes(range(256)) * 40
    write(store, ["r.bin"], data)
    assert store.read_range(["r.bin"], 0, 10) == data[:10]
    assert store.read_range(["r.bin"], 1000, 500) == data[1000:1500]
    assert store.read_range(["r.bin"], len(data) - 3, 100) == data[-3:]
    assert store.read_range(["r.bin"], len(data), 100) == b""
    assert store.read_range(["r.bin"], len(data) + 50, 100) == b""


def test_large_file_roundtrip(store: Any, tmp_path: Any) -> None:
    # 3 MiB: above the test Swift's segment size, so a segmented (SLO) object there.
    data = os.urandom(3 * 1048576 + 123)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    entry = store.store_local_file(str(local), ["big", "big.bin"])
    assert entry.size == len(data)
    assert store.get_file_size(["big", "big.bin"]) == len(data)
    assert read(store, ["big", "big.bin"]) == data
    edge = 1048576 - 10
    assert store.read_range(["big", "big.bin"], edge, 20) == data[edge:edge + 20]
    listed = {e.name: e for e in store.list_dir(["big"])}
    assert listed["big.bin"].size == len(data)
    assert listed["big.bin"].etag == store.stat(["big", "big.bin"]).etag == entry.etag
    store.delete_file(["big", "big.bin"])
    assert not store.file_exists(["big", "big.bin"])


def test_move_file(store: Any) -> None:
    write(store, ["src", "a.txt"], b"content a")
    store.set_mtime(["src", "a.txt"], 1_500_000_000_123_456_789)
    store.move(["src", "a.txt"], ["dst", "b.txt"])
    assert not store.file_exists(["src", "a.txt"])
    assert read(store, ["dst", "b.txt"]) == b"content a"
    assert store.stat(["dst", "b.txt"]).mtime_ns == 1_500_000_000_123_456_789
    write(store, ["dst", "c.txt"], b"replaced soon")
    store.move(["dst", "b.txt"], ["dst", "c.txt"])
    assert read(store, ["dst", "c.txt"]) == b"content a"
    assert {e.name for e in store.list_dir(["dst"])} == {"c.txt"}
    with pytest.raises(FileNotFoundError):
        store.move(["dst", "missing"], ["dst", "x"])


def test_move_directory(store: Any) -> None:
    write(store, ["tree", "a.txt"], b"a")
    write(store, ["tree", "sub", "b.txt"], b"b")
    store.make_dir(["tree", "sub", "empty"])
    store.move(["tree"], ["moved", "tree2"])
    assert not store.file_exists(["tree"])
    assert read(store, ["moved", "tree2", "a.txt"]) == b"a"
    assert read(store, ["moved", "tree2", "sub", "b.txt"]) == b"b"
    assert store.list_dir(["moved", "tree2", "sub", "empty"]) == []
    with pytest.raises(OSError) as exc:
        store.move(["moved"], ["moved", "tree2", "inside"])
    assert exc.value.errno == errno.EINVAL
    write(store, ["other", "x.txt"], b"x")
    with pytest.raises(OSError) as exc:
        store.move(["moved", "tree2"], ["other"])
    assert exc.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    assert read(store, ["other", "x.txt"]) == b"x"


def test_make_dir_persists(store: Any) -> None:
    store.make_dir(["p", "q", "r"])
    assert store.list_dir(["p", "q", "r"]) == []
    assert [e.name for e in store.list_dir(["p", "q"])] == ["r"]
    assert store.stat(["p", "q", "r"]).is_dir
    with pytest.raises(FileExistsError):
        store.make_dir(["p", "q", "r"])
    write(store, ["p", "f.txt"], b"f")
    with pytest.raises(FileExistsError):
        store.make_dir(["p", "f.txt"])


def test_set_mtime_exact(store: Any) -> None:
    write(store, ["t", "f.txt"], b"f")
    mtime = 1_234_567_890_987_654_321
    store.set_mtime(["t", "f.txt"], mtime)
    assert store.stat(["t", "f.txt"]).mtime_ns == mtime
    assert {e.name: e.mtime_ns for e in store.list_dir(["t"])}["f.txt"] == mtime
    assert read(store, ["t", "f.txt"]) == b"f"


def test_store_local_file_with_mtime(store: Any, tmp_path: Any) -> None:
    local = tmp_path / "l.txt"
    local.write_bytes(b"local data")
    entry = store.store_local_file(str(local), ["sl", "l.txt"], mtime_ns=1_600_000_000_000_000_001)
    assert entry.size == 10 and entry.mtime_ns == 1_600_000_000_000_000_001
    assert store.stat(["sl", "l.txt"]).etag == entry.etag
    assert {e.name: e.mtime_ns for e in store.list_dir(["sl"])}["l.txt"] == 1_600_000_000_000_000_001


def test_stat_file(store: Any) -> None:
    write(store, ["sf", "a.txt"], b"abc")
    entry = store.stat_file(["sf", "a.txt"])
    assert (entry.name, entry.is_dir, entry.size) == ("a.txt", False, 3)
    assert (entry.etag, entry.mtime_ns) == (store.stat(["sf", "a.txt"]).etag, store.stat(["sf", "a.txt"]).mtime_ns)
    with pytest.raises(IsADirectoryError):
        store.stat_file(["sf"])
    with pytest.raises(FileNotFoundError):
        store.stat_file(["sf", "missing.txt"])


def test_new_never_replaces(store: Any, tmp_path: Any) -> None:
    """new=True (the caller saw nothing there) creates in one step, but never replaces."""
    local = tmp_path / "n.txt"
    local.write_bytes(b"first")
    entry = store.store_local_file(str(local), ["nw", "n.txt"], mtime_ns=1_600_000_000_000_000_003, new=True)
    assert entry.size == 5 and store.stat(["nw", "n.txt"]).mtime_ns == 1_600_000_000_000_000_003
    local.write_bytes(b"second, longer")
    with pytest.raises(FileExistsError):
        store.store_local_file(str(local), ["nw", "n.txt"], new=True)
    assert read(store, ["nw", "n.txt"]) == b"first"
    store.make_dir(["nw", "sub"], new=True)
    assert store.stat(["nw", "sub"]).is_dir
    with pytest.raises(FileExistsError):
        store.make_dir(["nw", "sub"], new=True)
    assert {e.name: e.is_dir for e in store.list_dir(["nw"])} == {"n.txt": False, "sub": True}


def test_exact_names(store: Any) -> None:
    names = ["My Photo.jpg", "日本.txt", "ünï cödé.png", ".hidden"]
    for name in names:
        write(store, ExactPath(["exact dir", name]), name.encode())
    assert {e.name for e in store.list_dir(ExactPath(["exact dir"]))} == set(names)
    for name in names:
        assert read(store, ExactPath(["exact dir", name])) == name.encode()
    # The cleaned name is another name.
    assert not store.file_exists(["exact dir", "My Photo.jpg"])
    for bad in ["", ".", "..", "a/b", "nul\0"]:
        with pytest.raises(InvalidFilepath):
            store.stat(ExactPath(["exact dir", bad]))


def test_cleaned_unicode_and_spaces(store: Any) -> None:
    write(store, ["i contain cool ümläuts.txt"], b"u")
    assert [e.name for e in store.list_dir([])] == ["i_contain_cool_umlauts.txt"]
    assert read(store, ["i_contain_cool_umlauts.txt"]) == b"u"
    with pytest.raises(InvalidFilepath):
        write(store, ["日本語"], b"x")


def test_concurrent_writers_one_name(store: Any) -> None:
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            write(store, ["c.bin"], bytes([i]) * 50_000)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = read(store, ["c.bin"])
    assert len(data) == 50_000 and len(set(data)) == 1  # one whole version, never a mix


def test_space(store: Any) -> None:
    write(store, ["sp.bin"], b"x" * 1000)
    space = store.space()
    assert space.used >= 0
    if space.total is not None:
        assert space.total >= space.used and space.free is not None and space.free <= space.total
