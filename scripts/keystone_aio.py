#!/usr/bin/env python3
"""Start and stop a real OpenStack Keystone (identity v3) on 127.0.0.1, for tests.

Uses Debian 12's ``python3-keystone`` (Keystone 22, Zed): its ``keystone-manage`` and its WSGI
application, served by a small threaded ``wsgiref`` server run with Debian's python3 (the
interpreter of ``keystone-manage``).  No system service is used or started, and nothing is read
from ``/etc/keystone``: everything lives in one private state directory DIR: ``keystone.conf``,
the sqlite database, the fernet token/receipt and credential key repositories, the log in
DIR/log and ``procs.json`` (the PID with its start time, as ``swift_aio.py`` records them, so
``stop`` signals only that process).

``start`` runs ``keystone-manage fernet_setup``, ``receipt_setup``, ``credential_setup``,
``db_sync`` (then puts the database in WAL mode) and ``bootstrap`` (user ``admin`` in project
``admin``, region ``RegionOne``, the identity endpoint), then serves the API and waits until an
admin login works.  Tokens live ``expiration`` seconds (``--token-expiration``; short ones let
tests see tokens expire), and passwords are hashed with 4 bcrypt rounds (the minimum: logins are frequent in tests).

Command line::

    keystone_aio.py start --dir DIR [--port N] [--token-expiration S]
    keystone_aio.py stop --dir DIR

``start`` prints one line of JSON (also written to DIR/env.json) and leaves the server running
detached; ``stop`` ends it by recorded PID (SIGTERM, then SIGKILL).

In process (e.g. from a pytest fixture)::

    env = keystone_aio.start(state_dir, token_expiration=10)
    admin = keystone_aio.Admin(env)
    project = admin.create_project("media", domain_id=admin.create_domain("goblins"))
    ...
    keystone_aio.stop(state_dir)

:class:`Admin` makes domains, projects, users, role assignments, regions, services, endpoints and
application credentials through Keystone's REST API (the standard library's urllib, 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import grp
import json
import logging
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import swift_aio  # noqa: E402 - the sibling script: process records, ports, HTTP, stop by PID

LOG = logging.getLogger("keystone_aio")

START_TIMEOUT = 120.0
DEFAULT_TOKEN_EXPIRATION = 3600
ADMIN_USER, ADMIN_PASSWORD, ADMIN_PROJECT = "admin", "aio-admin-secret", "admin"
REGION = "RegionOne"
ENV_FILE = "env.json"
MANAGE = "keystone-manage"


class KeystoneError(RuntimeError):
    """Keystone could not be started, stopped or asked."""


# --------------------------------------------------------------------------- configuration


def _keystone_conf(state: Path, token_expiration: int) -> str:
    return f"""\
[DEFAULT]
debug = false
use_stderr = true

[database]
connection = sqlite:///{state / "keystone.db"}

[token]
provider = fernet
expiration = {token_expiration}

[fernet_tokens]
key_repository = {state / "fernet-keys"}

[fernet_receipts]
key_repository = {state / "fernet-receipts"}

[credential]
key_repository = {state / "credential-keys"}

[identity]
password_hash_rounds = 4

[cache]
enabled = false
"""


def _python() -> str:
    """Debian's python3, the interpreter of keystone-manage (it has the keystone package)."""
    return swift_aio._interpreter_of(MANAGE)


def _manage(state: Path, *args: str) -> None:
    conf = state / "keystone.conf"
    program = shutil.which(MANAGE) or MANAGE
    proc = subprocess.run([program, "--config-file", str(conf), *args], capture_output=True, text=True,
                          cwd=state, timeout=300)
    if proc.returncode != 0:
        raise KeystoneError(f"keystone-manage {args[0]} failed (exit {proc.returncode}): "
                            f"{(proc.stdout + proc.stderr).strip()[-2000:]}")


