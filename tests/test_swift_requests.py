"""Requests per operation on the real Swift, counted by the proxy in front of it: what the listing
already told is not asked again (rm -r of plain objects is one DELETE each, a directory's last
file one listing more), and a stale hint never loses more than garbage-collectable segments."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import drop_container, make_cloud_storage
from .mountutil import Mounted, write_swift_config


@pytest.fixture
def container(swift_env: dict[str, Any]) -> Iterator[str]:
    name = f"gfs-req-{uuid.uuid4().hex[:10]}"
    yield name
    drop_container(swift_env, name)
    drop_container(swift_env, name + "-queue")


def object_requests(proxy: Any, container: str) -> list[tuple[str, str]]:
    """(method, object path) of the requests to container's objects and listings since the last clear."""
    found = []
    for method, target, _outcome in proxy.requests:
        path = target.split("?", 1)[0]
        if f"/{container}" in path:
            found.append((method, path.split(f"/{container}", 1)[1] or "/"))
    return found


def test_delete_with_a_listed_plain_entry_is_one_request(fault_swift: Any, container: str, tmp_path: Path) -> None:
    store = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path))
    for name in ("a.jpg", "b.jpg"):
        with store.get_file(["d", name], "wb") as f:
            f.write(b"x" * 100)
    listed = {entry.name: entry for entry in store.list_dir(["d"])}
    assert listed["a.jpg"].plain
    fault_swift.proxy.requests.clear()
    store.delete_file(["d", "a.jpg"], keep_parent=False, seen=listed["a.jpg"])
    assert object_requests(fault_swift.proxy, container) == [("DELETE", "/d/a.jpg")]
    # Without the hints: a HEAD first, and a listing for the directory left empty (which stays).
    fault_swift.proxy.requests.clear()
    store.delete_file(["d", "b.jpg"])
    methods = [method for method, _path in object_requests(fault_swift.proxy, container)]
    assert methods[:2] == ["HEAD", "DELETE"] and "GET" in methods
    assert store.file_exists(["d"]) and store.list_dir(["d"]) == []


def test_stale_plain_hint_for_a_large_object(fault_swift: Any, container: str, tmp_path: Path) -> None:
    """Replaced by an SLO after the listing: the manifest goes, its segments are garbage, nothing else."""
    store = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path))
    with store.get_file(["big.bin"], "wb") as f:
        f.write(b"small first")
    stale = store.list_dir([])[0]
    assert stale.plain
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 * 1048576 + 5))  # segment_size is 1 MiB in tests: an SLO
    store.store_local_file(str(src), ["big.bin"])
    assert not store.list_dir([])[0].plain
    store.delete_file(["big.bin"], seen=stale)
    assert not store.file_exists(["big.bin"])
    assert len(store.collect_garbage(grace_seconds=0, dry_run=True)) == 4


def test_rm_r_through_the_mount(fault_swift: Any, container: str, tmp_path: Path) -> None:
    """rm -r of a listed directory: one DELETE per file, no HEAD; the directories go too."""
    store = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path))
    for d in range(2):
        for i in range(5):
            with store.get_file(["tree", f"d{d}", f"f{i}.jpg"], "wb") as f:
                f.write(b"%d" % i)
    config = write_swift_config(tmp_path / "site", fault_swift.env, container)
    with Mounted(config, tmp_path / "mnt") as mounted:
        tree = mounted.mountpoint / "public" / "tree"
        assert sorted(os.listdir(tree)) == ["d0", "d1"]
        for d in ("d0", "d1"):
            assert len(os.listdir(tree / d)) == 5
        (tree / "d2").mkdir()  # written through the mount: what the upload answered is known too
        for i in range(5):
            (tree / "d2" / f"f{i}.jpg").write_bytes(b"mine %d" % i)
        fault_swift.proxy.requests.clear()
        for d in ("d0", "d1", "d2"):
            for i in range(5):
                os.unlink(tree / d / f"f{i}.jpg")
            os.rmdir(tree / d)
        os.rmdir(tree)
        requests = object_requests(fault_swift.proxy, container)
        deletes = [path for method, path in requests if method == "DELETE"]
        heads = [path for method, path in requests if method == "HEAD" and path.endswith(".jpg")]
        assert sorted(p for p in deletes if p.endswith(".jpg")) == \
            sorted(f"/tree/d{d}/f{i}.jpg" for d in range(3) for i in range(5))
        assert heads == []
        # Each rmdir comes after rm emptied the directory through this mount: no listing of the
        # directory before the store's own emptiness check, and no parent check while the
        # parent still lists other directories (only the last subdirectory's removal asks).
        listings = [urllib.parse.parse_qs(target.split("?", 1)[1]) for method, target, _ in fault_swift.proxy.requests
                    if method == "GET" and f"/{container}?" in target]
        delimited = [q["prefix"][0] for q in listings if "delimiter" in q]
        assert delimited == [], delimited
        parent_checks = [q["prefix"][0] for q in listings if q.get("prefix") == ["tree/"] and q.get("limit") == ["1"]]
        assert parent_checks == ["tree/"], listings
    assert store.list_dir([]) == []


def test_warm_listing_within_dir_timeout_asks_nothing(fault_swift: Any, container: str, tmp_path: Path) -> None:
    """A second `ls -lR` within dir_timeout is served from the listing; our own changes show at once."""
    store = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path))
    for d in range(3):
        with store.get_file(["t", f"d{d}", "f.jpg"], "wb") as f:
            f.write(b"x")
    config = write_swift_config(tmp_path / "site", fault_swift.env, container)
    with Mounted(config, tmp_path / "mnt", options="dir_timeout=60,attr_timeout=60") as mounted:
        top = mounted.mountpoint / "public" / "t"
        first = sorted((root, tuple(sorted(files))) for root, _dirs, files in os.walk(top))
        fault_swift.proxy.requests.clear()
        again = sorted((root, tuple(sorted(files))) for root, _dirs, files in os.walk(top))
        assert again == first
        assert object_requests(fault_swift.proxy, container) == []
        (top / "d0" / "new.jpg").write_bytes(b"mine")
        assert sorted(os.listdir(top / "d0")) == ["f.jpg", "new.jpg"]
        os.unlink(top / "d1" / "f.jpg")
        assert os.listdir(top / "d1") == []


def test_failing_marker_put_never_fails_the_delete(fault_swift: Any, container: str, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The delete is done before the directory's marker is written: Swift refusing that PUT (past
    the retries) is a warning, the file is gone, and nothing else changed."""
    store = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path), retries="1")
    with store.get_file(["d", "last.jpg"], "wb") as f:
        f.write(b"x")
    with store.get_file(["keep.jpg"], "wb") as f:
        f.write(b"kept bytes")
    fault_swift.proxy.add_rule(method="PUT", path=rf"/{container}/d/$", status=503, times=None)
    with caplog.at_level("WARNING"):
        store.delete_file(["d", "last.jpg"])
    assert ("PUT", "/d/") in object_requests(fault_swift.proxy, container)
    assert "directory d not kept" in caplog.text
    fault_swift.proxy.clear()
    assert not store.file_exists(["d", "last.jpg"])
    assert [entry.name for entry in store.list_dir([])] == ["keep.jpg"]
    with store.get_file(["keep.jpg"], "rb") as f:
        assert f.read() == b"kept bytes"
