"""Remote reads: the read cache, background downloads and reads of any handle.

Reads are right or fail: a read returns the object's bytes or an error, never fewer bytes with
success.  A remote object is read from a cached copy (``ReadCache``, revalidated by ETag and
size at every open), from a ``Download`` filling a part file in the cache's directory while
readers read it, or, when no local copy can be kept (cache too small, disk full), by ranged
GETs (``RangeReader``: 1 MiB blocks, each checked for its length, retried, else EIO).  The
ETag is checked at every open (one HEAD), against the download's GET, and, when the store's
``read_range`` takes ``etag=``, by every ranged GET (If-Match).

Download lifecycle
------------------

A ``Download`` is a state machine.  ``Download.fire`` is the only place its state changes,
always on the trio thread: the worker thread never changes it, it returns its outcome to the
trio task that started it, which fires the event (readers waiting for bytes are woken through
the trio token, only when one waits).  The table, also in ``TRANSITIONS``:

| state | event | next state | action |
|---|---|---|---|
| NEW | START | FETCHING | take the part file (room made first); the worker GETs the object into it |
| NEW | NO_ROOM | DEGRADED | none: no part file; readers use ranged GETs |
| FETCHING | FETCHED | COMPLETE | wake readers; fsync the part file and offer it to the cache (in a thread) |
| FETCHING | WRITE_FAILED | DEGRADED | wake readers; close and unlink the part file; readers use ranged GETs |
| FETCHING | GET_FAILED | FAILED | wake readers; keep the part file for its first ``done`` bytes, never adopted |
| FETCHING | UNUSED | FETCHING | none: the worker goes on, to fill the cache |
| COMPLETE | KEPT | ADOPTED | none: the cache renamed the part file onto its copy; the fd stays readable |
| COMPLETE | NOT_KEPT | PRIVATE | none: the cache refused it; readers go on reading it |
| COMPLETE | UNUSED | COMPLETE | none: closed once the cache answered |
| ADOPTED | UNUSED | CLOSED | close the fd; forget the download (the node may be freed) |
| PRIVATE | UNUSED | CLOSED | close the fd, unlink the part file; forget the download |
| DEGRADED | UNUSED | CLOSED | forget the download (its memory blocks go) |
| FAILED | UNUSED | CLOSED | close the fd, unlink the part file; forget the download |
| CLOSED | UNUSED | CLOSED | none (idempotent) |

Events: START: a part file was created in the cache's directory after ``make_room`` (least
recently used copies evicted to fit the bound and the disk's free space).  NO_ROOM: no part file
(bigger than ``cache_size``, disk too small even after evicting, part file not creatable; also
a small object ``localize`` could not keep).  FETCHED: the worker wrote all ``size`` bytes (short
writes continued), from a GET whose ETag is the one seen at open.  WRITE_FAILED: a write the disk
cannot take (ENOSPC/EDQUOT after evicting every cached copy, EIO, ...).  GET_FAILED: the GET
failed, was cut short or the object changed, after ``GET_RETRIES`` resumed GETs.  KEPT /
NOT_KEPT: the cache adopted the part file / refused it (size not the object's, no room for its
index, ...).  UNUSED: no reader left.

``UNUSED`` is fired when the last reader released the file and when the background task ends
with no reader left.  Any other (state, event) pair is a bug: logged, state unchanged.  New
opens of the same object (same ETag and size) join a download in FETCHING, COMPLETE, PRIVATE
or DEGRADED; FAILED ones are not joined (a new open starts a new GET).  Reads: bytes below
``done`` in a state with a part file (FETCHING, COMPLETE, ADOPTED, PRIVATE, FAILED) come from
the part file; in FETCHING a reader waits for them (or, far ahead, uses a ranged GET); anything
else (DEGRADED, FAILED past ``done``) comes from ranged GETs.  In FETCHING and COMPLETE the last
``WINDOW`` bytes fetched are also kept in memory (``Download.window``), and reads they cover are
answered from there: a cold sequential read never reads the part file back.  The worker writes
the part file with O_DIRECT where the file system allows it (``_PartWriter``), so a download
fills neither the page cache nor its writeback; a reader that fell behind the window reads the
part file from the disk, in a thread.
"""

from __future__ import annotations

import enum
import errno
import functools
import inspect
import logging
import mmap
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from ..storage import Entry
from ..workbench import NO_SPACE_ERRNOS, NoCacheSpace, ReadCache
from .base import VfsBase
from .nodes import Handle, Node, StoreMount

