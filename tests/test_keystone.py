"""Keystone v3 against a real Keystone (issue #9): password and application-credential logins,
endpoint selection by region and interface, tokens expiring in the middle of a large upload and
of a long listing, and refused logins as one line before mounting.

Everything runs against the ``keystone_env`` fixture (tests/keystone_fixture.py): Debian's
Keystone on 127.0.0.1 and a second proxy of the session's Swift all-in-one with authtoken +
keystoneauth.  Its tokens live 20 seconds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from goblinfs.storage import StorageConfigError, StorageUnavailable
from goblinfs.storage.cloudfiles import AuthenticationFailed, CloudFileStorage

from .conftest import ROOT
from .faultproxy import FaultProxy
from .keystone_fixture import keystone_env_fixture  # noqa: F401 - the fixture keystone_env
from .mountutil import Mounted, is_mounted, run

pytestmark = [pytest.mark.swift]


def keystone_keys(env: dict[str, Any], container: str, **overrides: Any) -> dict[str, Any]:
    """A store's keys for a password login of gobbler to project media (both in domain goblins)."""
    keys: dict[str, Any] = {
        "auth_version": "3", "cloudfiles_host": env["auth_url"], "cloudfiles_user": env["user"],
        "cloudfiles_api_key": env["password"], "project_name": env["project"],
        "project_domain_name": env["domain"], "user_domain_name": env["domain"], "region_name": "RegionOne",
        "cloudfiles_container": container, "segment_size": "1048576",
    }
    keys.update(overrides)
    return {k: v for k, v in keys.items() if v is not None}


def make_store(env: dict[str, Any], container: str, **overrides: Any) -> CloudFileStorage:
    return CloudFileStorage(**keystone_keys(env, container, **overrides))


def port_of(url: str | None) -> int | None:
    return urllib.parse.urlsplit(url or "").port


def drop(env: dict[str, Any], container: str) -> None:
    """Delete a test container (and its segments) in the media project's account."""
    store = make_store(env, container)
    try:
        for name in (container, container + "_segments"):
            _headers, objects = store.session.call("get_container", name, full_listing=True)
            for obj in objects:
                store.session.call("delete_object", name, obj["name"], name=obj["name"])
            store.session.call("delete_container", name)
    except FileNotFoundError:
        pass
    finally:
        store.close()


@pytest.fixture
def container(keystone_env: dict[str, Any]) -> Iterator[str]:
    name = f"gfs-ks-{uuid.uuid4().hex[:10]}"
    yield name
    drop(keystone_env, name)


