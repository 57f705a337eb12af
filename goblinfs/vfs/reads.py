"""Remote reads: the read cache, background downloads and reads of any handle."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import uuid

import trio

from ..storage import (
    Entry,
)
from .nodes import Handle, Node

log = logging.getLogger(__name__)



class Download:
    """A remote object being fetched into the read cache while readers already read it.

    The worker thread appends to ``part``; ``done`` bytes are readable.  Readers wait for
    the bytes they need, or fetch a far-away range directly.
    """

    def __init__(self, node: Node, part: str, size: int, etag: str) -> None:
        self.node = node
        self.part = part
        self.size = size
        self.etag = etag
        self.fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.done = 0
        #: The worker stopped (all fetched, or failed): readers stop waiting.
        self.fetched = False
        #: Adopted by the cache (or given up): the fd closes when the last reader goes.
        self.finished = False
        self.closed = False
        self.error: BaseException | None = None
        self.progress = trio.Event()
        #: A reader waits for more: the worker wakes the trio thread at its next chunk.  Only
        #: then, as a hand-off per chunk would cost a fifth of a download's CPU time.
        self.waiting = False
        self.readers = 0

    def _advance(self, done: int | None = None) -> None:
        """(trio thread) Wake the waiting readers; done is set by the worker thread itself."""
        if done is not None:
            self.done = done
        self.progress.set()
        self.progress = trio.Event()

    async def wait_for(self, end: int) -> None:
        """(trio thread) Return once end bytes are fetched, or the worker stopped."""
        while self.done < end and not self.fetched and self.error is None:
            self.waiting = True
            if self.done >= end:  # the worker may have moved on before seeing the flag
                break
            await self.progress.wait()



class ReadsMixin:
    """Reads of the Vfs (mixed into it)."""

    async def _open_remote_read(self, node: Node) -> Handle:
        """Open a remote object for reading: revalidate its ETag, then cache or stream it."""
        store = node.store
        assert store is not None and self.cache is not None
        # Close-to-open: every open revalidates (one HEAD on Swift), whatever the listing said.
        entry = await store.call(store.storage.stat_file, node.path)
        keep = node.keep_cache_etag == entry.etag and entry.etag is not None
        node.entry = entry
        node.fetched = time.monotonic()
        node.keep_cache_etag = entry.etag
        etag = entry.etag or ""
        cached = self.cache.lookup(store.storage, node.path, etag)
        if cached is not None:
            fd = os.open(cached, os.O_RDONLY | os.O_CLOEXEC)
            return self._new_handle(node, fd, False, True, keep_cache=keep)
        if node.download is not None and node.download.etag == etag and node.download.error is None:
            node.download.readers += 1
            handle = self._new_handle(node, None, False, False, keep_cache=keep)
            handle.download = node.download
            return handle
        if entry.size <= self.options.stream_threshold:
            path = await store.call(self.cache.localize, store.storage, node.path, etag)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return self._new_handle(node, fd, False, True, keep_cache=keep)
        self._start_download(node, entry)
        assert node.download is not None
        node.download.readers += 1
        handle = self._new_handle(node, None, False, False, keep_cache=keep)
        handle.download = node.download
        return handle

    def _start_download(self, node: Node, entry: Entry) -> None:
        store = node.store
        assert store is not None and self.cache is not None
        part = os.path.join(self.cache.directory, f"stream-{uuid.uuid4().hex}.part-x")
        download = Download(node, part, entry.size, entry.etag or "")
        node.download = download
        token = trio.lowlevel.current_trio_token()
        storage = store.storage
        path = node.path
        cache = self.cache

        def worker() -> None:
            done = 0
            try:
                with storage.get_file(path, "rb") as source:
                    # Small first chunks: the first bytes reach a waiting reader sooner.
                    want = 65536
                    while True:
                        chunk = source.read(want)
                        if not chunk:
                            break
                        want = min(want * 2, 1048576)
                        os.pwrite(download.fd, chunk, done)
                        done += len(chunk)
                        download.done = done  # the bytes are in the part file before this
                        if download.waiting:
                            download.waiting = False
                            token.run_sync_soon(download._advance)
            except BaseException as exc:  # reported to the readers
                download.error = exc
                log.warning("download of %s failed: %s", "/".join(path), exc)
            finally:
                def fetched() -> None:
                    download.fetched = True
                    download._advance(done)
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(fetched)

        async def run() -> None:
            # Never let anything escape into the nursery: that would end the daemon.
            try:
                await trio.to_thread.run_sync(worker, limiter=store.limiter)
                if download.error is None and download.done == download.size:
                    await trio.to_thread.run_sync(os.fsync, download.fd)
                    cache.put(storage, path, download.etag, download.part)
            except Exception as exc:
                log.warning("could not keep %s in the cache: %s", "/".join(path), exc)
            finally:
                download.finished = True
                download._advance(download.done)
                if download.readers <= 0:
                    self._end_download(download)

        if self.nursery is None:
            raise OSError(errno.EIO, "no nursery for background downloads")
        self.nursery.start_soon(run)

    def _end_download(self, download: Download) -> None:
        """Close a finished download with no readers left (idempotent)."""
        if download.closed or not download.finished or download.readers > 0:
            return
        download.closed = True
        node = download.node
        if node.download is download:
            node.download = None
        with contextlib.suppress(OSError):
            os.close(download.fd)
        with contextlib.suppress(OSError):
            os.unlink(download.part)  # gone already if the cache adopted it
        self._maybe_free(node)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Up to size bytes at offset (short only at the end of the file)."""
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
        want_end = min(offset + size, download.size)
        if download.done < want_end and download.error is None and not download.fetched:
            if offset > download.done + 8 * 1048576:
                store = node.store
                assert store is not None
                return await store.call(store.storage.read_range, node.path, offset, size)
            await download.wait_for(want_end)
        if download.done < want_end and download.error is not None:
            raise OSError(errno.EIO, f"download failed: {download.error}")
        return os.pread(download.fd, size, offset)

    async def _pread(self, fd: int, node: Node, size: int, offset: int) -> bytes | memoryview:
        """Read from a local file: in line when the page cache has it all, else in a thread, so
        the kernel's parallel read-ahead requests wait for the disk together, not in turn."""
        buf = bytearray(size)
        try:
            got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not all in the page cache
            got = -1
        if got == size:
            return memoryview(buf)
        assert node.store is not None
        return await trio.to_thread.run_sync(os.pread, fd, size, offset, limiter=node.store.limiter)

