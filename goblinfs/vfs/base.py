"""What the Vfs's mixins share: the state ``Vfs.__init__`` sets and the methods one mixin calls
from another.

``Vfs`` (``core``) is assembled from ``NamesMixin``, ``ListingMixin``, ``ReadsMixin`` and
``WritesMixin``; each mixin reads state set by ``Vfs.__init__`` and calls methods defined in
``core`` or in another mixin.  ``VfsBase`` declares those, so each mixin is checked on its own
(mypy) against one list.  It holds no code and no values: the attributes are annotations only,
and the methods are declared for the type checker only (``TYPE_CHECKING``), so at run time the
method resolution order of ``Vfs`` finds the real definitions exactly as without this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..storage import Entry, ExactPath
from .nodes import Attr, Handle, Node, Options, StoreMount

if TYPE_CHECKING:
    import trio

    from ..workbench import ReadCache
    from .reads import Download


class VfsBase:
    """The state and cross-mixin methods of the Vfs (declarations only; ``Vfs`` defines them)."""

    #: Mount options (semantics).
    options: Options
    #: The mounted stores by name (the directories of the root, or the one store when ``single``).
    stores: dict[str, StoreMount]
    #: The read cache of remote objects (None: remote reads and writes are refused).
    cache: ReadCache | None
    #: One store alone at the mountpoint (its root is the mount's root).
    single: bool
    #: Known inodes by number, and their numbers by (store name or None for the root, path).
    nodes: dict[int, Node]
    by_path: dict[tuple[str | None, ExactPath], int]
    #: Open files and open directories (snapshot of names, and the directory's node) by handle.
    handles: dict[int, Handle]
    dir_handles: dict[int, list[tuple[str, int]]]
    dir_handles_nodes: dict[int, Node]
    #: The next file or directory handle number.
    _next_fh: int
    #: Names recently created or deleted through us: (store, dir path) -> name -> (Entry|None, when).
    overlay: dict[tuple[str, ExactPath], dict[str, tuple[Entry | None, float]]]
    #: When the Vfs was made (ns since the epoch): the mtime shown where none is known.
    started: int

    if TYPE_CHECKING:
        # core.Vfs
        @property
        def nursery(self) -> trio.Nursery | None: ...

        def node(self, ino: int) -> Node: ...

        def _node_for(self, store: StoreMount | None, path: ExactPath, entry: Entry,
                      fetched: float | None = None) -> Node: ...

        def _maybe_free(self, node: Node) -> None: ...

        def attr(self, node: Node) -> Attr: ...

        def _new_handle(self, node: Node, fd: int | None, writable: bool, owns_fd: bool, append: bool = False,
                        keep_cache: bool = True) -> Handle: ...

        def handle(self, fh: int) -> Handle: ...

        # names.NamesMixin
        def _decode(self, name: bytes) -> str: ...

        # listing.ListingMixin
        def _note_child(self, parent: Node, name: str, entry: Entry | None) -> None: ...

        def _unpublished_children(self, store: StoreMount, path: ExactPath) -> list[tuple[str, Entry]]: ...

        # reads.ReadsMixin
        def _end_download(self, download: Download) -> None: ...

        async def _pread(self, fd: int, node: Node, size: int, offset: int,
                         own_fd: bool = False) -> bytes | memoryview: ...

        # writes.WritesMixin
        async def _staged_read(self, handle: Handle, offset: int, size: int) -> bytes | memoryview | None: ...
