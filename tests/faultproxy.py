"""A fault-injecting HTTP/1.1 proxy for tests, in front of the real Swift proxy on 127.0.0.1.

``FaultProxy(upstream_port)`` listens on a free port of 127.0.0.1 and forwards every request to
``127.0.0.1:upstream_port``, one upstream connection per client connection (keep-alive both
ways).  Bodies are streamed in 64 KiB pieces, never buffered whole: ``Content-Length`` and
``Transfer-Encoding: chunked`` requests and responses, HEAD, 204/304, and responses delimited by
the connection's close.  ``Expect: 100-continue`` is answered by the proxy itself (the header is
not forwarded).  Responses carrying ``X-Storage-Url`` / ``X-Server-Management-Url`` get the URL's
port replaced by the proxy's, so after authenticating through ``auth_url(...)`` every request of
a client goes through the proxy.

Faults are rules, matched in order against each request (method, and a regex searched in the
request target, i.e. path + query as sent); the first rule that matches and has times left
applies (``times=None``: forever):

* ``status``: answer ``status`` without forwarding, after reading and discarding the body.
* ``drop``: close the client connection without answering.
* ``reset``: close the client connection with a TCP RST (SO_LINGER 0).
* ``truncate``: forward, but send only ``after_bytes`` bytes of the response body, then close.
* ``delay``: wait ``delay`` seconds, then forward.
* ``hang``: hold the connection without answering until ``clear()`` (or ``remove_rule``) or
  ``stop()``; the held connection is then closed without an answer.

``set_dead(True)`` closes the listening socket (new connections are refused, like a dead port)
and every open client connection; ``set_dead(False)`` listens again on the same port.
``requests`` lists ``(method, target, outcome)`` for every request read: the upstream's status
(int), the ``status`` action's status (int), or the action's name (``"drop"``, ``"reset"``,
``"truncate"``, ``"hang"``), or ``"upstream-error"`` when the upstream could not be reached.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, BinaryIO

__all__ = ["ACTIONS", "FaultProxy", "Rule"]

ACTIONS = ("status", "drop", "reset", "truncate", "delay", "hang")
_PIECE = 65536
_REWRITE = ("x-storage-url", "x-server-management-url")
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed",
            413: "Request Entity Too Large", 416: "Requested Range Not Satisfiable",
            429: "Too Many Requests", 499: "Client Disconnect", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 507: "Insufficient Storage"}


@dataclass(eq=False)
class Rule:
    """One fault; ``hits`` counts the requests it was applied to."""

    method: str | None = None
    path: str | None = None
    action: str = "status"
    status: int = 503
    times: int | None = 1
    delay: float = 0.0
    after_bytes: int = 0
    hits: int = 0
    _regex: re.Pattern[str] | None = field(default=None, repr=False)
    _released: threading.Event = field(default_factory=threading.Event, repr=False)

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self._regex is None or self._regex.search(target) is not None


class _Closed(Exception):
    """The peer closed the connection (or the proxy is stopping)."""


class _Truncated(Exception):
    """A truncate rule's byte budget is spent."""


class _Sink:
    """Writes to a socket, optionally stopping after *limit* bytes."""

    def __init__(self, sock: socket.socket, limit: int | None = None) -> None:
        self.sock = sock
        self.limit = limit
        self.sent = 0

    def write(self, data: bytes) -> None:
        if self.limit is not None and self.sent + len(data) >= self.limit:
            part = data[: self.limit - self.sent]
            if part:
                self.sock.sendall(part)
            self.sent += len(part)
            raise _Truncated()
        self.sock.sendall(data)
        self.sent += len(data)