def write_config(directory: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A mediagoblin.ini with the given storage sections (``key = value`` lines)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = "[DEFAULT]\ndata_basedir = %(here)s/data\n"
    for section, keys in sections.items():
        text += f"[{section}]\nstorage_class = mediagoblin.storage.cloudfiles:CloudFilesStorage\n"
        text += "".join(f"{key} = {value}\n" for key, value in keys.items())
    config = directory / "mediagoblin.ini"
    config.write_text(text)
    return config


# ------------------------------------------------------------------------------ logins


def test_password_login_with_domains_store_and_mount(keystone_env: dict[str, Any], container: str,
                                                     tmp_path: Path) -> None:
    """A password login with project and user domain names reaches the project's account through
    the Keystone proxy; a real mount configured with those keys (public store) and an application
    credential (queue store) stores files there, read back byte for byte."""
    env = keystone_env
    store = make_store(env, container)
    try:
        store.store_local_file(str(ROOT / "README.md"), ["readme.md"])
        assert store.read_range(["readme.md"], 0, 1 << 20) == (ROOT / "README.md").read_bytes()
        url = store.session.storage_url
        assert port_of(url) == env["proxy_port"] and url is not None
        assert url.endswith(f"/v1/AUTH_{env['project_id']}")
    finally:
        store.close()
    # cloudfiles_user = project:user names the project when project_name is not given.
    store = make_store(env, container, cloudfiles_user=f"{env['project']}:{env['user']}", project_name=None)
    try:
        assert store.read_range(["readme.md"], 0, 10) == (ROOT / "README.md").read_bytes()[:10]
    finally:
        store.close()

    cred_id, secret = env["keystone_aio"].create_application_credential(
        env["auth_url"], env["keystone_aio"].password_auth(env["user"], env["password"], env["project"],
                                                           env["domain"], env["domain"]),
        f"mount-{uuid.uuid4().hex[:8]}")
    public = keystone_keys(env, container)
    queue = keystone_keys(env, container + "-queue", cloudfiles_user=None, cloudfiles_api_key=None,
                          project_name=None, project_domain_name=None, user_domain_name=None,
                          application_credential_id=cred_id, application_credential_secret=secret)
    config = write_config(tmp_path / "cfg", {"storage:publicstore": public, "storage:queuestore": queue})
    payload = os.urandom(3 * 1048576 + 12345)  # an SLO (1 MiB segments)
    (tmp_path / "payload.bin").write_bytes(payload)
    try:
        with Mounted(config, tmp_path / "mnt") as mounted:
            run(["cp", str(tmp_path / "payload.bin"), str(mounted.mountpoint / "public" / "payload.bin")])
            (mounted.mountpoint / "queue" / "note.txt").write_bytes(b"queued through an application credential")
            assert sorted(os.listdir(mounted.mountpoint / "public")) == ["payload.bin", "readme.md"]
            assert (mounted.mountpoint / "public" / "payload.bin").stat().st_size == len(payload)
            mounted.check_log()
        # Behind the mount: what Swift holds in the project's account.
        store = make_store(env, container)
        queue_store = make_store(env, container + "-queue")
        try:
            assert store.read_range(["payload.bin"], 0, len(payload) + 1) == payload
            assert queue_store.read_range(["note.txt"], 0, 100) == b"queued through an application credential"
        finally:
            store.close()
            queue_store.close()
    finally:
        drop(env, container + "-queue")


def test_application_credential_login(keystone_env: dict[str, Any], container: str) -> None:
    """An application credential (id + secret, no user, password or project) logs in to the
    project it was made for; a wrong secret is AuthenticationFailed naming the credential."""
    env = keystone_env
    ks = env["keystone_aio"]
    cred_id, secret = ks.create_application_credential(
        env["auth_url"], ks.password_auth(env["user"], env["password"], env["project"], env["domain"], env["domain"]),
        f"store-{uuid.uuid4().hex[:8]}")
    keys = keystone_keys(env, container, cloudfiles_user=None, cloudfiles_api_key=None, project_name=None,
                         project_domain_name=None, user_domain_name=None,
                         application_credential_id=cred_id, application_credential_secret=secret)
    store = CloudFileStorage(**keys)
    try:
        store.store_local_file(str(ROOT / "pyproject.toml"), ["a", "pyproject.toml"])
        assert store.read_range(["a", "pyproject.toml"], 0, 1 << 20) == (ROOT / "pyproject.toml").read_bytes()
        assert store.session.storage_url is not None
        assert store.session.storage_url.endswith(f"/v1/AUTH_{env['project_id']}")
    finally:
        store.close()
    with pytest.raises(AuthenticationFailed, match=f"HTTP 401.*application credential '{cred_id}'"):
        CloudFileStorage(**{**keys, "application_credential_secret": "not-the-secret"})
    with pytest.raises(StorageConfigError, match="application_credential_secret"):
        CloudFileStorage(**{**keys, "application_credential_secret": ""})


@pytest.mark.parametrize(("region", "endpoint_type", "servicenet", "live"), [
    ("RegionOne", None, None, True),            # public by default
    ("RegionOne", "publicURL", None, True),     # swiftclient's spelling
    ("RegionOne", "internal", None, False),
    ("RegionOne", None, "true", False),         # ServiceNet = the internal endpoint
    ("RegionTwo", None, None, False),
    ("RegionTwo", "internal", None, True),
    ("RegionTwo", None, "true", True),
    ("RegionTwo", "internal", "true", True),
])
def test_region_and_interface_select_the_endpoint(keystone_env: dict[str, Any], container: str, region: str,
                                                  endpoint_type: str | None, servicenet: str | None,
                                                  live: bool) -> None:
    """The catalog has the live proxy and a dead port in two regions and two interfaces: the store
    uses exactly the endpoint its region_name / endpoint_type / cloudfiles_use_servicenet name."""
    env = keystone_env
    # A dead endpoint refuses connections at once: a short retry_deadline (one attempt) bounds the test.
    keys = keystone_keys(env, container, region_name=region, endpoint_type=endpoint_type,
                         cloudfiles_use_servicenet=servicenet, retry_deadline=None if live else "1")
    if live:
        store = CloudFileStorage(**keys)
        try:
            assert port_of(store.session.storage_url) == env["proxy_port"]
            store.store_local_file(str(ROOT / "README.md"), [f"{region}.md"])
            assert store.stat([f"{region}.md"]).size == (ROOT / "README.md").stat().st_size
        finally:
            store.close()
    else:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as refused:
            CloudFileStorage(**keys)
        assert f"127.0.0.1:{env['dead_port']}" in str(refused.value)
        assert not isinstance(refused.value, AuthenticationFailed)
        assert time.monotonic() - started < 30  # retry_deadline 1 s, with room for a loaded machine


def test_unknown_region_and_conflicting_options(keystone_env: dict[str, Any], container: str) -> None:
    """No endpoint for the region: a config error naming what the catalog has; Keystone down:
    StorageUnavailable naming it (a versionless auth URL gets /v3); ServiceNet with another
    endpoint type, ServiceNet or application credentials with v1 auth, and v2.0: refused."""
    env = keystone_env
    with pytest.raises(StorageConfigError, match="no object-store endpoint.*'RegionNine'.*public/RegionOne"):
        make_store(env, container, region_name="RegionNine")
    with pytest.raises(StorageConfigError, match="servicenet.*internal"):
        make_store(env, container, cloudfiles_use_servicenet="true", endpoint_type="public")
    with pytest.raises(StorageConfigError, match="endpoint_type"):
        make_store(env, container, endpoint_type="sideways")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=f"cannot reach Keystone at http://127.0.0.1:{env['dead_port']}/v3"):
        make_store(env, container, cloudfiles_host=f"http://127.0.0.1:{env['dead_port']}", retry_deadline="1")
    assert time.monotonic() - started < 30
    v1 = {"cloudfiles_host": "http://127.0.0.1:1/auth/v1.0", "cloudfiles_user": "a:b", "cloudfiles_api_key": "k",
          "cloudfiles_container": container}
    with pytest.raises(StorageConfigError, match="cloudfiles_use_servicenet.*auth_version = 3"):
        CloudFileStorage(**v1, cloudfiles_use_servicenet="true")
    with pytest.raises(StorageConfigError, match="need auth_version = 3"):
        CloudFileStorage(**v1, application_credential_id="x", application_credential_secret="y")
    with pytest.raises(StorageConfigError, match="2.0"):
        CloudFileStorage(**v1, auth_version="2.0")


