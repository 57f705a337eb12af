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
