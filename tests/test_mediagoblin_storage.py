"""MediaGoblin's own storage tests (mediagoblin/tests/test_storage.py), re-expressed as a contract
that every backend keeps: BasicFileStorage, CloudFileStorage on the real Swift, and MountStorage
over each of them.

As in MediaGoblin, each test ends with its ``cleanup_storage``: every directory it made is removed
level by level with a non-recursive ``delete_dir`` that must return True, and then nothing at all may
be left in the store (MediaGoblin checks this with ``os.rmdir`` of its temporary directory; on Swift,
the container and its segments container must be empty).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import swiftclient
from werkzeug.utils import secure_filename

from goblinfs.storage import (
    InvalidFilepath,
    NoWebServing,
    StorageInterface,
    clean_listy_filepath,
    storage_system_from_config,
)
from goblinfs.storage import NotImplementedError as StorageNotImplementedError
from goblinfs.storage.cloudfiles import CloudFileStorage
from goblinfs.storage.filestorage import BasicFileStorage
from goblinfs.storage.mountstorage import MountStorage

from .conftest import drop_container, make_cloud_storage

BACKENDS = ["basic", "cloud", "mount-basic", "mount-cloud"]


class Case:
    """A store under test and a way to see everything it holds, behind its API."""

    def __init__(self, store: StorageInterface, backend: StorageInterface, tmp: Any,
                 swift_env: dict[str, Any] | None) -> None:
        self.store = store
        self.backend = backend
        self.tmp = tmp
        self.swift_env = swift_env

    def leftovers(self) -> list[str]:
        """Every file or object left behind in the store's place, whatever its kind."""
        if isinstance(self.backend, BasicFileStorage):
            found = []
            for root, dirs, files in os.walk(self.backend.base_dir):
                rel = os.path.relpath(root, self.backend.base_dir)
                found += [os.path.normpath(os.path.join(rel, name)) for name in dirs + files]
            return sorted(found)
        assert isinstance(self.backend, CloudFileStorage) and self.swift_env is not None
        conn = swiftclient.Connection(authurl=self.swift_env["auth_url"], user=self.swift_env["user"],
                                      key=self.swift_env["key"])
        names = []
        for container in (self.backend.container, self.backend.container + "_segments"):
            try:
                names += [f"{container}:{obj['name']}" for obj in conn.get_container(container, full_listing=True)[1]]
            except swiftclient.ClientException as exc:
                if exc.http_status != 404:
                    raise
        return sorted(names)


@pytest.fixture(params=BACKENDS)
def case(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Case]:
    kind: str = request.param
    swift_env = None
    if kind.endswith("basic"):
        base = tmp_path / "test_gmg_storage"
        base.mkdir()
        backend: StorageInterface = BasicFileStorage(str(base))
        container = None
    else:
        swift_env = request.getfixturevalue("swift_env")
        container = f"gfs-mg-{uuid.uuid4().hex[:10]}"
        backend = make_cloud_storage(swift_env, container, staging_dir=str(tmp_path))
    store: StorageInterface = backend
    if kind.startswith("mount-"):
        mounted = MountStorage()
        mounted.mount([], backend)
        store = mounted
    try:
        yield Case(store, backend, tmp_path, swift_env)
    finally:
        if container is not None and swift_env is not None:
            drop_container(swift_env, container)


def cleanup_storage(case: Case, *paths: list[str]) -> None:
    """MediaGoblin's cleanup: each path removed deepest level first, each removal True, nothing left."""
    for path in paths:
        for depth in range(len(path), 0, -1):
            assert case.store.delete_dir(path[:depth]) is True, f"delete_dir({path[:depth]})"
    assert case.leftovers() == []


def write(store: StorageInterface, path: list[str], data: bytes) -> None:
    with store.get_file(path, "wb") as f:
        f.write(data)


def test_clean_listy_filepath() -> None:
    assert clean_listy_filepath(["dir1", "dir2", "linooks.jpg"]) == ["dir1", "dir2", "linooks.jpg"]
    assert clean_listy_filepath(["/dir1/", "foo/../nasty", "linooks.jpg"]) == ["dir1", "foo_.._nasty", "linooks.jpg"]
    assert clean_listy_filepath(["../../../etc/", "passwd"]) == ["etc", "passwd"]
    with pytest.raises(InvalidFilepath):
        clean_listy_filepath(["../../", "linooks.jpg"])


def test_storage_system_from_config(tmp_path: Any) -> None:
    base = str(tmp_path) + "/a scratch folder/"
    store = storage_system_from_config({"base_url": "http://example.org/moodia/", "base_dir": base,
                                        "garbage_arg": "trash"})
    assert isinstance(store, BasicFileStorage)
    assert store.base_url == "http://example.org/moodia/"
    assert store.base_dir == base  # exactly, trailing slash kept


def test_file_exists(case: Case) -> None:
    write(case.store, ["dir1", "dir2", "filename.txt"], b"testing")
    assert case.store.file_exists(["dir1", "dir2", "filename.txt"])
    assert not case.store.file_exists(["dir1", "dir2", "thisfile.lol"])
    assert not case.store.file_exists(["dnedir1", "dnedir2", "somefile.lol"])
    case.store.delete_file(["dir1", "dir2", "filename.txt"])
    cleanup_storage(case, ["dir1", "dir2"])


def test_get_unique_filepath(case: Case) -> None:
    write(case.store, ["dir1", "dir2", "filename.txt"], b"testing")
    new_filepath = case.store.get_unique_filepath(["dir1", "dir2", "filename.txt"])
    assert new_filepath[:-1] == ["dir1", "dir2"]
    new_filename = new_filepath[-1]
    assert new_filename.endswith("filename.txt")
    assert len(new_filename) > len("filename.txt")
    assert new_filename == secure_filename(new_filename)
    case.store.delete_file(["dir1", "dir2", "filename.txt"])
    cleanup_storage(case, ["dir1", "dir2"])


