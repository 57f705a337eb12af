"""CloudFileStorage against a real Swift (the ``swift_env`` all-in-one): Swift-specific behaviour.

The generic store contract is checked elsewhere; this file covers what only Swift has: SLO
segments, listing pages, mtime in listings, directory markers, names written by other tools,
login errors, streaming without buffering whole objects.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import swiftclient.client
from swiftclient.client import ClientException

from goblinfs.storage import ExactPath, StorageConfigError, StorageUnavailable, new_upload_id
from goblinfs.storage import NotImplementedError as StorageNotImplementedError
from goblinfs.storage.cloudfiles import (
    DEFAULT_WORKERS,
    AuthenticationFailed,
    CloudFilesStorage,
    CloudFileStorage,
    format_mtime,
    parse_listing_time,
    parse_mtime,
    split_content_type,
)

from .conftest import make_cloud_storage, running_swift
from .mountutil import ROOT

pytestmark = pytest.mark.swift

MiB = 1048576


# ------------------------------------------------------------------------------ helpers


def raw_connection(env: dict[str, Any]) -> swiftclient.client.Connection:
    """A plain swiftclient connection, as another tool would use."""
    return swiftclient.client.Connection(authurl=env["auth_url"], user=env["user"], key=env["key"], retries=2)


def _bulk_delete(env: dict[str, Any], conn: swiftclient.client.Connection, container: str, names: list[str]) -> bool:
    """Delete many objects with the bulk middleware; False when it is not there."""
    caps = conn.get_capabilities()
    if "bulk_delete" not in caps:
        return False
    url, token = conn.get_auth()
    for start in range(0, len(names), 5000):
        body = "\n".join(urllib.parse.quote(f"/{container}/{name}") for name in names[start:start + 5000])
        headers = {"X-Auth-Token": token, "Content-Type": "text/plain", "Accept": "application/json"}
        resp = requests.post(f"{url}?bulk-delete", data=body.encode(), headers=headers, timeout=120)
        resp.raise_for_status()
    return True


def drop_container(env: dict[str, Any], container: str) -> None:
    conn = raw_connection(env)
    try:
        _, items = conn.get_container(container, full_listing=True)
    except ClientException as exc:
        if exc.http_status == 404:
            return
        raise
    names = [item["name"] for item in items]
    if len(names) > 50 and _bulk_delete(env, conn, container, names):
        names = [item["name"] for item in conn.get_container(container, full_listing=True)[1]]
    local = threading.local()

    def delete(name: str) -> None:
        if not hasattr(local, "conn"):
            local.conn = raw_connection(env)
        try:
            local.conn.delete_object(container, name)
        except ClientException as exc:
            if exc.http_status != 404:
                raise

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(delete, names))
    conn.delete_container(container)


@pytest.fixture
def store(swift_env: dict[str, Any], swift_container_name: str) -> Iterator[CloudFileStorage]:
    s = make_cloud_storage(swift_env, swift_container_name)
    yield s
    s.close()
    drop_container(swift_env, swift_container_name + "_segments")
    drop_container(swift_env, swift_container_name)


@pytest.fixture
def raw(swift_env: dict[str, Any]) -> swiftclient.client.Connection:
    return raw_connection(swift_env)


@pytest.fixture
def requests_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every HTTP request swiftclient sends, as (method, path?query)."""
    log: list[tuple[str, str]] = []
    original = swiftclient.client.HTTPConnection.request

    def request(self: Any, method: str, full_path: str, *args: Any, **kwargs: Any) -> Any:
        log.append((method, full_path))
        return original(self, method, full_path, *args, **kwargs)

    monkeypatch.setattr(swiftclient.client.HTTPConnection, "request", request)
    return log


