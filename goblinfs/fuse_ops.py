"""The pyfuse3 adapter: a thin Operations class over goblinfs.vfs.

Every handler goes through ``_errors``, the one place where failures become errnos: an
``OSError`` keeps its errno, an invalid name is EINVAL, an unreachable store or anything
unexpected is EIO (logged with its traceback).  pyfuse3 only survives ``FUSEError``, so
nothing else may leave a handler: the daemon never dies of an exception.

``Operations.observer`` (an :class:`OpObserver`, e.g. ``goblinfs.metrics``) is told of every
handled request: its name, duration and errno, and the bytes of reads and writes.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

import pyfuse3

from .storage import Error as StorageError
from .storage import InvalidFilepath, StorageUnavailable
from .vfs import Attr, Node, Vfs

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def errno_of(exc: BaseException) -> int:
    """The errno a failure is reported as."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, InvalidFilepath):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


class OpObserver(Protocol):
    """What is told of the requests the kernel sends; called on the trio thread, must be quick.

    ``operation(name, seconds, code)``: a handler ended after *seconds*, with errno *code* (0:
    success).  ``transferred(direction, nbytes)``: bytes returned by a read (``"read"``) or
    accepted by a write (``"write"``).
    """

    def operation(self, name: str, seconds: float, code: int) -> None: ...

    def transferred(self, direction: str, nbytes: int) -> None: ...


def _observe(observer: OpObserver | None, name: str, start: float, code: int) -> None:
    if observer is None:
        return
    try:
        observer.operation(name, time.monotonic() - start, code)
    except Exception:  # never let statistics fail a request
        log.debug("operation observer failed", exc_info=True)


def _errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """fn as a pyfuse3 handler: every failure leaves it as a FUSEError with its errno (``errno_of``)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        observer: OpObserver | None = getattr(args[0], "observer", None) if args else None
        start = time.monotonic() if observer is not None else 0.0
        code = errno.EIO
        try:
            result = await fn(*args, **kwargs)
            code = 0
            return result
        except pyfuse3.FUSEError as exc:
            code = exc.errno
            raise
        except (OSError, InvalidFilepath) as exc:
            code = errno_of(exc)
            log.log(logging.WARNING if code == errno.EIO else logging.DEBUG, "%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(code) from None
        except StorageUnavailable as exc:
            log.error("%s: store unavailable: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except StorageError as exc:
            log.error("%s: store error: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if observer is not None:  # once per request, and nothing at all without metrics
                _observe(observer, fn.__name__, start, code)

    return wrapper


def entry_attributes(attr: Attr, entry_timeout: float) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = attr.ino
    out.st_mode = attr.mode
    out.st_nlink = attr.nlink
    out.st_uid = attr.uid
    out.st_gid = attr.gid
    out.st_size = attr.size
    out.st_blksize = 131072
    out.st_blocks = (attr.size + 511) // 512
    out.st_atime_ns = attr.mtime_ns
    out.st_mtime_ns = attr.mtime_ns
    out.st_ctime_ns = attr.mtime_ns
    out.attr_timeout = attr.timeout
    out.entry_timeout = entry_timeout
    return out


class Operations(pyfuse3.Operations):
    """POSIX calls from the kernel, answered by a Vfs."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs, observer: OpObserver | None = None) -> None:
        super().__init__()
        self.vfs = vfs
        #: Told of every request (metrics); None: nothing is measured.
        self.observer = observer

    def _transferred(self, direction: str, nbytes: int) -> None:
        if self.observer is not None:
            try:
                self.observer.transferred(direction, nbytes)
            except Exception:
                log.debug("operation observer failed", exc_info=True)

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        return entry_attributes(self.vfs.attr(node), self.vfs.options.attr_timeout)

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(await self.vfs.lookup(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.vfs.forget(inode_list)
        except Exception:
            log.exception("forget failed")

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return entry_attributes(await self.vfs.getattr(inode), self.vfs.options.attr_timeout)

    @_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        size = attr.st_size if fields.update_size else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        result = await self.vfs.setattr(inode, size=size, mtime_ns=mtime, fh=fh)
        return entry_attributes(result, self.vfs.options.attr_timeout)

    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        return await self.vfs.opendir(inode)

    @_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for next_id, name, node in self.vfs.readdir_entries(fh, start_id):
            if not pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"), self._entry(node), next_id):
                break
            node.lookups += 1

    @_errors
    async def releasedir(self, fh: int) -> None:
        self.vfs.releasedir(fh)

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._entry(await self.vfs.mkdir(parent_inode, name))

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.vfs.rmdir(parent_inode, name)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.vfs.unlink(parent_inode, name)

    @_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if flags & ~(pyfuse3.RENAME_NOREPLACE | pyfuse3.RENAME_EXCHANGE):
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.vfs.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                              noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        handle, node = await self.vfs.create(parent_inode, name, flags)
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=True), self._entry(node)

    @_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        handle = await self.vfs.open(inode, flags)
        return pyfuse3.FileInfo(fh=handle.fh, keep_cache=handle.keep_cache)

    # pyfuse3's annotation says bytes, but its handler replies from any contiguous buffer
    # (PyObject_GetBuffer in fuse_read_async): returning the Vfs's memoryview spares a copy per read.
    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        data = await self.vfs.read(fh, off, size)
        self._transferred("read", len(data))
        return data

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        written = await self.vfs.write(fh, off, buf)
        self._transferred("write", written)
        return written

    @_errors
    async def flush(self, fh: int) -> None:
        await self.vfs.flush(fh)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh, datasync)

    async def release(self, fh: int) -> None:
        start = time.monotonic()
        code = 0
        try:
            await self.vfs.release(fh)
        except Exception as exc:
            log.exception("release failed")
            code = errno_of(exc)
        _observe(self.observer, "release", start, code)

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        total, free, files, ffree = await self.vfs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = 4096
        out.f_blocks = total // 4096
        out.f_bfree = out.f_bavail = free // 4096
        out.f_files = files
        out.f_ffree = out.f_favail = ffree
        out.f_namemax = 255
        return out

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        try:
            return await self.vfs.getxattr(inode, name)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @_errors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return self.vfs.listxattr(inode)

    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        log.info("symlink %r refused: the stores hold only files and directories", name)
        raise pyfuse3.FUSEError(errno.EPERM)

    @_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        log.info("hard link %r refused: the stores hold only files and directories", new_name)
        raise pyfuse3.FUSEError(errno.EPERM)

    @_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        log.info("mknod %r refused: the stores hold only files and directories", name)
        raise pyfuse3.FUSEError(errno.EPERM)

    @_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.EINVAL)

    @_errors
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True
