"""Large objects: Static Large Objects written from a local file (SegmentUploader) or while a
file is being appended to (SegmentStream), segment naming, and reading manifests.

Segments live in ``<container>_segments`` as ``<object>/<upload id>/<index:08d>`` (a hash of
the object name instead when that would be too long).  Nothing is visible at the object's name
before the manifest is written, and the segments of an upload that failed or was abandoned
are deleted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from swiftclient.utils import LengthWrapper

from .. import Entry, Upload, check_exact_component, new_upload_id
from .listing import dlo_prefix, is_slo, maybe_dlo, maybe_slo, parse_listing_time, strip_etag

if TYPE_CHECKING:
    from ..cloudfiles import CloudFileStorage

log = logging.getLogger(__name__)

#: Default size of SLO segments (objects larger than this are segmented).
DEFAULT_SEGMENT_SIZE = 100 * 1048576
#: Size of the reads a segment is sent in (and hashed as it goes).
SEND_CHUNK = 1048576
#: Largest first segment of a stream (the store's segment_size when smaller).  A segment's
#: bytes stay in memory until Swift acknowledged it, so a failed PUT can be sent again.
STREAM_SEGMENT_SIZE = 16 * 1048576
#: Stream segments sent or waiting for Swift's answer at once (each kept until acknowledged).
STREAM_IN_FLIGHT = 2
#: A stream's segments double in size every this many segments.
SEGMENTS_PER_DOUBLING = 200
#: Size of the reads of a local file being hashed.
HASH_CHUNK = 262144


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



def segment_base(name: str, upload_id: str, max_name_length: int) -> str:
    """The first part of the segment names of object *name*: the name itself, or its SHA-256
    when ``<name>/<upload id>/<index>`` would be longer than Swift allows."""
    if len(f"{name}/{upload_id}/00000000".encode()) > max_name_length:
        return hashlib.sha256(name.encode("utf-8")).hexdigest()
    return name


def segment_prefix(name: str, upload_id: str, max_name_length: int) -> str:
    """The prefix (in the segments container) of every segment of one upload of *name*."""
    return f"{segment_base(name, upload_id, max_name_length)}/{upload_id}/"


def parse_slo_manifest(body: bytes) -> list[tuple[str, str]]:
    """(container, object) of each segment of an SLO manifest as ``?multipart-manifest=get``
    returns it; ValueError when it is not a manifest."""
    manifest = json.loads(body)
    if not isinstance(manifest, list):
        raise ValueError("an SLO manifest is a JSON list")
    segments = []
    for item in manifest:
        if not isinstance(item, dict):
            raise ValueError("an SLO manifest lists objects")
        path = str(item.get("name") or item.get("path") or "").lstrip("/")
        container, _, obj = path.partition("/")
        if container and obj:
            segments.append((container, obj))
    return segments


def _setter(event: threading.Event) -> Callable[[Future[Any]], None]:
    """A future's done-callback that sets event (this one, bound now)."""

    def done(_future: Future[Any]) -> None:
        event.set()

    return done


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

    def reset(self, *_args: Any, **_kwargs: Any) -> None:
        """Back to the first byte.  swiftclient calls it before sending the body again, with the
        request's own arguments (``reset(func, *args, **kwargs)``): they are accepted and ignored."""
        self._pos = 0
        self.md5 = hashlib.md5(usedforsecurity=False)


class _Segments:
    """The names of one upload's segments: ``<name>/<upload id>/<index>`` in the segments
    container (a hash instead of the name when that would be too long)."""

    def __init__(self, store: CloudFileStorage, name: str, segment_size: int, upload_id: str | None = None) -> None:
        self.store = store
        self.name = name
        self.segment_size = segment_size
        #: Chosen by the caller (who may journal it, to discard the upload after a crash) or new.
        self.upload_id = upload_id or new_upload_id()
        self.base = segment_base(name, self.upload_id, store.max_object_name_length)

    def segment_name(self, index: int) -> str:
        return f"{self.base}/{self.upload_id}/{index:08d}"