def _wal(database: Path) -> None:
    """Put the sqlite database in WAL mode (kept in the file).

    In the default rollback-journal mode a write of Keystone's (creating a domain) failed with
    "database is locked" after the busy timeout: another of its connections still held a read
    lock.  With WAL, readers never block the writer.
    """
    connection = sqlite3.connect(database)
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        connection.close()
    if mode != "wal":
        raise KeystoneError(f"could not put {database} in WAL mode (journal_mode is {mode})")


# --------------------------------------------------------------------------- REST API


def _request(method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None,
             ok: tuple[int, ...] = (200, 201, 204)) -> tuple[dict[str, str], dict[str, Any]]:
    """One Keystone API call (JSON in and out); KeystoneError unless the status is in *ok*."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    data = json.dumps(body).encode() if body is not None else None
    status, resp_headers, raw = swift_aio._http(method, url, headers, data)
    if status not in ok:
        raise KeystoneError(f"{method} {url} answered {status}: {raw[:300]!r}")
    lowered = {k.lower(): v for k, v in resp_headers.items()}
    return lowered, (json.loads(raw) if raw.strip() else {})


def password_auth(user: str, password: str, project: str, user_domain: str = "Default",
                  project_domain: str = "Default") -> dict[str, Any]:
    """The ``auth`` body of a password login scoped to a project (all by name)."""
    return {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": user_domain}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": project_domain}}}}


def login(auth_url: str, auth: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """POST /v3/auth/tokens; the token and the token body (catalog included)."""
    headers, body = _request("POST", f"{auth_url}/auth/tokens", body={"auth": auth}, ok=(201,))
    return headers["x-subject-token"], body["token"]


def catalog_url(token_body: dict[str, Any], service_type: str, interface: str, region: str) -> str:
    """The URL of one endpoint of a token's catalog."""
    for service in token_body.get("catalog", []):
        if service["type"] == service_type:
            for endpoint in service["endpoints"]:
                if endpoint["interface"] == interface and endpoint["region_id"] == region:
                    return str(endpoint["url"])
    raise KeystoneError(f"no {service_type} {interface} endpoint in {region}")


class Admin:
    """Keystone administration as the bootstrap admin (a fresh token per call: tokens may be short)."""

    def __init__(self, env: dict[str, Any]) -> None:
        self.url = env["auth_url"]
        self.auth = password_auth(env["admin_user"], env["admin_password"], env["admin_project"])

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              ok: tuple[int, ...] = (200, 201, 204)) -> dict[str, Any]:
        token, _ = login(self.url, self.auth)
        return _request(method, f"{self.url}{path}", token, body, ok)[1]

    def _id_of(self, collection: str, name: str, query: str = "") -> str | None:
        found = self._call("GET", f"/{collection}?name={name}{query}")[collection]
        return found[0]["id"] if found else None

    def create_domain(self, name: str) -> str:
        return self._id_of("domains", name) or self._call(
            "POST", "/domains", {"domain": {"name": name}})["domain"]["id"]

    def create_project(self, name: str, domain_id: str = "default") -> str:
        return self._id_of("projects", name, f"&domain_id={domain_id}") or self._call(
            "POST", "/projects", {"project": {"name": name, "domain_id": domain_id}})["project"]["id"]

    def create_user(self, name: str, password: str, domain_id: str = "default") -> str:
        return self._id_of("users", name, f"&domain_id={domain_id}") or self._call(
            "POST", "/users", {"user": {"name": name, "password": password, "domain_id": domain_id}})["user"]["id"]

    def role_id(self, name: str) -> str:
        role = self._id_of("roles", name)
        if role is None:
            raise KeystoneError(f"no role {name!r}")
        return role

    def grant(self, user_id: str, project_id: str, role: str) -> None:
        self._call("PUT", f"/projects/{project_id}/users/{user_id}/roles/{self.role_id(role)}", ok=(201, 204))

    def create_region(self, region: str) -> None:
        self._call("PUT", f"/regions/{region}", {"region": {}}, ok=(200, 201, 409))  # 409: it exists

    def create_service(self, service_type: str, name: str) -> str:
        for service in self._call("GET", f"/services?type={service_type}")["services"]:
            if service["name"] == name:
                return str(service["id"])
        return self._call("POST", "/services", {"service": {"type": service_type, "name": name}})["service"]["id"]

    def create_endpoint(self, service_id: str, region: str, interface: str, url: str) -> str:
        """A catalog endpoint (the region is created when missing)."""
        self.create_region(region)
        return self._call("POST", "/endpoints", {"endpoint": {
            "service_id": service_id, "region_id": region, "interface": interface, "url": url}})["endpoint"]["id"]

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._call("DELETE", f"/endpoints/{endpoint_id}", ok=(204,))


