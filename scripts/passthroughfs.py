#!/usr/bin/env python3
"""A minimal pyfuse3 + trio passthrough filesystem: the floor any pyfuse3 daemon pays.

``scripts/bench`` mounts it over the local store as the ``passthrough`` subject, so that
goblinfs's local-store times can be read against what a daemon that does nothing but forward
each request to the directory under it costs on the same kernel, libfuse and pyfuse3
(the pattern of pyfuse3's ``examples/passthroughfs.py``, written anew).

    passthroughfs.py SOURCE MOUNTPOINT [-o OPTIONS] [--timeout S] [--debug]

It runs in the foreground until unmounted (``fusermount3 -u``) or sent SIGTERM/SIGINT, and
exits 0 after a clean unmount.  A bad argument or a failed mount is one line on stderr and
exit status 2.

Contract, kept deliberately the same as goblinfs's on what the kernel sees:

* the FUSE options goblinfs passes: ``fsname=``/``subtype=`` plus the ``-o`` words it allows
  through (``allow_other``/``allow_root`` add ``default_permissions``);
* attribute and entry timeouts of ``--timeout`` seconds (goblinfs's local default: 1 s),
  ``st_blksize`` 128 KiB, the FUSE device's read-ahead raised to 1 MiB after mounting (root);
* ``pyfuse3.main(min_tasks=2, max_tasks=64)``.

What it implements: lookup, forget, getattr, setattr, opendir/readdir/releasedir, open,
create, read, write, fsync, release, unlink, mkdir, rmdir, rename, statfs.  Everything else
(flush, xattrs, links, symlinks, device nodes) is ENOSYS, which libfuse and the kernel then
stop asking for: that is part of the floor.  Every handler answers a failed system call with
its errno and anything unexpected with EIO (logged); the daemon never dies of an exception.
Reads, writes and metadata calls run inline on the trio thread (page-cache speed, no thread
hop); only fsync, which waits for the disk, runs in a worker thread.

Inode numbers are the source's ``st_ino`` (the source directory itself is FUSE's root inode);
the tree must be one filesystem (entries on another device are EXDEV) and hard links are not
followed (each inode is known by the last name it was looked up under).
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import functools
import logging
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

log = logging.getLogger("passthroughfs")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: FUSE mount options passed through, as goblinfs does (goblinfs/mount.py).
FUSE_WORDS = {"allow_other", "allow_root", "auto_unmount", "default_permissions", "noatime", "atime", "suid",
              "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "dirsync", "ro", "rw"}
FUSE_VALUED = {"fsname", "subtype"}
BLKSIZE = 128 * 1024
READAHEAD_KB = 1024


class UsageError(Exception):
    """A bad command line or mount failure; the message is one line for the user."""


def _boundary(fn: F) -> F:
    """OSError -> its errno, anything else -> EIO (logged): only FUSEError leaves a handler."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            log.debug("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class Passthrough(pyfuse3.Operations):
    """Forwards every request to the directory ``source``.

    ``paths`` maps each inode the kernel knows to its path under ``source``; ``lookups`` holds
    the kernel's lookup count of each, so an inode is forgotten when the kernel forgets it.
    ``dirs`` holds, per open directory handle, its path and the names read at ``opendir`` (a
    snapshot, so readdir offsets stay stable while the directory changes).
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, source: str, timeout: float) -> None:
        super().__init__()
        self.source = os.path.realpath(source)
        st = os.lstat(self.source)
        self.root_ino = st.st_ino
        self.dev = st.st_dev
        self.timeout = timeout
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: self.source}
        self.lookups: dict[int, int] = {}
        self.dirs: dict[int, tuple[str, list[str]]] = {}
        self.next_dir_fh = 1

    # ------------------------------------------------------------------ helpers

    def _ino(self, st_ino: int) -> int:
        return pyfuse3.ROOT_INODE if st_ino == self.root_ino else st_ino

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        if st.st_dev != self.dev:
            raise pyfuse3.FUSEError(errno.EXDEV)
        out = pyfuse3.EntryAttributes()
        out.st_ino = self._ino(st.st_ino)
        out.st_mode = st.st_mode
        out.st_nlink = st.st_nlink
        out.st_uid = st.st_uid
        out.st_gid = st.st_gid
        out.st_rdev = st.st_rdev
        out.st_size = st.st_size
        out.st_blocks = st.st_blocks
        out.st_blksize = BLKSIZE
        out.st_atime_ns = st.st_atime_ns
        out.st_mtime_ns = st.st_mtime_ns
        out.st_ctime_ns = st.st_ctime_ns
        out.attr_timeout = self.timeout
        out.entry_timeout = self.timeout
        return out

    def _remember(self, path: str) -> pyfuse3.EntryAttributes:
        """Attributes of ``path``, counted as one lookup of its inode by the kernel."""
        attrs = self._attrs(os.lstat(path))
        ino = attrs.st_ino
        if ino != pyfuse3.ROOT_INODE:
            self.paths[ino] = path
            self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return attrs

    def _moved(self, old: str, new: str) -> None:
        """Known paths at or below ``old`` now live at or below ``new``."""
        prefix = old + os.sep
        for ino, path in list(self.paths.items()):
            if path == old:
                self.paths[ino] = new
            elif path.startswith(prefix):
                self.paths[ino] = new + path[len(old):]

    # ------------------------------------------------------------------ names and attributes

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        base = self._path(parent_inode)
        if name == b".":
            path = base
        elif name == b"..":
            path = base if base == self.source else os.path.dirname(base)
        else:
            path = os.path.join(base, os.fsdecode(name))
        return self._remember(path)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            left = self.lookups.get(ino, 0) - count
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                if ino != pyfuse3.ROOT_INODE:
                    self.paths.pop(ino, None)

    @_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(os.lstat(self._path(inode)))

    @_boundary
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        target: int | str = fh if fh is not None else path
        if fields.update_size:
            os.truncate(target, attr.st_size)
        if fields.update_mode:
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(target, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            now = os.stat(target)
            atime = attr.st_atime_ns if fields.update_atime else now.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else now.st_mtime_ns
            os.utime(target, ns=(atime, mtime))
        return self._attrs(os.fstat(fh) if fh is not None else os.lstat(path))

    @_boundary
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.source)
        out = pyfuse3.StatvfsData()
        for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                    "f_namemax"):
            setattr(out, key, getattr(st, key))
        return out

    # ------------------------------------------------------------------ directories

    @_boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        path = self._path(inode)
        fh = self.next_dir_fh
        self.next_dir_fh += 1
        self.dirs[fh] = (path, sorted(os.listdir(path)))
        return fh

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        base, names = self.dirs[fh]
        for index in range(start_id, len(names)):
            path = os.path.join(base, names[index])
            try:
                attrs = self._attrs(os.lstat(path))
            except (OSError, pyfuse3.FUSEError):
                continue  # gone since opendir, or on another device
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attrs, index + 1):
                return
            ino = attrs.st_ino
            if ino != pyfuse3.ROOT_INODE:
                self.paths[ino] = path
                self.lookups[ino] = self.lookups.get(ino, 0) + 1

    @_boundary
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        os.mkdir(path, stat.S_IMODE(mode) & ~ctx.umask)
        return self._remember(path)

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        os.rmdir(self._child(parent_inode, name))

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        os.unlink(self._child(parent_inode, name))

    @_boundary
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE / RENAME_NOREPLACE: not offered
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        os.rename(old, new)
        self._moved(old, new)

    # ------------------------------------------------------------------ files

    @_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=os.open(self._path(inode), flags & ~os.O_CREAT))

    @_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT, stat.S_IMODE(mode) & ~ctx.umask)
        try:
            attrs = self._remember(path)
        except BaseException:
            os.close(fd)
            raise
        return pyfuse3.FileInfo(fh=fd), attrs

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    @_boundary
    async def release(self, fh: int) -> None:
        os.close(fh)


# --------------------------------------------------------------------------- mounting


def fuse_options(words: list[str]) -> set[str]:
    """The FUSE options for pyfuse3.init, from ``-o`` words; UsageError for one it does not pass."""
    opts = {"fsname=passthroughfs", "subtype=passthroughfs"}
    for word in filter(None, (w.strip() for w in words)):
        key, has_value, _value = word.partition("=")
        if key in FUSE_VALUED and has_value:
            opts = {o for o in opts if not o.startswith(key + "=")} | {word}
        elif key in FUSE_WORDS and not has_value:
            opts.add(word)
        else:
            raise UsageError(f"unknown mount option {word!r}")
    if opts & {"allow_other", "allow_root"}:
        opts.add("default_permissions")
    return opts


def raise_readahead(mountpoint: str) -> None:
    """Set the FUSE device's read-ahead to READAHEAD_KB, as goblinfs does (root only; else logged)."""
    dev = os.stat(mountpoint).st_dev
    try:
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(READAHEAD_KB))
    except OSError as exc:
        log.debug("read-ahead left as is: %s", exc)


