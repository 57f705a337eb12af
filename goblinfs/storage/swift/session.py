"""The connection to Swift: a swiftclient Connection per thread, auth, error mapping,
retries and timeouts, the worker pool, and the http.client chunked PUT of streamed segments.

Retries and timeouts (defaults, all per request):

* Every attempt has a connect/read timeout of ``timeout`` seconds (option ``timeout``,
  default 10 s): a Swift that accepts the connection but answers nothing is given up on then.
* A request that fails in a transient way — HTTP 5xx, 408, 429, 498, 499, a refused, dropped
  or reset connection, a timeout — is tried again after a jittered exponential back-off
  (0.25 s doubling to 4 s, each wait drawn between half and all of it) for as long as the
  next attempt can start at least a second before the request's deadline, ``retry_deadline``
  seconds after it began (option ``retry_deadline``, default 25 s); an attempt's timeout is
  cut to the time left (at least 1 s), so a request ends by its deadline.  Then the error is
  raised (``StorageUnavailable``, EIO for the mount).  ``retries`` (default: no limit but the
  deadline) caps the number of retries.
* A GET whose body breaks off is resumed by a ranged GET with ``If-Match`` from the offset
  reached (:class:`~goblinfs.storage.swift.io.SwiftReader`), within the same deadline.
* An expired token (401) is renewed by swiftclient once per attempt (a new login) and the
  request sent again; a refused login is never retried.
* swiftclient's own retries are off (``retries=0`` on its Connection): they would stack on
  top of these and hold a worker for minutes.  Bodies are resent from their start: local
  files by ``reset()``, bytes as they are, streamed segments from the chunks the stream keeps
  until Swift acknowledged the segment (:meth:`SwiftSession.put_chunked`).
* A refused connection (nothing listening: Swift down, or its proxy restarting) is retried
  for 10 s at most (``REFUSED_DEADLINE``), so a Swift that is down gives errors sooner.
* A DELETE retried after an attempt whose answer was lost counts a 404 as done.
* A connection that failed is closed, so the next request opens a fresh one: once Swift
  answers again, new requests succeed at once.
"""

from __future__ import annotations

import errno
import http.client
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import urllib3.exceptions
from requests.exceptions import RequestException
from swiftclient.client import ClientException, Connection, put_object

from .. import StorageUnavailable
from .keystone import KeystoneLogin

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Per-attempt connect/read timeout (seconds), option ``timeout``.
DEFAULT_TIMEOUT = 10.0
#: Time within which one request is retried (seconds), option ``retry_deadline``.
DEFAULT_RETRY_DEADLINE = 25.0
#: First back-off before a retry, and the longest (seconds).
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 4.0
#: A refused connection (nothing listens: Swift down or restarting) is retried this long at most.
REFUSED_DEADLINE = 10.0
#: An attempt is only started with at least this much time left before the deadline.
MIN_ATTEMPT = 1.0
#: HTTP statuses worth another attempt (besides 5xx).
TRANSIENT_STATUSES = frozenset({408, 429, 498, 499})
#: Exceptions of the transport (connection refused, dropped, reset, timed out, bad framing).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    RequestException, ConnectionError, TimeoutError, socket.timeout, socket.gaierror,
    http.client.HTTPException, urllib3.exceptions.HTTPError)


class RequestObserver(Protocol):
    """What is told of every Swift request (e.g. ``goblinfs.metrics``; the storage layer imports
    no metrics library).  Called from the threads doing the requests; must be quick and never raise.

    * ``attempt(method, status, seconds)``: one HTTP exchange ended: its method (``GET``, ``PUT``,
      ``HEAD``, ``POST``, ``DELETE``, ``AUTH`` for a login), its status (``"2xx"`` for a success,
      the code of an error answer such as ``"404"`` or ``"503"``, ``"timeout"`` or ``"error"`` when
      no answer came) and how long it took (to the response headers);
    * ``retry(method)``: a transient failure is followed by another attempt;
    * ``gave_up(method)``: a request failed for good after transient failures (retries exhausted);
    * ``transferred(direction, nbytes)``: body bytes Swift acknowledged (``"up"``, successful PUTs)
      or sent us (``"down"``, GET bodies as they are read).
    """

    def attempt(self, method: str, status: str, seconds: float) -> None: ...

    def retry(self, method: str) -> None: ...

    def gave_up(self, method: str) -> None: ...

    def transferred(self, direction: str, nbytes: int) -> None: ...