log = logging.getLogger(__name__)

#: A read further than this ahead of the download is served by a ranged GET, not waited for.
FAR_AHEAD = 8 * 1048576
#: GETs the download worker retries (resuming where it stopped) before giving up: FAILED.
GET_RETRIES = 2
#: The download's chunks: the first ones small (the first bytes reach a waiting reader sooner),
#: then CHUNK, each ending on a multiple of CHUNK (reads of the kernel's read-ahead fall in one).
FIRST_CHUNK = 65536
CHUNK = 1048576
#: Bytes of the latest chunks a download keeps in memory: readers near its head (nearly all of
#: them: the download is slower than the reads) are answered from there, not from the part file.
WINDOW = 8 * CHUNK
#: Alignment of direct (O_DIRECT) writes of the part file: offsets, lengths and buffers.
DIRECT_ALIGN = 4096


class State(enum.Enum):
    """Where a download is in its life (see the module's table)."""

    NEW = "new"
    FETCHING = "fetching"
    COMPLETE = "complete"
    ADOPTED = "adopted"
    PRIVATE = "private"
    DEGRADED = "degraded"
    FAILED = "failed"
    CLOSED = "closed"


class Event(enum.Enum):
    """What happens to a download."""

    START = "start"
    NO_ROOM = "no room"
    FETCHED = "fetched"
    WRITE_FAILED = "write failed"
    GET_FAILED = "get failed"
    KEPT = "kept"
    NOT_KEPT = "not kept"
    UNUSED = "unused"


S, E = State, Event
#: The state machine: (state, event) -> next state.  The module docstring's table is this.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.NEW, E.START): S.FETCHING,
    (S.NEW, E.NO_ROOM): S.DEGRADED,
    (S.FETCHING, E.FETCHED): S.COMPLETE,
    (S.FETCHING, E.WRITE_FAILED): S.DEGRADED,
    (S.FETCHING, E.GET_FAILED): S.FAILED,
    (S.FETCHING, E.UNUSED): S.FETCHING,
    (S.COMPLETE, E.KEPT): S.ADOPTED,
    (S.COMPLETE, E.NOT_KEPT): S.PRIVATE,
    (S.COMPLETE, E.UNUSED): S.COMPLETE,
    (S.ADOPTED, E.UNUSED): S.CLOSED,
    (S.PRIVATE, E.UNUSED): S.CLOSED,
    (S.DEGRADED, E.UNUSED): S.CLOSED,
    (S.FAILED, E.UNUSED): S.CLOSED,
    (S.CLOSED, E.UNUSED): S.CLOSED,
}
del S, E

#: States in which the part file is open and its first ``done`` bytes are the object's.
WITH_PART = frozenset({State.FETCHING, State.COMPLETE, State.ADOPTED, State.PRIVATE, State.FAILED})
#: States a new open of the same object (same ETag and size) may share.
JOINABLE = frozenset({State.FETCHING, State.COMPLETE, State.PRIVATE, State.DEGRADED})


