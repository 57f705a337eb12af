"""goblinfs.storage.cloudfiles - MediaGoblin's CloudFilesStorage, on OpenStack Swift.

MediaGoblin's own backend used python-cloudfiles (Python 2 only, dead since 2013); this one
speaks to Swift (or Rackspace Cloud Files, which is Swift) through python-swiftclient and
accepts MediaGoblin's configuration keys (``cloudfiles_user``, ``cloudfiles_api_key``,
``cloudfiles_container``, ``cloudfiles_host`` = the auth URL, ``cloudfiles_use_servicenet``)
plus Keystone options.

How the store is laid out in the container:

* An object's name is ``'/'.join(resolve_components(filepath))``.
* **mtime** is kept where a container *listing* returns it, so a directory can be listed
  with its mtimes in one request: the Content-Type gets a parameter,
  ``image/jpeg;goblinfs_mtime=1764201001.123456789`` (seconds, 9 decimals, exact integer
  nanoseconds), and the swift CLI/rclone header ``X-Object-Meta-Mtime`` holds the same string.
  Objects without the parameter take X-Object-Meta-Mtime when a HEAD was made anyway
  (``stat``), else the listing's ``last_modified``.  The parameter never shows in
  :attr:`Entry.content_type`.
* **Directories** follow the swift CLI/Horizon convention: pseudo-directories by the ``/``
  delimiter, and ``make_dir`` writes a zero-byte marker ``name/`` of type
  ``application/directory`` (markers carry no Content-Type parameter, so other tools still
  recognise them; their mtime is in X-Object-Meta-Mtime).  An ``application/directory``
  object without the trailing slash (svfs/cloudfuse) is read as a directory too.  When a
  name is both a file and a directory (Swift allows ``a`` next to ``a/b``), the directory
  wins in ``list_dir``, ``stat`` and ``move`` (logged once); the hidden file can still be
  read or deleted by its name.  Directory entries from ``list_dir`` have mtime 0 (a
  listing rolls the marker into its ``subdir`` entry); ``stat`` reads the marker's mtime.
* **Large objects** (bigger than ``segment_size``, or than the cluster's max_file_size) are
  Static Large Objects: segments ``<object>/<upload uuid>/<index:08d>`` in the container
  ``<container>_segments``, then the manifest.  Replacing or deleting an SLO deletes its
  segments; moving one copies only the manifest.  The Entry etag of an SLO is the one HEAD
  reports (the SLO etag, MD5 of the segments' etags), which listings give as ``slo_etag``.
* Written data is spooled to a temporary file in ``staging_dir`` and uploaded on
  ``close()``; reads stream (ranged GETs on seek).  Nothing is held whole in memory.
"""

from __future__ import annotations

import calendar
import errno
import hashlib
import http.client
import io
import json
import logging
import mimetypes
import os
import queue
import re
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO

from requests.exceptions import RequestException
from swiftclient.client import ClientException, Connection
from swiftclient.utils import LengthWrapper

from . import (
    NAME_MAX,
    Entry,
    NoWebServing,
    PublishOnClose,
    Space,
    StorageConfigError,
    StorageInterface,
    StorageUnavailable,
    Upload,
    resolve_components,
)
from . import NotImplementedError as StorageNotImplementedError

log = logging.getLogger(__name__)

#: Content-Type parameter holding the mtime (seconds with 9 decimals).
MTIME_PARAM = "goblinfs_mtime"
#: Content-Type of directory markers (swift CLI, Horizon, rclone, svfs).
DIRECTORY_TYPE = "application/directory"
#: Default size of SLO segments (objects larger than this are segmented).
DEFAULT_SEGMENT_SIZE = 100 * 1048576
#: Size of the chunks read from a GET response, copied from a file object or hashed.
READ_CHUNK = 262144
HASH_CHUNK = READ_CHUNK
#: Size of the reads a segment is sent in (and hashed as it goes).
SEND_CHUNK = 1048576
#: Threads uploading segments / copying and deleting objects in parallel.
DEFAULT_WORKERS = 4
#: Swift defaults, used when GET /info does not answer.
DEFAULT_MAX_FILE_SIZE = 5368709122
DEFAULT_MAX_OBJECT_NAME_LENGTH = 1024
DEFAULT_LISTING_LIMIT = 10000
DEFAULT_MAX_MANIFEST_SEGMENTS = 1000

_TRUE = {"1", "true", "yes", "on"}
#: ``_upload``'s default for ``old``: HEAD the object to find what it replaces.
_HEAD = object()
_AUTH_VERSIONS = {"1": "1.0", "1.0": "1.0", "2": "2.0", "2.0": "2.0", "3": "3", "3.0": "3"}


class AuthenticationFailed(StorageUnavailable):
    """Swift (or Keystone) refused the login: wrong user or key, or an unknown project."""


class _AuthRefused(Exception):
    """Raised inside a Connection when the auth service answers 401/403; never retried."""

    def __init__(self, status: int | None) -> None:
        super().__init__(f"auth refused: HTTP {status}")
        self.status = status


# ------------------------------------------------------------------------------ helpers


def format_mtime(mtime_ns: int) -> str:
    """Integer nanoseconds as exact decimal seconds with 9 decimals: ``1764201001.000000005``."""
    mtime_ns = int(mtime_ns)
    sign = "-" if mtime_ns < 0 else ""
    seconds, fraction = divmod(abs(mtime_ns), 1_000_000_000)
    return f"{sign}{seconds}.{fraction:09d}"


_DECIMAL_RE = re.compile(r"([+-]?)(\d+)(?:\.(\d*))?")


def parse_mtime(value: Any) -> int | None:
    """Decimal seconds (as stored by us, the swift CLI or rclone) to integer nanoseconds, exactly.

    Digits past the ninth decimal are dropped; None for anything unparseable.
    """
    if value is None:
        return None
    text = str(value).strip().strip('"')
    match = _DECIMAL_RE.fullmatch(text)
    if match:
        sign, seconds, fraction = match.groups()
        nanos = int(seconds) * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))
        return -nanos if sign == "-" else nanos
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return int((number * 1_000_000_000).to_integral_value(rounding=ROUND_FLOOR))


def split_content_type(value: str | None) -> tuple[str | None, int | None]:
    """Split ``type;goblinfs_mtime=S`` into (type without our parameter, mtime_ns or None).

    Other parameters are kept verbatim; ``swift_bytes`` (Swift's internal one) is dropped.
    """
    if not value:
        return None, None
    parts = value.split(";")
    kept = [parts[0].strip()]
    mtime_ns = None
    for part in parts[1:]:
        key, sep, param = part.strip().partition("=")
        lowered = key.strip().lower()
        if sep and lowered == MTIME_PARAM:
            mtime_ns = parse_mtime(param)
            continue
        if sep and lowered == "swift_bytes":
            continue
        if part.strip():
            kept.append(part.strip())
    return ";".join(kept), mtime_ns


def is_directory_type(content_type: str | None) -> bool:
    """True for ``application/directory`` (parameters and case ignored)."""
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == DIRECTORY_TYPE


_LISTING_TIME_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z?")


def parse_listing_time(value: str | None) -> int:
    """A listing's ``last_modified`` (UTC, ISO format without zone) as integer nanoseconds; 0 if absent."""
    if not value:
        return 0
    match = _LISTING_TIME_RE.fullmatch(value.strip())
    if not match:
        return 0
    moment = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S")
    fraction = int((match[2] or "")[:9].ljust(9, "0"))
    return calendar.timegm(moment.timetuple()) * 1_000_000_000 + fraction


def listing_etag(item: Mapping[str, Any]) -> str | None:
    """The etag of a listing item as HEAD reports it.

    For an SLO, HEAD gives the SLO etag (MD5 of the segments' etags) while the listing's
    ``hash`` is the manifest's MD5 followed by ``; slo_etag=<SLO etag>`` (Swift 2.30; newer
    releases may give ``slo_etag`` as a key of its own): the SLO etag is taken.
    """
    value = str(item.get("hash") or "")
    base, _, params = value.partition(";")
    slo_etag = item.get("slo_etag")
    for param in params.split(";"):
        key, sep, param_value = param.strip().partition("=")
        if sep and key.strip().lower() == "slo_etag" and not slo_etag:
            slo_etag = param_value.strip()
    return _strip_etag(slo_etag) or _strip_etag(base) or None


def _strip_etag(value: str | None) -> str | None:
    return value.strip().strip('"') if value else None


def _guess_type(leaf: str) -> str:
    return mimetypes.guess_type(leaf, strict=False)[0] or "application/octet-stream"