def write_local(path: str, size: int, seed: int = 0) -> str:
    """A local file of size pseudo-random bytes (written in 1 MiB chunks); its MD5."""
    digest = hashlib.md5()
    block = hashlib.sha512(str(seed).encode()).digest() * (MiB // 64)
    with open(path, "wb") as f:
        written = 0
        index = 0
        while written < size:
            chunk = (index.to_bytes(8, "big") + block)[: min(MiB, size - written)]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            index += 1
    return digest.hexdigest()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def segment_names(raw: swiftclient.client.Connection, container: str) -> list[str]:
    try:
        return [item["name"] for item in raw.get_container(container + "_segments", full_listing=True)[1]]
    except ClientException as exc:
        if exc.http_status == 404:
            return []
        raise


# -------------------------------------------------------------------------- pure helpers


def test_mtime_format_and_parse_are_exact() -> None:
    for ns in (0, 5, 1764201001123456789, 1764201001000000000, -1, -1500000000):
        text = format_mtime(ns)
        assert re.fullmatch(r"-?\d+\.\d{9}", text)
        assert parse_mtime(text) == ns
    assert format_mtime(1764201001000000005) == "1764201001.000000005"
    assert parse_mtime("1764201001.5") == 1764201001500000000  # swift CLI style, fewer decimals
    assert parse_mtime("1764201001") == 1764201001000000000
    assert parse_mtime("1.7642010011234567891e9") == 1764201001123456789
    assert parse_mtime("nan") is None and parse_mtime("x") is None
    assert parse_listing_time("2026-11-26T23:50:01.123450") == 1795737001123450000
    assert split_content_type("image/jpeg;goblinfs_mtime=1.000000002") == ("image/jpeg", 1000000002)
    assert split_content_type("text/plain; charset=utf-8;goblinfs_mtime=3.5") == ("text/plain;charset=utf-8",
                                                                                  3500000000)
    assert split_content_type("text/plain") == ("text/plain", None)


def test_bad_numeric_option_is_a_config_error() -> None:
    env = {"user": "u", "key": "k", "auth_url": "http://127.0.0.1:1/auth/v1.0"}
    with pytest.raises(StorageConfigError, match="segment_size"):
        make_cloud_storage(env, "never-created", segment_size="lots")
    with pytest.raises(StorageConfigError, match="cloudfiles_container"):
        CloudFileStorage(cloudfiles_user="u", cloudfiles_api_key="k", cloudfiles_host="http://127.0.0.1:1/auth")


# ------------------------------------------------------------------- login, container


def test_container_created_when_missing(swift_env: dict[str, Any], swift_container_name: str,
                                        raw: swiftclient.client.Connection) -> None:
    with pytest.raises(ClientException) as missing:
        raw.head_container(swift_container_name)
    assert missing.value.http_status == 404
    s = make_cloud_storage(swift_env, swift_container_name, base_dir="/ignored", unknown_key="x")
    try:
        assert raw.head_container(swift_container_name)["x-container-object-count"] == "0"
        assert s.list_dir([]) == []
        assert isinstance(s, CloudFilesStorage)  # MediaGoblin's name is an alias
    finally:
        s.close()
        drop_container(swift_env, swift_container_name)


def test_refused_login_names_url_and_user_never_the_key(swift_env: dict[str, Any]) -> None:
    secret = "not-the-key-Zq8xW"
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as refused:
        make_cloud_storage(swift_env, "never-created", cloudfiles_api_key=secret)
    assert isinstance(refused.value, StorageUnavailable)
    message = str(refused.value)
    assert swift_env["auth_url"] in message
    assert swift_env["user"] in message
    assert secret not in message
    assert secret not in repr(refused.value.__cause__) and secret not in str(refused.value.__context__)
    assert time.monotonic() - started < 5  # a refused login is not retried with back-off


def test_unreachable_server_is_storage_unavailable_naming_the_url(swift_env: dict[str, Any]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/auth/v1.0"
    with pytest.raises(StorageUnavailable) as unavailable:
        make_cloud_storage(swift_env, "never-created", cloudfiles_host=url, retries="0", timeout="5")
    assert not isinstance(unavailable.value, AuthenticationFailed)
    assert url in str(unavailable.value)
    assert swift_env["key"] not in str(unavailable.value)


def test_expired_token_is_refreshed(store: CloudFileStorage, requests_log: list[tuple[str, str]]) -> None:
    store.make_dir(["d"])
    conn = store._conn()
    conn.token = "AUTH_tk00000000000000000000000000000000"  # an expired/unknown token
    assert store.stat(["d"]).is_dir
    assert conn.token != "AUTH_tk00000000000000000000000000000000"
    auth_path = urllib.parse.urlparse(store.auth_url).path
    assert any(path.startswith(auth_path) for _, path in requests_log)  # it logged in again
    # New connections (other threads) start from the refreshed token, not from the bad one.
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(store.stat(["d"]).is_dir))
    thread.start()
    thread.join()
    assert results == [True]


def test_each_thread_has_its_own_connection(store: CloudFileStorage) -> None:
    store.make_dir(["t"])
    conns: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert store.stat(["t"]).is_dir
            conns.append(store._conn())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({id(c) for c in conns}) == 6


# ------------------------------------------------------------------------------- SLO


def test_slo_upload_read_whole_and_across_segment_boundaries(store: CloudFileStorage, raw: Any,
                                                             tmp_path: Any) -> None:
    src = str(tmp_path / "three.bin")
    md5 = write_local(src, 3 * MiB, seed=1)
    data = read_bytes(src)
    entry = store.store_local_file(src, ["media", "three.bin"], mtime_ns=1764201001123456789)
    assert entry.size == 3 * MiB and not entry.is_dir

    head = raw.head_object(store.container, "media/three.bin")
    assert head["x-static-large-object"].lower() == "true"
    assert int(head["content-length"]) == 3 * MiB
    segments = segment_names(raw, store.container)
    assert len(segments) == 3
    upload_id = r"\d{8}T\d{6}Z-[0-9a-f]{16}"  # new_upload_id(): its age shows in the name
    assert all(re.fullmatch(rf"media/three\.bin/{upload_id}/0000000[0-2]", name) for name in segments)
    seg_sizes = [item["bytes"] for item in raw.get_container(store.container + "_segments")[1]]
    assert seg_sizes == [MiB, MiB, MiB]

    # Etag agrees: store_local_file, stat (HEAD) and list_dir (listing).
    stat = store.stat(["media", "three.bin"])
    listed = {e.name: e for e in store.list_dir(["media"])}["three.bin"]
    assert entry.etag == stat.etag == listed.etag == head["etag"].strip('"')
    assert listed.size == stat.size == 3 * MiB
    assert listed.mtime_ns == stat.mtime_ns == 1764201001123456789

    with store.get_file(["media", "three.bin"], "rb") as f:
        whole = f.read()
    assert hashlib.md5(whole).hexdigest() == md5
    for offset, length in ((MiB - 100, 200), (2 * MiB - 1, 2), (0, 3 * MiB), (3 * MiB - 5, 100)):
        assert store.read_range(["media", "three.bin"], offset, length) == data[offset:offset + length]
    assert store.read_range(["media", "three.bin"], 3 * MiB, 10) == b""
    assert store.read_range(["media", "three.bin"], 5 * MiB, 10) == b""
    with store.get_file(["media", "three.bin"], "rb") as f:
        f.seek(2 * MiB - 10)
        assert f.read(20) == data[2 * MiB - 10:2 * MiB + 10]
        f.seek(-4, io.SEEK_END)
        assert f.read() == data[-4:]
        f.seek(10)
        buf = bytearray(5)
        assert f.readinto(buf) == 5 and bytes(buf) == data[10:15]
        assert f.tell() == 15
    assert store.get_file_size(["media", "three.bin"]) == 3 * MiB


def test_slo_segments_deleted_on_overwrite_and_with_the_object(store: CloudFileStorage, raw: Any,
                                                                tmp_path: Any) -> None:
    src = str(tmp_path / "a.bin")
    write_local(src, 3 * MiB, seed=2)
    store.store_local_file(src, ["a.bin"])
    first = set(segment_names(raw, store.container))
    assert len(first) == 3

    write_local(src, 2 * MiB + 5, seed=3)
    store.store_local_file(src, ["a.bin"])
    second = set(segment_names(raw, store.container))
    assert len(second) == 3 and not (first & second)  # old segments gone, new ones there
    with store.get_file(["a.bin"], "rb") as f:
        assert f.read() == read_bytes(src)

    small = str(tmp_path / "small.bin")
    write_local(small, 1000, seed=4)
    store.store_local_file(small, ["a.bin"])
    assert segment_names(raw, store.container) == []
    assert "x-static-large-object" not in raw.head_object(store.container, "a.bin")

    store.store_local_file(src, ["a.bin"])
    assert len(segment_names(raw, store.container)) == 3
    store.delete_file(["a.bin"])
    assert segment_names(raw, store.container) == []
    with pytest.raises(FileNotFoundError):
        store.stat(["a.bin"])


def test_upload_above_cluster_max_file_size_is_segmented(swift_env: dict[str, Any], swift_container_name: str,
                                                         raw: Any, tmp_path: Any) -> None:
    s = make_cloud_storage(swift_env, swift_container_name, segment_size=str(100 * MiB))
    try:
        assert s.max_file_size == 5 * MiB  # from GET /info
        src = str(tmp_path / "six.bin")
        md5 = write_local(src, 6 * MiB, seed=5)
        entry = s.store_local_file(src, ["six.bin"])
        sizes = [item["bytes"] for item in raw.get_container(swift_container_name + "_segments")[1]]
        assert sorted(sizes) == [MiB, 5 * MiB]
        assert entry.etag == s.stat(["six.bin"]).etag
        dest = str(tmp_path / "back.bin")
        s.copy_locally(["six.bin"], dest)
        assert hashlib.md5(read_bytes(dest)).hexdigest() == md5
    finally:
        s.close()
        drop_container(swift_env, swift_container_name + "_segments")
        drop_container(swift_env, swift_container_name)


def test_slo_move_copies_only_the_manifest_and_set_mtime_keeps_it(store: CloudFileStorage, raw: Any,
                                                                  tmp_path: Any,
                                                                  requests_log: list[tuple[str, str]]) -> None:
    src = str(tmp_path / "m.bin")
    md5 = write_local(src, 3 * MiB, seed=6)
    store.store_local_file(src, ["m.bin"], mtime_ns=1700000000000000001)
    segments = set(segment_names(raw, store.container))
    etag = store.stat(["m.bin"]).etag

    del requests_log[:]
    store.move(["m.bin"], ["moved", "m2.bin"])
    assert not any(method == "GET" and "multipart-manifest" not in path and "format=json" not in path
                   for method, path in requests_log)
    assert set(segment_names(raw, store.container)) == segments
    with pytest.raises(FileNotFoundError):
        store.stat(["m.bin"])
    entry = store.stat(["moved", "m2.bin"])
    assert entry.mtime_ns == 1700000000000000001 and entry.size == 3 * MiB and entry.etag == etag
    assert {e.name: e for e in store.list_dir(["moved"])}["m2.bin"].mtime_ns == 1700000000000000001

    store.set_mtime(["moved", "m2.bin"], 1800000000000000002)
    listed = {e.name: e for e in store.list_dir(["moved"])}["m2.bin"]
    assert listed.mtime_ns == 1800000000000000002
    assert listed.size == 3 * MiB  # the listing still shows the SLO's full size
    assert listed.etag == etag
    assert raw.head_object(store.container, "moved/m2.bin")["x-static-large-object"].lower() == "true"
    with store.get_file(["moved", "m2.bin"], "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == md5

    # Replacing an SLO by a move deletes the replaced one's segments.
    store.store_local_file(src, ["other.bin"])
    store.move(["other.bin"], ["moved", "m2.bin"])
    remaining = set(segment_names(raw, store.container))
    assert len(remaining) == 3 and not (remaining & segments)
    store.delete_file(["moved", "m2.bin"])
    assert segment_names(raw, store.container) == []


# --------------------------------------------------------------------------- listing


@pytest.fixture(scope="module")
def tmpfs_swift() -> Iterator[dict[str, Any]]:
    """A Swift of its own with its devices on tmpfs, for the 10,001-object listing.

    Creating objects there costs no fsync, and stopping it is the whole cleanup (deleting
    10,001 objects one by one would cost as much as creating them).
    """
    with running_swift(devices_tmpfs=True) as env:
        yield env


def test_list_dir_returns_all_of_10001_entries(tmpfs_swift: dict[str, Any]) -> None:
    container = "big-listing"
    raw_connection(tmpfs_swift).put_container(container)
    names = [f"big/f{i:05d}.txt" for i in range(10001)]
    local = threading.local()

    def put(name: str) -> None:
        if not hasattr(local, "conn"):
            local.conn = raw_connection(tmpfs_swift)
        local.conn.put_object(container, name, b"")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))
    put("big/sub/x")
    s = make_cloud_storage(tmpfs_swift, container)
    try:
        assert s.listing_limit == 10000  # the cluster's page size (GET /info): two pages needed
        entries = s.list_dir(["big"])
    finally:
        s.close()
    assert len(entries) == 10002
    assert {e.name for e in entries if not e.is_dir} == {n.split("/")[1] for n in names}
    assert [e.name for e in entries if e.is_dir] == ["sub"]


