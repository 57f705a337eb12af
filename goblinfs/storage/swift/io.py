"""File objects of Swift objects: SwiftReader (streaming, seekable reads) and SwiftWriter
(spooled in ``staging_dir``, uploaded on ``close()``)."""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from swiftclient.client import ClientException, Connection

from .. import Entry, PublishOnClose, StorageUnavailable
from .listing import strip_etag
from .session import FIRST_BACKOFF, MIN_ATTEMPT, TRANSPORT_ERRORS

if TYPE_CHECKING:
    from ..cloudfiles import CloudFileStorage

log = logging.getLogger(__name__)

#: Size of the chunks read from a GET response or copied from a file object.
READ_CHUNK = 262144


class _EndedEarly(Exception):
    """A GET body ended before its Content-Length (a connection closed early)."""


#: What a reader resumes after (at the byte it stopped at): a body cut short, a transport error.
_RESUMABLE: tuple[type[BaseException], ...] = (_EndedEarly, *TRANSPORT_ERRORS)


def parse_mode(mode: str) -> tuple[str, bool]:
    """An ``io.FileIO``-style mode as (one of 'r', 'w', 'a', 'x'; whether '+')."""
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or any(c not in "rwaxb+" for c in mode) or len(set(mode)) != len(mode):
        raise ValueError(f"invalid mode: {mode!r}")
    return kinds[0], "+" in mode


class SwiftReader(io.RawIOBase):
    """A seekable, streaming reader of one object: sequential reads come from one GET;
    a read after a seek opens a ranged GET from the new offset.  Never buffers the object.

    A connection that drops, resets or times out in the middle of a body is resumed with a
    ranged GET from the offset reached, carrying ``If-Match`` with the ETag of the first
    answer, within the store's retry deadline: the bytes never mix two versions of the object
    (a changed object ends the read with EIO).
    """

    def __init__(self, store: CloudFileStorage, name: str, conn: Connection, headers: Mapping[str, str],
                 body: Any, container: str | None = None) -> None:
        super().__init__()
        self._store = store
        self._conn = conn
        self.name = name
        self.container = container or store.container
        self.size = int(headers.get("content-length") or 0)
        self.etag = strip_etag(headers.get("etag"))
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
        view = memoryview(buffer).cast("B")
        data = self.read_chunk(min(len(view), READ_CHUNK))
        view[: len(data)] = data
        return len(data)

    def read_chunk(self, size: int) -> bytes:
        """Up to size bytes from the current position, as the GET body gave them (no copy here:
        for a reader that keeps the chunks); b"" at EOF.  Resumed as ``readinto`` is."""
        self._check_closed()
        wanted = min(size, self.size - self._pos)
        if wanted <= 0:
            return b""
        deadline: float | None = None
        while True:
            if self._body is None or self._body_pos != self._pos:
                self._open_at(self._pos, deadline)
            try:
                data: bytes = self._body.read(wanted)
                if not data:
                    raise _EndedEarly(f"{self.name} ended at {self._pos} of {self.size} bytes")
                break
            except _RESUMABLE as exc:
                self._close_body()
                session = self._store.session
                if deadline is None:
                    deadline = session.deadline()
                if time.monotonic() + MIN_ATTEMPT > deadline:
                    raise StorageUnavailable(f"reading {self.name} from Swift failed: {exc}") from exc
                log.info("reading %s from Swift broke at byte %d (%s); resuming there", self.name, self._pos, exc)
                time.sleep(random.uniform(FIRST_BACKOFF / 2, FIRST_BACKOFF))
        self._pos += len(data)
        self._body_pos = self._pos
        return data

    def _open_at(self, offset: int, deadline: float | None = None) -> None:
        self._close_body()
        headers = {"Range": f"bytes={offset}-"}
        if self.etag:
            headers["If-Match"] = f'"{self.etag}"'
        try:
            got, self._body = self._store._call(
                "get_object", self.container, self.name, resp_chunk_size=READ_CHUNK, headers=headers,
                name=self.name, conn=self._conn, deadline=deadline, passthrough=(412,))
        except ClientException as exc:  # 412: If-Match failed
            raise OSError(errno.EIO, "object changed while being read", self.name) from exc
        etag = strip_etag(got.get("etag"))
        if self.etag and etag and etag != self.etag:
            self._close_body()
            raise OSError(errno.EIO, "object changed while being read", self.name)
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

    def write(self, data: Any) -> int:
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