def _read_head(f: BinaryIO) -> tuple[str, list[tuple[str, str]]] | None:
    """The start line and headers of a message; None at a clean end of stream."""
    line = f.readline(65537)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between messages
        line = f.readline(65537)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise _Closed("truncated start line")
    headers: list[tuple[str, str]] = []
    while True:
        h = f.readline(65537)
        if not h:
            raise _Closed("end of stream in headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _is_chunked(headers: list[tuple[str, str]]) -> bool:
    te = _get(headers, "transfer-encoding")
    return te is not None and "chunked" in te.lower()


def _copy_exact(src: BinaryIO, dst: _Sink | None, n: int) -> None:
    while n > 0:
        data = src.read(min(n, _PIECE))
        if not data:
            raise _Closed("end of stream in body")
        n -= len(data)
        if dst is not None:
            dst.write(data)


def _copy_chunked(src: BinaryIO, dst: _Sink | None) -> None:
    """Relay a chunked body frame by frame (the framing is passed on as is)."""
    while True:
        line = src.readline(65537)
        if not line:
            raise _Closed("end of stream in chunked body")
        if dst is not None:
            dst.write(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = src.readline(65537)
                if not trailer:
                    raise _Closed("end of stream in trailers")
                if dst is not None:
                    dst.write(trailer)
                if trailer in (b"\r\n", b"\n"):
                    return
        _copy_exact(src, dst, size + 2)  # data and its CRLF


def _copy_to_eof(src: BinaryIO, dst: _Sink) -> None:
    while True:
        data = src.read1(_PIECE)  # type: ignore[attr-defined]
        if not data:
            return
        dst.write(data)


def _request_body_kind(headers: list[tuple[str, str]]) -> tuple[str, int]:
    if _is_chunked(headers):
        return "chunked", 0
    length = _get(headers, "content-length")
    return ("length", int(length)) if length else ("length", 0)


class FaultProxy:
    """A threaded fault-injecting HTTP/1.1 proxy to 127.0.0.1:upstream_port (see the module doc)."""

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.requests: list[tuple[str, str, int | str]] = []
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dead = False
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        if self._started:
            return self
        self._stopping.clear()
        self._listen()
        self._started = True
        return self

    def stop(self) -> None:
        """Close the listener and every connection; wait (bounded) for the threads."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        self._close_listener()
        with self._lock:
            for rule in self._rules:
                rule._released.set()
            conns = list(self._conns)
            threads = list(self._threads)
        for sock in conns:
            self._shutdown(sock)
        deadline = time.monotonic() + 10
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._listener = sock
        t = threading.Thread(target=self._accept_loop, args=(sock,), name=f"faultproxy-accept-{self.port}",
                             daemon=True)
        self._accept_thread = t
        t.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._accept_thread is not None and self._accept_thread is not threading.current_thread():
            self._accept_thread.join(5)
        self._accept_thread = None

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    # -- public API ------------------------------------------------------------------------

    def auth_url(self, original_auth_url: str) -> str:
        """The same URL with the proxy's host and port."""
        parts = urllib.parse.urlsplit(original_auth_url)
        return urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def add_rule(self, method: str | None = None, path: str | None = None, action: str = "status",
                 status: int = 503, times: int | None = 1, delay: float = 0.0, after_bytes: int = 0) -> Rule:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {ACTIONS}")
        rule = Rule(method=method, path=path, action=action, status=status, times=times, delay=delay,
                    after_bytes=after_bytes, _regex=re.compile(path) if path is not None else None)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)
        rule._released.set()

    def clear(self) -> None:
        """Remove every rule; connections held by ``hang`` are closed."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            rule._released.set()

    def set_dead(self, dead: bool) -> None:
        """Dead: the port refuses connections and open ones are closed. Alive: listen again."""
        if dead == self._dead:
            return
        self._dead = dead
        if not self._started:
            return
        if dead:
            self._close_listener()
            with self._lock:
                conns = list(self._conns)
            for sock in conns:
                self._shutdown(sock)
        else:
            self._listen()

    @property
    def dead(self) -> bool:
        return self._dead

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    # -- serving ---------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._stopping.is_set() or self._dead:
                client.close()
                continue
            t = threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True)
            with self._lock:
                self._conns.add(client)
                self._threads.add(t)
            t.start()

    def _match(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, target):
                    if rule.times is not None:
                        rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    def _record(self, method: str, target: str, outcome: int | str) -> None:
        with self._lock:
            self.requests.append((method, target, outcome))

    def _serve(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cf = client.makefile("rb")
        upstream: socket.socket | None = None
        uf: BinaryIO | None = None
        try:
            while not self._stopping.is_set():
                head = _read_head(cf)
                if head is None:
                    return
                start, headers = head
                method, target, version = (start.split(" ", 2) + ["", ""])[:3]
                kind, length = _request_body_kind(headers)
                expect = (_get(headers, "expect") or "").lower() == "100-continue"
                client_close = ((_get(headers, "connection") or "").lower() == "close"
                                or version == "HTTP/1.0")
                rule = self._match(method, target)
                action = rule.action if rule else "forward"

                if action in ("drop", "reset"):
                    self._record(method, target, action)
                    if action == "reset":
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if action == "hang":
                    self._record(method, target, "hang")
                    assert rule is not None
                    while not rule._released.wait(0.2) and not self._stopping.is_set():
                        pass
                    return
                if action == "delay":
                    assert rule is not None
                    if self._stopping.wait(rule.delay):
                        return

                if expect:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

                if action == "status":
                    assert rule is not None
                    self._discard_body(cf, kind, length)
                    body = f"{rule.status} injected by faultproxy\n".encode()
                    reason = _REASONS.get(rule.status, "Injected")
                    head_only = method.upper() == "HEAD" or rule.status in (204, 304)
                    self._record(method, target, rule.status)  # before the client can see the answer
                    client.sendall(
                        f"HTTP/1.1 {rule.status} {reason}\r\nContent-Type: text/plain\r\n"
                        f"Content-Length: {len(body)}\r\nX-Fault-Proxy: injected\r\n"
                        f"{'Connection: close' + chr(13) + chr(10) if client_close else ''}\r\n".encode()
                        + (b"" if head_only else body))
                    if client_close:
                        return
                    continue

                # Forward (plain, delayed or truncated).
                if upstream is not None and select.select([upstream], [], [], 0)[0]:
                    # The upstream closed the idle keep-alive connection: never send into it.
                    self._drop_upstream(upstream, uf)
                    upstream, uf = None, None
                if upstream is None:
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=300)
                    except OSError:
                        self._record(method, target, "upstream-error")
                        self._discard_body(cf, kind, length)
                        body = b"upstream unreachable\n"
                        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                                       b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                        return
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with self._lock:
                        self._conns.add(upstream)
                    uf = upstream.makefile("rb")
                assert uf is not None
                out = [f"{method} {target} {version}\r\n"]
                for k, v in headers:
                    if k.lower() == "expect":
                        continue
                    out.append(f"{k}: {v}\r\n")
                out.append("\r\n")
                up_sink = _Sink(upstream)
                up_sink.write("".join(out).encode("latin-1"))
                if kind == "chunked":
                    _copy_chunked(cf, up_sink)
                else:
                    _copy_exact(cf, up_sink, length)

                response = _read_head(uf)
                while response is not None and response[0].split(" ")[1:2] and \
                        response[0].split(" ")[1].startswith("1"):
                    response = _read_head(uf)  # interim responses (the body is already sent)
                if response is None:
                    self._record(method, target, "upstream-error")
                    return
                status_line, rheaders = response
                status = int(status_line.split(" ")[1])
                out = [status_line + "\r\n"]
                for k, v in rheaders:
                    if k.lower() in _REWRITE:
                        v = self._rewrite_url(v)
                    out.append(f"{k}: {v}\r\n")
                out.append("\r\n")
                self._record(method, target, "truncate" if action == "truncate" else status)
                client.sendall("".join(out).encode("latin-1"))
                upstream_close = (_get(rheaders, "connection") or "").lower() == "close"
                sink = _Sink(client, rule.after_bytes if action == "truncate" else None)
                try:
                    if method.upper() == "HEAD" or status in (204, 304) or 100 <= status < 200:
                        if action == "truncate":
                            return
                    elif _is_chunked(rheaders):
                        _copy_chunked(uf, sink)
                    elif _get(rheaders, "content-length") is not None:
                        _copy_exact(uf, sink, int(_get(rheaders, "content-length") or 0))
                    else:
                        _copy_to_eof(uf, sink)
                        return
                except _Truncated:
                    return
                if action == "truncate":
                    return  # the body was shorter than after_bytes: still close, as promised
                if client_close:
                    return
                if upstream_close:
                    self._drop_upstream(upstream, uf)
                    upstream, uf = None, None
        except (_Closed, OSError, ValueError, IndexError):
            return
        finally:
            if upstream is not None:
                self._drop_upstream(upstream, uf)
            with contextlib.suppress(OSError):
                cf.close()
            with contextlib.suppress(OSError):
                client.close()
            with self._lock:
                self._conns.discard(client)
                self._threads.discard(threading.current_thread())

    def _drop_upstream(self, upstream: socket.socket, uf: BinaryIO | None) -> None:
        with self._lock:
            self._conns.discard(upstream)
        if uf is not None:
            with contextlib.suppress(OSError):
                uf.close()
        with contextlib.suppress(OSError):
            upstream.close()

    @staticmethod
    def _discard_body(cf: BinaryIO, kind: str, length: int) -> None:
        if kind == "chunked":
            _copy_chunked(cf, None)
        else:
            _copy_exact(cf, None, length)

    def _rewrite_url(self, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.port != self.upstream_port:
            return value
        return urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))
