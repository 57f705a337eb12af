"""CloudFileStorage against the real Swift behind a fault-injecting proxy (``fault_swift``).

Each test injects faults on chosen requests (a 503, a dropped or truncated connection, a hang,
an expired token) and checks the promise of goblinfs.storage.swift.session: transient failures
are retried within the deadline and the data comes out right; past the deadline the caller
gets StorageUnavailable, in bounded time, and nothing stored is damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import swiftclient.client
from swiftclient.client import ClientException

from goblinfs.storage import StorageUnavailable
from goblinfs.storage.cloudfiles import CloudFileStorage

from .conftest import FaultSwift, drop_container, make_cloud_storage

pytestmark = pytest.mark.swift

MiB = 1048576

#: Short timeouts for the tests that wait for a deadline (the defaults are tested once).
FAST = {"timeout": "2", "retry_deadline": "6"}


# ------------------------------------------------------------------------------ helpers


def raw_connection(env: dict[str, Any]) -> swiftclient.client.Connection:
    """A plain swiftclient connection straight to Swift (not through the proxy)."""
    return swiftclient.client.Connection(authurl=env.get("direct_auth_url", env["auth_url"]), user=env["user"],
                                         key=env["key"], retries=2)


@pytest.fixture
def faults(fault_swift: FaultSwift) -> FaultSwift:
    return fault_swift


@pytest.fixture
def container(faults: FaultSwift, swift_container_name: str) -> Iterator[str]:
    yield swift_container_name
    drop_container(faults.env, swift_container_name)


@pytest.fixture
def store(faults: FaultSwift, container: str, tmp_path: Any) -> Iterator[CloudFileStorage]:
    s = make_cloud_storage(faults.env, container, staging_dir=str(tmp_path / "staging"), **FAST)
    yield s
    s.close()


@pytest.fixture
def raw(faults: FaultSwift) -> swiftclient.client.Connection:
    return raw_connection(faults.env)


def local_file(path: Any, size: int, seed: int = 0) -> bytes:
    block = hashlib.sha512(str(seed).encode()).digest()
    data = (block * (size // len(block) + 1))[:size]
    data = bytes(b ^ (i & 0xFF) for i, b in enumerate(data[:4096])) + data[4096:]
    with open(path, "wb") as f:
        f.write(data)
    return data


def segments(raw: swiftclient.client.Connection, container: str) -> list[str]:
    try:
        return [item["name"] for item in raw.get_container(container + "_segments", full_listing=True)[1]]
    except ClientException as exc:
        if exc.http_status == 404:
            return []
        raise


def statuses(faults: FaultSwift, method: str, pattern: str) -> list[Any]:
    import re

    return [outcome for m, target, outcome in faults.proxy.requests if m == method and re.search(pattern, target)]


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# -------------------------------------------------------------- one transient failure


def test_one_503_on_a_plain_put_is_retried(store: CloudFileStorage, faults: FaultSwift, raw: Any,
                                           tmp_path: Any) -> None:
    data = local_file(tmp_path / "a.bin", 300000, seed=1)
    rule = faults.proxy.add_rule(method="PUT", path=r"/a\.bin$", status=503)
    entry = store.store_local_file(str(tmp_path / "a.bin"), ["a.bin"])
    assert rule.hits == 1
    assert statuses(faults, "PUT", r"/a\.bin$") == [503, 201]
    assert raw.get_object(store.container, "a.bin")[1] == data
    assert entry.etag == hashlib.md5(data).hexdigest()


def test_expired_token_on_a_plain_put(store: CloudFileStorage, raw: Any, tmp_path: Any) -> None:
    """swiftclient logs in again after the 401 and resends the body: it calls the body's reset()
    with the request's arguments (the TypeError about 'content_length' was this)."""
    data = local_file(tmp_path / "t.bin", 200000, seed=2)
    store._conn().token = "AUTH_tk00000000000000000000000000000000"
    store.store_local_file(str(tmp_path / "t.bin"), ["t.bin"], new=True)  # one PUT: it meets the 401
    assert raw.get_object(store.container, "t.bin")[1] == data


