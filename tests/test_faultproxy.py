"""The fault proxy itself, against the real Swift: passthrough and each action seen by a plain client."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import drop_container
from .faultproxy import FaultProxy
from .mountutil import wait_until


@pytest.fixture
def container(swift_env: dict[str, Any]) -> Iterator[str]:
    name = f"gfp-{uuid.uuid4().hex[:12]}"
    yield name
    drop_container(swift_env, name)


def _conn(env: dict[str, Any], retries: int = 0) -> Any:
    import swiftclient

    return swiftclient.Connection(authurl=env["auth_url"], user=env["user"], key=env["key"], retries=retries,
                                  timeout=30)


def _token(fs: Any) -> tuple[str, str]:
    """Storage URL (through the proxy) and token."""
    conn = _conn(fs.env)
    url, token = conn.get_auth()
    return url, token


def _raw(port: int, method: str, path: str, token: str, body: bytes = b"",
         headers: dict[str, str] | None = None, timeout: float = 10) -> http.client.HTTPResponse:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=body or None, headers={"X-Auth-Token": token, **(headers or {})})
    return c.getresponse()


def test_storage_url_rewritten_and_passthrough_5mib(fault_swift: Any, container: str) -> None:
    proxy = fault_swift.proxy
    conn = _conn(fault_swift.env)
    url, _ = conn.get_auth()
    assert urllib.parse.urlsplit(url).port == proxy.port
    data = os.urandom(5 * 1048576)
    conn.put_container(container)
    etag = conn.put_object(container, "big.bin", data)
    assert etag == hashlib.md5(data).hexdigest()
    headers, body = conn.get_object(container, "big.bin")
    assert int(headers["content-length"]) == len(data) and body == data
    # Streamed GET in pieces, HEAD with a Content-Length and no body, on one keep-alive connection.
    _, chunks = conn.get_object(container, "big.bin", resp_chunk_size=65536)
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
    assert int(conn.head_object(container, "big.bin")["content-length"]) == len(data)
    methods = [(m, p.split("?")[0].rsplit("/", 1)[-1], s) for m, p, s in proxy.requests]
    assert ("PUT", "big.bin", 201) in methods and ("GET", "big.bin", 200) in methods
    assert ("HEAD", "big.bin", 200) in methods


def test_chunked_put_through_proxy(fault_swift: Any, container: str) -> None:
    url, token = _token(fault_swift)
    _conn(fault_swift.env).put_container(container)
    parsed = urllib.parse.urlsplit(url)
    assert parsed.port == fault_swift.proxy.port
    pieces = [os.urandom(n) for n in (1, 70000, 3, 1048576, 12345)]
    c = http.client.HTTPConnection("127.0.0.1", parsed.port, timeout=30)
    c.putrequest("PUT", f"{parsed.path}/{container}/chunked.bin", skip_accept_encoding=True)
    c.putheader("X-Auth-Token", token)
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for p in pieces:
        c.send(b"%x\r\n" % len(p) + p + b"\r\n")
    c.send(b"0\r\n\r\n")
    r = c.getresponse()
    r.read()
    assert r.status == 201
    # Same keep-alive connection: a GET with Expect: 100-continue too (answered by the proxy).
    c.request("GET", f"{parsed.path}/{container}/chunked.bin", headers={"X-Auth-Token": token})
    r = c.getresponse()
    assert r.read() == b"".join(pieces)
    c.close()
    _, body = _conn(fault_swift.env).get_object(container, "chunked.bin")
    assert body == b"".join(pieces)


def test_expect_100_continue(fault_swift: Any, container: str) -> None:
    conn = _conn(fault_swift.env)
    conn.put_container(container)
    data = os.urandom(200000)
    conn.put_object(container, "e.bin", data, headers={"Expect": "100-continue"})
    assert conn.get_object(container, "e.bin")[1] == data


def test_status_action_once_and_forever(fault_swift: Any, container: str) -> None:
    import swiftclient

    proxy = fault_swift.proxy
    conn = _conn(fault_swift.env)
    conn.put_container(container)
    rule = proxy.add_rule("PUT", r"/x\.bin$", status=503)
    with pytest.raises(swiftclient.ClientException) as err:
        conn.put_object(container, "x.bin", b"first")
    assert err.value.http_status == 503
    assert rule.hits == 1
    conn.put_object(container, "x.bin", b"second")  # times=1: spent
    assert conn.get_object(container, "x.bin")[1] == b"second"
    forever = proxy.add_rule("GET", "x.bin", status=500, times=None)
    for _ in range(3):
        with pytest.raises(swiftclient.ClientException) as err:
            conn.get_object(container, "x.bin")
        assert err.value.http_status == 500
    assert forever.hits == 3
    # A chunked body is read and discarded: the connection stays usable.
    url, token = _token(fault_swift)
    parsed = urllib.parse.urlsplit(url)
    proxy.clear()
    proxy.add_rule("PUT", "c.bin", status=507)
    c = http.client.HTTPConnection("127.0.0.1", parsed.port, timeout=10)
    c.putrequest("PUT", f"{parsed.path}/{container}/c.bin")
    c.putheader("X-Auth-Token", token)
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    c.send(b"5\r\nhello\r\n0\r\n\r\n")
    r = c.getresponse()
    r.read()
    assert r.status == 507
    c.request("HEAD", f"{parsed.path}/{container}/x.bin", headers={"X-Auth-Token": token})
    r = c.getresponse()
    r.read()
    assert r.status == 200
    assert ("PUT", f"{parsed.path}/{container}/c.bin", 507) in proxy.requests


def test_drop_reset_truncate(fault_swift: Any, container: str) -> None:
    proxy = fault_swift.proxy
    conn = _conn(fault_swift.env)
    conn.put_container(container)
    data = os.urandom(300000)
    conn.put_object(container, "t.bin", data)
    url, token = _token(fault_swift)
    path = urllib.parse.urlsplit(url).path + f"/{container}/t.bin"

    proxy.add_rule("GET", "t.bin", action="drop")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _raw(proxy.port, "GET", path, token)

    proxy.add_rule("GET", "t.bin", action="reset")
    with pytest.raises(ConnectionResetError):
        _raw(proxy.port, "GET", path, token).read()

    proxy.add_rule("GET", "t.bin", action="truncate", after_bytes=1000)
    r = _raw(proxy.port, "GET", path, token)
    assert r.status == 200 and int(r.getheader("content-length")) == len(data)
    with pytest.raises(http.client.IncompleteRead) as err:
        r.read()
    assert err.value.partial == data[:1000]
    assert [s for m, p, s in proxy.requests if m == "GET" and p == path] == ["drop", "reset", "truncate"]
    r = _raw(proxy.port, "GET", path, token)
    assert r.read() == data


def test_delay_and_hang(fault_swift: Any, container: str) -> None:
    proxy = fault_swift.proxy
    conn = _conn(fault_swift.env)
    conn.put_container(container)
    conn.put_object(container, "d.bin", b"delayed")
    url, token = _token(fault_swift)
    path = urllib.parse.urlsplit(url).path + f"/{container}/d.bin"
    proxy.add_rule("GET", "d.bin", action="delay", delay=1.0)
    start = time.monotonic()
    assert _raw(proxy.port, "GET", path, token).read() == b"delayed"
    assert 1.0 <= time.monotonic() - start < 5

    rule = proxy.add_rule(None, "d.bin", action="hang", times=None)
    with pytest.raises(socket.timeout):
        _raw(proxy.port, "HEAD", path, token, timeout=1.0)
    outcome: list[Any] = []

    def held() -> None:
        try:
            outcome.append(_raw(proxy.port, "GET", path, token, timeout=20).status)
        except Exception as exc:  # the released connection is closed without an answer
            outcome.append(exc)

    t = threading.Thread(target=held)
    t.start()
    assert wait_until(lambda: rule.hits == 2, 10), rule.hits
    time.sleep(0.3)  # held, not answered
    assert outcome == [] and rule.hits == 2
    start = time.monotonic()
    proxy.clear()
    t.join(10)
    assert time.monotonic() - start < 3
    assert len(outcome) == 1 and isinstance(outcome[0], (http.client.RemoteDisconnected, ConnectionError))
    assert _raw(proxy.port, "GET", path, token).read() == b"delayed"


def test_set_dead(fault_swift: Any, container: str) -> None:
    proxy = fault_swift.proxy
    conn = _conn(fault_swift.env)
    conn.put_container(container)
    _, token = _token(fault_swift)
    idle = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    idle.request("GET", "/info")
    assert idle.getresponse().read()
    proxy.set_dead(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    # The kept-alive connection was closed too.
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        idle.request("GET", "/info")
        idle.getresponse()
    proxy.set_dead(False)
    assert _conn(fault_swift.env).head_container(container) is not None


def test_stop_leaves_nothing(swift_env: dict[str, Any]) -> None:
    port = urllib.parse.urlsplit(swift_env["auth_url"]).port
    assert port is not None
    def proxy_threads() -> list[threading.Thread]:  # only the proxy's: earlier tests may leave others
        return [t for t in threading.enumerate() if t.name.startswith("faultproxy-")]

    before = proxy_threads()
    proxy = FaultProxy(port).start()
    rule = proxy.add_rule(action="hang", times=None)
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(3)]
    for s in socks:
        s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_until(lambda: rule.hits == 3, 10), rule.hits  # all three accepted and held
    assert len(proxy_threads()) > len(before)
    proxy.stop()
    for s in socks:
        s.settimeout(5)
        assert s.recv(10) == b""
        s.close()
    assert proxy_threads() == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
