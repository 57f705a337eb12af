"""A Swift that answers no ``GET /info`` (the info middleware is off, or a proxy refuses it) is
still used, with Swift's default limits and a warning naming it (the real Swift all-in-one
behind the fault proxy, which answers 404 to ``/info``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from goblinfs.storage.cloudfiles import DEFAULT_LISTING_LIMIT, DEFAULT_MAX_FILE_SIZE

from .conftest import FaultSwift, drop_container, make_cloud_storage

pytestmark = pytest.mark.swift


@pytest.fixture
def container(fault_swift: FaultSwift, swift_container_name: str) -> Iterator[str]:
    yield swift_container_name
    drop_container(fault_swift.env, swift_container_name)


def test_no_info_means_default_limits(fault_swift: FaultSwift, container: str, tmp_path: Any,
                                      caplog: pytest.LogCaptureFixture) -> None:
    fault_swift.proxy.add_rule("GET", r"^/info", action="status", status=404, times=None)
    caplog.set_level(logging.WARNING, logger="goblinfs.storage.cloudfiles")
    store = make_cloud_storage(fault_swift.env, container, staging_dir=str(tmp_path / "staging"))
    try:
        # The all-in-one's /info says max_file_size 5 MiB and a listing limit of 10000; the
        # defaults assumed without it are Swift's own.
        assert store.max_file_size == DEFAULT_MAX_FILE_SIZE
        assert store.listing_limit == DEFAULT_LISTING_LIMIT
        assert store.slo_enabled
        assert any(method == "GET" and target.startswith("/info") and outcome == 404
                   for method, target, outcome in fault_swift.proxy.requests)
        warnings = [r.getMessage() for r in caplog.records if "gives no /info" in r.getMessage()]
        assert len(warnings) == 1
        assert "127.0.0.1" in warnings[0]
        with store.get_file(["dir", "a.txt"], "w") as f:
            f.write(b"stored without /info")
        with store.get_file(["dir", "a.txt"]) as f:
            assert f.read() == b"stored without /info"
    finally:
        store.close()