def test_one_503_on_a_segment_put_and_on_the_manifest_put(store: CloudFileStorage, faults: FaultSwift,
                                                            raw: Any, tmp_path: Any) -> None:
    data = local_file(tmp_path / "big.bin", 3 * MiB + 5, seed=3)
    segment_rule = faults.proxy.add_rule(method="PUT", path=r"_segments/big\.bin/.*/00000001$", status=503)
    manifest_rule = faults.proxy.add_rule(method="PUT", path=r"/big\.bin\?multipart-manifest=put", status=503)
    entry = store.store_local_file(str(tmp_path / "big.bin"), ["big.bin"])
    assert (segment_rule.hits, manifest_rule.hits) == (1, 1)
    headers, body = raw.get_object(store.container, "big.bin")
    assert body == data and headers["x-static-large-object"].lower() == "true"
    assert entry.size == len(data)
    assert len(segments(raw, store.container)) == 4  # no segment sent twice under another name


def test_one_503_and_a_reset_on_stream_segment_puts(store: CloudFileStorage, faults: FaultSwift, raw: Any) -> None:
    """A streamed segment is kept in memory until Swift acknowledged it, so it is sent again."""
    stream = store.start_upload(["s.bin"])
    assert stream is not None
    first = faults.proxy.add_rule(method="PUT", path=r"_segments/s\.bin/.*/00000000$", status=503)
    second = faults.proxy.add_rule(method="PUT", path=r"_segments/s\.bin/.*/00000002$", action="reset")
    data = os.urandom(3 * MiB + 4321)
    for offset in range(0, len(data), 100000):
        stream.put(data[offset:offset + 100000])
    entry = stream.finish()
    assert (first.hits, second.hits) == (1, 1)
    assert raw.get_object(store.container, "s.bin")[1] == data
    assert entry.size == len(data)
    manifest = json.loads(raw.get_object(store.container, "s.bin", query_string="multipart-manifest=get")[1])
    assert len(manifest) == 4 and len(segments(raw, store.container)) == 4


def test_expired_token_on_a_stream_segment(store: CloudFileStorage, faults: FaultSwift, raw: Any) -> None:
    """The chunked PUT of a segment meets the 401 of an expired token: login, segment resent."""
    stream = store.start_upload(["tok.bin"])
    assert stream is not None
    rule = faults.proxy.add_rule(method="PUT", path=r"_segments/tok\.bin/.*/00000001$", status=401)
    logins = sum(1 for method, target, _ in faults.proxy.requests if method == "GET" and "/auth/" in target)
    data = os.urandom(2 * MiB + 10)
    stream.put(data)
    stream.finish()
    assert rule.hits == 1
    assert raw.get_object(store.container, "tok.bin")[1] == data
    assert statuses(faults, "PUT", r"_segments/tok\.bin/.*/00000001$") == [401, 201]
    assert sum(1 for method, target, _ in faults.proxy.requests if method == "GET" and "/auth/" in target) > logins


def test_one_503_on_a_get_and_on_a_listing(store: CloudFileStorage, faults: FaultSwift, raw: Any) -> None:
    data = os.urandom(700000)
    raw.put_object(store.container, "dir/g.bin", data)
    get_rule = faults.proxy.add_rule(method="GET", path=r"/dir/g\.bin$", status=503)
    with store.get_file(["dir", "g.bin"], "rb") as f:
        assert f.read() == data
    assert get_rule.hits == 1
    range_rule = faults.proxy.add_rule(method="GET", path=r"/dir/g\.bin$", status=503)
    assert store.read_range(["dir", "g.bin"], 1000, 50) == data[1000:1050]
    assert range_rule.hits == 1
    listing_rule = faults.proxy.add_rule(method="GET", path=r"format=json.*prefix=dir", status=503)
    entries = store.list_dir(["dir"])
    assert listing_rule.hits == 1
    assert [(e.name, e.size) for e in entries] == [("g.bin", len(data))]


