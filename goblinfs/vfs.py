"""The semantics layer: inodes, handles, caches and name rules over the stores.

Nothing here imports pyfuse3: the FUSE adapter (``goblinfs.fuse_ops``) turns these calls
into replies, and tests drive this layer directly under trio.  Every method runs on the
trio thread; every store call goes to a worker thread through ``StoreMount.call`` (bounded
by a CapacityLimiter and a timeout), so a slow store never stalls other requests.

Errors are raised as ``OSError`` with an errno; the adapter maps them (and anything
unexpected, logged, as EIO) in one place.  The concurrency and cache invariants are in
docs/design.md.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from werkzeug.utils import secure_filename

from .storage import (
    NAME_MAX,
    Entry,
    ExactPath,
    InvalidFilepath,
    NoWebServing,
    StorageInterface,
    Upload,
)
from .workbench import ReadCache

log = logging.getLogger(__name__)

T = TypeVar("T")

ROOT_INO = 1

#: Name of the extended attributes goblinfs answers.
XATTR_URL = "user.goblinfs.url"
XATTR_ETAG = "user.goblinfs.etag"
XATTR_CONTENT_TYPE = "user.goblinfs.content_type"
XATTRS = (XATTR_URL, XATTR_ETAG, XATTR_CONTENT_TYPE)


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
    #: How long names we created/deleted override a (possibly stale) remote listing.
    overlay_seconds: float = 60.0


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


class StoreMount:
    """One store shown as a directory of the mount, with its own worker limiter."""

    def __init__(self, name: str, storage: StorageInterface, options: Options, max_threads: int = 8) -> None:
        self.name = name
        self.storage = storage
        self.options = options
        self.local = bool(storage.local_storage) and hasattr(storage, "open_fd")
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


class Node:
    """An inode: a file or directory of one store (or the mount's root)."""

    __slots__ = ("ino", "store", "path", "is_dir", "entry", "fetched", "lookups", "children", "children_time",
                 "open_count", "staging", "staging_fd", "dirty", "writers", "pending_mtime", "lock",
                 "download", "keep_cache_etag", "local_fd_size", "unlinked", "absent", "upload", "upload_end",
                 "stale", "__weakref__")

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
        self.staging: str | None = None
        self.staging_fd: int | None = None
        self.dirty = False
        self.writers = 0
        self.pending_mtime: int | None = None
        self.lock = trio.Lock()
        self.download: Download | None = None
        self.keep_cache_etag: str | None = None
        self.local_fd_size: int | None = None
        self.unlinked = False
        #: Created here and not uploaded yet: the store had nothing at this path when we looked.
        self.absent = False
        #: Remote, written from empty and only appended to so far: past upload.begin_at bytes,
        #: appended data goes to the store as it comes (not to the staging file).
        self.upload: Upload | None = None
        #: Bytes appended so far (while upload is set).
        self.upload_end = 0
        #: The staging file lacks what a finished stream sent: refill it before using it.
        self.stale = False

    def __repr__(self) -> str:
        where = self.store.name if self.store else "-"
        return f"<Node {self.ino} {where}:{'/'.join(self.path)}>"


@dataclass
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


def _dir_entry(name: str) -> Entry:
    return Entry(name=name, is_dir=True, mtime_ns=time.time_ns())


class Vfs:
    """The filesystem: a root directory holding one directory per store (or one store alone)."""

    def __init__(self, stores: list[StoreMount], options: Options, cache: ReadCache | None = None,
                 single: bool = False) -> None:
        self.options = options
        self.stores = {s.name: s for s in stores}
        self.cache = cache
        self.single = single
        self._next_ino = ROOT_INO + 1
        self._next_fh = 1
        self.nodes: dict[int, Node] = {}
        self.by_path: dict[tuple[str | None, ExactPath], int] = {}
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, list[tuple[str, int]]] = {}
        self.dir_handles_nodes: dict[int, Node] = {}
        #: Where background downloads run; set by the mount (or a test) before use.
        self.nursery: trio.Nursery | None = None
        #: Names recently created or deleted through us: (store, dir path) -> name -> (Entry|None, when).
        self.overlay: dict[tuple[str, ExactPath], dict[str, tuple[Entry | None, float]]] = {}
        root_store = stores[0] if single else None
        root = Node(ROOT_INO, root_store, ExactPath(), _dir_entry(""))
        root.lookups = 1
        self.nodes[ROOT_INO] = root
        self.by_path[(root_store.name if root_store else None, ExactPath())] = ROOT_INO
        self.started = time.time_ns()

    # ------------------------------------------------------------------ inodes

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise OSError(errno.ENOENT, "stale inode") from None

    def _node_for(self, store: StoreMount | None, path: ExactPath, entry: Entry, fetched: float | None = None) -> Node:
        """The node of path (made if new), its entry updated; fetched: when the store said so."""
        key = (store.name if store else None, path)
        ino = self.by_path.get(key)
        if ino is not None:
            node = self.nodes[ino]
            if node.is_dir != entry.is_dir:
                # The name changed kind behind our back: a new inode.
                self._drop_path(node)
            else:
                if node.staging is None and node.writers <= 0:
                    if entry.is_dir and not entry.mtime_ns and node.entry.mtime_ns:
                        entry = _with(entry, mtime_ns=node.entry.mtime_ns)  # listings lack dir mtimes
                    node.entry = entry
                    node.fetched = time.monotonic() if fetched is None else fetched
                return node
        ino = self._next_ino
        self._next_ino += 1
        node = Node(ino, store, path, entry)
        if fetched is not None:
            node.fetched = fetched
        self.nodes[ino] = node
        self.by_path[key] = ino
        return node

    def _drop_path(self, node: Node) -> None:
        key = (node.store.name if node.store else None, node.path)
        if self.by_path.get(key) == node.ino:
            del self.by_path[key]

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        """The kernel dropped nlookup references to these inodes."""
        for ino, nlookup in items:
            node = self.nodes.get(ino)
            if node is None or ino == ROOT_INO:
                continue
            node.lookups -= nlookup
            self._maybe_free(node)

    def _maybe_free(self, node: Node) -> None:
        if node.lookups <= 0 and node.open_count <= 0 and node.staging is None and node.download is None:
            self._drop_path(node)
            self.nodes.pop(node.ino, None)

    def attr(self, node: Node) -> Attr:
        """The attributes of an inode."""
        opts = self.options
        if node.is_dir:
            mode = stat.S_IFDIR | (0o777 & ~opts.umask)
            size = 4096
            nlink = 2
        else:
            mode = stat.S_IFREG | (0o666 & ~opts.umask)
            nlink = 0 if node.unlinked else 1
            size = node.entry.size
            if node.upload is not None and node.upload.started:
                size = node.upload_end
            elif node.staging_fd is not None and not node.stale:
                size = os.fstat(node.staging_fd).st_size
        if opts.ro:
            mode &= ~0o222
        mtime = node.entry.mtime_ns if node.ino != ROOT_INO or node.store else self.started
        timeout = opts.attr_timeout
        if not mtime:
            # Swift listings carry no directory mtime (the marker is folded into a prefix): show
            # the mount time for now and let the kernel ask again (getattr fetches it once).
            mtime = self.started
            timeout = 0
        if node.pending_mtime is not None:
            mtime = node.pending_mtime
        return Attr(ino=node.ino, mode=mode, size=size, mtime_ns=mtime, uid=opts.uid, gid=opts.gid, nlink=nlink,
                    timeout=timeout)

    # ------------------------------------------------------------------ names

    def _decode(self, name: bytes) -> str:
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        return name.decode("utf-8", "surrogateescape")

    def new_name(self, store: StoreMount, name: bytes) -> str:
        """The name a new file or directory gets in the store (cleaned; strict refuses changes)."""
        raw = self._decode(name)
        cleaned = secure_filename(raw)
        if not cleaned:
            log.warning("refusing new name %r: it cleans to nothing (MediaGoblin's secure_filename)", raw)
            raise OSError(errno.EINVAL, "name cleans to nothing")
        if cleaned != raw and self.options.names == "strict":
            log.warning("refusing new name %r: names=strict and it would be stored as %r", raw, cleaned)
            raise OSError(errno.EINVAL, "name is not clean")
        return cleaned

    def _check_object_name(self, store: StoreMount, path: ExactPath) -> None:
        if store.max_name_length and len("/".join(path).encode()) > store.max_name_length:
            raise OSError(errno.ENAMETOOLONG, "object name longer than the store allows")

    # ------------------------------------------------------------------ directories

    async def _children(self, node: Node, fresh: bool = False) -> dict[str, Entry]:
        """The listing of a directory node, cached for dir_timeout, with our recent changes on top."""
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        now = time.monotonic()
        if node.store is None:
            return {name: _dir_entry(name) for name in self.stores}
        if fresh or node.children is None or now - node.children_time > self.options.dir_timeout:
            entries = await node.store.call(node.store.storage.list_dir, node.path)
            children = {e.name: e for e in entries}
            overlay = self.overlay.get((node.store.name, node.path))
            if overlay:
                for name, (entry, when) in list(overlay.items()):
                    if now - when > self.options.overlay_seconds:
                        del overlay[name]
                    elif entry is None:
                        children.pop(name, None)
                    else:
                        children[name] = entry
            node.children = children
            node.children_time = now
        return node.children

    def _note_child(self, parent: Node, name: str, entry: Entry | None) -> None:
        """Record a change we made in parent (created/updated entry, or None when removed)."""
        if parent.children is not None:
            if entry is None:
                parent.children.pop(name, None)
            else:
                parent.children[name] = entry
        if parent.store is not None and not parent.store.local:
            self.overlay.setdefault((parent.store.name, parent.path), {})[name] = (entry, time.monotonic())
        elif parent.store is not None and parent.path:
            # A local directory's own mtime changed with its entries: the next getattr asks the
            # disk (the kernel drops the directory's attributes after create/unlink/rename).
            parent.fetched = 0.0
            grand_ino = self.by_path.get((parent.store.name, parent.path.parent))
            grand = self.nodes.get(grand_ino) if grand_ino is not None else None
            if grand is not None:
                grand.children = None

    def _child_path(self, parent: Node, name: str) -> tuple[StoreMount, ExactPath]:
        if parent.store is None:
            store = self.stores.get(name)
            if store is None:
                raise OSError(errno.ENOENT, "no such store")
            return store, ExactPath()
        return parent.store, parent.path.child(name)

    async def lookup(self, parent_ino: int, name: bytes) -> Node:
        """Find name in a directory: the exact name first, then its cleaned form.  +1 lookup."""
        parent = self.node(parent_ino)
        if name == b".":
            node = parent
        elif name == b"..":
            node = self._parent_of(parent)
        else:
            node = await self._lookup(parent, self._decode(name))
        node.lookups += 1
        return node

    def _parent_of(self, node: Node) -> Node:
        if node.ino == ROOT_INO:
            return node
        if not node.path:
            return self.nodes[ROOT_INO]
        key = (node.store.name if node.store else None, node.path.parent)
        if not node.path.parent and not self.single:
            key = (node.store.name if node.store else None, ExactPath())
        ino = self.by_path.get(key)
        if ino is None:
            raise OSError(errno.ENOENT, "parent not known")
        return self.nodes[ino]

    async def _lookup(self, parent: Node, name: str) -> Node:
        if parent.store is None:
            store, path = self._child_path(parent, name)
            key = (store.name, ExactPath())
            ino = self.by_path.get(key)
            if ino is not None:
                return self.nodes[ino]
            return self._node_for(store, path, _dir_entry(name))
        children = await self._children(parent)
        entry = children.get(name)
        if entry is None:
            cleaned = secure_filename(name)
            if cleaned and cleaned != name:
                entry = children.get(cleaned)
                if entry is not None:
                    name = cleaned
        if entry is None:
            raise OSError(errno.ENOENT, "no such file or directory")
        # A remote directory's mtime is fetched by the first getattr, not here: a path walk
        # through it needs none (its attributes go out with attr timeout 0 until then).
        return self._node_for(parent.store, parent.path.child(name), entry, parent.children_time)

    async def _dir_mtime(self, node: Node) -> None:
        """A remote directory's mtime is not in listings: ask the store once, keep it."""
        if node.is_dir and node.store is not None and node.path and not node.entry.mtime_ns:
            try:
                entry = await node.store.call(node.store.storage.stat, node.path)
            except FileNotFoundError:
                return
            node.entry = _with(node.entry, mtime_ns=entry.mtime_ns or self.started)

    async def getattr(self, ino: int) -> Attr:
        """Attributes, refreshed from the parent's listing when older than attr_timeout."""
        node = self.node(ino)
        await self._dir_mtime(node)
        if (node.store is not None and node.path and node.staging is None and not node.unlinked
                and time.monotonic() - node.fetched > self.options.attr_timeout):
            try:
                parent = self._parent_of(node)
                children = await self._children(parent)
                entry = children.get(node.path[-1])
                if entry is not None and entry.is_dir == node.is_dir:
                    if entry.is_dir and not entry.mtime_ns:
                        entry = _with(entry, mtime_ns=node.entry.mtime_ns)
                    node.entry = entry
                    node.fetched = parent.children_time
            except OSError as exc:
                if exc.errno == errno.EIO:
                    raise
        return self.attr(node)

    async def opendir(self, ino: int) -> int:
        """Snapshot the listing of a directory; return a handle for readdir."""
        node = self.node(ino)
        # Every opendir lists afresh (rsync --delete and find must see the directory as it is);
        # lookups and getattr use the listing cached for dir_timeout.
        children = await self._children(node, fresh=True)
        listing = []
        for name in sorted(children):
            listing.append((name, 0))
        fh = self._next_fh
        self._next_fh += 1
        self.dir_handles[fh] = listing
        self.dir_handles_nodes[fh] = node
        return fh

    def readdir_entries(self, fh: int, start: int) -> list[tuple[int, str, Node]]:
        """Entries from position start: (next position, name, node); lookup counts NOT taken."""
        listing = self.dir_handles[fh]
        dir_node = self.dir_handles_nodes[fh]
        out = []
        children = dir_node.children or {}
        for index in range(start, len(listing)):
            name = listing[index][0]
            if dir_node.store is None:
                store = self.stores[name]
                key = (store.name, ExactPath())
                ino = self.by_path.get(key)
                node = self.nodes[ino] if ino is not None else self._node_for(store, ExactPath(), _dir_entry(name))
            else:
                entry = children.get(name)
                if entry is None:
                    continue
                node = self._node_for(dir_node.store, dir_node.path.child(name), entry, dir_node.children_time)
            out.append((index + 1, name, node))
        return out

    def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)
        self.dir_handles_nodes.pop(fh, None)

    def _writable_store(self, parent: Node) -> StoreMount:
        if self.options.ro:
            raise OSError(errno.EROFS, "read-only mount")
        if parent.store is None:
            raise OSError(errno.EPERM, "the mount's root holds only the stores")
        return parent.store

    async def mkdir(self, parent_ino: int, name: bytes) -> Node:
        """Create an empty directory that persists.  +1 lookup."""
        parent = self.node(parent_ino)
        store = self._writable_store(parent)
        clean = self.new_name(store, name)
        children = await self._children(parent)
        if clean in children:
            raise OSError(errno.EEXIST, "exists")
        path = parent.path.child(clean)
        self._check_object_name(store, path)
        await store.call(functools.partial(store.storage.make_dir, path, new=True))
        entry = Entry(name=clean, is_dir=True, mtime_ns=time.time_ns())
        self._note_child(parent, clean, entry)
        node = self._node_for(store, path, entry)
        node.lookups += 1
        return node

    async def rmdir(self, parent_ino: int, name: bytes) -> None:
        """Remove an empty directory (ENOTEMPTY otherwise)."""
        parent = self.node(parent_ino)
        store = self._writable_store(parent)
        node = await self._lookup(parent, self._decode(name))
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        if not node.path:
            raise OSError(errno.EBUSY, "a store's root")
        try:
            children = await self._children(node, fresh=True)
        except FileNotFoundError:
            # A Swift pseudo-directory vanishes with its last object: it is already gone.
            children = None
        if children:
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        ok = children is None or await store.call(store.storage.delete_dir, node.path, False)
        if not ok and not store.local and not await store.call(store.storage.file_exists, node.path):
            ok = True
        if not ok:
            children = await self._children(node, fresh=True)
            raise OSError(errno.ENOTEMPTY if children else errno.EIO, "cannot remove directory")
        self._note_child(parent, node.path[-1], None)
        self._drop_path(node)
        node.children = None

    async def unlink(self, parent_ino: int, name: bytes) -> None:
        """Remove a file; open handles keep reading what they had."""
        parent = self.node(parent_ino)
        store = self._writable_store(parent)
        node = await self._lookup(parent, self._decode(name))
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        if node.dirty:
            # Written but not uploaded yet: nothing to delete remotely unless it existed before.
            node.dirty = False
        self._abort_upload(node)
        try:
            await store.call(store.storage.delete_file, node.path)
        except FileNotFoundError:
            if node.staging is None:
                raise
        if self.cache is not None and not store.local:
            self.cache.invalidate(store.storage, node.path)
        self._note_child(parent, node.path[-1], None)
        self._drop_path(node)
        node.unlinked = True

    async def rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes,
                     noreplace: bool = False) -> None:
        """Rename within a store (server-side on Swift); EXDEV across stores."""
        old_parent = self.node(old_parent_ino)
        new_parent = self.node(new_parent_ino)
        store = self._writable_store(old_parent)
        new_store = self._writable_store(new_parent)
        if store is not new_store:
            raise OSError(errno.EXDEV, "rename across stores")
        node = await self._lookup(old_parent, self._decode(old_name))
        if not node.path:
            raise OSError(errno.EBUSY, "a store's root")
        target = self.new_name(store, new_name)
        new_path = new_parent.path.child(target)
        self._check_object_name(store, new_path)
        if new_path == node.path:
            return
        if node.is_dir and new_path[: len(node.path)] == node.path:
            raise OSError(errno.EINVAL, "cannot move a directory into itself")
        children = await self._children(new_parent)
        existing = children.get(target)
        replaced: Node | None = None
        if existing is not None:
            if noreplace:
                raise OSError(errno.EEXIST, "target exists")
            if existing.is_dir and not node.is_dir:
                raise OSError(errno.EISDIR, "target is a directory")
            if node.is_dir and not existing.is_dir:
                raise OSError(errno.ENOTDIR, "target is not a directory")
            ino = self.by_path.get((store.name, new_path))
            replaced = self.nodes.get(ino) if ino is not None else None
        if node.dirty:
            await self._upload(node)
        await store.call(store.storage.move, node.path, new_path)
        if self.cache is not None and not store.local:
            self.cache.invalidate(store.storage, node.path)
            self.cache.invalidate(store.storage, new_path)
        old_path = node.path
        self._note_child(old_parent, old_path[-1], None)
        moved_entry = Entry(name=target, is_dir=node.is_dir, size=node.entry.size, mtime_ns=node.entry.mtime_ns,
                            etag=node.entry.etag, content_type=node.entry.content_type)
        self._note_child(new_parent, target, moved_entry)
        if replaced is not None and replaced is not node:
            self._drop_path(replaced)
            replaced.unlinked = True
        self._repath(node, store, old_path, new_path)
        node.entry = moved_entry

    def _repath(self, node: Node, store: StoreMount, old: ExactPath, new: ExactPath) -> None:
        """Move a node (and every known node below it) from old to new."""
        for other in list(self.nodes.values()):
            if other.store is not store or other.path[: len(old)] != old:
                continue
            self._drop_path(other)
            other.path = ExactPath(new + other.path[len(old):])
            other.children = None if other.is_dir else other.children
            self.by_path[(store.name, other.path)] = other.ino
        for key in [k for k in self.overlay if k[0] == store.name and k[1][: len(old)] == old]:
            del self.overlay[key]

    # ------------------------------------------------------------------ files

    def _new_handle(self, node: Node, fd: int | None, writable: bool, owns_fd: bool, append: bool = False,
                    keep_cache: bool = True) -> Handle:
        fh = self._next_fh
        self._next_fh += 1
        handle = Handle(fh, node, fd, writable, owns_fd, append, keep_cache)
        self.handles[fh] = handle
        node.open_count += 1
        return handle

    def handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise OSError(errno.EBADF, "bad file handle") from None

    async def create(self, parent_ino: int, name: bytes, flags: int) -> tuple[Handle, Node]:
        """Create (or, without O_EXCL, open and truncate) a file.  +1 lookup."""
        parent = self.node(parent_ino)
        store = self._writable_store(parent)
        clean = self.new_name(store, name)
        children = await self._children(parent)
        existing = children.get(clean)
        if existing is not None:
            if flags & os.O_EXCL:
                raise OSError(errno.EEXIST, "exists")
            if existing.is_dir:
                raise OSError(errno.EISDIR, "is a directory")
            node = self._node_for(store, parent.path.child(clean), existing)
            handle = await self.open(node.ino, (flags & ~os.O_CREAT) | os.O_TRUNC)
            node.lookups += 1
            return handle, node
        path = parent.path.child(clean)
        self._check_object_name(store, path)
        now = time.time_ns()
        if store.local:
            fd = await store.call(store.storage.open_fd, path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            entry = Entry(name=clean, is_dir=False, size=0, mtime_ns=now)
            node = self._node_for(store, path, entry)
            handle = self._new_handle(node, fd, True, True, append=bool(flags & os.O_APPEND))
            node.writers += 1
        else:
            entry = Entry(name=clean, is_dir=False, size=0, mtime_ns=now, etag=None)
            node = self._node_for(store, path, entry)
            self._start_staging(node, None)
            node.dirty = True
            node.absent = True
            node.writers += 1
            handle = self._new_handle(node, node.staging_fd, True, False, append=bool(flags & os.O_APPEND))
        self._note_child(parent, clean, entry)
        node.lookups += 1
        node.unlinked = False
        return handle, node

    async def open(self, ino: int, flags: int) -> Handle:
        """Open a file; O_TRUNC truncates here (the kernel sends no separate setattr)."""
        node = self.node(ino)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        store = node.store
        assert store is not None
        accmode = flags & os.O_ACCMODE
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        if writable and self.options.ro:
            raise OSError(errno.EROFS, "read-only mount")
        truncate = bool(flags & os.O_TRUNC) and writable
        append = bool(flags & os.O_APPEND)
        if store.local:
            open_flags = os.O_RDWR if writable else os.O_RDONLY
            if truncate:
                open_flags |= os.O_TRUNC
            fd = await store.call(store.storage.open_fd, node.path, open_flags)
            handle = self._new_handle(node, fd, writable, True, append=append)
            if writable:
                node.writers += 1
            if truncate:
                node.entry = _with(node.entry, size=0, mtime_ns=time.time_ns())
            return handle
        async with node.lock:
            if writable:
                if node.staging is None:
                    await self._stage_existing(node, truncate)
                elif truncate:
                    self._abort_upload(node)
                    os.ftruncate(node.staging_fd, 0)  # type: ignore[arg-type]
                    node.stale = False
                    self._begin_upload(node)
                    node.dirty = True
                if truncate:
                    node.dirty = True
                node.writers += 1
                return self._new_handle(node, node.staging_fd, True, False, append=append)
            if node.staging is not None:
                return self._new_handle(node, node.staging_fd, False, False)
            return await self._open_remote_read(node)

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

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Up to size bytes at offset (short only at the end of the file)."""
        handle = self.handle(fh)
        node = handle.node
        if handle.fd is not None and handle.fd == node.staging_fd and (node.stale or node.upload is not None):
            async with node.lock:
                await self._settle_staging(node)
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

    async def setattr(self, ino: int, size: int | None = None, mtime_ns: int | None = None,
                      fh: int | None = None) -> Attr:
        """truncate/ftruncate and utimens; mode/owner changes are accepted and ignored."""
        node = self.node(ino)
        store = node.store
        if (size is not None or mtime_ns is not None) and self.options.ro:
            raise OSError(errno.EROFS, "read-only mount")
        if store is None or not node.path:
            return self.attr(node)
        if size is not None:
            if node.is_dir:
                raise OSError(errno.EISDIR, "is a directory")
            await self._truncate(node, size, fh)
        if mtime_ns is not None:
            if store.local or node.is_dir:
                await store.call(store.storage.set_mtime, node.path, mtime_ns)
                node.entry = _with(node.entry, mtime_ns=mtime_ns)
            elif node.dirty:
                node.pending_mtime = mtime_ns
            else:
                await store.call(store.storage.set_mtime, node.path, mtime_ns)
                node.entry = _with(node.entry, mtime_ns=mtime_ns)
                if node.staging is not None:
                    node.pending_mtime = None
            parent_ino = self.by_path.get((store.name, node.path.parent))
            if parent_ino is not None:
                self._note_child(self.nodes[parent_ino], node.path[-1], node.entry)
        return self.attr(node)

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

    # ------------------------------------------------------------------ misc

    async def statfs(self) -> tuple[int, int, int, int]:
        """(total, free, files, free files) bytes/counts over the stores."""
        total = free = 0
        files = 0
        for store in self.stores.values():
            try:
                space = await store.call(store.storage.space)
            except OSError:
                raise
            except Exception as exc:  # a store without space(): count nothing for it
                log.debug("statfs %s: %s", store.name, exc)
                continue
            if space.total is None:
                # No quota: show the used bytes plus a generous, fixed headroom.
                total += space.used + (1 << 50)
                free += 1 << 50
            else:
                total += space.total
                free += space.free or 0
            files += space.objects or 0
        return total, free, files + (1 << 30), 1 << 30

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        """user.goblinfs.url / etag / content_type; ENODATA for anything else."""
        node = self.node(ino)
        key = name.decode("utf-8", "surrogateescape")
        if key not in XATTRS or node.store is None or node.is_dir and key != XATTR_URL:
            raise OSError(errno.ENODATA, "no such attribute")
        store = node.store
        if key == XATTR_URL:
            try:
                url = store.storage.file_url(node.path)
            except NoWebServing:
                raise OSError(errno.ENODATA, "this store has no base_url") from None
            except InvalidFilepath:
                raise OSError(errno.ENODATA, "no URL for this name") from None
            return url.encode()
        if node.dirty:
            raise OSError(errno.ENODATA, "not uploaded yet")
        entry = node.entry
        if store.local or entry.etag is None or entry.content_type is None:
            entry = await store.call(store.storage.stat, node.path)
            node.entry = entry
        value = entry.etag if key == XATTR_ETAG else entry.content_type
        if value is None and key == XATTR_CONTENT_TYPE:
            import mimetypes

            value = mimetypes.guess_type(node.path[-1])[0] or "application/octet-stream"
        if value is None:
            raise OSError(errno.ENODATA, "no such attribute")
        return value.encode()

    def listxattr(self, ino: int) -> list[bytes]:
        node = self.node(ino)
        if node.store is None:
            return []
        if node.is_dir:
            return [XATTR_URL.encode()]
        return [n.encode() for n in XATTRS]

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


def _with(entry: Entry, **changes: Any) -> Entry:
    values = {"name": entry.name, "is_dir": entry.is_dir, "size": entry.size, "mtime_ns": entry.mtime_ns,
              "etag": entry.etag, "content_type": entry.content_type}
    values.update(changes)
    return Entry(**values)


__all__ = ["Attr", "Handle", "Node", "Options", "StoreMount", "Vfs"]