def create_application_credential(auth_url: str, auth: dict[str, Any], name: str) -> tuple[str, str]:
    """An application credential of the logged-in user for the login's project: (id, secret)."""
    token, body = login(auth_url, auth)
    user_id = body["user"]["id"]
    _, created = _request("POST", f"{auth_url}/users/{user_id}/application_credentials", token,
                          {"application_credential": {"name": name}}, ok=(201,))
    cred = created["application_credential"]
    return cred["id"], cred["secret"]


# --------------------------------------------------------------------------- start / stop


def start(dir: str | os.PathLike[str], port: int | None = None, token_expiration: int = DEFAULT_TOKEN_EXPIRATION,
          timeout: float = START_TIMEOUT, die_with_parent: bool = True) -> dict[str, Any]:
    """Set up Keystone in ``dir`` (once) and serve it on 127.0.0.1; return the env dict.

    ``port``: a free one unless given.  ``die_with_parent`` (in process; the command line turns
    it off): the server gets SIGTERM when the calling thread dies.  On failure the server is
    stopped again and KeystoneError raised.
    """
    state = Path(dir).resolve()
    if shutil.which(MANAGE) is None:
        raise KeystoneError("keystone-manage not found (apt-get install python3-keystone)")
    state.mkdir(parents=True, exist_ok=True)
    if any(swift_aio._alive(rec) for rec in swift_aio._read_procs(state)["procs"]):
        raise KeystoneError(f"a keystone from {state} is still running; stop it first")
    (state / "log").mkdir(exist_ok=True)
    t0 = time.monotonic()
    (state / "keystone.conf").write_text(_keystone_conf(state, token_expiration))
    for attempt in range(1, 4):
        chosen = port if port is not None else swift_aio._free_ports(1)[0]
        auth_url = f"http://127.0.0.1:{chosen}/v3"
        try:
            if not (state / "keystone.db").exists():
                for repo in ("fernet-keys", "fernet-receipts", "credential-keys"):
                    (state / repo).mkdir(mode=0o700, exist_ok=True)
                owner = ["--keystone-user", pwd.getpwuid(os.getuid()).pw_name,
                         "--keystone-group", grp.getgrgid(os.getgid()).gr_name]  # the key files' owner
                for setup in ("fernet_setup", "receipt_setup", "credential_setup"):
                    _manage(state, setup, *owner)
                _manage(state, "db_sync")
                _wal(state / "keystone.db")
            # Idempotent: also refreshes the identity endpoint to this port.
            _manage(state, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
                    "--bootstrap-username", ADMIN_USER, "--bootstrap-project-name", ADMIN_PROJECT,
                    "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
                    "--bootstrap-region-id", REGION, "--bootstrap-public-url", auth_url)
            return _serve_once(state, chosen, auth_url, t0 + timeout, die_with_parent, t0)
        except swift_aio._PortTaken as e:
            if port is not None or attempt == 3:
                raise KeystoneError(str(e)) from None
            LOG.warning("%s; retrying with another port", str(e).splitlines()[0])
        except subprocess.TimeoutExpired as e:
            raise KeystoneError(f"keystone-manage timed out: {e}") from None
        except swift_aio.AioError as e:
            raise KeystoneError(str(e)) from None
    raise AssertionError("unreachable")


