"""Extended attributes outside user.*: not supported (EOPNOTSUPP), so `ls -l` asks once per
filesystem instead of once per file; user.goblinfs.* answer as before."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from .mountutil import Mounted, write_local_config
from .test_metrics import free_port, scrape


def test_ls_l_asks_for_security_labels_once(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "site")
    port = free_port()
    with Mounted(config, tmp_path / "mnt", options=f"metrics=127.0.0.1:{port}") as mounted:
        public = mounted.mountpoint / "public"
        for d in range(4):
            (public / f"d{d}").mkdir()
            for i in range(25):
                (public / f"d{d}" / f"f{i}.jpg").write_bytes(b"x")
        for name in ("security.selinux", "system.posix_acl_access", "trusted.x", "security.capability"):
            with pytest.raises(OSError) as info:
                os.getxattr(public / "d0" / "f0.jpg", name)
            assert info.value.errno == errno.EOPNOTSUPP, name
        with pytest.raises(OSError) as info:
            os.getxattr(public / "d0" / "f0.jpg", "user.other")
        assert info.value.errno == errno.ENODATA
        assert os.getxattr(public / "d0" / "f0.jpg", "user.goblinfs.url") == b"/mgoblin_media/d0/f0.jpg"
        before = scrape(port).get("goblinfs_fuse_operation_seconds_count", op="getxattr")
        listing = subprocess.run(["ls", "-lR", str(public)], capture_output=True, text=True, check=True).stdout
        assert listing.count("f1.jpg") == 4
        asked = scrape(port).get("goblinfs_fuse_operation_seconds_count", op="getxattr") - before
        # 104 entries: with ENODATA, ls asked for each of them (and the write path for each write).
        assert asked <= 4, asked