def _parse_mode(mode: str) -> tuple[str, bool]:
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or any(c not in "rwaxb+" for c in mode) or len(set(mode)) != len(mode):
        raise ValueError(f"invalid mode: {mode!r}")
    return kinds[0], "+" in mode


def _int_option(name: str, value: Any, default: int | None, minimum: int = 0) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise StorageConfigError(f"{name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise StorageConfigError(f"{name} must be at least {minimum}, not {number}")
    return number


def _float_option(name: str, value: Any, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        raise StorageConfigError(f"{name} must be a number, not {value!r}") from None
    if number <= 0:
        raise StorageConfigError(f"{name} must be positive, not {number}")
    return number


def _md5_range(path: str, start: int, length: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as source:
        source.seek(start)
        remaining = length
        while remaining > 0:
            chunk = source.read(min(HASH_CHUNK, remaining))
            if not chunk:
                raise OSError(errno.EIO, f"{path} shrank while being uploaded")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


_POST_KEPT_HEADERS = ("content-disposition", "content-encoding", "x-delete-at", "x-object-manifest")


def _header_meta(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers of a HEAD that a POST must re-send to keep them (user metadata and friends)."""
    kept = {}
    for key, value in headers.items():
        lowered = key.lower()
        user_meta = lowered.startswith("x-object-meta-") and lowered != "x-object-meta-mtime"
        if user_meta or lowered in _POST_KEPT_HEADERS:
            kept[key] = value
    return kept


class _Connection(Connection):
    """A swiftclient Connection that reports new tokens and never retries a refused login."""

    def __init__(self, on_auth: Callable[[str, str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_auth = on_auth

    def get_auth(self) -> tuple[str, str]:
        try:
            url, token = super().get_auth()
        except ClientException as exc:
            if exc.http_status in (401, 403):
                raise _AuthRefused(exc.http_status) from None
            raise
        self._on_auth(url, token)
        return url, token


# ------------------------------------------------------------------------- file objects


class SwiftReader(io.RawIOBase):
    """A seekable, streaming reader of one object: sequential reads come from one GET;
    a read after a seek opens a ranged GET from the new offset.  Never buffers the object.
    """

    def __init__(self, store: CloudFileStorage, name: str, conn: Connection, headers: Mapping[str, str],
                 body: Any) -> None:
        super().__init__()
        self._store = store
        self._conn = conn
        self.name = name
        self.size = int(headers.get("content-length") or 0)
        self.etag = _strip_etag(headers.get("etag"))
        self._pos = 0
        self._body: Any = body
        self._body_pos = 0

    def _check_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_closed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; no request until the next read."""
        self._check_closed()
        if whence == io.SEEK_SET:
            new = offset
        elif whence == io.SEEK_CUR:
            new = self._pos + offset
        elif whence == io.SEEK_END:
            new = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if new < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = new
        return new

    def readinto(self, buffer: Any) -> int:
        """Read up to len(buffer) bytes (at most READ_CHUNK) from the current position; 0 at EOF."""
        self._check_closed()
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self.size - self._pos, READ_CHUNK)
        if wanted <= 0:
            return 0
        if self._body is None or self._body_pos != self._pos:
            self._open_at(self._pos)
        try:
            data = self._body.read(wanted)
        except (RequestException, ConnectionError, TimeoutError) as exc:
            self._close_body()
            raise StorageUnavailable(f"reading {self.name} from Swift failed: {exc}") from exc
        if not data:
            self._close_body()
            raise OSError(errno.EIO, "object ended early (changed while being read?)", self.name)
        view[: len(data)] = data
        self._pos += len(data)
        self._body_pos = self._pos
        return len(data)

    def _open_at(self, offset: int) -> None:
        self._close_body()
        _, self._body = self._store._call(
            "get_object", self._store.container, self.name, resp_chunk_size=READ_CHUNK,
            headers={"Range": f"bytes={offset}-"}, name=self.name, conn=self._conn)
        self._body_pos = offset

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with suppress(Exception):
                body.close()

    def close(self) -> None:
        if not self.closed:
            self._close_body()
            with suppress(Exception):
                self._conn.close()
        super().close()


class SwiftWriter(PublishOnClose, io.FileIO):
    """A file spooled in ``staging_dir`` and uploaded to Swift by ``close()``.

    ``write`` takes bytes or a readable file object (streamed).  ``sync()`` uploads now and
    keeps the file open.  Leaving a ``with`` block through an exception, or ``discard()``,
    drops what was written.  ``mtime_ns`` may be set before closing; ``entry`` is the new
    Entry after an upload.  The spool file is removed in every case.
    """

    def __init__(self, store: CloudFileStorage, name: str, spool: str, mode: str, *, content_type: str,
                 meta: Mapping[str, str], exclusive: bool, dirty: bool) -> None:
        self._done = True
        super().__init__(spool, mode)
        self._store = store
        self._object_name = name
        self._spool = spool
        self._content_type = content_type
        self._meta = dict(meta)
        self._exclusive = exclusive
        self._dirty = dirty
        self._done = False
        self.mtime_ns: int | None = None
        self.entry: Entry | None = None

    @property
    def object_name(self) -> str:
        return self._object_name

    def write(self, data: Any) -> int:  # type: ignore[override]
        """Write bytes, or everything a readable file object gives (in chunks); the count written."""
        if hasattr(data, "read"):
            total = 0
            while True:
                chunk = data.read(READ_CHUNK)
                if not chunk:
                    return total
                total += self.write(chunk)
        view = memoryview(data).cast("B")
        total = len(view)
        self._dirty = True
        while view:
            written = super().write(view)
            if written is None:  # pragma: no cover - only for non-blocking fds
                continue
            view = view[written:]
        return total

    def truncate(self, size: int | None = None) -> int:
        self._dirty = True
        return super().truncate(size)

    def sync(self) -> Entry | None:
        """Upload the current content now (if changed) and keep the file open."""
        if self._done:
            raise ValueError("I/O operation on closed file")
        if self._dirty:
            self.flush()
            self._upload()
        return self.entry

    def _upload(self) -> None:
        self.entry = self._store._upload(self._spool, self._object_name, content_type=self._content_type,
                                         mtime_ns=self.mtime_ns, meta=self._meta, exclusive=self._exclusive)
        self._exclusive = False
        self._dirty = False

    def close(self) -> None:
        """Upload (if anything changed since open or the last sync) and remove the spool file.

        An upload error is raised from here; the spool file is removed in any case.
        """
        if self._done:
            super().close()
            return
        self._done = True
        try:
            if not self.closed:
                self.flush()
            super().close()
            if self._dirty:
                self._upload()
        finally:
            self._remove_spool()

    def discard(self) -> None:
        """Drop what was written; the stored object stays as it was."""
        if self._done:
            return
        self._done = True
        with suppress(Exception):
            super().close()
        self._remove_spool()

    def _remove_spool(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self._spool)



# ------------------------------------------------------------------------------- store


class _HashingBody(LengthWrapper):
    """The bytes [start, start + length) of an open file, sent by swiftclient in 1 MiB reads
    (its default file object path reads 16 KiB at a time), MD5-hashed on the way if hashing:
    the caller compares ``md5`` with the ETag Swift returns.
    """

    def __init__(self, fd: int, start: int, length: int, hashing: bool = True) -> None:  # no file object
        self._fd = fd
        self._start = start
        self._length = length
        self._pos = 0
        self._hashing = hashing
        self.md5 = hashlib.md5(usedforsecurity=False)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self._pos
        if remaining <= 0:
            return b""
        chunk = os.pread(self._fd, min(SEND_CHUNK, remaining), self._start + self._pos)
        if not chunk:
            raise OSError(errno.EIO, "the file shrank while being uploaded")
        self._pos += len(chunk)
        if self._hashing:
            self.md5.update(chunk)
        return chunk

    def reset(self) -> None:  # type: ignore[override]  # swiftclient calls it before a retry
        self._pos = 0
        self.md5 = hashlib.md5(usedforsecurity=False)


class _Segments:
    """The names of one upload's segments: ``<name>/<upload id>/<index>`` in the segments
    container (a hash instead of the name when that would be too long)."""

    def __init__(self, store: CloudFileStorage, name: str, segment_size: int) -> None:
        self.store = store
        self.name = name
        self.segment_size = segment_size
        self.upload_id = uuid.uuid4().hex
        self.base = name
        if len(f"{name}/{self.upload_id}/00000000".encode()) > store.max_object_name_length:
            self.base = hashlib.sha256(name.encode("utf-8")).hexdigest()

    def segment_name(self, index: int) -> str:
        return f"{self.base}/{self.upload_id}/{index:08d}"


class SegmentUploader(_Segments):
    """The SLO segments of a complete local file, sent on the store's worker pool.

    Segments are private (random names in the segments container) until the manifest is
    written, so a failed upload changes nothing visible; its segments are deleted.
    """

    def __init__(self, store: CloudFileStorage, local_path: str, name: str, segment_size: int) -> None:
        super().__init__(store, name, segment_size)
        self.local_path = local_path
        self.futures: list[Future[tuple[str, str, int]]] = []
        self.sent = 0
        self._fd: int | None = None

    def send(self, end: int) -> None:
        """Send bytes [0, end) as segments (each at most segment_size), in parallel."""
        while self.sent < end:
            if self._fd is None:
                self._fd = os.open(self.local_path, os.O_RDONLY | os.O_CLOEXEC)
            length = min(self.segment_size, end - self.sent)
            future = self.store._executor().submit(self._put, len(self.futures), self.sent, length)
            self.futures.append(future)
            self.sent += length

    def _put(self, index: int, start: int, length: int) -> tuple[str, str, int]:
        assert self._fd is not None
        self.store._ensure_segment_container()
        segment = self.segment_name(index)
        body = _HashingBody(self._fd, start, length, hashing=self.store.verify_segments)
        etag = _strip_etag(self.store._call("put_object", self.store.segment_container, segment, body,
                                            content_length=length, content_type="application/octet-stream",
                                            name=segment))
        if self.store.verify_segments and etag != body.md5.hexdigest():
            raise OSError(errno.EIO, f"Swift stored segment {segment} with ETag {etag}, sent {body.md5.hexdigest()}")
        return segment, etag or "", length

    def results(self) -> list[tuple[str, str, int]]:
        """Wait for every segment sent; the first error is raised once all have ended."""
        results = []
        error: BaseException | None = None
        for future in self.futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: B036 - re-raised after all ended
                error = error or exc
        if error is not None:
            raise error
        return results

    def discard(self) -> None:
        """Delete every segment sent (after they have all ended)."""
        for future in self.futures:
            with suppress(BaseException):
                future.result()
        self.close()
        self.store._delete_segments([(self.store.segment_container, self.segment_name(index))
                                     for index in range(len(self.futures))])

    def close(self) -> None:
        if self._fd is not None:
            with suppress(OSError):
                os.close(self._fd)
            self._fd = None


class SegmentStream(_Segments, Upload):
    """A file streamed into SLO segments while it is being appended to, from memory.

    ``offer``/``put`` queue the appended bytes (a window of ``window`` chunks, so memory
    stays bounded and a fast writer waits for the network); one thread sends them as
    chunked PUTs of at most segment_size each.  ``finish`` writes the manifest.  Nothing is
    visible before that; a failed or abandoned stream's segments are deleted.
    """

    def __init__(self, store: CloudFileStorage, name: str, segment_size: int, window: int = 16) -> None:
        super().__init__(store, name, segment_size)
        #: The vfs streams a file only once it is larger than this (smaller files: one PUT).
        self.begin_at = segment_size
        self.accepted = 0
        self.segments: list[tuple[str, str, int]] = []
        self.error: BaseException | None = None
        self.aborted = False
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=window)
        self._thread: threading.Thread | None = None
        self._ended = False
        self._eof = False
        #: The part of a queued chunk past the segment it was cut at (the next segment's start).
        self._carry: memoryview | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _check(self) -> None:
        if self.error is not None:
            raise OSError(errno.EIO, f"upload of {self.name} failed: {self.error}")
        if self.aborted:
            raise OSError(errno.EIO, f"upload of {self.name} was abandoned")

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="goblinfs-stream", daemon=True)
            self._thread.start()

    def offer(self, data: bytes) -> bool:
        self._check()
        self._start()
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            return False
        self.accepted += len(data)
        return True

    def put(self, data: bytes) -> None:
        """Append data, waiting for room; returns only once the window is half empty again, so
        a writer faster than Swift comes here (a thread hop) once per half window, not per write."""
        self._check()
        self._start()
        self._queue.put(data)
        self.accepted += len(data)
        half = self._queue.maxsize // 2
        with self._queue.not_full:  # the queue's own lock: qsize() would take it again
            while len(self._queue.queue) > half and self.error is None and not self.aborted:
                self._queue.not_full.wait(1.0)

    def put_file(self, fd: int, length: int) -> None:
        """Append bytes [0, length) of the open file fd (blocking)."""
        offset = 0
        while offset < length:
            chunk = os.pread(fd, min(SEND_CHUNK, length - offset), offset)
            if not chunk:
                raise OSError(errno.EIO, "the staging file is shorter than expected")
            self.put(chunk)
            offset += len(chunk)

    def _end(self) -> None:
        if not self._ended and self._thread is not None:
            self._ended = True
            self._queue.put(None)

    def _run(self) -> None:
        """Cut the queued bytes into segments.  A segment's PUT waits for Swift's answer (the
        object server's fsync) on a pool thread while the next segment is already sent."""
        futures: list[Future[tuple[str, str, int]]] = []
        try:
            self.store._ensure_segment_container()
            index = 0
            while not self._eof:
                first = self._carry if self._carry is not None else self._queue.get()
                self._carry = None
                if first is None:
                    self._eof = True
                    break
                sent_all = threading.Event()
                future = self.store._executor().submit(self._put_segment, index, first, sent_all)
                future.add_done_callback(lambda _f, event=sent_all: event.set())
                futures.append(future)
                sent_all.wait()
                if future.done() and future.exception() is not None:
                    break
                index += 1
            self.segments = [future.result() for future in futures]
        except BaseException as exc:
            self.error = exc
            if not self.aborted:
                log.warning("streaming %s to Swift failed: %s", self.name, exc)
            for future in futures:  # what was sent is deleted with the rest
                with suppress(BaseException):
                    self.segments.append(future.result())
            # Keep taking what writers queue until the end marker, so none of them blocks.
            while not self._eof and self._queue.get() is not None:
                pass

    def _put_segment(self, index: int, first: bytes | memoryview,
                     sent_all: threading.Event) -> tuple[str, str, int]:
        sent = 0

        def body() -> Iterator[memoryview]:
            nonlocal sent
            view = memoryview(first)
            try:
                while True:
                    if self.aborted:
                        raise OSError(errno.ECANCELED, "upload abandoned")
                    room = self.segment_size - sent
                    if len(view) > room:
                        self._carry = view[room:]
                        view = view[:room]
                    if len(view):
                        sent += len(view)
                        yield view
                    if sent >= self.segment_size or self._carry is not None:
                        return
                    following = self._queue.get()
                    if following is None:
                        self._eof = True
                        return
                    view = memoryview(following)
            finally:
                sent_all.set()

        segment = self.segment_name(index)
        etag = self.store._put_chunked(self.store.segment_container, segment, body())
        return segment, _strip_etag(etag) or "", sent

    def _wait(self) -> None:
        self._end()
        if self._thread is not None:
            self._thread.join()

    def finish(self, mtime_ns: int | None = None, new: bool = False) -> Entry:
        """Send the rest and the manifest; the Entry of the stored file.  FileExistsError (with
        new, when something appeared at the name) keeps the segments: call again without new."""
        self._wait()
        try:
            self._check()
            if sum(length for _, _, length in self.segments) != self.accepted:
                raise OSError(errno.EIO, f"stream of {self.name} lost bytes")
            return self.store._store_local(None, self.name, mtime_ns, new, stream=self)
        except FileExistsError:
            raise
        except BaseException:
            self.discard()
            raise

    def read_back(self, fd: int) -> int:
        """Stop streaming: write every byte appended so far into fd from offset 0 (read from the
        segments sent), delete the segments; the number of bytes."""
        self._wait()
        try:
            self._check()
            offset = 0
            for segment, _etag, _length in self.segments:
                _, body = self.store._call("get_object", self.store.segment_container, segment,
                                           resp_chunk_size=SEND_CHUNK, name=segment)
                for chunk in body:
                    os.pwrite(fd, chunk, offset)
                    offset += len(chunk)
            if offset != self.accepted:
                raise OSError(errno.EIO, f"read back {offset} of {self.accepted} bytes of {self.name}")
            return offset
        finally:
            self.discard()

    def abort(self) -> None:
        """Give up without waiting; the segments sent are deleted in the background."""
        if self.aborted:
            return
        self.aborted = True
        if self._thread is None:
            return

        def cleanup() -> None:
            self._wait()
            self.discard()

        threading.Thread(target=cleanup, name="goblinfs-abort-stream", daemon=True).start()

    def discard(self) -> None:
        segments, self.segments = self.segments, []
        self.store._delete_segments([(self.store.segment_container, segment) for segment, _, _ in segments])


class CloudFileStorage(StorageInterface):
    """A MediaGoblin store in one container of OpenStack Swift (python-swiftclient).

    Keys (all may be strings, as from a config file): ``cloudfiles_user``,
    ``cloudfiles_api_key``, ``cloudfiles_container``, ``cloudfiles_host`` (the auth URL),
    ``cloudfiles_use_servicenet``; ``auth_version`` ('1.0', '2.0' or '3'),
    ``project_name``/``tenant_name``, ``project_domain_name``, ``user_domain_name``,
    ``region_name``, ``endpoint_type``; ``base_url``; ``segment_size`` (bytes);
    ``retries``, ``timeout`` (seconds), ``staging_dir``, ``workers``, ``verify_segments``.
    Other keys are ignored.

    The container is created when missing.  Each thread gets its own Connection (they share
    the auth token); swiftclient retries with back-off and re-authenticates on a 401.
    A refused login raises :class:`AuthenticationFailed`, an unreachable server
    :class:`~goblinfs.storage.StorageUnavailable`.
    """

    local_storage = False

    def __init__(self, cloudfiles_user: str | None = None, cloudfiles_api_key: str | None = None,
                 cloudfiles_container: str | None = None, cloudfiles_host: str | None = None,
                 cloudfiles_use_servicenet: Any = None, *, auth_version: Any = "1.0",
                 project_name: str | None = None, tenant_name: str | None = None,
                 project_domain_name: str | None = None, user_domain_name: str | None = None,
                 region_name: str | None = None, endpoint_type: str | None = None,
                 base_url: str | None = None, segment_size: Any = None, retries: Any = None,
                 timeout: Any = None, staging_dir: str | None = None, workers: Any = None,
                 verify_segments: Any = None, **kwargs: Any) -> None:
        missing = [key for key, value in (("cloudfiles_user", cloudfiles_user),
                                          ("cloudfiles_api_key", cloudfiles_api_key),
                                          ("cloudfiles_container", cloudfiles_container),
                                          ("cloudfiles_host", cloudfiles_host)) if not value]
        if missing:
            raise StorageConfigError(f"CloudFileStorage needs {', '.join(missing)}")
        version = _AUTH_VERSIONS.get(str(auth_version or "1.0").strip().lower().lstrip("v"))
        if version is None:
            raise StorageConfigError(f"auth_version must be 1.0, 2.0 or 3, not {auth_version!r}")
        self.container = str(cloudfiles_container)
        if "/" in self.container:
            raise StorageConfigError(f"cloudfiles_container {self.container!r} may not contain '/'")
        self.segment_container = f"{self.container}_segments"
        self.auth_url = str(cloudfiles_host)
        self.user = str(cloudfiles_user)
        self.__key = str(cloudfiles_api_key)
        self.auth_version = version
        self.base_url = base_url
        self.segment_size = _int_option("segment_size", segment_size, DEFAULT_SEGMENT_SIZE, minimum=1)
        self.retries = _int_option("retries", retries, 3)
        self.timeout = _float_option("timeout", timeout, 60.0)
        self.workers = _int_option("workers", workers, DEFAULT_WORKERS, minimum=1)
        #: MD5 each SLO segment while sending it and compare with the ETag Swift computed (a
        #: second check of what TCP/TLS already check; ~1.6 s of CPU per GiB).  Objects sent
        #: whole are always hashed first, so Swift refuses a damaged one before it replaces anything.
        self.verify_segments = str(verify_segments or "").strip().lower() in _TRUE
        self.staging_dir = staging_dir or tempfile.gettempdir()
        os.makedirs(self.staging_dir, exist_ok=True)
        os_options = {key: value for key, value in (
            ("project_name", project_name), ("tenant_name", tenant_name),
            ("project_domain_name", project_domain_name), ("user_domain_name", user_domain_name),
            ("region_name", region_name), ("endpoint_type", endpoint_type)) if value}
        self._os_options = os_options
        if cloudfiles_use_servicenet is True or str(cloudfiles_use_servicenet).strip().lower() in _TRUE:
            log.debug("cloudfiles_use_servicenet ignored: python-swiftclient has no ServiceNet support")
        if kwargs:
            log.debug("CloudFileStorage ignores keys %s", sorted(kwargs))
        self._local = threading.local()
        self._auth_lock = threading.Lock()
        self._auth: tuple[str, str] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._segments_ready = False
        self._collisions_logged: set[str] = set()
        self._ensure_container(self.container)
        self._caps = self._fetch_capabilities()
        slo = self._caps.get("slo") or {}
        swift = self._caps.get("swift") or {}
        self.max_file_size = int(swift.get("max_file_size") or DEFAULT_MAX_FILE_SIZE)
        self.max_object_name_length = int(swift.get("max_object_name_length") or DEFAULT_MAX_OBJECT_NAME_LENGTH)
        self.listing_limit = int(swift.get("container_listing_limit") or DEFAULT_LISTING_LIMIT)
        self.slo_enabled = "slo" in self._caps or not self._caps
        self.max_manifest_segments = int(slo.get("max_manifest_segments") or DEFAULT_MAX_MANIFEST_SEGMENTS)
        self.min_segment_size = int(slo.get("min_segment_size") or 1)

    def __repr__(self) -> str:
        return f"<CloudFileStorage container={self.container!r} auth_url={self.auth_url!r} user={self.user!r}>"

    # ------------------------------------------------------------ connections, errors

    def _remember_auth(self, url: str, token: str) -> None:
        with self._auth_lock:
            self._auth = (url, token)

    def _new_connection(self) -> Connection:
        """A fresh Connection, starting from the last token any connection obtained."""
        with self._auth_lock:
            auth = self._auth
        return _Connection(
            self._remember_auth, authurl=self.auth_url, user=self.user, key=self.__key,
            retries=self.retries, preauthurl=auth[0] if auth else None, preauthtoken=auth[1] if auth else None,
            starting_backoff=0.5, max_backoff=8, os_options=dict(self._os_options),
            auth_version=self.auth_version, timeout=self.timeout, retry_on_ratelimit=True)

    def _conn(self) -> Connection:
        """This thread's Connection (the mount calls the store from several threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def _where(self, conn: Connection | None) -> str:
        url = getattr(conn, "url", None) or (self._auth[0] if self._auth else None)
        return f"storage URL {url}" if url else f"auth URL {self.auth_url}"

    def _map_error(self, exc: BaseException, name: str | None, conn: Connection | None) -> BaseException | None:
        if isinstance(exc, _AuthRefused):
            return AuthenticationFailed(
                f"Swift login refused (HTTP {exc.status}) for user {self.user!r} at auth URL {self.auth_url}")
        if isinstance(exc, ClientException):
            status = exc.http_status
            target = f"{self.container}/{name}" if name is not None else self.container
            if status == 404:
                return FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}",
                                         name if name is not None else self.container)
            if status in (401, 403):
                return PermissionError(errno.EACCES, f"Swift refused access (HTTP {status})", target)
            if status == 413:
                return OSError(errno.EFBIG, "Swift refused the object as too large (HTTP 413)", target)
            if status is None or status >= 500 or status in (408, 429, 498, 499):
                return StorageUnavailable(f"Swift at {self._where(conn)} failed for {target}: {exc.msg}"
                                          + (f" (HTTP {status})" if status else ""))
            return OSError(errno.EIO, f"Swift error (HTTP {status} {exc.http_reason}): {exc.msg}", target)
        if isinstance(exc, (RequestException, ConnectionError, TimeoutError, socket.gaierror)):
            return StorageUnavailable(f"cannot reach Swift at {self._where(conn)}: {exc}")
        return None

    def _call(self, method: str, *args: Any, name: str | None = None, conn: Connection | None = None,
              passthrough: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Run a swiftclient Connection method; map its errors to the storage/OS errors.

        ClientExceptions whose status is in *passthrough* are re-raised as they are.
        """
        connection = conn or self._conn()
        try:
            return getattr(connection, method)(*args, **kwargs)
        except ClientException as exc:
            if exc.http_status in passthrough:
                raise
            mapped = self._map_error(exc, name, connection)
            raise mapped from exc  # type: ignore[misc]
        except Exception as exc:
            mapped = self._map_error(exc, name, connection)
            if mapped is None:
                raise
            raise mapped from exc

    def _put_chunked(self, container: str, name: str, chunks: Iterator[memoryview]) -> str | None:
        """PUT an object from chunks of unknown total size (chunked transfer encoding); its ETag.

        http.client, not swiftclient/requests: urllib3 frames each chunk with ``b"%x\r\n%b\r\n"
        % ...``, a copy that cost ~1 s of CPU per GiB here; this sends the frame and the data
        separately.  The data cannot be sent twice, so a HEAD of the container first renews the
        token if it expired (swiftclient re-authenticates on its 401).
        """
        conn = self._conn()
        self._call("head_container", container, name=container, conn=conn)
        url, token = conn.url, conn.token
        parsed = urllib.parse.urlsplit(url)
        http_class = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        http_conn = http_class(parsed.hostname or "", parsed.port, timeout=self.timeout)
        path = f"{parsed.path.rstrip('/')}/{urllib.parse.quote(container)}/{urllib.parse.quote(name)}"
        try:
            http_conn.putrequest("PUT", path, skip_accept_encoding=True)
            http_conn.putheader("X-Auth-Token", token)
            http_conn.putheader("Transfer-Encoding", "chunked")
            http_conn.putheader("Content-Type", "application/octet-stream")
            http_conn.endheaders()
            for chunk in chunks:
                http_conn.send(b"%x\r\n" % len(chunk))
                http_conn.send(chunk)
                http_conn.send(b"\r\n")
            http_conn.send(b"0\r\n\r\n")
            response = http_conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise StorageUnavailable(f"cannot reach Swift at {parsed.netloc}: {exc}") from exc
        finally:
            http_conn.close()
        if response.status >= 300:
            raise self._map_error(ClientException(  # type: ignore[misc]
                f"Object PUT failed: {body[:200]!r}", http_status=response.status, http_reason=response.reason),
                name, conn) or OSError(errno.EIO, f"Swift answered {response.status}")
        return response.getheader("etag")

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="goblinfs-swift")
            return self._pool

    def _parallel(self, func: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """func over items on the worker pool; results in order, the first error re-raised.

        Inside a pool worker (a task that itself fans out) it runs in line: waiting on the
        pool from the pool could deadlock.
        """
        if len(items) <= 1 or getattr(self._local, "in_pool", False):
            return [func(item) for item in items]

        def task(item: Any) -> Any:
            self._local.in_pool = True
            return func(item)

        futures: list[Future[Any]] = [self._executor().submit(task, item) for item in items]
        results = []
        error: BaseException | None = None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: B036 - collected, re-raised after all finished
                results.append(None)
                error = error or exc
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Stop the worker threads and drop this thread's connection (the store stays usable)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _ensure_container(self, container: str) -> None:
        try:
            self._call("head_container", container)
        except FileNotFoundError:
            log.info("creating Swift container %s", container)
            self._call("put_container", container)

    def _ensure_segment_container(self) -> None:
        if not self._segments_ready:
            self._ensure_container(self.segment_container)
            self._segments_ready = True

    def _fetch_capabilities(self) -> dict[str, Any]:
        conn = self._conn()
        try:
            caps = conn.get_capabilities()
        except (ClientException, RequestException, ValueError) as exc:
            log.warning("Swift at %s gives no /info (%s); assuming Swift's default limits", self._where(conn), exc)
            return {}
        finally:
            # get_capabilities leaves an /info response on the shared HTTP session.
            conn.close()
        return caps if isinstance(caps, dict) else {}

    # ----------------------------------------------------------------------- names

    def _components(self, filepath: Sequence[str]) -> list[str]:
        return resolve_components(filepath)

    def _check_new_name(self, name: str, components: Sequence[str]) -> None:
        if len(name.encode("utf-8")) > self.max_object_name_length:
            raise OSError(errno.ENAMETOOLONG, f"object name longer than {self.max_object_name_length} bytes", name)
        for component in components:
            if len(component.encode("utf-8")) > NAME_MAX:
                raise OSError(errno.ENAMETOOLONG, f"name component longer than {NAME_MAX} bytes", component)

    def _file_name(self, filepath: Sequence[str]) -> str:
        components = self._components(filepath)
        if not components:
            raise IsADirectoryError(errno.EISDIR, "the store root is a directory", "")
        name = "/".join(components)
        if len(name.encode("utf-8")) > self.max_object_name_length:
            raise OSError(errno.ENAMETOOLONG, f"object name longer than {self.max_object_name_length} bytes", name)
        return name

    # ---------------------------------------------------------------- low-level ops

    def _head(self, name: str) -> dict[str, str] | None:
        """HEAD of the object; None when it does not exist."""
        try:
            return self._call("head_object", self.container, name, name=name)
        except FileNotFoundError:
            return None

    def _iter_listing(self, prefix: str, delimiter: str | None = None, limit: int | None = None,
                      container: str | None = None) -> Iterator[dict[str, Any]]:
        """The container listing under prefix, paged with marker (each page retried on its own)."""
        marker: str | None = None
        remaining = limit
        while True:
            want = self.listing_limit if remaining is None else min(self.listing_limit, remaining)
            _, items = self._call("get_container", container or self.container, marker=marker, limit=want,
                                  prefix=prefix or None, delimiter=delimiter, name=prefix or None)
            yield from items
            if remaining is not None:
                remaining -= len(items)
                if remaining <= 0:
                    return
            if len(items) < want:
                return
            last = items[-1]
            marker = last.get("name", last.get("subdir"))

    def _dir_probe(self, name: str) -> dict[str, Any] | None:
        """The first listing item under ``name/`` (marker or child), None when there is none."""
        for item in self._iter_listing(name + "/", limit=1):
            return item
        return None

    def _not_found(self, name: str) -> OSError:
        """The error for a name that is no object: IsADirectoryError for a directory."""
        if self._dir_probe(name) is not None:
            return IsADirectoryError(errno.EISDIR, "is a directory", name)
        return FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)

    @staticmethod
    def _is_slo(headers: Mapping[str, str] | None) -> bool:
        return bool(headers) and str(headers.get("x-static-large-object", "")).lower() == "true"

    def _slo_segments(self, name: str) -> list[tuple[str, str]]:
        """(container, object) of every segment of the SLO manifest name."""
        try:
            _, body = self._call("get_object", self.container, name, query_string="multipart-manifest=get",
                                 name=name)
            manifest = json.loads(body)
        except FileNotFoundError:
            return []
        except ValueError:
            log.warning("SLO manifest of %s is not JSON; its segments are left alone", name)
            return []
        segments = []
        for item in manifest:
            path = str(item.get("name") or item.get("path") or "").lstrip("/")
            container, _, obj = path.partition("/")
            if container and obj:
                segments.append((container, obj))
        return segments

    def _delete_segments(self, segments: Sequence[tuple[str, str]]) -> None:
        def delete(segment: tuple[str, str]) -> None:
            container, obj = segment
            try:
                self._call("delete_object", container, obj, name=f"{container}/{obj}")
            except FileNotFoundError:
                pass
            except Exception as exc:
                log.warning("could not delete segment %s/%s: %s", container, obj, exc)

        self._parallel(delete, list(segments))

    def _delete_object(self, name: str, headers: Mapping[str, str] | None = None) -> None:
        """DELETE name; an SLO's segments go too.  FileNotFoundError when missing."""
        if headers is None:
            headers = self._head(name)
            if headers is None:
                raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
        segments = self._slo_segments(name) if self._is_slo(headers) else []
        self._call("delete_object", self.container, name, name=name)
        self._delete_segments(segments)

    def _copy(self, src: str, dst: str, headers: Mapping[str, str] | None = None) -> None:
        """Server-side copy; an SLO manifest is copied as a manifest (its segments are shared)."""
        copy_headers = {"X-Copy-From": "/" + urllib.parse.quote(f"{self.container}/{src}")}
        copy_headers.update(headers or {})
        self._call("put_object", self.container, dst, None, headers=copy_headers,
                   query_string="multipart-manifest=get", name=src)

    # --------------------------------------------------------------------- entries

    def _entry_from_headers(self, leaf: str, headers: Mapping[str, str]) -> Entry:
        content_type, mtime_ns = split_content_type(headers.get("content-type"))
        if mtime_ns is None:
            mtime_ns = parse_mtime(headers.get("x-object-meta-mtime"))
        if mtime_ns is None:
            mtime_ns = parse_mtime(headers.get("x-timestamp"))
        if mtime_ns is None and headers.get("last-modified"):
            with suppress(TypeError, ValueError):
                mtime_ns = int(parsedate_to_datetime(headers["last-modified"]).timestamp()) * 1_000_000_000
        if is_directory_type(content_type):
            return Entry(leaf, True, 0, mtime_ns or 0)
        return Entry(leaf, False, int(headers.get("content-length") or 0), mtime_ns or 0,
                     _strip_etag(headers.get("etag")), content_type)

    @staticmethod
    def _entry_from_listing(leaf: str, item: Mapping[str, Any]) -> Entry:
        content_type, mtime_ns = split_content_type(item.get("content_type"))
        if mtime_ns is None:
            mtime_ns = parse_listing_time(item.get("last_modified"))
        if is_directory_type(content_type):
            return Entry(leaf, True, 0, mtime_ns)
        return Entry(leaf, False, int(item.get("bytes") or 0), mtime_ns, listing_etag(item), content_type)

    def _dir_entry(self, leaf: str, name: str, probe: Mapping[str, Any]) -> Entry:
        mtime_ns = 0
        if probe.get("name") == name + "/":
            marker = self._head(name + "/")
            if marker is not None:
                mtime_ns = self._entry_from_headers(leaf, marker).mtime_ns
        return Entry(leaf, True, 0, mtime_ns)

    def _log_collision(self, name: str) -> None:
        if name not in self._collisions_logged:
            self._collisions_logged.add(name)
            log.warning("Swift container %s has both a file and a directory named %s: showing the directory",
                        self.container, name)

    def _stat_name(self, name: str, leaf: str) -> Entry | None:
        headers = self._head(name)
        if headers is not None:
            entry = self._entry_from_headers(leaf, headers)
            if entry.is_dir:
                return entry
            probe = self._dir_probe(name)
            if probe is None:
                return entry
            self._log_collision(name)
            return self._dir_entry(leaf, name, probe)
        probe = self._dir_probe(name)
        return None if probe is None else self._dir_entry(leaf, name, probe)

    # ----------------------------------------------------------------------- upload

    def _base_segment_size(self) -> int:
        """segment_size within what the cluster allows."""
        return max(min(self.segment_size, self.max_file_size), self.min_segment_size)

    def _effective_segment_size(self, size: int) -> int:
        segment = self._base_segment_size()
        if size > segment and -(-size // segment) > self.max_manifest_segments:
            segment = -(-size // self.max_manifest_segments)
            if segment > self.max_file_size:
                raise OSError(errno.EFBIG, f"{size} bytes is more than Swift can store as one large object")
        return segment

    def _upload(self, path: str | None, name: str, *, content_type: str, mtime_ns: int | None = None,
                meta: Mapping[str, str] | None = None, exclusive: bool = False,
                old: Mapping[str, str] | None | object = _HEAD, stream: SegmentStream | None = None) -> Entry:
        """Upload the local file path as object name (SLO when large); return its Entry.

        ``old`` is the HEAD of the object being replaced if the caller has it (None: there is
        none); by default it is fetched here.  ``stream``: the data is in this stream's
        segments already (path is None); only the manifest is written.
        """
        components = name.split("/")
        self._check_new_name(name, components)
        if old is _HEAD:
            old = self._head(name)
        assert old is None or isinstance(old, Mapping)
        if old is not None and exclusive:
            raise FileExistsError(errno.EEXIST, "file exists", name)
        if old is not None and is_directory_type(old.get("content-type")):
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        old_segments = self._slo_segments(name) if self._is_slo(old) else []
        size = stream.accepted if stream is not None else os.path.getsize(path)  # type: ignore[arg-type]
        segment_size = self._effective_segment_size(size)
        if size > segment_size and not self.slo_enabled:
            raise OSError(errno.EFBIG, "object too large and this Swift has no SLO support", name)
        if mtime_ns is None:
            mtime_ns = time.time_ns()
        mtime = format_mtime(mtime_ns)
        headers = dict(meta or {})
        headers["X-Object-Meta-Mtime"] = mtime
        if exclusive:
            headers["If-None-Match"] = "*"
        full_type = f"{content_type};{MTIME_PARAM}={mtime}"
        try:
            if stream is not None:
                etag = self._put_manifest(name, stream.segments, full_type, headers)
            elif size > segment_size:
                etag = self._upload_slo(path, name, size, segment_size, full_type, headers)  # type: ignore[arg-type]
            else:
                etag = self._upload_single(path, name, size, full_type, headers)  # type: ignore[arg-type]
        except ClientException as exc:
            if exc.http_status == 412 and exclusive:
                raise FileExistsError(errno.EEXIST, "file exists", name) from None
            raise self._map_error(exc, name, None) from exc  # type: ignore[misc]
        if old_segments:
            self._delete_segments(old_segments)
        log.debug("uploaded %s (%d bytes, %s)", name, size,
                  "streamed SLO" if stream is not None else "SLO" if size > segment_size else "single PUT")
        return Entry(components[-1], False, size, mtime_ns, etag, content_type)

    def _upload_single(self, path: str, name: str, size: int, full_type: str, headers: Mapping[str, str]) -> str:
        # Hashed first, so Swift checks the ETag before the object replaces the old one.
        md5 = _md5_range(path, 0, size)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            etag = self._call("put_object", self.container, name, _HashingBody(fd, 0, size, hashing=False),
                              content_length=size, etag=md5, content_type=full_type, headers=dict(headers), name=name,
                              passthrough=(412,))
        finally:
            os.close(fd)
        if etag and etag != md5:
            raise OSError(errno.EIO, f"Swift stored {name} with ETag {etag}, expected {md5}", name)
        return md5

    def _upload_slo(self, path: str, name: str, size: int, segment_size: int, full_type: str,
                    headers: Mapping[str, str]) -> str:
        self._ensure_segment_container()
        uploader = SegmentUploader(self, path, name, segment_size)
        try:
            uploader.send(size)
            etag = self._put_manifest(name, uploader.results(), full_type, headers)
        except BaseException:
            uploader.discard()
            raise
        uploader.close()
        return etag

    def _put_manifest(self, name: str, segments: Sequence[tuple[str, str, int]], full_type: str,
                      headers: Mapping[str, str]) -> str:
        manifest = json.dumps([{"path": f"/{self.segment_container}/{segment}", "etag": etag or None,
                                "size_bytes": length} for segment, etag, length in segments]).encode()
        etag = self._call("put_object", self.container, name, manifest, content_length=len(manifest),
                          content_type=full_type, headers=dict(headers),
                          query_string="multipart-manifest=put", name=name, passthrough=(412,))
        return _strip_etag(etag) or ""

    # ----------------------------------------------------------------- MediaGoblin API

    def file_exists(self, filepath: Sequence[str]) -> bool:
        """True if a file or a directory exists at filepath."""
        components = self._components(filepath)
        if not components:
            return True
        name = "/".join(components)
        return self._head(name) is not None or self._dir_probe(name) is not None

    def get_file(self, filepath: Sequence[str], mode: str = "r") -> BinaryIO:
        """A binary file object for filepath, in an ``io.FileIO`` mode.

        Read mode streams the object (seekable; FileNotFoundError when missing,
        IsADirectoryError for a directory).  Write modes spool to a file in staging_dir and
        upload on ``close()`` (an upload error is raised by close); 'a' and 'r+' start from
        the stored content; 'x' gives FileExistsError if the name exists (checked at open and
        at upload).  ``write`` takes bytes or a readable file object.
        """
        kind, plus = _parse_mode(mode)
        name = self._file_name(filepath)
        if kind == "r" and not plus:
            return self._open_reader(name)  # type: ignore[return-value]
        return self._open_writer(name, kind, plus)  # type: ignore[return-value]

    def _open_reader(self, name: str) -> io.BufferedReader:
        conn = self._new_connection()
        try:
            headers, body = self._call("get_object", self.container, name, resp_chunk_size=READ_CHUNK, name=name,
                                       conn=conn)
        except FileNotFoundError:
            conn.close()
            raise self._not_found(name) from None
        except BaseException:
            conn.close()
            raise
        if is_directory_type(headers.get("content-type")):
            body.close()
            conn.close()
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        return io.BufferedReader(SwiftReader(self, name, conn, headers, body), buffer_size=READ_CHUNK)

    def _open_writer(self, name: str, kind: str, plus: bool) -> SwiftWriter:
        components = name.split("/")
        self._check_new_name(name, components)
        headers = self._head(name)
        if headers is None:
            if self._dir_probe(name) is not None:
                if kind == "x":
                    raise FileExistsError(errno.EEXIST, "file exists", name)
                raise IsADirectoryError(errno.EISDIR, "is a directory", name)
            if kind == "r":
                raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
        elif is_directory_type(headers.get("content-type")):
            raise (FileExistsError(errno.EEXIST, "file exists", name) if kind == "x"
                   else IsADirectoryError(errno.EISDIR, "is a directory", name))
        elif kind == "x":
            raise FileExistsError(errno.EEXIST, "file exists", name)
        content_type = _guess_type(components[-1])
        meta: dict[str, str] = {}
        fd, spool = tempfile.mkstemp(prefix="goblinfs-spool-", dir=self.staging_dir)
        os.close(fd)
        try:
            if headers is not None and kind in "ar":
                content_type = split_content_type(headers.get("content-type"))[0] or content_type
                meta = _header_meta(headers)
                meta.pop("X-Object-Manifest", None)
                meta.pop("x-object-manifest", None)
                self._download(name, spool)
            file_mode = {"r": "rb+", "w": "wb+" if plus else "wb", "x": "wb+" if plus else "wb",
                         "a": "ab+" if plus else "ab"}[kind]
            return SwiftWriter(self, name, spool, file_mode, content_type=content_type, meta=meta,
                               exclusive=(kind == "x"), dirty=(kind in "wx"))
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(spool)
            raise

    def _download(self, name: str, dest_path: str) -> None:
        conn = self._new_connection()
        try:
            _, body = self._call("get_object", self.container, name, resp_chunk_size=READ_CHUNK, name=name,
                                 conn=conn)
            try:
                with open(dest_path, "wb") as dest:
                    for chunk in body:
                        dest.write(chunk)
            except (RequestException, ConnectionError, TimeoutError) as exc:
                raise StorageUnavailable(f"downloading {name} from Swift failed: {exc}") from exc
            finally:
                body.close()
        finally:
            conn.close()

    def _file_headers(self, name: str) -> Mapping[str, str]:
        """HEAD of a file object: FileNotFoundError if missing, IsADirectoryError for a directory marker."""
        headers = self._head(name)
        if headers is None:
            raise self._not_found(name)
        if is_directory_type(headers.get("content-type")):
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        return headers

    def delete_file(self, filepath: Sequence[str]) -> None:
        """Delete the file (an SLO with its segments); FileNotFoundError if missing, IsADirectoryError for a dir."""
        name = self._file_name(filepath)
        headers = self._file_headers(name)
        self._delete_object(name, headers)

    def delete_dir(self, dirpath: Sequence[str], recursive: bool = False) -> bool:
        """Delete the directory; True on success, False when missing, not empty (non-recursive) or the root.

        Non-recursive: only a directory holding nothing but its marker.  Recursive: every
        object under it (SLO segments too), then the marker.
        """
        components = self._components(dirpath)
        if not components:
            return False
        name = "/".join(components)
        prefix = name + "/"
        dir_object = self._head(name)
        if dir_object is not None and not is_directory_type(dir_object.get("content-type")):
            dir_object = None  # a file of that name is not the directory
        if not recursive:
            items = list(self._iter_listing(prefix, limit=2))
            if any(item.get("name") != prefix for item in items):
                return False
            if not items and dir_object is None:
                return False
            for item in items:
                with suppress(FileNotFoundError):
                    self._call("delete_object", self.container, item["name"], name=item["name"])
            if dir_object is not None:
                with suppress(FileNotFoundError):
                    self._call("delete_object", self.container, name, name=name)
            return True
        items = list(self._iter_listing(prefix))
        if not items and dir_object is None:
            return False

        def delete(item: Mapping[str, Any]) -> None:
            name = item["name"]
            headers: Mapping[str, str] | None = {}
            if self._maybe_slo(item):
                headers = self._head(name)
                if headers is None:
                    return
            with suppress(FileNotFoundError):
                self._delete_object(name, headers)

        # Children first, the marker last, so an interrupted delete leaves a directory.
        children = [item for item in items if item.get("name") != prefix]
        self._parallel(delete, children)
        for item in items:
            if item.get("name") == prefix:
                with suppress(FileNotFoundError):
                    self._call("delete_object", self.container, prefix, name=prefix)
        if dir_object is not None:
            with suppress(FileNotFoundError):
                self._call("delete_object", self.container, name, name=name)
        return True

    @staticmethod
    def _maybe_slo(item: Mapping[str, Any]) -> bool:
        """Whether a listing item may be an SLO manifest (then a HEAD tells)."""
        return "slo_etag" in item or "slo_etag=" in str(item.get("hash") or "")

    def file_url(self, filepath: Sequence[str]) -> str:
        """urljoin(base_url, cleaned path) when base_url is set, else the object's storage URL."""
        components = self._components(filepath)
        path = "/".join(components)
        if self.base_url:
            return urllib.parse.urljoin(self.base_url, path)
        storage_url = self._conn().url or (self._auth[0] if self._auth else None)
        if not storage_url:
            raise NoWebServing()
        return f"{storage_url.rstrip('/')}/{urllib.parse.quote(self.container)}/{urllib.parse.quote(path)}"

    def get_local_path(self, filepath: Sequence[str]) -> str:
        """Not a local store: raises the storage NotImplementedError."""
        raise StorageNotImplementedError()

    def get_file_size(self, filepath: Sequence[str]) -> int:
        """Size in bytes (an SLO's full size); FileNotFoundError if missing, IsADirectoryError for a dir."""
        name = self._file_name(filepath)
        headers = self._file_headers(name)
        return int(headers.get("content-length") or 0)

    def copy_locally(self, filepath: Sequence[str], dest_path: str) -> None:
        """Download the object to dest_path (into it, if a directory), streamed in chunks."""
        name = self._file_name(filepath)
        if os.path.isdir(dest_path):
            dest_path = os.path.join(dest_path, name.rsplit("/", 1)[-1])
        try:
            self._download(name, dest_path)
        except FileNotFoundError:
            raise self._not_found(name) from None

    def copy_local_to_storage(self, filename: str, filepath: Sequence[str]) -> None:
        """Upload the local file filename to filepath (streamed; SLO when large)."""
        self.store_local_file(filename, filepath)

    # ------------------------------------------------------------ filesystem extension

    def store_local_file(self, filename: str, filepath: Sequence[str], mtime_ns: int | None = None, *,
                         new: bool = False) -> Entry:
        """Upload filename to filepath with its mtime (default: now); return the new Entry.

        The Entry's etag is the one stat and list_dir report (an SLO's too).  ``new=True``: one
        PUT with ``If-None-Match: *``; FileExistsError if an object is already there.
        """
        return self._store_local(filename, self._file_name(filepath), mtime_ns, new)

    def _store_local(self, filename: str | None, name: str, mtime_ns: int | None, new: bool,
                     stream: SegmentStream | None = None) -> Entry:
        components = name.split("/")
        self._check_new_name(name, components)
        content_type = _guess_type(components[-1])
        if new:
            # One PUT: If-None-Match: * makes Swift refuse (412) rather than replace an object
            # the caller did not know of (whose SLO segments would be left behind).
            return self._upload(filename, name, content_type=content_type, mtime_ns=mtime_ns, exclusive=True,
                                old=None, stream=stream)
        old = self._head(name)
        if old is None and self._dir_probe(name) is not None:
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        return self._upload(filename, name, content_type=content_type, mtime_ns=mtime_ns, old=old, stream=stream)

    def start_upload(self, filepath: Sequence[str]) -> Upload | None:
        """A SegmentStream: files larger than segment_size go up while they are being written."""
        if not self.slo_enabled:
            return None
        name = self._file_name(filepath)
        self._check_new_name(name, name.split("/"))
        return SegmentStream(self, name, self._base_segment_size())

    def list_dir(self, dirpath: Sequence[str]) -> list[Entry]:
        """One directory's children from a delimiter listing, without a HEAD per object.

        ``subdir`` entries and ``application/directory`` objects are directories; a name that
        is both a file and a directory is listed as the directory.  FileNotFoundError when
        nothing is there, NotADirectoryError for a file.
        """
        components = self._components(dirpath)
        name = "/".join(components)
        prefix = name + "/" if components else ""
        entries: dict[str, Entry] = {}
        found = False
        for item in self._iter_listing(prefix, delimiter="/"):
            found = True
            if "subdir" in item:
                leaf = item["subdir"][len(prefix):].rstrip("/")
                if not leaf or "/" in leaf:
                    continue
                previous = entries.get(leaf)
                if previous is not None and not previous.is_dir:
                    self._log_collision(prefix + leaf)
                entries[leaf] = Entry(leaf, True, 0, previous.mtime_ns if previous and previous.is_dir else 0)
                continue
            leaf = item.get("name", "")[len(prefix):]
            if not leaf:
                continue  # the directory's own marker
            entry = self._entry_from_listing(leaf, item)
            previous = entries.get(leaf)
            if previous is not None and previous.is_dir and not entry.is_dir:
                self._log_collision(prefix + leaf)
                continue
            entries[leaf] = entry
        if not found and components:
            headers = self._head(name)
            if headers is None:
                raise FileNotFoundError(errno.ENOENT, "no such directory", name)
            if not is_directory_type(headers.get("content-type")):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
        return list(entries.values())

    def stat(self, filepath: Sequence[str]) -> Entry:
        """The Entry of a file (HEAD) or directory (marker or children); FileNotFoundError if missing."""
        components = self._components(filepath)
        if not components:
            return Entry("", True)
        name = "/".join(components)
        entry = self._stat_name(name, components[-1])
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
        return entry

    def stat_file(self, filepath: Sequence[str]) -> Entry:
        """The Entry of a file from one HEAD (a listing too only when nothing is there)."""
        name = self._file_name(filepath)
        return self._entry_from_headers(name.rsplit("/", 1)[-1], self._file_headers(name))

    def read_range(self, filepath: Sequence[str], offset: int, length: int) -> bytes:
        """Up to length bytes from offset with one ranged GET (SLOs too); b'' at or after the end."""
        if offset < 0 or length < 0:
            raise OSError(errno.EINVAL, "negative offset or length")
        name = self._file_name(filepath)
        if length == 0:
            return b""
        try:
            headers, body = self._call("get_object", self.container, name,
                                       headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                                       name=name, passthrough=(416,))
        except ClientException:  # 416: offset at or past the end
            return b""
        except FileNotFoundError:
            raise self._not_found(name) from None
        if "content-range" not in headers:
            # The whole object came back (a server that ignores Range).
            return body[offset:offset + length]
        return body

    def move(self, src: Sequence[str], dst: Sequence[str]) -> None:
        """Rename with server-side copies and deletes; never moves data through the client.

        A file's metadata (mtime) goes with it; an SLO's manifest is copied, its segments
        stay and now belong to dst.  A replaced SLO at dst loses its segments.  A directory
        moves every object under it (marker included).  Not atomic.
        """
        src_components = self._components(src)
        dst_components = self._components(dst)
        if not src_components:
            raise OSError(errno.EBUSY, "cannot move the store root", "")
        if not dst_components:
            raise OSError(errno.EBUSY, "cannot replace the store root", "")
        src_name = "/".join(src_components)
        dst_name = "/".join(dst_components)
        src_headers = self._head(src_name)
        src_is_file = src_headers is not None and not is_directory_type(src_headers.get("content-type"))
        if src_is_file and self._dir_probe(src_name) is not None:
            src_is_file = False  # the directory wins, as in stat
        if not src_is_file and src_headers is None and self._dir_probe(src_name) is None:
            raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", src_name)
        if src_name == dst_name:
            return
        self._check_new_name(dst_name, dst_components)
        if src_is_file:
            self._move_file(src_name, dst_name, src_headers or {})
        else:
            if dst_components[: len(src_components)] == src_components:
                raise OSError(errno.EINVAL, "cannot move a directory into itself", dst_name)
            self._move_dir(src_name, dst_name, src_headers)

    def _move_file(self, src_name: str, dst_name: str, src_headers: Mapping[str, str]) -> None:
        dst_headers = self._head(dst_name)
        if (dst_headers is not None and is_directory_type(dst_headers.get("content-type"))) or \
                self._dir_probe(dst_name) is not None:
            raise IsADirectoryError(errno.EISDIR, "is a directory", dst_name)
        old_segments = self._slo_segments(dst_name) if self._is_slo(dst_headers) else []
        self._copy(src_name, dst_name)
        self._call("delete_object", self.container, src_name, name=src_name)
        if old_segments:
            self._delete_segments(old_segments)

    def _move_dir(self, src_name: str, dst_name: str, src_dir_object: Mapping[str, str] | None) -> None:
        src_prefix, dst_prefix = src_name + "/", dst_name + "/"
        dst_headers = self._head(dst_name)
        dst_dir_object = dst_headers is not None and is_directory_type(dst_headers.get("content-type"))
        dst_items = list(self._iter_listing(dst_prefix, limit=2))
        if dst_headers is not None and not dst_dir_object and not dst_items:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", dst_name)
        if any(item.get("name") != dst_prefix for item in dst_items):
            raise OSError(errno.ENOTEMPTY, "directory not empty", dst_name)
        items = list(self._iter_listing(src_prefix))
        names = [item["name"] for item in items]
        for name in names:
            new_name = dst_prefix + name[len(src_prefix):]
            self._check_new_name(new_name, new_name.rstrip("/").split("/"))
        self._parallel(lambda name: self._copy(name, dst_prefix + name[len(src_prefix):]), names)
        if src_dir_object is not None and is_directory_type(src_dir_object.get("content-type")):
            self._copy(src_name, dst_name)
        self._parallel(lambda name: self._delete_quietly(name), names)
        if src_dir_object is not None and is_directory_type(src_dir_object.get("content-type")):
            self._delete_quietly(src_name)

    def _delete_quietly(self, name: str) -> None:
        with suppress(FileNotFoundError):
            self._call("delete_object", self.container, name, name=name)

    def _put_marker(self, marker: str, mtime_ns: int | None, exclusive: bool = False) -> None:
        mtime = format_mtime(time.time_ns() if mtime_ns is None else mtime_ns)
        headers = {"X-Object-Meta-Mtime": mtime}
        if exclusive:
            headers["If-None-Match"] = "*"
        try:
            self._call("put_object", self.container, marker, b"", content_length=0, content_type=DIRECTORY_TYPE,
                       headers=headers, name=marker, passthrough=(412,))
        except ClientException:  # 412: If-None-Match refused, the marker exists
            raise FileExistsError(errno.EEXIST, "file exists", marker.rstrip("/")) from None

    def make_dir(self, dirpath: Sequence[str], *, new: bool = False) -> None:
        """Create the directory marker ``name/`` (application/directory), and markers for missing parents.

        FileExistsError when something exists there; NotADirectoryError when a parent is a file.
        ``new=True``: the caller saw nothing there and the parent existing: one PUT of the marker.
        """
        components = self._components(dirpath)
        if not components:
            raise FileExistsError(errno.EEXIST, "the store root exists", "")
        name = "/".join(components)
        self._check_new_name(name + "/", components)
        if new:
            self._put_marker(name + "/", None, exclusive=True)
            return
        if self._stat_name(name, components[-1]) is not None:
            raise FileExistsError(errno.EEXIST, "file exists", name)
        missing = [name]
        for depth in range(len(components) - 1, 0, -1):
            parent = "/".join(components[:depth])
            entry = self._stat_name(parent, components[depth - 1])
            if entry is None:
                missing.append(parent)
                continue
            if not entry.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", parent)
            break
        now = time.time_ns()
        for directory in reversed(missing):
            self._put_marker(directory + "/", now)

    def set_mtime(self, filepath: Sequence[str], mtime_ns: int) -> None:
        """Set the mtime of a file (Content-Type parameter and X-Object-Meta-Mtime, by POST) or a
        directory (its marker's X-Object-Meta-Mtime; a marker is created if it had none).

        Other metadata is re-sent (a POST replaces it); SLO manifests stay manifests.  The
        root has no mtime to set (ignored).
        """
        components = self._components(filepath)
        if not components:
            log.debug("set_mtime of the store root ignored")
            return
        name = "/".join(components)
        mtime = format_mtime(mtime_ns)
        headers = self._head(name)
        dir_object = headers is not None and is_directory_type(headers.get("content-type"))
        if headers is not None and not dir_object and self._dir_probe(name) is None:
            # A file: our Content-Type parameter (for listings) and the swift CLI header.
            content_type = split_content_type(headers.get("content-type"))[0] or _guess_type(components[-1])
            post = _header_meta(headers)
            post.update({"Content-Type": f"{content_type};{MTIME_PARAM}={mtime}", "X-Object-Meta-Mtime": mtime})
            self._call("post_object", self.container, name, post, name=name)
            return
        if headers is not None and dir_object:
            target = name  # an application/directory object without the slash
        else:
            if headers is None and self._dir_probe(name) is None:
                raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
            target = name + "/"
            headers = self._head(target)
            if headers is None:
                self._put_marker(target, mtime_ns)
                return
        post = _header_meta(headers)
        post.update({"Content-Type": DIRECTORY_TYPE, "X-Object-Meta-Mtime": mtime})
        self._call("post_object", self.container, target, post, name=target)

    def space(self) -> Space:
        """From HEAD of the account: bytes and objects used; total/free from X-Account-Meta-Quota-Bytes."""
        headers = self._call("head_account")
        used = int(headers.get("x-account-bytes-used") or 0)
        objects = int(headers.get("x-account-object-count") or 0)
        quota_text = headers.get("x-account-meta-quota-bytes")
        quota = int(quota_text) if quota_text and quota_text.strip().isdigit() else None
        return Space(total=quota, used=used, free=None if quota is None else max(quota - used, 0), objects=objects)


#: MediaGoblin's class name.
CloudFilesStorage = CloudFileStorage