def test_list_dir_pages_with_marker(store: CloudFileStorage, swift_env: dict[str, Any],
                                    requests_log: list[tuple[str, str]]) -> None:
    """The same paging with a small page: files and subdirs across page boundaries."""
    local = threading.local()

    def put(name: str) -> None:
        if not hasattr(local, "conn"):
            local.conn = raw_connection(swift_env)
        local.conn.put_object(store.container, name, b"")

    names = [f"p/f{i:03d}" for i in range(230)] + [f"p/d{i:03d}/x" for i in range(30)] + ["p/d007/y", "q"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))
    store.listing_limit = 100
    del requests_log[:]
    entries = store.list_dir(["p"])
    pages = [path for method, path in requests_log if method == "GET" and "_segments" not in path]
    assert len(set(pages)) == 3  # 100 + 100 + 60 (a page retried under load is the same request)
    # 230 zero-byte files: DLO candidates only where the swift CLI puts segments (one listing).
    assert [m for m, path in requests_log if "_segments" in path] == ["GET"]
    assert "HEAD" not in [m for m, _ in requests_log]
    assert sorted(e.name for e in entries if not e.is_dir) == [f"f{i:03d}" for i in range(230)]
    assert sorted(e.name for e in entries if e.is_dir) == [f"d{i:03d}" for i in range(30)]


def test_mtime_comes_from_the_listing_without_head(store: CloudFileStorage, raw: Any, tmp_path: Any,
                                                   requests_log: list[tuple[str, str]]) -> None:
    src = str(tmp_path / "x.txt")
    write_local(src, 100)
    store.store_local_file(src, ["dir", "x.txt"], mtime_ns=1764201001123456789)
    store.store_local_file(src, ["dir", "y.txt"], mtime_ns=1764201001000000005)

    listing = {item["name"]: item for item in raw.get_container(store.container, prefix="dir/")[1]}
    assert listing["dir/x.txt"]["content_type"] == "text/plain;goblinfs_mtime=1764201001.123456789"
    assert raw.head_object(store.container, "dir/x.txt")["x-object-meta-mtime"] == "1764201001.123456789"

    del requests_log[:]
    entries = {e.name: e for e in store.list_dir(["dir"])}
    assert [m for m, _ in requests_log] == ["GET"]  # one listing, no HEAD per object
    assert entries["x.txt"].mtime_ns == 1764201001123456789
    assert entries["y.txt"].mtime_ns == 1764201001000000005
    assert entries["x.txt"].content_type == "text/plain"

    store.set_mtime(["dir", "x.txt"], 1600000000999999999)
    del requests_log[:]
    assert {e.name: e for e in store.list_dir(["dir"])}["x.txt"].mtime_ns == 1600000000999999999
    assert [m for m, _ in requests_log] == ["GET"]
    assert store.stat(["dir", "x.txt"]).mtime_ns == 1600000000999999999

    store.move(["dir", "x.txt"], ["dir2", "z.txt"])
    assert {e.name: e for e in store.list_dir(["dir2"])}["z.txt"].mtime_ns == 1600000000999999999
    assert store.stat(["dir2", "z.txt"]).content_type == "text/plain"


