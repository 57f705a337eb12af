"""BasicFileStorage: a store in a local directory, MediaGoblin's reference behaviour, made safe.

Beyond MediaGoblin:

* Writes through ``get_file`` and ``copy_local_to_storage`` go to a hidden temporary file in
  the target directory (``.goblinfs-tmp-*``; a clean name can never start with a dot, so it
  cannot collide) which is fsynced and renamed into place on close: readers never see a half
  written file, and a crash keeps the old content.
* Every operation walks the path one directory file descriptor at a time with
  ``O_NOFOLLOW``: a symlink planted inside ``base_dir`` is never followed, so nothing reaches
  outside ``base_dir`` (``ELOOP`` instead).  ``get_local_path`` refuses a path that leaves
  ``base_dir`` through a symlink.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import stat as stat_mod
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from . import (
    Entry,
    ExactPath,
    InvalidFilepath,
    NoWebServing,
    PublishOnClose,
    Space,
    StorageInterface,
    resolve_components,
)

log = logging.getLogger(__name__)

#: Prefix of the temporary files written aside; hidden from listings.
TMP_PREFIX = ".goblinfs-tmp-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def parse_mode(mode: str) -> tuple[str, bool]:
    """Check an ``io.FileIO`` mode; return (kind in 'rwax', plus).  ValueError when invalid."""
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or any(c not in "rwaxb+" for c in mode) or len(set(mode)) != len(mode):
        raise ValueError(f"invalid mode: {mode!r}")
    return kinds[0], "+" in mode


def local_etag(st: os.stat_result) -> str:
    """An ETag for a local file: changes whenever the content can have changed."""
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


class FileObjectAwareFile(io.FileIO):
    """A raw binary file whose ``write`` also takes a readable file object (streamed).

    As MediaGoblin's: ``write`` returns None whichever it is given.
    """

    # Returns None, not io.FileIO's count: MediaGoblin's contract (see above) over the base class's.
    def write(self, data: Any) -> None:  # type: ignore[override]
        if hasattr(data, "read"):
            shutil.copyfileobj(data, self)
        else:
            view = memoryview(data)
            while view:
                written = super().write(view)
                if written is None:  # pragma: no cover - only for non-blocking fds
                    continue
                view = view[written:]


class AtomicWriteFile(PublishOnClose, FileObjectAwareFile):
    """A file written aside and published (fsync, rename into place) by ``close``.

    ``discard()`` drops it instead; leaving a ``with`` block through an exception discards.
    """

    def __init__(self, dir_fd: int, tmp_name: str, final_name: str, mode: str, exclusive: bool,
                 mtime_ns: int | None = None, file_mode: int | None = None) -> None:
        self._done = True
        fd = os.open(tmp_name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        super().__init__(fd, mode, closefd=True)
        self._dir_fd = os.dup(dir_fd)
        self._tmp_name = tmp_name
        self._final_name = final_name
        self._exclusive = exclusive
        self._done = False
        self.mtime_ns = mtime_ns
        self.file_mode = file_mode

    def close(self) -> None:
        if self._done or self.closed:
            super().close()
            return
        self._done = True
        try:
            self.flush()
            if self.file_mode is not None:
                os.fchmod(self.fileno(), self.file_mode)
            if self.mtime_ns is not None:
                os.utime(self.fileno(), ns=(self.mtime_ns, self.mtime_ns))
            os.fsync(self.fileno())
            super().close()
            if self._exclusive:
                # link() fails with EEXIST instead of replacing: 'x' mode stays exclusive.
                os.link(self._tmp_name, self._final_name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd,
                        follow_symlinks=False)
                os.unlink(self._tmp_name, dir_fd=self._dir_fd)
            else:
                os.rename(self._tmp_name, self._final_name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except BaseException:
            self._cleanup()
            raise
        finally:
            os.close(self._dir_fd)

    def discard(self) -> None:
        """Drop what was written; the old content (if any) stays."""
        if self._done:
            return
        self._done = True
        super().close()
        self._cleanup()
        os.close(self._dir_fd)

    def _cleanup(self) -> None:
        if not super().closed:
            super().close()
        with suppress(OSError):
            os.unlink(self._tmp_name, dir_fd=self._dir_fd)



class BasicFileStorage(StorageInterface):
    """A store in the local directory ``base_dir``, served at ``base_url`` if given.

    ``base_dir`` and ``base_url`` are kept exactly as given (MediaGoblin's tests check
    this); ``base_dir`` should be absolute.  Extra keyword arguments are ignored.
    """

    local_storage = True

    def __init__(self, base_dir: str, base_url: str | None = None, **kwargs: Any) -> None:
        self.base_dir = base_dir
        self.base_url = base_url

    def __repr__(self) -> str:
        return f"BasicFileStorage({self.base_dir!r})"

    # ------------------------------------------------------------------ path walking

    def _resolve_filepath(self, filepath: Sequence[str]) -> str:
        """The local path of filepath (components cleaned), not checked for symlinks."""
        return os.path.join(self.base_dir, *resolve_components(filepath))

    @contextmanager
    def _dir(self, components: Sequence[str], create: bool = False) -> Iterator[int]:
        """Yield an fd of the directory base_dir/components, never following a symlink."""
        fd = os.open(self.base_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in components:
                try:
                    next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=fd)
                    next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError:
                    # Either a file on the way, or a symlink (O_NOFOLLOW|O_DIRECTORY gives ENOTDIR).
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat_mod.S_ISLNK(st.st_mode):
                        raise OSError(errno.ELOOP, "symlinks are not followed in a store", name) from None
                    raise
                os.close(fd)
                fd = next_fd
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _parent(self, filepath: Sequence[str], create: bool = False) -> Iterator[tuple[int, str]]:
        """Yield (fd of the parent directory, last component) for a non-empty filepath."""
        components = resolve_components(filepath)
        if not components:
            raise IsADirectoryError(errno.EISDIR, "the store root is a directory", self.base_dir)
        with self._dir(components[:-1], create=create) as fd:
            yield fd, components[-1]

    def _lstat(self, filepath: Sequence[str]) -> os.stat_result:
        components = resolve_components(filepath)
        if not components:
            return os.stat(self.base_dir)
        with self._dir(components[:-1]) as fd:
            return os.stat(components[-1], dir_fd=fd, follow_symlinks=False)

    # ------------------------------------------------------------------ MediaGoblin API

    def file_exists(self, filepath: Sequence[str]) -> bool:
        """True if a file or directory exists at filepath (symlinks are not followed)."""
        try:
            st = self._lstat(filepath)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False
            raise
        return stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISDIR(st.st_mode)

    def get_file(self, filepath: Sequence[str], mode: str = "r") -> FileObjectAwareFile:
        """A raw binary file for filepath; parent directories are created when writing.

        Read mode opens the file itself.  Every mode that writes works on a copy aside that
        ``close()`` renames into place; ``'x'`` fails with FileExistsError if the file exists
        (at open and again at close).
        """
        kind, plus = parse_mode(mode)
        if kind == "r" and not plus:
            with self._parent(filepath) as (dir_fd, name):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                return _checked_regular(FileObjectAwareFile(fd, "rb", closefd=True))
        return self._open_aside(filepath, kind, plus)

    def _open_aside(self, filepath: Sequence[str], kind: str, plus: bool,
                    mtime_ns: int | None = None, file_mode: int | None = None) -> AtomicWriteFile:
        with self._parent(filepath, create=True) as (dir_fd, name):
            existing: int | None = None
            try:
                existing = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                if kind == "r":
                    raise
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise OSError(errno.ELOOP, "symlinks are not followed in a store", name) from None
                raise
            try:
                if existing is not None:
                    st = os.fstat(existing)
                    if stat_mod.S_ISDIR(st.st_mode):
                        raise IsADirectoryError(errno.EISDIR, "is a directory", name)
                    if kind == "x":
                        raise FileExistsError(errno.EEXIST, "file exists", name)
                tmp_name = f"{TMP_PREFIX}{uuid.uuid4().hex}"
                tmp_fd = os.open(tmp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o666, dir_fd=dir_fd)
                try:
                    if existing is not None and kind in "ar":
                        _copy_fd(existing, tmp_fd)
                        os.fchmod(tmp_fd, stat_mod.S_IMODE(os.fstat(existing).st_mode))
                finally:
                    os.close(tmp_fd)
            finally:
                if existing is not None:
                    os.close(existing)
            file_mode_str = {"r": "rb+", "w": "wb+" if plus else "wb", "x": "wb+" if plus else "wb",
                             "a": "ab+" if plus else "ab"}[kind]
            try:
                return AtomicWriteFile(dir_fd, tmp_name, name, file_mode_str, exclusive=(kind == "x"),
                                       mtime_ns=mtime_ns, file_mode=file_mode)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp_name, dir_fd=dir_fd)
                raise

    def delete_file(self, filepath: Sequence[str], *, keep_parent: bool = True, seen: Entry | None = None) -> None:
        """Delete the file at filepath: FileNotFoundError if missing, IsADirectoryError for a directory.

        Directories are real here: the parent always stays (``keep_parent`` and ``seen`` are hints only).
        """
        with self._parent(filepath) as (dir_fd, name):
            os.unlink(name, dir_fd=dir_fd)

    def delete_dir(self, dirpath: Sequence[str], recursive: bool = False, *, keep_parent: bool = True) -> bool:
        """Delete the directory at dirpath; True on success, False otherwise (never OSError).

        Non-recursive: only an empty directory (``keep_parent`` is a hint only: the parent
        stays).  Recursive: everything in it too (symlinks inside are removed, never
        followed).  The store root is never deleted recursively.
        """
        components = resolve_components(dirpath)
        try:
            if not components:
                if recursive:
                    return False
                os.rmdir(self.base_dir)
                return True
            with self._parent(ExactPath(components)) as (dir_fd, name):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat_mod.S_ISDIR(st.st_mode):
                    return False
                if recursive:
                    shutil.rmtree(name, dir_fd=dir_fd)
                else:
                    os.rmdir(name, dir_fd=dir_fd)
            return True
        except OSError as exc:
            log.debug("delete_dir %s (recursive=%s): %s", components, recursive, exc)
            return False

    def file_url(self, filepath: Sequence[str]) -> str:
        """urljoin(base_url, cleaned path); NoWebServing without a base_url."""
        if not self.base_url:
            raise NoWebServing()
        return urllib.parse.urljoin(self.base_url, "/".join(resolve_components(filepath)))

    def get_local_path(self, filepath: Sequence[str]) -> str:
        """The local path of filepath (it need not exist).

        InvalidFilepath if an existing part of it is a symlink leading outside base_dir.
        """
        path = self._resolve_filepath(filepath)
        base = os.path.realpath(self.base_dir)
        real = os.path.realpath(path)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise InvalidFilepath(f"{path} leads outside the store through a symlink")
        return path

    def get_file_size(self, filepath: Sequence[str]) -> int:
        """Size in bytes of the file at filepath; FileNotFoundError if missing."""
        st = self._lstat(filepath)
        if stat_mod.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, "symlinks are not followed in a store", self._resolve_filepath(filepath))
        return st.st_size

    def copy_locally(self, filepath: Sequence[str], dest_path: str) -> None:
        """Copy the stored file to dest_path (into it, if a directory), with its permission bits."""
        if os.path.isdir(dest_path):
            dest_path = os.path.join(dest_path, resolve_components(filepath)[-1])
        with self.get_file(filepath, "rb") as source:
            with open(dest_path, "wb") as dest:
                _copy_fd(source.fileno(), dest.fileno())
            os.chmod(dest_path, stat_mod.S_IMODE(os.fstat(source.fileno()).st_mode))

    def copy_local_to_storage(self, filename: str, filepath: Sequence[str]) -> None:
        """Copy the local file filename into the store (parents created), atomically, keeping its mode."""
        self.store_local_file(filename, filepath)

    # ------------------------------------------------------------- filesystem extension

    def store_local_file(self, filename: str, filepath: Sequence[str], mtime_ns: int | None = None, *,
                         new: bool = False, upload_id: str | None = None) -> Entry:
        """Store filename at filepath atomically (mode bits kept, optional mtime); its new Entry.

        ``new=True``: never replaces an existing file (FileExistsError).  *upload_id* is
        accepted and ignored: a local store leaves nothing behind (``discard_upload`` and
        ``collect_garbage`` have nothing to do).
        """
        with open(filename, "rb") as source:
            st = os.fstat(source.fileno())
            dest = self._open_aside(filepath, "x" if new else "w", False, mtime_ns=mtime_ns,
                                    file_mode=stat_mod.S_IMODE(st.st_mode))
            try:
                _copy_fd(source.fileno(), dest.fileno())
            except BaseException:
                dest.discard()
                raise
            dest.close()
        return self.stat(filepath)

    def list_dir(self, dirpath: Sequence[str]) -> list[Entry]:
        """Entries of the directory dirpath; symlinks and special files are left out."""
        components = resolve_components(dirpath)
        with self._dir(components) as fd:
            entries: list[Entry] = []
            with os.scandir(fd) as it:
                for item in it:
                    name = item.name
                    if name.startswith(TMP_PREFIX):
                        continue
                    try:
                        entry = _entry(name, item.stat(follow_symlinks=False))
                    except FileNotFoundError:
                        continue
                    if entry is None:
                        log.debug("list_dir %s: leaving out %s (not a file or directory)", components, name)
                        continue
                    entries.append(entry)
            return entries

    def stat(self, filepath: Sequence[str]) -> Entry:
        """Entry of the file or directory at filepath; FileNotFoundError if missing."""
        components = resolve_components(filepath)
        st = self._lstat(filepath)
        entry = _entry(components[-1] if components else "", st)
        if entry is None:
            raise OSError(errno.ELOOP, "not a regular file or directory (symlinks are not followed)",
                          self._resolve_filepath(filepath))
        return entry

    def read_range(self, filepath: Sequence[str], offset: int, length: int) -> bytes:
        """Up to length bytes from offset."""
        with self.get_file(filepath, "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def move(self, src: Sequence[str], dst: Sequence[str]) -> None:
        """rename(2) semantics within the store; parents of dst are created."""
        with self._parent(src) as (src_fd, src_name), self._parent(dst, create=True) as (dst_fd, dst_name):
            # lstat first so a missing source is reported even if dst's parent was just created.
            os.stat(src_name, dir_fd=src_fd, follow_symlinks=False)
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)

    def make_dir(self, dirpath: Sequence[str], *, new: bool = False) -> None:
        """Create the directory (and missing parents); FileExistsError if something is there."""
        with self._parent(dirpath, create=True) as (dir_fd, name):
            os.mkdir(name, 0o777, dir_fd=dir_fd)

    def set_mtime(self, filepath: Sequence[str], mtime_ns: int) -> None:
        """Set the mtime (atime too, to the same value) of a file or directory."""
        components = resolve_components(filepath)
        if not components:
            os.utime(self.base_dir, ns=(mtime_ns, mtime_ns))
            return
        with self._parent(ExactPath(components)) as (dir_fd, name):
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def space(self) -> Space:
        """statvfs of base_dir."""
        sv = os.statvfs(self.base_dir)
        total = sv.f_blocks * sv.f_frsize
        free = sv.f_bavail * sv.f_frsize
        return Space(total=total, used=total - sv.f_bfree * sv.f_frsize, free=free, objects=None)

    def open_fd(self, filepath: Sequence[str], flags: int, mode: int = 0o666) -> int:
        """Open the backing file itself (for the mount's direct I/O); symlinks never followed."""
        create = bool(flags & os.O_CREAT)
        with self._parent(filepath, create=create) as (dir_fd, name):
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        return fd


def _checked_regular(f: FileObjectAwareFile) -> FileObjectAwareFile:
    if stat_mod.S_ISDIR(os.fstat(f.fileno()).st_mode):
        f.close()
        raise IsADirectoryError(errno.EISDIR, "is a directory")
    return f


def _entry(name: str, st: os.stat_result) -> Entry | None:
    """The Entry of a regular file or directory (None for anything else).  Called once per file
    of every local listing: positional arguments, which a dataclass takes faster than keywords."""
    mode = st.st_mode
    if stat_mod.S_ISREG(mode):
        return Entry(name, False, st.st_size, st.st_mtime_ns, local_etag(st))
    if stat_mod.S_ISDIR(mode):
        return Entry(name, True, 0, st.st_mtime_ns, None)
    return None


def _copy_fd(src: int, dst: int) -> None:
    """Copy all of src (from its start) to dst, in the kernel where it can."""
    offset = 0
    while True:
        try:
            copied = os.copy_file_range(src, dst, 1 << 30, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            break
        if copied == 0:
            return
        offset += copied
    # Fallback: plain reads and writes.
    while True:
        chunk = os.pread(src, 4 * 1048576, offset)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            written = os.pwrite(dst, view, offset)
            view = view[written:]
            offset += written