def test_connection_dropped_in_the_middle_of_a_get_body(store: CloudFileStorage, faults: FaultSwift,
                                                        raw: Any, tmp_path: Any) -> None:
    data = os.urandom(3 * MiB + 17)
    raw.put_object(store.container, "cut.bin", data)
    rule = faults.proxy.add_rule(method="GET", path=r"/cut\.bin$", action="truncate", after_bytes=MiB + 3, times=2)
    with store.get_file(["cut.bin"], "rb") as f:
        assert f.read() == data
    assert rule.hits == 2
    ranges = [outcome for method, target, outcome in faults.proxy.requests if method == "GET" and "cut.bin" in target]
    assert ranges == ["truncate", "truncate", 206]
    # copy_locally (the mount's download) resumes the same way.
    faults.proxy.add_rule(method="GET", path=r"/cut\.bin$", action="truncate", after_bytes=2 * MiB)
    store.copy_locally(["cut.bin"], str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data


def test_resumed_get_never_mixes_two_versions(store: CloudFileStorage, faults: FaultSwift, raw: Any) -> None:
    old = b"o" * (2 * MiB)
    raw.put_object(store.container, "v.bin", old)
    faults.proxy.add_rule(method="GET", path=r"/v\.bin$", action="truncate", after_bytes=MiB)
    f = store.get_file(["v.bin"], "rb")
    try:
        first = f.read(512 * 1024)
        assert first == old[: 512 * 1024]
        raw.put_object(store.container, "v.bin", b"n" * (2 * MiB))  # replaced while being read
        with pytest.raises(OSError, match="changed while being read"):
            f.read()
    finally:
        f.close()


# ----------------------------------------------------------------- hangs and deadlines


def test_hang_gives_storage_unavailable_within_the_deadline_then_recovers(store: CloudFileStorage,
                                                                          faults: FaultSwift, raw: Any) -> None:
    raw.put_object(store.container, "h.txt", b"hello")
    faults.proxy.add_rule(action="hang", times=None)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.stat(["h.txt"])
    elapsed = time.monotonic() - started
    assert 4 <= elapsed <= 6 + 6, elapsed  # retry_deadline=6, timeout=2 (slack for a busy machine; not 25 s)
    faults.proxy.clear()
    started = time.monotonic()
    assert store.read_range(["h.txt"], 0, 5) == b"hello"
    assert store.stat(["h.txt"]).size == 5
    assert time.monotonic() - started < 5


def test_hang_with_default_options_is_an_error_within_30_seconds(faults: FaultSwift, container: str,
                                                                 raw: Any) -> None:
    s = make_cloud_storage(faults.env, container)
    try:
        assert (s.timeout, s.retry_deadline) == (10.0, 25.0)
        raw.put_object(container, "d.txt", b"data")
        faults.proxy.add_rule(action="hang", times=None)
        results: list[BaseException | bytes] = []

        def read() -> None:
            try:
                results.append(s.read_range(["d.txt"], 0, 4))
            except BaseException as exc:  # noqa: BLE001 - examined below
                results.append(exc)

        started = time.monotonic()
        worker = threading.Thread(target=read)
        worker.start()
        worker.join(35)
        elapsed = time.monotonic() - started
        assert not worker.is_alive()
        assert elapsed < 30, elapsed
        assert isinstance(results[0], StorageUnavailable) and isinstance(results[0], Exception)
        faults.proxy.clear()
        started = time.monotonic()
        assert s.read_range(["d.txt"], 0, 4) == b"data"
        assert time.monotonic() - started < 5
    finally:
        s.close()


def test_dead_swift_then_alive_again(store: CloudFileStorage, faults: FaultSwift, raw: Any) -> None:
    raw.put_object(store.container, "x.txt", b"x")
    faults.proxy.set_dead(True)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.list_dir([])
    assert time.monotonic() - started < 8
    faults.proxy.set_dead(False)
    started = time.monotonic()
    assert [e.name for e in store.list_dir([])] == ["x.txt"]
    assert time.monotonic() - started < 5


def test_swift_back_during_the_retries_is_success(store: CloudFileStorage, faults: FaultSwift, raw: Any,
                                                  tmp_path: Any) -> None:
    data = local_file(tmp_path / "w.bin", 50000, seed=4)
    rule = faults.proxy.add_rule(method="PUT", path=r"/w\.bin$", status=503, times=3)
    store.store_local_file(str(tmp_path / "w.bin"), ["w.bin"])
    assert rule.hits == 3
    assert raw.get_object(store.container, "w.bin")[1] == data


def test_persistent_503_is_an_error_after_the_deadline_and_the_old_object_stays(
        store: CloudFileStorage, faults: FaultSwift, raw: Any, tmp_path: Any) -> None:
    raw.put_object(store.container, "keep.bin", b"old content")
    local_file(tmp_path / "new.bin", 3 * MiB, seed=5)  # an SLO: segments, then the manifest
    faults.proxy.add_rule(method="PUT", path=r"/keep\.bin\?multipart-manifest=put", status=503, times=None)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.store_local_file(str(tmp_path / "new.bin"), ["keep.bin"])
    elapsed = time.monotonic() - started
    assert 4 <= elapsed <= 15, elapsed  # segments, then 6 s of manifest retries: far from the 25 s default
    assert raw.get_object(store.container, "keep.bin")[1] == b"old content"
    assert len(statuses(faults, "PUT", r"multipart-manifest=put")) >= 3  # retried with back-off
    faults.proxy.clear()
    assert wait_for(lambda: segments(raw, store.container) == [])  # the failed upload's segments go

    faults.proxy.add_rule(method="PUT", path=r"/keep\.bin$", status=503, times=None)
    local_file(tmp_path / "small.bin", 1000, seed=6)
    with pytest.raises(StorageUnavailable):
        store.store_local_file(str(tmp_path / "small.bin"), ["keep.bin"])
    assert raw.get_object(store.container, "keep.bin")[1] == b"old content"


def test_stream_cut_by_a_persistent_503_leaves_no_segment(store: CloudFileStorage, faults: FaultSwift,
                                                          raw: Any) -> None:
    raw.put_object(store.container, "cut.bin", b"previous")
    stream = store.start_upload(["cut.bin"])
    assert stream is not None
    faults.proxy.add_rule(method="PUT", path=r"_segments/cut\.bin/.*/00000002$", status=503, times=None)
    data = os.urandom(4 * MiB)
    with pytest.raises(OSError):
        for offset in range(0, len(data), 256 * 1024):
            stream.put(data[offset:offset + 256 * 1024])
        stream.finish()
    assert raw.get_object(store.container, "cut.bin")[1] == b"previous"
    assert wait_for(lambda: segments(raw, store.container) == [])
    assert any(method == "DELETE" for method, _, _ in faults.proxy.requests)


def test_dropped_get_of_a_dlo_resumes(store: CloudFileStorage, faults: FaultSwift, raw: Any) -> None:
    """A DLO (X-Object-Manifest) read is resumed like any object (ranged GET with If-Match)."""
    segs = store.container + "_segments"
    raw.put_container(segs)
    parts = [os.urandom(MiB), os.urandom(MiB), os.urandom(99)]
    for index, part in enumerate(parts):
        raw.put_object(segs, f"dlo/{index:08d}", part)
    raw.put_object(store.container, "dlo.bin", b"", headers={"X-Object-Manifest": f"{segs}/dlo/"})
    rule = faults.proxy.add_rule(method="GET", path=r"/dlo\.bin$", action="truncate", after_bytes=MiB + 100)
    with store.get_file(["dlo.bin"], "rb") as f:
        assert f.read() == b"".join(parts)
    assert rule.hits == 1
    assert [e.size for e in store.list_dir([]) if e.name == "dlo.bin"] == [2 * MiB + 99]


def test_dropped_get_of_an_slo_resumes(store: CloudFileStorage, faults: FaultSwift, tmp_path: Any) -> None:
    data = local_file(tmp_path / "slo.bin", 3 * MiB + 1, seed=7)
    store.store_local_file(str(tmp_path / "slo.bin"), ["slo.bin"])
    rule = faults.proxy.add_rule(method="GET", path=r"/slo\.bin$", action="truncate", after_bytes=2 * MiB + 5)
    with store.get_file(["slo.bin"], "rb") as f:
        assert f.read() == data
    assert rule.hits == 1
    assert statuses(faults, "GET", r"/slo\.bin$") == ["truncate", 206]


def test_refused_connections_are_retried_for_10_seconds(faults: FaultSwift, container: str, raw: Any) -> None:
    """Nothing listening (Swift down, its proxy restarting): retried, but not for the whole 25 s."""
    s = make_cloud_storage(faults.env, container)
    try:
        raw.put_object(container, "r.txt", b"r")
        faults.proxy.set_dead(True)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            s.stat_file(["r.txt"])
        assert 8 <= time.monotonic() - started <= 16  # 10 s, not the whole 25 s
        faults.proxy.set_dead(False)
        assert s.stat_file(["r.txt"]).size == 1
    finally:
        s.close()