def test_set_mtime_keeps_other_metadata(store: CloudFileStorage, raw: Any) -> None:
    raw.put_object(store.container, "meta.bin", b"abc", headers={"X-Object-Meta-Owner": "alice"})
    store.set_mtime(["meta.bin"], 1234567890000000001)
    head = raw.head_object(store.container, "meta.bin")
    assert head["x-object-meta-owner"] == "alice"
    assert head["x-object-meta-mtime"] == "1234567890.000000001"
    assert store.stat(["meta.bin"]).mtime_ns == 1234567890000000001


def test_objects_without_our_mtime(store: CloudFileStorage, raw: Any) -> None:
    raw.put_object(store.container, "cli.bin", b"abc", headers={"X-Object-Meta-Mtime": "1500000000.25"})
    listed = {e.name: e for e in store.list_dir([])}["cli.bin"]
    last_modified = raw.get_container(store.container)[1][0]["last_modified"]
    assert listed.mtime_ns == parse_listing_time(last_modified)
    assert abs(listed.mtime_ns - time.time_ns()) < 600 * 10**9
    assert store.stat(["cli.bin"]).mtime_ns == 1500000000250000000  # HEAD made anyway: X-Object-Meta-Mtime


def test_content_type_guessed_from_the_name(store: CloudFileStorage, raw: Any) -> None:
    for name, expected in (("p.jpg", "image/jpeg"), ("v.webm", "video/webm"), ("n.unknownext", None)):
        with store.get_file([name], "wb") as f:
            f.write(b"data")
        content_type = raw.head_object(store.container, name)["content-type"]
        assert content_type.split(";")[0] == (expected or "application/octet-stream")
        assert store.stat([name]).content_type == (expected or "application/octet-stream")


# ----------------------------------------------------------------------- directories


def test_make_dir_writes_markers_visible_to_plain_swiftclient(store: CloudFileStorage, raw: Any) -> None:
    store.make_dir(["a", "b", "c"])
    listing = {item["name"]: item for item in raw.get_container(store.container)[1]}
    assert set(listing) == {"a/", "a/b/", "a/b/c/"}
    for item in listing.values():
        assert item["content_type"] == "application/directory"
        assert item["bytes"] == 0
    assert [(e.name, e.is_dir) for e in store.list_dir(["a", "b"])] == [("c", True)]
    assert store.list_dir(["a", "b", "c"]) == []
    assert store.stat(["a", "b", "c"]).is_dir
    assert store.stat(["a", "b", "c"]).mtime_ns > 0
    with pytest.raises(FileExistsError):
        store.make_dir(["a", "b"])
    store.make_dir(["a", "b2"])  # parent exists: only one marker more
    assert "a/b2/" in {item["name"] for item in raw.get_container(store.container)[1]}
    with store.get_file(["a", "f.txt"], "wb") as f:
        f.write(b"x")
    with pytest.raises(NotADirectoryError):
        store.make_dir(["a", "f.txt", "sub"])
    with pytest.raises(NotADirectoryError):
        store.list_dir(["a", "f.txt"])
    with pytest.raises(FileNotFoundError):
        store.list_dir(["nowhere"])
    assert store.delete_dir(["a", "b"]) is False  # not empty
    assert store.delete_dir(["a", "b", "c"]) is True
    assert store.delete_dir(["a", "b", "c"]) is False  # already gone
    assert "a/b/c/" not in {item["name"] for item in raw.get_container(store.container)[1]}


