"""The connection to Swift: a swiftclient Connection per thread, auth, error mapping, the
worker pool, and the http.client chunked PUT used for streamed segments."""

from __future__ import annotations

import errno
import http.client
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from requests.exceptions import RequestException
from swiftclient.client import ClientException, Connection

from .. import StorageUnavailable

log = logging.getLogger(__name__)


class AuthenticationFailed(StorageUnavailable):
    """Swift (or Keystone) refused the login: wrong user or key, or an unknown project."""


class _AuthRefused(Exception):
    """Raised inside a Connection when the auth service answers 401/403; never retried."""

    def __init__(self, status: int | None) -> None:
        super().__init__(f"auth refused: HTTP {status}")
        self.status = status



class _Connection(Connection):
    """A swiftclient Connection that reports new tokens and never retries a refused login."""

    def __init__(self, on_auth: Callable[[str, str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_auth = on_auth

    def get_auth(self) -> tuple[str, str]:
        try:
            url, token = super().get_auth()
        except ClientException as exc:
            if exc.http_status in (401, 403):
                raise _AuthRefused(exc.http_status) from None
            raise
        self._on_auth(url, token)
        return url, token



class SwiftSession:
    """What every request to one Swift account goes through.

    Each thread gets its own :class:`Connection` (they share the last token obtained); errors
    are mapped to the storage/OS errors; fan-out work runs on a bounded worker pool.
    """

    def __init__(self, *, auth_url: str, user: str, key: str, auth_version: str, os_options: dict[str, str],
                 container: str, retries: int, timeout: float, workers: int) -> None:
        self.auth_url = auth_url
        self.user = user
        self.__key = key
        self.auth_version = auth_version
        self.os_options = os_options
        self.container = container
        self.retries = retries
        self.timeout = timeout
        self.workers = workers
        self._local = threading.local()
        self._auth_lock = threading.Lock()
        self._auth: tuple[str, str] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def storage_url(self) -> str | None:
        """The storage URL of the last login (None before any)."""
        return self._auth[0] if self._auth else None

    def remember_auth(self, url: str, token: str) -> None:
        with self._auth_lock:
            self._auth = (url, token)

    def new_connection(self) -> Connection:
        """A fresh Connection, starting from the last token any connection obtained."""
        with self._auth_lock:
            auth = self._auth
        return _Connection(
            self.remember_auth, authurl=self.auth_url, user=self.user, key=self.__key,
            retries=self.retries, preauthurl=auth[0] if auth else None, preauthtoken=auth[1] if auth else None,
            starting_backoff=0.5, max_backoff=8, os_options=dict(self.os_options),
            auth_version=self.auth_version, timeout=self.timeout, retry_on_ratelimit=True)

    def conn(self) -> Connection:
        """This thread's Connection (the mount calls the store from several threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.new_connection()
        return conn

    def where(self, conn: Connection | None) -> str:
        url = getattr(conn, "url", None) or (self._auth[0] if self._auth else None)
        return f"storage URL {url}" if url else f"auth URL {self.auth_url}"

    def map_error(self, exc: BaseException, name: str | None, conn: Connection | None) -> BaseException | None:
        if isinstance(exc, _AuthRefused):
            return AuthenticationFailed(
                f"Swift login refused (HTTP {exc.status}) for user {self.user!r} at auth URL {self.auth_url}")
        if isinstance(exc, ClientException):
            status = exc.http_status
            target = f"{self.container}/{name}" if name is not None else self.container
            if status == 404:
                return FileNotFoundError(errno.ENOENT, f"not found in Swift container {self.container}",
                                         name if name is not None else self.container)
            if status in (401, 403):
                return PermissionError(errno.EACCES, f"Swift refused access (HTTP {status})", target)
            if status == 413:
                return OSError(errno.EFBIG, "Swift refused the object as too large (HTTP 413)", target)
            if status is None or status >= 500 or status in (408, 429, 498, 499):
                return StorageUnavailable(f"Swift at {self.where(conn)} failed for {target}: {exc.msg}"
                                          + (f" (HTTP {status})" if status else ""))
            return OSError(errno.EIO, f"Swift error (HTTP {status} {exc.http_reason}): {exc.msg}", target)
        if isinstance(exc, (RequestException, ConnectionError, TimeoutError, socket.gaierror)):
            return StorageUnavailable(f"cannot reach Swift at {self.where(conn)}: {exc}")
        return None

    def call(self, method: str, *args: Any, name: str | None = None, conn: Connection | None = None,
             passthrough: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Run a swiftclient Connection method; map its errors to the storage/OS errors.

        ClientExceptions whose status is in *passthrough* are re-raised as they are.
        """
        connection = conn or self.conn()
        try:
            return getattr(connection, method)(*args, **kwargs)
        except ClientException as exc:
            if exc.http_status in passthrough:
                raise
            mapped = self.map_error(exc, name, connection)
            raise mapped from exc  # type: ignore[misc]
        except Exception as exc:
            mapped = self.map_error(exc, name, connection)
            if mapped is None:
                raise
            raise mapped from exc

    def put_chunked(self, container: str, name: str, chunks: Iterator[memoryview]) -> str | None:
        """PUT an object from chunks of unknown total size (chunked transfer encoding); its ETag.

        http.client, not swiftclient/requests: urllib3 frames each chunk with ``b"%x\r\n%b\r\n"
        % ...``, a copy that cost ~1 s of CPU per GiB here; this sends the frame and the data
        separately.  The data cannot be sent twice, so a HEAD of the container first renews the
        token if it expired (swiftclient re-authenticates on its 401).
        """
        conn = self.conn()
        self.call("head_container", container, name=container, conn=conn)
        url, token = conn.url, conn.token
        parsed = urllib.parse.urlsplit(url)
        http_class = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        http_conn = http_class(parsed.hostname or "", parsed.port, timeout=self.timeout)
        path = f"{parsed.path.rstrip('/')}/{urllib.parse.quote(container)}/{urllib.parse.quote(name)}"
        try:
            http_conn.putrequest("PUT", path, skip_accept_encoding=True)
            http_conn.putheader("X-Auth-Token", token)
            http_conn.putheader("Transfer-Encoding", "chunked")
            http_conn.putheader("Content-Type", "application/octet-stream")
            http_conn.endheaders()
            for chunk in chunks:
                http_conn.send(b"%x\r\n" % len(chunk))
                http_conn.send(chunk)
                http_conn.send(b"\r\n")
            http_conn.send(b"0\r\n\r\n")
            response = http_conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise StorageUnavailable(f"cannot reach Swift at {parsed.netloc}: {exc}") from exc
        finally:
            http_conn.close()
        if response.status >= 300:
            raise self.map_error(ClientException(  # type: ignore[misc]
                f"Object PUT failed: {body[:200]!r}", http_status=response.status, http_reason=response.reason),
                name, conn) or OSError(errno.EIO, f"Swift answered {response.status}")
        return response.getheader("etag")

    def executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="goblinfs-swift")
            return self._pool

    def parallel(self, func: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """func over items on the worker pool; results in order, the first error re-raised.

        Inside a pool worker (a task that itself fans out) it runs in line: waiting on the
        pool from the pool could deadlock.
        """
        if len(items) <= 1 or getattr(self._local, "in_pool", False):
            return [func(item) for item in items]

        def task(item: Any) -> Any:
            self._local.in_pool = True
            return func(item)

        futures: list[Future[Any]] = [self.executor().submit(task, item) for item in items]
        results = []
        error: BaseException | None = None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: B036 - collected, re-raised after all finished
                results.append(None)
                error = error or exc
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Stop the worker threads and drop this thread's connection (the store stays usable)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