_observers: tuple[RequestObserver, ...] = ()
_observers_lock = threading.Lock()


def add_observer(observer: RequestObserver) -> None:
    """Tell *observer* of every Swift request of this process from now on."""
    global _observers
    with _observers_lock:
        _observers = (*_observers, observer)


def remove_observer(observer: RequestObserver) -> None:
    """Stop telling *observer* (no error if it was not added)."""
    global _observers
    with _observers_lock:
        _observers = tuple(o for o in _observers if o is not observer)


def _notify(event: str, *args: Any) -> None:
    for observer in _observers:
        try:
            getattr(observer, event)(*args)
        except Exception:  # an observer never breaks a request
            log.debug("Swift request observer %r failed on %s", observer, event, exc_info=True)


#: The HTTP method of each swiftclient Connection method (for observers).
HTTP_METHODS = {"get_object": "GET", "get_container": "GET", "get_account": "GET", "get_capabilities": "GET",
                "head_object": "HEAD", "head_container": "HEAD", "head_account": "HEAD",
                "put_object": "PUT", "put_container": "PUT", "post_object": "POST", "post_container": "POST",
                "post_account": "POST", "delete_object": "DELETE", "delete_container": "DELETE",
                "copy_object": "COPY"}


def status_label(exc: BaseException) -> str:
    """How a failed attempt is told to observers: the HTTP status, ``timeout`` or ``error``."""
    if isinstance(exc, _TokenRefused):
        return "401"
    if isinstance(exc, _AuthRefused):
        return str(exc.status)
    if isinstance(exc, ClientException) and exc.http_status is not None:
        return str(exc.http_status)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (TimeoutError, socket.timeout)) or type(current).__name__.endswith("Timeout"):
            return "timeout"
        current = current.__cause__ or current.__context__
    return "error"


class _CountingBody:
    """A GET body (swiftclient's ``_ObjectBody``) telling observers of the bytes read from it."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, length: int | None = None) -> bytes:
        data = self._body.read(length)
        if data:
            _notify("transferred", "down", len(data))
        return data

    def __iter__(self) -> _CountingBody:
        return self

    def __next__(self) -> bytes:
        data = next(self._body)
        if data:
            _notify("transferred", "down", len(data))
        return data

    def close(self) -> None:
        self._body.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)


class _ChunkSourceError(Exception):
    """An error raised by the chunks given to put_chunked (not by the network): never retried."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _TokenRefused(Exception):
    """Swift answered 401 to a request sent with a token: log in again and resend."""


def is_refused(exc: BaseException) -> bool:
    """Whether a failure is a refused connection (somewhere in its chain of causes)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or "Connection refused" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether a failed request is worth another attempt."""
    if isinstance(exc, _TokenRefused):
        return True
    if isinstance(exc, ClientException):
        status = exc.http_status
        return status is not None and (status >= 500 or status in TRANSIENT_STATUSES)
    return isinstance(exc, TRANSPORT_ERRORS)


class AuthenticationFailed(StorageUnavailable):
    """Swift (or Keystone) refused the login: wrong user or key, or an unknown project."""


class _AuthRefused(Exception):
    """Raised inside a Connection when the auth service answers 401/403; never retried."""

    def __init__(self, status: int | None) -> None:
        super().__init__(f"auth refused: HTTP {status}")
        self.status = status