def test_get_file(case: Case) -> None:
    filepath = ["dir1", "dir2", "ourfile.txt"]
    with case.store.get_file(filepath, "w") as f:
        f.write(b"First file")
    with case.store.get_file(filepath, "r") as f:
        assert f.read() == b"First file"
    if isinstance(case.backend, BasicFileStorage):
        with open(os.path.join(case.backend.base_dir, "dir1/dir2/ourfile.txt")) as text:
            assert text.read() == "First file"
    # A unique name next to it writes and reads on its own.
    new_filepath = case.store.get_unique_filepath(filepath)
    assert not case.store.file_exists(new_filepath)
    with case.store.get_file(new_filepath, "w") as f:
        f.write(b"Second file")
    with case.store.get_file(new_filepath, "r") as f:
        assert f.read() == b"Second file"
    with case.store.get_file(filepath, "r") as f:
        assert f.read() == b"First file"
    # A file in another directory reads back with the default mode, as bytes.
    write(case.store, ["testydir", "testyfile.txt"], b"testy file! so testy.")
    with case.store.get_file(["testydir", "testyfile.txt"]) as f:
        assert f.read() == b"testy file! so testy."
    case.store.delete_file(filepath)
    case.store.delete_file(new_filepath)
    case.store.delete_file(["testydir", "testyfile.txt"])
    cleanup_storage(case, ["dir1", "dir2"], ["testydir"])


def test_delete_file(case: Case) -> None:
    """MediaGoblin's exact sequence: the emptied directory still exists and deletes with True."""
    filepath = ["dir1", "dir2", "ourfile.txt"]
    write(case.store, filepath, b"Testing this file")
    assert case.store.file_exists(filepath)
    assert case.store.delete_dir(["dir1", "dir2"]) is False  # not empty
    assert case.store.file_exists(filepath)
    case.store.delete_file(filepath)
    assert not case.store.file_exists(filepath)
    assert case.store.file_exists(["dir1", "dir2"])  # the directory stays, as on a disk
    assert case.store.delete_dir(["dir1", "dir2"]) is True
    assert not case.store.file_exists(["dir1", "dir2"])
    assert case.store.file_exists(["dir1"])
    cleanup_storage(case, ["dir1"])


def test_delete_dir_of_missing_directory_is_false(case: Case) -> None:
    assert case.store.delete_dir(["never", "made"]) is False
    assert case.store.delete_dir(["never"]) is False
    assert case.leftovers() == []


def test_url_for_file(case: Case) -> None:
    if isinstance(case.backend, BasicFileStorage):
        with pytest.raises(NoWebServing):
            case.store.file_url(["dir1", "dir2", "filename.txt"])
    for base_url, expected in (("/media/", "/media/dir1/dir2/filename.txt"),
                               ("http://media.example.org/ourmedia/",
                                "http://media.example.org/ourmedia/dir1/dir2/filename.txt")):
        case.backend.base_url = base_url
        assert case.store.file_url(["dir1", "dir2", "filename.txt"]) == expected
    assert case.leftovers() == []


def test_get_local_path(case: Case) -> None:
    if isinstance(case.backend, BasicFileStorage):
        assert case.store.get_local_path(["dir1", "dir2", "filename.txt"]) == \
            os.path.join(case.backend.base_dir, "dir1/dir2/filename.txt")
        assert case.backend.local_storage is True
    else:
        assert case.backend.local_storage is False
        with pytest.raises(StorageNotImplementedError):  # MediaGoblin's own class
            case.store.get_local_path(["dir1", "dir2", "filename.txt"])


def test_copy_locally(case: Case) -> None:
    filepath = ["dir1", "dir2", "ourfile.txt"]
    write(case.store, filepath, b"Testing this file")
    new_file = case.tmp / "file2.txt"
    case.store.copy_locally(filepath, str(new_file))
    case.store.delete_file(filepath)
    assert new_file.read_bytes() == b"Testing this file"
    cleanup_storage(case, ["dir1", "dir2"])


@pytest.mark.parametrize("generic", [False, True], ids=["own", "general"])
def test_copy_local_to_storage(case: Case, generic: bool) -> None:
    """The store's own copy, and StorageInterface's general one (MediaGoblin's FakeRemoteStorage)."""
    local = case.tmp / "haha.txt"
    local.write_bytes(b"haha")
    filepath = ["dir1", "dir2", "copiedto.txt"]
    if generic:
        StorageInterface.copy_local_to_storage(case.store, str(local), filepath)
    else:
        case.store.copy_local_to_storage(str(local), filepath)
    with case.store.get_file(filepath, "rb") as f:
        assert f.read() == b"haha"
    if isinstance(case.backend, BasicFileStorage):
        with open(os.path.join(case.backend.base_dir, "dir1/dir2/copiedto.txt"), "rb") as f:
            assert f.read() == b"haha"
    case.store.delete_file(filepath)
    cleanup_storage(case, ["dir1", "dir2"])


def test_rename_keeps_the_source_directory(case: Case) -> None:
    """After moving a directory's only file elsewhere, the directory stays (rename(2) semantics)."""
    write(case.store, ["from", "only.txt"], b"moved")
    case.store.move(["from", "only.txt"], ["to", "only.txt"])
    assert case.store.file_exists(["from"])
    assert [entry.name for entry in case.store.list_dir(["from"])] == []
    case.store.delete_file(["to", "only.txt"])
    cleanup_storage(case, ["from"], ["to"])
