"""MediaGoblin's MountStorage routing, working, over two local stores."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from goblinfs.storage.filestorage import BasicFileStorage
from goblinfs.storage.mountstorage import MountError, MountStorage


@pytest.fixture
def stores(tmp_path: Any) -> tuple[MountStorage, BasicFileStorage, BasicFileStorage, BasicFileStorage]:
    dirs = []
    for name in ("root", "me", "sp"):
        (tmp_path / name).mkdir()
        dirs.append(BasicFileStorage(str(tmp_path / name), f"/{name}/"))
    mount = MountStorage()
    mount.mount([], dirs[0])
    mount.mount(["media_entries"], dirs[1])
    mount.mount(["media_entries", "special"], dirs[2])
    return mount, dirs[0], dirs[1], dirs[2]


def test_resolve(stores: Any) -> None:
    mount, root, me, sp = stores
    assert mount.resolve_to_backend(["x", "y"]) == (root, ["x", "y"])
    assert mount.resolve_to_backend(["media_entries", "1", "a.jpg"]) == (me, ["1", "a.jpg"])
    assert mount.resolve_to_backend(["media_entries", "special", "z"]) == (sp, ["z"])
    assert mount.resolve_to_backend(["media_entries"]) == (me, [])


def test_mount_rules() -> None:
    mount = MountStorage()
    mount.mount(["a", "b"], BasicFileStorage("/nonexistent"))
    with pytest.raises(AssertionError, match="That path is already mounted"):
        mount.mount(["a", "b"], BasicFileStorage("/nonexistent"))
    with pytest.raises(AssertionError, match="A longer path is already mounted here"):
        mount.mount(["a"], BasicFileStorage("/nonexistent"))
    with pytest.raises(MountError):
        mount.resolve_to_backend(["elsewhere"])


def test_forwarding(stores: Any, tmp_path: Any) -> None:
    mount, root, me, sp = stores
    with mount.get_file(["media_entries", "1", "a.jpg"], "wb") as f:
        f.write(b"entry")
    assert me.file_exists(["1", "a.jpg"]) and not root.file_exists(["media_entries", "1", "a.jpg"])
    assert mount.file_url(["media_entries", "1", "a.jpg"]) == "/me/1/a.jpg"
    assert mount.get_file_size(["media_entries", "1", "a.jpg"]) == 5
    assert mount.get_local_path(["media_entries", "1", "a.jpg"]) == str(tmp_path / "me" / "1" / "a.jpg")
    assert mount.delete_dir(["media_entries", "1"]) is False
    mount.delete_file(["media_entries", "1", "a.jpg"])
    assert mount.delete_dir(["media_entries", "1"]) is True
    # The mount points show in the listing of the store above them.
    assert {e.name for e in mount.list_dir([])} == {"media_entries"}
    assert {e.name for e in mount.list_dir(["media_entries"])} == {"special"}
    with mount.get_file(["top.txt"], "wb") as f:
        f.write(b"t")
    with pytest.raises(OSError) as exc:
        mount.move(["top.txt"], ["media_entries", "top.txt"])
    assert exc.value.errno == errno.EXDEV
    unique = mount.get_unique_filepath(["top.txt"])
    assert unique != ["top.txt"] and unique[0].endswith("-top.txt")
