"""Prometheus metrics of a running mount (``-o metrics=HOST:PORT``), scraped during real workloads.

Real FUSE mounts over local stores and over the real Swift (directly, and through the
fault-injecting proxy, whose own request log the figures are checked against).  Each test
scrapes before and after what it does and checks the differences against what was done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from goblinfs.metrics import SyncMetrics, is_loopback, parse_address, serve

from .conftest import FaultSwift, drop_container, make_cloud_storage
from .mountutil import ROOT, Mounted, is_mounted, wait_until, write_local_config, write_swift_config

pytestmark = [pytest.mark.fuse]

KiB = 1024


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Figures:
    """One scrape: samples by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), float(sample.value)))

    def has(self, name: str) -> bool:
        return any(n == name for n, _labels, _value in self.samples)

    def get(self, name: str, **labels: str) -> float:
        """The sum of the samples of name whose labels include these (0 when there are none)."""
        return sum(value for n, have, value in self.samples
                   if n == name and all(have.get(k) == v for k, v in labels.items()))

    def by(self, name: str, *keys: str) -> Counter[tuple[str, ...]]:
        """Sample values of name summed by the values of these labels."""
        out: Counter[tuple[str, ...]] = Counter()
        for n, have, value in self.samples:
            if n == name:
                out[tuple(have.get(k, "") for k in keys)] += value
        return out


def scrape(port: int) -> Figures:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return Figures(response.read().decode())