# ------------------------------------------------------------------------------ expiring tokens


@pytest.fixture
def slow_region(keystone_env: dict[str, Any]) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the Keystone proxy, in the catalog as RegionSlow public."""
    env = keystone_env
    with FaultProxy(env["proxy_port"]) as proxy:
        endpoint = env["admin"].create_endpoint(env["service_id"], "RegionSlow", "public",
                                                f"http://127.0.0.1:{proxy.port}/v1/AUTH_$(project_id)s")
        try:
            yield proxy
        finally:
            env["admin"].delete_endpoint(endpoint)


def test_token_expires_during_a_large_upload_and_a_long_listing(keystone_env: dict[str, Any], container: str,
                                                               slow_region: FaultProxy, tmp_path: Path) -> None:
    """At once, through a proxy that slows requests down: a 15 MiB SLO upload (segment PUTs 1.6 s
    each) and a listing of 150 entries in pages of 20 (each page 3.5 s), both outliving the 20 s
    token they started with.  Swift's 401 leads to a new login and the request is sent again:
    the object holds every byte, and the listing has every entry once."""
    env = keystone_env
    # Segments one by one; generous timeouts: a slowed request waits for a new token's validation
    # by the single-threaded Keystone, which takes seconds on a loaded machine.
    store = make_store(env, container, region_name="RegionSlow", workers="1", timeout="30", retry_deadline="120")
    try:
        assert port_of(store.session.storage_url) == slow_region.port
        names = [f"item-{i:04d}.txt" for i in range(150)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda n: store.session.call("put_object", container, f"many/{n}", n.encode(), name=n),
                          names))
        store.listing_limit = 20
        data = os.urandom(15 * 1048576 + 4321)
        source = tmp_path / "big.bin"
        source.write_bytes(data)
        slow_region.add_rule(method="PUT", path="_segments/", action="delay", delay=1.6, times=None)
        slow_region.add_rule(method="GET", path=r"\?.*prefix=many", action="delay", delay=3.5, times=None)

        def timed(func: Any, *args: Any) -> tuple[Any, float]:
            started = time.monotonic()
            return func(*args), time.monotonic() - started

        with ThreadPoolExecutor(max_workers=2) as pool:
            upload = pool.submit(timed, store.store_local_file, str(source), ["big.bin"])
            listing = pool.submit(timed, store.list_dir, ["many"])
            entry, upload_took = upload.result(timeout=600)
            entries, listing_took = listing.result(timeout=600)
        slow_region.clear()
        assert upload_took > env["token_expiration"] and listing_took > env["token_expiration"], \
            f"upload {upload_took:.1f} s, listing {listing_took:.1f} s: no token could expire"
        refused = [(method, target) for method, target, outcome in slow_region.requests if outcome == 401]
        assert refused, slow_region.requests
        assert entry.size == len(data)
        got = store.read_range(["big.bin"], 0, len(data) + 1)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        assert sorted(e.name for e in entries) == names
        assert all(e.size == len(e.name) for e in entries)
    finally:
        store.close()


# ------------------------------------------------------------------------------ one-line errors


def mount_fails(config: Path, mountpoint: Path) -> str:
    """``goblinfs mount CONFIG MNT`` (daemonizing, as a user runs it): must fail with one line."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run([sys.executable, "-m", "goblinfs", "mount", str(config), str(mountpoint)],
                                capture_output=True, text=True, env=env, timeout=120, cwd=str(ROOT))
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not is_mounted(mountpoint)
    return lines[0]


