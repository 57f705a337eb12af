"""``goblinfs sync SRC DST``: copy one store into another, in parallel, verified, resumable.

An *endpoint* is a store section of a MediaGoblin config (``CONFIG:public`` or
``CONFIG:queue``, loaded as the mount loads it) or a plain local directory.  The storage layer
is driven directly (never the mount):

* **Exact names.**  Every file keeps its name byte for byte (MediaGoblin's database refers to
  it).  A name the destination cannot hold (too long for Swift, a Swift name with an empty,
  ``.`` or ``..`` component, a file that is also a directory for a local destination, a name
  that is not UTF-8 for Swift, a symlink or device) is reported as failed, never renamed.
* **Metadata.**  mtime (exact to the nanosecond) and, between Swift stores, the content type;
  empty directories become ``name/`` markers on Swift and directories on disk.  Files larger
  than the destination's segment size (or its cluster's max_file_size) are stored as SLOs.
* **No bytes through the client within one Swift account**: plain objects are copied with a
  server-side COPY (``X-Copy-From``), large objects segment by segment into the destination's
  own segments container followed by a new manifest (so deleting the source later cannot break
  the copy).
* **Verified.**  After each copy the MD5 of the source bytes is compared with what the
  destination stored: the ETag of a plain object, the ETag of every segment of an SLO (from
  its manifest), the MD5 of the file written on a local disk.  A mismatch is a failure.
* **Idempotent and resumable.**  A file is up to date when size and mtime match (``checksum``:
  size and MD5).  Nothing is published half written: Swift objects appear whole (a PUT, or an
  SLO's manifest after its segments), local files are written to ``.goblinfs-sync-*`` and
  renamed.  :meth:`Sync.cancel` (the CLI calls it on the first SIGINT/SIGTERM) starts no more
  files, abandons the copies that can stop between chunks (cleaning up after them) and lets
  the others finish, so a rerun carries on where this run stopped.

The result is a :class:`Report`; failures are collected per file, never raised.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat as stat_mod
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from .storage import NAME_MAX, ExactPath, StorageInterface, new_upload_id

log = logging.getLogger(__name__)

#: Parallel transfers by default.
DEFAULT_TRANSFERS = 8
#: Read size of local copies, downloads and hashing.
CHUNK = 1048576
#: Prefix of the temporary files a local destination is written through.
TMP_PREFIX = ".goblinfs-sync-"
#: Temporary files of the local stores themselves (BasicFileStorage): never synced.
STORE_TMP_PREFIX = ".goblinfs-tmp-"
#: Our temporary files older than this are left-overs of a killed run: deleted by the next one.
STALE_TMP_SECONDS = 3600.0

Path = tuple[str, ...]


class SyncError(Exception):
    """An endpoint that cannot be used; the message is one line for the user."""


class Cancelled(Exception):
    """The copy was abandoned because the run is stopping (nothing of it is left)."""


class Mismatch(OSError):
    """The destination stored other bytes than the source has."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


