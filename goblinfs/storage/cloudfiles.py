"""goblinfs.storage.cloudfiles - MediaGoblin's CloudFilesStorage, on OpenStack Swift.

MediaGoblin's own backend used python-cloudfiles (Python 2 only, dead since 2013); this one
speaks to Swift (or Rackspace Cloud Files, which is Swift) through python-swiftclient and
accepts MediaGoblin's configuration keys (``cloudfiles_user``, ``cloudfiles_api_key``,
``cloudfiles_container``, ``cloudfiles_host`` = the auth URL, ``cloudfiles_use_servicenet``)
plus Keystone options.

How the store is laid out in the container:

* An object's name is ``'/'.join(resolve_components(filepath))``.
* **mtime** is kept where a container *listing* returns it, so a directory can be listed
  with its mtimes in one request: the Content-Type gets a parameter,
  ``image/jpeg;goblinfs_mtime=1764201001.123456789`` (seconds, 9 decimals, exact integer
  nanoseconds), and the swift CLI/rclone header ``X-Object-Meta-Mtime`` holds the same string.
  Objects without the parameter take X-Object-Meta-Mtime when a HEAD was made anyway
  (``stat``), else the listing's ``last_modified``.  The parameter never shows in
  :attr:`Entry.content_type`.
* **Directories** follow the swift CLI/Horizon convention: pseudo-directories by the ``/``
  delimiter, and ``make_dir`` writes a zero-byte marker ``name/`` of type
  ``application/directory`` (markers carry no Content-Type parameter, so other tools still
  recognise them; their mtime is in X-Object-Meta-Mtime).  An ``application/directory``
  object without the trailing slash (svfs/cloudfuse) is read as a directory too.  When a
  name is both a file and a directory (Swift allows ``a`` next to ``a/b``), the directory
  wins in ``list_dir``, ``stat`` and ``move`` (logged once); the hidden file can still be
  read or deleted by its name.  Directory entries from ``list_dir`` have mtime 0 (a
  listing rolls the marker into its ``subdir`` entry); ``stat`` reads the marker's mtime.
* **Large objects** (bigger than ``segment_size``, or than the cluster's max_file_size) are
  Static Large Objects: segments ``<object>/<upload id>/<index:08d>`` in the container
  ``<container>_segments`` (the upload id from :func:`~goblinfs.storage.new_upload_id`, or
  the caller's, starts with the UTC time), then the manifest.  Replacing or deleting an SLO
  deletes its segments (what a replacement replaces is read just before the PUT that
  replaces it, and only from a response that is an SLO manifest); moving one copies only the
  manifest.  The Entry etag of an SLO is the one HEAD reports (the SLO etag, MD5 of the
  segments' etags), which listings give as ``slo_etag``.  ``discard_upload`` deletes the
  segments of an upload that never finished; ``collect_garbage`` those no manifest
  references, past a grace period.
* **Dynamic Large Objects** written by other tools (``swift upload --use-dlo``: a zero-byte
  manifest with ``X-Object-Manifest: container/prefix``): listings show them as 0 bytes, so
  ``list_dir`` HEADs the zero-byte files of a listing (in parallel, only those) for their
  real size; reads go through Swift's DLO GET; deleting or replacing one deletes every
  object under its prefix (as the swift CLI does); moving one copies the manifest.
* **Retries and timeouts**: see :mod:`goblinfs.storage.swift.session` (per attempt
  ``timeout`` 10 s, per request ``retry_deadline`` 25 s, jittered back-off).
* Written data is spooled to a temporary file in ``staging_dir`` and uploaded on
  ``close()``; reads stream (ranged GETs on seek).  Nothing is held whole in memory.

The code is split by concern in :mod:`goblinfs.storage.swift`: ``session`` (connections,
auth, errors, retries), ``listing`` (listings and metadata), ``largeobjects`` (SLO/DLO,
segments) and ``io`` (file objects).  This module holds the store itself and re-exports the
names other modules and tests import from here.
"""

from __future__ import annotations

import enum
import errno
import io
import logging
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, BinaryIO, Literal, overload

from requests.exceptions import RequestException
from swiftclient.client import ClientException, Connection

from . import (
    NAME_MAX,
    Entry,
    NoWebServing,
    Space,
    StorageConfigError,
    StorageInterface,
    Upload,
    resolve_components,
)
from . import Error as StorageError
from . import NotImplementedError as StorageNotImplementedError
from .swift.io import READ_CHUNK, SwiftReader, SwiftWriter, parse_mode
from .swift.keystone import KeystoneLogin, normalize_interface
from .swift.largeobjects import (
    DEFAULT_SEGMENT_SIZE,
    HASH_CHUNK,
    SEND_CHUNK,
    LargeObjects,
    SegmentStream,
    SegmentUploader,
    _HashingBody,
    _md5_range,
    _Segments,
)
from .swift.listing import (
    DIRECTORY_TYPE,
    MTIME_PARAM,
    dlo_prefix,
    entry_from_headers,
    entry_from_listing,
    format_mtime,
    guess_type,
    header_meta,
    is_directory_type,
    is_slo,
    iter_listing,
    listing_etag,
    maybe_dlo,
    maybe_slo,
    parse_listing_time,
    parse_mtime,
    split_content_type,
)
from .swift.plainstream import PLAIN_STREAMS, PlainStream
from .swift.session import (
    DEFAULT_RETRY_DEADLINE,
    DEFAULT_TIMEOUT,
    AuthenticationFailed,
    SwiftSession,
    _AuthRefused,
    _Connection,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE", "DIRECTORY_TYPE", "HASH_CHUNK", "MTIME_PARAM", "READ_CHUNK", "SEND_CHUNK",
    "AuthenticationFailed", "CloudFileStorage", "CloudFilesStorage", "SegmentStream", "SegmentUploader",
    "SwiftReader", "SwiftSession", "SwiftWriter", "format_mtime", "is_directory_type", "listing_etag",
    "parse_listing_time", "parse_mtime", "split_content_type",
    "_AuthRefused", "_Connection", "_HashingBody", "_Segments",
]

log = logging.getLogger(__name__)

#: list_dir HEADs at most this many zero-byte files of one listing to find DLO manifests
#: (more: only those with segments in <container>_segments/<name>/).
DLO_HEAD_LIMIT = 32
#: Threads uploading segments / copying and deleting objects in parallel.
DEFAULT_WORKERS = 4
#: Swift defaults, used when GET /info does not answer.
DEFAULT_MAX_FILE_SIZE = 5368709122
DEFAULT_MAX_OBJECT_NAME_LENGTH = 1024
DEFAULT_LISTING_LIMIT = 10000
DEFAULT_MAX_MANIFEST_SEGMENTS = 1000

_TRUE = {"1", "true", "yes", "on"}


class _Head(enum.Enum):
    """The type of ``_HEAD`` (one value: a sentinel the type checker can tell apart)."""

    HEAD = enum.auto()


