"""A first real mount: write, list, read back, see it in the store behind."""

from __future__ import annotations

import os

from .conftest import MountCase


def test_write_read_list(mount_case: MountCase) -> None:
    target = mount_case.public / "My Photo.jpg"
    target.write_bytes(b"jpeg data")
    assert target.read_bytes() == b"jpeg data"
    assert "My_Photo.jpg" in os.listdir(mount_case.public)
    assert sorted(os.listdir(mount_case.mnt)) == ["public", "queue"]
    store = mount_case.store("public")
    assert store.read_range(["My_Photo.jpg"], 0, 100) == b"jpeg data"


def test_directory_outlives_its_last_file(mount_case: MountCase) -> None:
    """rm of a directory's last file leaves the directory, also on Swift and for another mount."""
    store = mount_case.store("public")  # what another mount, or MediaGoblin, sees
    for name in ("a.jpg", "b.jpg"):  # as MediaGoblin writes: on Swift, no directory markers
        with store.get_file(["album", "2026", name], "wb") as f:
            f.write(b"x")
    assert sorted(os.listdir(mount_case.public / "album" / "2026")) == ["a.jpg", "b.jpg"]
    os.unlink(mount_case.public / "album" / "2026" / "a.jpg")
    os.unlink(mount_case.public / "album" / "2026" / "b.jpg")
    assert store.file_exists(["album", "2026"])
    assert store.list_dir(["album", "2026"]) == []
    mount_case.remount()  # nothing cached: the store itself answers
    assert os.listdir(mount_case.public / "album" / "2026") == []
    os.rmdir(mount_case.public / "album" / "2026")
    assert os.listdir(mount_case.public / "album") == []
    os.rmdir(mount_case.public / "album")
    assert os.listdir(mount_case.public) == []


def test_rmdir_of_a_directory_emptied_here_refuses_what_others_added(mount_case: MountCase) -> None:
    """rm -r empties a directory through the mount, then removes it without listing it again:
    a file another writer (MediaGoblin, another mount) put there meanwhile is ENOTEMPTY, and it
    stays with its bytes; once it is gone, the rmdir works."""
    import errno

    import pytest

    store = mount_case.store("public")
    album = mount_case.public / "album"
    album.mkdir()
    (album / "mine.jpg").write_bytes(b"mine")
    assert os.listdir(album) == ["mine.jpg"]  # listed here: the mount knows its content
    os.unlink(album / "mine.jpg")  # ... and knows it empty now
    theirs = os.urandom(1000)
    with store.get_file(["album", "theirs.jpg"], "wb") as f:
        f.write(theirs)
    with pytest.raises(OSError) as raised:
        os.rmdir(album)
    assert raised.value.errno == errno.ENOTEMPTY
    with store.get_file(["album", "theirs.jpg"], "rb") as f:
        assert f.read() == theirs
    assert sorted(os.listdir(album)) == ["theirs.jpg"]  # the refusal refreshed the listing
    os.unlink(album / "theirs.jpg")
    os.rmdir(album)
    assert not store.file_exists(["album", "theirs.jpg"])
    assert os.listdir(mount_case.public) == []
