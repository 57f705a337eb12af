"""Objects written by the swift CLI (python-swiftclient's `swift`), read and changed through a
real goblinfs mount: Dynamic and Static Large Objects, pseudo-directories without markers,
unclean names, `name/` objects that hold data, objects without goblinfs's mtime metadata."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import swiftclient

from .conftest import drop_container
from .mountutil import Mounted, write_swift_config

pytestmark = [pytest.mark.swift, pytest.mark.fuse]

SWIFT_CLI = str(Path(sys.executable).with_name("swift"))


class Site:
    def __init__(self, swift_env: dict[str, Any], tmp_path: Path) -> None:
        self.env = swift_env
        self.tmp = tmp_path
        self.container = f"gfs-cli-{uuid.uuid4().hex[:10]}"
        self.conn = swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"],
                                           key=swift_env["key"])
        self.conn.put_container(self.container)

    def swift(self, *args: str, cwd: Path | None = None) -> str:
        cmd = [SWIFT_CLI, "-A", self.env["auth_url"], "-U", self.env["user"], "-K", self.env["key"], *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
        assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"
        return result.stdout

    def segments(self) -> list[str]:
        try:
            return [o["name"] for o in self.conn.get_container(self.container + "_segments", full_listing=True)[1]]
        except swiftclient.ClientException:
            return []


@pytest.fixture
def site(swift_env: dict[str, Any], tmp_path: Path) -> Iterator[Site]:
    s = Site(swift_env, tmp_path)
    try:
        yield s
    finally:
        drop_container(swift_env, s.container)
        drop_container(swift_env, s.container + "-queue")


@pytest.fixture
def mounted(site: Site) -> Iterator[Path]:
    config = write_swift_config(site.tmp / "cfg", site.env, site.container)
    with Mounted(config, site.tmp / "mnt", options="attr_timeout=1,dir_timeout=1") as m:
        yield m.mountpoint / "public"
        m.check_log()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_dlo_and_slo_from_the_swift_cli(site: Site, mounted: Path) -> None:
    src = site.tmp / "upload"
    src.mkdir()
    dlo = os.urandom(3 * 1048576 + 123)
    slo = os.urandom(2 * 1048576 + 7)
    (src / "dlo.bin").write_bytes(dlo)
    (src / "slo.bin").write_bytes(slo)
    site.swift("upload", site.container, "dlo.bin", "-S", "1048576", "--use-dlo", cwd=src)
    site.swift("upload", site.container, "slo.bin", "-S", "1048576", "--use-slo", cwd=src)
    assert site.conn.head_object(site.container, "dlo.bin").get("x-object-manifest")
    assert (mounted / "dlo.bin").stat().st_size == len(dlo)
    assert _sha((mounted / "dlo.bin").read_bytes()) == _sha(dlo)
    assert (mounted / "slo.bin").stat().st_size == len(slo)
    assert _sha((mounted / "slo.bin").read_bytes()) == _sha(slo)
    assert len(site.segments()) >= 7
    # Overwriting a DLO through the mount replaces it; removing the SLO removes its segments.
    (mounted / "dlo.bin").write_bytes(b"small now")
    assert site.conn.get_object(site.container, "dlo.bin")[1] == b"small now"
    os.unlink(mounted / "slo.bin")
    os.unlink(mounted / "dlo.bin")
    assert site.segments() == []


def test_pseudo_directories_unclean_names_and_foreign_objects(site: Site, mounted: Path) -> None:
    # Pseudo-directories without markers, as `swift upload dir` makes them.
    tree = site.tmp / "tree"
    (tree / "album" / "2024").mkdir(parents=True)
    (tree / "album" / "2024" / "Summer Photo (1).jpg").write_bytes(b"jpeg")
    (tree / "album" / "notes.txt").write_bytes(b"notes")
    site.swift("upload", site.container, "album", cwd=tree)
    assert sorted(os.listdir(mounted / "album")) == ["2024", "notes.txt"]
    # An unclean name another tool wrote is listed and reachable under its exact name.
    assert os.listdir(mounted / "album" / "2024") == ["Summer Photo (1).jpg"]
    assert (mounted / "album" / "2024" / "Summer Photo (1).jpg").read_bytes() == b"jpeg"
    # No goblinfs mtime in the listing (the swift CLI's X-Object-Meta-Mtime is not listed, and
    # a bare PUT has none): Swift's own last-modified time.
    site.conn.put_object(site.container, "album/bare.txt", b"bare")
    stamp = float(site.conn.head_object(site.container, "album/bare.txt")["x-timestamp"])
    time.sleep(1.2)  # dir_timeout: another client's new object shows after it
    assert abs((mounted / "album" / "bare.txt").stat().st_mtime - stamp) < 1.0
    site.conn.delete_object(site.container, "album/bare.txt")
    # A `name/` object holding data is not a directory marker: rmdir refuses, nothing is lost.
    site.conn.put_object(site.container, "keep/", b"data, not a marker", content_type="text/plain")
    site.conn.put_object(site.container, "keep/inner.txt", b"inner")
    time.sleep(1.2)
    os.unlink(mounted / "keep" / "inner.txt")
    with pytest.raises(OSError) as failure:
        os.rmdir(mounted / "keep")
    assert failure.value.errno in (errno.ENOTDIR, errno.ENOTEMPTY)
    assert site.conn.get_object(site.container, "keep/")[1] == b"data, not a marker"
    # Emptying a pseudo-directory through the mount: it goes with its last object.
    os.unlink(mounted / "album" / "2024" / "Summer Photo (1).jpg")
    os.rmdir(mounted / "album" / "2024")
    assert sorted(os.listdir(mounted / "album")) == ["notes.txt"]


def test_files_written_through_the_mount_read_with_the_swift_cli(site: Site, mounted: Path) -> None:
    data = os.urandom(3 * 1048576 + 11)  # above segment_size: an SLO
    (mounted / "big.bin").write_bytes(data)
    os.utime(mounted / "big.bin", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    out = site.tmp / "down"
    out.mkdir()
    site.swift("download", site.container, "big.bin", cwd=out)
    assert _sha((out / "big.bin").read_bytes()) == _sha(data)
    stat = site.swift("stat", site.container, "big.bin")
    assert "Mtime: 1700000000.123456" in stat  # the swift CLI / rclone convention
