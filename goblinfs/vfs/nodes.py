"""The data of the semantics layer: options, attributes, store mounts, inodes and handles."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import trio

from ..storage import (
    Entry,
    ExactPath,
    StorageInterface,
)

if TYPE_CHECKING:
    from .reads import Download
    from .writes import RemoteFile

log = logging.getLogger(__name__)

T = TypeVar("T")


ROOT_INO = 1

#: Name of the extended attributes goblinfs answers.
XATTR_URL = "user.goblinfs.url"
XATTR_ETAG = "user.goblinfs.etag"
XATTR_CONTENT_TYPE = "user.goblinfs.content_type"
XATTRS = (XATTR_URL, XATTR_ETAG, XATTR_CONTENT_TYPE)
#: On the mount's root: the daemon's status as JSON (``goblinfs status``).
XATTR_STATUS = "user.goblinfs.status"


@dataclass
class Options:
    """Mount options that change semantics (the CLI parses them from ``-o``)."""

    ro: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    attr_timeout: float = 1.0
    #: How long a directory listing is trusted (another mount's changes show after it).
    dir_timeout: float = 1.0
    #: clean: new names are stored cleaned; strict: a name cleaning would change is EINVAL.
    names: str = "clean"
    #: Seconds a store call may take before the caller gets EIO.
    op_timeout: float = 120.0
    #: Remote objects above this size are streamed on first read instead of fetched whole first.
    stream_threshold: int = 4 * 1048576
    #: Where remote writes are staged (the workbench).
    staging_dir: str = field(default_factory=tempfile.gettempdir)
    #: The workbench, where journal/ and recovered/ live (None: no journal, no recovery).
    workbench_dir: str | None = None
    #: At mount, segments no manifest references and older than this are deleted (None: never).
    gc_grace: float | None = 86400.0
    #: How long names we created/deleted override a (possibly stale) remote listing.
    overlay_seconds: float = 60.0
    #: Write-back (``-o writeback``): close() returns once the content is durable in the
    #: workbench journal; uploads run in the background, ``transfers`` at once.
    writeback: bool = False
    transfers: int = 8


@dataclass
class Attr:
    """What getattr answers for one inode."""

    ino: int
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    nlink: int = 1
    timeout: float = 1.0


@runtime_checkable
class LocalFiles(Protocol):
    """A store whose files are on the local disk and open as file descriptors (``BasicFileStorage``)."""

    def open_fd(self, filepath: Sequence[str], flags: int, mode: int = 0o666) -> int:
        """(thread) ``os.open`` of the file at filepath, with its checks: an fd the caller closes."""
        ...


class StoreMount:
    """One store shown as a directory of the mount, with its own worker limiter.

    ``local``: the store's files are local files (``local_storage`` and ``open_fd``): the Vfs
    reads and writes them through their fds (``open_fd``), with no staging or read cache.
    """

    def __init__(self, name: str, storage: StorageInterface, options: Options, max_threads: int = 8) -> None:
        self.name = name
        self.storage = storage
        self.options = options
        self._files = storage if storage.local_storage and isinstance(storage, LocalFiles) else None
        self.local = self._files is not None
        self.limiter = trio.CapacityLimiter(max_threads)
        self.max_name_length = int(getattr(storage, "max_object_name_length", 0) or 0)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in a worker thread, bounded by op_timeout (EIO past it)."""
        try:
            with trio.fail_after(self.options.op_timeout):
                return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            log.error("%s: store call %s took more than %.0f s", self.name, getattr(fn, "__name__", fn),
                      self.options.op_timeout)
            raise OSError(errno.EIO, "store timed out") from None

    async def meta(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call that is one metadata system call on a local store (open, unlink, mkdir,
        rmdir, rename, utimes): made on the loop thread, as a passthrough makes it, because handing
        it to a worker thread costs more than the call (rm -r spent a third of its time in trio's
        thread machinery).  On any other store, :meth:`call`."""
        if self.local:
            return fn(*args)
        return await self.call(fn, *args)

    def open_fd(self, path: Sequence[str], flags: int, mode: int = 0o666) -> int:
        """(thread) An fd of the file at path of a local store, the caller's to close; EOPNOTSUPP
        for a store that is not ``local``."""
        if self._files is None:
            raise OSError(errno.EOPNOTSUPP, f"store {self.name} has no local files")
        return self._files.open_fd(path, flags, mode)


class Node:
    """An inode: a file or directory of one store (or the mount's root)."""

    __slots__ = ("ino", "store", "path", "is_dir", "entry", "fetched", "lookups", "children", "children_time",
                 "open_count", "writers", "_lock", "download", "keep_cache_etag", "local_fd_size", "unlinked",
                 "remote", "__weakref__")

    def __init__(self, ino: int, store: StoreMount | None, path: ExactPath, entry: Entry) -> None:
        self.ino = ino
        self.store = store
        self.path = path
        self.is_dir = entry.is_dir
        self.entry = entry
        self.fetched = time.monotonic()
        self.lookups = 0
        self.children: dict[str, Entry] | None = None
        self.children_time = 0.0
        self.open_count = 0
        self.writers = 0
        self._lock: trio.Lock | None = None
        self.download: Download | None = None
        self.keep_cache_etag: str | None = None
        self.local_fd_size: int | None = None
        self.unlinked = False
        #: A remote file being written here: its staging file and write state (writes.RemoteFile).
        self.remote: RemoteFile | None = None

    @property
    def lock(self) -> trio.Lock:
        """Serialises every change of a remote file being written (goblinfs.vfs.writes).

        Made at first use (on the trio loop, like every node access): a listing makes a node
        per entry, and most are never written; a trio.Lock is ~340 bytes (34 MB of RSS for a
        100,000-file tree).
        """
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    @property
    def stored_in(self) -> StoreMount:
        """The store this node is in; EPERM for the mount's root directory, which is in none."""
        if self.store is None:
            raise OSError(errno.EPERM, "the mount's root holds only the stores")
        return self.store

    def __repr__(self) -> str:
        where = self.store.name if self.store else "-"
        return f"<Node {self.ino} {where}:{'/'.join(self.path)}>"


@dataclass(eq=False)
class Handle:
    """An open file: the fd it reads and writes (backing file, cached copy or staging file)."""

    fh: int
    node: Node
    fd: int | None
    writable: bool
    owns_fd: bool
    append: bool = False
    keep_cache: bool = True
    download: Download | None = None
    #: The remote file being written that this handle reads or writes through (read-your-writes).
    remote: RemoteFile | None = None



def _dir_entry(name: str) -> Entry:
    return Entry(name=name, is_dir=True, mtime_ns=time.time_ns())


def _with(entry: Entry, **changes: Any) -> Entry:
    """A copy of entry with some fields changed (entries are immutable)."""
    return dataclasses.replace(entry, **changes)
