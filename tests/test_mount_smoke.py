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