class SegmentUploader(_Segments):
    """The SLO segments of a complete local file, sent on the store's worker pool.

    Segments are private (random names in the segments container) until the manifest is
    written, so a failed upload changes nothing visible; its segments are deleted.
    """

    def __init__(self, store: CloudFileStorage, local_path: str, name: str, segment_size: int,
                 upload_id: str | None = None) -> None:
        super().__init__(store, name, segment_size, upload_id)
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
            future = self.store._executor().submit(self._put, self._fd, len(self.futures), self.sent, length)
            self.futures.append(future)
            self.sent += length

    def _put(self, fd: int, index: int, start: int, length: int) -> tuple[str, str, int]:
        """(pool thread) PUT segment index: bytes [start, start + length) of the local file (fd)."""
        self.store._ensure_segment_container()
        segment = self.segment_name(index)
        body = _HashingBody(fd, start, length, hashing=self.store.verify_segments)
        etag = strip_etag(self.store._call("put_object", self.store.segment_container, segment, body,
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

    def discard(self, wait: bool = True) -> None:
        """Delete every segment sent or started (after they have all ended); ``wait=False``:
        the deletes run in the background."""
        for future in self.futures:
            with suppress(BaseException):
                future.result()
        self.close()
        self.store._delete_segments([(self.store.segment_container, self.segment_name(index))
                                     for index in range(len(self.futures))], wait=wait)

    def close(self) -> None:
        if self._fd is not None:
            with suppress(OSError):
                os.close(self._fd)
            self._fd = None


class QueuedUpload(Upload):
    """An Upload whose appended bytes wait in a bounded queue (``_queue``) for a sender thread
    of its own (``_thread``, begun by ``_start`` at the first append).  ``offer`` never blocks;
    ``put`` (each subclass's own wait) and ``put_file`` block while the queue is full.
    ``_check`` raises when the upload takes no more bytes."""

    _queue: queue.Queue[Any]
    _thread: threading.Thread | None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _check(self) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def offer(self, data: bytes) -> bool:
        self._check()
        self._start()
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            return False
        self.accepted += len(data)
        return True

    def put_file(self, fd: int, length: int) -> None:
        """Append bytes [0, length) of the open file fd (blocking)."""
        offset = 0
        while offset < length:
            chunk = os.pread(fd, min(SEND_CHUNK, length - offset), offset)
            if not chunk:
                raise OSError(errno.EIO, "the staging file is shorter than expected")
            self.put(chunk)
            offset += len(chunk)


class SegmentStream(_Segments, QueuedUpload):
    """A file streamed into SLO segments while it is being appended to, from memory.

    ``offer``/``put`` queue the appended bytes (a window of ``window`` chunks, so memory
    stays bounded and a fast writer waits for the network); one thread sends them as
    chunked PUTs of segments (``segment_size_at``: at most 16 MiB at first).  Each segment's
    bytes are kept until Swift acknowledged its PUT, so a failed PUT (5xx, dropped
    connection, expired token) is sent again within the retry deadline: memory is the
    window plus at most two segments (one waiting for its answer, one being sent).
    ``finish`` writes the manifest.  Nothing is visible before that; a failed or abandoned
    stream's segments are deleted (every segment it started, in the background).
    """

    def __init__(self, store: CloudFileStorage, name: str, segment_size: int, window: int = 16,
                 upload_id: str | None = None) -> None:
        super().__init__(store, name, max(min(segment_size, STREAM_SEGMENT_SIZE), store.min_segment_size),
                         upload_id)
        #: The vfs streams a file only once it is larger than this (smaller files: one PUT).
        self.begin_at = segment_size
        self.accepted = 0
        self.segments: list[tuple[str, str, int]] = []
        self.error: BaseException | None = None
        self.aborted = False
        self._queue = queue.Queue(maxsize=window)
        self._thread = None
        self._ended = False
        self._eof = False
        #: The part of a queued chunk past the segment it was cut at (the next segment's start).
        self._carry: memoryview | None = None
        #: Segments whose PUT was started (all of them are deleted by discard).
        self._submitted = 0

    def _check(self) -> None:
        if self.error is not None:
            raise OSError(errno.EIO, f"upload of {self.name} failed: {self.error}")
        if self.aborted:
            raise OSError(errno.EIO, f"upload of {self.name} was abandoned")

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="goblinfs-stream", daemon=True)
            self._thread.start()

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
                future.add_done_callback(_setter(sent_all))
                futures.append(future)
                self._submitted = len(futures)
                sent_all.wait()
                if future.done() and future.exception() is not None:
                    break
                # At most STREAM_IN_FLIGHT segments in flight (each kept in memory until
                # acknowledged): wait for the oldest one's answer before the next one is cut.
                if len(futures) >= STREAM_IN_FLIGHT and futures[-STREAM_IN_FLIGHT].exception() is not None:
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

    def segment_size_at(self, index: int) -> int:
        """The size of segment *index* of the stream: ``stream_segment_size`` (at most the
        store's segment_size), doubled every ``SEGMENTS_PER_DOUBLING`` segments so that the
        manifest's segment limit still allows very large files (~99 GB with 16 MiB), never
        above the cluster's max_file_size."""
        size = self.segment_size * 2 ** (index // SEGMENTS_PER_DOUBLING)
        return max(min(size, self.store.max_file_size), 1)

    def _put_segment(self, index: int, first: bytes | memoryview,
                     sent_all: threading.Event) -> tuple[str, str, int]:
        """PUT one segment, taking its bytes from the queue as they are sent; the views taken
        are kept until Swift acknowledged the segment, so a failed attempt is sent again."""
        limit = self.segment_size_at(index)
        kept: list[memoryview] = []
        pending: list[memoryview] = [memoryview(first)]
        taken = 0
        complete = False

        def chunks() -> Iterator[memoryview]:
            nonlocal taken, complete
            yield from list(kept)  # a retry: what the failed attempt took, then the rest
            while not complete:
                if self.aborted:
                    raise OSError(errno.ECANCELED, "upload abandoned")
                if pending:
                    view = pending.pop()
                else:
                    following = self._queue.get()
                    if following is None:
                        self._eof = True
                        complete = True
                        break
                    view = memoryview(following)
                room = limit - taken
                if len(view) > room:
                    self._carry = view[room:]
                    view = view[:room]
                if len(view):
                    kept.append(view)
                    taken += len(view)
                    yield view
                if taken >= limit or self._carry is not None:
                    complete = True
            sent_all.set()

        segment = self.segment_name(index)
        etag = self.store._put_chunked(self.store.segment_container, segment, chunks, cancelled=lambda: self.aborted)
        return segment, strip_etag(etag) or "", taken

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
            self.discard(wait=False)
            raise

    def read_back(self, fd: int) -> int:
        """Stop streaming: write every byte appended so far into fd from offset 0 (read from the
        segments sent), delete the segments; the number of bytes."""
        self._wait()
        try:
            self._check()
            offset = 0
            for segment, _etag, _length in self.segments:
                with self.store._open_reader(segment, container=self.store.segment_container) as body:
                    while chunk := body.read(SEND_CHUNK):
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

    def discard(self, wait: bool = True) -> None:
        """Delete every segment this stream started (sent, failed or half sent; idempotent).
        ``wait=False``: in the background, so a caller facing a dead Swift is not held."""
        count, self._submitted = self._submitted, 0
        self.segments = []
        self.store._delete_segments([(self.store.segment_container, self.segment_name(index))
                                     for index in range(count)], wait=wait)


def upload_group(segment: str) -> str:
    """The upload a segment name belongs to (``<base>/<upload id>/``), or the name itself."""
    head, sep, index = segment.rpartition("/")
    return head + sep if sep and index.isdigit() else segment

class LargeObjects:
    """The large objects of one store: reading SLO manifests and DLO prefixes, writing SLO
    manifests, deleting segments, discarding unfinished uploads, collecting garbage."""

    def __init__(self, store: CloudFileStorage) -> None:
        self.store = store

    def slo_segments(self, name: str) -> list[tuple[str, str]]:
        """(container, object) of every segment of the SLO manifest name, as it is now.

        The manifest is only trusted when the GET itself says it is one (``X-Static-Large-Object``):
        an object replaced by a plain one since its HEAD gives [] (its content is never parsed).
        """
        try:
            headers, body = self.store._call("get_object", self.store.container, name,
                                             query_string="multipart-manifest=get", name=name)
        except FileNotFoundError:
            return []
        if not is_slo(headers):
            log.debug("%s is no longer an SLO (replaced meanwhile): no segments to delete", name)
            return []
        try:
            return parse_slo_manifest(body)
        except ValueError:
            log.warning("SLO manifest of %s is not JSON; its segments are left alone", name)
            return []

    def manifest_for_gc(self, name: str) -> list[tuple[str, str]] | None:
        """The segments of the SLO name for garbage collection: None when it is gone or no
        longer an SLO, an error when the manifest cannot be read (collection must stop then)."""
        try:
            headers, body = self.store._call("get_object", self.store.container, name,
                                             query_string="multipart-manifest=get", name=name)
        except FileNotFoundError:
            return None
        if not is_slo(headers):
            return None
        return parse_slo_manifest(body)

    def dlo_segments(self, name: str, container: str, prefix: str) -> list[tuple[str, str]]:
        """(container, object) of every segment of the DLO manifest name: every object under its
        prefix in its container (as the swift CLI deletes them), the manifest itself excepted."""
        if not prefix:
            log.warning("DLO %s takes every object of container %s as its segments: they are left alone",
                        name, container)
            return []
        try:
            items = list(self.store._iter_listing(prefix, container=container))
        except FileNotFoundError:
            return []
        return [(container, item["name"]) for item in items
                if "name" in item and not (container == self.store.container and item["name"] == name)]

    def segments_of(self, name: str, headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
        """The segments of name if its HEAD says it is a large object (SLO or DLO), else []."""
        if is_slo(headers):
            return self.slo_segments(name)
        manifest = dlo_prefix(headers)
        if manifest is not None:
            return self.dlo_segments(name, *manifest)
        return []

    def delete_segments(self, segments: Sequence[tuple[str, str]], wait: bool = True) -> int:
        """Delete (container, object) pairs in parallel, missing ones ignored, failures logged; how
        many were deleted.  ``wait=False``: in a background thread (cleanup after a failure must
        not hold the caller), 0 returned."""
        if not segments:
            return 0
        if not wait:
            threading.Thread(target=self.delete_segments, args=(list(segments),), daemon=True,
                             name="goblinfs-delete-segments").start()
            return 0

        def delete(segment: tuple[str, str]) -> bool:
            container, obj = segment
            try:
                self.store._call("delete_object", container, obj, name=f"{container}/{obj}")
                return True
            except FileNotFoundError:
                return False
            except Exception as exc:
                log.warning("could not delete segment %s/%s: %s", container, obj, exc)
                return False

        return sum(self.store._parallel(delete, list(segments)))

    def put_manifest(self, name: str, segments: Sequence[tuple[str, str, int]], full_type: str,
                     headers: Mapping[str, str]) -> str:
        """PUT the SLO manifest of (segment, etag, size) in the segments container; the SLO etag."""
        manifest = json.dumps([{"path": f"/{self.store.segment_container}/{segment}", "etag": etag or None,
                                "size_bytes": length} for segment, etag, length in segments]).encode()
        etag = self.store._call("put_object", self.store.container, name, manifest, content_length=len(manifest),
                                content_type=full_type, headers=dict(headers),
                                query_string="multipart-manifest=put", name=name, passthrough=(412,))
        return strip_etag(etag) or ""

    def discard_upload(self, name: str, upload_id: str) -> int:
        """Delete every segment of the unfinished upload *upload_id* of object *name* (all objects
        under ``<name>/<upload_id>/`` in the segments container); how many were deleted.
        Idempotent.  Segments that the object now at *name* references are kept: a finished
        upload is never undone.
        """
        check_exact_component(upload_id)
        prefix = segment_prefix(name, upload_id, self.store.max_object_name_length)
        try:
            items = list(self.store._iter_listing(prefix, container=self.store.segment_container))
        except FileNotFoundError:
            return 0
        if not items:
            return 0
        in_use = set(self.segments_of(name, self.store._head(name)))
        doomed = [(self.store.segment_container, item["name"]) for item in items
                  if (self.store.segment_container, item["name"]) not in in_use]
        if len(doomed) < len(items):
            log.warning("upload %s of %s finished: its %d segment(s) in use are kept", upload_id, name,
                        len(items) - len(doomed))
        deleted = self.delete_segments(doomed)
        log.info("discarded upload %s of %s: %d segment(s) deleted", upload_id, name, deleted)
        return deleted

    def collect_garbage(self, grace_seconds: float = 86400.0, dry_run: bool = False) -> list[str]:
        """Delete the segments in ``<container>_segments`` that no manifest of the container
        references and whose upload is older than *grace_seconds*; their names.

        References: every SLO manifest's segments (``?multipart-manifest=get``; listings flag SLOs)
        and every object under a DLO manifest's prefix (zero-byte objects are HEADed to find
        them).  A segment named ``<base>/<upload id>/<index>`` is as old as the newest segment
        of its upload (an upload still sending keeps all its segments); any other one by its
        own ``last_modified``.  Nothing younger than the grace period is touched.  When a listed
        manifest is gone (or changed) by the time it is read, nothing is deleted this time (it
        may have been moved, its segments in use under a name the listing did not show).
        Manifests in other containers are not seen.
        """
        cutoff_ns = time.time_ns() - int(grace_seconds * 1e9)
        try:
            segment_items = list(self.store._iter_listing("", container=self.store.segment_container))
        except FileNotFoundError:
            return []
        if not segment_items:
            return []
        newest: dict[str, int] = {}
        for item in segment_items:
            group = upload_group(item["name"])
            newest[group] = max(newest.get(group, 0), parse_listing_time(item.get("last_modified")))
        if all(when > cutoff_ns for when in newest.values()):
            return []  # nothing old enough: no need to read every manifest
        items = list(self.store._iter_listing(""))
        slo_names = [item["name"] for item in items if "name" in item and maybe_slo(item)]
        dlo_candidates = [item["name"] for item in items if "name" in item and maybe_dlo(item)]
        referenced: set[tuple[str, str]] = set()
        prefixes: list[tuple[str, str]] = []
        vanished = 0
        for segments in self.store._parallel(self.manifest_for_gc, slo_names):
            if segments is None:
                vanished += 1
            else:
                referenced.update(segments)
        for headers in self.store._parallel(self.store._head, dlo_candidates):
            if headers is None:
                vanished += 1
            manifest = dlo_prefix(headers)
            if manifest is not None:
                prefixes.append(manifest)
        if vanished:
            # A manifest listed and gone since may have been moved (copied elsewhere, then
            # deleted): its segments may be in use under a name this listing did not show.
            log.warning("garbage collection of %s skipped: %d manifest(s) changed while it ran; try again later",
                        self.store.segment_container, vanished)
            return []
        garbage = []
        for item in segment_items:
            name = item["name"]
            if (self.store.segment_container, name) in referenced:
                continue
            if any(container == self.store.segment_container and name.startswith(prefix)
                   for container, prefix in prefixes):
                continue
            if newest[upload_group(name)] > cutoff_ns:
                continue
            garbage.append(name)
        if not dry_run and garbage:
            self.delete_segments([(self.store.segment_container, name) for name in garbage])
        log.info("garbage collection of %s: %d unreferenced segment(s) older than %g s %s",
                 self.store.segment_container, len(garbage), grace_seconds,
                 "found (dry run)" if dry_run else "deleted")
        return garbage
