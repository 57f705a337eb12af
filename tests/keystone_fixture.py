"""The ``keystone_env`` fixture: a real Keystone and a Swift proxy that authenticates with it.

Import the fixture into a test module (``from .keystone_fixture import keystone_env_fixture``).  Once per
test session it starts Keystone (``scripts/keystone_aio.py``: Debian's python3-keystone, sqlite,
fernet tokens living ``TOKEN_EXPIRATION`` seconds) and a second proxy of the session's Swift
all-in-one with ``authtoken`` + ``keystoneauth`` (``swift_aio.start_keystone_proxy``), then sets
up what the tests log in with:

* domain ``goblins`` with project ``media`` (user ``gobbler`` has the ``member`` role on it) and
  project ``elsewhere`` (no role for gobbler); project ``service`` in Default with the ``swift``
  service user (admin) that authtoken validates tokens with;
* the object-store catalog: ``RegionOne`` public -> the Keystone proxy, internal -> a dead port;
  ``RegionTwo`` public -> the dead port, internal -> the Keystone proxy.  The dead port is a
  socket bound on 127.0.0.1 that never listens (connections are refused), held for the session.

Both servers are stopped by PID at the end, also when a test failed.  Skipped, with the reason,
only where python3-keystone is not installed (``scripts/test`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import ROOT

#: Token lifetime of the test Keystone (seconds): short, so tests see tokens expire.
TOKEN_EXPIRATION = 20
DOMAIN, PROJECT, USER, PASSWORD = "goblins", "media", "gobbler", "gobbler-secret"
OTHER_PROJECT = "elsewhere"
SERVICE_PROJECT, SERVICE_USER, SERVICE_PASSWORD = "service", "swift", "swift-service-secret"


def load_keystone_aio() -> Any:
    """scripts/keystone_aio.py as a module (it imports its sibling swift_aio)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import keystone_aio
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return keystone_aio


@pytest.fixture(scope="session", name="keystone_env")
def keystone_env_fixture(swift_env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Keystone + a Keystone-authenticated Swift proxy; a dict of URLs, names and secrets."""
    if shutil.which("keystone-manage") is None:
        pytest.skip("Keystone is not installed (apt-get install python3-keystone; scripts/test does)")
    ks = load_keystone_aio()
    swift_aio = sys.modules["swift_aio"]
    state = tempfile.mkdtemp(prefix="goblinfs-keystone-")
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        dead_port = dead.getsockname()[1]
        env = ks.start(state, token_expiration=TOKEN_EXPIRATION)
        admin = ks.Admin(env)
        service_project = admin.create_project(SERVICE_PROJECT)
        admin.grant(admin.create_user(SERVICE_USER, SERVICE_PASSWORD), service_project, "admin")
        domain = admin.create_domain(DOMAIN)
        project = admin.create_project(PROJECT, domain)
        other_project = admin.create_project(OTHER_PROJECT, domain)
        user = admin.create_user(USER, PASSWORD, domain)
        admin.grant(user, project, "member")
        proxy_port = swift_aio.start_keystone_proxy(swift_env["dir"], {
            "auth_url": env["auth_url"], "username": SERVICE_USER, "password": SERVICE_PASSWORD,
            "project_name": SERVICE_PROJECT, "min_token_life": "5"})
        service = admin.create_service("object-store", "swift")
        live = f"http://127.0.0.1:{proxy_port}/v1/AUTH_$(project_id)s"
        gone = f"http://127.0.0.1:{dead_port}/v1/AUTH_$(project_id)s"
        for region, interface, url in (("RegionOne", "public", live), ("RegionOne", "internal", gone),
                                       ("RegionTwo", "public", gone), ("RegionTwo", "internal", live)):
            admin.create_endpoint(service, region, interface, url)
        # The whole chain works before any test runs: login, catalog, a write and read through the proxy.
        token, body = ks.login(env["auth_url"], ks.password_auth(USER, PASSWORD, PROJECT, DOMAIN, DOMAIN))
        storage_url = ks.catalog_url(body, "object-store", "public", "RegionOne")
        swift_aio._round_trip(storage_url, token)
        yield {
            **env, "admin": admin, "keystone_aio": ks, "proxy_port": proxy_port, "dead_port": dead_port,
            "service_id": service, "domain": DOMAIN, "domain_id": domain, "project": PROJECT,
            "project_id": project, "other_project": OTHER_PROJECT, "other_project_id": other_project,
            "user": USER, "password": PASSWORD, "storage_url": storage_url,
            "token_expiration": TOKEN_EXPIRATION,
        }
    finally:
        try:
            swift_aio.stop_keystone_proxy(swift_env["dir"])
        finally:
            ks.stop(state)
            dead.close()
            shutil.rmtree(state, ignore_errors=True)