class RangeReader:
    """Reads of a remote object by ranged GETs, in aligned blocks kept a little in memory.

    Concurrent reads of one block (the kernel's read-ahead) share one GET.  A GET that fails
    or returns another length than asked is retried; then the read is EIO.  If the store's
    ``read_range`` takes ``etag=``, every GET is conditional on the ETag seen at open.
    """

    BLOCK = 1048576
    KEEP = 4
    ATTEMPTS = 3

    def __init__(self, node: Node, size: int, etag: str) -> None:
        self.node = node
        self.size = size
        self.etag = etag
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        self.inflight: dict[int, trio.Event] = {}
        #: GETs made, for tests and statistics.
        self.gets = 0

    async def read(self, offset: int, length: int) -> bytes:
        """Exactly the bytes [offset, min(offset + length, size)), or OSError(EIO)."""
        end = min(offset + length, self.size)
        pieces = []
        pos = offset
        while pos < end:
            index = pos // self.BLOCK
            block = await self._block(index)
            start = pos - index * self.BLOCK
            piece = block[start:start + (end - pos)]
            if not piece:  # cannot happen: every block has its full length
                raise OSError(errno.EIO, "ranged read came back empty")
            pieces.append(piece)
            pos += len(piece)
        return b"".join(pieces)

    async def _block(self, index: int) -> bytes:
        while True:
            block = self.blocks.get(index)
            if block is not None:
                self.blocks.move_to_end(index)
                return block
            pending = self.inflight.get(index)
            if pending is None:
                break
            await pending.wait()
            if index not in self.blocks:  # that GET failed: try ourselves
                break
        done = trio.Event()
        self.inflight[index] = done
        try:
            offset = index * self.BLOCK
            block = await self._fetch(offset, min(self.BLOCK, self.size - offset))
            self.blocks[index] = block
            while len(self.blocks) > self.KEEP:
                self.blocks.popitem(last=False)
            return block
        finally:
            if self.inflight.get(index) is done:
                del self.inflight[index]
            done.set()

    async def _fetch(self, offset: int, length: int) -> bytes:
        store = self.node.stored_in
        call: Any = store.storage.read_range
        if self.etag and _takes_etag(type(store.storage).read_range):
            call = functools.partial(call, etag=self.etag)
        problem = ""
        for _attempt in range(self.ATTEMPTS):
            self.gets += 1
            try:
                data = await store.call(call, self.node.path, offset, length)
            except (FileNotFoundError, IsADirectoryError) as exc:
                problem = f"gone: {exc}"
                break
            except OSError as exc:
                if exc.errno == errno.ESTALE:  # another version now: none of its bytes, ever
                    log.warning("%s changed since it was opened: reads of this open file fail",
                                "/".join(self.node.path))
                    raise OSError(errno.ESTALE, f"changed since it was opened: {exc}") from None
                problem = str(exc) or type(exc).__name__
                log.info("ranged read of %s at %d failed: %s", "/".join(self.node.path), offset, problem)
                continue
            except Exception as exc:
                problem = str(exc) or type(exc).__name__
                log.info("ranged read of %s at %d failed: %s", "/".join(self.node.path), offset, problem)
                continue
            if len(data) == length:
                return bytes(data)
            problem = f"{len(data)} bytes instead of {length}"
            log.info("ranged read of %s at %d: %s", "/".join(self.node.path), offset, problem)
        log.error("reading %s at %d from the store failed: %s", "/".join(self.node.path), offset, problem)
        raise OSError(errno.EIO, f"ranged read failed: {problem}")


@functools.cache
def _takes_etag(read_range: Callable[..., bytes]) -> bool:
    """Whether a store class's read_range can make its GET conditional on an ETag (``etag=``)."""
    try:
        return "etag" in inspect.signature(read_range).parameters
    except (TypeError, ValueError):
        return False


