"""Remote writes: staging, streaming uploads, publication at flush/fsync/release."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import tempfile
import time

from .nodes import Handle, Node, StoreMount, _with

log = logging.getLogger(__name__)



class WritesMixin:
    """Writes of the Vfs (mixed into it)."""

    async def _stage_existing(self, node: Node, truncate: bool) -> None:
        """Start a staging file for a remote file, with its current content unless truncating."""
        store = node.store
        assert store is not None
        source: str | None = None
        if not truncate and node.entry.size > 0:
            entry = await store.call(store.storage.stat_file, node.path)
            if self.cache is not None:
                source = await store.call(self.cache.localize, store.storage, node.path, entry.etag or "")
        self._start_staging(node, source)

    def _start_staging(self, node: Node, source: str | None) -> None:
        fd, path = tempfile.mkstemp(prefix="staging-", dir=self.options.staging_dir)
        if source is not None:
            _copy_into(source, fd)
        node.staging = path
        node.staging_fd = fd
        node.stale = False
        if source is None:
            self._begin_upload(node)

    def _begin_upload(self, node: Node) -> None:
        """Written from empty: if the writer only appends, big files stream to the store."""
        node.upload = None
        node.upload_end = 0
        if node.store is not None:
            try:
                node.upload = node.store.storage.start_upload(node.path)
            except Exception as exc:  # uploading at close still works
                log.debug("no streaming upload of %s: %s", "/".join(node.path), exc)

    def _abort_upload(self, node: Node) -> None:
        """Drop a stream that is not needed any more (the file is gone or truncated)."""
        upload, node.upload = node.upload, None
        if upload is not None:
            upload.abort()

    def _stream_failed(self, node: Node, exc: BaseException) -> OSError:
        """The bytes handed to a failed stream are gone: the file cannot be completed."""
        log.error("upload of %s failed while streaming; this write is lost: %s", "/".join(node.path), exc)
        self._abort_upload(node)
        node.dirty = False
        node.stale = True
        return OSError(errno.EIO, f"upload failed: {exc}")

    async def _settle_staging(self, node: Node) -> None:
        """Make the staging file hold the whole file again (before a read, a truncate or a
        write that does not append): a running stream is read back, a stale file refilled."""
        store = node.store
        assert store is not None and node.staging_fd is not None
        upload = node.upload
        if upload is not None and upload.started:
            node.upload = None
            try:
                await store.call(upload.read_back, node.staging_fd)
            except Exception as exc:
                raise self._stream_failed(node, exc) from exc
        elif upload is not None:
            self._abort_upload(node)  # not started: the staging file holds everything
        if node.stale:
            source = None
            try:
                entry = await store.call(store.storage.stat_file, node.path)
                if self.cache is not None:
                    source = await store.call(self.cache.localize, store.storage, node.path, entry.etag or "")
            except FileNotFoundError:
                pass
            os.ftruncate(node.staging_fd, 0)
            if source is not None:
                _copy_into(source, node.staging_fd)
            node.stale = False

    async def _staged_read(self, handle: Handle, offset: int, size: int) -> bytes | memoryview | None:
        """A read of a handle on a file being written here (read-your-writes), or None: not staged."""
        node = handle.node
        if handle.fd is None or handle.fd != node.staging_fd:
            return None
        if node.stale or node.upload is not None:
            async with node.lock:
                await self._settle_staging(node)
        return await self._pread(handle.fd, node, size, offset)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        """Write at offset (at the end for O_APPEND); local: into the file, remote: the staging file."""
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
        if end > node.entry.size or node.pending_mtime is not None:
            node.entry = _with(node.entry, size=max(node.entry.size, end), mtime_ns=time.time_ns())
            self._touch_parent(node)
        else:
            node.entry = _with(node.entry, mtime_ns=time.time_ns())
        return written

    async def _write_remote(self, handle: Handle, node: Node, store: StoreMount, offset: int,
                            data: bytes) -> tuple[int, int]:
        """A write to a remote file: appended to its stream, or into the staging file.
        Returns (offset written at, bytes written)."""
        assert handle.fd is not None
        upload = node.upload
        if handle.append and upload is not None:
            offset = node.upload_end
        if node.stale or (upload is not None and offset != node.upload_end):
            await self._settle_staging(node)  # ends the upload
            upload = None
        if handle.append and upload is None:
            offset = os.fstat(handle.fd).st_size
        node.dirty = True
        node.pending_mtime = None
        if upload is not None and upload.started:
            try:
                if not upload.offer(data):
                    await store.call(upload.put, data)
            except Exception as exc:
                raise self._stream_failed(node, exc) from exc
            node.upload_end += len(data)
            return offset, len(data)
        written = os.pwrite(handle.fd, data, offset)
        if upload is not None:
            node.upload_end += written
            if node.upload_end > upload.begin_at:
                # Big enough to be segmented anyway: from now on it goes up as it comes.
                try:
                    await store.call(upload.put_file, handle.fd, node.upload_end)
                except Exception as exc:
                    raise self._stream_failed(node, exc) from exc
        return offset, written

    def _touch_parent(self, node: Node) -> None:
        """Keep the parent's cached listing in step with what we know of a node we changed."""
        if node.store is None or not node.path:
            return
        parent_ino = self.by_path.get((node.store.name, node.path.parent))
        parent = self.nodes.get(parent_ino) if parent_ino is not None else None
        if parent is not None and parent.children is not None and node.path[-1] in parent.children:
            parent.children[node.path[-1]] = node.entry

    async def flush(self, fh: int) -> None:
        """close(2) of a descriptor: a remote file is uploaded now; errors reach close()."""
        handle = self.handle(fh)
        node = handle.node
        if handle.writable and node.dirty:
            await self._upload(node)

    async def fsync(self, fh: int, datasync: bool) -> None:
        """fsync(2): local: the file's fsync; remote: upload now."""
        handle = self.handle(fh)
        node = handle.node
        if node.store is not None and node.store.local:
            if handle.fd is not None and handle.writable:
                await node.store.call(os.fsync, handle.fd)
            return
        if node.dirty:
            await self._upload(node)

    async def _upload(self, node: Node) -> None:
        """Upload a remote node's staging file; the store holds the data when this returns."""
        store = node.store
        assert store is not None and node.staging is not None and node.staging_fd is not None
        if node.unlinked:
            node.dirty = False
            self._abort_upload(node)
            return
        mtime = node.pending_mtime if node.pending_mtime is not None else node.entry.mtime_ns
        node.dirty = False
        storage = store.storage
        upload = node.upload
        if upload is not None and upload.started:
            node.upload = None
        else:
            # Not streaming (yet): the staging file holds it all; later appends may still stream
            # (dd's dup2 closes a descriptor, so flushes the new file, before its first write).
            upload = None
        try:
            if upload is not None:
                node.stale = True  # the staging file holds only the start: the rest is in the stream
                try:
                    try:
                        entry = await store.call(functools.partial(upload.finish, mtime, new=node.absent))
                    except FileExistsError:  # someone else created it meanwhile: replace it
                        entry = await store.call(functools.partial(upload.finish, mtime, new=False))
                except Exception as exc:
                    raise self._stream_failed(node, exc) from exc
            elif node.absent:
                try:
                    entry = await store.call(functools.partial(storage.store_local_file, node.staging, node.path,
                                                               mtime, new=True))
                except FileExistsError:
                    # Someone else created it meanwhile: replace it, as a later writer does.
                    entry = await store.call(storage.store_local_file, node.staging, node.path, mtime)
            else:
                entry = await store.call(storage.store_local_file, node.staging, node.path, mtime)
        except BaseException:
            if not node.stale:  # a stale staging file must never be uploaded
                node.dirty = True
            raise
        node.absent = False
        node.entry = _with(entry, name=node.path[-1])
        node.fetched = time.monotonic()
        node.keep_cache_etag = entry.etag
        node.pending_mtime = None
        parent_ino = self.by_path.get((store.name, node.path.parent))
        if parent_ino is not None:
            self._note_child(self.nodes[parent_ino], node.path[-1], node.entry)
        elif not store.local:
            self.overlay.setdefault((store.name, node.path.parent), {})[node.path[-1]] = (node.entry, time.monotonic())

    async def release(self, fh: int) -> None:
        """Last close of a handle: remote staging is uploaded (if still dirty) and kept in the cache."""
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        node.open_count -= 1
        try:
            if handle.writable:
                node.writers -= 1
                self._touch_parent(node)
            if handle.writable and node.staging is not None:
                if node.dirty:
                    try:
                        await self._upload(node)
                    except Exception as exc:
                        log.error("upload of %s failed at release; data kept in %s: %s",
                                  "/".join(node.path), node.staging, exc)
                        return
                if node.writers <= 0 and not any(h.node is node and h.fd == node.staging_fd
                                                 for h in self.handles.values()):
                    self._end_staging(node)
        finally:
            if handle.owns_fd and handle.fd is not None:
                os.close(handle.fd)
            download = handle.download
            if download is not None:
                download.readers -= 1
                self._end_download(download)
            self._maybe_free(node)

    def _end_staging(self, node: Node) -> None:
        assert node.staging is not None and node.staging_fd is not None
        store = node.store
        assert store is not None
        self._abort_upload(node)
        os.close(node.staging_fd)
        staging = node.staging
        node.staging = None
        node.staging_fd = None
        if self.cache is not None and node.entry.etag and not node.unlinked and not node.stale:
            try:
                self.cache.put(store.storage, node.path, node.entry.etag, staging)
                return
            except OSError as exc:
                log.debug("not caching %s: %s", staging, exc)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)

    async def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        store = node.store
        assert store is not None
        if store.local:
            handle = self.handles.get(fh) if fh is not None else None
            if handle is not None and handle.fd is not None and handle.writable:
                os.ftruncate(handle.fd, size)
            else:
                fd = await store.call(store.storage.open_fd, node.path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, size)
                finally:
                    os.close(fd)
            node.entry = _with(node.entry, size=size, mtime_ns=time.time_ns())
            self._touch_parent(node)
            return
        async with node.lock:
            if node.staging is None:
                await self._stage_existing(node, truncate=(size == 0))
                node.writers += 1
                try:
                    os.ftruncate(node.staging_fd, size)  # type: ignore[arg-type]
                    node.dirty = True
                    node.entry = _with(node.entry, size=size, mtime_ns=time.time_ns())
                    await self._upload(node)
                finally:
                    node.writers -= 1
                    if node.writers <= 0 and not node.dirty:
                        self._end_staging(node)
                return
            if size == 0:  # nothing to keep: no read-back or refill
                self._abort_upload(node)
                node.stale = False
            await self._settle_staging(node)
            os.ftruncate(node.staging_fd, size)  # type: ignore[arg-type]
            node.dirty = True
            node.entry = _with(node.entry, size=size, mtime_ns=time.time_ns())

    async def shutdown(self) -> None:
        """Upload everything still dirty (unmount): nothing accepted is dropped."""
        for node in list(self.nodes.values()):
            if node.dirty and node.staging is not None:
                try:
                    await self._upload(node)
                except Exception as exc:
                    log.error("at unmount, upload of %s failed; its data is kept in %s: %s",
                              "/".join(node.path), node.staging, exc)



def _copy_into(source: str, fd: int) -> None:
    """Copy the file source into fd from offset 0."""
    with open(source, "rb") as src:
        offset = 0
        while True:
            copied = os.copy_file_range(src.fileno(), fd, 1 << 30, offset, offset)
            if not copied:
                break
            offset += copied