def test_foreign_directory_conventions_and_collisions(store: CloudFileStorage, raw: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    raw.put_object(store.container, "svfsdir", b"", content_type="application/directory")
    raw.put_object(store.container, "pseudo/child.txt", b"c")
    raw.put_object(store.container, "both", b"file")
    raw.put_object(store.container, "both/inner.txt", b"i")
    root = {e.name: e for e in store.list_dir([])}
    assert set(root) == {"svfsdir", "pseudo", "both"}
    assert all(e.is_dir for e in root.values())
    assert store.stat(["svfsdir"]).is_dir and store.list_dir(["svfsdir"]) == []
    assert store.stat(["pseudo"]).is_dir
    assert store.stat(["both"]).is_dir  # the directory wins, in stat as in list_dir
    assert "both" in caplog.text
    assert [e.name for e in store.list_dir(["both"])] == ["inner.txt"]
    assert store.file_exists(["pseudo"]) and store.file_exists(["pseudo", "child.txt"])
    with pytest.raises(IsADirectoryError):
        store.delete_file(["pseudo"])
    with pytest.raises(IsADirectoryError):
        store.get_file(["pseudo"], "rb")


def test_delete_dir_recursive_removes_everything_and_segments(store: CloudFileStorage, raw: Any,
                                                              tmp_path: Any) -> None:
    src = str(tmp_path / "s.bin")
    write_local(src, 3 * MiB, seed=7)
    store.make_dir(["r", "sub"])
    store.store_local_file(src, ["r", "sub", "big.bin"])
    with store.get_file(["r", "f.txt"], "wb") as f:
        f.write(b"x")
    assert len(segment_names(raw, store.container)) == 3
    assert store.delete_dir(["r"]) is False
    assert store.delete_dir(["r"], recursive=True) is True
    assert raw.get_container(store.container)[1] == []
    assert segment_names(raw, store.container) == []
    assert store.delete_dir(["r"], recursive=True) is False


def test_move_directory(store: CloudFileStorage, raw: Any, tmp_path: Any) -> None:
    src = str(tmp_path / "s.bin")
    md5 = write_local(src, 3 * MiB, seed=8)
    store.make_dir(["d1", "empty"])
    store.store_local_file(src, ["d1", "big.bin"], mtime_ns=1111111111000000001)
    with store.get_file(["d1", "empty2.txt"], "wb") as f:
        f.write(b"")
    segments = set(segment_names(raw, store.container))

    with pytest.raises(OSError) as into_itself:
        store.move(["d1"], ["d1", "empty", "x"])
    assert into_itself.value.errno == errno.EINVAL
    store.make_dir(["full"])
    with store.get_file(["full", "x"], "wb") as f:
        f.write(b"x")
    with pytest.raises(OSError) as not_empty:
        store.move(["d1"], ["full"])
    assert not_empty.value.errno == errno.ENOTEMPTY

    store.make_dir(["target"])  # an empty directory is replaced
    store.move(["d1"], ["target"])
    names = {item["name"] for item in raw.get_container(store.container)[1]}
    assert not any(name.startswith("d1") for name in names)
    assert {"target/", "target/empty/", "target/big.bin", "target/empty2.txt"} <= names
    assert set(segment_names(raw, store.container)) == segments
    assert store.stat(["target", "big.bin"]).mtime_ns == 1111111111000000001
    with store.get_file(["target", "big.bin"], "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == md5
    with pytest.raises(FileNotFoundError):
        store.move(["d1"], ["d3"])


# ---------------------------------------------------------------- names, errors, I/O


def test_unclean_names_from_other_tools_are_reachable_through_exactpath(store: CloudFileStorage, raw: Any) -> None:
    raw.put_object(store.container, "Unclean Dir/naïve file (1).txt", b"hello there")
    names = [e.name for e in store.list_dir(ExactPath(["Unclean Dir"]))]
    assert names == ["naïve file (1).txt"]
    path = ExactPath(["Unclean Dir", "naïve file (1).txt"])
    with store.get_file(path, "rb") as f:
        assert f.read() == b"hello there"
    assert store.read_range(path, 6, 100) == b"there"
    assert store.stat(path).size == 11
    with pytest.raises(FileNotFoundError):  # the cleaned name is another object
        store.stat(["Unclean Dir", "naïve file (1).txt"])
    store.move(path, ExactPath(["Unclean Dir", "renamed é.txt"]))
    assert [item["name"] for item in raw.get_container(store.container)[1]] == ["Unclean Dir/renamed é.txt"]


def test_missing_objects(store: CloudFileStorage) -> None:
    with pytest.raises(FileNotFoundError):
        store.get_file(["nope.bin"], "rb")
    with pytest.raises(FileNotFoundError):
        store.get_file(["nope.bin"], "r+b")
    with pytest.raises(FileNotFoundError):
        store.read_range(["nope.bin"], 0, 10)
    with pytest.raises(FileNotFoundError):
        store.get_file_size(["nope.bin"])
    with pytest.raises(FileNotFoundError) as missing:
        store.delete_file(["nope.bin"])
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError):
        store.stat(["nope.bin"])
    with pytest.raises(FileNotFoundError):
        store.set_mtime(["nope.bin"], 1)
    assert store.file_exists(["nope.bin"]) is False
    assert store.delete_dir(["nope"]) is False
    with pytest.raises(StorageNotImplementedError):
        store.get_local_path(["nope.bin"])


def test_names_too_long(store: CloudFileStorage) -> None:
    with pytest.raises(OSError) as component, store.get_file(["x" * 256], "wb") as f:
        f.write(b"x")
    assert component.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as whole:
        store.make_dir(["y" * 250] * 5)
    assert whole.value.errno == errno.ENAMETOOLONG


def test_get_file_write_modes(store: CloudFileStorage, raw: Any) -> None:
    with store.get_file(["w.bin"], "wb") as f:
        f.write(io.BytesIO(b"from a file object, "))  # MediaGoblin: queue_file.write(submitted_file)
        f.write(b"then bytes")
        assert raw.get_container(store.container)[1] == []  # nothing visible before close
    assert raw.get_object(store.container, "w.bin")[1] == b"from a file object, then bytes"
    with store.get_file(["w.bin"], "ab") as f:
        f.write(b"!")
    assert raw.get_object(store.container, "w.bin")[1] == b"from a file object, then bytes!"
    with store.get_file(["w.bin"], "r+b") as f:
        f.seek(5)
        f.write(b"A")
        f.seek(0)
        assert f.read(6) == b"from A"
    assert raw.get_object(store.container, "w.bin")[1] == b"from A file object, then bytes!"
    with pytest.raises(FileExistsError):
        store.get_file(["w.bin"], "xb")
    with store.get_file(["new.bin"], "x") as f:
        f.write(b"n")
    assert raw.get_object(store.container, "new.bin")[1] == b"n"
    with pytest.raises(RuntimeError), store.get_file(["w.bin"], "wb") as f:
        f.write(b"discarded")
        raise RuntimeError("caller failed")
    assert raw.get_object(store.container, "w.bin")[1] == b"from A file object, then bytes!"
    with store.get_file(["empty.bin"], "wb"):
        pass
    assert raw.head_object(store.container, "empty.bin")["content-length"] == "0"
    with pytest.raises(ValueError):
        store.get_file(["w.bin"], "rt")
    assert not [n for n in os.listdir(store.staging_dir) if n.startswith("goblinfs-spool-")]


def test_staging_files_removed_even_when_upload_fails(swift_env: dict[str, Any], swift_container_name: str,
                                                     tmp_path: Any) -> None:
    staging = str(tmp_path / "staging")
    s = make_cloud_storage(swift_env, swift_container_name, staging_dir=staging)
    try:
        f = s.get_file(["doomed.bin"], "wb")
        f.write(b"abc")
        assert len(os.listdir(staging)) == 1
        drop_container(swift_env, swift_container_name)  # the upload will get a 404
        with pytest.raises(FileNotFoundError):
            f.close()
        assert os.listdir(staging) == []
    finally:
        s.close()
        drop_container(swift_env, swift_container_name)


# Measured in a fresh process: tracemalloc's peak counts every thread's allocations, and threads
# left running by earlier tests in this process (uploads, servers) would count against the store.
_MEMORY_PROBE = """
import hashlib, json, sys, tracemalloc
from goblinfs.storage.cloudfiles import CloudFileStorage
params, src, dest = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
store = CloudFileStorage(**params)
# The same calls on a small segmented file first: the login, the connections, the worker threads
# and the modules the first requests import are not what is measured.
with open(src, "rb") as source:
    head = source.read(3 << 19)
with store.get_file(["warm.bin"], "wb") as f:
    f.write(head)
store.copy_locally(["warm.bin"], dest)
with store.get_file(["warm.bin"], "rb") as f:
    f.read(1 << 20)
store.delete_file(["warm.bin"])
tracemalloc.start()
with store.get_file(["big.bin"], "wb") as f, open(src, "rb") as source:
    f.write(source)
peaks = [tracemalloc.get_traced_memory()[1]]
tracemalloc.reset_peak()
store.copy_locally(["big.bin"], dest)
peaks.append(tracemalloc.get_traced_memory()[1])
tracemalloc.reset_peak()
digest = hashlib.md5()
with store.get_file(["big.bin"], "rb") as f:
    while chunk := f.read(1 << 20):
        digest.update(chunk)
peaks.append(tracemalloc.get_traced_memory()[1])
tracemalloc.stop()
store.close()
print(json.dumps({"peaks": peaks, "md5": digest.hexdigest()}))
"""


def test_nothing_is_buffered_whole_in_memory(
    swift_env: dict[str, Any], store: CloudFileStorage, swift_container_name: str, tmp_path: Any
) -> None:
    size = 24 * MiB
    # What may be in memory at once: a 1 MiB segment per upload worker, one being read, one spare.
    limit = (DEFAULT_WORKERS + 2) * MiB
    assert limit <= size / 4
    src = str(tmp_path / "big.bin")
    md5 = write_local(src, size, seed=9)
    dest = str(tmp_path / "back.bin")
    params = {
        "cloudfiles_user": swift_env["user"],
        "cloudfiles_api_key": swift_env["key"],
        "cloudfiles_host": swift_env["auth_url"],
        "cloudfiles_container": swift_container_name,
        "segment_size": str(MiB),
    }
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, json.dumps(params), src, dest],
                           capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    upload_peak, download_peak, read_peak = result["peaks"]
    assert read_peak >= MiB, result  # the probe measures: one 1 MiB chunk read is in its peak
    assert hashlib.md5(read_bytes(dest)).hexdigest() == md5
    assert result["md5"] == md5
    assert store.stat(["big.bin"]).size == size  # the store fixture's container: dropped after
    assert upload_peak < limit, upload_peak
    assert download_peak < limit, download_peak
    assert read_peak < limit, read_peak


