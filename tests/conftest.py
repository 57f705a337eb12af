"""Shared fixtures: the real Swift all-in-one (one per test session) and store factories."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Small object size limit of the test Swift, so segmentation (SLO) runs with small files.
SWIFT_MAX_FILE_SIZE = 5 * 1048576


def _load_swift_aio() -> Any:
    spec = importlib.util.spec_from_file_location("swift_aio", ROOT / "scripts" / "swift_aio.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["swift_aio"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def swift_env() -> Iterator[dict[str, Any]]:
    """A real OpenStack Swift on 127.0.0.1, started once, stopped by PID at the end.

    If it cannot start, every test using it errors: nothing is skipped.
    """
    with running_swift() as env:
        yield env


@contextlib.contextmanager
def running_swift(**kw: Any) -> Iterator[dict[str, Any]]:
    """A private Swift all-in-one for the block: started (or the error raised), stopped by PID.

    No updaters: they cost CPU every few seconds and only feed account statistics.
    """
    aio = _load_swift_aio()
    state = tempfile.mkdtemp(prefix="goblinfs-swift-")
    try:
        yield aio.start(state, max_file_size=SWIFT_MAX_FILE_SIZE, updaters=False, **kw)
    finally:
        aio.stop(state)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def swift_container_name() -> str:
    return f"gfs-{uuid.uuid4().hex[:12]}"


def make_cloud_storage(swift_env: dict[str, Any], container: str, **kw: Any) -> Any:
    """A CloudFileStorage on the test Swift, configured with MediaGoblin's keys."""
    from goblinfs.storage.cloudfiles import CloudFileStorage

    params: dict[str, Any] = {
        "cloudfiles_user": swift_env["user"],
        "cloudfiles_api_key": swift_env["key"],
        "cloudfiles_host": swift_env["auth_url"],
        "cloudfiles_container": container,
        "segment_size": str(1048576),
    }
    params.update(kw)
    return CloudFileStorage(**params)


@pytest.fixture
def tmp_store_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="test_gmg_storage")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Traffic only to 127.0.0.1: never let a proxy variable route test requests elsewhere.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    os.environ.setdefault("GOBLINFS_TESTING", "1")


def drop_container(swift_env: dict[str, Any], container: str) -> None:
    """Delete a test container (and its segments container) with everything in it."""
    import swiftclient

    conn = swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"], key=swift_env["key"])
    for name in (container, container + "_segments"):
        try:
            _headers, objects = conn.get_container(name, full_listing=True)
        except swiftclient.ClientException:
            continue
        for obj in objects:
            with contextlib.suppress(swiftclient.ClientException):
                conn.delete_object(name, obj["name"])
        with contextlib.suppress(swiftclient.ClientException):
            conn.delete_container(name)


class MountCase:
    """A mounted goblinfs for one backend, with what a test needs to look behind it."""

    def __init__(self, kind: str, root: Path, mounted: Any, swift_env: dict[str, Any] | None = None,
                 container: str | None = None) -> None:
        self.kind = kind
        self.root = root
        self.mounted = mounted
        self.mnt = mounted.mountpoint
        self.swift_env = swift_env
        self.container = container
        self.config = mounted.config

    @property
    def public(self) -> Path:
        return self.mnt / "public"

    @property
    def queue(self) -> Path:
        return self.mnt / "queue"

    def store(self, name: str = "public") -> Any:
        """The store behind the mount, accessed directly (not through FUSE)."""
        from goblinfs.config import load_config

        return load_config(str(self.config)).stores[name].build()

    def remount(self, options: str = "") -> None:
        from .mountutil import Mounted

        self.mounted.stop()
        self.mounted = Mounted(self.config, self.mnt, options=options).__enter__()


@pytest.fixture(params=["local", "swift"])
def mount_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MountCase]:
    """goblinfs mounted for real over local stores, then over the real Swift."""
    from .mountutil import Mounted, write_local_config, write_swift_config

    options = getattr(request, "param_options", "")
    swift_env = None
    container = None
    if request.param == "local":
        config = write_local_config(tmp_path / "cfg")
    else:
        swift_env = request.getfixturevalue("swift_env")
        container = f"gfs-{uuid.uuid4().hex[:12]}"
        config = write_swift_config(tmp_path / "cfg", swift_env, container)
    mounted = Mounted(config, tmp_path / "mnt", options=options)
    case = MountCase(request.param, tmp_path, mounted, swift_env, container)
    mounted.__enter__()
    try:
        yield case
        case.mounted.check_log()
        status = case.mounted.stop()
        assert status == 0, f"daemon exit status {status}:\n{case.mounted.log()}"
    finally:
        case.mounted.stop(clean=False)
        if container is not None:
            drop_container(swift_env, container)
            drop_container(swift_env, container + "-queue")


class FaultSwift:
    """A FaultProxy in front of the session Swift, and a copy of swift_env whose auth_url goes through it."""

    def __init__(self, proxy: Any, env: dict[str, Any]) -> None:
        self.proxy = proxy
        self.env = env


@pytest.fixture
def fault_swift(swift_env: dict[str, Any]) -> Iterator[FaultSwift]:
    """``.proxy``: a FaultProxy to swift_env's proxy port; ``.env``: swift_env with ``auth_url`` through it."""
    import urllib.parse

    from .faultproxy import FaultProxy

    upstream = urllib.parse.urlsplit(swift_env["auth_url"]).port
    assert upstream is not None
    with FaultProxy(upstream) as proxy:
        env = dict(swift_env)
        env["auth_url"] = proxy.auth_url(swift_env["auth_url"])
        env["direct_auth_url"] = swift_env["auth_url"]
        yield FaultSwift(proxy, env)