# ----------------------------------------------------------------------------- trees


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file of an endpoint, from its listing.

    ``etag``: Swift's (the SLO etag for SLOs), None on disk.  ``large``: "slo", "dlo" or None.
    """

    size: int
    mtime_ns: int
    etag: str | None = None
    content_type: str | None = None
    large: str | None = None


@dataclass
class Tree:
    """What an endpoint holds: files and directories by path (a tuple of exact components).

    ``dirs`` maps each directory to its mtime (None when unknown: a Swift pseudo-directory);
    ``problems`` lists names found that cannot be copied, with the reason.
    """

    files: dict[Path, FileInfo] = field(default_factory=dict)
    dirs: dict[Path, int | None] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: Swift directories that have a marker object (whose HEAD holds their mtime).
    markers: set[Path] = field(default_factory=set)

    def non_empty_dirs(self) -> set[Path]:
        """Every directory that has something under it."""
        full: set[Path] = set()
        for path in list(self.files) + list(self.dirs):
            for depth in range(1, len(path)):
                full.add(path[:depth])
        return full


def show(path: Path) -> str:
    """A path for messages (the exact name; undecodable bytes escaped)."""
    return "/".join(path).encode("utf-8", "backslashreplace").decode("utf-8")


#: A list of (length, md5 hex) parts: the MD5 of a plain object is one part, an SLO's one per segment.
Layout = list[tuple[int, str]]


def md5_parts(fd: int, lengths: Sequence[int], cancelled: Callable[[], bool] = lambda: False) -> list[str]:
    """MD5 of consecutive ranges of the open file fd, from offset 0, one per length.

    Raises Mismatch when the file ends before the lengths do, Cancelled when *cancelled*.
    """
    digests = []
    offset = 0
    for length in lengths:
        digest = hashlib.md5(usedforsecurity=False)
        remaining = length
        while remaining > 0:
            if cancelled():
                raise Cancelled()
            chunk = os.pread(fd, min(CHUNK, remaining), offset)
            if not chunk:
                raise Mismatch(f"the file is shorter than {sum(lengths)} bytes")
            digest.update(chunk)
            offset += len(chunk)
            remaining -= len(chunk)
        digests.append(digest.hexdigest())
    return digests


def check_layout(local_path: str, layout: Layout, what: str,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
    """Compare the local file with a layout (size and the MD5 of every part); Mismatch if not equal."""
    fd = os.open(local_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        expected = sum(length for length, _ in layout)
        if size != expected:
            raise Mismatch(f"{what}: {size} bytes here, {expected} bytes there")
        digests = md5_parts(fd, [length for length, _ in layout], cancelled)
    finally:
        os.close(fd)
    for index, (digest, (_, etag)) in enumerate(zip(digests, layout, strict=True)):
        if digest != etag.strip('"').lower():
            part = f" (segment {index})" if len(layout) > 1 else ""
            raise Mismatch(f"{what}{part}: MD5 {digest}, ETag {etag}")


class Endpoint(Protocol):
    """What both kinds of endpoint offer the sync."""

    label: str

    def scan(self, clean: bool = False) -> Tree: ...

    def cannot_hold(self, path: Path) -> str | None: ...


# ------------------------------------------------------------------------- local dirs


class LocalEndpoint:
    """A local directory (a plain one, or the ``base_dir`` of a BasicFileStorage store)."""

    def __init__(self, root: str, label: str | None = None) -> None:
        self.root = os.path.abspath(root)
        self.label = label or self.root

    def __repr__(self) -> str:
        return f"LocalEndpoint({self.root!r})"

    def path(self, path: Path) -> str:
        return os.path.join(self.root, *path)

    def scan(self, clean: bool = False) -> Tree:
        """Walk the directory (no symlink is followed).  Our temporary files are never listed;
        with *clean* (a destination), those older than STALE_TMP_SECONDS (left by a killed run)
        are deleted."""
        tree = Tree()
        if not os.path.isdir(self.root):
            return tree
        stack: list[Path] = [()]
        now = time.time()
        while stack:
            parent = stack.pop()
            try:
                entries = list(os.scandir(self.path(parent)))
            except OSError as exc:
                tree.problems.append((show(parent) or ".", f"cannot list: {exc.strerror or exc}"))
                continue
            for entry in entries:
                path = (*parent, entry.name)
                if entry.name.startswith(STORE_TMP_PREFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    tree.problems.append((show(path), f"cannot stat: {exc.strerror or exc}"))
                    continue
                if entry.name.startswith(TMP_PREFIX):
                    if clean and now - st.st_mtime > STALE_TMP_SECONDS:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                    continue
                if stat_mod.S_ISDIR(st.st_mode):
                    tree.dirs[path] = st.st_mtime_ns
                    stack.append(path)
                elif stat_mod.S_ISREG(st.st_mode):
                    tree.files[path] = FileInfo(st.st_size, st.st_mtime_ns)
                else:
                    kind = "a symlink" if stat_mod.S_ISLNK(st.st_mode) else "not a regular file"
                    tree.problems.append((show(path), f"{kind}: not copied"))
        return tree

    def cannot_hold(self, path: Path) -> str | None:
        for component in path:
            if len(os.fsencode(component)) > NAME_MAX:
                return f"a name component longer than {NAME_MAX} bytes: a local directory cannot hold it"
            if "\0" in component:
                return "a NUL byte in the name: a local directory cannot hold it"
        return None


# ----------------------------------------------------------------------------- Swift


class SwiftEndpoint:
    """A CloudFileStorage store (one Swift container and its ``_segments`` container)."""

    def __init__(self, store: Any, label: str) -> None:
        self.store = store
        self.label = label

    def __repr__(self) -> str:
        return f"SwiftEndpoint({self.store.container!r})"

    @staticmethod
    def name(path: Path) -> str:
        return "/".join(path)

    @property
    def account_url(self) -> str | None:
        return self.store.session.storage_url

    def scan(self, clean: bool = False) -> Tree:
        """One flat listing of the container (10,000 names a request).

        Zero-byte objects may be DLO manifests (listed with 0 bytes): those are HEADed, in parallel.
        """
        from .storage.swift.listing import entry_from_listing, is_directory_type, maybe_dlo, maybe_slo

        tree = Tree()
        zero_byte: list[Path] = []
        for item in self.store._iter_listing(""):
            name = str(item.get("name", ""))
            is_marker = name.endswith("/") or is_directory_type(item.get("content_type"))
            components = tuple(name[:-1].split("/") if name.endswith("/") else name.split("/"))
            if any(c in ("", ".", "..") or "\0" in c for c in components):
                tree.problems.append((name, "an empty, '.' or '..' name component: no path can hold it"))
                continue
            for depth in range(1, len(components)):
                tree.dirs.setdefault(components[:depth], None)
            if is_marker:
                if int(item.get("bytes") or 0) and name.endswith("/"):
                    tree.problems.append((name, "an object named like a directory that holds data"))
                    continue
                tree.dirs[components] = None
                tree.markers.add(components)
                continue
            entry = entry_from_listing(components[-1], item)
            large = "slo" if maybe_slo(item) else None
            tree.files[components] = FileInfo(entry.size, entry.mtime_ns, entry.etag, entry.content_type, large)
            if maybe_dlo(item):
                zero_byte.append(components)
        if zero_byte:
            self._resolve_dlos(tree, zero_byte)
        return tree

    def _resolve_dlos(self, tree: Tree, paths: list[Path]) -> None:
        from .storage.swift.listing import dlo_prefix, entry_from_headers

        heads = self.store._parallel(lambda path: self.store._head(self.name(path)), paths)
        for path, headers in zip(paths, heads, strict=True):
            if headers is not None and dlo_prefix(headers) is not None:
                entry = entry_from_headers(path[-1], headers)
                tree.files[path] = FileInfo(entry.size, tree.files[path].mtime_ns, entry.etag, entry.content_type,
                                            "dlo")

    def dir_mtimes(self, tree: Tree, paths: Iterable[Path]) -> None:
        """Fill in tree.dirs the mtimes of those paths that have a marker (a HEAD each, in parallel)."""
        from .storage.swift.listing import entry_from_headers

        wanted = [path for path in paths if path in tree.markers and tree.dirs.get(path) is None]
        if not wanted:
            return
        heads = self.store._parallel(lambda path: self.store._head(self.name(path) + "/"), wanted)
        for path, headers in zip(wanted, heads, strict=True):
            if headers is not None:
                tree.dirs[path] = entry_from_headers(path[-1], headers).mtime_ns or None

    def cannot_hold(self, path: Path) -> str | None:
        try:
            name = self.name(path).encode("utf-8")
        except UnicodeEncodeError:
            return "the name is not valid UTF-8: Swift cannot hold it"
        if len(name) > self.store.max_object_name_length:
            return f"the name is {len(name)} bytes, longer than this Swift allows ({self.store.max_object_name_length})"
        for component in path:
            if len(component.encode("utf-8")) > NAME_MAX:
                return f"a name component longer than {NAME_MAX} bytes"
        return None

    def layout(self, path: Path, info: FileInfo) -> Layout | None:
        """The MD5 parts of the object as stored: [(size, etag)], or one part per SLO segment
        (from its manifest).  None when the store gives no usable MD5 (a DLO, a manifest with
        ranges): the bytes must then be read to be checked."""
        if info.large == "dlo":
            return None
        if info.large == "slo":
            return self.manifest_layout(self.name(path))
        if info.etag is None:
            return None
        return [(info.size, info.etag)]

    def manifest(self, name: str) -> list[dict[str, Any]] | None:
        """The stored SLO manifest of name (``?multipart-manifest=get``), None if it is no SLO."""
        from .storage.swift.listing import is_slo

        headers, body = self.store._call("get_object", self.store.container, name,
                                         query_string="multipart-manifest=get", name=name)
        if not is_slo(headers):
            return None
        items = json.loads(body)
        if not isinstance(items, list):
            raise OSError(errno.EIO, f"the SLO manifest of {name} is not a list")
        return items

    def manifest_layout(self, name: str) -> Layout | None:
        items = self.manifest(name)
        if items is None:
            headers = self.store._head(name)
            if headers is None:
                raise FileNotFoundError(errno.ENOENT, "vanished", name)
            return [(int(headers.get("content-length") or 0), str(headers.get("etag", "")).strip('"'))]
        if any(item.get("range") for item in items):
            return None
        return [(int(item["bytes"]), str(item["hash"])) for item in items]


# ------------------------------------------------------------------------ endpoints


NO_CONFIG = {"default", "none", "goblinfs", "-"}


def open_endpoint(spec: str, *, create: bool = False, missing_ok: bool = False) -> LocalEndpoint | SwiftEndpoint:
    """``CONFIG:public`` / ``CONFIG:queue`` (a store of a mediagoblin.ini, a directory holding one,
    or ``default``) or a local directory (created when *create*; taken as empty when missing and
    *missing_ok*).  SyncError saying why not."""
    from .config import ConfigError, load_config

    config_part, sep, store_name = spec.rpartition(":")
    if sep and store_name in ("public", "queue") and (config_part in NO_CONFIG or os.path.exists(config_part)):
        try:
            config = load_config(None if config_part in NO_CONFIG else config_part)
            store = config.stores[store_name].build()
        except ConfigError as exc:
            raise SyncError(" ".join(str(exc).split())) from None
        except Exception as exc:  # the store could not be reached or refused us
            raise SyncError(f"{spec}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        return endpoint_of_store(store, spec)
    if os.path.isdir(spec):
        return LocalEndpoint(spec)
    if os.path.exists(spec):
        raise SyncError(f"{spec}: not a directory (a store is CONFIG:public or CONFIG:queue)")
    if missing_ok and os.path.isdir(os.path.dirname(os.path.abspath(spec))):
        return LocalEndpoint(spec)
    if create:
        try:
            os.makedirs(spec)
        except OSError as exc:
            raise SyncError(f"cannot create {spec}: {exc.strerror or exc}") from None
        return LocalEndpoint(spec)
    raise SyncError(f"{spec}: no such directory (a store is CONFIG:public or CONFIG:queue)")


def endpoint_of_store(store: StorageInterface, label: str) -> LocalEndpoint | SwiftEndpoint:
    """The endpoint of a built store: Swift, or the directory of a local store."""
    from .storage.cloudfiles import CloudFileStorage
    from .storage.filestorage import BasicFileStorage

    if isinstance(store, CloudFileStorage):
        return SwiftEndpoint(store, label)
    if isinstance(store, BasicFileStorage):
        os.makedirs(store.base_dir, exist_ok=True)
        return LocalEndpoint(store.base_dir, label)
    raise SyncError(f"{label}: {type(store).__name__} stores cannot be synced (local or Swift only)")


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """What a run did.  ``failed``: (path, reason) of every file not copied that should have been."""

    source: str
    destination: str
    dry_run: bool = False
    files: int = 0
    bytes_total: int = 0
    to_copy: int = 0
    bytes_to_copy: int = 0
    copied: int = 0
    bytes_copied: int = 0
    server_side: int = 0
    up_to_date: int = 0
    checksum_differed: list[str] = field(default_factory=list)
    dirs_created: int = 0
    to_delete: int = 0
    deleted: int = 0
    would_copy: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    delete_skipped: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "destination": self.destination, "dry_run": self.dry_run,
            "files": self.files, "bytes": self.bytes_total,
            "to_copy": self.to_copy, "bytes_to_copy": self.bytes_to_copy,
            "copied": self.copied, "bytes_copied": self.bytes_copied, "server_side_copies": self.server_side,
            "up_to_date": self.up_to_date, "checksum_differed": self.checksum_differed,
            "dirs_created": self.dirs_created, "to_delete": self.to_delete, "deleted": self.deleted,
            "would_copy": self.would_copy, "would_delete": self.would_delete,
            "failed": [{"path": path, "error": error} for path, error in self.failed],
            "interrupted": self.interrupted, "delete_skipped": self.delete_skipped,
            "seconds": round(self.seconds, 3),
        }


class ProgressSink(Protocol):
    """Told about each file as it ends (thread-safe); the CLI shows a bar or periodic lines."""

    def start(self, files: int, nbytes: int) -> None: ...

    def file_done(self, nbytes: int, ok: bool) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    def start(self, files: int, nbytes: int) -> None:
        pass

    def file_done(self, nbytes: int, ok: bool) -> None:
        pass

    def stop(self) -> None:
        pass


# ----------------------------------------------------------------------------- sync


@dataclass
class Options:
    transfers: int = DEFAULT_TRANSFERS
    checksum: bool = False
    dry_run: bool = False
    delete: bool = False


class Sync:
    """One run of SRC → DST.  :meth:`run` returns the Report; :meth:`cancel` (from any thread or
    a signal handler) stops it cleanly."""

    def __init__(self, src: LocalEndpoint | SwiftEndpoint, dst: LocalEndpoint | SwiftEndpoint,
                 options: Options | None = None, progress: ProgressSink | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.src = src
        self.dst = dst
        self.options = options or Options()
        self.progress = progress or NoProgress()
        self.say = say or (lambda line: log.info("%s", line))
        self.report = Report(src.label, dst.label, dry_run=self.options.dry_run)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        #: Temporary local files being written, removed if the process must exit at once.
        self._temp_files: set[str] = set()
        self.server_side = (isinstance(src, SwiftEndpoint) and isinstance(dst, SwiftEndpoint)
                            and src.account_url is not None and src.account_url == dst.account_url)
        self._check_distinct()

    def _check_distinct(self) -> None:
        if isinstance(self.src, LocalEndpoint) and isinstance(self.dst, LocalEndpoint):
            src, dst = os.path.realpath(self.src.root), os.path.realpath(self.dst.root)
            if src == dst or dst.startswith(src.rstrip("/") + "/") or src.startswith(dst.rstrip("/") + "/"):
                raise SyncError(f"{self.src.label} and {self.dst.label} overlap")
        if isinstance(self.src, SwiftEndpoint) and isinstance(self.dst, SwiftEndpoint) and self.server_side \
                and self.src.store.container == self.dst.store.container:
            raise SyncError(f"{self.src.label} and {self.dst.label} are the same Swift container")

    # ------------------------------------------------------------------ control

    def cancel(self) -> None:
        """Start no more files; abandon the copies that can stop (they clean up after themselves)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def remove_temp_files(self) -> None:
        """Delete the local temporary files of copies still running (before an immediate exit)."""
        # No lock: this runs in a signal handler, maybe while this very thread holds _lock.
        names = list(self._temp_files)
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name)

    # --------------------------------------------------------------------- run

    def run(self) -> Report:
        started = time.monotonic()
        try:
            self._run()
        finally:
            self.report.interrupted = self.cancelled
            self.report.seconds = time.monotonic() - started
        return self.report

    def _run(self) -> None:
        report = self.report
        src_tree = self.src.scan()
        dst_tree = self.dst.scan(clean=not self.options.dry_run)
        report.failed.extend(src_tree.problems)
        report.files = len(src_tree.files)
        report.bytes_total = sum(info.size for info in src_tree.files.values())
        jobs: list[tuple[Path, FileInfo, FileInfo | None]] = []
        local_dst = isinstance(self.dst, LocalEndpoint)
        for path, info in sorted(src_tree.files.items()):
            why = self.dst.cannot_hold(path)
            if why is None and local_dst and path in src_tree.dirs:
                why = "the source has a file and a directory of this name: a local directory cannot hold both"
            if why is None and path in dst_tree.dirs and path not in dst_tree.files:
                why = "a directory of this name is at the destination"
            if why is not None:
                report.failed.append((show(path), why))
                continue
            existing = dst_tree.files.get(path)
            if existing is not None and not self.options.checksum and self._same_by_time(info, existing):
                report.up_to_date += 1
                continue
            jobs.append((path, info, existing))
        dirs = self._dirs_to_make(src_tree, dst_tree)
        # In path order (measured: largest first made the start slower, every big file's first
        # read coming from a cold disk at once).
        report.to_copy = len(jobs)
        report.bytes_to_copy = sum(info.size for _, info, _ in jobs)
        doomed_files, doomed_dirs = self._to_delete(src_tree, dst_tree) if self.options.delete else ([], [])
        report.to_delete = len(doomed_files) + len(doomed_dirs)
        if self.options.dry_run:
            report.would_copy = sorted(show(path) for path, _, _ in jobs)
            report.would_delete = [show(path) for path in doomed_files] + [show(path) + "/" for path in doomed_dirs]
            return
        if isinstance(self.src, SwiftEndpoint):
            self.src.dir_mtimes(src_tree, src_tree.dirs if local_dst else dirs)
        self.progress.start(len(jobs), report.bytes_to_copy)
        try:
            self._make_dirs(dirs, src_tree)
            self._transfer_all(jobs)
        finally:
            self.progress.stop()
        if not self.cancelled:
            self._set_dir_mtimes(src_tree)
        if self.options.delete and report.to_delete:
            if self.cancelled:
                report.delete_skipped = "interrupted"
            elif report.failed:
                report.delete_skipped = f"{len(report.failed)} file(s) failed: nothing deleted"
                self.say(f"not deleting {report.to_delete} item(s) absent from the source: "
                         f"{len(report.failed)} file(s) failed")
            else:
                self.say(f"deleting {len(doomed_files)} file(s) and {len(doomed_dirs)} directory(ies) "
                         f"absent from {self.src.label}")
                self._delete(doomed_files, doomed_dirs)

    @staticmethod
    def _same_by_time(src: FileInfo, dst: FileInfo) -> bool:
        return src.size == dst.size and src.mtime_ns == dst.mtime_ns

    # --------------------------------------------------------------- directories

    def _dirs_to_make(self, src_tree: Tree, dst_tree: Tree) -> list[Path]:
        """Local destinations get every directory; Swift ones a marker for each empty one."""
        missing = [path for path in src_tree.dirs if path not in dst_tree.dirs]
        if isinstance(self.dst, SwiftEndpoint):
            full = src_tree.non_empty_dirs()
            missing = [path for path in missing if path not in full]
        return sorted(missing, key=len)

    def _make_dirs(self, dirs: list[Path], src_tree: Tree) -> None:
        for path in dirs:
            if self.cancelled:
                return
            why = self.dst.cannot_hold(path)
            if why is not None:
                self.report.failed.append((show(path) + "/", why))
                continue
            try:
                if isinstance(self.dst, LocalEndpoint):
                    os.makedirs(self.dst.path(path), exist_ok=True)
                else:
                    # One PUT of the marker: its parents exist through it (no markers for them).
                    with contextlib.suppress(FileExistsError):
                        self.dst.store.make_dir(ExactPath(path), new=True)
                    mtime_ns = src_tree.dirs.get(path)
                    if mtime_ns:
                        self.dst.store.set_mtime(ExactPath(path), mtime_ns)
                self.report.dirs_created += 1
            except Exception as exc:
                self.report.failed.append((show(path) + "/", describe(exc)))

    def _set_dir_mtimes(self, src_tree: Tree) -> None:
        """On a local destination, directories get their source mtimes back (deepest first: the
        files written into them changed them)."""
        if not isinstance(self.dst, LocalEndpoint):
            return
        for path in sorted(src_tree.dirs, key=len, reverse=True):
            mtime_ns = src_tree.dirs[path]
            if mtime_ns:
                with contextlib.suppress(OSError):
                    os.utime(self.dst.path(path), ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    # ------------------------------------------------------------------ delete

    def _to_delete(self, src_tree: Tree, dst_tree: Tree) -> tuple[list[Path], list[Path]]:
        """The destination's files and directories the source lacks (directories deepest first)."""
        files = sorted(path for path in dst_tree.files if path not in src_tree.files)
        dirs = sorted((path for path in dst_tree.dirs if path not in src_tree.dirs and path not in src_tree.files),
                      key=lambda path: (-len(path), path))
        return files, dirs

    def _delete(self, files: list[Path], dirs: list[Path]) -> None:
        doomed = set(dirs)

        def delete_file(path: Path) -> None:
            if isinstance(self.dst, LocalEndpoint):
                os.unlink(self.dst.path(path))
            else:
                # No marker to keep a directory that goes next anyway (one listing per file less).
                self.dst.store.delete_file(ExactPath(path), keep_parent=path[:-1] not in doomed)

        with ThreadPoolExecutor(self.options.transfers, thread_name_prefix="goblinfs-sync-delete") as pool:
            for path, future in [(path, pool.submit(delete_file, path)) for path in files]:
                try:
                    future.result()
                    self.report.deleted += 1
                except FileNotFoundError:
                    pass
                except Exception as exc:
                    self.report.failed.append((show(path), f"could not delete: {describe(exc)}"))
        for path in dirs:
            # On Swift a directory is its marker, if any (the store may have made one when its
            # last file went), or nothing once its files are gone: either way it is gone after this.
            try:
                if isinstance(self.dst, LocalEndpoint):
                    os.rmdir(self.dst.path(path))
                else:
                    self.dst.store.delete_dir(ExactPath(path))
                self.report.deleted += 1
            except FileNotFoundError:
                self.report.deleted += 1
            except Exception as exc:
                self.report.failed.append((show(path) + "/", f"could not delete: {describe(exc)}"))

    # --------------------------------------------------------------- transfers

    def _transfer_all(self, jobs: list[tuple[Path, FileInfo, FileInfo | None]]) -> None:
        if not jobs:
            return
        pool = ThreadPoolExecutor(self.options.transfers, thread_name_prefix="goblinfs-sync")
        try:
            futures: dict[Future[str], tuple[Path, FileInfo]] = {
                pool.submit(self._transfer, path, info, existing): (path, info) for path, info, existing in jobs}
            for future in as_completed(futures):
                path, info = futures[future]
                try:
                    outcome = future.result()
                except Cancelled:
                    continue  # neither done nor failed: the next run copies it
                except Exception as exc:
                    log.debug("copy of %s failed", show(path), exc_info=True)
                    with self._lock:
                        self.report.failed.append((show(path), describe(exc)))
                    self.progress.file_done(info.size, False)
                    continue
                with self._lock:
                    if outcome == "same":
                        self.report.up_to_date += 1
                    else:
                        self.report.copied += 1
                        self.report.bytes_copied += info.size
                        if outcome == "server-side":
                            self.report.server_side += 1
                self.progress.file_done(info.size, True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _transfer(self, path: Path, info: FileInfo, existing: FileInfo | None) -> str:
        """Copy one file (or find it equal, with checksum); 'same', 'copied' or 'server-side'."""
        if self.cancelled:
            raise Cancelled()
        if existing is not None and self.options.checksum and existing.size == info.size:
            if self._same_content(path, info, existing):
                return "same"
            with self._lock:
                self.report.checksum_differed.append(show(path))
        if isinstance(self.src, LocalEndpoint):
            if isinstance(self.dst, LocalEndpoint):
                self._local_to_local(path, info)
            else:
                try:
                    self._local_to_swift(path, info, self.src.path(path), new=existing is None)
                except Mismatch:
                    self._remove_mismatch(path)
                    raise
            return "copied"
        if isinstance(self.dst, LocalEndpoint):
            self._swift_to_local(path, info)
            return "copied"
        try:
            if self.server_side:
                self._swift_to_swift_server_side(path, info, existing)
                return "server-side"
            self._swift_to_swift_through(path, info)
            return "copied"
        except Mismatch:
            self._remove_mismatch(path)
            raise

    def _remove_mismatch(self, path: Path) -> None:
        """A Swift destination found to hold other bytes was already published with the source's
        size and mtime: delete it, or the next run would take it for up to date."""
        assert isinstance(self.dst, SwiftEndpoint)
        try:
            self.dst.store.delete_file(ExactPath(path))
        except OSError as exc:
            log.warning("%s: could not delete the mismatched copy: %s", show(path), exc)

    # ---------------------------------------------------------------- checksum

    def _same_content(self, path: Path, src: FileInfo, dst: FileInfo) -> bool:
        """Whether source and destination hold the same bytes (MD5s), for checksum mode."""
        cancelled = self._cancel.is_set
        if isinstance(self.src, SwiftEndpoint) and isinstance(self.dst, SwiftEndpoint):
            if src.etag and dst.etag and src.etag == dst.etag and src.large == dst.large and src.large != "dlo":
                return True
            src_layout, dst_layout = self.src.layout(path, src), self.dst.layout(path, dst)
            if src_layout is not None and dst_layout is not None:
                return src_layout == dst_layout
            return False  # not comparable without reading both: copy again
        if isinstance(self.src, LocalEndpoint) and isinstance(self.dst, LocalEndpoint):
            return file_md5(self.src.path(path), cancelled) == file_md5(self.dst.path(path), cancelled)
        local, remote, info = ((self.src, self.dst, dst) if isinstance(self.src, LocalEndpoint)
                               else (self.dst, self.src, src))
        assert isinstance(local, LocalEndpoint) and isinstance(remote, SwiftEndpoint)
        layout = remote.layout(path, info)
        if layout is None:
            return False
        try:
            check_layout(local.path(path), layout, show(path), cancelled)
        except Mismatch:
            return False
        return True

    # -------------------------------------------------------------------- pairs

    def _local_to_local(self, path: Path, info: FileInfo) -> None:
        assert isinstance(self.src, LocalEndpoint) and isinstance(self.dst, LocalEndpoint)
        source = self.src.path(path)
        with self._local_temp(path) as tmp:
            digest = hashlib.md5(usedforsecurity=False)
            with open(source, "rb") as reader, open(tmp, "wb") as writer:
                while chunk := reader.read(CHUNK):
                    if self.cancelled:
                        raise Cancelled()
                    digest.update(chunk)
                    writer.write(chunk)
            self._check_unchanged(source, info)
            check_layout(tmp, [(info.size, digest.hexdigest())], show(path), self._cancel.is_set)
            self._publish_local(tmp, path, info.mtime_ns)

    def _local_to_swift(self, path: Path, info: FileInfo, source: str, new: bool = False) -> None:
        """store_local_file (an SLO when large), then the destination's MD5s against the file.

        *new*: the destination's listing had nothing there, so one PUT with ``If-None-Match: *``
        (no HEAD, no listing); if something appeared meanwhile, the ordinary replacing upload.
        """
        assert isinstance(self.dst, SwiftEndpoint)
        store = self.dst.store
        upload_id = new_upload_id()
        try:
            try:
                entry = store.store_local_file(source, ExactPath(path), info.mtime_ns, new=new, upload_id=upload_id)
            except FileExistsError:
                if not new:
                    raise
                entry = store.store_local_file(source, ExactPath(path), info.mtime_ns, upload_id=upload_id)
        except BaseException:
            with contextlib.suppress(Exception):
                store.discard_upload(ExactPath(path), upload_id)
            raise
        self._check_unchanged(source, info)
        name = self.dst.name(path)
        if entry.size > store._effective_segment_size(entry.size):
            layout = self.dst.manifest_layout(name)
            if layout is None:
                raise Mismatch(f"{name}: the stored SLO has no manifest to check")
        else:
            layout = [(entry.size, entry.etag or "")]
        check_layout(source, layout, f"{name} as stored", self._cancel.is_set)

    def _swift_to_local(self, path: Path, info: FileInfo) -> None:
        """Download into a temporary file, check it against the source's MD5s, rename it in place."""
        assert isinstance(self.src, SwiftEndpoint)
        layout = self.src.layout(path, info)
        with self._local_temp(path) as tmp:
            self._download(path, tmp)
            if layout is None:  # a DLO: compare with a second read of the source
                layout = [(info.size, self._remote_md5(self.src, path))]
            check_layout(tmp, layout, show(path), self._cancel.is_set)
            self._publish_local(tmp, path, info.mtime_ns)

    def _swift_to_swift_through(self, path: Path, info: FileInfo) -> None:
        """Two Swift accounts or clusters: through a spool file (bounded memory), both sides checked."""
        assert isinstance(self.src, SwiftEndpoint) and isinstance(self.dst, SwiftEndpoint)
        layout = self.src.layout(path, info)
        fd, spool = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.dst.store.staging_dir)
        os.close(fd)
        with self._lock:
            self._temp_files.add(spool)
        try:
            self._download(path, spool)
            if layout is None:
                layout = [(info.size, self._remote_md5(self.src, path))]
            check_layout(spool, layout, show(path), self._cancel.is_set)
            os.utime(spool, ns=(info.mtime_ns, info.mtime_ns))
            self._local_to_swift(path, FileInfo(info.size, info.mtime_ns), spool)
            if info.content_type:
                self._set_content_type(path, info)
        finally:
            with self._lock:
                self._temp_files.discard(spool)
            with contextlib.suppress(OSError):
                os.unlink(spool)

    def _set_content_type(self, path: Path, info: FileInfo) -> None:
        """Give the destination object the source's content type (store_local_file guessed one)."""
        from .storage.swift.listing import MTIME_PARAM, format_mtime, header_meta, split_content_type

        assert isinstance(self.dst, SwiftEndpoint)
        store, name = self.dst.store, self.dst.name(path)
        headers = store._head(name) or {}
        current = split_content_type(headers.get("content-type"))[0]
        if current == info.content_type:
            return
        mtime = format_mtime(info.mtime_ns)
        post = header_meta(headers)
        post.update({"Content-Type": f"{info.content_type};{MTIME_PARAM}={mtime}", "X-Object-Meta-Mtime": mtime})
        store._call("post_object", store.container, name, post, name=name)

    def _swift_to_swift_server_side(self, path: Path, info: FileInfo, existing: FileInfo | None) -> None:
        """Same account: a COPY per plain object; an SLO's (or DLO's) segments copied one by one
        into the destination's segments container, then a new manifest.  Every COPY's ETag is
        compared with the source's MD5 of that object or segment."""
        from .storage.swift.largeobjects import segment_base
        from .storage.swift.listing import MTIME_PARAM, format_mtime, guess_type, strip_etag

        assert isinstance(self.src, SwiftEndpoint) and isinstance(self.dst, SwiftEndpoint)
        src_store, dst_store = self.src.store, self.dst.store
        name = self.dst.name(path)
        mtime = format_mtime(info.mtime_ns)
        content_type = info.content_type or guess_type(path[-1])
        headers = {"Content-Type": f"{content_type};{MTIME_PARAM}={mtime}", "X-Object-Meta-Mtime": mtime}
        old_segments: list[tuple[str, str]] = []
        if info.large is None:
            if existing is not None:  # read just before the replacing PUT (a listing may miss an SLO)
                old_segments = dst_store.large.segments_of(name, dst_store._head(name))
            copy_headers = {"X-Copy-From": "/" + urllib.parse.quote(f"{src_store.container}/{name}"), **headers}
            etag = strip_etag(dst_store._call("put_object", dst_store.container, name, None,
                                              headers=copy_headers, name=name))
            if old_segments:  # replaced by a plain object: the old SLO's segments go (a lost answer: gc)
                dst_store._delete_segments(old_segments)
            if info.etag and etag != info.etag:
                raise Mismatch(f"{name}: copied with ETag {etag}, the source's is {info.etag}")
        else:
            segments = self._source_segments(path, info)
            upload_id = new_upload_id()
            base = segment_base(name, upload_id, dst_store.max_object_name_length)
            dst_store._ensure_segment_container()
            done: list[tuple[str, str, int]] = []
            try:
                for index, (container, obj, length, md5) in enumerate(segments):
                    if self.cancelled:
                        raise Cancelled()
                    segment = f"{base}/{upload_id}/{index:08d}"
                    source = "/" + urllib.parse.quote(f"{container}/{obj}")
                    etag = strip_etag(dst_store._call("put_object", dst_store.segment_container, segment, None,
                                                      headers={"X-Copy-From": source}, name=segment))
                    done.append((segment, etag or "", length))
                    if md5 is not None and etag != md5:
                        raise Mismatch(f"{name} (segment {index}): copied with ETag {etag}, the source's is {md5}")
                if existing is not None:  # read just before the manifest replaces it
                    old_segments = dst_store.large.segments_of(name, dst_store._head(name))
                slo_etag = dst_store.large.put_manifest(name, done, headers["Content-Type"],
                                                        {"X-Object-Meta-Mtime": mtime})
            except BaseException:
                # By upload id, keeping any segment a published manifest uses (an answer lost
                # after Swift stored the manifest), and the segments whose answer was lost too.
                with contextlib.suppress(Exception):
                    dst_store.discard_upload(ExactPath(path), upload_id)
                raise
            if old_segments:
                dst_store._delete_segments(old_segments)
            if info.large == "slo" and info.etag and slo_etag != info.etag:
                raise Mismatch(f"{name}: the new SLO's ETag is {slo_etag}, the source's is {info.etag}")

    def _source_segments(self, path: Path, info: FileInfo) -> list[tuple[str, str, int, str | None]]:
        """(container, object, bytes, md5) of every segment of the source large object."""
        from .storage.swift.listing import dlo_prefix

        assert isinstance(self.src, SwiftEndpoint)
        store, name = self.src.store, self.src.name(path)
        if info.large == "slo":
            items = self.src.manifest(name)
            if items is None:
                raise OSError(errno.EAGAIN, f"{name} changed while being copied (no longer an SLO): run again")
            segments = []
            for item in items:
                if item.get("range"):
                    raise OSError(errno.ENOTSUP, f"{name}: SLO segments with ranges are not copied server-side")
                container, _, obj = str(item.get("name", "")).lstrip("/").partition("/")
                segments.append((container, obj, int(item["bytes"]),
                                 str(item.get("hash") or "") or None))
            return segments
        manifest = dlo_prefix(store._head(name))
        if manifest is None:
            raise OSError(errno.EAGAIN, f"{name} changed while being copied (no longer a DLO): run again")
        container, prefix = manifest
        return [(container, str(item["name"]), int(item.get("bytes") or 0), str(item.get("hash") or "") or None)
                for item in store._iter_listing(prefix, container=container) if "name" in item]

    # ----------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _local_temp(self, path: Path) -> Iterator[str]:
        """A temporary file next to the destination file (created with its parents); removed
        unless it was renamed into place."""
        assert isinstance(self.dst, LocalEndpoint)
        parent = self.dst.path(path[:-1])
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:16]}")
        with self._lock:
            self._temp_files.add(tmp)
        try:
            yield tmp
        finally:
            with self._lock:
                self._temp_files.discard(tmp)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _publish_local(self, tmp: str, path: Path, mtime_ns: int) -> None:
        assert isinstance(self.dst, LocalEndpoint)
        if self.cancelled:
            raise Cancelled()
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        target = self.dst.path(path)
        if os.path.isdir(target) and not os.path.islink(target):
            raise IsADirectoryError(errno.EISDIR, "a directory of this name is at the destination", show(path))
        os.rename(tmp, target)

    def _download(self, path: Path, dest: str) -> None:
        assert isinstance(self.src, SwiftEndpoint)
        with self.src.store.get_file(ExactPath(path), "rb") as reader, open(dest, "wb") as writer:
            while chunk := reader.read(CHUNK):
                if self.cancelled:
                    raise Cancelled()
                writer.write(chunk)

    def _remote_md5(self, endpoint: SwiftEndpoint, path: Path) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        with endpoint.store.get_file(ExactPath(path), "rb") as reader:
            while chunk := reader.read(CHUNK):
                if self.cancelled:
                    raise Cancelled()
                digest.update(chunk)
        return digest.hexdigest()

    @staticmethod
    def _check_unchanged(source: str, info: FileInfo) -> None:
        st = os.stat(source)
        if st.st_size != info.size or st.st_mtime_ns != info.mtime_ns:
            raise OSError(errno.EAGAIN, "the source file changed while it was copied: run again")