class Download:
    """A remote object being fetched into the read cache while readers already read it.

    The worker thread appends to the part file and sets ``done`` after the bytes are written;
    the state changes only in ``fire`` (trio thread).  See the module's table.
    """

    def __init__(self, node: Node, size: int, etag: str) -> None:
        self.node = node
        self.size = size
        self.etag = etag
        self.state = State.NEW
        self.part: str | None = None
        self.fd: int | None = None
        #: Bytes at the start of the part file that are the object's (set by the worker).
        self.done = 0
        #: Why the download ended in DEGRADED or FAILED.
        self.reason = ""
        self.progress = trio.Event()
        #: A reader waits for more: the worker wakes the trio thread at its next chunk.  Only
        #: then, as a hand-off per chunk would cost a fifth of a download's CPU time.
        self.waiting = False
        self.readers = 0
        #: The latest chunks, ((offset, bytes), ...) in order, at most WINDOW bytes: replaced
        #: whole by the worker (a reader takes one snapshot, never sees it change).
        self.window: tuple[tuple[int, bytes], ...] = ()
        self._ranges: RangeReader | None = None

    def __repr__(self) -> str:
        return f"<Download {'/'.join(self.node.path)} {self.state.name} {self.done}/{self.size}>"

    @property
    def ranges(self) -> RangeReader:
        """Ranged GETs for what the part file does not hold (made on first use)."""
        if self._ranges is None:
            self._ranges = RangeReader(self.node, self.size, self.etag)
        return self._ranges

    def fire(self, event: Event, reason: str = "", part: str | None = None, fd: int | None = None) -> State:
        """(trio thread) The one place where the state changes: look up the table, act, wake readers."""
        old = self.state
        new = TRANSITIONS.get((old, event))
        if new is None:
            log.error("download of %s: event %s in state %s ignored", "/".join(self.node.path), event.name, old.name)
            return old
        self.state = new
        if new is not old:
            log.debug("download of %s: %s --%s--> %s %s", "/".join(self.node.path), old.name, event.name, new.name,
                      reason)
        if reason:
            self.reason = reason
        if event is Event.START:
            self.part, self.fd = part, fd
        elif new is State.DEGRADED or new is State.CLOSED:
            self._drop_part(unlink=old is not State.ADOPTED)
        if new is State.DEGRADED and old is State.NEW:
            log.info("%s: no local copy (%s); reading it by ranged GETs", "/".join(self.node.path), reason)
        elif new is State.DEGRADED:
            log.warning("download of %s: no local copy (%s); reading it by ranged GETs",
                        "/".join(self.node.path), reason)
        elif new is State.FAILED:
            log.warning("download of %s stopped at %d of %d bytes (%s); reading the rest by ranged GETs",
                        "/".join(self.node.path), self.done, self.size, reason)
        if new is not State.FETCHING and new is not State.COMPLETE:
            self.window = ()  # readers read the part file (or ranges) from now on
        if new is State.CLOSED:
            self._ranges = None
            if self.node.download is self:
                self.node.download = None
        self._wake()
        return new

    def part_file(self) -> tuple[str, int]:
        """(path, descriptor) of the part file, in the states that have one (``WITH_PART``) and in
        FETCHING; EIO otherwise (a caller ahead of the state: a bug, reported as a failed read)."""
        if self.part is None or self.fd is None:
            raise OSError(errno.EIO, f"download of {'/'.join(self.node.path)} has no part file ({self.state.name})")
        return self.part, self.fd

    def _drop_part(self, unlink: bool) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.debug("closing the part file of %s: %s", "/".join(self.node.path), exc)
        if unlink and self.part is not None:
            try:
                os.unlink(self.part)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.part, exc)

    def _wake(self) -> None:
        """(trio thread) Wake the waiting readers."""
        self.progress.set()
        self.progress = trio.Event()

    def from_window(self, offset: int, end: int) -> bytes | memoryview | None:
        """The bytes [offset, end) if the window holds them all (a slice, not a copy, when one
        chunk does), else None."""
        window = self.window
        if not window or offset < window[0][0]:
            return None
        pieces: list[memoryview] = []
        pos = offset
        for start, data in window:
            stop = start + len(data)
            if stop <= pos:
                continue
            if start > pos:
                return None
            pieces.append(memoryview(data)[pos - start:min(stop, end) - start])
            pos = min(stop, end)
            if pos >= end:
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return None

    def holds(self, end: int) -> bool:
        """Whether the part file holds the object's bytes up to end."""
        return self.state in WITH_PART and self.done >= end

    async def wait_for(self, end: int) -> None:
        """(trio thread) Return once end bytes are fetched, or the download left FETCHING."""
        while self.state is State.FETCHING and self.done < end:
            self.waiting = True
            if self.done >= end:  # the worker may have moved on before seeing the flag
                break
            await self.progress.wait()


def _joinable(node: Node, entry: Entry) -> Download | None:
    """The node's download if a new open of the object with this entry may share it."""
    download = node.download
    if (download is None or download.etag != (entry.etag or "") or download.size != entry.size
            or download.state not in JOINABLE):
        return None
    return download


def _open_copy(path: str | None) -> int | None:
    """A read descriptor of a cached copy, or None if there is none (or it was just evicted)."""
    if path is None:
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _reader_etag(source: Any) -> str | None:
    """The ETag of the GET behind a store's reader, if it tells (Swift's does)."""
    raw = getattr(source, "raw", source)
    etag = getattr(raw, "etag", None)
    return etag if isinstance(etag, str) and etag else None


def _write_part(fd: int, data: bytes, offset: int, cache: ReadCache) -> str | None:
    """Write all of data at offset (a short write goes on where it stopped); on ENOSPC/EDQUOT
    evict least recently used copies and go on.  None, or why the bytes cannot be written."""
    view = memoryview(data)
    while view:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS and cache.evict_lru():
                continue
            return f"writing the part file: {exc.strerror or exc}"
        if written <= 0:
            return "writing the part file: nothing written"
        view = view[written:]
        offset += written
    return None


