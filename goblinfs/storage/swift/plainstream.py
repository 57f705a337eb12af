"""A new file sent to Swift as one plain PUT while it is being written (:class:`PlainStream`).

A file of up to ``segment_size`` is otherwise staged and sent at close, so its upload never
overlaps its writing. A plain stream starts the PUT (chunked, ``If-None-Match: *``) once the
file is big enough, and hands each appended chunk to it; close then only ends the body and
waits for Swift's answer.

It is an accelerator, never the only copy: the writer keeps staging every byte, and anything
that goes wrong (a write that is not an append, the file growing past ``segment_size``, a
refused or dropped PUT, an object that changed meanwhile, with ``verify_segments`` an ETag that
differs from the bytes sent) makes it give up, and the staged file is sent as before. Nothing
is visible at the name before Swift has the whole body: a PUT whose connection closes before
its last chunk (abort, kill -9 of the daemon) stores nothing; ``If-None-Match: *`` keeps a new
file's PUT from replacing an object that appeared meanwhile, and a HEAD before the last chunk
checks that the (empty) object a stream replaces is still the one it was based on. Swift orders
PUTs by the time they began, so an object another client stored during the stream would win:
a HEAD after Swift's answer checks that the name holds what was sent. Swift's
headers are sent first, so the mtime they carry is the one of the first write;
:meth:`PlainStream.finish` POSTs the final mtime when it differs.

Its lifecycle (:class:`PlainState`, table :data:`PLAIN_TRANSITIONS`, docs/design.md) changes
only in :meth:`PlainStream._fire`, under the stream's lock.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import TYPE_CHECKING

from swiftclient.client import ClientException

from .. import Entry
from .largeobjects import QueuedUpload
from .listing import MTIME_PARAM, format_mtime, guess_type, strip_etag

if TYPE_CHECKING:
    from ..cloudfiles import CloudFileStorage

log = logging.getLogger(__name__)

#: Plain streams under way at once per store (each holds a thread, a connection and its window).
PLAIN_STREAMS = 8
#: Chunks queued for the sender at most (FUSE writes and put_file's reads are up to 1 MiB): the
#: memory of PLAIN_STREAMS streams stays within some 32 MiB.
PLAIN_WINDOW = 4


class PlainState(enum.Enum):
    """Where a plain stream stands."""

    #: Made, nothing handed to it yet.
    OPEN = "open"
    #: The PUT is under way and takes each appended chunk.
    SENDING = "sending"
    #: Every byte was handed over; the last chunk is sent and Swift's answer awaited.
    ENDING = "ending"
    #: Swift stored the object, with the ETag of the bytes sent.
    STORED = "stored"
    #: The PUT failed (nothing stored), or Swift's ETag differed from the bytes sent.
    FAILED = "failed"
    #: Given up by the writer: the connection is closed before the last chunk, nothing stored.
    ABORTED = "aborted"


P = PlainState

#: (state, event) -> next state: the whole lifecycle of a plain stream.
PLAIN_TRANSITIONS: dict[tuple[PlainState, str], PlainState] = {
    (P.OPEN, "send"): P.SENDING,
    (P.SENDING, "end"): P.ENDING,
    (P.ENDING, "stored"): P.STORED,
    (P.SENDING, "failed"): P.FAILED,
    (P.ENDING, "failed"): P.FAILED,
    (P.OPEN, "abort"): P.ABORTED,
    (P.SENDING, "abort"): P.ABORTED,
    # Once the last chunk is sent, only Swift's answer decides (an abort changes nothing).
    (P.ENDING, "abort"): P.ENDING,
    (P.STORED, "abort"): P.STORED,
    (P.FAILED, "abort"): P.FAILED,
    (P.ABORTED, "abort"): P.ABORTED,
    # The sender's own failure when the writer gave up first (its closed connection).
    (P.ABORTED, "failed"): P.ABORTED,
}

#: States from which the stream never moves again (its slot is given back on entering one).
PLAIN_FINAL = (P.STORED, P.FAILED, P.ABORTED)

_ABORT = object()


class PlainStream(QueuedUpload):
    """One chunked PUT of a new file at *name*, fed while the file is appended to.

    ``offer``/``put``/``put_file`` append (a window of :data:`PLAIN_WINDOW` chunks, so a
    writer faster than Swift waits); ``finish`` ends the body and returns the Entry;
    ``abort`` gives up (nothing stored).  Errors raise OSError; a stream that failed is
    given up by its writer, who sends the staged file instead.
    """

    def __init__(self, store: CloudFileStorage, name: str, mtime_ns: int, slots: threading.Semaphore,
                 replaces: str | None = None) -> None:
        self.store = store
        self.name = name
        self.begin_at = 0
        self.accepted = 0
        #: The mtime the PUT's headers carry (the first write's).
        self.mtime_ns = mtime_ns
        self.content_type = guess_type(name.rsplit("/", 1)[-1])
        #: The ETag of the object this one replaces (None: a new object, If-None-Match: *).
        self.replaces = replaces
        self.state = P.OPEN
        self.error: BaseException | None = None
        self.etag: str | None = None
        #: The store's places for plain streams: one is taken by this stream until it ends.
        self._slots = slots
        self._lock = threading.Lock()
        self._queue = queue.Queue(maxsize=PLAIN_WINDOW)
        self._thread = None
        #: MD5 of the bytes sent, compared with Swift's ETag: only with ``verify_segments`` (as
        #: for SLO segments: TCP/TLS check the transfer, and nothing older is at stake here).
        self._md5 = hashlib.md5(usedforsecurity=False) if store.verify_segments else None
        self._sent = 0
        #: The sender took the end marker (finish's).
        self._eof = False

    # ---------------------------------------------------------------- the state machine

    def _fire(self, event: str) -> PlainState:
        with self._lock:
            before = self.state
            new = PLAIN_TRANSITIONS.get((before, event))
            if new is None:
                raise OSError(errno.EIO, f"plain stream of {self.name}: no transition from {before.value} on {event}")
            self.state = new
        if new is not before:
            log.debug("plain stream %s: %s --%s--> %s", self.name, before.value, event, new.value)
            if new in PLAIN_FINAL:
                self._slots.release()
        return new

    def _check(self) -> None:
        if self.state not in (P.OPEN, P.SENDING):
            raise OSError(errno.EIO, f"plain stream of {self.name} is {self.state.value}: {self.error or ''}")

    def _start(self) -> None:
        if self.state is P.OPEN:
            self._fire("send")
            self._thread = threading.Thread(target=self._run, name="goblinfs-plain-stream", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- the writer's side

    def put(self, data: bytes) -> None:
        self._check()
        self._start()
        while True:
            try:
                self._queue.put(data, timeout=1.0)
                break
            except queue.Full:
                self._check()  # the sender failed meanwhile and takes no more
        self.accepted += len(data)

    def finish(self, mtime_ns: int | None = None, new: bool = True) -> Entry:
        """End the body and wait for Swift; the Entry of the stored file, once a HEAD saw it at
        the name (a newer object stored meanwhile by another client would win over it).  A
        final mtime other than the headers' is set by one POST.  OSError (FileExistsError:
        another object is at the name) if the name does not hold what was sent: the caller
        sends its staged copy."""
        if self.state is P.OPEN:
            self.abort()
        if self.state is P.SENDING and self.replaces is not None:
            # Replacing: only the object this content was based on (a writer elsewhere may
            # have replaced it meanwhile; its segments would be left behind).
            headers = self.store._head(self.name)
            if headers is None or strip_etag(headers.get("etag")) != self.replaces:
                self.abort()
                raise FileExistsError(errno.EEXIST, "the object changed while this stream was sent", self.name)
        if self.state is P.SENDING:
            self._fire("end")
            self._queue.put(None)  # the sender takes it, even after failing
        if self._thread is not None:
            self._thread.join()
        if self.state is not P.STORED:
            error = self.error
            if isinstance(error, ClientException) and error.http_status == 412:
                raise FileExistsError(errno.EEXIST, "file exists", self.name)
            if isinstance(error, OSError):
                raise error
            raise OSError(errno.EIO, f"plain stream of {self.name} failed: {error}")
        # Swift orders PUTs by the time they began: an object another client PUT while this
        # body was being sent is newer and stays.  The staged copy then replaces it (the close
        # that returns last wins, as on the staged path).
        headers = self.store._head(self.name)
        if headers is None or strip_etag(headers.get("etag")) != self.etag:
            raise FileExistsError(errno.EEXIST, "a newer object was stored at the name during the stream", self.name)
        mtime = self.mtime_ns if mtime_ns is None else mtime_ns
        if mtime != self.mtime_ns:
            self.store._post_file_meta(self.name, self.content_type, mtime, {})
        return Entry(self.name.rsplit("/", 1)[-1], False, self.accepted, mtime, self.etag, self.content_type,
                     plain=True)

    def abort(self) -> None:
        """Give up without waiting: the connection closes before the last chunk (nothing stored)."""
        if self._fire("abort") is not P.ABORTED:
            return
        with suppress(queue.Full):  # when full, the sender checks the state after each chunk it takes
            self._queue.put_nowait(_ABORT)

    def read_back(self, fd: int) -> int:
        raise OSError(errno.EIO, "a plain stream is not read back: the writer staged every byte")

    # ---------------------------------------------------------------- the sender

    def _chunks(self) -> Iterator[memoryview]:
        while True:
            chunk = self._queue.get()
            if chunk is _ABORT or self.state is P.ABORTED:
                raise OSError(errno.ECANCELED, "plain stream abandoned")
            if chunk is None:
                self._eof = True
                return
            if self._md5 is not None:
                self._md5.update(chunk)
            self._sent += len(chunk)
            yield memoryview(chunk)

    def _run(self) -> None:
        mtime = format_mtime(self.mtime_ns)
        headers = {"Content-Type": f"{self.content_type};{MTIME_PARAM}={mtime}", "X-Object-Meta-Mtime": mtime}
        if self.replaces is None:
            headers["If-None-Match"] = "*"
        start = time.monotonic()
        try:
            etag = self.store._put_chunked(self.store.container, self.name, self._chunks(), headers=headers,
                                           cancelled=lambda: self.state is P.ABORTED, passthrough=(412,))
        except BaseException as exc:
            self.error = exc
            if self.state is not P.ABORTED:
                log.info("plain stream of %s failed (its staged copy is sent instead): %s", self.name, exc)
            self._fire("failed")
            # Keep taking what the writer queues until it ends or gives up, so it never blocks.
            while not self._eof:
                try:
                    chunk = self._queue.get(timeout=1.0)
                except queue.Empty:
                    if self.state is P.ABORTED:
                        break
                    continue
                if chunk is None or chunk is _ABORT:
                    break
            return
        stored = strip_etag(etag)
        md5 = self._md5.hexdigest() if self._md5 is not None else stored
        if not stored or stored != md5 or self._sent != self.accepted:
            # Stored, but not what was handed over: the caller replaces it with its staged copy.
            self.error = OSError(errno.EIO, f"Swift stored {self.name} with ETag {etag} ({self._sent} bytes), "
                                            f"expected {md5} ({self.accepted} bytes)")
            log.error("%s", self.error)
            self._fire("failed")
            return
        self.etag = stored
        self._fire("stored")
        log.debug("plain stream of %s stored %d bytes in %.3f s", self.name, self._sent, time.monotonic() - start)
