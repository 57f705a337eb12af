"""MountStorage: route path prefixes to sub-stores, as MediaGoblin's (experimental) one does.

``mount(['media_entries'], backend)`` sends every path under ``media_entries`` to
``backend`` with the prefix stripped; the deepest mounted prefix wins.  Unlike MediaGoblin's,
every method is forwarded (MediaGoblin forwarded only some), and ``list_dir`` shows the
mount points of deeper stores as directories.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from typing import Any

from . import Entry, ExactPath, Space, StorageInterface, Upload, clean_listy_filepath, resolve_components

log = logging.getLogger(__name__)


class MountError(Exception):
    """A path is not mounted (MediaGoblin: not a storage.Error)."""


class MountStorage(StorageInterface):
    """A store made of other stores mounted at path prefixes ("like /home and /etc")."""

    def __init__(self, **kwargs: Any) -> None:
        #: A trie of dicts: keys are components; the key None holds the store mounted there.
        self.mounttab: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"MountStorage({self.mounttab!r})"

    def mount(self, dirpath: Sequence[str], backend: StorageInterface) -> None:
        """Mount backend at dirpath; you can't mount ['a','b'] before ['a'] (AssertionError)."""
        dirpath = clean_listy_filepath(dirpath)
        node = self.mounttab
        for part in dirpath[:-1]:
            node = node.setdefault(part, {})
        if dirpath:
            node = node.setdefault(dirpath[-1], {})
        assert None not in node, "That path is already mounted"
        assert len(node) == 0, "A longer path is already mounted here"
        node[None] = backend
        log.debug("mounted %r at %s", backend, dirpath)

    def _resolve_to_backend(self, filepath: Sequence[str]
                            ) -> tuple[StorageInterface | None, Sequence[str], dict[Any, Any]]:
        """(deepest store mounted above filepath or None, the rest of filepath, its trie node).

        The rest is an ``ExactPath`` when filepath is one (exact names stay exact), else a list.
        """
        components = list(resolve_components(filepath))
        node = self.mounttab
        backend = node.get(None)
        rest: Sequence[str] = components
        for index, part in enumerate(components):
            if part not in node:
                break
            node = node[part]
            if None in node:
                backend = node[None]
                rest = components[index + 1:]
        if isinstance(filepath, ExactPath):
            rest = ExactPath(rest)
        return backend, rest, node

    def resolve_to_backend(self, filepath: Sequence[str]) -> tuple[StorageInterface, Sequence[str]]:
        """(store, remaining components) for filepath; MountError if nothing is mounted there.

        The remaining components are an ``ExactPath`` when filepath is one, else a list.
        """
        backend, rest, _node = self._resolve_to_backend(filepath)
        if backend is None:
            raise MountError("Path not mounted")
        return backend, rest

    def _forward(self, filepath: Sequence[str]) -> tuple[StorageInterface, Sequence[str]]:
        return self.resolve_to_backend(filepath)

    # MediaGoblin API, forwarded
    def file_exists(self, filepath: Sequence[str]) -> bool:
        """True if the file or directory exists in the store that holds filepath."""
        try:
            backend, rest = self._forward(filepath)
        except MountError:
            return False
        return backend.file_exists(rest)

    def get_file(self, filepath: Sequence[str], mode: str = "r") -> Any:
        """The file object of the store that holds filepath."""
        backend, rest = self._forward(filepath)
        return backend.get_file(rest, mode)

    def delete_file(self, filepath: Sequence[str], *, keep_parent: bool = True, seen: Entry | None = None) -> None:
        """Delete the file in the store that holds it (its directory stays, as there)."""
        backend, rest = self._forward(filepath)
        hints: dict[str, Any] = {}  # only when given: any StorageInterface, MediaGoblin's own signature
        if not keep_parent:
            hints["keep_parent"] = False
        if seen is not None:
            hints["seen"] = seen
        backend.delete_file(rest, **hints)

    def delete_dir(self, dirpath: Sequence[str], recursive: bool = False, *, keep_parent: bool = True) -> bool:
        """Delete the directory in the store that holds it (never a mount point itself)."""
        try:
            backend, rest = self._forward(dirpath)
        except MountError:
            return False
        if not rest:
            return False
        if not keep_parent:  # only when given: any StorageInterface, MediaGoblin's own signature
            return backend.delete_dir(rest, recursive, keep_parent=False)
        return backend.delete_dir(rest, recursive)

    def file_url(self, filepath: Sequence[str]) -> str:
        """The URL the holding store gives."""
        backend, rest = self._forward(filepath)
        return backend.file_url(rest)

    def get_local_path(self, filepath: Sequence[str]) -> str:
        """The local path the holding store gives (if it is local)."""
        backend, rest = self._forward(filepath)
        return backend.get_local_path(rest)

    def get_file_size(self, filepath: Sequence[str]) -> int:
        """The size from the holding store."""
        backend, rest = self._forward(filepath)
        return backend.get_file_size(rest)

    def copy_locally(self, filepath: Sequence[str], dest_path: str) -> None:
        """Copied by the holding store (local_storage of this class says nothing about it)."""
        backend, rest = self._forward(filepath)
        backend.copy_locally(rest, dest_path)

    def copy_local_to_storage(self, filename: str, filepath: Sequence[str]) -> None:
        """Stored by the holding store."""
        backend, rest = self._forward(filepath)
        backend.copy_local_to_storage(filename, rest)

    # filesystem extension, forwarded
    def list_dir(self, dirpath: Sequence[str]) -> list[Entry]:
        """The holding store's listing, plus deeper mount points shown as directories."""
        backend, rest, node = self._resolve_to_backend(dirpath)
        entries: dict[str, Entry] = {}
        if backend is not None:
            try:
                for entry in backend.list_dir(rest):
                    entries[entry.name] = entry
            except FileNotFoundError:
                if len(node) <= 1:
                    raise
        for name in node:
            if name is not None:
                entries[name] = Entry(name=name, is_dir=True)
        if backend is None and not entries:
            raise FileNotFoundError(errno.ENOENT, "not mounted", "/".join(resolve_components(dirpath)))
        return list(entries.values())

    def stat(self, filepath: Sequence[str]) -> Entry:
        """Entry from the holding store (a mount point is a directory)."""
        backend, rest = self._forward(filepath)
        if not rest:
            components = resolve_components(filepath)
            return Entry(name=components[-1] if components else "", is_dir=True)
        return backend.stat(rest)

    def start_upload(self, filepath: Sequence[str], upload_id: str | None = None) -> Upload | None:
        """Upload into the holding store."""
        backend, rest = self._forward(filepath)
        return backend.start_upload(rest, upload_id)

    def stream_file(self, filepath: Sequence[str], mtime_ns: int, replaces: str | None = None) -> Upload | None:
        """Streamed by the holding store."""
        backend, rest = self._forward(filepath)
        return backend.stream_file(rest, mtime_ns, replaces)

    def discard_upload(self, filepath: Sequence[str], upload_id: str) -> int:
        """Discarded by the holding store."""
        backend, rest = self._forward(filepath)
        return backend.discard_upload(rest, upload_id)

    def collect_garbage(self, grace_seconds: float = 86400.0, dry_run: bool = False) -> list[str]:
        """Every mounted store collects its own garbage; the names of all (each store's own names)."""
        names: list[str] = []
        for backend in self._backends():
            names.extend(backend.collect_garbage(grace_seconds, dry_run))
        return names

    def _backends(self) -> list[StorageInterface]:
        found: list[StorageInterface] = []
        pending = [self.mounttab]
        while pending:
            node = pending.pop()
            for key, value in node.items():
                if key is None:
                    if all(value is not other for other in found):
                        found.append(value)
                else:
                    pending.append(value)
        return found

    def stat_file(self, filepath: Sequence[str]) -> Entry:
        """Stat of a file in the holding store."""
        backend, rest = self._forward(filepath)
        return backend.stat_file(rest)

    def read_range(self, filepath: Sequence[str], offset: int, length: int) -> bytes:
        """Bytes from the holding store."""
        backend, rest = self._forward(filepath)
        return backend.read_range(rest, offset, length)

    def move(self, src: Sequence[str], dst: Sequence[str]) -> None:
        """Move within one sub-store; across sub-stores OSError(EXDEV)."""
        src_backend, src_rest = self._forward(src)
        dst_backend, dst_rest = self._forward(dst)
        if src_backend is not dst_backend or not src_rest or not dst_rest:
            raise OSError(errno.EXDEV, "cannot move across mounted stores")
        src_backend.move(src_rest, dst_rest)

    def make_dir(self, dirpath: Sequence[str], *, new: bool = False) -> None:
        """Directory in the holding store."""
        backend, rest = self._forward(dirpath)
        if not rest:
            raise FileExistsError(errno.EEXIST, "a mount point exists here")
        backend.make_dir(rest, new=new)

    def set_mtime(self, filepath: Sequence[str], mtime_ns: int) -> None:
        """mtime in the holding store."""
        backend, rest = self._forward(filepath)
        backend.set_mtime(rest, mtime_ns)

    def store_local_file(self, filename: str, filepath: Sequence[str], mtime_ns: int | None = None, *,
                         new: bool = False, upload_id: str | None = None) -> Entry:
        """Stored by the holding store."""
        backend, rest = self._forward(filepath)
        return backend.store_local_file(filename, rest, mtime_ns, new=new, upload_id=upload_id)

    def space(self) -> Space:
        """The root store's space (or the first mounted one's)."""
        backend = self.mounttab.get(None)
        if backend is None:
            raise MountError("Path not mounted")
        return backend.space()
