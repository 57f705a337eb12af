"""A fresh MediaGoblin site mounts unchanged: MediaGoblin's shipped example config, next to a site
that has stored nothing yet, locally and with the public store on Swift."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from .conftest import drop_container
from .mountutil import force_unmount
from .test_mount_cli import Mounts, assert_one_error_line, goblinfs, unmount_and_wait
from .test_mount_cli import mounts as mounts  # the fixture: mountpoints and daemons torn down by PID

#: The parts of MediaGoblin's mediagoblin.example.ini that matter here, laid out as it ships them
#: (stores at their defaults under data_basedir, plugins as nested sections, celery settings).
EXAMPLE_INI = """\
# If you want to make changes to this file, first copy it to
# mediagoblin.ini, then make the changes there.

[DEFAULT]
data_basedir = "%(here)s/user_dev"

[mediagoblin]
direct_remote_path = /mgoblin_static/
email_sender_address = "notice@mediagoblin.example.org"
email_debug_mode = true
allow_registration = true
allow_reporting = true
show_tos = false

[storage:queuestore]
base_dir = %(data_basedir)s/media/queue

[storage:publicstore]
base_dir = %(data_basedir)s/media/public
base_url = /mgoblin_media/
{public_extra}
[celery]
CELERY_ALWAYS_EAGER = true

[plugins]
[[mediagoblin.plugins.geolocation]]
[[mediagoblin.plugins.basic_auth]]
[[mediagoblin.plugins.processing_info]]
[[mediagoblin.media_types.image]]
"""


def mount_fresh_site(mounts: Mounts, site: Path, logfile: Path) -> int:
    mnt = mounts.watch(site / "mnt")
    result = goblinfs("mount", site / "mediagoblin.ini", mnt, "-o", f"logfile={logfile}")
    assert result.returncode == 0, result.stderr
    return mounts.daemon(mnt)


def test_fresh_local_site_mounts_and_makes_its_store_directories(tmp_path: Path, mounts: Mounts) -> None:
    site = tmp_path / "srv" / "mediagoblin"
    site.mkdir(parents=True)
    (site / "mediagoblin.ini").write_text(EXAMPLE_INI.format(public_extra=""))
    logfile = tmp_path / "goblinfs.log"
    assert not (site / "user_dev").exists()
    pid = mount_fresh_site(mounts, site, logfile)
    mnt = site / "mnt"
    assert sorted(os.listdir(mnt)) == ["public", "queue"]
    for store in ("queue", "public"):
        assert (site / "user_dev" / "media" / store).is_dir()
        assert f"store {store}: created base_dir {site / 'user_dev' / 'media' / store}" in logfile.read_text()
    (mnt / "queue" / "upload.jpg").write_bytes(b"fresh")
    assert (site / "user_dev" / "media" / "queue" / "upload.jpg").read_bytes() == b"fresh"
    unmount_and_wait(mnt, pid)


def test_fresh_site_with_public_store_on_swift(tmp_path: Path, mounts: Mounts, swift_env: dict[str, Any]) -> None:
    """The usual Swift setup: only the public store on Swift, the queue at MediaGoblin's default."""
    container = f"gfs-fresh-{uuid.uuid4().hex[:10]}"
    site = tmp_path / "site"
    site.mkdir()
    swift = (f"storage_class = mediagoblin.storage.cloudfiles:CloudFilesStorage\n"
             f"cloudfiles_user = {swift_env['user']}\ncloudfiles_api_key = {swift_env['key']}\n"
             f"cloudfiles_host = {swift_env['auth_url']}\ncloudfiles_container = {container}\n")
    (site / "mediagoblin.ini").write_text(EXAMPLE_INI.format(public_extra=swift))
    try:
        pid = mount_fresh_site(mounts, site, tmp_path / "goblinfs.log")
        mnt = site / "mnt"
        assert (site / "user_dev" / "media" / "queue").is_dir()
        assert not (site / "user_dev" / "media" / "public").exists()  # that store is Swift
        (mnt / "public" / "a.jpg").write_bytes(b"on swift")
        (mnt / "queue" / "b.jpg").write_bytes(b"on disk")
        assert (site / "user_dev" / "media" / "queue" / "b.jpg").read_bytes() == b"on disk"
        unmount_and_wait(mnt, pid)
    finally:
        force_unmount(site / "mnt")
        drop_container(swift_env, container)


def test_base_dir_that_cannot_be_made_is_one_line(tmp_path: Path, mounts: Mounts) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "user_dev").write_text("a file where the data directory should be")
    (site / "mediagoblin.ini").write_text(EXAMPLE_INI.format(public_extra=""))
    mnt = mounts.watch(site / "mnt")
    # The workbench and log elsewhere, so the store's own directory is what fails.
    elsewhere = f"cache_dir={tmp_path / 'wb'},logfile={tmp_path / 'log'}"
    line = assert_one_error_line(goblinfs("mount", site / "mediagoblin.ini", mnt, "-o", elsewhere), "store queue",
                                 "cannot create base_dir")
    assert str(site / "user_dev") in line
    assert not any(mnt.iterdir())
    # A base_dir that is a file is refused as such, and nothing is touched.
    (site / "user_dev").unlink()
    (site / "user_dev" / "media").mkdir(parents=True)
    (site / "user_dev" / "media" / "queue").write_text("not a directory")
    assert_one_error_line(goblinfs("mount", site / "mediagoblin.ini", mnt, "-o", elsewhere), "store queue",
                          "is not a directory")
    assert (site / "user_dev" / "media" / "queue").read_text() == "not a directory"