class _Connection(Connection):
    """A swiftclient Connection that reports new tokens, never retries a refused login, takes
    its timeout per attempt, and lets every PUT body be sent again (swiftclient's own retries
    are off; :class:`SwiftSession` retries)."""

    def __init__(self, on_auth: Callable[[str, str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_auth = on_auth

    def get_auth(self) -> tuple[str, str]:
        start = time.monotonic()
        try:
            url, token = super().get_auth()
        except ClientException as exc:
            _notify("attempt", "AUTH", status_label(exc), time.monotonic() - start)
            if exc.http_status in (401, 403):
                raise _AuthRefused(exc.http_status) from None
            raise
        except Exception as exc:
            _notify("attempt", "AUTH", status_label(exc), time.monotonic() - start)
            raise
        _notify("attempt", "AUTH", "2xx", time.monotonic() - start)
        self._on_auth(url, token)
        return url, token

    def set_timeout(self, timeout: float) -> None:
        """The connect/read timeout of the next requests (the open HTTP connection's too)."""
        self.timeout = timeout
        if self.http_conn:
            self.http_conn[1].requests_args["timeout"] = timeout

    def put_object(self, container: str, obj: str, contents: Any, content_length: int | None = None,
                   etag: str | None = None, chunk_size: int | None = None, content_type: str | None = None,
                   headers: dict[str, str] | None = None, query_string: str | None = None,
                   response_dict: dict[str, Any] | None = None) -> Any:
        """swiftclient's put_object, with a body reset that works without swiftclient retries
        (its re-login after a 401 sends the body again): bytes need none, file-like bodies
        are reset (``reset(*args, **kwargs)``) or seeked back."""
        reset_func = None
        if contents is not None and not isinstance(contents, (bytes, bytearray, memoryview, str)):
            reset = getattr(contents, "reset", None)
            tell = getattr(contents, "tell", None)
            seek = getattr(contents, "seek", None)
            if reset is not None:
                reset_func = reset
            elif tell is not None and seek is not None:
                origin = tell()

                def reset_func(*_args: Any, **_kwargs: Any) -> None:
                    seek(origin)
        return self._retry(reset_func, put_object, container, obj, contents, content_length=content_length,
                           etag=etag, chunk_size=chunk_size, content_type=content_type, headers=headers,
                           query_string=query_string, response_dict=response_dict)


class SwiftSession:
    """What every request to one Swift account goes through.

    Each thread gets its own :class:`Connection` (they share the last token obtained); every
    request is retried as the module docstring says and its errors are mapped to the
    storage/OS errors; fan-out work runs on a bounded worker pool.
    """

    def __init__(self, *, auth_url: str, user: str, key: str, auth_version: str, os_options: dict[str, str],
                 container: str, retries: int | None, timeout: float, workers: int,
                 retry_deadline: float = DEFAULT_RETRY_DEADLINE, keystone: KeystoneLogin | None = None) -> None:
        self.auth_url = auth_url
        #: Keystone v3 logins (None: swiftclient's own, v1 tempauth/swauth).
        self.keystone = keystone
        self.user = user
        self.__key = key
        self.auth_version = auth_version
        self.os_options = os_options
        self.container = container
        #: At most this many retries of one request (None: as many as the deadline allows).
        self.retries = retries
        #: Connect/read timeout of one attempt.
        self.timeout = timeout
        #: Seconds within which a request is retried.
        self.retry_deadline = retry_deadline
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

    def forget_token(self, token: str | None) -> None:
        """Drop the shared token if it is this one (Swift refused it), so new connections log in."""
        with self._auth_lock:
            if self._auth is not None and self._auth[1] == token:
                self._auth = None

    def new_connection(self) -> _Connection:
        """A fresh Connection, starting from the last token any connection obtained."""
        with self._auth_lock:
            auth = self._auth
        return _Connection(
            self.remember_auth, authurl=self.auth_url, user=self.user, key=self.__key,
            retries=0, preauthurl=auth[0] if auth else None, preauthtoken=auth[1] if auth else None,
            os_options=dict(self.os_options), auth_version=self.auth_version, timeout=self.timeout,
            session=self.keystone)

    def conn(self) -> _Connection:
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
                f"Keystone refused the login (HTTP {exc.status}) of {self.keystone.who} at {self.keystone.auth_url}"
                if self.keystone is not None else
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
            if status is None or status >= 500 or status in TRANSIENT_STATUSES:
                return StorageUnavailable(f"Swift at {self.where(conn)} failed for {target}: {exc.msg}"
                                          + (f" (HTTP {status})" if status else ""))
            return OSError(errno.EIO, f"Swift error (HTTP {status} {exc.http_reason}): {exc.msg}", target)
        if isinstance(exc, TRANSPORT_ERRORS):
            return StorageUnavailable(f"cannot reach Swift at {self.where(conn)}: {exc}")
        return None

    # ---------------------------------------------------------------- retries

    def deadline(self) -> float:
        """The monotonic time by which a request starting now must be done."""
        return time.monotonic() + self.retry_deadline

    def retrying(self, attempt: Callable[[float], T], *, what: str, deadline: float | None = None,
                 on_failure: Callable[[BaseException], None] | None = None, method: str | None = None) -> T:
        """``attempt(timeout)`` until it succeeds, raises a non-transient error, or the deadline.

        *timeout* is the time the attempt may take (the per-attempt timeout, less near the
        deadline).  *on_failure* runs after each failed attempt (to drop a broken connection).
        The last error is re-raised as it is; callers map it.  With *method* (the HTTP method),
        observers are told of each attempt, retry and giving up (see :class:`RequestObserver`).
        """
        end = deadline if deadline is not None else self.deadline()
        refused_end = time.monotonic() + min(REFUSED_DEADLINE, self.retry_deadline)
        backoff = FIRST_BACKOFF
        tries = 0
        while True:
            remaining = end - time.monotonic()
            start = time.monotonic()
            try:
                result = attempt(max(min(self.timeout, remaining), MIN_ATTEMPT))
            except Exception as exc:
                if method is not None and _observers and not isinstance(exc, _ChunkSourceError):
                    _notify("attempt", method, status_label(exc), time.monotonic() - start)  # 404s too: only if asked
                if on_failure is not None:
                    on_failure(exc)
                if not is_transient(exc):
                    raise
                tries += 1
                # The last wait is shortened so that one more attempt fits before the deadline.
                last = min(end, refused_end) if is_refused(exc) else end
                wait = min(random.uniform(backoff / 2, backoff), last - MIN_ATTEMPT - time.monotonic())
                if (self.retries is not None and tries > self.retries) or wait < 0:
                    log.warning("Swift request %s failed after %d attempt(s): %s", what, tries, exc)
                    if method is not None:
                        _notify("gave_up", method)
                    raise
                if method is not None:
                    _notify("retry", method)
                log.info("Swift request %s failed (%s); attempt %d in %.2f s", what, exc, tries + 1, wait)
                time.sleep(wait)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                if method is not None:
                    _notify("attempt", method, "2xx", time.monotonic() - start)
                return result

    def call(self, method: str, *args: Any, name: str | None = None, conn: Connection | None = None,
             passthrough: tuple[int, ...] = (), deadline: float | None = None, **kwargs: Any) -> Any:
        """Run a swiftclient Connection method, retried; map its errors to the storage/OS errors.

        ClientExceptions whose status is in *passthrough* are re-raised as they are.
        """
        connection: Any = conn or self.conn()
        body = args[2] if method == "put_object" and len(args) > 2 else None
        reset = getattr(body, "reset", None)  # a body that can be sent again from its start
        attempts = 0

        def attempt(timeout: float) -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and callable(reset):
                reset()
            if isinstance(connection, _Connection):
                connection.set_timeout(timeout)
            try:
                return getattr(connection, method)(*args, **kwargs)
            except ClientException as exc:
                if method == "delete_object" and exc.http_status == 404 and attempts > 1:
                    return None  # an earlier attempt deleted it; its answer was lost
                raise

        def failed(exc: BaseException) -> None:
            if isinstance(exc, TRANSPORT_ERRORS):
                connection.close()  # never reuse a connection that broke or timed out

        what = f"{method} {name if name is not None else ''}".rstrip()
        try:
            result = self.retrying(attempt, what=what, deadline=deadline, on_failure=failed,
                                   method=HTTP_METHODS.get(method, method.upper()))
            if _observers:
                result = self._observe_body(method, args, kwargs, result)
            return result
        except ClientException as exc:
            if exc.http_status in passthrough:
                raise
            mapped = self.map_error(exc, name, connection)
            if mapped is None:
                raise
            raise mapped from exc
        except Exception as exc:
            mapped = self.map_error(exc, name, connection)
            if mapped is None:
                raise
            raise mapped from exc

    @staticmethod
    def _observe_body(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> Any:
        """Tell observers of the body bytes of a successful call: a PUT's now, a GET's as it is read."""
        if method == "put_object":
            body = args[2] if len(args) > 2 else None
            size = kwargs.get("content_length")
            if size is None and isinstance(body, (bytes, bytearray, memoryview, str)):
                size = len(body)
            if size:
                _notify("transferred", "up", int(size))
        elif method == "get_object" and isinstance(result, tuple) and len(result) == 2:
            headers, body = result
            if isinstance(body, (bytes, bytearray)):
                if body:
                    _notify("transferred", "down", len(body))
            elif body is not None:
                return headers, _CountingBody(body)
        return result

    def _auth_of(self, conn: _Connection, deadline: float) -> tuple[str, str]:
        if not conn.url or not conn.token:
            def login(timeout: float) -> tuple[str, str]:
                conn.set_timeout(timeout)
                return conn.get_auth()

            try:
                conn.url, conn.token = self.retrying(login, what="login", deadline=deadline)
            except Exception as exc:
                mapped = self.map_error(exc, None, conn)
                if mapped is None:
                    raise
                raise mapped from exc
        return conn.url, conn.token

    def put_chunked(self, container: str, name: str,
                    chunks: Iterable[memoryview] | Callable[[], Iterable[memoryview]], *,
                    deadline: float | None = None, cancelled: Callable[[], bool] | None = None,
                    headers: Mapping[str, str] | None = None, passthrough: tuple[int, ...] = ()) -> str | None:
        """PUT an object from chunks of unknown total size (chunked transfer encoding); its ETag.

        http.client, not swiftclient/requests: urllib3 frames each chunk with ``b"%x\r\n%b\r\n"
        % ...``, a copy that cost ~1 s of CPU per GiB here; this sends the frame and the data
        separately.  *chunks* is a callable giving the chunks from the start for each attempt
        (then the PUT is retried like any request, an expired token renewed on its 401), or a
        plain iterable (then only retried while none of it was taken).  An error raised by the
        chunks themselves, or *cancelled* becoming true, ends it without retry: the connection is
        closed without the last chunk, and Swift stores nothing.  *headers* are sent with the
        request (``Content-Type`` replaces application/octet-stream); ClientExceptions whose
        status is in *passthrough* are re-raised as they are.
        """
        conn = self.conn()
        end = deadline if deadline is not None else self.deadline()
        resendable = callable(chunks)
        taken = False
        relogged = False

        def source() -> Iterator[memoryview]:
            nonlocal taken
            iterable = chunks() if callable(chunks) else chunks
            iterator = iter(iterable)
            while True:
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
                except Exception as exc:
                    raise _ChunkSourceError(exc) from exc
                taken = True
                yield chunk

        def attempt(timeout: float) -> str | None:
            nonlocal relogged
            if cancelled is not None and cancelled():
                raise _ChunkSourceError(OSError(errno.ECANCELED, "upload abandoned"))
            if taken and not resendable:
                raise _ChunkSourceError(StorageUnavailable(f"PUT of {container}/{name} failed after its data was sent"))
            url, token = self._auth_of(conn, end)
            parsed = urllib.parse.urlsplit(url)
            http_class = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
            http_conn = http_class(parsed.hostname or "", parsed.port, timeout=timeout)
            path = f"{parsed.path.rstrip('/')}/{urllib.parse.quote(container)}/{urllib.parse.quote(name)}"
            try:
                http_conn.putrequest("PUT", path, skip_accept_encoding=True)
                http_conn.putheader("X-Auth-Token", token)
                http_conn.putheader("Transfer-Encoding", "chunked")
                extra = dict(headers or {})
                http_conn.putheader("Content-Type", extra.pop("Content-Type", "application/octet-stream"))
                for key, value in extra.items():
                    http_conn.putheader(key, value)
                http_conn.endheaders()
                sent = 0
                for chunk in source():
                    http_conn.send(b"%x\r\n" % len(chunk))
                    http_conn.send(chunk)
                    http_conn.send(b"\r\n")
                    sent += len(chunk)
                http_conn.send(b"0\r\n\r\n")
                response = http_conn.getresponse()
                body = response.read()
            finally:
                http_conn.close()
            if response.status == 401 and not relogged:
                # An expired token: log in again and resend (once per call).
                relogged = True
                conn.url = conn.token = None
                self.forget_token(token)
                raise _TokenRefused(f"Swift refused the token for PUT {container}/{name}")
            if response.status >= 300:
                raise ClientException(f"Object PUT failed: {body[:200]!r}", http_status=response.status,
                                      http_reason=response.reason)
            if sent:
                _notify("transferred", "up", sent)
            return response.getheader("etag")

        try:
            return self.retrying(attempt, what=f"PUT {container}/{name}", deadline=end, method="PUT")
        except _ChunkSourceError as exc:
            raise exc.error from None
        except Exception as exc:
            if isinstance(exc, ClientException) and exc.http_status in passthrough:
                raise
            mapped = self.map_error(exc, name, conn)
            if mapped is None:
                raise
            raise mapped from exc

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