def test_file_url_and_space(swift_env: dict[str, Any], store: CloudFileStorage, swift_container_name: str) -> None:
    url = store.file_url(["dir", "a b.jpg"])
    assert url == f"{swift_env['storage_url'].rstrip('/')}/{swift_container_name}/dir/a_b.jpg"
    with store.get_file(["dir", "a_b.jpg"], "wb") as f:
        f.write(b"jpeg")
    assert requests.get(url, headers={"X-Auth-Token": store._conn().token}, timeout=30).content == b"jpeg"
    s = make_cloud_storage(swift_env, swift_container_name, base_url="https://media.example/m/")
    try:
        assert s.file_url(["dir", "x.jpg"]) == "https://media.example/m/dir/x.jpg"
    finally:
        s.close()
    space = store.space()
    assert space.total is None and space.free is None
    assert isinstance(space.used, int) and space.used >= 0
    assert isinstance(space.objects, int) and space.objects >= 0


def test_writer_sync_uploads_and_stays_open(store: CloudFileStorage, swift_env: dict[str, Any], raw: Any) -> None:
    f = store.get_file(["s.txt"], "w+b")
    try:
        f.write(b"first")
        entry = f.sync()
        assert entry is not None and entry.size == 5
        assert raw.get_object(store.container, "s.txt")[1] == b"first"
        f.write(b" second")
        f.mtime_ns = 1500000000000000007
    finally:
        f.close()
    assert raw.get_object(store.container, "s.txt")[1] == b"first second"
    assert store.stat(["s.txt"]).mtime_ns == 1500000000000000007
    # ServiceNet means Keystone's internal endpoint (tests/test_keystone.py); with v1 auth it cannot
    # mean anything: a config error.  false is accepted.
    with pytest.raises(StorageConfigError, match="cloudfiles_use_servicenet = true needs Keystone"):
        make_cloud_storage(swift_env, store.container, cloudfiles_use_servicenet="true")
    other = make_cloud_storage(swift_env, store.container, cloudfiles_use_servicenet="false")
    try:
        assert other.read_range(["s.txt"], 0, 5) == b"first"
    finally:
        other.close()


def test_stream_to_slo_and_its_errors(store: CloudFileStorage, raw: swiftclient.client.Connection) -> None:
    """A SegmentStream (1 MiB segments here) stores what was appended as an SLO whose content
    and size are exact; a chunked PUT into a missing container is a clear error."""
    stream = store.start_upload(["s", "streamed.bin"])
    assert stream is not None and not stream.started
    data = os.urandom(3 * 1048576 + 777)
    for offset in range(0, len(data), 300000):  # pieces that straddle the segment boundaries
        if not stream.offer(data[offset:offset + 300000]):
            stream.put(data[offset:offset + 300000])
    entry = stream.finish(mtime_ns=1764201001123456789, new=True)
    assert (entry.size, entry.mtime_ns) == (len(data), 1764201001123456789)
    headers, body = raw.get_object(store.container, "s/streamed.bin")
    assert body == data and headers.get("x-static-large-object", "").lower() == "true"
    assert store.stat_file(["s", "streamed.bin"]).etag == entry.etag
    manifest = json.loads(raw.get_object(store.container, "s/streamed.bin",
                                         query_string="multipart-manifest=get")[1])
    assert [item["bytes"] for item in manifest] == [1048576, 1048576, 1048576, 777]
    with pytest.raises(FileNotFoundError):
        store._put_chunked("no-such-container-here", "x", iter([memoryview(b"abc")]))


# ---------------------------------------------------------------- Dynamic Large Objects


def make_dlo(raw: Any, container: str, name: str, parts: list[bytes], prefix: str | None = None) -> str:
    """A DLO as ``swift upload --use-dlo`` makes it: segments under a prefix of
    ``<container>_segments``, then a zero-byte manifest with X-Object-Manifest."""
    segments = container + "_segments"
    raw.put_container(segments)
    prefix = prefix or f"{name}/1764201001.000000/{sum(map(len, parts))}/1048576/"
    for index, part in enumerate(parts):
        raw.put_object(segments, f"{prefix}{index:08d}", part)
    raw.put_object(container, name, b"", headers={"X-Object-Manifest": f"{segments}/{prefix}"})
    return prefix