def _serve_once(state: Path, port: int, auth_url: str, deadline: float, die_with_parent: bool,
                t0: float) -> dict[str, Any]:
    starter = swift_aio._Starter(state, die_with_parent)
    starter.record = {"procs": [], "tmpfs": None, "ports": {"keystone": port}}
    starter.save()
    try:
        conf = state / "keystone.conf"
        proc = starter.spawn("keystone", [_python(), str(Path(__file__).resolve()), "serve",
                                          "--config", str(conf), "--port", str(port)],
                             match=f"serve --config {conf} --port {port}")
        starter.wait_port("keystone", proc, port, deadline)
        last = "no attempt"
        while True:
            if proc.poll() is not None:
                log_path = state / "log" / "keystone.log"  # the spawned process's stderr
                raise KeystoneError(f"keystone exited with status {proc.returncode}:\n{swift_aio._tail(log_path)}")
            try:
                login(auth_url, password_auth(ADMIN_USER, ADMIN_PASSWORD, ADMIN_PROJECT))
                break
            except (KeystoneError, OSError) as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise KeystoneError(f"keystone at {auth_url} not ready in time (last: {last})\n"
                                    f"{swift_aio._tail(state / 'log' / 'keystone.log')}")
            time.sleep(0.2)
    except BaseException:
        LOG.debug("start failed, stopping what was started", exc_info=True)
        stop(state)
        raise
    env = {
        "auth_url": auth_url,
        "port": port,
        "admin_user": ADMIN_USER,
        "admin_password": ADMIN_PASSWORD,
        "admin_project": ADMIN_PROJECT,
        "region": REGION,
        "pids": [rec["pid"] for rec in starter.record["procs"]],
        "dir": str(state),
    }
    swift_aio._write_json(state / ENV_FILE, env)
    LOG.info("keystone ready in %.1f s at %s", time.monotonic() - t0, auth_url)
    return env


def stop(dir: str | os.PathLike[str]) -> None:
    """Stop the server recorded in ``dir`` (SIGTERM, then SIGKILL); fine if none runs."""
    try:
        swift_aio.stop(dir)
    except swift_aio.AioError as e:
        raise KeystoneError(str(e)) from None


def serve(config: str, port: int) -> None:
    """Serve Keystone's WSGI application on 127.0.0.1:port, one request at a time.

    Runs under Debian's python3 (it imports keystone); the access log goes to stderr.  Not
    threaded: concurrent requests made the sqlite database "locked" (a 500) under load.
    """
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    os.environ["OS_KEYSTONE_CONFIG_FILES"] = config
    os.environ.pop("OS_KEYSTONE_CONFIG_DIR", None)
    sys.argv[1:] = []  # keystone parses the command line with oslo.config
    from keystone.server.wsgi import initialize_public_application  # type: ignore[import-not-found]

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {format % args}\n")

    class Server(WSGIServer):
        request_queue_size = 128  # connections waiting their turn (default 5)

    application = initialize_public_application()
    server = make_server("127.0.0.1", port, application, server_class=Server, handler_class=Handler)
    sys.stderr.write(f"keystone_aio: serving on 127.0.0.1:{port}\n")
    sys.stderr.flush()
    server.serve_forever()


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start Keystone; print its env as one JSON line")
    p_start.add_argument("--dir", required=True, help="private state directory (created)")
    p_start.add_argument("--port", type=int, default=None, help="listen on this port (default: a free one)")
    p_start.add_argument("--token-expiration", type=int, default=DEFAULT_TOKEN_EXPIRATION,
                         help=f"token lifetime in seconds (default {DEFAULT_TOKEN_EXPIRATION})")
    p_stop = sub.add_parser("stop", help="stop the Keystone recorded in DIR")
    p_stop.add_argument("--dir", required=True)
    p_serve = sub.add_parser("serve", help=argparse.SUPPRESS)
    p_serve.add_argument("--config", required=True)
    p_serve.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="keystone_aio: %(relativeCreated)6.0f ms: %(message)s")
    try:
        if args.command == "start":
            env = start(args.dir, port=args.port, token_expiration=args.token_expiration, die_with_parent=False)
            print(json.dumps(env), flush=True)
        elif args.command == "stop":
            stop(args.dir)
        else:
            serve(args.config, args.port)
    except KeystoneError as e:
        print(f"keystone_aio: {args.command} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