def delta(after: Figures, before: Figures, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def drop_page_cache(path: Path) -> None:
    """Drop the kernel's cached pages of one file, so the next read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def metrics_port() -> Iterator[int]:
    port = free_port()
    yield port
    # Whatever happened, nothing of the daemon may still listen there.
    assert wait_until(lambda: not listening(port), 10), f"the metrics port {port} is still open"


# ------------------------------------------------------------------ addresses


def test_parse_address_needs_an_explicit_host() -> None:
    assert parse_address("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_address("[::1]:9101") == ("::1", 9101)
    assert parse_address("localhost:1") == ("localhost", 1)
    assert parse_address("0.0.0.0:65535") == ("0.0.0.0", 65535)
    for bad in ("", "9101", ":9101", "127.0.0.1", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:0",
                "127.0.0.1:70000", "::1:9101", "[::1]9101", "example.org:9101"):
        with pytest.raises(ValueError):
            parse_address(bad)
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


def test_serve_warns_of_an_address_that_is_not_loopback(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    import goblinfs.metrics

    bound: list[tuple[str, int]] = []

    class NoBind:  # never listen beyond 127.0.0.1 in a test: record what would be bound
        def __init__(self, host: str, port: int, registry: Any) -> None:
            bound.append((host, port))
            self.url = f"http://{host}:{port}/metrics"

    monkeypatch.setattr(goblinfs.metrics, "MetricsServer", NoBind)
    with caplog.at_level("WARNING", logger="goblinfs.metrics"):
        serve("127.0.0.1:9101")
        assert not caplog.records
        serve("192.0.2.1:9101")
    assert bound == [("127.0.0.1", 9101), ("192.0.2.1", 9101)]
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "not a loopback" in caplog.records[0].message


def _mount_cli(config: Path, mnt: Path, options: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "goblinfs", "mount", str(config), str(mnt), "-o", options],
                          capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT))


def test_bad_metrics_option_is_one_line_and_mounts_nothing(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for option, says in (("metrics=9101", "give the address to listen on"),
                         ("metrics", "give HOST:PORT"),
                         ("metrics=example.org:9101", "IP address or localhost")):
        result = _mount_cli(config, mnt, option)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], result.stderr
        assert not is_mounted(mnt)


def test_busy_metrics_port_is_one_line_and_mounts_nothing(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            result = _mount_cli(config, mnt, f"metrics=127.0.0.1:{port},cache_dir={tmp_path / 'wb'}")
        finally:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0] and "in use" in lines[0], result.stderr
    assert not is_mounted(mnt)


# ------------------------------------------------------------------ local stores


def test_local_mount_counts_operations_bytes_and_errors(tmp_path: Path, metrics_port: int) -> None:
    config = write_local_config(tmp_path / "cfg")
    data = os.urandom(300 * KiB + 17)
    with Mounted(config, tmp_path / "mnt", options=f"metrics=127.0.0.1:{metrics_port},cache_size=64M") as mounted:
        public = mounted.mountpoint / "public"
        before = scrape(metrics_port)
        assert before.get("goblinfs_cache_limit_bytes") == 64 * 1048576
        assert before.get("goblinfs_open_files") == 0
        assert before.has("process_resident_memory_bytes")

        target = public / "photo.jpg"
        with open(target, "wb") as f:
            f.write(data[: 100 * KiB])
            f.write(data[100 * KiB:])
            held = scrape(metrics_port)  # while the file is open
        assert held.get("goblinfs_open_files") == 1
        drop_page_cache(target)
        assert target.read_bytes() == data
        with pytest.raises(FileNotFoundError):
            os.stat(public / "missing.jpg")
        with pytest.raises(PermissionError):
            os.symlink("photo.jpg", public / "link.jpg")
        after = scrape(metrics_port)

    assert delta(after, before, "goblinfs_fuse_written_bytes_total") == len(data)
    assert delta(after, before, "goblinfs_fuse_read_bytes_total") == len(data)
    assert delta(after, before, "goblinfs_fuse_operation_seconds_count", op="create") == 1
    assert delta(after, before, "goblinfs_fuse_operation_seconds_count", op="write") >= 2
    assert delta(after, before, "goblinfs_fuse_operation_seconds_count", op="read") >= 1
    assert delta(after, before, "goblinfs_fuse_operation_seconds_count", op="release") >= 2
    assert delta(after, before, "goblinfs_fuse_errors_total", op="lookup", errno="ENOENT") >= 1
    assert delta(after, before, "goblinfs_fuse_errors_total", op="symlink", errno="EPERM") == 1
    assert after.get("goblinfs_fuse_errors_total", errno="EIO") == 0
    assert after.get("goblinfs_open_files") == 0
    # A histogram's buckets hold every observation.
    assert after.get("goblinfs_fuse_operation_seconds_bucket", op="create", le="+Inf") == \
        after.get("goblinfs_fuse_operation_seconds_count", op="create")
    # No Swift here: no request, no byte.
    assert after.get("goblinfs_swift_requests_total") == 0
    assert after.get("goblinfs_swift_uploaded_bytes_total") == 0


# ------------------------------------------------------------------ Swift


@pytest.fixture
def swift_container(swift_env: dict[str, Any]) -> Iterator[str]:
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    yield container
    drop_container(swift_env, container)
    drop_container(swift_env, container + "-queue")


def _put_objects(swift_env: dict[str, Any], container: str, objects: dict[str, bytes]) -> None:
    """Objects put straight into Swift (not through the mount): their first read is cold."""
    store = make_cloud_storage(swift_env, container)
    try:
        for name, content in objects.items():
            with store.get_file([name], "wb") as f:
                f.write(content)
    finally:
        store.close()


#: Listings trusted for the whole test, and no segment collection at mount: no request but the test's.
SWIFT_OPTIONS = "dir_timeout=300,attr_timeout=300,nogc"


def test_swift_uploads_equal_writes_and_cold_reads_get_once(
        tmp_path: Path, swift_env: dict[str, Any], swift_container: str, metrics_port: int) -> None:
    cold = {"cold-small.bin": os.urandom(200 * KiB), "cold-medium.bin": os.urandom(2 * 1048576 + 5)}
    _put_objects(swift_env, swift_container, cold)
    config = write_swift_config(tmp_path / "cfg", swift_env, swift_container)
    written = {"a.bin": os.urandom(100 * KiB), "b.bin": os.urandom(700 * KiB + 3), "empty.bin": b""}
    big = os.urandom(3 * 1048576 + 11)  # past segment_size (1 MiB): streamed as an SLO
    options = f"metrics=127.0.0.1:{metrics_port},{SWIFT_OPTIONS}"
    with Mounted(config, tmp_path / "mnt", options=options) as mounted:
        public = mounted.mountpoint / "public"
        for name in cold:
            os.stat(public / name)  # the listing is fetched here, not during the reads below

        # Writes: what Swift acknowledged is what was written.
        before = scrape(metrics_port)
        for name, content in written.items():
            (public / name).write_bytes(content)
        after = scrape(metrics_port)
        total = sum(len(c) for c in written.values())
        assert delta(after, before, "goblinfs_fuse_written_bytes_total") == total
        assert delta(after, before, "goblinfs_swift_uploaded_bytes_total") == total
        assert delta(after, before, "goblinfs_swift_requests_total", method="PUT", status="2xx") == len(written)
        assert delta(after, before, "goblinfs_swift_request_seconds_count", method="PUT") == len(written)
        assert delta(after, before, "goblinfs_swift_retries_total") == 0
        assert after.get("goblinfs_pending_uploads") == 0

        # A streamed big file: its bytes, plus only the small SLO manifest.
        before = after
        subprocess.run(["dd", f"of={public / 'big.bin'}", "bs=256k", "status=none"], input=big, check=True)
        after = scrape(metrics_port)
        assert delta(after, before, "goblinfs_fuse_written_bytes_total") == len(big)
        uploaded = delta(after, before, "goblinfs_swift_uploaded_bytes_total")
        assert len(big) < uploaded < len(big) + 4 * KiB, uploaded
        assert after.get("goblinfs_pending_uploads") == 0

        # Cold reads: one GET each, their bytes downloaded, a cache miss each.
        for name, content in cold.items():
            before = scrape(metrics_port)
            assert (public / name).read_bytes() == content
            after = scrape(metrics_port)
            assert delta(after, before, "goblinfs_swift_requests_total", method="GET") == 1, name
            assert delta(after, before, "goblinfs_swift_downloaded_bytes_total") == len(content), name
            assert delta(after, before, "goblinfs_cache_misses_total") == 1, name
            assert delta(after, before, "goblinfs_cache_hits_total") == 0, name
            assert delta(after, before, "goblinfs_fuse_read_bytes_total") == len(content), name
            # Warm: revalidated by one HEAD, read from the cached copy.
            assert (public / name).read_bytes() == content
            warm = scrape(metrics_port)
            assert delta(warm, after, "goblinfs_swift_requests_total", method="GET") == 0, name
            assert delta(warm, after, "goblinfs_swift_requests_total", method="HEAD") == 1, name
            assert delta(warm, after, "goblinfs_cache_hits_total") == 1, name

        # What was written here is cached already: reading it back downloads nothing.
        before = scrape(metrics_port)
        assert (public / "b.bin").read_bytes() == written["b.bin"]
        after = scrape(metrics_port)
        assert delta(after, before, "goblinfs_swift_downloaded_bytes_total") == 0
        assert delta(after, before, "goblinfs_cache_hits_total") == 1
        # ... unless it is small (under CACHE_WRITTEN_MIN): no cache entry was made for it, and
        # reading it back is one GET of exactly its bytes.
        before = scrape(metrics_port)
        assert (public / "a.bin").read_bytes() == written["a.bin"]
        after = scrape(metrics_port)
        assert delta(after, before, "goblinfs_swift_downloaded_bytes_total") == len(written["a.bin"])
        assert delta(after, before, "goblinfs_cache_misses_total") == 1
        assert after.get("goblinfs_cache_used_bytes") >= sum(len(c) for c in cold.values())
        # Every attempt is in its method's histogram.
        for method in ("GET", "HEAD", "PUT"):
            assert after.get("goblinfs_swift_request_seconds_count", method=method) == \
                after.get("goblinfs_swift_requests_total", method=method)
        assert after.get("goblinfs_fuse_errors_total", errno="EIO") == 0
    assert not listening(metrics_port)


def _swift_requests(proxy: Any, start: int, end: int) -> Counter[tuple[str, str]]:
    """The proxy's log of requests [start:end], as (method, status) the way metrics label them."""
    out: Counter[tuple[str, str]] = Counter()
    for method, target, outcome in proxy.requests[start:end]:
        if target.startswith("/info"):
            continue  # the cluster's limits, read once and not counted
        if target.startswith("/auth"):
            method = "AUTH"
        if not isinstance(outcome, int):
            out[(method, "error")] += 1  # dropped, reset, truncated: no answer
        else:
            out[(method, "2xx" if 200 <= outcome < 300 else str(outcome))] += 1
    return out


def _metric_requests(after: Figures, before: Figures) -> Counter[tuple[str, str]]:
    out = after.by("goblinfs_swift_requests_total", "method", "status")
    out.subtract(before.by("goblinfs_swift_requests_total", "method", "status"))
    return Counter({key: int(n) for key, n in out.items() if n})


def test_swift_faults_counted_as_the_proxy_saw_them(
        tmp_path: Path, fault_swift: FaultSwift, swift_container: str, metrics_port: int) -> None:
    proxy = fault_swift.proxy
    cold = os.urandom(150 * KiB)
    _put_objects(fault_swift.env, swift_container, {"cold.bin": cold})
    # A short deadline, so that a GET failing for good gives EIO in seconds (public store only).
    config = write_swift_config(tmp_path / "cfg", fault_swift.env, swift_container, extra="retry_deadline = 4\n")
    options = f"metrics=127.0.0.1:{metrics_port},{SWIFT_OPTIONS}"
    mount_start = len(proxy.requests)
    with Mounted(config, tmp_path / "mnt", options=options) as mounted:
        public = mounted.mountpoint / "public"
        os.stat(public / "cold.bin")
        # The mount reads each store's figures once in the background (one account HEAD per store):
        # let those finish and be counted before the first window opens.
        def settled() -> bool:
            heads = [t for m, t, _ in proxy.requests[mount_start:] if m == "HEAD" and t.rstrip("/").count("/") == 2]
            return len(heads) >= 2 and scrape(metrics_port).get("goblinfs_swift_requests_total", method="HEAD") >= 2
        assert wait_until(settled, 30), proxy.requests[mount_start:]

        # One 503 on the PUT of a new file: retried, the file is in Swift, both attempts counted.
        before = scrape(metrics_port)
        start = len(proxy.requests)
        rule = proxy.add_rule(method="PUT", path=f"/{swift_container}/new.bin", action="status", status=503)
        content = os.urandom(64 * KiB)
        (public / "new.bin").write_bytes(content)
        after = scrape(metrics_port)
        end = len(proxy.requests)
        assert rule.hits == 1
        assert delta(after, before, "goblinfs_swift_requests_total", method="PUT", status="503") == 1
        assert delta(after, before, "goblinfs_swift_requests_total", method="PUT", status="2xx") == 1
        assert delta(after, before, "goblinfs_swift_retries_total", method="PUT") == 1
        assert delta(after, before, "goblinfs_swift_given_up_total") == 0
        assert delta(after, before, "goblinfs_swift_uploaded_bytes_total") == len(content)
        assert _metric_requests(after, before) == _swift_requests(proxy, start, end)

        # A dropped connection on a GET: counted as an error, retried, the read succeeds.
        before = after
        start = len(proxy.requests)
        rule = proxy.add_rule(method="GET", path=f"/{swift_container}/cold.bin", action="drop")
        assert (public / "cold.bin").read_bytes() == cold
        after = scrape(metrics_port)
        end = len(proxy.requests)
        assert rule.hits == 1
        assert delta(after, before, "goblinfs_swift_requests_total", method="GET", status="error") == 1
        assert delta(after, before, "goblinfs_swift_retries_total", method="GET") == 1
        assert delta(after, before, "goblinfs_swift_downloaded_bytes_total") == len(cold)
        assert _metric_requests(after, before) == _swift_requests(proxy, start, end)

        # GETs failing for good: the open gets EIO, the mount counts it, the request is given up.
        proxy.clear()
        _put_objects(fault_swift.env, swift_container, {"cold.bin": os.urandom(10 * KiB)})  # a new ETag: cold
        before = scrape(metrics_port)
        start = len(proxy.requests)
        rule = proxy.add_rule(method="GET", path=f"/{swift_container}/cold.bin", action="status", status=503,
                              times=None)
        with pytest.raises(OSError) as failed:
            (public / "cold.bin").read_bytes()
        assert failed.value.errno == errno.EIO
        after = scrape(metrics_port)
        end = len(proxy.requests)
        proxy.clear()
        assert rule.hits >= 2
        assert delta(after, before, "goblinfs_swift_requests_total", method="GET", status="503") == rule.hits
        assert delta(after, before, "goblinfs_swift_retries_total", method="GET") == rule.hits - 1
        assert delta(after, before, "goblinfs_swift_given_up_total", method="GET") == 1
        assert delta(after, before, "goblinfs_fuse_errors_total", op="open", errno="EIO") == 1
        assert _metric_requests(after, before) == _swift_requests(proxy, start, end)
        mounted.check_log()


def test_read_cache_evictions_and_use(
        tmp_path: Path, swift_env: dict[str, Any], swift_container: str, metrics_port: int) -> None:
    objects = {f"obj{i}.bin": os.urandom(600 * KiB) for i in range(3)}
    _put_objects(swift_env, swift_container, objects)
    config = write_swift_config(tmp_path / "cfg", swift_env, swift_container)
    options = f"metrics=127.0.0.1:{metrics_port},{SWIFT_OPTIONS},cache_size=1M"
    with Mounted(config, tmp_path / "mnt", options=options) as mounted:
        public = mounted.mountpoint / "public"
        before = scrape(metrics_port)
        assert before.get("goblinfs_cache_limit_bytes") == 1048576
        for name, content in objects.items():
            assert (public / name).read_bytes() == content
        after = scrape(metrics_port)
    # 600 KiB copies under a 1 MiB bound: each new one evicts the one before.
    assert delta(after, before, "goblinfs_cache_misses_total") == 3
    assert delta(after, before, "goblinfs_cache_evictions_total") == 2
    assert after.get("goblinfs_cache_used_bytes") == 600 * KiB
    assert delta(after, before, "goblinfs_swift_downloaded_bytes_total") == 3 * 600 * KiB


class _Progress:
    def __init__(self) -> None:
        self.done: list[tuple[int, bool]] = []
        self.started: tuple[int, int] | None = None
        self.stopped = False

    def start(self, files: int, nbytes: int) -> None:
        self.started = (files, nbytes)

    def file_done(self, nbytes: int, ok: bool) -> None:
        self.done.append((nbytes, ok))

    def stop(self) -> None:
        self.stopped = True


def test_sync_figures_served_with_the_swift_requests_of_the_process(
        swift_env: dict[str, Any], swift_container: str) -> None:
    """What ``goblinfs sync --metrics-port`` serves: its progress and the storage layer's requests."""
    port = free_port()
    figures = SyncMetrics()
    server = serve(f"127.0.0.1:{port}", figures.registry)
    store = make_cloud_storage(swift_env, swift_container)
    try:
        before = scrape(port)
        content = os.urandom(123 * KiB)
        with store.get_file(["copied.bin"], "wb") as f:
            f.write(content)
        with store.get_file(["copied.bin"], "rb") as f:
            assert f.read() == content
        progress = _Progress()
        sink = figures.wrap(progress)
        sink.start(2, 300)
        sink.file_done(100, True)
        mid = scrape(port)
        sink.file_done(200, False)
        sink.stop()
        after = scrape(port)
    finally:
        figures.close()
        server.close()
        store.close()
    assert progress.started == (2, 300) and progress.done == [(100, True), (200, False)] and progress.stopped
    assert mid.get("goblinfs_sync_files_pending") == 1 and mid.get("goblinfs_sync_bytes_pending") == 200
    assert delta(after, before, "goblinfs_sync_files_total", result="copied") == 1
    assert delta(after, before, "goblinfs_sync_files_total", result="failed") == 1
    assert delta(after, before, "goblinfs_sync_bytes_total") == 100
    assert after.get("goblinfs_sync_files_pending") == 0
    assert delta(after, before, "goblinfs_swift_uploaded_bytes_total") == len(content)
    assert delta(after, before, "goblinfs_swift_downloaded_bytes_total") == len(content)
    assert delta(after, before, "goblinfs_swift_requests_total", method="PUT", status="2xx") >= 1
    assert delta(after, before, "goblinfs_swift_requests_total", method="GET", status="2xx") >= 1
    assert after.has("process_resident_memory_bytes")
    assert not listening(port)
    # Detached: requests after close() are not counted any more.
    counted = figures.registry.get_sample_value("goblinfs_swift_uploaded_bytes_total")
    store = make_cloud_storage(swift_env, swift_container)
    try:
        with store.get_file(["later.bin"], "wb") as f:
            f.write(b"x" * 1000)
    finally:
        store.close()
    assert figures.registry.get_sample_value("goblinfs_swift_uploaded_bytes_total") == counted


# ------------------------------------------------------------------ observers never break requests


class _Exploding:
    """An observer whose every method raises."""

    def __getattr__(self, name: str) -> Any:
        def explode(*args: Any) -> None:
            raise RuntimeError(f"observer {name} broke")
        return explode


class _StubVfs:
    async def getattr(self, inode: int) -> Any:
        raise FileNotFoundError(errno.ENOENT, "gone")

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return len(buf)


async def test_a_failing_operation_observer_changes_no_answer() -> None:
    import pyfuse3

    from goblinfs.fuse_ops import Operations

    ops = Operations(_StubVfs(), observer=_Exploding())  # type: ignore[arg-type]
    with pytest.raises(pyfuse3.FUSEError) as failed:
        await ops.getattr(5)
    assert failed.value.errno == errno.ENOENT
    assert await ops.write(1, 0, b"abc") == 3


def test_a_failing_request_observer_changes_no_request(swift_env: dict[str, Any], swift_container: str) -> None:
    from goblinfs.storage.swift import session

    broken = _Exploding()
    session.add_observer(broken)  # type: ignore[arg-type]
    store = make_cloud_storage(swift_env, swift_container)
    try:
        with store.get_file(["x.bin"], "wb") as f:
            f.write(b"content")
        with store.get_file(["x.bin"], "rb") as f:
            assert f.read() == b"content"
    finally:
        session.remove_observer(broken)  # type: ignore[arg-type]
        store.close()


# ------------------------------------------------------------------ goblinfs sync --metrics-port


def test_sync_serves_its_figures_while_it_runs(
        tmp_path: Path, fault_swift: FaultSwift, swift_container: str) -> None:
    """``goblinfs sync --metrics-port``: scraped during a run slowed down by the proxy (each PUT
    waits 1 s), the figures follow the copies; the port closes when the command ends."""
    source = tmp_path / "src"
    source.mkdir()
    files = {f"f{i}.bin": os.urandom((i + 1) * 10 * KiB) for i in range(4)}
    for name, content in files.items():
        (source / name).write_bytes(content)
    config = write_swift_config(tmp_path / "cfg", fault_swift.env, swift_container)
    fault_swift.proxy.add_rule(method="PUT", path=rf"/{swift_container}/f\d", action="delay", delay=1.0, times=None)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "goblinfs", "sync", str(source), f"{config}:public",
                             "--transfers", "1", "--progress", "none", "--metrics-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    seen: list[Figures] = []
    try:
        def copied_some() -> bool:
            try:
                figures = scrape(port)
            except (OSError, urllib.error.URLError):
                return False
            seen.append(figures)
            return figures.get("goblinfs_sync_files_total", result="copied") >= 2
        assert wait_until(copied_some, 60, interval=0.2), (proc.poll(), seen[-1].text if seen else "no scrape")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    mid = seen[-1]
    copied = mid.get("goblinfs_sync_files_total", result="copied")
    assert 2 <= copied < len(files)  # scraped while it ran
    assert mid.get("goblinfs_sync_files_pending") == len(files) - copied
    assert mid.get("goblinfs_sync_files_total", result="failed") == 0
    assert mid.get("goblinfs_swift_requests_total", method="PUT", status="2xx") >= copied
    # A file's PUT is acknowledged (uploaded) before the copy is verified and counted (sync bytes).
    assert 0 < mid.get("goblinfs_sync_bytes_total") <= mid.get("goblinfs_swift_uploaded_bytes_total")
    assert not listening(port)


def test_pending_uploads_still_served_while_they_drain_at_stop(
        tmp_path: Path, fault_swift: FaultSwift, swift_container: str, metrics_port: int) -> None:
    """SIGTERM with a file still to upload and Swift slow: the scrape keeps showing it pending
    during the drain (the FUSE session is over by then), and the file reaches Swift."""
    import signal

    config = write_swift_config(tmp_path / "cfg", fault_swift.env, swift_container)
    options = f"metrics=127.0.0.1:{metrics_port},{SWIFT_OPTIONS}"
    content = os.urandom(200 * KiB)
    with Mounted(config, tmp_path / "mnt", options=options) as mounted:
        assert mounted.proc is not None
        fault_swift.proxy.add_rule(method="PUT", path=f"/{swift_container}/held.bin", action="delay", delay=12)
        f = open(mounted.mountpoint / "public" / "held.bin", "wb")  # noqa: SIM115 - held across the stop
        f.write(content)
        f.flush()
        mounted.proc.send_signal(signal.SIGTERM)  # with the file still open: the daemon drains it
        seen = []

        def pending_during_drain() -> bool:
            try:
                figures = scrape(metrics_port)
            except OSError:
                return False
            seen.append(figures.get("goblinfs_pending_uploads"))
            return figures.get("goblinfs_pending_uploads") >= 1

        try:
            time.sleep(1.5)  # the FUSE session ended at once; the upload waits 12 s in the proxy
            assert mounted.proc.poll() is None, "the daemon should still be draining"
            assert wait_until(pending_during_drain, 3), seen
            assert mounted.proc.wait(timeout=60) == 0
        finally:
            with contextlib.suppress(OSError):
                f.close()  # the session is gone by now
    store = make_cloud_storage(fault_swift.env, swift_container)
    assert store.read_range(["held.bin"], 0, len(content)) == content