def test_dlo_size_in_listings_stat_and_reads(store: CloudFileStorage, raw: Any,
                                              requests_log: list[tuple[str, str]]) -> None:
    parts = [os.urandom(MiB), os.urandom(MiB), os.urandom(1000)]
    data = b"".join(parts)
    make_dlo(raw, store.container, "v/dlo.bin", parts)
    raw.put_object(store.container, "v/empty.txt", b"")
    raw.put_object(store.container, "v/plain.txt", b"plain")
    store.make_dir(["v", "sub"])
    assert {item["name"]: item["bytes"] for item in raw.get_container(store.container, prefix="v/")[1]}[
        "v/dlo.bin"] == 0  # what a listing shows

    del requests_log[:]
    entries = {e.name: e for e in store.list_dir(["v"])}
    assert entries["dlo.bin"].size == len(data) and not entries["dlo.bin"].is_dir
    assert entries["empty.txt"].size == 0 and entries["plain.txt"].size == 5 and entries["sub"].is_dir
    heads = sorted(path.rsplit("/", 1)[-1] for method, path in requests_log if method == "HEAD")
    assert heads == ["dlo.bin", "empty.txt"]  # only the zero-byte files, not the others
    assert store.stat(["v", "dlo.bin"]).size == len(data)
    assert store.stat_file(["v", "dlo.bin"]).size == len(data)
    assert store.get_file_size(["v", "dlo.bin"]) == len(data)
    assert entries["dlo.bin"].etag == store.stat(["v", "dlo.bin"]).etag

    with store.get_file(["v", "dlo.bin"], "rb") as f:
        assert f.read() == data
        f.seek(MiB - 10)
        assert f.read(20) == data[MiB - 10:MiB + 10]
    assert store.read_range(["v", "dlo.bin"], 2 * MiB - 3, 100) == data[2 * MiB - 3:2 * MiB + 97]


def test_dlo_move_copies_the_manifest_and_delete_removes_its_segments(store: CloudFileStorage, raw: Any) -> None:
    parts = [os.urandom(300000), os.urandom(200000)]
    prefix = make_dlo(raw, store.container, "d.bin", parts)
    raw.put_object(store.container + "_segments", "other/keep", b"not a segment of d.bin")
    store.move(["d.bin"], ["moved", "d.bin"])
    head = raw.head_object(store.container, "moved/d.bin")
    assert head["x-object-manifest"] == f"{store.container}_segments/{prefix}"
    assert int(head["content-length"]) == 500000
    with pytest.raises(ClientException):
        raw.head_object(store.container, "d.bin")
    assert len(segment_names(raw, store.container)) == 3  # the segments were not copied or deleted
    assert store.read_range(["moved", "d.bin"], 299990, 20) == b"".join(parts)[299990:300010]

    store.delete_file(["moved", "d.bin"])
    assert segment_names(raw, store.container) == ["other/keep"]
    # Only the directory stays (a marker), as a directory on disk outlives its last file.
    assert [item["name"] for item in raw.get_container(store.container)[1]] == ["moved/"]


def test_dlo_segments_go_with_a_recursive_delete_and_a_replacement(store: CloudFileStorage, raw: Any,
                                                                    tmp_path: Any) -> None:
    make_dlo(raw, store.container, "r/a.bin", [b"a" * 1000, b"b" * 1000])
    assert store.delete_dir(["r"], recursive=True) is True
    assert segment_names(raw, store.container) == []
    make_dlo(raw, store.container, "b.bin", [b"c" * 1000])
    src = str(tmp_path / "small.bin")
    write_local(src, 100, seed=11)
    store.store_local_file(src, ["b.bin"])
    assert segment_names(raw, store.container) == []
    assert raw.get_object(store.container, "b.bin")[1] == read_bytes(src)


# ---------------------------------------------------------------------------- rmdir


def test_rmdir_never_deletes_data(store: CloudFileStorage, raw: Any) -> None:
    raw.put_object(store.container, "data/", b"a file's bytes", content_type="application/octet-stream")
    raw.put_object(store.container, "typed/", b"", content_type="text/plain")
    raw.put_object(store.container, "heavy/", b"bytes", content_type="application/directory")
    raw.put_object(store.container, "svfs", b"bytes", content_type="application/directory")
    for name in ("data", "typed", "heavy", "svfs"):
        with pytest.raises(NotADirectoryError) as refused:
            store.delete_dir([name])
        assert refused.value.errno == errno.ENOTDIR
    assert {item["name"] for item in raw.get_container(store.container)[1]} == {"data/", "typed/", "heavy/", "svfs"}
    assert raw.get_object(store.container, "data/")[1] == b"a file's bytes"
    store.make_dir(["real"])
    assert store.delete_dir(["real"]) is True
    with store.get_file(["plain.txt"], "wb") as f:
        f.write(b"x")
    assert store.delete_dir(["plain.txt"]) is False  # the contract: a file is no directory (False)
    assert raw.get_object(store.container, "plain.txt")[1] == b"x"


# ------------------------------------------------------------- segments collected


def test_upload_ids_chosen_by_the_caller_and_discard_upload(store: CloudFileStorage, raw: Any,
                                                            tmp_path: Any) -> None:
    upload_id = new_upload_id()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{16}", upload_id)
    assert upload_id[:8] == time.strftime("%Y%m%d", time.gmtime())
    stream = store.start_upload(["u.bin"], upload_id=upload_id)
    assert stream is not None and stream.upload_id == upload_id
    stream.put(os.urandom(2 * MiB + 5))
    stream._wait()  # everything sent, no manifest: what a crash before close leaves
    left = segment_names(raw, store.container)
    assert len(left) == 3 and all(f"/{upload_id}/" in name for name in left)
    other = str(tmp_path / "o.bin")
    write_local(other, 2 * MiB, seed=12)
    store.store_local_file(other, ["o.bin"])  # another upload's segments are not touched
    assert store.discard_upload(["u.bin"], upload_id) == 3
    assert store.discard_upload(["u.bin"], upload_id) == 0  # idempotent
    assert not any(f"/{upload_id}/" in name for name in segment_names(raw, store.container))
    assert len(segment_names(raw, store.container)) == 2

    finished = new_upload_id()
    store.store_local_file(other, ["f.bin"], upload_id=finished)
    assert sum(f"f.bin/{finished}/" in name for name in segment_names(raw, store.container)) == 2
    assert store.discard_upload(["f.bin"], finished) == 0  # a finished upload is never undone
    with store.get_file(["f.bin"], "rb") as f:
        assert f.read() == read_bytes(other)


def test_collect_garbage_deletes_only_old_unreferenced_segments(store: CloudFileStorage, raw: Any,
                                                                 tmp_path: Any) -> None:
    src = str(tmp_path / "s.bin")
    write_local(src, 2 * MiB + 1, seed=13)
    store.store_local_file(src, ["slo.bin"])
    make_dlo(raw, store.container, "dlo.bin", [b"d" * 100, b"e" * 100])
    segs = store.container + "_segments"
    orphans = ["gone.bin/20200101T000000Z-0123456789abcdef/00000000",
               "gone.bin/20200101T000000Z-0123456789abcdef/00000001", "stray-object"]
    for orphan in orphans:
        raw.put_object(segs, orphan, b"orphan")
    before = set(segment_names(raw, store.container))
    assert store.collect_garbage() == []  # all younger than a day
    assert store.collect_garbage(grace_seconds=3600) == []
    assert sorted(store.collect_garbage(grace_seconds=0, dry_run=True)) == sorted(orphans)
    assert set(segment_names(raw, store.container)) == before  # a dry run deletes nothing
    assert sorted(store.collect_garbage(grace_seconds=0)) == sorted(orphans)
    assert set(segment_names(raw, store.container)) == before - set(orphans)
    with store.get_file(["slo.bin"], "rb") as f:
        assert f.read() == read_bytes(src)
    assert raw.get_object(store.container, "dlo.bin")[1] == b"d" * 100 + b"e" * 100
    assert store.collect_garbage(grace_seconds=0) == []


