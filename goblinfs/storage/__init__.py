"""goblinfs.storage - MediaGoblin's storage interface, exact, plus what a filesystem needs.

The MediaGoblin part (``StorageInterface``, the errors, ``clean_listy_filepath``,
``storage_system_from_config``) follows MediaGoblin's contract method for method: a
*filepath* is a list or tuple of components, and every component is cleaned with werkzeug's
``secure_filename`` before it touches a store, so a path written here maps byte for byte to
the one MediaGoblin would use.

The filesystem extension (``list_dir``, ``stat``, ``read_range``, ``move``, ``make_dir``,
``set_mtime``, ``store_local_file``, ``space``; ``start_upload``, ``discard_upload`` and
``collect_garbage`` with upload ids from :func:`new_upload_id`) is implemented by every
backend (the last three do nothing where a store leaves nothing behind).  A path
wrapped in :class:`ExactPath` is used as given (validated, not cleaned): that is how the
mount reaches objects written by other tools whose names are not clean.

This package knows nothing of POSIX file descriptors or FUSE.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, BinaryIO

from werkzeug.utils import secure_filename

log = logging.getLogger(__name__)

#: Chunk size of the generic copies, as MediaGoblin (ticket #419): 4 MiB.
COPY_CHUNK = 4 * 1048576

#: Longest name component a store accepts (bytes, UTF-8), as NAME_MAX.
NAME_MAX = 255


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write all of data into fd at offset: a short ``pwrite`` is continued, one that writes
    nothing is ENOSPC, errors raise (a short write is never taken for success)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no space left on device")
        done += written
    return done


class Error(Exception):
    """Base class of the storage errors."""


class InvalidFilepath(Error):
    """A filepath component cleans to nothing (or, for an ExactPath, is not a usable name)."""

    def __init__(self, message: str = "A filename component could not be resolved into a usable name.") -> None:
        super().__init__(message)


class NoWebServing(Error):
    """The store has no base_url, so it cannot give file URLs."""

    def __init__(self, message: str = "base_url not set, cannot provide file urls") -> None:
        super().__init__(message)


class NotImplementedError(Error):  # noqa: A001 - MediaGoblin's name, shadows the builtin on purpose
    """The store does not implement this feature (MediaGoblin's own class, not the builtin)."""

    def __init__(self, message: str = "This feature not implemented in this storage API implementation.") -> None:
        super().__init__(message)


class StorageConfigError(Error):
    """A storage section cannot be turned into a store (unknown class, bad or missing key)."""


class StorageUnavailable(Error):
    """The store cannot be reached or refused us (network down, login refused, 5xx after retries)."""


class ExactPath(tuple[str, ...]):
    """A filepath whose components are used exactly as given, never cleaned.

    Components are still validated: each must be a non-empty ``str`` that is not ``.`` or
    ``..`` and holds neither ``/`` nor NUL; otherwise :class:`InvalidFilepath`.  Plain lists
    and tuples keep MediaGoblin's behaviour (every component cleaned).
    """

    __slots__ = ()

    def __new__(cls, components: Iterable[str] = ()) -> ExactPath:
        return super().__new__(cls, components)

    def __repr__(self) -> str:
        return f"ExactPath({list(self)!r})"

    def child(self, name: str) -> ExactPath:
        return tuple.__new__(ExactPath, (*self, name))  # one per listed entry: no Python-level __new__

    @property
    def parent(self) -> ExactPath:
        return ExactPath(self[:-1])


def clean_listy_filepath(listy_filepath: Iterable[str]) -> list[str]:
    """Clean every component with werkzeug's ``secure_filename``; return a new list.

    Raises InvalidFilepath when any component cleans to the empty string.  Exactly
    MediaGoblin's function: ``['dir1/', 'foo/../nasty', 'linker.jpg']`` gives
    ``['dir1', 'foo_.._nasty', 'linker.jpg']``.
    """
    cleaned = [str(secure_filename(component)) for component in listy_filepath]
    if "" in cleaned:
        raise InvalidFilepath()
    return cleaned


def check_exact_component(name: str) -> str:
    """Validate one exact (uncleaned) name component; return it or raise InvalidFilepath."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidFilepath(f"not a usable name component: {name!r}")
    return name


def resolve_components(filepath: Sequence[str]) -> list[str]:
    """The components a store really uses for *filepath*.

    An :class:`ExactPath` is validated and used as is; anything else goes through
    :func:`clean_listy_filepath`, as in MediaGoblin.
    """
    if isinstance(filepath, ExactPath):
        return [check_exact_component(c) for c in filepath]
    if isinstance(filepath, (str, bytes)):
        # MediaGoblin would iterate a str character by character; that is never meant.
        raise InvalidFilepath(f"a filepath is a list of components, not {type(filepath).__name__} {filepath!r}")
    return clean_listy_filepath(filepath)


class PublishOnClose:
    """Mixin for written file objects that publish on ``close()`` and drop all on ``discard()``.

    Leaving a ``with`` block through an exception discards, so a failure never publishes a
    half-written file; a writer garbage-collected unclosed is discarded too.
    """

    _done: bool

    if TYPE_CHECKING:
        def close(self) -> None:
            """Publish (the file object's own close, e.g. ``io.FileIO``'s, after this mixin in the MRO)."""

    def discard(self) -> None:  # pragma: no cover - implemented by the classes using the mixin
        raise NotImplementedError()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):  # nothing to report to from a finalizer
                self.discard()


@dataclass(frozen=True, slots=True)
class Entry:
    """What a store knows about one name, from a listing or a stat, without extra requests.

    ``mtime_ns`` is the modification time in integer nanoseconds since the epoch (the one
    set with :meth:`StorageInterface.set_mtime`, else the store's last-modified time).
    ``etag`` changes whenever the content changes (MD5 on Swift; a size/mtime/inode token on
    local disk).  Directories have size 0 and may have no etag.
    ``plain``: the store saw an ordinary object, no large-object manifest (Swift; a hint that
    lets ``delete_file(..., seen=entry)`` skip its lookup; never part of equality).
    """

    name: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    etag: str | None = None
    content_type: str | None = None
    plain: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Space:
    """Capacity of a store, in bytes; ``None`` where the store sets no limit."""

    total: int | None
    used: int
    free: int | None
    objects: int | None = None


def new_upload_id() -> str:
    """A new upload id: UTC time to the second, then 16 random hex digits,
    ``20261201T142441Z-3f0c2a9d8e7b6a51``.  The time shows an upload's age (in segment names
    on Swift), the random part keeps ids unique.  Callers that journal their uploads choose
    the id with this and pass it to ``start_upload`` / ``store_local_file``."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:16]}"


class Upload:
    """A file handed to the store while it is being appended to (``StorageInterface.start_upload``).

    The writer appends with ``offer`` (never blocks; False when the store's window is full)
    or ``put`` (blocks until there is room), then ends with ``finish``, or ``read_back``
    (to go on writing elsewhere), or ``abort``.  Nothing is visible at the name before
    ``finish``; errors surface from offer/put/finish as OSError(EIO).
    """

    #: The writer should stage the first begin_at bytes and start the upload only past them.
    begin_at: int = 0
    #: Bytes appended so far.
    accepted: int = 0
    #: The id of this upload (``start_upload``'s, or a new one): ``discard_upload`` takes it.
    upload_id: str = ""

    @property
    def started(self) -> bool:
        """True once the first bytes were appended."""
        raise NotImplementedError

    def offer(self, data: bytes) -> bool:
        """Append data if the window has room (never blocks); False if it has none."""
        raise NotImplementedError

    def put(self, data: bytes) -> None:
        """Append data, waiting for room in the window."""
        raise NotImplementedError

    def put_file(self, fd: int, length: int) -> None:
        """Append bytes [0, length) of the open file fd."""
        raise NotImplementedError

    def finish(self, mtime_ns: int | None = None, new: bool = False) -> Entry:
        """Store what was appended at the name (as ``store_local_file``); its Entry."""
        raise NotImplementedError

    def read_back(self, fd: int) -> int:
        """Give up the upload, writing every byte appended so far into fd from offset 0."""
        raise NotImplementedError

    def abort(self) -> None:
        """Give up without waiting (nothing sent stays)."""
        raise NotImplementedError


class StorageInterface:
    """Local or remote store for media files; MediaGoblin's interface plus filesystem calls.

    A *filepath* is a list or tuple of components, for example ``['dir1', 'dir2',
    'file.jpg']``; each component is cleaned with :func:`clean_listy_filepath` (except in an
    :class:`ExactPath`).  Implementations take their own keyword arguments and passively
    accept extra ones (``**kwargs``), because config sections pass every key through.

    Missing files raise ``FileNotFoundError`` (an ``OSError``), as MediaGoblin's callers
    expect; ``delete_dir`` returns a bool instead.  ``BasicFileStorage`` is the reference.
    """

    #: Whether the files live on the local filesystem (``get_local_path`` works).
    local_storage = False

    def __raise_not_implemented(self) -> None:
        raise NotImplementedError()

    # ----------------------------------------------------------------- MediaGoblin API

    def file_exists(self, filepath: Sequence[str]) -> bool:
        """Return True if a file (or directory) exists at filepath, else False."""
        self.__raise_not_implemented()
        return False

    def get_file(self, filepath: Sequence[str], mode: str = "r") -> BinaryIO:
        """Return a binary file-like object for reading or writing filepath.

        Creates directories (buckets, whatever) as needed.  ``write`` accepts bytes or a
        readable file object, which is streamed.  A file opened for writing is published
        when it is closed; until then readers see the old content (or nothing).
        """
        self.__raise_not_implemented()
        raise AssertionError

    def delete_file(self, filepath: Sequence[str], *, keep_parent: bool = True, seen: Entry | None = None) -> None:
        """Delete the file (not directory) at filepath; FileNotFoundError when missing.

        The directory holding it stays, even when it is now empty, as on a disk (MediaGoblin's
        cleanup deletes the file, then each directory level with ``delete_dir``).  A store without
        real directories keeps it with a marker; ``keep_parent=False`` is a hint from a caller that
        knows the directory holds other entries, letting such a store skip the check.  ``seen``:
        the Entry the caller last got for this name (from a listing or stat); where it says
        ``plain``, a store may delete without looking first.
        """
        self.__raise_not_implemented()

    def delete_dir(self, dirpath: Sequence[str], recursive: bool = False, *, keep_parent: bool = True) -> bool:
        """Delete the directory at dirpath; return True on success, False otherwise.

        Without ``recursive`` the directory must be empty.  With it, everything inside is
        deleted too.  Its parent stays, as for :meth:`delete_file` (``keep_parent=False``: the
        same hint, from a caller that knows the parent holds other entries).
        """
        self.__raise_not_implemented()
        return False

    def file_url(self, filepath: Sequence[str]) -> str:
        """Return the URL at which this file is served."""
        self.__raise_not_implemented()
        return ""

    def get_unique_filepath(self, filepath: Sequence[str]) -> list[str]:
        """Return the cleaned filepath, made unique with a uuid4 prefix if it exists.

        One attempt, as MediaGoblin: ``['dir', 'f.jpg']`` → ``['dir', '<uuid4>-f.jpg']``
        when ``dir/f.jpg`` exists.
        """
        filepath = clean_listy_filepath(filepath)
        if self.file_exists(filepath):
            return filepath[:-1] + [f"{uuid.uuid4()}-{filepath[-1]}"]
        return filepath

    def get_local_path(self, filepath: Sequence[str]) -> str:
        """For local_storage stores, the local filesystem path of filepath."""
        self.__raise_not_implemented()
        return ""

    def get_file_size(self, filepath: Sequence[str]) -> int:
        """Return the size of the file at filepath in bytes; FileNotFoundError when missing."""
        self.__raise_not_implemented()
        return 0

    def copy_locally(self, filepath: Sequence[str], dest_path: str) -> None:
        """Copy the stored file at filepath to the local path dest_path (streamed)."""
        if self.local_storage:
            shutil.copy(self.get_local_path(filepath), dest_path)
            return
        with self.get_file(filepath, "rb") as source, open(dest_path, "wb") as dest:
            shutil.copyfileobj(source, dest, COPY_CHUNK)

    def copy_local_to_storage(self, filename: str, filepath: Sequence[str]) -> None:
        """Copy the local file filename into the store at filepath (streamed)."""
        with self.get_file(filepath, "wb") as dest, open(filename, "rb") as source:
            shutil.copyfileobj(source, dest, COPY_CHUNK)

    # --------------------------------------------------------- filesystem extension

    def list_dir(self, dirpath: Sequence[str]) -> list[Entry]:
        """List one directory in one call: an Entry per child, files and directories.

        FileNotFoundError when dirpath does not exist, NotADirectoryError when it is a file.
        The root is ``[]``.  Names are exact (as stored), unordered.
        """
        self.__raise_not_implemented()
        return []

    def stat(self, filepath: Sequence[str]) -> Entry:
        """Return the Entry of one file or directory; FileNotFoundError when missing."""
        self.__raise_not_implemented()
        raise AssertionError

    def start_upload(self, filepath: Sequence[str], upload_id: str | None = None) -> Upload | None:
        """An Upload to filepath fed while the file is written, or None if the store has none.

        Makes no request.  The store keeps its own window, so memory stays bounded.
        *upload_id* (from :func:`new_upload_id`; a new one when None) names what the upload
        leaves in the store before it finishes (Swift: its segments), so a caller that
        journals it can :meth:`discard_upload` it after a crash.
        """
        return None

    def stream_file(self, filepath: Sequence[str], mtime_ns: int, replaces: str | None = None) -> Upload | None:
        """An Upload storing filepath while it is written, or None (the store has none, or
        no room for one now): the caller then stores the file whole at the end.

        Makes no request before the first append.  The Upload's ``finish(mtime_ns)`` stores
        what was appended with that mtime (*mtime_ns* here is the one its first request
        carries), only if nothing is at filepath (*replaces* None) or the object there still
        has the ETag *replaces*; FileExistsError otherwise.  Anything it raises leaves the
        object at filepath as it was, except an object stored with other bytes than appended
        (OSError EIO), which the caller replaces.  ``abort`` stores nothing.
        """
        return None

    def discard_upload(self, filepath: Sequence[str], upload_id: str) -> int:
        """Delete what the unfinished upload *upload_id* to filepath left in the store (Swift:
        every segment of that upload); the number of objects deleted.  Idempotent (0 when
        nothing is left).  Data the object now at filepath uses is never deleted (a finished
        upload is not undone).  Stores that leave nothing behind return 0.
        """
        return 0

    def collect_garbage(self, grace_seconds: float = 86400.0, dry_run: bool = False) -> list[str]:
        """Delete what failed or abandoned uploads left behind and nothing references (Swift:
        segments no manifest of the store's container uses), if older than *grace_seconds*
        (never anything younger: an upload may still be in progress); the names deleted
        (with *dry_run*, the names that would be, deleting nothing).  Stores that leave
        nothing behind return [].
        """
        return []

    def stat_file(self, filepath: Sequence[str]) -> Entry:
        """Return the Entry of the file at filepath, in one request where the store can.

        FileNotFoundError when missing, IsADirectoryError when filepath is a directory.
        Cheaper than stat on Swift: no probe for a directory of the same name.
        """
        entry = self.stat(filepath)
        if entry.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        return entry

    def read_range(self, filepath: Sequence[str], offset: int, length: int) -> bytes:
        """Return up to length bytes from offset (fewer only at the end of the file)."""
        self.__raise_not_implemented()
        return b""

    def move(self, src: Sequence[str], dst: Sequence[str]) -> None:
        """Rename a file or a directory (with everything in it) from src to dst.

        An existing file at dst is replaced; an existing empty directory at dst is
        replaced by a directory; a non-empty one gives OSError(ENOTEMPTY).  Moving a
        directory into itself gives OSError(EINVAL).  Missing src: FileNotFoundError.
        """
        self.__raise_not_implemented()

    def make_dir(self, dirpath: Sequence[str], *, new: bool = False) -> None:
        """Create an empty directory that persists (parents created as needed).

        ``new=True`` tells the store that the caller has just seen nothing at dirpath and its
        parent existing, so it may skip its own checks (one request on Swift); it still never
        replaces what is there (FileExistsError).

        FileExistsError when something already exists at dirpath.
        """
        self.__raise_not_implemented()

    def set_mtime(self, filepath: Sequence[str], mtime_ns: int) -> None:
        """Set the modification time of a file or directory (integer nanoseconds)."""
        self.__raise_not_implemented()

    def store_local_file(self, filename: str, filepath: Sequence[str], mtime_ns: int | None = None, *,
                         new: bool = False, upload_id: str | None = None) -> Entry:
        """Store the local file filename at filepath in one step and return its new Entry.

        Like copy_local_to_storage, plus an optional mtime set with the data, and the
        resulting Entry (etag included) so callers need no extra stat.  ``new=True`` tells the
        store that the caller has just seen nothing at filepath, so it may skip its own checks
        (one PUT on Swift); an existing file is then never replaced: FileExistsError.
        *upload_id*: as for :meth:`start_upload` (the id of the segments of a large object on
        Swift); ignored by stores that leave nothing behind.
        """
        if new and self.file_exists(filepath):
            raise FileExistsError(errno.EEXIST, "file exists")
        self.copy_local_to_storage(filename, filepath)
        if mtime_ns is not None:
            self.set_mtime(filepath, mtime_ns)
        return self.stat(filepath)

    def space(self) -> Space:
        """Capacity and use of the store, for statfs."""
        self.__raise_not_implemented()
        raise AssertionError


def _import_component(path: str) -> Any:
    """Load ``module.path:attr`` as MediaGoblin's import_component does."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise StorageConfigError(f"storage_class {path!r} is not of the form module.path:ClassName")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise StorageConfigError(f"storage_class {path!r}: cannot import {module_name}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise StorageConfigError(f"storage_class {path!r}: {module_name} has no {attr}") from None


#: MediaGoblin's class paths, accepted as aliases of ours.
STORAGE_CLASS_ALIASES = {
    "mediagoblin.storage.filestorage:BasicFileStorage": "goblinfs.storage.filestorage:BasicFileStorage",
    "mediagoblin.storage:BasicFileStorage": "goblinfs.storage.filestorage:BasicFileStorage",
    "mediagoblin.storage.cloudfiles:CloudFilesStorage": "goblinfs.storage.cloudfiles:CloudFileStorage",
    "mediagoblin.storage.cloudfiles:CloudFileStorage": "goblinfs.storage.cloudfiles:CloudFileStorage",
    "mediagoblin.storage.mountstorage:MountStorage": "goblinfs.storage.mountstorage:MountStorage",
}

DEFAULT_STORAGE_CLASS = "goblinfs.storage.filestorage:BasicFileStorage"


def storage_system_from_config(config_section: Mapping[str, Any]) -> StorageInterface:
    """Build a store from a config section, as MediaGoblin does.

    ``storage_class`` (``module:Class``, default BasicFileStorage; MediaGoblin's class paths
    are aliases of ours) is popped; every other key is passed as a keyword argument.  A
    constructor that rejects its arguments gives StorageConfigError with the reason.
    """
    params = dict(config_section.items())
    class_path = str(params.pop("storage_class", DEFAULT_STORAGE_CLASS)).strip()
    class_path = STORAGE_CLASS_ALIASES.get(class_path, class_path)
    storage_class = _import_component(class_path)
    try:
        return storage_class(**params)
    except TypeError as exc:
        raise StorageConfigError(f"storage_class {class_path}: {exc}") from exc


from . import filestorage  # noqa: E402,F401 - as MediaGoblin, importing storage makes it reachable