def file_md5(path: str, cancelled: Callable[[], bool] = lambda: False) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return md5_parts(fd, [os.fstat(fd).st_size], cancelled)[0]
    finally:
        os.close(fd)


def describe(exc: BaseException) -> str:
    """One line for a failed file."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return " ".join(text.split())


# ------------------------------------------------------------------------ progress


class PlainProgress:
    """A line every *interval* seconds (files, bytes, rate, ETA, errors) on *stream*."""

    def __init__(self, stream: Any, interval: float = 10.0) -> None:
        self.stream = stream
        self.interval = interval
        self.files = self.nbytes = self.done = self.done_bytes = self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def start(self, files: int, nbytes: int) -> None:
        self.files, self.nbytes = files, nbytes
        self._t0 = time.monotonic()
        if files:
            self._thread = threading.Thread(target=self._loop, name="goblinfs-sync-progress", daemon=True)
            self._thread.start()

    def file_done(self, nbytes: int, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.done_bytes += nbytes
            self.errors += 0 if ok else 1

    def line(self) -> str:
        with self._lock:
            done, done_bytes, errors = self.done, self.done_bytes, self.errors
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = done_bytes / elapsed
        left = (self.nbytes - done_bytes) / rate if rate > 0 else None
        eta = f"{int(left) // 60}:{int(left) % 60:02d}" if left is not None else "?"
        return (f"sync: {done}/{self.files} files, {human(done_bytes)}/{human(self.nbytes)}, "
                f"{human(rate)}/s, ETA {eta}, {errors} error(s)")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=self.stream, flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class RichProgress:
    """A rich progress bar on a terminal: files, bytes, rate, ETA, errors so far."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
                             TextColumn("[red]{task.fields[errors]}"), console=Console(stderr=True), transient=False)
        self._task: Any = None
        self._lock = threading.Lock()
        self.files = self.done = self.errors = 0

    def start(self, files: int, nbytes: int) -> None:
        self.files = files
        self._bar.start()
        self._task = self._bar.add_task("sync", total=nbytes or None, files=f"0/{files} files", errors="")

    def file_done(self, nbytes: int, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.errors += 0 if ok else 1
            errors = f"{self.errors} error(s)" if self.errors else ""
            self._bar.update(self._task, advance=nbytes, files=f"{self.done}/{self.files} files", errors=errors)

    def stop(self) -> None:
        self._bar.stop()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_report(report: Report) -> Iterable[str]:
    """The human summary (stdout) of a run."""
    if report.dry_run:
        for name in report.would_copy:
            yield f"would copy {name}"
        for name in report.would_delete:
            yield f"would delete {name}"
        yield (f"dry run: {report.to_copy} file(s) ({human(report.bytes_to_copy)}) would be copied, "
               f"{report.to_delete} item(s) deleted; {report.up_to_date} up to date")
        return
    rate = report.bytes_copied / report.seconds if report.seconds > 0 else 0.0
    parts = [f"copied {report.copied} file(s), {human(report.bytes_copied)} in {report.seconds:.1f} s "
             f"({human(rate)}/s)"]
    if report.server_side:
        parts.append(f"{report.server_side} server-side")
    parts.append(f"{report.up_to_date} up to date")
    if report.checksum_differed:
        parts.append(f"{len(report.checksum_differed)} differed by checksum")
    if report.dirs_created:
        parts.append(f"{report.dirs_created} directory(ies) made")
    if report.to_delete:
        parts.append(f"{report.deleted} of {report.to_delete} deleted")
    parts.append(f"{len(report.failed)} failed")
    yield "sync: " + ", ".join(parts)
    if report.delete_skipped:
        yield f"sync: --delete skipped: {report.delete_skipped}"
    if report.interrupted:
        yield "sync: interrupted; run the same command again to carry on"


# ------------------------------------------------------------------------ the command


def run_command(src_spec: str, dst_spec: str, options: Options, *, as_json: bool = False,
                progress: str = "auto", interval: float = 10.0, metrics_port: int | None = None) -> int:
    """``goblinfs sync``: open both endpoints, run, print the summary; the exit status.

    0: everything copied and verified (or up to date); 1: some file failed (listed on stderr);
    2: an endpoint cannot be used (one line); 128+N: stopped by signal N (SIGINT, SIGTERM) after
    the copies in flight ended or were abandoned cleanly.  A second signal exits at once,
    removing the temporary files of the copies still running (Swift publishes nothing
    unfinished: an SLO upload cut there leaves segments for ``goblinfs gc``).
    """
    import signal
    import sys

    jobs: list[Sync] = []
    stopped_by: list[int] = []
    stop_metrics: list[Callable[[], None]] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if not jobs:  # still opening the endpoints: nothing was written yet
            os.write(2, b"goblinfs sync: stopped before anything was copied\n")
            os._exit(128 + signum)
        if stopped_by:
            jobs[0].remove_temp_files()
            os.write(2, b"goblinfs sync: stopped at once\n")
            os._exit(128 + signum)
        stopped_by.append(signum)
        jobs[0].cancel()
        os.write(2, b"goblinfs sync: stopping: no new files; copies in flight end or are abandoned "
                    b"(signal again to exit at once)\n")

    def fail(message: str) -> int:
        print(f"goblinfs sync: {message}", file=sys.stderr)
        return 2

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            src = open_endpoint(src_spec)
            dst = open_endpoint(dst_spec, create=not options.dry_run, missing_ok=options.dry_run)
        except SyncError as exc:
            return fail(str(exc))
        tty = sys.stderr.isatty()
        sink: ProgressSink
        if progress == "none" or (progress == "auto" and as_json and not tty):
            sink = NoProgress()
        elif progress == "bar" or (progress == "auto" and tty):
            sink = RichProgress()
        else:
            sink = PlainProgress(sys.stderr, interval)
        if metrics_port is not None:  # Prometheus figures at 127.0.0.1:PORT while it runs (goblinfs.metrics)
            from .metrics import SyncMetrics, serve

            figures = SyncMetrics()
            try:
                stop_metrics.append(serve(f"127.0.0.1:{metrics_port}", figures.registry).close)
            except (OSError, ValueError) as exc:
                figures.close()
                return fail(f"--metrics-port {metrics_port}: cannot listen on 127.0.0.1:{metrics_port}: {exc}")
            stop_metrics.append(figures.close)
            sink = figures.wrap(sink)

        def say(line: str) -> None:
            print(f"goblinfs sync: {line}", file=sys.stderr, flush=True)

        try:
            jobs.append(Sync(src, dst, options, sink, say))
        except SyncError as exc:
            return fail(str(exc))
        try:
            report = jobs[0].run()
        except Exception as exc:  # a listing failed: nothing was copied
            log.debug("sync failed", exc_info=True)
            return fail(describe(exc))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for stop in stop_metrics:
            stop()
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        for line in format_report(report):
            print(line)
    sys.stdout.flush()
    for name, error in report.failed:
        print(f"goblinfs sync: FAILED {name}: {error}", file=sys.stderr)
    if stopped_by:
        return 128 + stopped_by[0]
    return 1 if report.failed else 0