def test_an_upload_in_progress_keeps_its_old_segments_from_collection(store: CloudFileStorage, raw: Any) -> None:
    """A segment of an upload is as old as the upload's newest segment."""
    segs = store.container + "_segments"
    raw.put_container(segs)
    raw.put_object(segs, "live.bin/20200101T000000Z-00000000000000aa/00000000", b"first")
    time.sleep(1.1)
    raw.put_object(segs, "live.bin/20200101T000000Z-00000000000000aa/00000001", b"second, just sent")
    assert store.collect_garbage(grace_seconds=1.0) == []
    assert len(segment_names(raw, store.container)) == 2


def test_concurrent_replacements_leave_only_the_winners_segments(store: CloudFileStorage, raw: Any, tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Writer B sends its segments while writer A replaces the old SLO: B's PUT replaces A's
    object, so A's segments must go (they leaked when B read the old manifest at its start)."""
    from goblinfs.storage.swift.largeobjects import SegmentUploader

    old, a_src, b_src = (str(tmp_path / n) for n in ("old.bin", "a.bin", "b.bin"))
    write_local(old, 2 * MiB, seed=14)
    write_local(a_src, 2 * MiB + 7, seed=15)
    write_local(b_src, 3 * MiB, seed=16)
    store.store_local_file(old, ["race.bin"])
    a_done = threading.Event()
    original = SegmentUploader.results

    def results(self: Any) -> Any:
        got = original(self)
        if threading.current_thread().name == "writer-b":
            assert a_done.wait(60)
        return got

    monkeypatch.setattr(SegmentUploader, "results", results)
    errors: list[BaseException] = []

    def writer_b() -> None:
        try:
            store.store_local_file(b_src, ["race.bin"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer_b, name="writer-b")
    thread.start()
    store.store_local_file(a_src, ["race.bin"])
    a_done.set()
    thread.join(60)
    assert not errors
    with store.get_file(["race.bin"], "rb") as f:
        assert f.read() == read_bytes(b_src)
    manifest = json.loads(raw.get_object(store.container, "race.bin", query_string="multipart-manifest=get")[1])
    in_use = {item["name"].split("/", 2)[2] for item in manifest}
    assert set(segment_names(raw, store.container)) == in_use and len(in_use) == 3
    assert "not JSON" not in caplog.text


def test_a_manifest_replaced_by_a_plain_object_is_never_parsed(store: CloudFileStorage, raw: Any, tmp_path: Any,
                                                               swift_env: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """HEAD says SLO, but before the manifest GET another writer stored a plain object whose
    bytes look like a manifest: they are not taken as segments to delete."""
    segs = store.container + "_segments"
    big, decoy = str(tmp_path / "big.bin"), str(tmp_path / "decoy.json")
    write_local(big, 2 * MiB, seed=17)
    store.store_local_file(big, ["x.json"])
    raw.put_object(segs, "victim", b"someone else's segment")
    with open(decoy, "w") as f:
        json.dump([{"name": f"/{segs}/victim", "hash": "0" * 32, "bytes": 22}], f)
    from goblinfs.storage.swift.largeobjects import LargeObjects

    original = LargeObjects.slo_segments
    replaced = threading.Event()

    def slo_segments(self: Any, name: str) -> Any:
        if threading.current_thread().name == "writer-b" and not replaced.is_set():
            replaced.set()
            other = make_cloud_storage(swift_env, store.container)
            try:
                other.store_local_file(decoy, ["x.json"])  # the plain object lands now
            finally:
                other.close()
        return original(self, name)

    monkeypatch.setattr(LargeObjects, "slo_segments", slo_segments)
    thread = threading.Thread(target=lambda: store.store_local_file(big, ["x.json"]), name="writer-b")
    thread.start()
    thread.join(60)
    assert replaced.is_set()
    assert raw.get_object(segs, "victim")[1] == b"someone else's segment"
    assert "not JSON" not in caplog.text


def test_failed_and_aborted_uploads_delete_their_segments(store: CloudFileStorage, raw: Any) -> None:
    stream = store.start_upload(["ab.bin"])
    assert stream is not None
    stream.put(os.urandom(3 * MiB))
    deadline = time.monotonic() + 30
    while len(segment_names(raw, store.container)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert segment_names(raw, store.container)  # some were sent
    stream.abort()
    deadline = time.monotonic() + 30
    while segment_names(raw, store.container) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert segment_names(raw, store.container) == []
    with pytest.raises(FileNotFoundError):
        store.stat(["ab.bin"])


def test_read_range_with_an_etag_never_mixes_versions(store: CloudFileStorage, raw: Any) -> None:
    raw.put_object(store.container, "e.bin", b"0123456789")
    etag = store.stat(["e.bin"]).etag
    assert etag is not None
    assert store.read_range(["e.bin"], 2, 3, etag=etag) == b"234"
    assert store.read_range(["e.bin"], 20, 3, etag=etag) == b""
    raw.put_object(store.container, "e.bin", b"abcdefghij")
    with pytest.raises(OSError) as stale:
        store.read_range(["e.bin"], 2, 3, etag=etag)
    assert stale.value.errno == errno.ESTALE
    assert store.read_range(["e.bin"], 2, 3) == b"cde"


def test_dlo_in_a_directory_of_many_empty_files_costs_no_head_per_file(store: CloudFileStorage, raw: Any,
                                                                       requests_log: list[tuple[str, str]]) -> None:
    for index in range(40):  # more zero-byte files than DLO_HEAD_LIMIT
        raw.put_object(store.container, f"many/e{index:02d}.txt", b"")
    parts = [b"x" * 1000, b"y" * 500]
    make_dlo(raw, store.container, "many/dlo.bin", parts)  # segments where the swift CLI puts them
    del requests_log[:]
    entries = {e.name: e for e in store.list_dir(["many"])}
    assert entries["dlo.bin"].size == 1500
    assert all(entries[f"e{index:02d}.txt"].size == 0 for index in range(40))
    assert [method for method, _ in requests_log].count("HEAD") == 1  # the DLO only
    assert [method for method, _ in requests_log].count("GET") == 2  # the listing, the segments' listing
