"""Workbenches (MediaGoblin's, exact) and the ETag-validated read cache of remote objects.

``Workbench``, ``WorkbenchManager`` and ``Workbench.localized_file`` behave as in
MediaGoblin's ``mediagoblin.tools.workbench``.  ``ReadCache`` (``WorkbenchManager.cache``)
is what the mount uses for remote stores: whole-object copies kept under
``<workbench>/cache``, reused while the object's ETag is unchanged, bounded in bytes with
least-recently-used eviction, one download when several readers ask at once.  Its index is
kept beside the data (``<key>.json``), so the cache survives a remount.

Invariants (see docs/design.md):

* a ``<key>.data`` file is only ever created by renaming a complete download onto it, so a
  reader never sees a partial copy;
* the index lock is never held during a download; a per-key lock serialises downloads of
  the same object;
* eviction only unlinks: a reader that opened a cached file keeps reading it;
* a copy is only adopted (``put``, ``localize``) when its size is the object's size, and the
  size recorded is the one of the file on disk: a short download is never kept;
* no room (``cache_size`` too small, or the disk full even after evicting least recently
  used copies) is ``NoCacheSpace`` (an ``OSError``, ENOSPC): the caller reads the object
  from the store instead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .storage import StorageInterface, resolve_components

log = logging.getLogger(__name__)


class Workbench:
    """A temporary directory to process files in.

    DO NOT create Workbench objects on your own, let the WorkbenchManager do that for you!
    """

    def __init__(self, dir: str) -> None:  # noqa: A002 - MediaGoblin's parameter name
        self.dir = dir

    def __str__(self) -> str:
        return str(self.dir)

    def __repr__(self) -> str:
        try:
            return str(self)
        except AttributeError:
            return "None"

    def joinpath(self, *args: str) -> str:
        """os.path.join(self.dir, *args)."""
        return os.path.join(self.dir, *args)

    def localized_file(self, storage: StorageInterface, filepath: Sequence[str],
                       filename_if_copying: str | None = None, keep_extension_if_copying: bool = True) -> str:
        """Possibly localize the file from this storage system (for read-only purposes).

        A local store returns its own path for filepath (no copy, no existence check).  A
        remote one is copied into the workbench: as ``filepath[-1]``, or as
        ``filename_if_copying`` plus the original extension when keep_extension_if_copying.
        """
        if storage.local_storage:
            return storage.get_local_path(filepath)
        if filename_if_copying is None:
            dest_name = filepath[-1]
        else:
            orig_ext = os.path.splitext(filepath[-1])[1]
            if keep_extension_if_copying and orig_ext:
                dest_name = filename_if_copying + orig_ext
            else:
                dest_name = filename_if_copying
        dest_path = os.path.join(self.dir, dest_name)
        storage.copy_locally(filepath, dest_path)
        return dest_path

    def destroy(self) -> None:
        """Remove the workbench directory and all it holds (no sanity checks)."""
        shutil.rmtree(os.path.abspath(self.dir))
        del self.dir

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *args: Any) -> None:
        self.destroy()


class WorkbenchManager:
    """Creates workbenches under base_workbench_dir (created if missing); owns the read cache."""

    def __init__(self, base_workbench_dir: str, cache_size: int = 10 * 1024**3) -> None:
        self.base_workbench_dir = os.path.abspath(base_workbench_dir)
        if not os.path.exists(self.base_workbench_dir):
            os.makedirs(self.base_workbench_dir)
        self._cache_size = cache_size
        self._cache: ReadCache | None = None
        self._cache_lock = threading.Lock()

    def create(self) -> Workbench:
        """A new workbench: a fresh 0700 directory under base_workbench_dir."""
        return Workbench(tempfile.mkdtemp(dir=self.base_workbench_dir))

    @property
    def cache(self) -> ReadCache:
        """The read cache, in ``<base_workbench_dir>/cache`` (created on first use)."""
        with self._cache_lock:
            if self._cache is None:
                self._cache = ReadCache(os.path.join(self.base_workbench_dir, "cache"), self._cache_size)
            return self._cache


class NoCacheSpace(OSError):
    """The read cache cannot hold a copy (too small, or its disk is full): read from the store."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


#: Write errors that mean "no room here" (evicting may help), as opposed to a broken disk.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

#: Free space kept on the cache's disk besides a copy (index files, staging metadata).
SPACE_MARGIN = 256 * 1024


@dataclass
class _Item:
    key: str
    etag: str
    size: int
    ident: str
    last_use: float