@pytest.mark.parametrize(("what", "overrides", "expected"), [
    ("password", {"cloudfiles_api_key": "wrong-password"}, "Keystone refused the login (HTTP 401) of user 'gobbler'"),
    ("project", {"project_name": "elsewhere"}, "Keystone refused the login (HTTP 401) of user 'gobbler'"),
    ("unknown project", {"project_name": "nowhere"}, "for project 'nowhere'"),
    ("user domain", {"user_domain_name": "Default"}, "(domain 'Default')"),
    ("region", {"region_name": "RegionNine"}, "no object-store endpoint of interface 'public' in region 'RegionNine'"),
])
def test_refused_login_is_one_line_before_mounting(keystone_env: dict[str, Any], tmp_path: Path, what: str,
                                                   overrides: dict[str, str], expected: str) -> None:
    """Wrong password, a project without a role or unknown, the wrong domain, an unknown region:
    ``goblinfs mount`` exits non-zero with one line saying why, and nothing is mounted."""
    keys = keystone_keys(keystone_env, f"gfs-ks-never-{uuid.uuid4().hex[:6]}", **overrides)
    config = write_config(tmp_path / "cfg", {"storage:publicstore": keys,
                                             "storage:queuestore": {**keys, "cloudfiles_container": "q"}})
    line = mount_fails(config, tmp_path / "mnt")
    assert line.startswith("goblinfs: ") and expected in line, line
    assert keys["cloudfiles_api_key"] not in line  # the password is never shown


def test_servicenet_with_v1_auth_is_one_line(tmp_path: Path) -> None:
    """cloudfiles_use_servicenet = true with tempauth (v1) cannot mean anything: one config line."""
    keys = {"cloudfiles_host": "http://127.0.0.1:1/auth/v1.0", "cloudfiles_user": "test:tester",
            "cloudfiles_api_key": "testing", "cloudfiles_container": "c", "cloudfiles_use_servicenet": "true"}
    config = write_config(tmp_path / "cfg", {"storage:publicstore": keys, "storage:queuestore": keys})
    line = mount_fails(config, tmp_path / "mnt")
    assert "cloudfiles_use_servicenet = true needs Keystone" in line, line