class _PartWriter:
    """(worker thread) Writes a download's chunks into its part file.

    Chunks that start and end on DIRECT_ALIGN go through a second descriptor opened with
    O_DIRECT, from an aligned buffer: they skip the page cache (copying a GiB into fresh page
    cache pages, then writing it back, costs the CPU that Swift's servers need on this same
    machine; readers near the head get the window instead).  The rest (the last chunk, any
    direct write the file system refuses) goes through the part file's own descriptor.  Both
    evict cached copies on ENOSPC, as ``_write_part`` does.
    """

    def __init__(self, part: str, fd: int, cache: ReadCache) -> None:
        self.fd = fd
        self.cache = cache
        self.direct: int | None = None
        self.buffer: mmap.mmap | None = None
        try:
            self.direct = os.open(part, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            self.buffer = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT wants
        except (OSError, AttributeError) as exc:  # e.g. a file system without O_DIRECT
            log.debug("part file %s: no direct writes (%s)", part, exc)
            self.close()

    def write(self, data: bytes, offset: int) -> str | None:
        """Write all of data at offset: None, or why the bytes cannot be written."""
        size = len(data)
        if (self.direct is not None and self.buffer is not None and offset % DIRECT_ALIGN == 0
                and size % DIRECT_ALIGN == 0 and size <= len(self.buffer)):
            written = self._write_direct(data, offset)
            if isinstance(written, str):
                return written
            if written >= size:
                return None
            data, offset = data[written:], offset + written  # refused (0) or short: the rest as usual
        return _write_part(self.fd, data, offset, self.cache)

    def _write_direct(self, data: bytes, offset: int) -> int | str:
        """The bytes written directly (0: refused, and no direct write is tried again), or why
        the disk cannot take them."""
        if self.direct is None or self.buffer is None:
            return 0
        size = len(data)
        self.buffer[:size] = data
        with memoryview(self.buffer)[:size] as view:
            while True:
                try:
                    return os.pwrite(self.direct, view, offset)
                except OSError as exc:
                    if exc.errno in NO_SPACE_ERRNOS:
                        if self.cache.evict_lru():
                            continue
                        return f"writing the part file: {exc.strerror or exc}"
                    log.debug("direct write at %d refused (%s); writing through the page cache", offset, exc)
                    break
        self.close()
        return 0

    def close(self) -> None:
        direct, self.direct = self.direct, None
        if direct is not None:
            try:
                os.close(direct)
            except OSError as exc:
                log.debug("closing a direct descriptor: %s", exc)
        buffer, self.buffer = self.buffer, None
        if buffer is not None:
            buffer.close()


class ReadsMixin(VfsBase):
    """Reads of the Vfs (mixed into it)."""

    async def _open_remote_read(self, node: Node) -> Handle:
        """Open a remote object for reading: revalidate its ETag, then cache, stream or range-read it."""
        store = node.stored_in
        if self.cache is None:
            raise OSError(errno.EIO, "no read cache for remote files")
        # Close-to-open: every open revalidates (one HEAD on Swift), whatever the listing said.
        entry = await store.call(store.storage.stat_file, node.path)
        keep = node.keep_cache_etag == entry.etag and entry.etag is not None
        node.entry = entry
        node.fetched = time.monotonic()
        node.keep_cache_etag = entry.etag
        etag = entry.etag or ""
        fd = _open_copy(self.cache.lookup(store.storage, node.path, etag, entry.size))
        if fd is not None:
            return self._new_handle(node, fd, False, True, keep_cache=keep)
        download = _joinable(node, entry)
        if download is not None:
            self.cache.count(hit=True)  # a download in progress is shared, not repeated
        else:
            if entry.size <= self.options.stream_threshold:
                fd = await self._localize(node, entry)
                if fd is not None:
                    return self._new_handle(node, fd, False, True, keep_cache=keep)
                download = Download(node, entry.size, etag)
                node.download = download
                download.fire(Event.NO_ROOM, "no room in the read cache")
            else:
                download = await self._start_download(node, entry)
        download.readers += 1
        handle = self._new_handle(node, None, False, False, keep_cache=keep)
        handle.download = download
        return handle

    async def _localize(self, node: Node, entry: Entry) -> int | None:
        """A small object fetched whole into the cache: an fd of the copy, or None (no room)."""
        store = node.stored_in
        if self.cache is None:
            raise OSError(errno.EIO, "no read cache for remote files")
        if not self.cache.fits(entry.size):
            self.cache.count(hit=False)
            return None
        for _attempt in range(2):  # evicted between localize and open (another download made room)
            try:
                path = await store.call(functools.partial(self.cache.localize, store.storage, node.path,
                                                          entry.etag or "", size=entry.size))
            except NoCacheSpace as exc:
                log.info("%s not cached (%s); reading it by ranged GETs", "/".join(node.path), exc)
                return None
            fd = _open_copy(path)
            if fd is not None:
                return fd
        return None

    async def _start_download(self, node: Node, entry: Entry) -> Download:
        """A Download of a big object: FETCHING into a part file, or DEGRADED if none can be kept."""
        store = node.stored_in
        if self.cache is None:
            raise OSError(errno.EIO, "no read cache for remote files")
        if self.nursery is None:
            raise OSError(errno.EIO, "no nursery for background downloads")
        cache = self.cache
        room = cache.fits(entry.size) and await store.call(cache.make_room, entry.size)
        joined = _joinable(node, entry)  # another open of it may have started one meanwhile
        if joined is not None:
            cache.count(hit=True)
            return joined
        cache.count(hit=False)
        download = Download(node, entry.size, entry.etag or "")
        node.download = download
        if not room:
            download.fire(Event.NO_ROOM, "no room in the read cache")
            return download
        part = os.path.join(cache.directory, f"stream-{uuid.uuid4().hex}.part-x")
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            download.fire(Event.NO_ROOM, f"cannot create a part file: {exc.strerror}")
            return download
        download.fire(Event.START, part=part, fd=fd)
        self.nursery.start_soon(self._run_download, download, store, cache)
        return download

    async def _run_download(self, download: Download, store: StoreMount, cache: ReadCache) -> None:
        """The background task of a download: the worker, then the cache's adoption.  Nothing
        escapes into the nursery (that would end the daemon)."""
        token = trio.lowlevel.current_trio_token()
        storage = store.storage
        path = download.node.path
        outcome = (Event.GET_FAILED, "not run")
        try:
            outcome = await trio.to_thread.run_sync(self._download_worker, download, storage, path, cache, token,
                                                    limiter=store.limiter)
        except Exception as exc:
            log.exception("download worker of %s", "/".join(path))
            outcome = (Event.GET_FAILED, f"worker error: {exc}")
        finally:
            download.fire(*outcome)
            try:
                if download.state is State.COMPLETE:
                    await trio.to_thread.run_sync(self._adopt, download, storage, path, cache)
                    download.fire(Event.KEPT)
            except Exception as exc:
                log.warning("could not keep %s in the cache: %s", "/".join(path), exc)
            finally:
                if download.state is State.COMPLETE:
                    download.fire(Event.NOT_KEPT)
                self._end_download(download)

    @staticmethod
    def _download_worker(download: Download, storage: Any, path: Any, cache: ReadCache,
                         token: trio.lowlevel.TrioToken) -> tuple[Event, str]:
        """(worker thread) GET the object into the part file; returns the event that ends FETCHING.

        A failed or cut-short GET is retried from where it stopped (a new GET, its ETag checked);
        a write the disk cannot take (after evicting every cached copy) is WRITE_FAILED.  Each
        chunk goes to the window too; the part file is written with O_DIRECT where the file
        system allows it (``_PartWriter``).
        """
        part, fd = download.part_file()
        size = download.size
        done = 0
        failures = 0
        want = FIRST_CHUNK
        source = None
        read: Callable[[int], bytes] | None = None
        writer = _PartWriter(part, fd, cache)
        window: list[tuple[int, bytes]] = []
        held = 0
        try:
            while done < size:
                try:
                    if source is None:
                        source = storage.get_file(path, "rb")
                        raw = getattr(source, "raw", source)
                        got = _reader_etag(source)
                        if download.etag and got is not None and got != download.etag:
                            return Event.GET_FAILED, f"the object changed (ETag {got}, opened as {download.etag})"
                        if done:
                            source.seek(done)
                        # A reader that hands out the body's own chunks spares a copy per chunk
                        # (nothing was read through the buffered wrapper: it holds nothing).
                        read = getattr(raw, "read_chunk", None) or source.read
                    assert read is not None
                    chunk = read(min(want, CHUNK - done % CHUNK, size - done))
                    if not chunk:
                        raise OSError(errno.EIO, f"the object ended at {done} of {size} bytes")
                except (FileNotFoundError, IsADirectoryError) as exc:
                    return Event.GET_FAILED, f"the object is gone: {exc}"
                except Exception as exc:
                    failures += 1
                    if source is not None:
                        _close_quietly(source)
                        source = None
                    if failures > GET_RETRIES:
                        return Event.GET_FAILED, f"GET failed at {done} of {size} bytes: {exc}"
                    log.info("download of %s: GET failed at %d bytes (%s); resuming", "/".join(path), done, exc)
                    continue
                want = min(want * 2, CHUNK)
                problem = writer.write(chunk, done)
                if problem is not None:
                    return Event.WRITE_FAILED, problem
                window.append((done, chunk))
                held += len(chunk)
                while held - len(window[0][1]) >= WINDOW:
                    held -= len(window.pop(0)[1])
                download.window = tuple(window)
                done += len(chunk)
                download.done = done  # the bytes are in the part file (and the window) before this
                if download.waiting:
                    download.waiting = False
                    try:
                        token.run_sync_soon(download._wake)
                    except trio.RunFinishedError:
                        return Event.GET_FAILED, "the daemon is ending"
            return Event.FETCHED, ""
        finally:
            writer.close()
            if source is not None:
                _close_quietly(source)

    @staticmethod
    def _adopt(download: Download, storage: Any, path: Any, cache: ReadCache) -> None:
        """(thread) Hand a complete part file to the cache; raises if it is refused."""
        part, fd = download.part_file()
        os.fsync(fd)
        cache.put(storage, path, download.etag, part, size=download.size)

    def _end_download(self, download: Download) -> None:
        """A reader released the download, or its task ended: with no reader left, UNUSED
        (idempotent).  Callers decrement ``download.readers`` first."""
        if download.readers > 0:
            return
        if download.fire(Event.UNUSED) is State.CLOSED:
            self._maybe_free(download.node)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """Up to size bytes at offset (short only at the end of the file); a memoryview where that
        spares a copy (pyfuse3 replies from any buffer)."""
        handle = self.handle(fh)
        node = handle.node
        staged = await self._staged_read(handle, offset, size)  # writes.py: the file is being written here
        if staged is not None:
            return staged
        if handle.fd is not None:
            return await self._pread(handle.fd, node, size, offset)
        download = handle.download
        if download is None:
            raise OSError(errno.EIO, "no data source")
        return await self._download_read(download, offset, size)

    async def _download_read(self, download: Download, offset: int, size: int) -> bytes | memoryview:
        """The object's bytes [offset, offset + size) (fewer only at its end), or an error."""
        end = min(offset + size, download.size)
        if end <= offset:
            return b""
        if download.state is State.FETCHING and download.done < end:
            if offset > download.done + FAR_AHEAD:
                return await download.ranges.read(offset, end - offset)
            await download.wait_for(end)
        if download.state is State.FETCHING or download.state is State.COMPLETE:
            recent = download.from_window(offset, end)
            if recent is not None:
                return recent
        if download.holds(end):
            data = await self._part_read(download, offset, end - offset)
            if len(data) == end - offset:
                return data
            log.error("part file of %s gave %d bytes at %d instead of %d", "/".join(download.node.path),
                      len(data), offset, end - offset)
        return await download.ranges.read(offset, end - offset)

    async def _part_read(self, download: Download, offset: int, length: int) -> bytes | memoryview:
        """Bytes of the part file (its chunks are written around the page cache: a reader that
        fell out of the window may wait for the disk), through a descriptor of its own when it
        goes to a thread, which a DEGRADED or CLOSED download cannot close under it."""
        _part, fd = download.part_file()
        return await self._pread(fd, download.node, length, offset, own_fd=True)

    async def _pread(self, fd: int, node: Node, size: int, offset: int,
                     own_fd: bool = False) -> bytes | memoryview:
        """Read from a local file: in line when the page cache has it all, else in a thread, so
        the kernel's parallel read-ahead requests wait for the disk together, not in turn
        (own_fd: the thread reads a dup of fd, which nobody else can close meanwhile)."""
        buf = bytearray(size)
        try:
            got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not all in the page cache
            got = -1
        if got == size:
            return memoryview(buf)
        if not own_fd:
            return await trio.to_thread.run_sync(os.pread, fd, size, offset, limiter=node.stored_in.limiter)
        own = os.dup(fd)
        try:
            return await trio.to_thread.run_sync(os.pread, own, size, offset, limiter=node.stored_in.limiter)
        finally:
            os.close(own)


def _close_quietly(source: Any) -> None:
    try:
        source.close()
    except Exception as exc:
        log.debug("closing a store reader: %s", exc)
