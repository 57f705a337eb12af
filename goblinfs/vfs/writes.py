"""Remote writes: one explicit state machine per remote file being written.

A remote (Swift) file opened for writing gets a :class:`RemoteFile`: one staging file in the
workbench shared by every handle of the inode, and a :class:`WriteState`.  Every change of
state goes through :meth:`RemoteFile.fire` with an event; the table :data:`TRANSITIONS` is the
whole machine (docs/design.md prints it) and any other transition is a bug, raised as EIO.
Every operation that changes a RemoteFile (open, write, truncate, flush, fsync, release,
rename, unlink, publication) holds ``node.lock`` for its whole duration, awaits included.

The promises this module keeps (README, "Guarantees"):

* durable close: flush/fsync return only once the store holds the staged bytes; with the
  opt-in write-back (``-o writeback``) a close returns once the bytes and their journal record
  are fsynced in the workbench (QUEUED), and a background upload publishes them (fsync still
  waits for the store);
* old-or-new: the stored object is replaced only by a complete publication; an ``O_TRUNC``
  open with nothing written after it (dd's and the shell's early close of a duplicated
  descriptor) is not published by a flush, only by fsync, an explicit truncate, or the
  release of the last writer; a failed write (ENOSPC, a stream that failed) makes the file
  FAILED: nothing of it is ever published, every later write/flush/fsync reports the error;
* nothing unnamed: the journal (goblinfs.vfs.journal) records every file with unpublished
  data; ``recover`` at the next mount publishes what a close had asked for, and keeps
  everything else under ``<workbench>/recovered/``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import trio

from ..storage import Entry, ExactPath, Upload, new_upload_id, pwrite_all
from .base import VfsBase
from .journal import Journal, list_recovered, recovered_path
from .nodes import Handle, Node, StoreMount, _with

log = logging.getLogger(__name__)


class WriteState(enum.Enum):
    """Where the content of a remote file being written stands."""

    #: The staging file holds exactly the stored object: nothing to publish.
    CLEAN = "clean"
    #: Opened with O_TRUNC over a stored object and nothing written since: the store keeps the
    #: old object until fsync, an explicit truncate, or the release of the last writer.
    TRUNCATED = "truncated"
    #: The staging file holds the whole file, changed and not published.
    DIRTY = "dirty"
    #: Written from empty and only appended to, past the upload's begin_at: the start is in
    #: the staging file, the rest in the stream's segments (not visible before finish).
    STREAMING = "streaming"
    #: Being published (under the lock: nobody else sees this state but status).
    PUBLISHING = "publishing"
    #: A close or fsync asked for publication and it failed: retried at release, unmount and
    #: the next mount (journaled); with write-back, by the background upload with back-off.
    SEALED = "sealed"
    #: Write-back: a close acknowledged this content once the staging file and its journal
    #: record were fsynced; a background upload publishes it (fsync, rename, reopen and unmount
    #: publish it at once).
    QUEUED = "queued"
    #: Published by finishing a stream: the staging file holds only the start; the next use
    #: refills it from the store.
    STALE = "stale"
    #: A write was lost (no space, stream failure): nothing of this content is ever published;
    #: writes, flush and fsync report the error until the last writer is released.
    FAILED = "failed"
    #: Unlinked while open: handles go on locally, nothing is published.
    DETACHED = "detached"
    #: Ended: the staging file was handed to the cache or removed.
    ENDED = "ended"


S = WriteState

#: (state, event) -> next state.  Everything the machine does; anything else is a bug.
TRANSITIONS: dict[tuple[WriteState, str], WriteState] = {
    # writes: O_TRUNC at open keeps the old object until real content comes
    **{(s, "open_trunc"): S.TRUNCATED for s in (S.CLEAN, S.TRUNCATED, S.DIRTY, S.STREAMING, S.SEALED, S.STALE,
                                                 S.FAILED)},
    **{(s, "write"): S.DIRTY for s in (S.CLEAN, S.TRUNCATED, S.DIRTY, S.SEALED, S.QUEUED)},
    (S.STREAMING, "write"): S.STREAMING,
    (S.DETACHED, "write"): S.DETACHED,
    (S.DIRTY, "stream"): S.STREAMING,
    **{(s, "truncate"): S.DIRTY for s in (S.CLEAN, S.TRUNCATED, S.DIRTY, S.SEALED, S.QUEUED)},
    # truncate to 0 of a stream: nothing of it is kept (its segments are dropped, not read back)
    (S.STREAMING, "truncate"): S.DIRTY,
    (S.DETACHED, "truncate"): S.DETACHED,
    # making the staging file whole again before a read, a truncate or a non-append write
    (S.STREAMING, "read_back"): S.DIRTY,
    (S.STALE, "refill"): S.CLEAN,
    # write-back: acknowledged once durable in the workbench, uploaded in the background
    **{(s, "queue"): S.QUEUED for s in (S.TRUNCATED, S.DIRTY, S.SEALED)},
    # publication
    **{(s, "publish"): S.PUBLISHING for s in (S.TRUNCATED, S.DIRTY, S.STREAMING, S.SEALED, S.QUEUED)},
    (S.PUBLISHING, "published"): S.CLEAN,
    (S.PUBLISHING, "published_stream"): S.STALE,
    (S.PUBLISHING, "publish_failed"): S.SEALED,
    # losing data the writer was told was written
    **{(s, "write_failed"): S.FAILED for s in (S.CLEAN, S.TRUNCATED, S.DIRTY, S.STREAMING, S.SEALED, S.QUEUED,
                                                S.STALE, S.PUBLISHING, S.FAILED)},
    (S.DETACHED, "write_failed"): S.DETACHED,
    # the name goes away
    **{(s, "unlink"): S.DETACHED for s in (S.CLEAN, S.TRUNCATED, S.DIRTY, S.STREAMING, S.SEALED, S.QUEUED,
                                          S.STALE, S.FAILED, S.DETACHED)},
    # the end: only from states with nothing left to publish
    **{(s, "end"): S.ENDED for s in (S.CLEAN, S.STALE, S.FAILED, S.DETACHED)},
}

#: States whose content a flush publishes (TRUNCATED waits for fsync or the last release).
FLUSH_PUBLISHES = (S.DIRTY, S.STREAMING, S.SEALED)
#: States whose content fsync, rename and unmount publish (the last release too, but QUEUED).
PENDING = (S.TRUNCATED, S.DIRTY, S.STREAMING, S.SEALED, S.QUEUED)
#: Write-back: states a close (flush, or the last release for TRUNCATED) queues rather than
#: publishing; STREAMING is published at once (its bytes are already going up).
QUEUEABLE = (S.TRUNCATED, S.DIRTY, S.SEALED)
#: States whose journal record names data to recover after a crash.
JOURNALED = (S.TRUNCATED, S.DIRTY, S.STREAMING, S.PUBLISHING, S.SEALED, S.QUEUED)
#: States of a record that say a close asked for the content (recovery publishes it).
ASKED = (S.SEALED.value, S.PUBLISHING.value, S.QUEUED.value)


class StateError(Exception):
    """A transition the table does not allow (a bug; the caller gets EIO)."""


#: A new file is sent as it is written (a plain stream) once it is this long: smaller ones
#: stay one PUT at close whose ETag Swift checks before storing, and need no mtime POST.
PLAIN_BEGIN_AT = 1 << 20
#: ... and only where objects are segmented past this size or more (a smaller segment_size
#: leaves too little between the two for a plain PUT to be worth it).
PLAIN_MIN_SEGMENT = 4 << 20
#: The ETag of an empty object.
EMPTY_MD5 = hashlib.md5(b"", usedforsecurity=False).hexdigest()

#: Content written here becomes the cached copy of its new ETag only from this size: for a
#: smaller file the cache entry (a metadata file and two renames, in a thread) cost more than
#: the GET it saves if the file is ever read back here (cp -r of 1,000 files of 4 KiB to Swift:
#: daemon CPU 5.4-6.6 s with entries, 3.8-4.0 s without; create 1.1-1.6 ms -> 0.35 ms).
CACHE_WRITTEN_MIN = 128 << 10

#: Write-back: the first retry of a failed background upload waits this long, doubling up to
#: WRITE_BACK_MAX_DELAY.
WRITE_BACK_FIRST_DELAY = 1.0
#: Write-back: an upload starts this long after the close, so that a rename right after it
#: (rsync's temporary name) moves the queued file here and it goes up once, at its final name.
WRITE_BACK_SETTLE = 0.2
WRITE_BACK_MAX_DELAY = 60.0
#: Write-back: while closes keep coming (a copy in progress), at most this many uploads run, so
#: that they leave the writer its share of the CPUs; the rest start once the closes pause for
#: WRITE_BACK_BUSY seconds.
WRITE_BACK_BUSY_TRANSFERS = 1
WRITE_BACK_BUSY = 0.3
#: ... unless this many bytes wait in the workbench: then every place uploads, so that a long
#: copy of big files does not fill the workbench.
WRITE_BACK_BUSY_BYTES = 256 << 20
#: How often the drain at unmount logs what is left.
DRAIN_REPORT_SECONDS = 5.0


class Phase(enum.Enum):
    """Where the write-back queue of a mount stands (it only moves forward)."""

    #: Serving: uploads run, failures are retried with back-off.
    RUNNING = "running"
    #: Unmount: waiting tasks retry at once; the first failure abandons the rest.
    DRAINING = "draining"
    #: An upload failed while draining: what is left stays journaled for the next mount.
    ABANDONED = "abandoned"


class WriteBack:
    """The background uploads of write-back mode: one task per queued file, at most
    ``transfers`` uploading at once (trio's semaphore is fair: first queued, first sent)."""

    def __init__(self, transfers: int) -> None:
        self.transfers = trio.Semaphore(max(1, transfers))
        #: Files with a background upload task (queued, uploading, or waiting to retry).
        self.files: dict[int, RemoteFile] = {}
        self.phase = Phase.RUNNING
        #: Set when the phase leaves RUNNING: tasks waiting to retry wake up.
        self.drain_started = trio.Event()
        self.uploaded = 0
        self.failures = 0
        #: Uploads running now, and until when closes count as "a copy in progress".
        self.active = 0
        self.busy_until = 0.0
        #: Bytes of the files in ``files`` (their size when queued).
        self.bytes = 0
        self.sizes: dict[int, int] = {}


@dataclass(eq=False)
class RemoteFile:
    """A remote file being written here: staging file, write state, pending upload."""

    node: Node
    staging: str
    fd: int
    state: WriteState
    #: ETag of the stored object this content started from (None: nothing was stored).
    base_etag: str | None
    #: Nothing was stored at the name when we looked (a create): publish with If-None-Match.
    absent: bool
    journal_id: str
    #: The stream of a file written from empty while it is only appended to.
    upload: Upload | None = None
    #: Bytes appended so far while ``upload`` is set.
    upload_end: int = 0
    #: Id of the segments of the upload in flight (stream or publication), journaled so that a
    #: crash leaves nothing the next mount cannot find.
    upload_id: str | None = None
    #: mtime set while unpublished (utimens before close): sent with the data.
    pending_mtime: int | None = None
    #: The error every write/flush/fsync reports once FAILED.
    error: OSError | None = None
    #: Read-only handles reading through this file (each owns a dup of fd).
    readers: set[Handle] = field(default_factory=set)
    since: float = field(default_factory=time.time)
    #: The staging file's name cannot say where it belongs (path too long): always journaled.
    unnamed: bool = False
    #: The state the journal record on disk says (None: no record).
    record_state: WriteState | None = None
    #: The staging file carries its own record (write-back's queued content): XATTR_RECORD.
    in_xattr: bool = False
    #: The publication in flight writes segments (a large object).
    segmented: bool = False
    #: A new file appended to past PLAIN_BEGIN_AT: its plain PUT, fed as it is written
    #: (``StorageInterface.stream_file``); the staging file still holds every byte.
    plain: Upload | None = None
    #: A plain stream was begun for this content (one per file: one that was given up is not
    #: begun again).
    plain_begun: bool = False

    @property
    def journaled(self) -> bool:
        """A journal record file exists (its state: ``record_state``)."""
        return self.record_state is not None

    def fire(self, event: str) -> WriteState:
        """Move to the state the table gives for (state, event); StateError if none."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise StateError(f"{'/'.join(self.node.path)}: no transition from {self.state.value} on {event}")
        if new is not self.state:
            log.debug("%s: %s --%s--> %s", "/".join(self.node.path), self.state.value, event, new.value)
        self.state = new
        return new

    def failure(self) -> OSError:
        """What write, flush and fsync of a FAILED file raise: a fresh OSError with the errno of
        the write that was lost (``error``), EIO if none was recorded."""
        if self.error is None:
            return OSError(errno.EIO, "an earlier write to this file failed")
        return OSError(self.error.errno, self.error.strerror)

    def size(self) -> int:
        if self.state is S.STREAMING:
            return self.upload_end
        return os.fstat(self.fd).st_size


def _copy_into(source: str, fd: int) -> None:
    """Copy the file source into fd from offset 0 (ENOSPC and other errors raise)."""
    size = os.stat(source).st_size
    with open(source, "rb") as src:
        offset = 0
        while offset < size:
            try:
                copied = os.copy_file_range(src.fileno(), fd, size - offset, offset, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                chunk = os.pread(src.fileno(), min(size - offset, 1048576), offset)
                copied = pwrite_all(fd, chunk, offset) if chunk else 0
            if not copied:
                raise OSError(errno.EIO, f"{source} shrank while being copied")
            offset += copied


#: Extended attribute of a staging file holding its queued record (write-back): one fsync of the
#: staging file then makes the bytes and the record durable together.
XATTR_RECORD = "user.goblinfs.record"

#: Longest store/path tag put in a staging file's name (the name is at most 255 bytes).
STAGING_TAG_MAX = 200


def _staging_tag(node: Node) -> str | None:
    """store and path of node, quoted, for the staging file's name; None when too long."""
    if node.store is None:
        return None
    tag = urllib.parse.quote("/".join((node.store.name, *node.path)), safe="")
    return tag if len(tag.encode()) <= STAGING_TAG_MAX else None


def _parse_staging_tag(name: str) -> tuple[str, list[str]] | None:
    """(store, path) from a staging file's name (``staging-<tag>.<random>``), or None."""
    if not name.startswith("staging-") or "." not in name:
        return None
    tag = name[len("staging-"):].rsplit(".", 1)[0]
    parts = urllib.parse.unquote(tag).split("/")
    if len(parts) < 2 or not all(parts):
        return None
    return parts[0], parts[1:]


def _xattr_record(path: str) -> dict[str, Any] | None:
    """The queued record a staging file carries (XATTR_RECORD), or None."""
    try:
        record = json.loads(os.getxattr(path, XATTR_RECORD))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("path") else None


def _segment_threshold(storage: Any) -> float:
    """Files above this are stored as large objects (segments) by this store."""
    sizes = [getattr(storage, attr, None) for attr in ("segment_size", "max_file_size")]
    known = [int(size) for size in sizes if isinstance(size, int) and size > 0]
    return min(known) if known else float("inf")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _md5_file(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1048576):
            digest.update(chunk)
    return digest.hexdigest()


class WritesMixin(VfsBase):
    """Writes of the Vfs (mixed into it)."""

    # ------------------------------------------------------------------ workbench places

    def _workbench(self) -> str | None:
        return self.options.workbench_dir

    @functools.cached_property
    def journal(self) -> Journal | None:
        workbench = self._workbench()
        return Journal(os.path.join(workbench, "journal")) if workbench else None

    @functools.cached_property
    def write_back(self) -> WriteBack:
        return WriteBack(self.options.transfers)

    @property
    def recovered_dir(self) -> str | None:
        workbench = self._workbench()
        return os.path.join(workbench, "recovered") if workbench else None

    def _needs_record(self, rf: RemoteFile) -> bool:
        """Whether rf's state needs a journal record.  Its staging file's name already says
        where it belongs (store and path), so data nobody confirmed is never unnamed; a record
        adds what recovery needs to act on it: a stream's upload id (its segments), a failed
        publication to retry (sealed), or a publication in flight that writes segments.  Small
        files written and closed at once need none (a record costs a rename, which ext4 makes
        wait for the data: ~3 ms per file of `cp -r`)."""
        if rf.state not in JOURNALED:
            return False
        if rf.state is S.QUEUED or (rf.in_xattr and rf.state in (S.SEALED, S.PUBLISHING) and not rf.segmented):
            return not rf.in_xattr  # the staging file carries its own record
        if rf.unnamed or rf.state in (S.STREAMING, S.SEALED):
            return True
        # Publishing: segments will be written, or a retry of sealed data (its record stays).
        return rf.state is S.PUBLISHING and (rf.segmented or rf.journaled)

    def _journal(self, rf: RemoteFile) -> None:
        """Write or drop rf's journal record after a change of state."""
        journal = self.journal
        if journal is None:
            return
        if rf.in_xattr and rf.state in (S.TRUNCATED, S.DIRTY, S.STREAMING, S.FAILED, S.DETACHED):
            # Changed, failed or unlinked before its upload: never-closed or deleted data must not
            # say "queued".  Published content (clean, stale, ended) keeps the mark: recovery
            # finds those bytes stored (one MD5 comparison) and drops them, and a write after it
            # comes here first.
            self._clear_xattr(rf, sync=True)
        if not self._needs_record(rf):
            if rf.journaled:
                journal.remove(rf.journal_id)
                rf.record_state = None
            return
        if rf.state is S.QUEUED and (rf.in_xattr or rf.record_state is S.QUEUED):
            return  # written durably by _queue
        if (rf.state is S.PUBLISHING and not rf.segmented and rf.record_state is not None
                and rf.record_state.value in ASKED):
            return  # the record already says a close asked for it: recovery acts the same
        try:
            self._write_record(journal, rf, rf.state, durable=False)
        except OSError as exc:
            log.error("cannot journal %s in %s: %s", "/".join(rf.node.path), journal.directory, exc)

    @staticmethod
    def _record(rf: RemoteFile, state: WriteState) -> dict[str, Any]:
        store = rf.node.stored_in
        upload = rf.upload
        return {"store": store.name, "path": list(rf.node.path), "staging": rf.staging, "state": state.value,
                "base_etag": rf.base_etag, "absent": rf.absent, "mtime_ns": rf.pending_mtime,
                "upload_id": rf.upload_id, "streamed": upload is not None and upload.started,
                "bytes": rf.upload_end if upload is not None and upload.started else None,
                "time": time.time()}

    def _write_record(self, journal: Journal, rf: RemoteFile, state: WriteState, durable: bool) -> None:
        """Write rf's record saying state.  durable (write-back's queued content): the record goes
        into the staging file's own extended attribute and one fsync makes bytes and record
        durable together (its directory is fsynced for its name); where the workbench has no
        user xattrs, into a journal file, fsynced with its directory after the staging file."""
        record = self._record(rf, state)
        if durable:
            try:
                os.setxattr(rf.fd, XATTR_RECORD, json.dumps(record).encode())
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ERANGE):
                    raise
            else:
                rf.in_xattr = True
                os.fsync(rf.fd)
                _fsync_dir(os.path.dirname(rf.staging))
                return
            os.fdatasync(rf.fd)
            _fsync_dir(os.path.dirname(rf.staging))
        journal.write(rf.journal_id, record, durable=durable)
        rf.record_state = state

    @staticmethod
    def _clear_xattr(rf: RemoteFile, sync: bool) -> None:
        try:
            os.removexattr(rf.fd, XATTR_RECORD)
            if sync:
                os.fsync(rf.fd)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                log.warning("%s: cannot clear the queued mark of %s: %s", "/".join(rf.node.path), rf.staging, exc)
        rf.in_xattr = False

    def _fire(self, rf: RemoteFile, event: str) -> WriteState:
        before = rf.state
        try:
            state = rf.fire(event)
        except StateError as exc:
            log.error("%s", exc)
            raise OSError(errno.EIO, str(exc)) from None
        if state is not before:
            self._journal(rf)
        return state

    # ------------------------------------------------------------------ beginning

    def _new_remote(self, node: Node, state: WriteState, base_etag: str | None, absent: bool,
                    source: str | None) -> RemoteFile:
        """A RemoteFile with a new staging file (a copy of source, or empty)."""
        tag = _staging_tag(node)
        fd, path = tempfile.mkstemp(prefix=f"staging-{tag or 'x'}.", dir=self.options.staging_dir)
        try:
            if source is not None:
                _copy_into(source, fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        rf = RemoteFile(node=node, staging=path, fd=fd, state=state, base_etag=base_etag, absent=absent,
                        journal_id=Journal.new_id(), unnamed=tag is None)
        node.remote = rf
        if source is None:
            self._begin_upload(rf)
        self._journal(rf)
        return rf

    async def _stage(self, node: Node, truncate: bool) -> RemoteFile:
        """(lock held) Start writing a stored file: empty (truncated) or a copy of the object,
        based on the ETag one HEAD gives now."""
        if truncate:
            return self._new_remote(node, S.TRUNCATED, node.entry.etag, False, None)
        store = node.stored_in
        if self.cache is None:
            raise OSError(errno.EIO, "no read cache for remote files")
        entry = await store.call(store.storage.stat_file, node.path)
        source = None
        if entry.size > 0:
            source = await store.call(self.cache.localize, store.storage, node.path, entry.etag or "")
        node.entry = _with(entry, name=node.path[-1])
        return self._new_remote(node, S.CLEAN, entry.etag, False, source)

    def _begin_upload(self, rf: RemoteFile) -> None:
        """Written from empty: if the writer only appends, big files stream to the store."""
        rf.upload = None
        rf.upload_end = 0
        rf.plain_begun = False
        store = rf.node.store
        if store is None:
            return
        upload_id = new_upload_id()
        try:
            rf.upload = store.storage.start_upload(rf.node.path, upload_id=upload_id)
            if rf.upload is not None:
                rf.upload_id = upload_id
        except Exception as exc:  # uploading at close still works
            log.debug("no streaming upload of %s: %s", "/".join(rf.node.path), exc)

    def _abort_upload(self, rf: RemoteFile) -> None:
        """Drop a stream that is not needed any more (its segments are deleted), and a plain one."""
        upload, rf.upload = rf.upload, None
        if upload is not None:
            upload.abort()
        self._abort_plain(rf)

    @functools.cached_property
    def plain_streams(self) -> dict[str, int]:
        """Plain streams since the mount, by outcome: stored (close sent only the end), failed
        (the staged copy was sent at close instead), given_up (a write that was not an append,
        growth past segment_size, a stream that failed while written, unlink...)."""
        return {"stored": 0, "failed": 0, "given_up": 0}

    def _abort_plain(self, rf: RemoteFile) -> None:
        """Give up rf's plain stream (nothing of it is stored): the staged copy is sent instead."""
        plain, rf.plain = rf.plain, None
        if plain is not None:
            plain.abort()
            self.plain_streams["given_up"] += 1

    async def _feed_plain(self, rf: RemoteFile, store: StoreMount, data: bytes) -> None:
        """(lock held) An append to a file written from empty: handed to its plain stream, which
        begins (with the bytes staged so far) once a new file is PLAIN_BEGIN_AT long.  Durable
        mode only (write-back uploads in the background anyway).  A stream that fails is given
        up; the write itself succeeded in the staging file."""
        plain = rf.plain
        try:
            if plain is None:
                upload = rf.upload
                # Written from empty over nothing or an empty object (dd and the shell publish
                # a new file empty when they close the descriptor they duplicated).
                replaces = None if rf.absent else rf.base_etag
                if (rf.plain_begun or (replaces is not None and replaces != EMPTY_MD5) or self.options.writeback
                        or upload is None or rf.upload_end < PLAIN_BEGIN_AT or upload.begin_at < PLAIN_MIN_SEGMENT):
                    return
                rf.plain_begun = True
                plain = store.storage.stream_file(rf.node.path, time.time_ns(), replaces)
                if plain is None:
                    return
                rf.plain = plain
                await store.call(plain.put_file, rf.fd, rf.upload_end)
            elif not plain.offer(data):
                await store.call(plain.put, data)
        except Exception as exc:
            log.info("%s: not sent as it is written (%s); sent whole at close", "/".join(rf.node.path), exc)
            self._abort_plain(rf)

    async def _finish_plain(self, rf: RemoteFile, mtime: int | None) -> Entry | None:
        """(lock held, publishing) Store rf through its plain stream; None if it has none or it
        failed (nothing of it stored, or an object the staged copy must replace)."""
        plain = rf.plain
        if plain is None:
            return None
        if plain.accepted != rf.size():
            self._abort_plain(rf)
            return None
        rf.plain = None
        store = rf.node.stored_in
        try:
            entry = await store.call(functools.partial(plain.finish, mtime))
        except Exception as exc:
            self.plain_streams["failed"] += 1
            log.info("%s: its plain stream was not stored (%s); sending the staged copy", "/".join(rf.node.path), exc)
            return None
        self.plain_streams["stored"] += 1
        return entry

    async def _create_remote(self, node: Node, append: bool) -> Handle:
        """A new remote file (create): empty staging, published at the first close."""
        async with node.lock:
            # A new name is content: even empty, the first close stores it.
            rf = self._new_remote(node, S.DIRTY, None, True, None)
            node.writers += 1
            handle = self._new_handle(node, rf.fd, True, False, append=append)
            handle.remote = rf
            return handle

    async def _open_remote_write(self, node: Node, truncate: bool, append: bool) -> Handle:
        """Open a remote file for writing: staging started (a copy of the object unless O_TRUNC)."""
        async with node.lock:
            rf = node.remote
            if rf is not None and rf.state is S.FAILED and not truncate:
                raise rf.error or OSError(errno.EIO, "an earlier write to this file failed")
            if rf is not None and rf.state is S.QUEUED:
                # A close acknowledged that content: it is stored before anything replaces it.
                try:
                    await self._publish(rf)
                except Exception as exc:
                    log.warning("%s: reopened for writing; its queued upload failed first: %s",
                                "/".join(node.path), exc)
                if rf.state in (S.CLEAN,) and not rf.readers and node.writers <= 0:
                    await self._end(rf)
                    rf = node.remote
            if rf is None:
                rf = await self._stage(node, truncate)
            elif truncate:
                self._abort_upload(rf)
                os.ftruncate(rf.fd, 0)
                rf.error = None
                self._fire(rf, "open_trunc")
                self._begin_upload(rf)
            node.writers += 1
            handle = self._new_handle(node, rf.fd, True, False, append=append)
            handle.remote = rf
            return handle

    def _open_staged_read(self, node: Node) -> Handle | None:
        """A read-only handle on a file being written here: it reads the staging file (read-your-
        writes) through its own descriptor, which keeps the published content once writing ends."""
        rf = node.remote
        if rf is None or rf.state in (S.ENDED, S.DETACHED):
            return None
        handle = self._new_handle(node, os.dup(rf.fd), False, True)
        handle.remote = rf
        rf.readers.add(handle)
        return handle

    def _attach_reader(self, handle: Handle, rf: RemoteFile) -> None:
        """Make a read-only handle read through rf (its own dup of the staging descriptor)."""
        if handle.remote is not None:
            handle.remote.readers.discard(handle)
        if handle.owns_fd and handle.fd is not None:
            os.close(handle.fd)
        handle.fd = os.dup(rf.fd)
        handle.owns_fd = True
        download, handle.download = handle.download, None
        if download is not None:
            download.readers -= 1
            self._end_download(download)
        handle.remote = rf
        rf.readers.add(handle)

    # ------------------------------------------------------------------ making the staging file whole

    async def _settle(self, rf: RemoteFile) -> None:
        """(lock held) Make the staging file hold the whole file: a stream is read back, a
        stale file refilled from the store."""
        store = rf.node.stored_in
        upload = rf.upload
        if upload is not None and upload.started:
            rf.upload = None
            try:
                await store.call(upload.read_back, rf.fd)
            except Exception as exc:
                raise self._lose(rf, exc) from exc
            self._fire(rf, "read_back")
        elif upload is not None:
            self._abort_upload(rf)  # not started: the staging file holds everything
        if rf.state is S.STALE:
            source = None
            try:
                entry = await store.call(store.storage.stat_file, rf.node.path)
                if self.cache is not None:
                    source = await store.call(self.cache.localize, store.storage, rf.node.path, entry.etag or "")
                rf.base_etag = entry.etag
            except FileNotFoundError:
                rf.base_etag = None
                rf.absent = True
            os.ftruncate(rf.fd, 0)
            if source is not None:
                _copy_into(source, rf.fd)
            self._fire(rf, "refill")

    def _lose(self, rf: RemoteFile, exc: BaseException) -> OSError:
        """A write the caller was told succeeded cannot be completed: FAILED, old object kept."""
        code = exc.errno if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
        log.error("%s: a write was lost, the stored object is left as it was: %s", "/".join(rf.node.path), exc)
        self._abort_upload(rf)
        rf.error = OSError(code, f"write failed: {exc}")
        if rf.state is not S.DETACHED:
            self._fire(rf, "write_failed")
        return OSError(code, str(rf.error))

    # ------------------------------------------------------------------ reads and writes

    async def _staged_read(self, handle: Handle, offset: int, size: int) -> bytes | memoryview | None:
        """A read of a handle on a file being written here (read-your-writes), or None: not staged."""
        rf = handle.remote
        node = handle.node
        active = node.remote
        if (active is not None and active is not rf and not handle.writable
                and active.state not in (S.ENDED, S.DETACHED)):
            self._attach_reader(handle, active)  # opened before this writing began: one content per file
            rf = active
        if rf is None:
            return None
        if node.remote is not rf:
            # Writing ended: a reader's own descriptor holds what was published.
            if rf.state is not S.ENDED or rf.error is not None or handle.fd is None:
                raise OSError(errno.EIO, "the file this handle read was not published")
            return await self._pread(handle.fd, node, size, offset)
        if (rf.state in (S.QUEUED, S.PUBLISHING, S.SEALED) and (rf.upload is None or not rf.upload.started)
                and handle.fd is not None):
            # Closed content waiting for (or in) its upload: the staging file does not change
            # until a writer takes the lock, so no read waits for an upload in flight.  The
            # handle's own descriptor (a reader's dup) stays valid whatever ends meanwhile.
            return await self._pread(handle.fd, node, size, offset)
        async with node.lock:
            if rf.state is S.FAILED:
                raise OSError(errno.EIO, "an earlier write to this file failed")
            if rf.state in (S.STREAMING, S.STALE) or (rf.upload is not None and rf.upload.started):
                await self._settle(rf)
            return await self._pread(rf.fd, node, size, offset)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        """Write at offset (at the end for O_APPEND); local: into the file, remote: staged."""
        handle = self.handle(fh)
        if not handle.writable or handle.fd is None:
            raise OSError(errno.EBADF, "not open for writing")
        node = handle.node
        store = node.store
        if store is not None and not store.local:
            async with node.lock:
                offset, written = await self._write_remote(handle, node, store, offset, data)
        else:
            if handle.append:
                offset = os.fstat(handle.fd).st_size
            written = os.pwrite(handle.fd, data, offset)
        end = offset + written
        if end > node.entry.size:
            node.entry = _with(node.entry, size=end, mtime_ns=time.time_ns())
            self._touch_parent(node)
        else:
            node.entry = _with(node.entry, mtime_ns=time.time_ns())
        return written

    async def _write_remote(self, handle: Handle, node: Node, store: StoreMount, offset: int,
                            data: bytes) -> tuple[int, int]:
        """(lock held) A write to a remote file: appended to its stream, or into the staging
        file.  Returns (offset written at, bytes written)."""
        rf = handle.remote
        if rf is None or node.remote is not rf:
            raise OSError(errno.EBADF, "this handle's file is no longer being written")
        if rf.state is S.FAILED:
            raise rf.failure()
        upload = rf.upload
        if handle.append and upload is not None:
            offset = rf.upload_end
        if rf.state is S.STALE or (upload is not None and offset != rf.upload_end):
            await self._settle(rf)  # ends the upload
            upload = None
        if handle.append and upload is None:
            offset = os.fstat(rf.fd).st_size
        rf.pending_mtime = None
        if upload is not None and upload.started:
            try:
                if not upload.offer(data):
                    await store.call(upload.put, data)
            except Exception as exc:
                raise self._lose(rf, exc) from exc
            rf.upload_end += len(data)
            self._fire(rf, "write")
            return offset, len(data)
        try:
            written = pwrite_all(rf.fd, data, offset)
        except OSError as exc:
            raise self._lose(rf, exc) from exc
        self._fire(rf, "write")
        if upload is not None and rf.state is not S.DETACHED:
            rf.upload_end += written
            if rf.upload_end <= upload.begin_at:
                await self._feed_plain(rf, store, data)
            else:
                # Big enough to be segmented anyway: from now on it goes up as it comes.
                self._abort_plain(rf)
                try:
                    await store.call(upload.put_file, rf.fd, rf.upload_end)
                except Exception as exc:
                    raise self._lose(rf, exc) from exc
                self._fire(rf, "stream")
        return offset, written

    def _touch_parent(self, node: Node) -> None:
        """Keep the parent's cached listing in step with what we know of a node we changed."""
        if node.store is None or not node.path or node.unlinked:
            return
        if self.by_path.get((node.store.name, node.path)) != node.ino:
            return  # the name is another file's now (unlinked or replaced while open)
        parent_ino = self.by_path.get((node.store.name, node.path.parent))
        parent = self.nodes.get(parent_ino) if parent_ino is not None else None
        if parent is not None and parent.children is not None and node.path[-1] in parent.children:
            parent.children[node.path[-1]] = node.entry

    async def _truncate_remote(self, node: Node, size: int, fh: int | None) -> None:
        """truncate/ftruncate of a remote file: staged and published at the next close, or at
        once when no handle has it open for writing (truncate(1))."""
        async with node.lock:
            rf = node.remote
            if rf is None or rf.state is S.ENDED:
                rf = await self._stage(node, truncate=size == 0)
                self._abort_upload(rf)
                try:
                    os.ftruncate(rf.fd, size)
                except OSError as exc:
                    raise self._lose(rf, exc) from exc
                self._fire(rf, "truncate")
                node.entry = _with(node.entry, size=size, mtime_ns=time.time_ns())
                try:
                    await self._publish(rf)
                finally:
                    if node.writers <= 0 and rf.state in (S.CLEAN, S.STALE, S.FAILED):
                        await self._end(rf)
                return
            if rf.state is S.FAILED:
                raise OSError(errno.EIO, "an earlier write to this file failed")
            if size == 0:  # nothing to keep: no read-back or refill
                self._abort_upload(rf)
                if rf.state is S.STALE:
                    self._fire(rf, "refill")
            await self._settle(rf)
            try:
                os.ftruncate(rf.fd, size)
            except OSError as exc:
                raise self._lose(rf, exc) from exc
            if rf.state is not S.DETACHED:
                self._fire(rf, "truncate")
            node.entry = _with(node.entry, size=size, mtime_ns=time.time_ns())
            if node.writers <= 0 and rf.state in QUEUEABLE:
                # No writer left to close it (a queued or sealed file truncated by path).
                if self.options.writeback:
                    await self._queue(rf)
                else:
                    await self._publish(rf)

    # ------------------------------------------------------------------ publication

    async def _publish(self, rf: RemoteFile) -> None:
        """(lock held) Store the file's content at its name; the store holds it on return.
        A failure leaves the old object and the staging file (SEALED), and raises EIO."""
        node = rf.node
        store = node.stored_in
        if rf.state is S.FAILED:
            raise rf.failure()
        if rf.state not in PENDING:
            return
        mtime = rf.pending_mtime if rf.pending_mtime is not None else node.entry.mtime_ns
        storage = store.storage
        upload = rf.upload if rf.upload is not None and rf.upload.started else None
        if upload is None:
            rf.upload_id = new_upload_id()  # the segments store_local_file may write
        rf.segmented = upload is not None or rf.size() > _segment_threshold(storage)
        self._fire(rf, "publish")
        try:
            if upload is not None:
                try:
                    try:
                        entry = await store.call(functools.partial(upload.finish, mtime, new=rf.absent))
                    except FileExistsError:  # someone else created it meanwhile: replace it
                        entry = await store.call(functools.partial(upload.finish, mtime, new=False))
                except Exception as exc:
                    raise self._lose(rf, exc) from exc
                rf.upload = None
                self._fire(rf, "published_stream")
            else:
                # Not streaming (yet): the staging file holds it all (a plain stream may hold it
                # too); a stream not started stays, so later appends may still stream.
                plain_entry = await self._finish_plain(rf, mtime)
                try:
                    store_file = functools.partial(storage.store_local_file, rf.staging, node.path, mtime,
                                                   upload_id=rf.upload_id)
                    if plain_entry is not None:
                        entry = plain_entry
                    elif rf.absent:
                        try:
                            entry = await store.call(functools.partial(store_file, new=True))
                        except FileExistsError:
                            # Someone else created it meanwhile: replace it, as a later writer does.
                            entry = await store.call(store_file)
                    else:
                        entry = await store.call(store_file)
                except Exception as exc:
                    if rf.state is S.PUBLISHING:
                        self._fire(rf, "publish_failed")
                    log.error("upload of %s failed; its data is kept in %s and retried: %s",
                              "/".join(node.path), rf.staging, exc)
                    if isinstance(exc, OSError):
                        raise
                    raise OSError(errno.EIO, f"upload failed: {exc}") from exc
                self._fire(rf, "published")
                if rf.upload is not None and rf.upload.started:
                    self._abort_upload(rf)
        finally:
            if rf.state is S.PUBLISHING:  # cancelled (timeout) in the middle
                self._fire(rf, "publish_failed")
        rf.absent = False
        rf.base_etag = entry.etag
        rf.pending_mtime = None
        node.entry = _with(entry, name=node.path[-1])
        node.fetched = time.monotonic()
        node.keep_cache_etag = entry.etag
        parent_ino = self.by_path.get((store.name, node.path.parent))
        if parent_ino is not None:
            self._note_child(self.nodes[parent_ino], node.path[-1], node.entry)
        elif not store.local:
            self.overlay.setdefault((store.name, node.path.parent), {})[node.path[-1]] = (node.entry, time.monotonic())

    # ------------------------------------------------------------------ write-back

    async def _queue(self, rf: RemoteFile) -> None:
        """(lock held) Write-back close: the content is made durable in the workbench (staging
        file and journal record fsynced), then uploaded in the background.  Without a workbench
        journal nothing can be made durable here, so it is published at once."""
        journal = self.journal
        if journal is None:
            await self._publish(rf)
            return
        try:
            await trio.to_thread.run_sync(self._write_record, journal, rf, S.QUEUED, True)
        except OSError as exc:
            log.error("%s: cannot make the content durable in the workbench: %s", "/".join(rf.node.path), exc)
            code = exc.errno if exc.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
            raise OSError(code, f"workbench journal: {exc.strerror or exc}") from exc
        self._fire(rf, "queue")
        self.write_back.busy_until = time.monotonic() + WRITE_BACK_BUSY
        self._start_write_back(rf)

    def _start_write_back(self, rf: RemoteFile) -> None:
        """One background upload task per queued file (none twice)."""
        wb = self.write_back
        key = id(rf)
        if key in wb.files:
            return
        nursery = self.nursery
        if nursery is None:  # no background here (a test's Vfs): shutdown publishes it
            return
        wb.files[key] = rf
        with contextlib.suppress(OSError):
            wb.sizes[key] = rf.size()
            wb.bytes += wb.sizes[key]
        nursery.start_soon(self._write_back_task, rf)

    async def _write_back_task(self, rf: RemoteFile) -> None:
        """Upload a queued file; a failure is retried with back-off (doubling from 1 s to 60 s)
        and the content stays journaled; at unmount one more try, then the next mount's."""
        wb = self.write_back
        node = rf.node
        delay = WRITE_BACK_FIRST_DELAY
        where = "/".join(node.path)
        try:
            with trio.move_on_after(WRITE_BACK_SETTLE):
                await wb.drain_started.wait()
            while True:
                error: Exception | None = None
                async with wb.transfers:
                    while (wb.active >= WRITE_BACK_BUSY_TRANSFERS and wb.phase is Phase.RUNNING
                           and time.monotonic() < wb.busy_until and wb.bytes < WRITE_BACK_BUSY_BYTES):
                        await trio.sleep(0.05)  # a copy is going on: leave it the CPUs
                    if wb.phase is Phase.ABANDONED:
                        return
                    wb.active += 1
                    try:
                        async with node.lock:
                            if node.remote is not rf or rf.state not in (S.QUEUED, S.SEALED):
                                return  # written again, unlinked, published by fsync/rename/reopen
                            try:
                                await self._publish(rf)
                            except Exception as exc:
                                error = exc
                            else:
                                wb.uploaded += 1
                                if node.writers <= 0 and rf.state in (S.CLEAN, S.STALE, S.FAILED, S.DETACHED):
                                    await self._end(rf)
                                return
                    finally:
                        wb.active -= 1
                wb.failures += 1
                if wb.phase is not Phase.RUNNING:
                    wb.phase = Phase.ABANDONED
                    log.error("write-back of %s failed while stopping (%s): it stays in the journal and is "
                              "uploaded at the next mount", where, error)
                    return
                log.warning("write-back of %s failed (%s): kept, retried in %.0f s", where, error, delay)
                with trio.move_on_after(delay):
                    await wb.drain_started.wait()
                delay = min(delay * 2, WRITE_BACK_MAX_DELAY)
        finally:
            wb.files.pop(id(rf), None)
            wb.bytes -= wb.sizes.pop(id(rf), 0)
            self._maybe_free(node)

    def _unpublished_children(self, store: StoreMount, path: ExactPath) -> list[tuple[str, Entry]]:
        """Files in the directory store/path that write-back has acknowledged and not uploaded
        yet: listings show them although the store does not hold them yet."""
        out = []
        for rf in self.write_back.files.values():
            node = rf.node
            if node.store is store and node.path.parent == path and node.path and not node.unlinked:
                out.append((node.path[-1], node.entry))
        return out

    def queued_new_file(self, node: Node) -> bool:
        """Write-back holds this file's first content, never uploaded (a rename moves it here)."""
        rf = node.remote
        return (self.options.writeback and not node.is_dir and rf is not None and rf.state is S.QUEUED
                and rf.absent and bool(node.path))

    def requeue_at(self, node: Node, existing: Entry | None) -> None:
        """(lock held) A queued new file is renamed onto a name that holds existing (or
        nothing): its upload replaces that object, which stays until then (old-or-new)."""
        rf = node.remote
        if rf is None:
            return
        rf.absent = existing is None
        rf.base_etag = existing.etag if existing is not None else None

    async def rejournal_queued(self, node: Node) -> None:
        """(lock held) After a rename of a queued file: its record names the new path, durably."""
        rf = node.remote
        journal = self.journal
        if rf is None or journal is None or rf.state is not S.QUEUED:
            return
        await trio.to_thread.run_sync(self._write_record, journal, rf, S.QUEUED, True)

    async def _drain_write_back(self) -> None:
        """Unmount: wait for the background uploads, logging what is left every few seconds."""
        wb = self.write_back
        wb.phase = Phase.DRAINING
        wb.drain_started.set()
        if not wb.files:
            return
        log.info("write-back: %d file(s) still to upload before stopping", len(wb.files))
        last = time.monotonic()
        while wb.files:
            await trio.sleep(0.05)
            if time.monotonic() - last >= DRAIN_REPORT_SECONDS and wb.files:
                last = time.monotonic()
                log.info("write-back: %d file(s), %d bytes still to upload (%d uploaded)",
                         len(wb.files), wb.bytes, wb.uploaded)

    async def publish_pending(self, node: Node) -> None:
        """Publish whatever a remote node has pending (before a rename)."""
        rf = node.remote
        if rf is None:
            return
        async with node.lock:
            if rf.state in PENDING:
                await self._publish(rf)

    async def flush(self, fh: int) -> None:
        """close(2) of a descriptor: a remote file's changes are published now; errors reach
        close().  An O_TRUNC with nothing written since waits (see TRUNCATED)."""
        handle = self.handle(fh)
        rf = handle.remote
        if not handle.writable or rf is None:
            return
        node = handle.node
        async with node.lock:
            if node.remote is not rf:
                return
            if rf.state is S.FAILED:
                raise rf.failure()
            if rf.state in FLUSH_PUBLISHES:
                if self.options.writeback and rf.state in QUEUEABLE:
                    await self._queue(rf)
                else:
                    await self._publish(rf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        """fsync(2): local: the file's fsync; remote: publish now (a pending truncation too)."""
        handle = self.handle(fh)
        node = handle.node
        if node.store is not None and node.store.local:
            if handle.fd is not None and handle.writable:
                await node.store.call(os.fsync, handle.fd)
            return
        rf = handle.remote
        if rf is None:
            return
        async with node.lock:
            if node.remote is not rf:
                return
            await self._publish(rf)

    async def release(self, fh: int) -> None:
        """Last close of a handle: the last writer publishes what is pending; the staging file
        then becomes the cached copy of the new ETag (or goes)."""
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        node.open_count -= 1
        try:
            if handle.writable:
                node.writers -= 1
                self._touch_parent(node)
            rf = handle.remote
            if rf is not None and not handle.writable:
                rf.readers.discard(handle)
            if rf is not None and handle.writable and node.remote is rf and node.writers <= 0:
                async with node.lock:
                    if node.remote is rf and node.writers <= 0:
                        if self.options.writeback and rf.state in QUEUEABLE:
                            try:
                                await self._queue(rf)
                            except Exception as exc:
                                log.error("%s: not queued at release; data kept in %s: %s",
                                          "/".join(node.path), rf.staging, exc)
                        elif rf.state in PENDING and rf.state is not S.QUEUED:
                            try:
                                await self._publish(rf)
                            except Exception as exc:
                                log.error("upload of %s failed at release; data kept in %s (journaled): %s",
                                          "/".join(node.path), rf.staging, exc)
                        if rf.state in (S.CLEAN, S.STALE, S.FAILED, S.DETACHED):
                            await self._end(rf)
        finally:
            if handle.owns_fd and handle.fd is not None:
                os.close(handle.fd)
            download = handle.download
            if download is not None:
                download.readers -= 1
                self._end_download(download)
            self._maybe_free(node)

    async def _end(self, rf: RemoteFile) -> None:
        """(lock held) Writing is over: the staging file becomes the cached copy (CLEAN) or goes."""
        node = rf.node
        store = node.stored_in
        if rf.state is S.CLEAN:
            # Readers opened before writing began read what was published from now on.
            for other in list(self.handles.values()):
                if other.node is node and not other.writable and other.remote is not rf:
                    self._attach_reader(other, rf)
        if rf.state is S.STALE and rf.readers:
            # Readers still read through their descriptors: give them the whole file.
            try:
                await self._settle(rf)
            except OSError as exc:
                log.warning("%s: could not refill for its readers: %s", "/".join(node.path), exc)
        if rf.state is S.STALE and rf.readers:
            rf.error = OSError(errno.EIO, "not refilled")
        self._abort_upload(rf)
        keep = (rf.state is S.CLEAN and not node.unlinked and rf.base_etag
                and os.fstat(rf.fd).st_size >= CACHE_WRITTEN_MIN)
        self._fire(rf, "end")
        if self.journal is not None:
            self.journal.remove(rf.journal_id)
        node.remote = None
        os.close(rf.fd)
        if keep and self.cache is not None:
            try:
                # In a thread: its metadata writes can wait for the disk's journal, and the loop
                # serves other requests meanwhile.
                await trio.to_thread.run_sync(self.cache.put, store.storage, node.path, rf.base_etag or "",
                                              rf.staging)
                return
            except OSError as exc:
                log.debug("not caching %s: %s", rf.staging, exc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rf.staging)

    async def _unlink_remote(self, node: Node) -> None:
        """The name is going: nothing of a file being written is published any more."""
        if node.remote is None:
            return
        async with node.lock:
            await self._detach_locked(node)

    async def _detach_locked(self, node: Node) -> None:
        """(lock held) The name is gone: the file being written goes on locally, unpublished."""
        rf = node.remote
        if rf is None:
            return
        self._abort_upload(rf)
        self._fire(rf, "unlink")
        if self.journal is not None:
            self.journal.remove(rf.journal_id)
        if node.writers <= 0 and not rf.readers:
            await self._end(rf)

    async def _set_pending_mtime(self, node: Node, mtime_ns: int) -> bool:
        """(lock held when node.remote) utimens on a file with unpublished content: sent with the
        data (a queued file's durable record says it too, rewritten and fsynced in a thread).
        False: published."""
        rf = node.remote
        if rf is None or rf.state not in PENDING + (S.DETACHED,):
            return False
        rf.pending_mtime = mtime_ns
        journal = self.journal
        if rf.state is S.QUEUED and journal is not None:
            try:
                await trio.to_thread.run_sync(self._write_record, journal, rf, S.QUEUED, True)
            except OSError as exc:
                log.warning("%s: new mtime not journaled (kept in memory): %s", "/".join(node.path), exc)
        return True

    def _pending_mtime(self, node: Node) -> int | None:
        rf = node.remote
        return rf.pending_mtime if rf is not None else None

    def _staged_size(self, node: Node) -> int | None:
        """The size of a file being written here (None: use the stored entry)."""
        rf = node.remote
        if rf is None or rf.state in (S.STALE, S.ENDED):
            return None
        return rf.size()

    def is_dirty(self, node: Node) -> bool:
        rf = node.remote
        return rf is not None and rf.state in PENDING + (S.PUBLISHING,)

    def after_rename(self, node: Node) -> None:
        """Files being written at or below a renamed node follow its new path (called after
        repath): a stream not started yet is begun again for the new name (it names its object
        when it starts), and journal records are rewritten."""
        for other in self.nodes.values():
            rf = other.remote
            if rf is None or other.store is not node.store or other.path[:len(node.path)] != node.path:
                continue
            if rf.upload is not None and not rf.upload.started:
                end = rf.upload_end
                self._abort_upload(rf)
                self._begin_upload(rf)
                rf.upload_end = end
            tag = _staging_tag(other)
            renamed = os.path.join(os.path.dirname(rf.staging),
                                   f"staging-{tag or 'x'}.{os.path.basename(rf.staging).rsplit('.', 1)[-1]}")
            try:
                os.rename(rf.staging, renamed)
                rf.staging = renamed
                rf.unnamed = tag is None
            except OSError as exc:
                log.warning("staging file %s not renamed for %s: %s", rf.staging, "/".join(other.path), exc)
                rf.unnamed = True
            self._journal(rf)

    # ------------------------------------------------------------------ unmount and recovery

    async def shutdown(self) -> None:
        """Publish everything still pending (unmount): nothing accepted is dropped.  Write-back
        uploads drain first; if one fails while stopping, what is left stays journaled for the
        next mount rather than being tried file by file."""
        await self._drain_write_back()
        gave_up = self.write_back.phase is Phase.ABANDONED
        for node in list(self.nodes.values()):
            rf = node.remote
            if rf is None:
                continue
            async with node.lock:
                if gave_up and rf.state in (S.QUEUED, S.SEALED):
                    continue
                if rf.state in PENDING:
                    try:
                        await self._publish(rf)
                    except Exception as exc:
                        log.error("at unmount, upload of %s failed; its data is journaled in %s: %s",
                                  "/".join(node.path), rf.staging, exc)

    def pending_uploads(self) -> list[dict[str, Any]]:
        """Files with unpublished content (for status)."""
        out = []
        for node in self.nodes.values():
            rf = node.remote
            if rf is None or rf.state not in JOURNALED:
                continue
            with contextlib.suppress(OSError):
                out.append({"store": node.store.name if node.store else "", "path": "/".join(node.path),
                            "state": rf.state.value, "bytes": rf.size(), "since": rf.since})
        return out

    def write_back_status(self) -> dict[str, Any]:
        """Write-back figures for status: files queued (or retrying) and their bytes, uploads
        done and failed attempts since the mount, whether the drain at unmount has begun."""
        wb = self.write_back
        queued = [rf for rf in wb.files.values() if rf.state is not S.ENDED]
        size = 0
        for rf in queued:
            with contextlib.suppress(OSError):
                size += rf.size()
        return {"queued": len(queued), "bytes": size, "uploaded": wb.uploaded, "failed_attempts": wb.failures,
                "transfers": self.options.transfers, "draining": wb.phase is not Phase.RUNNING}

    def journaled(self) -> list[dict[str, Any]]:
        """Journal records not belonging to a file open here (left by an earlier run)."""
        journal = self.journal
        if journal is None:
            return []
        live = {node.remote.journal_id for node in self.nodes.values() if node.remote is not None}
        return [{"store": r.get("store"), "path": "/".join(r.get("path") or []), "state": r.get("state"),
                 "since": r.get("time")} for rid, r in journal.records() if rid not in live]

    def recovered(self) -> list[dict[str, Any]]:
        return list_recovered(self.recovered_dir) if self.recovered_dir else []

    async def recover(self) -> None:
        """At mount: finish or set aside what an earlier run left in the journal and staging."""
        journal = self.journal
        if journal is not None:
            await self._recover_journal(journal)
        grace = self.options.gc_grace
        if grace is None:
            return
        for store in self.stores.values():
            collect = getattr(store.storage, "collect_garbage", None)
            if store.local or collect is None:
                continue
            try:
                deleted = await store.call(functools.partial(collect, grace_seconds=grace))
            except Exception as exc:
                log.warning("%s: collecting unreferenced segments at mount failed: %s", store.name, exc)
                continue
            if deleted:
                log.warning("%s: deleted %d segment(s) no manifest referenced, older than %.0f s",
                            store.name, len(deleted), grace)

    async def _recover_journal(self, journal: Journal) -> None:
        """Act on every record: journal files, and staging files carrying their own (queued,
        write-back).  Records of one path are taken oldest first; paths go `transfers` at once
        (after a kill -9 in write-back there may be a thousand queued files).  Staging files
        with no record at all are kept aside, never published."""
        known: set[str] = set()
        by_path: dict[tuple[str, tuple[str, ...]], list[tuple[str, dict[str, Any]]]] = {}

        def add(record_id: str, record: dict[str, Any]) -> None:
            key = (str(record.get("store")), tuple(str(c) for c in record.get("path") or []))
            by_path.setdefault(key, []).append((record_id, record))

        for record_id, record in list(journal.records()):
            known.add(os.path.abspath(str(record.get("staging", ""))))
            if str(record.get("store")) not in self.stores:
                log.info("journal record %s is for store %s, not mounted here: left", record_id, record.get("store"))
                continue
            add(record_id, record)
        staging_dir = self.options.staging_dir
        live = {os.path.abspath(n.remote.staging) for n in self.nodes.values() if n.remote is not None}
        unnamed: list[tuple[str, str]] = []
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(staging_dir)):
                full = os.path.abspath(os.path.join(staging_dir, name))
                if full in known or full in live or not name.startswith("staging-"):
                    continue
                own = _xattr_record(full)
                if own is None:
                    unnamed.append((name, full))
                elif str(own.get("store")) in self.stores:
                    own["staging"] = full  # its record may predate a rename of the file
                    add("", own)
                else:
                    log.info("staging file %s is for store %s, not mounted here: left", full, own.get("store"))
        places = trio.Semaphore(max(1, self.options.transfers))

        async def recover_path(items: list[tuple[str, dict[str, Any]]]) -> None:
            async with places:
                for record_id, record in sorted(items, key=lambda item: float(item[1].get("time") or 0)):
                    store = self.stores[str(record.get("store"))]
                    try:
                        await self._recover_one(journal, store, record_id, record)
                    except Exception as exc:
                        log.error("recovery of %s/%s failed (kept in %s, retried at the next mount): %s",
                                  record.get("store"), "/".join(record.get("path") or []),
                                  f"journal record {record_id}" if record_id else record.get("staging"), exc)

        if by_path:
            async with trio.open_nursery() as nursery:
                for items in by_path.values():
                    nursery.start_soon(recover_path, items)
        # Staging files no record names (an older version, a small file never closed, or a
        # crash between mkstemp and the first record): kept, never published.
        for name, full in unnamed:
            with contextlib.suppress(OSError):
                if os.path.getsize(full) == 0:
                    os.unlink(full)
                    continue
                where = _parse_staging_tag(name)
                store_name, path = where if where is not None else ("_unknown", [name])
                self._set_aside(full, store_name, path,
                                "never closed, or its upload was cut before the store confirmed it: not published")

    async def _recover_one(self, journal: Journal, store: StoreMount, record_id: str, record: dict[str, Any]) -> None:
        path = ExactPath(str(c) for c in record.get("path") or [])
        staging = str(record.get("staging") or "")
        state = str(record.get("state"))
        upload_id = record.get("upload_id")
        where = f"{store.name}:{'/'.join(path)}"
        have_data = bool(staging) and os.path.exists(staging)
        asked = state in ASKED
        streamed = bool(record.get("streamed"))
        complete = not streamed
        slo_etag: str | None = None
        read_upload = getattr(store.storage, "read_upload", None)
        if streamed and upload_id and have_data and read_upload is not None:
            # The segments hold every byte the stream sent (its start too): bring them back.
            fd = os.open(staging, os.O_RDWR | os.O_CLOEXEC)
            try:
                size, slo_etag = await store.call(read_upload, path, str(upload_id), fd)
                complete = size == record.get("bytes")
                if complete:
                    os.ftruncate(fd, size)
            except OSError as exc:
                log.warning("recovery: %s: the segments of upload %s could not be read back: %s",
                            where, upload_id, exc)
            finally:
                os.close(fd)
        if upload_id:
            # Segments of an upload cut short (the store keeps any the object now references).
            count = await store.call(store.storage.discard_upload, path, str(upload_id))
            if count:
                log.info("recovery: %s: deleted %s segments of the interrupted upload %s", where, count, upload_id)
        if not have_data:
            journal.remove(record_id)
            return
        if asked and complete:
            try:
                current = await store.call(store.storage.stat_file, path)
            except FileNotFoundError:
                current = None
            base = record.get("base_etag")
            current_etag = current.etag if current is not None else None
            if current is not None and current_etag and current.size == os.path.getsize(staging):
                digest = slo_etag if streamed else await store.call(_md5_file, staging)
                if digest == current_etag:
                    log.info("recovery: %s was already stored before the crash", where)
                    os.unlink(staging)
                    journal.remove(record_id)
                    return
            unchanged = (current is None and (record.get("absent") or base is None)) or (
                current is not None and base is not None and current_etag == base)
            if unchanged:
                mtime = record.get("mtime_ns")
                entry = await store.call(functools.partial(store.storage.store_local_file, staging, path,
                                                           mtime if isinstance(mtime, int) else None,
                                                           new=current is None))
                log.warning("recovery: uploaded %s (%d bytes) that a close had asked for before the crash",
                            where, entry.size)
                os.unlink(staging)
                journal.remove(record_id)
                return
            self._set_aside(staging, store.name, list(path),
                            f"the object changed since this content was written (was {base}, now {current_etag})")
        elif state == S.TRUNCATED.value and os.path.getsize(staging) == 0:
            os.unlink(staging)
        else:
            if asked:
                reason = "partial: a close had asked for it, but not every byte of its stream reached Swift"
            elif streamed:
                reason = "never closed (partial): the bytes the stream had sent; the writer did not finish"
            else:
                reason = "never closed: the writer did not finish (not published)"
            self._set_aside(staging, store.name, list(path), reason)
        journal.remove(record_id)

    def _set_aside(self, staging: str, store: str, path: list[str], reason: str) -> None:
        recovered = self.recovered_dir
        if recovered is None:  # no workbench: nothing was journaled or staged there to set aside
            raise OSError(errno.EIO, f"no workbench to keep the staged data of {store}/{'/'.join(path)} in")
        target = recovered_path(recovered, store, path)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        try:
            os.replace(staging, target)
        except OSError:
            shutil.copyfile(staging, target)
            os.unlink(staging)
        with open(target + ".why", "w") as f:
            json.dump({"store": store, "path": "/".join(path), "reason": reason, "time": time.time()}, f)
        log.error("recovery: staged data of %s/%s kept in %s: %s", store, "/".join(path), target, reason)


__all__ = ["FLUSH_PUBLISHES", "PENDING", "QUEUEABLE", "TRANSITIONS", "RemoteFile", "WriteBack", "WriteState",
           "WritesMixin"]
