"""Directories: listings cached for dir_timeout with our recent changes on top, lookups."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator

from werkzeug.utils import secure_filename

from ..storage import (
    Entry,
    ExactPath,
)
from .base import VfsBase
from .nodes import ROOT_INO, Attr, Node, StoreMount, _dir_entry, _with

log = logging.getLogger(__name__)



class ListingMixin(VfsBase):
    """Listings and lookups of the Vfs (mixed into it)."""

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
            for name, entry in self._unpublished_children(node.store, node.path):
                children[name] = entry  # acknowledged by write-back, not uploaded yet
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
        if (node.store is not None and node.path and node.remote is None and not node.unlinked
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
        # The listing cached for dir_timeout, as lookups and getattr use it: our own changes are
        # in it at once, others' after dir_timeout (the README's promise).  Listing afresh at
        # every opendir made a warm `ls -lR` or `find` one container GET per directory.
        children = await self._children(node)
        listing = []
        for name in sorted(children):
            listing.append((name, 0))
        fh = self._next_fh
        self._next_fh += 1
        self.dir_handles[fh] = listing
        self.dir_handles_nodes[fh] = node
        return fh

    def readdir_entries(self, fh: int, start: int) -> Iterator[tuple[int, str, Node]]:
        """Entries from position start: (next position, name, node); lookup counts NOT taken.

        Lazy: the kernel's buffer takes only part of a big directory per readdir (a 1,000-entry
        one took 3 calls here), and the caller stops at the first entry it refuses, so nodes are
        made only for the entries handed out, not again for the whole rest at every call.
        """
        listing = self.dir_handles[fh]
        dir_node = self.dir_handles_nodes[fh]
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
            yield index + 1, name, node

    def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)
        self.dir_handles_nodes.pop(fh, None)

