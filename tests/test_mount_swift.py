"""Real mounts on Swift: two mounts of one container, Swift stopped and restarted under a mount,
and big directories listed in one request per 10,000 entries."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .conftest import SWIFT_MAX_FILE_SIZE, _load_swift_aio, drop_container, running_swift
from .mountutil import Mounted, write_local_config, write_swift_config


@pytest.fixture
def container(swift_env: dict[str, Any]) -> Iterator[str]:
    name = f"gfs-{uuid.uuid4().hex[:12]}"
    yield name
    drop_container(swift_env, name)
    drop_container(swift_env, name + "-queue")


def wait_for(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - start


def test_two_mounts_of_one_container(swift_env: dict[str, Any], container: str, tmp_path: Path) -> None:
    config_a = write_swift_config(tmp_path / "a", swift_env, container)
    config_b = write_swift_config(tmp_path / "b", swift_env, container)
    options = "dir_timeout=1,attr_timeout=1"
    with Mounted(config_a, tmp_path / "mnt_a", options=options) as a, \
            Mounted(config_b, tmp_path / "mnt_b", options=options) as b:
        pub_a = a.mountpoint / "public"
        pub_b = b.mountpoint / "public"
        assert os.listdir(pub_b) == []
        (pub_a / "shared.txt").write_bytes(b"version one")
        waited = wait_for(lambda: (pub_b / "shared.txt").exists(), timeout=10)
        assert waited < 5  # within the 1 s TTL (plus listing latency)
        assert (pub_b / "shared.txt").read_bytes() == b"version one"
        # Changed by A: B never serves its cached copy once the new ETag is known.
        time.sleep(1.1)
        (pub_a / "shared.txt").write_bytes(b"version two, longer")
        wait_for(lambda: (pub_b / "shared.txt").stat().st_size == len(b"version two, longer"), timeout=10)
        assert (pub_b / "shared.txt").read_bytes() == b"version two, longer"
        (pub_a / "shared.txt").unlink()
        wait_for(lambda: not (pub_b / "shared.txt").exists(), timeout=10)
        a.check_log()
        b.check_log()


def _free_port_base(count: int = 5) -> int:
    for base in range(31000, 40000, 10):
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no free ports")


def test_swift_stopped_and_restarted_under_a_mount(tmp_path: Path) -> None:
    aio = _load_swift_aio()
    state = tmp_path / "swift"
    base = _free_port_base()
    env = aio.start(str(state), max_file_size=SWIFT_MAX_FILE_SIZE, port_base=base, updaters=False)
    try:
        config = write_swift_config(tmp_path / "cfg", env, "outage")
        with Mounted(config, tmp_path / "mnt", options="op_timeout=15,dir_timeout=1,attr_timeout=1") as m:
            public = m.mountpoint / "public"
            (public / "before.txt").write_bytes(b"written before the outage")
            aio.stop(str(state))
            # Reads and writes fail with an error, within a bounded time; nothing hangs.
            start = time.monotonic()
            result = subprocess.run(["cat", str(public / "before.txt")], capture_output=True, timeout=60)
            assert result.returncode != 0 and b"Input/output error" in result.stderr
            result = subprocess.run(["cp", "/etc/hostname", str(public / "during.txt")], capture_output=True,
                                    timeout=60)
            assert result.returncode != 0
            assert time.monotonic() - start < 45
            # The daemon is alive and answers for what needs no store.
            assert os.path.isdir(m.mountpoint / "queue")
            aio.start(str(state), max_file_size=SWIFT_MAX_FILE_SIZE, port_base=base, updaters=False)
            time.sleep(1.2)
            assert (public / "before.txt").read_bytes() == b"written before the outage"
            (public / "after.txt").write_bytes(b"written after")
            assert (public / "after.txt").read_bytes() == b"written after"
            assert "after.txt" in os.listdir(public)
            log = m.log()
            assert "Traceback" not in log
    finally:
        aio.stop(str(state))


def test_ten_thousand_entries_local(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "cfg")
    big = tmp_path / "cfg" / "data" / "media" / "public" / "big"
    big.mkdir()
    for i in range(10_000):
        (big / f"f{i:05d}.jpg").write_bytes(b"")
    with Mounted(config, tmp_path / "mnt") as m:
        start = time.monotonic()
        listing = subprocess.run(["ls", "-l", str(m.mountpoint / "public" / "big")], capture_output=True,
                                 text=True, check=True).stdout.splitlines()
        elapsed = time.monotonic() - start
        assert len(listing) == 10_001  # "total" plus every entry
        names = subprocess.run(["find", str(m.mountpoint / "public" / "big"), "-type", "f"], capture_output=True,
                               text=True, check=True).stdout.split()
        assert len(names) == 10_000
        print(f"ls -l of 10,000 local entries through goblinfs: {elapsed:.2f} s")


def test_ten_thousand_entries_swift(tmp_path: Path) -> None:
    """ls -l and find of 10,001 objects in one pseudo-directory: complete, a few listing requests."""
    import swiftclient

    # A private Swift on tmpfs: 10,001 PUTs are CPU-bound here; stopping it is the whole cleanup.
    with running_swift(devices_tmpfs=True) as swift_env:
        state = Path(swift_env["dir"])
        container = "big"
        conn = swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"], key=swift_env["key"])
        conn.put_container(container)

        def put(i: int) -> None:
            c = swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"],
                                       key=swift_env["key"], preauthurl=conn.url, preauthtoken=conn.token)
            for j in range(i, 10_001, 16):
                c.put_object(container, f"big/f{j:05d}.jpg", b"", content_type="image/jpeg")

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(16)))
        config = write_swift_config(tmp_path / "cfg", swift_env, container)
        proxy_log = state / "log" / "proxy.log"
        with Mounted(config, tmp_path / "mnt") as m:
            before = proxy_log.stat().st_size
            listing = subprocess.run(["ls", "-l", str(m.mountpoint / "public" / "big")], capture_output=True,
                                     text=True, check=True).stdout.splitlines()
            assert len(listing) == 10_002  # "total" plus 10,001 entries
            found = subprocess.run(["find", str(m.mountpoint / "public" / "big"), "-name", "*.jpg"],
                                   capture_output=True, text=True, check=True).stdout.split()
            assert len(found) == 10_001
            with open(proxy_log, errors="replace") as f:
                f.seek(before)
                requests = [line for line in f if " GET " in line or " HEAD " in line]
            # A few listing pages, never one request per entry.
            assert 1 <= len(requests) < 50, len(requests)