async def serve(mountpoint: str) -> None:
    """Answer requests until unmounted; SIGTERM/SIGINT end the session."""

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: leaving", signum)
                pyfuse3.terminate()

    async def main_loop() -> None:
        await pyfuse3.main(min_tasks=2, max_tasks=64)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        nursery.start_soon(main_loop)
        await trio.sleep(0)
        # stat() of the mountpoint is a request to this daemon: from a thread, once main() runs.
        await trio.to_thread.run_sync(raise_readahead, mountpoint)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="passthroughfs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="the directory to pass through")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[], help="FUSE options, comma separated")
    p.add_argument("--timeout", type=float, default=1.0, help="attribute and entry timeout, s (default 1)")
    p.add_argument("--debug", action="store_true", help="log every failed call")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts = fuse_options([w for o in a.options for w in o.split(",")])
        if a.timeout < 0:
            raise UsageError(f"--timeout {a.timeout}: must be >= 0")
        for what, path in (("source", a.source), ("mountpoint", a.mountpoint)):
            if not os.path.isdir(path):
                raise UsageError(f"{what} {path} is not a directory")
        ops = Passthrough(a.source, a.timeout)
        try:
            pyfuse3.init(ops, a.mountpoint, opts)
        except RuntimeError as exc:
            raise UsageError(f"cannot mount at {a.mountpoint}: {exc}") from None
    except UsageError as exc:
        print(f"passthroughfs: {exc}", file=sys.stderr)
        return 2
    faulthandler.enable()
    try:
        trio.run(serve, a.mountpoint)
    except BaseException:
        pyfuse3.close(unmount=False)
        raise
    pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