class ReadCache:
    """Whole-object local copies of remote files, keyed by store and path, validated by ETag.

    ``localize(storage, filepath, etag)`` returns a local path whose content is the object
    with that ETag.  The sum of cached sizes is kept at most ``max_bytes`` by evicting the
    least recently used entries (an object bigger than the whole cache is still served; it
    is evicted first next time).
    """

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = int(max_bytes)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self.total = 0
        #: Counters, for tests and statistics (goblinfs.metrics): opens served by a kept copy
        #: (``lookup``, ``localize``, or ``count(hit=True)``), opens that had to fetch the
        #: object, and copies evicted to make room.
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._load()

    # ----------------------------------------------------------------- index

    def _load(self) -> None:
        found = []
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if ".part-" in name:
                os.unlink(path)  # an interrupted download
                continue
            if not name.endswith(".json"):
                continue
            key = name[:-5]
            try:
                with open(path) as f:
                    meta = json.load(f)
                size = os.stat(self._data_path(key)).st_size
                if size != meta["size"]:
                    raise ValueError("size mismatch")
                found.append(_Item(key, meta["etag"], size, meta.get("ident", ""), float(meta.get("last_use", 0))))
            except (OSError, ValueError, KeyError) as exc:
                log.info("read cache: dropping %s (%s)", key, exc)
                self._unlink(key)
        for item in sorted(found, key=lambda i: i.last_use):
            self._items[item.key] = item
            self.total += item.size
        # Data files without an index entry are leftovers.
        for name in os.listdir(self.directory):
            if name.endswith(".data") and name[:-5] not in self._items:
                os.unlink(os.path.join(self.directory, name))
        self._evict()

    def _data_path(self, key: str) -> str:
        return os.path.join(self.directory, key + ".data")

    def _meta_path(self, key: str) -> str:
        return os.path.join(self.directory, key + ".json")

    def _unlink(self, key: str) -> None:
        for path in (self._meta_path(key), self._data_path(key)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    @staticmethod
    def key_for(storage: StorageInterface, filepath: Sequence[str]) -> tuple[str, str]:
        """(cache key, human identity) of an object of a store."""
        ident = f"{_store_identity(storage)}\0{'/'.join(resolve_components(filepath))}"
        return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest(), ident

    # ----------------------------------------------------------------- API

    def lookup(self, storage: StorageInterface, filepath: Sequence[str], etag: str,
               size: int | None = None) -> str | None:
        """The cached path if the object with this ETag (and size, if given) is cached, else None.

        No download; a copy found counts as a hit.  A copy whose recorded size is not ``size`` is
        dropped: it is not the object.
        """
        key, ident = self.key_for(storage, filepath)
        with self._lock:
            item = self._items.get(key)
            if item is None or item.etag != etag:
                return None
            if size is not None and item.size != size:
                log.warning("read cache: dropping %s: %d bytes kept, the object has %d", ident, item.size, size)
                self._drop(item)
                return None
            self.hits += 1
            self._touch(item)
            return self._data_path(key)

    def count(self, hit: bool) -> None:
        """Count an open the caller served without ``lookup``/``localize``: sharing a download in
        progress (a hit) or downloading past the cache (a miss)."""
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def localize(self, storage: StorageInterface, filepath: Sequence[str], etag: str | None = None,
                 fetch: Callable[[str], str | None] | None = None, size: int | None = None) -> str:
        """A local path holding the object's content for this ETag, downloading if needed.

        Without etag, the store is asked (one stat, which gives the size too).  ``fetch(dest_path)``
        may replace the default download (``storage.copy_locally``); it may return the ETag it
        really got.  Concurrent calls for one object download it once.

        With the object's size known, a download of any other size (cut short) is OSError(EIO) and
        nothing is kept.  No room on the cache's disk, even after evicting least recently used
        copies: ``NoCacheSpace`` (ENOSPC), nothing kept.  An object bigger than ``max_bytes`` is
        still served (evicted first next time): callers that can read otherwise check ``fits``.
        """
        if etag is None:
            entry = storage.stat(filepath)
            etag = entry.etag or ""
            if size is None:
                size = entry.size
        key, ident = self.key_for(storage, filepath)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                item = self._items.get(key)
                if (item is not None and item.etag == etag and (size is None or item.size == size)
                        and os.path.exists(self._data_path(key))):
                    self.hits += 1
                    self._touch(item)
                    return self._data_path(key)
                if item is not None:
                    log.debug("read cache: %s changed (etag %s -> %s)", ident, item.etag, etag)
                    self._drop(item)
                self.misses += 1
            if size is not None and not self.make_room(size, limit=False):
                raise NoCacheSpace(f"no room in {self.directory} for {ident} ({size} bytes)")
            part = os.path.join(self.directory, f"{key}.part-{uuid.uuid4().hex}")
            try:
                got = self._fetch_with_room(storage, filepath, part, fetch, ident)
                if isinstance(got, str) and got:
                    etag = got
                got_size = os.stat(part).st_size
                if size is not None and got_size != size:
                    raise OSError(errno.EIO, f"download of {ident} got {got_size} of its {size} bytes")
                try:
                    self._write_meta(key, etag, got_size, ident)
                except OSError as exc:
                    if exc.errno in NO_SPACE_ERRNOS:
                        raise NoCacheSpace(f"no room in {self.directory} for the index of {ident}") from exc
                    raise
                os.rename(part, self._data_path(key))
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
                raise
            with self._lock:
                item = _Item(key, etag, got_size, ident, time.time())
                self._items[key] = item
                self.total += got_size
                self._evict(keep=key)
            return self._data_path(key)

    def _fetch_with_room(self, storage: StorageInterface, filepath: Sequence[str], part: str,
                         fetch: Callable[[str], str | None] | None, ident: str) -> str | None:
        """Download into part; a full disk evicts the least recently used copy and tries again."""
        while True:
            try:
                if fetch is not None:
                    return fetch(part)
                storage.copy_locally(filepath, part)
                return None
            except OSError as exc:
                if exc.errno not in NO_SPACE_ERRNOS:
                    raise
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
                if not self.evict_lru():
                    raise NoCacheSpace(f"no room in {self.directory} for {ident}: {exc.strerror}") from exc
                log.info("read cache: disk full while fetching %s; evicted a copy, trying again", ident)

    def fits(self, size: int) -> bool:
        """Whether a copy of size bytes may be kept at all (not bigger than the whole cache)."""
        return size <= self.max_bytes

    def make_room(self, size: int, limit: bool = True) -> bool:
        """Evict least recently used copies so that size more bytes fit: under ``max_bytes``, and
        on the cache's disk (its free space, with a margin).  False: they cannot fit even so
        (bigger than the cache with limit, or the disk too small); nothing is evicted then
        beyond what the bound asks.
        """
        with self._lock:
            if limit and size > self.max_bytes:
                return False
            while self.total + size > self.max_bytes and self._items:
                self._evict_oldest()
            # The disk: only evict for it if evicting can make enough room.
            free = self._disk_free()
            if free >= size + SPACE_MARGIN:
                return True
            if free + self.total < size + SPACE_MARGIN:
                return False
            while free < size + SPACE_MARGIN and self._items:
                self._evict_oldest()
                free = self._disk_free()
            return free >= size + SPACE_MARGIN

    def evict_lru(self) -> bool:
        """Evict the least recently used copy (a disk filled up meanwhile); False if none is left."""
        with self._lock:
            if not self._items:
                return False
            self._evict_oldest()
            return True

    def usage(self) -> tuple[int, int]:
        """(bytes held, bound ``max_bytes``), e.g. for ``goblinfs status``."""
        with self._lock:
            return self.total, self.max_bytes

    def invalidate(self, storage: StorageInterface, filepath: Sequence[str]) -> None:
        """Forget the cached copy of an object (after it was written or deleted through us)."""
        key, _ident = self.key_for(storage, filepath)
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._drop(item)

    def put(self, storage: StorageInterface, filepath: Sequence[str], etag: str, local_path: str,
            size: int | None = None) -> None:
        """Adopt local_path (moved, not copied) as the cached copy of the object with this ETag.

        With size (the object's), a file of any other size is refused (OSError EIO, local_path
        left where it is): a short download is never kept.
        """
        key, ident = self.key_for(storage, filepath)
        got_size = os.stat(local_path).st_size
        if size is not None and got_size != size:
            raise OSError(errno.EIO, f"not caching {ident}: {got_size} bytes, the object has {size}")
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._drop(item)
            self._write_meta(key, etag, got_size, ident)
            os.rename(local_path, self._data_path(key))
            item = _Item(key, etag, got_size, ident, time.time())
            self._items[key] = item
            self.total += got_size
            self._evict(keep=key)

    def __len__(self) -> int:
        return len(self._items)

    # ----------------------------------------------------------------- internals

    def _write_meta(self, key: str, etag: str, size: int, ident: str) -> None:
        tmp = self._meta_path(key) + f".part-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            json.dump({"etag": etag, "size": size, "ident": ident, "last_use": time.time()}, f)
        os.rename(tmp, self._meta_path(key))

    def _touch(self, item: _Item) -> None:
        item.last_use = time.time()
        self._items.move_to_end(item.key)

    def _drop(self, item: _Item) -> None:
        del self._items[item.key]
        self.total -= item.size
        self._unlink(item.key)

    def _evict(self, keep: str | None = None) -> None:
        while self.total > self.max_bytes and self._items:
            oldest = next(iter(self._items.values()))
            if oldest.key == keep:
                if len(self._items) == 1:
                    return
                self._items.move_to_end(keep)
                continue
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._items.values()))
        log.debug("read cache: evicting %s (%d bytes)", oldest.ident, oldest.size)
        self._drop(oldest)
        self.evictions += 1

    def _disk_free(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize


def _store_identity(storage: StorageInterface) -> str:
    ident = getattr(storage, "cache_identity", None)
    if callable(ident):
        return str(ident())
    if ident:
        return str(ident)
    parts = [type(storage).__name__]
    for attr in ("auth_url", "user", "container", "base_dir"):
        value = getattr(storage, attr, None)
        if value:
            parts.append(str(value))
    return ":".join(parts)
