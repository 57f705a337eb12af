"""Shared fixtures: the real Swift all-in-one (one per test session) and store factories."""

from __future__ import annotations

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
    aio = _load_swift_aio()
    state = tempfile.mkdtemp(prefix="goblinfs-swift-")
    try:
        env = aio.start(state, max_file_size=SWIFT_MAX_FILE_SIZE)
    except BaseException:
        aio.stop(state)
        shutil.rmtree(state, ignore_errors=True)
        raise
    try:
        yield env
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
