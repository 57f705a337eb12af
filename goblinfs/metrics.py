"""Prometheus metrics of a running mount (``-o metrics=HOST:PORT``) and of ``goblinfs sync``.

The figures come from hooks that know nothing of Prometheus: ``Operations.observer``
(``goblinfs.fuse_ops.OpObserver``, every FUSE request), the request observers of
``goblinfs.storage.swift.session`` (every Swift request, retry and body byte), the read cache's
counters and the Vfs's status (read when scraped).  This module turns them into
prometheus-client metrics on a registry of its own and serves them over HTTP.

Contracts:

* ``serve(addr)`` binds exactly the address given as ``HOST:PORT`` (``[::1]:PORT`` for IPv6);
  a port alone, an empty host or a host name other than ``localhost`` is refused
  (``ValueError`` with a one-line reason), so metrics never end up on every interface by
  accident.  A host that is not loopback is allowed but logged as a warning.
* Observers never raise into the code they observe, and cost a few microseconds a call.
* What a scrape reads from the Vfs (pending uploads, journal, recovered files, open files) is
  read on the trio thread that owns it (handed over with the loop's trio token; a scrape waits
  5 s at most); before that loop runs, after it ended or when it does not answer in time, those
  figures are left out rather than guessed.

Metric names (all prefixed ``goblinfs_``):

* ``fuse_operation_seconds{op}``: histogram of FUSE request durations (``_count``: requests);
  ``fuse_errors_total{op,errno}``: requests answered with an error, by errno name (ENOENT, EIO...);
  ``fuse_read_bytes_total``, ``fuse_written_bytes_total``: bytes read and written through the mount.
* ``swift_requests_total{method,status}``: HTTP exchanges with Swift, each attempt (status ``2xx``,
  an error code, ``timeout`` or ``error``); ``swift_request_seconds{method}``: histogram of their
  durations (to the response headers); ``swift_retries_total{method}``: attempts repeated after a
  transient failure; ``swift_given_up_total{method}``: requests failed for good after transient
  failures; ``swift_uploaded_bytes_total``: body bytes of PUTs Swift acknowledged;
  ``swift_downloaded_bytes_total``: body bytes read from GETs.
* ``cache_hits_total``, ``cache_misses_total``: opens of remote files served from / not from a kept
  copy; ``cache_evictions_total``; ``cache_used_bytes``, ``cache_limit_bytes`` (``cache_size``).
* ``writeback_uploads_total``, ``writeback_failed_attempts_total``: write-back's background uploads;
* ``plain_streams_total{outcome}``: new files sent to Swift while being written (stored, failed
  and sent whole at close, given up);
* ``pending_uploads{state}``, ``pending_upload_bytes``: files whose content is not yet in the store,
  by write state, and their size; ``journaled_files``: journal records left by an earlier run;
  ``recovered_files``: files kept under ``<workbench>/recovered``; ``open_files``: open handles.
* ``sync_files_total{result}`` (copied, failed), ``sync_bytes_total``, ``sync_files_pending``,
  ``sync_bytes_pending``: ``goblinfs sync``'s progress.
* ``process_*``: the daemon's CPU, memory and file descriptors (prometheus-client's).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .storage.swift import session as swift_session

log = logging.getLogger(__name__)

#: Buckets of FUSE request durations (seconds): cached attributes answer in tens of µs, a
#: close that uploads takes seconds.
FUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets of Swift request durations (seconds), up to the per-attempt timeout and beyond.
SWIFT_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0)
#: HTTP methods whose retry counters exist from the start (at 0), so rates and alerts see them.
SWIFT_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
#: Write states whose pending-upload gauge always exists (goblinfs.vfs.writes.JOURNALED).
PENDING_STATES = ("truncated", "dirty", "streaming", "publishing", "sealed", "queued")
#: How long a scrape waits for the trio thread to read the Vfs figures.
VFS_READ_TIMEOUT = 5.0


# ------------------------------------------------------------------------- serving


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPV6]:PORT``) → (host, port); ValueError with a one-line reason.

    HOST must be an IP address or ``localhost``: a port alone would listen on every interface.
    """
    text = text.strip()
    example = "e.g. 127.0.0.1:9101"
    if not text:
        raise ValueError(f"give HOST:PORT to listen on ({example})")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: an IPv6 address is written [ADDRESS]:PORT ({example})")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: give the address to listen on as well as the port ({example})")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address is written [ADDRESS]:PORT ({example})")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: the host must be an IP address or localhost ({example})") from None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number ({example})") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be between 1 and 65535")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether host only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` (any path, in fact) from a registry, in a thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop listening and end the server thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(addr: str, registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve *registry* (default: a new one with the process figures) at ``HOST:PORT``.

    ValueError for a bad address (see :func:`parse_address`), OSError when it cannot listen
    (e.g. EADDRINUSE).  A host that is not loopback is served but warned about.
    """
    host, port = parse_address(addr)
    if registry is None:
        registry = new_registry()
    if not is_loopback(host):
        log.warning("metrics served on %s:%d, not a loopback address: whoever reaches it can read them", host, port)
    server = MetricsServer(host, port, registry)
    log.info("metrics at %s", server.url)
    return server


def new_registry() -> CollectorRegistry:
    """A registry holding this process's CPU, memory and file descriptor figures (``process_*``)."""
    registry = CollectorRegistry()
    registry.register(PROCESS_COLLECTOR)
    registry.register(PLATFORM_COLLECTOR)
    return registry


# ------------------------------------------------------------------------- Swift


class SwiftMetrics:
    """Swift request figures of this process (a ``RequestObserver`` of the storage layer)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("goblinfs_swift_requests", "HTTP exchanges with Swift, each attempt",
                                ["method", "status"], registry=registry)
        self.seconds = Histogram("goblinfs_swift_request_seconds", "Duration of Swift requests, each attempt",
                                 ["method"], buckets=SWIFT_BUCKETS, registry=registry)
        self.retries = Counter("goblinfs_swift_retries", "Swift attempts repeated after a transient failure",
                               ["method"], registry=registry)
        self.given_up = Counter("goblinfs_swift_given_up", "Swift requests failed for good after transient failures",
                                ["method"], registry=registry)
        self.uploaded = Counter("goblinfs_swift_uploaded_bytes", "Body bytes of PUTs Swift acknowledged",
                                registry=registry)
        self.downloaded = Counter("goblinfs_swift_downloaded_bytes", "Body bytes read from Swift GETs",
                                  registry=registry)
        for method in SWIFT_METHODS:
            self.retries.labels(method)
            self.given_up.labels(method)
        self._attached = False
        # Children by labels: a labels() lookup costs more than the observation.
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def attempt(self, method: str, status: str, seconds: float) -> None:
        counted = self._counted.get((method, status))
        if counted is None:
            counted = self._counted[(method, status)] = self.requests.labels(method, status)
        timed = self._timed.get(method)
        if timed is None:
            timed = self._timed[method] = self.seconds.labels(method)
        counted.inc()
        timed.observe(seconds)

    def retry(self, method: str) -> None:
        self.retries.labels(method).inc()

    def gave_up(self, method: str) -> None:
        self.given_up.labels(method).inc()

    def transferred(self, direction: str, nbytes: int) -> None:
        (self.uploaded if direction == "up" else self.downloaded).inc(nbytes)

    def attach(self) -> None:
        """Start observing every Swift request of this process."""
        if not self._attached:
            swift_session.add_observer(self)
            self._attached = True

    def detach(self) -> None:
        if self._attached:
            swift_session.remove_observer(self)
            self._attached = False


# ------------------------------------------------------------------------- FUSE


class FuseMetrics:
    """FUSE request figures (a ``goblinfs.fuse_ops.OpObserver``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram("goblinfs_fuse_operation_seconds", "Duration of FUSE requests, by operation",
                                 ["op"], buckets=FUSE_BUCKETS, registry=registry)
        self.errors = Counter("goblinfs_fuse_errors", "FUSE requests answered with an error, by errno",
                              ["op", "errno"], registry=registry)
        self.read_bytes = Counter("goblinfs_fuse_read_bytes", "Bytes returned by reads through the mount",
                                  registry=registry)
        self.written_bytes = Counter("goblinfs_fuse_written_bytes", "Bytes accepted by writes through the mount",
                                     registry=registry)
        # Children by labels: a labels() lookup per request costs more than the observation.
        self._children: dict[str, Any] = {}
        self._errors: dict[tuple[str, int], Any] = {}

    def operation(self, name: str, seconds: float, code: int) -> None:
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = self.seconds.labels(name)
        child.observe(seconds)
        if code:
            failed = self._errors.get((name, code))
            if failed is None:
                failed = self._errors[(name, code)] = self.errors.labels(name, errno.errorcode.get(code, str(code)))
            failed.inc()

    def transferred(self, direction: str, nbytes: int) -> None:
        (self.read_bytes if direction == "read" else self.written_bytes).inc(nbytes)


# ------------------------------------------------------------------------- the mount's state


def vfs_figures(vfs: Any) -> dict[str, Any]:
    """(trio thread) What a scrape shows of the Vfs: pending uploads by state and their bytes,
    journal records left by an earlier run, recovered files, open handles."""
    by_state = dict.fromkeys(PENDING_STATES, 0)
    pending_bytes = 0
    for item in vfs.pending_uploads():
        by_state[str(item.get("state"))] = by_state.get(str(item.get("state")), 0) + 1
        pending_bytes += int(item.get("bytes") or 0)
    wb = vfs.write_back
    return {"pending": by_state, "pending_bytes": pending_bytes, "journaled": len(vfs.journaled()),
            "recovered": len(vfs.recovered()), "open_files": len(vfs.handles),
            "write_back": {"uploaded": wb.uploaded, "failed": wb.failures},
            "plain_streams": dict(vfs.plain_streams)}


class MountCollector(Collector):
    """Figures read when scraped: the read cache's counters and use, and the Vfs's state."""

    def __init__(self, vfs: Any, trio_token: Callable[[], trio.lowlevel.TrioToken | None]) -> None:
        self.vfs = vfs
        self.trio_token = trio_token

    def collect(self) -> Iterator[Metric]:
        cache = getattr(self.vfs, "cache", None)
        if cache is not None:
            used, limit = cache.usage()
            yield CounterMetricFamily("goblinfs_cache_hits", "Opens of remote files served from a kept copy",
                                      value=cache.hits)
            yield CounterMetricFamily("goblinfs_cache_misses", "Opens of remote files that fetched the object",
                                      value=cache.misses)
            yield CounterMetricFamily("goblinfs_cache_evictions", "Copies evicted from the read cache",
                                      value=cache.evictions)
            yield GaugeMetricFamily("goblinfs_cache_used_bytes", "Bytes held by the read cache", value=used)
            yield GaugeMetricFamily("goblinfs_cache_limit_bytes", "Bound of the read cache (cache_size)",
                                    value=limit)
        figures = self._read_vfs()
        if figures is None:
            return
        pending = GaugeMetricFamily("goblinfs_pending_uploads", "Files whose content is not yet in the store",
                                    labels=["state"])
        for state, count in sorted(figures["pending"].items()):
            pending.add_metric([state], count)
        yield pending
        yield GaugeMetricFamily("goblinfs_pending_upload_bytes", "Size of the files not yet in the store",
                                value=figures["pending_bytes"])
        yield GaugeMetricFamily("goblinfs_journaled_files", "Journal records left by an earlier run",
                                value=figures["journaled"])
        yield GaugeMetricFamily("goblinfs_recovered_files", "Files kept under <workbench>/recovered",
                                value=figures["recovered"])
        yield GaugeMetricFamily("goblinfs_open_files", "Open file handles", value=figures["open_files"])
        yield CounterMetricFamily("goblinfs_writeback_uploads", "Write-back: queued files uploaded",
                                  value=figures["write_back"]["uploaded"])
        yield CounterMetricFamily("goblinfs_writeback_failed_attempts",
                                  "Write-back: upload attempts that failed (each is retried)",
                                  value=figures["write_back"]["failed"])
        plain = CounterMetricFamily("goblinfs_plain_streams", "New files sent to Swift as they were written (one "
                                    "PUT), by outcome: stored, failed (sent whole at close), given_up",
                                    labels=["outcome"])
        for outcome, count in sorted(figures["plain_streams"].items()):
            plain.add_metric([outcome], count)
        yield plain

    def _read_vfs(self) -> dict[str, Any] | None:
        token = self.trio_token()
        if token is None:
            return None
        done = threading.Event()
        result: dict[str, Any] = {}

        def read() -> None:
            try:
                result.update(vfs_figures(self.vfs))
            except Exception:
                log.exception("metrics: reading the mount's state failed")
            finally:
                done.set()

        try:
            token.run_sync_soon(read)
        except trio.RunFinishedError:
            return None
        if not done.wait(VFS_READ_TIMEOUT):
            log.warning("metrics: the mount did not give its state within %.0f s", VFS_READ_TIMEOUT)
            return None
        return result or None


class MountMetrics:
    """Everything a mount serves: FUSE and Swift figures, the cache and the Vfs state, the process.

    ``fuse`` is the observer to give ``Operations``; ``close()`` stops serving and observing.
    """

    def __init__(self, addr: str, vfs: Any, trio_token: Callable[[], trio.lowlevel.TrioToken | None]) -> None:
        self.registry = new_registry()
        self.fuse = FuseMetrics(self.registry)
        self.swift = SwiftMetrics(self.registry)
        self.registry.register(MountCollector(vfs, trio_token))
        self.swift.attach()
        try:
            self.server = serve(addr, self.registry)
        except BaseException:
            self.swift.detach()
            raise

    def close(self) -> None:
        self.swift.detach()
        self.server.close()


# ------------------------------------------------------------------------- goblinfs sync


class SyncMetrics:
    """Figures of ``goblinfs sync``: files and bytes as its progress reports them, plus the Swift
    figures of its requests (``goblinfs_swift_*``, as a mount's).

    It has the methods of ``goblinfs.sync.ProgressSink`` (``start``, ``file_done``, ``stop``);
    ``wrap(sink)`` gives a sink telling both.  Use::

        figures = SyncMetrics()
        server = serve(f"127.0.0.1:{port}", figures.registry)   # ValueError / OSError: one line
        try:
            progress = figures.wrap(progress)
            ...                                                  # the run
        finally:
            figures.close()
            server.close()
    """

    def __init__(self) -> None:
        self.registry = new_registry()
        self.files = Counter("goblinfs_sync_files", "Files goblinfs sync finished, by result (copied, failed)",
                             ["result"], registry=self.registry)
        for result in ("copied", "failed"):
            self.files.labels(result)
        self.bytes = Counter("goblinfs_sync_bytes", "Bytes of the files goblinfs sync copied", registry=self.registry)
        self.pending = Gauge("goblinfs_sync_files_pending", "Files goblinfs sync still has to copy",
                             registry=self.registry)
        self.pending_bytes = Gauge("goblinfs_sync_bytes_pending", "Bytes goblinfs sync still has to copy",
                                   registry=self.registry)
        self.swift = SwiftMetrics(self.registry)
        self.swift.attach()

    def start(self, files: int, nbytes: int) -> None:
        """The run has *files* files (*nbytes* bytes) to copy."""
        self.pending.set(files)
        self.pending_bytes.set(nbytes)

    def file_done(self, nbytes: int, ok: bool) -> None:
        """A file of *nbytes* bytes was copied (ok) or failed."""
        self.files.labels("copied" if ok else "failed").inc()
        if ok:
            self.bytes.inc(nbytes)
        self.pending.dec()
        self.pending_bytes.dec(nbytes)

    def stop(self) -> None:
        """The run ended (the figures stay as they are)."""

    def wrap(self, sink: Any) -> _BothSinks:
        """A progress sink telling *sink* and these figures."""
        return _BothSinks(sink, self)

    def close(self) -> None:
        """Stop observing Swift requests."""
        self.swift.detach()


class _BothSinks:
    def __init__(self, first: Any, second: SyncMetrics) -> None:
        self.first = first
        self.second = second

    def start(self, files: int, nbytes: int) -> None:
        self.first.start(files, nbytes)
        self.second.start(files, nbytes)

    def file_done(self, nbytes: int, ok: bool) -> None:
        self.first.file_done(nbytes, ok)
        self.second.file_done(nbytes, ok)

    def stop(self) -> None:
        self.first.stop()
        self.second.stop()


__all__ = ["FuseMetrics", "MetricsServer", "MountMetrics", "SwiftMetrics", "SyncMetrics", "is_loopback",
           "new_registry", "parse_address", "serve"]