#: ``_upload``'s default for ``old``: HEAD the object to find what it replaces.
_HEAD = _Head.HEAD
_AUTH_VERSIONS = {"1": "1.0", "1.0": "1.0", "2": "2.0", "2.0": "2.0", "3": "3", "3.0": "3"}


@overload
def _int_option(name: str, value: Any, default: int, minimum: int = 0) -> int: ...


@overload
def _int_option(name: str, value: Any, default: None, minimum: int = 0) -> int | None: ...


def _int_option(name: str, value: Any, default: int | None, minimum: int = 0) -> int | None:
    """An integer option: default when None or ''; StorageConfigError when not an integer or below minimum."""
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise StorageConfigError(f"{name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise StorageConfigError(f"{name} must be at least {minimum}, not {number}")
    return number


def _float_option(name: str, value: Any, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        number = float(str(value).strip())
    except ValueError:
        raise StorageConfigError(f"{name} must be a number, not {value!r}") from None
    if number <= 0:
        raise StorageConfigError(f"{name} must be positive, not {number}")
    return number



def _keystone_login(auth_url: str, user: str | None, password: str | None, project: str | None,
                    project_domain: str | None, user_domain: str | None, credential_id: str | None,
                    credential_secret: str | None, region: str | None, endpoint_type: str | None,
                    servicenet: bool, timeout: float) -> KeystoneLogin:
    """The Keystone v3 login of a store's keys (StorageConfigError when they do not make one).

    ``cloudfiles_user = project:user`` names the project when ``project_name`` is not given (as
    swiftclient reads ``tenant:user``).  ``cloudfiles_use_servicenet`` (Rackspace's private
    network) selects the ``internal`` endpoint; it contradicts another ``endpoint_type``.
    """
    interface = normalize_interface(endpoint_type)
    if servicenet:
        if endpoint_type and interface != "internal":
            raise StorageConfigError(f"cloudfiles_use_servicenet = true selects the internal endpoint, "
                                     f"but endpoint_type is {endpoint_type!r}")
        interface = "internal"
    if user and not project and ":" in user and not (credential_id or credential_secret):
        project, user = user.split(":", 1)
    return KeystoneLogin(auth_url, user=user, password=password, project_name=project,
                         project_domain_name=project_domain, user_domain_name=user_domain,
                         application_credential_id=credential_id,
                         application_credential_secret=credential_secret, region_name=region,
                         interface=interface, timeout=timeout)


class CloudFileStorage(StorageInterface):
    """A MediaGoblin store in one container of OpenStack Swift (python-swiftclient).

    Keys (all may be strings, as from a config file): ``cloudfiles_user``,
    ``cloudfiles_api_key``, ``cloudfiles_container``, ``cloudfiles_host`` (the auth URL),
    ``cloudfiles_use_servicenet``; ``auth_version`` ('1.0' or '3'); with Keystone (3):
    ``project_name`` (or ``tenant_name``), ``project_domain_name``, ``user_domain_name`` (both
    ``Default`` when not given), or ``application_credential_id`` and
    ``application_credential_secret`` instead of user, password and project; ``region_name``,
    ``endpoint_type`` (public, internal or admin; ``cloudfiles_use_servicenet = true`` means
    internal, and is refused with auth 1.0); ``base_url``; ``segment_size`` (bytes);
    ``retries``, ``timeout``, ``retry_deadline`` (seconds; see :mod:`goblinfs.storage.swift.session`),
    ``staging_dir``, ``workers``, ``verify_segments``.
    Other keys are ignored.

    The container is created when missing.  Each thread gets its own Connection (they share
    the auth token); transient failures are retried with jittered back-off within
    ``retry_deadline`` (25 s) with ``timeout`` (10 s) per attempt, an expired token renewed.
    A refused login raises :class:`AuthenticationFailed`, an unreachable server
    :class:`~goblinfs.storage.StorageUnavailable`.
    """

    local_storage = False

    def __init__(self, cloudfiles_user: str | None = None, cloudfiles_api_key: str | None = None,
                 cloudfiles_container: str | None = None, cloudfiles_host: str | None = None,
                 cloudfiles_use_servicenet: Any = None, *, auth_version: Any = "1.0",
                 project_name: str | None = None, tenant_name: str | None = None,
                 project_domain_name: str | None = None, user_domain_name: str | None = None,
                 region_name: str | None = None, endpoint_type: str | None = None,
                 base_url: str | None = None, segment_size: Any = None, retries: Any = None,
                 timeout: Any = None, retry_deadline: Any = None, staging_dir: str | None = None,
                 workers: Any = None, application_credential_id: str | None = None,
                 application_credential_secret: str | None = None,
                 verify_segments: Any = None, **kwargs: Any) -> None:
        version = _AUTH_VERSIONS.get(str(auth_version or "1.0").strip().lower().lstrip("v"))
        if version is None:
            raise StorageConfigError(f"auth_version must be 1.0 or 3, not {auth_version!r}")
        if version == "2.0":
            raise StorageConfigError("auth_version 2.0: Keystone's v2.0 API is gone since 2018 (Queens); "
                                     "use auth_version = 3")
        required = [("cloudfiles_container", cloudfiles_container), ("cloudfiles_host", cloudfiles_host)]
        if version == "1.0":  # Keystone checks its own (a password or an application credential)
            required += [("cloudfiles_user", cloudfiles_user), ("cloudfiles_api_key", cloudfiles_api_key)]
        missing = [key for key, value in required if not value]
        if missing:
            raise StorageConfigError(f"CloudFileStorage needs {', '.join(missing)}")
        self.container = str(cloudfiles_container)
        if "/" in self.container:
            raise StorageConfigError(f"cloudfiles_container {self.container!r} may not contain '/'")
        self.segment_container = f"{self.container}_segments"
        self.auth_url = str(cloudfiles_host)
        self.user = str(cloudfiles_user or application_credential_id)
        self.auth_version = version
        self.base_url = base_url
        self.segment_size = _int_option("segment_size", segment_size, DEFAULT_SEGMENT_SIZE, minimum=1)
        #: At most this many retries of one request (None: as many as fit in retry_deadline).
        self.retries = _int_option("retries", retries, None)
        #: Connect/read timeout of one attempt of a request.
        self.timeout = _float_option("timeout", timeout, DEFAULT_TIMEOUT)
        #: A request failing in a transient way is retried until this many seconds after it began.
        self.retry_deadline = _float_option("retry_deadline", retry_deadline, DEFAULT_RETRY_DEADLINE)
        self.workers = _int_option("workers", workers, DEFAULT_WORKERS, minimum=1)
        #: MD5 each SLO segment while sending it and compare with the ETag Swift computed (a
        #: second check of what TCP/TLS already check; ~1.6 s of CPU per GiB).  Objects sent
        #: whole are always hashed first, so Swift refuses a damaged one before it replaces anything.
        self.verify_segments = str(verify_segments or "").strip().lower() in _TRUE
        self.staging_dir = staging_dir or tempfile.gettempdir()
        os.makedirs(self.staging_dir, exist_ok=True)
        os_options = {key: value for key, value in (
            ("project_name", project_name), ("tenant_name", tenant_name),
            ("project_domain_name", project_domain_name), ("user_domain_name", user_domain_name),
            ("region_name", region_name), ("endpoint_type", endpoint_type)) if value}
        servicenet = cloudfiles_use_servicenet is True or str(cloudfiles_use_servicenet).strip().lower() in _TRUE
        keystone = None
        if version == "3":
            keystone = _keystone_login(
                self.auth_url, cloudfiles_user, cloudfiles_api_key, project_name or tenant_name,
                project_domain_name, user_domain_name, application_credential_id, application_credential_secret,
                region_name, endpoint_type, servicenet, self.timeout or DEFAULT_TIMEOUT)
        elif servicenet:
            raise StorageConfigError(
                "cloudfiles_use_servicenet = true needs Keystone (auth_version = 3, where it selects the internal "
                "endpoint); with auth_version 1.0 the auth server alone gives the storage URL: set it to false")
        elif application_credential_id or application_credential_secret:
            raise StorageConfigError("application_credential_id/_secret need auth_version = 3")
        if kwargs:
            log.debug("CloudFileStorage ignores keys %s", sorted(kwargs))
        self.large = LargeObjects(self)
        self._plain_slots = threading.BoundedSemaphore(PLAIN_STREAMS)
        self.session = SwiftSession(auth_url=self.auth_url, user=self.user, key=str(cloudfiles_api_key),
                                    auth_version=version, os_options=os_options, container=self.container,
                                    retries=self.retries, timeout=self.timeout or DEFAULT_TIMEOUT,
                                    retry_deadline=self.retry_deadline or DEFAULT_RETRY_DEADLINE,
                                    workers=self.workers or DEFAULT_WORKERS, keystone=keystone)
        self._segments_ready = False
        self._collisions_logged: set[str] = set()
        self._ensure_container(self.container)
        self._caps = self._fetch_capabilities()
        slo = self._caps.get("slo") or {}
        swift = self._caps.get("swift") or {}
        self.max_file_size = int(swift.get("max_file_size") or DEFAULT_MAX_FILE_SIZE)
        self.max_object_name_length = int(swift.get("max_object_name_length") or DEFAULT_MAX_OBJECT_NAME_LENGTH)
        self.listing_limit = int(swift.get("container_listing_limit") or DEFAULT_LISTING_LIMIT)
        self.slo_enabled = "slo" in self._caps or not self._caps
        self.max_manifest_segments = int(slo.get("max_manifest_segments") or DEFAULT_MAX_MANIFEST_SEGMENTS)
        self.min_segment_size = int(slo.get("min_segment_size") or 1)

    def __repr__(self) -> str:
        return f"<CloudFileStorage container={self.container!r} auth_url={self.auth_url!r} user={self.user!r}>"

    # ------------------------------------------------------------ connections, errors

    @property
    def _auth(self) -> tuple[str, str] | None:
        return self.session._auth

    def _new_connection(self) -> Connection:
        return self.session.new_connection()

    def _conn(self) -> Connection:
        """This thread's Connection (the mount calls the store from several threads)."""
        return self.session.conn()

    def _map_error(self, exc: BaseException, name: str | None, conn: Connection | None) -> BaseException | None:
        return self.session.map_error(exc, name, conn)

    def _call(self, method: str, *args: Any, name: str | None = None, conn: Connection | None = None,
              passthrough: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Run a swiftclient Connection method with the session's error mapping (and retries)."""
        return self.session.call(method, *args, name=name, conn=conn, passthrough=passthrough, **kwargs)

    def _put_chunked(self, container: str, name: str,
                     chunks: Iterable[memoryview] | Callable[[], Iterable[memoryview]], **kwargs: Any) -> str | None:
        return self.session.put_chunked(container, name, chunks, **kwargs)

    def _executor(self) -> ThreadPoolExecutor:
        return self.session.executor()

    def _parallel(self, func: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return self.session.parallel(func, items)

    def close(self) -> None:
        """Stop the worker threads and drop this thread's connection (the store stays usable)."""
        self.session.close()

    def _ensure_container(self, container: str) -> None:
        try:
            self._call("head_container", container)
        except FileNotFoundError:
            log.info("creating Swift container %s", container)
            self._call("put_container", container)

    def _ensure_segment_container(self) -> None:
        if not self._segments_ready:
            self._ensure_container(self.segment_container)
            self._segments_ready = True

    def _fetch_capabilities(self) -> dict[str, Any]:
        conn = self.session.conn()

        def fetch(timeout: float) -> Any:
            conn.set_timeout(timeout)
            try:
                return conn.get_capabilities()
            except Exception:
                conn.close()
                raise

        try:
            caps = self.session.retrying(fetch, what="GET /info")
        except (ClientException, RequestException, ValueError) as exc:
            log.warning("Swift at %s gives no /info (%s); assuming Swift's default limits",
                        self.session.where(conn), exc)
            return {}
        finally:
            # get_capabilities leaves an /info response on the shared HTTP session.
            conn.close()
        return caps if isinstance(caps, dict) else {}

    # ----------------------------------------------------------------------- names

    def _components(self, filepath: Sequence[str]) -> list[str]:
        return resolve_components(filepath)

    def _check_new_name(self, name: str, components: Sequence[str]) -> None:
        if len(name.encode("utf-8")) > self.max_object_name_length:
            raise OSError(errno.ENAMETOOLONG, f"object name longer than {self.max_object_name_length} bytes", name)
        for component in components:
            if len(component.encode("utf-8")) > NAME_MAX:
                raise OSError(errno.ENAMETOOLONG, f"name component longer than {NAME_MAX} bytes", component)

    def _file_name(self, filepath: Sequence[str]) -> str:
        components = self._components(filepath)
        if not components:
            raise IsADirectoryError(errno.EISDIR, "the store root is a directory", "")
        name = "/".join(components)
        if len(name.encode("utf-8")) > self.max_object_name_length:
            raise OSError(errno.ENAMETOOLONG, f"object name longer than {self.max_object_name_length} bytes", name)
        return name

    # ---------------------------------------------------------------- low-level ops

    def _head(self, name: str) -> dict[str, str] | None:
        """HEAD of the object; None when it does not exist."""
        try:
            return self._call("head_object", self.container, name, name=name)
        except FileNotFoundError:
            return None

    def _iter_listing(self, prefix: str, delimiter: str | None = None, limit: int | None = None,
                      container: str | None = None) -> Iterator[dict[str, Any]]:
        """The container listing under prefix, paged with marker (each page retried on its own)."""
        def page(marker: str | None, want: int) -> list[dict[str, Any]]:
            return self._call("get_container", container or self.container, marker=marker, limit=want,
                              prefix=prefix or None, delimiter=delimiter, name=prefix or None)[1]

        return iter_listing(page, self.listing_limit, limit)

    def _dir_probe(self, name: str) -> dict[str, Any] | None:
        """The first listing item under ``name/`` (marker or child), None when there is none."""
        for item in self._iter_listing(name + "/", limit=1):
            return item
        return None

    def _not_found(self, name: str) -> OSError:
        """The error for a name that is no object: IsADirectoryError for a directory."""
        if self._dir_probe(name) is not None:
            return IsADirectoryError(errno.EISDIR, "is a directory", name)
        return FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)

    @staticmethod
    def _is_slo(headers: Mapping[str, str] | None) -> bool:
        return is_slo(headers)

    def _slo_segments(self, name: str) -> list[tuple[str, str]]:
        return self.large.slo_segments(name)

    def _segments_of(self, name: str, headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
        return self.large.segments_of(name, headers)

    def _delete_segments(self, segments: Sequence[tuple[str, str]], wait: bool = True) -> int:
        return self.large.delete_segments(segments, wait)

    def _delete_object(self, name: str, headers: Mapping[str, str] | None = None) -> None:
        """DELETE name; a large object's segments (SLO or DLO) go too.  FileNotFoundError when missing."""
        if headers is None:
            headers = self._head(name)
            if headers is None:
                raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
        segments = self._segments_of(name, headers)
        self._call("delete_object", self.container, name, name=name)
        self._delete_segments(segments)

    def _copy(self, src: str, dst: str, headers: Mapping[str, str] | None = None) -> None:
        """Server-side copy; an SLO or DLO manifest is copied as a manifest (its segments are
        shared), a DLO's X-Object-Manifest passed in *headers*."""
        copy_headers = {"X-Copy-From": "/" + urllib.parse.quote(f"{self.container}/{src}")}
        copy_headers.update(headers or {})
        self._call("put_object", self.container, dst, None, headers=copy_headers,
                   query_string="multipart-manifest=get", name=src)

    # --------------------------------------------------------------------- entries

    @staticmethod
    def _entry_from_headers(leaf: str, headers: Mapping[str, str]) -> Entry:
        return entry_from_headers(leaf, headers)

    @staticmethod
    def _entry_from_listing(leaf: str, item: Mapping[str, Any]) -> Entry:
        return entry_from_listing(leaf, item)

    def _dir_entry(self, leaf: str, name: str, probe: Mapping[str, Any]) -> Entry:
        mtime_ns = 0
        if probe.get("name") == name + "/":
            marker = self._head(name + "/")
            if marker is not None:
                mtime_ns = self._entry_from_headers(leaf, marker).mtime_ns
        return Entry(leaf, True, 0, mtime_ns)

    def _log_collision(self, name: str) -> None:
        if name not in self._collisions_logged:
            self._collisions_logged.add(name)
            log.warning("Swift container %s has both a file and a directory named %s: showing the directory",
                        self.container, name)

    def _stat_name(self, name: str, leaf: str) -> Entry | None:
        headers = self._head(name)
        if headers is not None:
            entry = self._entry_from_headers(leaf, headers)
            if entry.is_dir:
                return entry
            probe = self._dir_probe(name)
            if probe is None:
                return entry
            self._log_collision(name)
            return self._dir_entry(leaf, name, probe)
        probe = self._dir_probe(name)
        return None if probe is None else self._dir_entry(leaf, name, probe)

    # ----------------------------------------------------------------------- upload

    def _base_segment_size(self) -> int:
        """segment_size within what the cluster allows."""
        return max(min(self.segment_size, self.max_file_size), self.min_segment_size)

    def _effective_segment_size(self, size: int) -> int:
        segment = self._base_segment_size()
        if size > segment and -(-size // segment) > self.max_manifest_segments:
            segment = -(-size // self.max_manifest_segments)
            if segment > self.max_file_size:
                raise OSError(errno.EFBIG, f"{size} bytes is more than Swift can store as one large object")
        return segment

    def _upload(self, path: str | None, name: str, *, content_type: str, mtime_ns: int | None = None,
                meta: Mapping[str, str] | None = None, exclusive: bool = False,
                old: Mapping[str, str] | None | Literal[_Head.HEAD] = _HEAD, stream: SegmentStream | None = None,
                upload_id: str | None = None) -> Entry:
        """Upload the local file path as object name (SLO when large); return its Entry.

        ``old`` is the HEAD of the object being replaced if the caller has it (None: there is
        none); by default it is fetched here.  ``stream``: the data is in this stream's
        segments already (path is None); only the manifest is written.
        """
        components = name.split("/")
        self._check_new_name(name, components)
        if old is _HEAD:
            old = self._head(name)
        if old is not None and exclusive:
            raise FileExistsError(errno.EEXIST, "file exists", name)
        if old is not None and is_directory_type(old.get("content-type")):
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        local = ""  # the local file sent, unless the data is in the stream's segments
        if stream is not None:
            size = stream.accepted
        elif path is not None:
            local, size = path, os.path.getsize(path)
        else:
            raise TypeError("_upload needs a local file or a stream")
        segment_size = self._effective_segment_size(size)
        if size > segment_size and not self.slo_enabled:
            raise OSError(errno.EFBIG, "object too large and this Swift has no SLO support", name)
        if mtime_ns is None:
            mtime_ns = time.time_ns()
        mtime = format_mtime(mtime_ns)
        headers = dict(meta or {})
        headers["X-Object-Meta-Mtime"] = mtime
        if exclusive:
            headers["If-None-Match"] = "*"
        full_type = f"{content_type};{MTIME_PARAM}={mtime}"
        # What the new object replaces is read just before the PUT that replaces it (for an SLO
        # after its segments were sent, which may take long): a writer that replaced the old
        # object meanwhile has its segments deleted, not leaked.
        replaced: list[tuple[str, str]] = []
        segments: Sequence[tuple[str, str, int]] = []
        try:
            if stream is not None:
                segments = stream.segments
                replaced = [] if exclusive else self._segments_of(name, self._head(name))
                etag = self._put_manifest(name, segments, full_type, headers)
            elif size > segment_size:
                self._ensure_segment_container()
                uploader = SegmentUploader(self, local, name, segment_size, upload_id)
                try:
                    uploader.send(size)
                    segments = uploader.results()
                    replaced = [] if exclusive else self._segments_of(name, self._head(name))
                    etag = self._put_manifest(name, segments, full_type, headers)
                except BaseException:
                    uploader.discard(wait=False)
                    raise
                uploader.close()
            else:
                replaced = [] if exclusive else self._segments_of(name, old)
                etag = self._upload_single(local, name, size, full_type, headers)
        except ClientException as exc:
            if exc.http_status == 412 and exclusive:
                raise FileExistsError(errno.EEXIST, "file exists", name) from None
            mapped = self._map_error(exc, name, None)
            if mapped is None:
                raise
            raise mapped from exc
        ours = {(self.segment_container, segment) for segment, _, _ in segments}
        self._delete_segments([segment for segment in replaced if segment not in ours])
        log.debug("uploaded %s (%d bytes, %s)", name, size,
                  "streamed SLO" if stream is not None else "SLO" if size > segment_size else "single PUT")
        return Entry(components[-1], False, size, mtime_ns, etag, content_type, plain=not segments)

    def _upload_single(self, path: str, name: str, size: int, full_type: str, headers: Mapping[str, str]) -> str:
        # Hashed first, so Swift checks the ETag before the object replaces the old one.
        md5 = _md5_range(path, 0, size)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            etag = self._call("put_object", self.container, name, _HashingBody(fd, 0, size, hashing=False),
                              content_length=size, etag=md5, content_type=full_type, headers=dict(headers), name=name,
                              passthrough=(412,))
        finally:
            os.close(fd)
        if etag and etag != md5:
            raise OSError(errno.EIO, f"Swift stored {name} with ETag {etag}, expected {md5}", name)
        return md5

    def _put_manifest(self, name: str, segments: Sequence[tuple[str, str, int]], full_type: str,
                      headers: Mapping[str, str]) -> str:
        return self.large.put_manifest(name, segments, full_type, headers)

    # ----------------------------------------------------------------- MediaGoblin API

    def file_exists(self, filepath: Sequence[str]) -> bool:
        """True if a file or a directory exists at filepath."""
        components = self._components(filepath)
        if not components:
            return True
        name = "/".join(components)
        return self._head(name) is not None or self._dir_probe(name) is not None

    def get_file(self, filepath: Sequence[str], mode: str = "r") -> BinaryIO:
        """A binary file object for filepath, in an ``io.FileIO`` mode.

        Read mode streams the object (seekable; FileNotFoundError when missing,
        IsADirectoryError for a directory).  Write modes spool to a file in staging_dir and
        upload on ``close()`` (an upload error is raised by close); 'a' and 'r+' start from
        the stored content; 'x' gives FileExistsError if the name exists (checked at open and
        at upload).  ``write`` takes bytes or a readable file object.
        """
        kind, plus = parse_mode(mode)
        name = self._file_name(filepath)
        if kind == "r" and not plus:
            return self._open_reader(name)
        return self._open_writer(name, kind, plus)

    def _open_reader(self, name: str, container: str | None = None) -> io.BufferedReader:
        """A buffered SwiftReader of the object (one GET now; resumed if the connection breaks)."""
        return io.BufferedReader(self._open_raw_reader(name, container), buffer_size=READ_CHUNK)

    def _open_raw_reader(self, name: str, container: str | None = None) -> SwiftReader:
        conn = self._new_connection()
        try:
            headers, body = self._call("get_object", container or self.container, name, resp_chunk_size=READ_CHUNK,
                                       name=name, conn=conn)
        except FileNotFoundError:
            conn.close()
            if container is not None:
                raise
            raise self._not_found(name) from None
        except BaseException:
            conn.close()
            raise
        if is_directory_type(headers.get("content-type")):
            body.close()
            conn.close()
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        return SwiftReader(self, name, conn, headers, body, container=container)

    def _open_writer(self, name: str, kind: str, plus: bool) -> SwiftWriter:
        components = name.split("/")
        self._check_new_name(name, components)
        headers = self._head(name)
        if headers is None:
            if self._dir_probe(name) is not None:
                if kind == "x":
                    raise FileExistsError(errno.EEXIST, "file exists", name)
                raise IsADirectoryError(errno.EISDIR, "is a directory", name)
            if kind == "r":
                raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
        elif is_directory_type(headers.get("content-type")):
            raise (FileExistsError(errno.EEXIST, "file exists", name) if kind == "x"
                   else IsADirectoryError(errno.EISDIR, "is a directory", name))
        elif kind == "x":
            raise FileExistsError(errno.EEXIST, "file exists", name)
        content_type = guess_type(components[-1])
        meta: dict[str, str] = {}
        fd, spool = tempfile.mkstemp(prefix="goblinfs-spool-", dir=self.staging_dir)
        os.close(fd)
        try:
            if headers is not None and kind in "ar":
                content_type = split_content_type(headers.get("content-type"))[0] or content_type
                meta = header_meta(headers)
                meta.pop("X-Object-Manifest", None)
                meta.pop("x-object-manifest", None)
                self._download(name, spool)
            file_mode = {"r": "rb+", "w": "wb+" if plus else "wb", "x": "wb+" if plus else "wb",
                         "a": "ab+" if plus else "ab"}[kind]
            return SwiftWriter(self, name, spool, file_mode, content_type=content_type, meta=meta,
                               exclusive=(kind == "x"), dirty=(kind in "wx"))
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(spool)
            raise

    def _download(self, name: str, dest_path: str) -> None:
        """Copy the object into dest_path, streamed (a broken connection is resumed where it broke)."""
        buffer = bytearray(READ_CHUNK)
        with self._open_raw_reader(name) as reader, open(dest_path, "wb") as dest:
            while count := reader.readinto(buffer):
                dest.write(memoryview(buffer)[:count])

    def _file_headers(self, name: str) -> Mapping[str, str]:
        """HEAD of a file object: FileNotFoundError if missing, IsADirectoryError for a directory marker."""
        headers = self._head(name)
        if headers is None:
            raise self._not_found(name)
        if is_directory_type(headers.get("content-type")):
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        return headers

    def delete_file(self, filepath: Sequence[str], *, keep_parent: bool = True, seen: Entry | None = None) -> None:
        """Delete the file (an SLO with its segments); FileNotFoundError if missing, IsADirectoryError for a dir.

        The file's directory stays, as on a disk: when it was the last object under its
        pseudo-directory, a marker is left there (``keep_parent=False`` skips the check, for a
        caller that knows the directory holds other entries).  ``seen`` a plain object (no
        manifest, as listed): one DELETE, no HEAD first.  Should it have become a large object
        meanwhile, only its manifest goes and its segments wait for the garbage collection.
        """
        name = self._file_name(filepath)
        if seen is not None and seen.plain and not seen.is_dir:
            self._call("delete_object", self.container, name, name=name)
        else:
            self._delete_object(name, self._file_headers(name))
        if keep_parent:
            self._keep_parent(name)

    def _keep_parent(self, name: str) -> None:
        """Leave a marker for name's directory when nothing else is under it (never for the root).

        Swift has no directories: a pseudo-directory vanishes with its last object, and
        MediaGoblin's cleanup (delete the file, then ``delete_dir`` each level) expects it to
        remain, as a directory on disk does.  One listing; one PUT only when it was the last.
        Best effort: the delete or move before it is done, so Swift failing here (past the
        retries) is a warning, never an error of that delete; the directory may then vanish,
        as every Swift pseudo-directory does.
        """
        parent, _, _ = name.rpartition("/")
        if not parent:
            return
        try:
            if next(iter(self._iter_listing(parent + "/", limit=1)), None) is not None:
                return
            log.debug("keeping directory %s after its last entry went", parent)
            self._put_marker(parent + "/", None)
        except (OSError, StorageError) as exc:
            log.warning("directory %s not kept after its last entry went: %s", parent, exc)

    def delete_dir(self, dirpath: Sequence[str], recursive: bool = False, *, keep_parent: bool = True) -> bool:
        """Delete the directory; True on success, False when missing, not empty (non-recursive) or the root.

        Non-recursive: only a directory holding nothing but its marker, and never data: when
        the ``name/`` object (or an ``application/directory`` object ``name``) holds bytes or
        is not of type application/directory, NotADirectoryError (ENOTDIR) and nothing is
        deleted.  Recursive: every object under it (SLO and DLO segments too), then the marker.
        """
        components = self._components(dirpath)
        if not components:
            return False
        name = "/".join(components)
        prefix = name + "/"
        dir_object = self._head(name)
        if dir_object is not None and not is_directory_type(dir_object.get("content-type")):
            dir_object = None  # a file of that name is not the directory
        if not recursive:
            items = list(self._iter_listing(prefix, limit=2))
            if any(item.get("name") != prefix for item in items):
                return False
            if not items and dir_object is None:
                return False
            # rmdir never deletes data: a "name/" object that is no marker holds a file's bytes.
            for item in items:
                if not is_directory_type(item.get("content_type")) or int(item.get("bytes") or 0):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory: the object name/ holds data", prefix)
            if dir_object is not None and int(dir_object.get("content-length") or 0):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory: the directory object holds data", name)
            for item in items:
                with suppress(FileNotFoundError):
                    self._call("delete_object", self.container, item["name"], name=item["name"])
            if dir_object is not None:
                with suppress(FileNotFoundError):
                    self._call("delete_object", self.container, name, name=name)
            if keep_parent:
                self._keep_parent(name)
            return True
        items = list(self._iter_listing(prefix))
        if not items and dir_object is None:
            return False

        def delete(item: Mapping[str, Any]) -> None:
            name = item["name"]
            headers: Mapping[str, str] | None = {}
            if maybe_slo(item) or maybe_dlo(item):
                headers = self._head(name)
                if headers is None:
                    return
            with suppress(FileNotFoundError):
                self._delete_object(name, headers)

        # Children first, the marker last, so an interrupted delete leaves a directory.
        children = [item for item in items if item.get("name") != prefix]
        self._parallel(delete, children)
        for item in items:
            if item.get("name") == prefix:
                with suppress(FileNotFoundError):
                    self._call("delete_object", self.container, prefix, name=prefix)
        if dir_object is not None:
            with suppress(FileNotFoundError):
                self._call("delete_object", self.container, name, name=name)
        if keep_parent:
            self._keep_parent(name)
        return True

    def file_url(self, filepath: Sequence[str]) -> str:
        """urljoin(base_url, cleaned path) when base_url is set, else the object's storage URL."""
        components = self._components(filepath)
        path = "/".join(components)
        if self.base_url:
            return urllib.parse.urljoin(self.base_url, path)
        storage_url = self._conn().url or (self._auth[0] if self._auth else None)
        if not storage_url:
            raise NoWebServing()
        return f"{storage_url.rstrip('/')}/{urllib.parse.quote(self.container)}/{urllib.parse.quote(path)}"

    def get_local_path(self, filepath: Sequence[str]) -> str:
        """Not a local store: raises the storage NotImplementedError."""
        raise StorageNotImplementedError()

    def get_file_size(self, filepath: Sequence[str]) -> int:
        """Size in bytes (an SLO's full size); FileNotFoundError if missing, IsADirectoryError for a dir."""
        name = self._file_name(filepath)
        headers = self._file_headers(name)
        return int(headers.get("content-length") or 0)

    def copy_locally(self, filepath: Sequence[str], dest_path: str) -> None:
        """Download the object to dest_path (into it, if a directory), streamed in chunks."""
        name = self._file_name(filepath)
        if os.path.isdir(dest_path):
            dest_path = os.path.join(dest_path, name.rsplit("/", 1)[-1])
        try:
            self._download(name, dest_path)
        except FileNotFoundError:
            raise self._not_found(name) from None

    def copy_local_to_storage(self, filename: str, filepath: Sequence[str]) -> None:
        """Upload the local file filename to filepath (streamed; SLO when large)."""
        self.store_local_file(filename, filepath)

    # ------------------------------------------------------------ filesystem extension

    def store_local_file(self, filename: str, filepath: Sequence[str], mtime_ns: int | None = None, *,
                         new: bool = False, upload_id: str | None = None) -> Entry:
        """Upload filename to filepath with its mtime (default: now); return the new Entry.

        The Entry's etag is the one stat and list_dir report (an SLO's too).  ``new=True``: one
        PUT with ``If-None-Match: *``; FileExistsError if an object is already there.
        *upload_id* names the segments of a large file (``<name>/<upload id>/<index>``).
        """
        return self._store_local(filename, self._file_name(filepath), mtime_ns, new, upload_id=upload_id)

    def _store_local(self, filename: str | None, name: str, mtime_ns: int | None, new: bool,
                     stream: SegmentStream | None = None, upload_id: str | None = None) -> Entry:
        components = name.split("/")
        self._check_new_name(name, components)
        content_type = guess_type(components[-1])
        if new:
            # One PUT: If-None-Match: * makes Swift refuse (412) rather than replace an object
            # the caller did not know of (whose SLO segments would be left behind).
            return self._upload(filename, name, content_type=content_type, mtime_ns=mtime_ns, exclusive=True,
                                old=None, stream=stream, upload_id=upload_id)
        old = self._head(name)
        if old is None and self._dir_probe(name) is not None:
            raise IsADirectoryError(errno.EISDIR, "is a directory", name)
        return self._upload(filename, name, content_type=content_type, mtime_ns=mtime_ns, old=old, stream=stream,
                            upload_id=upload_id)

    def start_upload(self, filepath: Sequence[str], upload_id: str | None = None) -> Upload | None:
        """A SegmentStream: files larger than segment_size go up while they are being written.
        Its segments are ``<name>/<upload_id>/<index>`` (a new id when None)."""
        if not self.slo_enabled:
            return None
        name = self._file_name(filepath)
        self._check_new_name(name, name.split("/"))
        return SegmentStream(self, name, self._base_segment_size(), upload_id=upload_id)

    def stream_file(self, filepath: Sequence[str], mtime_ns: int, replaces: str | None = None) -> Upload | None:
        """A PlainStream: one chunked PUT fed while the file is written (``If-None-Match: *``
        when *replaces* is None; else a HEAD before its last chunk checks the ETag), or None
        when PLAIN_STREAMS are already under way."""
        name = self._file_name(filepath)
        self._check_new_name(name, name.split("/"))
        if not self._plain_slots.acquire(blocking=False):
            return None
        return PlainStream(self, name, mtime_ns, self._plain_slots, replaces)

    def read_upload(self, filepath: Sequence[str], upload_id: str, fd: int) -> tuple[int, str]:
        """Write the segments the upload *upload_id* of filepath has in the store into fd (crash
        recovery: goblinfs.storage.swift.recovery); (bytes, the SLO ETag they would make)."""
        from .swift.recovery import read_upload

        return read_upload(self, filepath, upload_id, fd)

    def discard_upload(self, filepath: Sequence[str], upload_id: str) -> int:
        """Delete every segment of the unfinished upload *upload_id* to filepath (all objects under
        ``<name>/<upload_id>/`` in the segments container); how many were deleted.  Idempotent.

        Segments that the object now at filepath references are kept: a finished upload is
        never undone (call it only for uploads that did not finish).
        """
        return self.large.discard_upload(self._file_name(filepath), upload_id)

    def collect_garbage(self, grace_seconds: float = 86400.0, dry_run: bool = False) -> list[str]:
        """Delete the segments in ``<container>_segments`` that no manifest of the container
        references and whose upload is older than *grace_seconds*; their names (with
        *dry_run*: the names that would be deleted).  See
        :meth:`goblinfs.storage.swift.largeobjects.LargeObjects.collect_garbage`.
        """
        return self.large.collect_garbage(grace_seconds, dry_run)

    def list_dir(self, dirpath: Sequence[str]) -> list[Entry]:
        """One directory's children from a delimiter listing, without a HEAD per object.

        ``subdir`` entries and ``application/directory`` objects are directories; a name that
        is both a file and a directory is listed as the directory.  FileNotFoundError when
        nothing is there, NotADirectoryError for a file.
        """
        components = self._components(dirpath)
        name = "/".join(components)
        prefix = name + "/" if components else ""
        entries: dict[str, Entry] = {}
        zero_byte: list[str] = []
        found = False
        for item in self._iter_listing(prefix, delimiter="/"):
            found = True
            if "subdir" in item:
                leaf = item["subdir"][len(prefix):].rstrip("/")
                if not leaf or "/" in leaf:
                    continue
                previous = entries.get(leaf)
                if previous is not None and not previous.is_dir:
                    self._log_collision(prefix + leaf)
                entries[leaf] = Entry(leaf, True, 0, previous.mtime_ns if previous and previous.is_dir else 0)
                continue
            leaf = item.get("name", "")[len(prefix):]
            if not leaf:
                continue  # the directory's own marker
            entry = self._entry_from_listing(leaf, item)
            previous = entries.get(leaf)
            if previous is not None and previous.is_dir and not entry.is_dir:
                self._log_collision(prefix + leaf)
                continue
            entries[leaf] = entry
            if maybe_dlo(item):
                zero_byte.append(leaf)
        if not found and components:
            headers = self._head(name)
            if headers is None:
                raise FileNotFoundError(errno.ENOENT, "no such directory", name)
            if not is_directory_type(headers.get("content-type")):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
        self._resolve_dlo_sizes(prefix, entries, [leaf for leaf in zero_byte if not entries[leaf].is_dir])
        return list(entries.values())

    def _resolve_dlo_sizes(self, prefix: str, entries: dict[str, Entry], leaves: list[str]) -> None:
        """Listings show a DLO manifest as 0 bytes: HEAD the zero-byte files (in parallel, only
        them) and take a DLO's real size, etag and mtime from its HEAD.

        A directory with more than DLO_HEAD_LIMIT zero-byte files would cost a HEAD per file
        (10,000 empty files: a minute): then only those with segments where the swift CLI and
        rclone put them (``<container>_segments/<name>/...``, one listing request) are HEADed.
        """
        if len(leaves) > DLO_HEAD_LIMIT:
            with_segments: set[str] = set()
            try:
                for item in self._iter_listing(prefix, delimiter="/", container=self.segment_container):
                    with_segments.add(str(item.get("subdir", ""))[len(prefix):].rstrip("/"))
            except FileNotFoundError:
                pass
            leaves = [leaf for leaf in leaves if leaf in with_segments]
        if not leaves:
            return
        for leaf, headers in zip(leaves, self._parallel(lambda leaf: self._head(prefix + leaf), leaves), strict=True):
            if headers is not None and dlo_prefix(headers) is not None:
                entries[leaf] = self._entry_from_headers(leaf, headers)

    def stat(self, filepath: Sequence[str]) -> Entry:
        """The Entry of a file (HEAD) or directory (marker or children); FileNotFoundError if missing."""
        components = self._components(filepath)
        if not components:
            return Entry("", True)
        name = "/".join(components)
        entry = self._stat_name(name, components[-1])
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
        return entry

    def stat_file(self, filepath: Sequence[str]) -> Entry:
        """The Entry of a file from one HEAD (a listing too only when nothing is there)."""
        name = self._file_name(filepath)
        return self._entry_from_headers(name.rsplit("/", 1)[-1], self._file_headers(name))

    def read_range(self, filepath: Sequence[str], offset: int, length: int, *, etag: str | None = None) -> bytes:
        """Up to length bytes from offset with one ranged GET (SLOs and DLOs too); b'' at or
        after the end.  *etag*: only from that version of the object (``If-Match``), else
        OSError(ESTALE) — bytes of two versions are never mixed."""
        if offset < 0 or length < 0:
            raise OSError(errno.EINVAL, "negative offset or length")
        name = self._file_name(filepath)
        if length == 0:
            return b""
        request = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if etag:
            request["If-Match"] = f'"{etag.strip(chr(34))}"'
        try:
            headers, body = self._call("get_object", self.container, name, headers=request, name=name,
                                       passthrough=(412, 416))
        except ClientException as exc:
            if exc.http_status == 412:
                raise OSError(errno.ESTALE, f"{name} changed (its ETag is no longer {etag})", name) from None
            return b""  # 416: offset at or past the end
        except FileNotFoundError:
            raise self._not_found(name) from None
        if "content-range" not in headers:
            # The whole object came back (a server that ignores Range).
            return body[offset:offset + length]
        return body

    def move(self, src: Sequence[str], dst: Sequence[str]) -> None:
        """Rename with server-side copies and deletes; never moves data through the client.

        A file's metadata (mtime) goes with it; an SLO's manifest is copied, its segments
        stay and now belong to dst.  A replaced SLO at dst loses its segments.  A directory
        moves every object under it (marker included).  Not atomic.
        """
        src_components = self._components(src)
        dst_components = self._components(dst)
        if not src_components:
            raise OSError(errno.EBUSY, "cannot move the store root", "")
        if not dst_components:
            raise OSError(errno.EBUSY, "cannot replace the store root", "")
        src_name = "/".join(src_components)
        dst_name = "/".join(dst_components)
        src_headers = self._head(src_name)
        src_is_file = src_headers is not None and not is_directory_type(src_headers.get("content-type"))
        if src_is_file and self._dir_probe(src_name) is not None:
            src_is_file = False  # the directory wins, as in stat
        if not src_is_file and src_headers is None and self._dir_probe(src_name) is None:
            raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", src_name)
        if src_name == dst_name:
            return
        self._check_new_name(dst_name, dst_components)
        if src_is_file:
            self._move_file(src_name, dst_name, src_headers or {})
        else:
            if dst_components[: len(src_components)] == src_components:
                raise OSError(errno.EINVAL, "cannot move a directory into itself", dst_name)
            self._move_dir(src_name, dst_name, src_headers)
        if src_components[:-1] != dst_components[:-1]:
            self._keep_parent(src_name)  # the source's directory stays, as after rename(2)

    def _move_file(self, src_name: str, dst_name: str, src_headers: Mapping[str, str]) -> None:
        dst_headers = self._head(dst_name)
        if (dst_headers is not None and is_directory_type(dst_headers.get("content-type"))) or \
                self._dir_probe(dst_name) is not None:
            raise IsADirectoryError(errno.EISDIR, "is a directory", dst_name)
        old_segments = self._segments_of(dst_name, dst_headers)
        if old_segments:  # never those dst will share with src (a copy of the same large object)
            kept = set(self._segments_of(src_name, src_headers))
            old_segments = [segment for segment in old_segments if segment not in kept]
        manifest = src_headers.get("x-object-manifest")
        self._copy(src_name, dst_name, {"X-Object-Manifest": manifest} if manifest else None)
        self._call("delete_object", self.container, src_name, name=src_name)
        self._delete_segments(old_segments)

    def _move_dir(self, src_name: str, dst_name: str, src_dir_object: Mapping[str, str] | None) -> None:
        src_prefix, dst_prefix = src_name + "/", dst_name + "/"
        dst_headers = self._head(dst_name)
        dst_dir_object = dst_headers is not None and is_directory_type(dst_headers.get("content-type"))
        dst_items = list(self._iter_listing(dst_prefix, limit=2))
        if dst_headers is not None and not dst_dir_object and not dst_items:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", dst_name)
        if any(item.get("name") != dst_prefix for item in dst_items):
            raise OSError(errno.ENOTEMPTY, "directory not empty", dst_name)
        items = list(self._iter_listing(src_prefix))
        names = [item["name"] for item in items]
        for name in names:
            new_name = dst_prefix + name[len(src_prefix):]
            self._check_new_name(new_name, new_name.rstrip("/").split("/"))
        self._parallel(lambda name: self._copy(name, dst_prefix + name[len(src_prefix):]), names)
        if src_dir_object is not None and is_directory_type(src_dir_object.get("content-type")):
            self._copy(src_name, dst_name)
        self._parallel(lambda name: self._delete_quietly(name), names)
        if src_dir_object is not None and is_directory_type(src_dir_object.get("content-type")):
            self._delete_quietly(src_name)

    def _delete_quietly(self, name: str) -> None:
        with suppress(FileNotFoundError):
            self._call("delete_object", self.container, name, name=name)

    def _put_marker(self, marker: str, mtime_ns: int | None, exclusive: bool = False) -> None:
        mtime = format_mtime(time.time_ns() if mtime_ns is None else mtime_ns)
        headers = {"X-Object-Meta-Mtime": mtime}
        if exclusive:
            headers["If-None-Match"] = "*"
        try:
            self._call("put_object", self.container, marker, b"", content_length=0, content_type=DIRECTORY_TYPE,
                       headers=headers, name=marker, passthrough=(412,))
        except ClientException:  # 412: If-None-Match refused, the marker exists
            raise FileExistsError(errno.EEXIST, "file exists", marker.rstrip("/")) from None

    def make_dir(self, dirpath: Sequence[str], *, new: bool = False) -> None:
        """Create the directory marker ``name/`` (application/directory), and markers for missing parents.

        FileExistsError when something exists there; NotADirectoryError when a parent is a file.
        ``new=True``: the caller saw nothing there and the parent existing: one PUT of the marker.
        """
        components = self._components(dirpath)
        if not components:
            raise FileExistsError(errno.EEXIST, "the store root exists", "")
        name = "/".join(components)
        self._check_new_name(name + "/", components)
        if new:
            self._put_marker(name + "/", None, exclusive=True)
            return
        if self._stat_name(name, components[-1]) is not None:
            raise FileExistsError(errno.EEXIST, "file exists", name)
        missing = [name]
        for depth in range(len(components) - 1, 0, -1):
            parent = "/".join(components[:depth])
            entry = self._stat_name(parent, components[depth - 1])
            if entry is None:
                missing.append(parent)
                continue
            if not entry.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", parent)
            break
        now = time.time_ns()
        for directory in reversed(missing):
            self._put_marker(directory + "/", now)

    def _post_file_meta(self, name: str, content_type: str, mtime_ns: int, kept: Mapping[str, str]) -> None:
        """POST a file's mtime (Content-Type parameter and X-Object-Meta-Mtime) with the
        metadata *kept* (a POST replaces all of it)."""
        mtime = format_mtime(mtime_ns)
        post = dict(kept)
        post.update({"Content-Type": f"{content_type};{MTIME_PARAM}={mtime}", "X-Object-Meta-Mtime": mtime})
        self._call("post_object", self.container, name, post, name=name)

    def set_mtime(self, filepath: Sequence[str], mtime_ns: int) -> None:
        """Set the mtime of a file (Content-Type parameter and X-Object-Meta-Mtime, by POST) or a
        directory (its marker's X-Object-Meta-Mtime; a marker is created if it had none).

        Other metadata is re-sent (a POST replaces it); SLO manifests stay manifests.  The
        root has no mtime to set (ignored).
        """
        components = self._components(filepath)
        if not components:
            log.debug("set_mtime of the store root ignored")
            return
        name = "/".join(components)
        mtime = format_mtime(mtime_ns)
        headers = self._head(name)
        dir_object = headers is not None and is_directory_type(headers.get("content-type"))
        if headers is not None and not dir_object and self._dir_probe(name) is None:
            # A file: our Content-Type parameter (for listings) and the swift CLI header.
            content_type = split_content_type(headers.get("content-type"))[0] or guess_type(components[-1])
            self._post_file_meta(name, content_type, mtime_ns, header_meta(headers))
            return
        if headers is not None and dir_object:
            target = name  # an application/directory object without the slash
        else:
            if headers is None and self._dir_probe(name) is None:
                raise FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}", name)
            target = name + "/"
            headers = self._head(target)
            if headers is None:
                self._put_marker(target, mtime_ns)
                return
        post = header_meta(headers)
        post.update({"Content-Type": DIRECTORY_TYPE, "X-Object-Meta-Mtime": mtime})
        self._call("post_object", self.container, target, post, name=target)

    def space(self) -> Space:
        """From HEAD of the account: bytes and objects used; total/free from X-Account-Meta-Quota-Bytes."""
        headers = self._call("head_account")
        used = int(headers.get("x-account-bytes-used") or 0)
        objects = int(headers.get("x-account-object-count") or 0)
        quota_text = headers.get("x-account-meta-quota-bytes")
        quota = int(quota_text) if quota_text and quota_text.strip().isdigit() else None
        return Space(total=quota, used=used, free=None if quota is None else max(quota - used, 0), objects=objects)


#: MediaGoblin's class name.
CloudFilesStorage = CloudFileStorage
