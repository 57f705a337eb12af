#!/usr/bin/env python3
"""Start and stop a real OpenStack Swift all-in-one on 127.0.0.1, for tests and benchmarks.

Uses Debian 12's packages (``swift swift-proxy swift-account swift-container swift-object
memcached``, Swift 2.30) and nothing but the Python standard library.

Processes: memcached, the proxy, account, container and object servers (each single-process,
``workers = 0``, listening on 127.0.0.1 only), and the container and object updaters (so the
account's byte/object counts catch up within ~10 s, and failed container updates are replayed).

Everything lives in one private state directory DIR: ``swift.conf``, the four server configs,
the rings, the device directory, one log file per process in DIR/log and ``procs.json`` (the
PIDs it started, with their start times, so a reused PID is never signalled).  Nothing is read from or
written to the host's ``/etc/swift`` configs: Swift reads its hash prefix/suffix and its
constraints (``max_file_size``) from ``/etc/swift/swift.conf`` only, so each Swift server runs
in its own mount namespace (``unshare -m``) with DIR/swift.conf bind-mounted over that path.
Several instances with different ``max_file_size`` values can therefore run side by side.
The mount disappears with the server's namespace; nothing is mounted on the host (unless the
device directory needs a tmpfs for user xattrs, which ``stop`` unmounts).

Command line::

    swift_aio.py start --dir DIR [--max-file-size BYTES] [--port-base N]
    swift_aio.py stop --dir DIR

``start`` prints one line of JSON (also written to DIR/env.json) and leaves the services
running detached; ``stop`` ends them by recorded PID (SIGTERM, then SIGKILL after 10 s).

In process (e.g. from a pytest fixture)::

    env = swift_aio.start(state_dir, max_file_size=5 * 1048576)
    ...
    swift_aio.stop(state_dir)

Needs root (mount namespaces and bind mounts).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG = logging.getLogger("swift_aio")

DEFAULT_MAX_FILE_SIZE = 5 * 1048576
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0

USER, KEY = "test:tester", "testing"
USER2, KEY2 = "test2:tester2", "testing2"

PROCS_FILE = "procs.json"
ENV_FILE = "env.json"
DEVICE = "d1"
#: 2 partitions: the container updater forks one child per partition holding containers.
PART_POWER = 1
RING_KINDS = ("account", "container", "object")
#: Background daemons (no port): (name, program, config of).
UPDATERS = (("container-updater", "swift-container-updater", "container"),
            ("object-updater", "swift-object-updater", "object"))
#: Seconds between the passes of each updater (by the config it reads).  Each pass forks a child
#: that re-runs eventlet's monkey patching (~0.5-1 s of CPU), so not every second.
UPDATER_INTERVAL = {"account": 60, "container": 10, "object": 60}
#: Order of the ports from --port-base.
PORT_NAMES = ("proxy", "account", "container", "object", "memcached")
HOST_SWIFT_CONF = Path("/etc/swift/swift.conf")

#: Proxy pipeline: Debian's default minus container_sync and ratelimit.  Swift 2.30 would
#: auto-insert catch_errors/gatekeeper/listing_formats/copy/dlo/versioned_writes if missing;
#: this order is the one it expects, so nothing is moved.
PROXY_PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl "
    "tempauth copy container-quotas account-quotas slo dlo versioned_writes symlink "
    "proxy-logging proxy-server"
)

#: A second proxy (``start_keystone_proxy``) authenticates with Keystone instead: authtoken
#: validates the token, keystoneauth maps the project's roles to its AUTH_<project id> account.
KEYSTONE_PROXY_PIPELINE = PROXY_PIPELINE.replace(" tempauth ", " authtoken keystoneauth ")
KEYSTONE_PROXY = "proxy-keystone"

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: Popen objects of the children started in this process, so stop() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class AioError(RuntimeError):
    """The all-in-one could not be started or stopped."""


class _PortTaken(AioError):
    """A server could not bind its port (taken since it was found free)."""


#: What memcached and Swift (with bind_timeout) log when their port is taken.
_PORT_TAKEN_MARKS = ("Address already in use", "Could not bind to")


# --------------------------------------------------------------------------- process records


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state letter, parent PID, session ID, start time in clock ticks) of a PID, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _alive(rec: dict[str, Any]) -> bool:
    """Whether the process of a record still runs: same PID, same start time, same command.

    A recorded process that exited as a child of this process (start() called in-process) is
    reaped here, so it does not linger as a zombie.
    """
    pid = int(rec["pid"])
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
    st = _proc_stat(pid)
    if st is None or st[3] != rec["starttime"]:
        return False
    if st[0] in ("Z", "X"):
        if st[1] == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        return False
    return rec["match"] in _proc_cmdline(pid)


def _read_procs(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / PROCS_FILE).read_text())
    except FileNotFoundError:
        return {"procs": [], "tmpfs": None}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    kept = text.splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in kept) if kept else f"(empty log {path})"


# --------------------------------------------------------------------------- ports and HTTP


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports below the kernel's ephemeral range.

    Ports from the ephemeral range (what binding port 0 gives) can be taken in the meantime as
    the source port of any outgoing connection; ports below it only by another listener.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(20000, low))
    random.shuffle(candidates)
    chosen: list[int] = []
    for port in candidates:
        if _port_is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    # No room below the ephemeral range: let the kernel choose.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself has a TCP socket listening on ``port`` (not someone else)."""
    inodes = set()
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
        if not inodes:
            return False
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                link = os.readlink(f"{fd_dir}/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
    except OSError:
        return False
    return False


def _http(method: str, url: str, headers: dict[str, str] | None = None,
          data: bytes | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request (no proxies from the environment); returns status, headers, body."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


# --------------------------------------------------------------------------- configuration


def _swift_conf(max_file_size: int, tag: str) -> str:
    return f"""\
[swift-hash]
swift_hash_path_suffix = goblinfs-aio-{tag}
swift_hash_path_prefix = goblinfs-aio-{tag}

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
max_file_size = {max_file_size}
"""


def _common_default(state: Path, port: int, name: str) -> str:
    return f"""\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = root
swift_dir = {state}
devices = {state / "devices"}
mount_check = false
disable_fallocate = true
fallocate_reserve = 0
log_name = {name}
log_level = INFO
# Give up quickly on a taken port (default 30 s): start() then retries with other ports.
bind_timeout = 3
recon_cache_path = {state / "recon"}
"""


def _backend_conf(state: Path, kind: str, port: int) -> str:
    return _common_default(state, port, f"{kind}-server") + f"""
[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}

[{kind}-replicator]

[{kind}-auditor]

[{kind}-updater]
# The container updater refreshes the account's byte/object counts (HEAD account, statfs);
# the object updater replays container updates that failed under load.
interval = {UPDATER_INTERVAL[kind]}
concurrency = 1

[{kind}-reaper]
"""


def _proxy_conf(state: Path, port: int, memcached_port: int) -> str:
    return _common_default(state, port, "proxy-server") + f"""
[pipeline:main]
pipeline = {PROXY_PIPELINE}

[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {KEY} .admin
user_test2_tester2 = {KEY2} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:tempurl]
use = egg:swift#tempurl

[filter:copy]
use = egg:swift#copy

[filter:container-quotas]
use = egg:swift#container_quotas

[filter:account-quotas]
use = egg:swift#account_quotas

# Segments of any size (SLO in 2.30 has no min_segment_size) and no rate limit on the
# segments of a GET, so tests with many small segments are not slowed to 1 segment/s.
[filter:slo]
use = egg:swift#slo
rate_limit_after_segment = 1000000
rate_limit_segments_per_sec = 0

[filter:dlo]
use = egg:swift#dlo
rate_limit_after_segment = 1000000
rate_limit_segments_per_sec = 0

[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true

[filter:symlink]
use = egg:swift#symlink
"""


#: The authtoken filter of the Keystone proxy: keystonemiddleware's, except that the proxy's own
#: (service) token is renewed only when fewer than ``min_token_life`` seconds are left, not 120
#: (keystoneauth's default): with the seconds-long tokens of a test Keystone, 120 meant a new
#: service login at every use of that token, several per validated user token.
AUTHTOKEN_MODULE = "swift_aio_authtoken"
_AUTHTOKEN_SOURCE = """\
\"\"\"keystonemiddleware's authtoken, the service token renewed MIN_TOKEN_LIFE seconds before it expires.\"\"\"
from keystoneauth1.identity import base
from keystonemiddleware import auth_token

base.BaseIdentityPlugin.MIN_TOKEN_LIFE_SECONDS = {min_token_life}
filter_factory = auth_token.filter_factory
"""


def _keystone_proxy_conf(state: Path, port: int, memcached_port: int, keystone: dict[str, str]) -> str:
    """The tempauth proxy's config with authtoken + keystoneauth in its place (same backends)."""
    conf = _proxy_conf(state, port, memcached_port)
    tempauth = conf[conf.index("[filter:tempauth]"):conf.index("[filter:cache]")]
    conf = conf.replace(f"pipeline = {PROXY_PIPELINE}", f"pipeline = {KEYSTONE_PROXY_PIPELINE}")
    conf = conf.replace("log_name = proxy-server", f"log_name = {KEYSTONE_PROXY}")
    return conf.replace(tempauth, f"""\
[filter:authtoken]
paste.filter_factory = {AUTHTOKEN_MODULE}:filter_factory
www_authenticate_uri = {keystone["auth_url"]}
auth_url = {keystone["auth_url"]}
auth_type = password
# The identity endpoint authtoken validates tokens at (Keystone's bootstrap registers a public one).
interface = public
service_token_roles_required = true
username = {keystone["username"]}
password = {keystone["password"]}
project_name = {keystone["project_name"]}
user_domain_name = Default
project_domain_name = Default
delay_auth_decision = true
include_service_catalog = false
cache = swift.cache

[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = {keystone.get("operator_roles", "admin, member")}

""")


def _supports_user_xattrs(path: Path) -> bool:
    probe = path / ".xattr-probe"
    try:
        probe.touch()
        os.setxattr(probe, "user.swift.probe", b"1")
        return os.getxattr(probe, "user.swift.probe") == b"1"
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def _is_mountpoint(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # eventlet's green DNS pulls in dnspython and httpx: ~1.4 s of CPU per Swift process at
    # start-up, for name resolution that 127.0.0.1 does not need.
    env["EVENTLET_NO_GREENDNS"] = "yes"
    return env


#: Builds the three rings in one interpreter with Swift's own RingBuilder (what
#: swift-ring-builder create/add/rebalance does), instead of nine ~1 s CLI runs.
_RING_SCRIPT = """
import json, sys
from swift.common.ring import RingBuilder
for spec in json.loads(sys.argv[1]):
    builder = RingBuilder(spec["part_power"], 1, 0)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": spec["port"],
                     "replication_ip": "127.0.0.1", "replication_port": spec["port"],
                     "device": spec["device"], "weight": 1, "meta": ""})
    builder.rebalance()
    builder.save(spec["builder"])
    builder.get_ring().save(spec["ring"])
"""


def _interpreter_of(program: str) -> str:
    """The interpreter named on the #! line of an installed Swift program (Debian's python3)."""
    path = shutil.which(program)
    if path:
        with open(path, "rb") as f:
            first = f.readline().decode(errors="replace")
        if first.startswith("#!"):
            return first[2:].strip().split()[0]
    return "/usr/bin/python3"


def _build_rings(state: Path, ports: dict[str, int]) -> None:
    """One replica, one device, part power PART_POWER: account, container and object rings."""
    specs = [{"part_power": PART_POWER, "port": ports[kind], "device": DEVICE,
              "builder": str(state / f"{kind}.builder"), "ring": str(state / f"{kind}.ring.gz")}
             for kind in RING_KINDS]
    proc = subprocess.run([_interpreter_of("swift-ring-builder"), "-c", _RING_SCRIPT, json.dumps(specs)],
                          capture_output=True, text=True, env=_child_env())
    if proc.returncode == 0 and all(Path(spec["ring"]).exists() for spec in specs):
        return
    LOG.warning("building rings with Swift's RingBuilder failed, using swift-ring-builder: %s",
                proc.stderr.strip()[-500:])
    builder = shutil.which("swift-ring-builder") or "swift-ring-builder"
    for kind in RING_KINDS:
        path = state / f"{kind}.builder"
        path.unlink(missing_ok=True)
        for args in (
            ["create", str(PART_POWER), "1", "0"],
            ["add", f"r1z1-127.0.0.1:{ports[kind]}/{DEVICE}", "1"],
            ["rebalance"],
        ):
            proc = subprocess.run([builder, str(path), *args], capture_output=True, text=True)
            # swift-ring-builder exits 1 for warnings, 2 for errors.
            if proc.returncode not in (0, 1):
                raise AioError(f"swift-ring-builder {path.name} {' '.join(args)} failed "
                               f"(exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()}")
        if not (state / f"{kind}.ring.gz").exists():
            raise AioError(f"swift-ring-builder wrote no {kind}.ring.gz")


# --------------------------------------------------------------------------- start


def _pdeathsig_preexec(parent: int) -> Callable[[], None]:
    """A preexec_fn making the child get SIGTERM when the thread that started it dies.

    The setting survives the exec chain unshare -> sh -> server (none is set-user-ID).
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Starter:
    """Spawns the processes of one instance, recording each PID as soon as it exists."""

    def __init__(self, state: Path, die_with_parent: bool = False) -> None:
        self.state = state
        self.record = _read_procs(state)
        self.preexec = _pdeathsig_preexec(os.getpid()) if die_with_parent else None

    def save(self) -> None:
        _write_json(self.state / PROCS_FILE, self.record)

    def spawn(self, name: str, argv: list[str], match: str) -> subprocess.Popen[bytes]:
        log_path = self.state / "log" / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} swift_aio: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.state, env=_child_env(), start_new_session=True, close_fds=True,
                                    preexec_fn=self.preexec)
        _CHILDREN[proc.pid] = proc
        st = _proc_stat(proc.pid)
        self.record["procs"].append({
            "name": name, "pid": proc.pid, "starttime": st[3] if st else -1,
            "match": match, "log": str(log_path),
        })
        self.save()
        LOG.info("started %s pid %d", name, proc.pid)
        return proc

    def wait_log(self, name: str, proc: subprocess.Popen[bytes], text: str, deadline: float) -> None:
        """Wait for a daemon without a port to log ``text`` (i.e. it got past its start-up)."""
        log_path = self.state / "log" / f"{name}.log"
        while True:
            if proc.poll() is not None:
                raise AioError(f"{name} exited with status {proc.returncode}; log {log_path}:\n{_tail(log_path)}")
            if text in log_path.read_text(errors="replace"):
                return
            if time.monotonic() > deadline:
                raise AioError(f"{name} did not log {text!r} in time; log {log_path}:\n{_tail(log_path)}")
            time.sleep(0.1)

    def wait_port(self, name: str, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        log_path = self.state / "log" / f"{name}.log"
        while True:
            if proc.poll() is not None:
                tail = _tail(log_path)
                error = _PortTaken if any(mark in tail for mark in _PORT_TAKEN_MARKS) else AioError
                raise error(f"{name} exited with status {proc.returncode} before listening on "
                            f"127.0.0.1:{port}; log {log_path}:\n{tail}")
            if _listens(proc.pid, port):
                return
            if time.monotonic() > deadline:
                raise AioError(f"{name} not listening on 127.0.0.1:{port} in time; log {log_path}:\n"
                               f"{_tail(log_path)}")
            time.sleep(0.1)


def _swift_argv(state: Path, program: str, conf: Path) -> list[str]:
    """Run a Swift program in a private mount namespace that sees DIR/swift.conf as /etc/swift/swift.conf.

    unshare execs sh which execs the program: the PID of the spawned process is the program's own.
    ``-v`` logs to the console, i.e. to the process's log file in DIR/log.
    """
    # The new namespace starts with a copy of every mount, FUSE mounts included; a copy would keep
    # such a filesystem alive after it is unmounted on the host (its daemon would never see the
    # unmount). So detach every FUSE mount inside the namespace first.
    detach = "awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts | while read -r m; do umount -l \"$m\"; done; "
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            detach + f'mount --bind "$1" {HOST_SWIFT_CONF} && exec "$2" "$3" -v',
            "sh", str(state / "swift.conf"), shutil.which(program) or program, str(conf)]


def _auth(auth_url: str, user: str, key: str) -> tuple[str, str]:
    status, headers, body = _http("GET", auth_url, {"X-Auth-User": user, "X-Auth-Key": key})
    hdrs = {k.lower(): v for k, v in headers.items()}
    if status // 100 != 2 or "x-storage-url" not in hdrs or "x-auth-token" not in hdrs:
        raise AioError(f"auth as {user} answered {status} {body[:200]!r}")
    return hdrs["x-storage-url"], hdrs["x-auth-token"]


def _round_trip(storage_url: str, token: str) -> None:
    """PUT a container and an object, GET it back, then delete both."""
    container = f"{storage_url}/aio-selftest-{uuid.uuid4().hex[:8]}"
    tok = {"X-Auth-Token": token}
    steps: list[tuple[str, str, bytes | None, tuple[int, ...]]] = [
        ("PUT", container, None, (201, 202)),
        ("PUT", container + "/probe", b"swift-aio", (201,)),
        ("GET", container + "/probe", None, (200,)),
        ("DELETE", container + "/probe", None, (204,)),
        ("DELETE", container, None, (204,)),
    ]
    for method, url, data, ok in steps:
        status, _, body = _http(method, url, tok, data)
        if status not in ok:
            raise AioError(f"{method} {url} answered {status} {body[:200]!r}")
        if method == "GET" and body != b"swift-aio":
            raise AioError(f"GET {url} returned {body!r}, not what was PUT")


def _wait_ready(auth_url: str, deadline: float, procs: dict[str, subprocess.Popen[bytes]],
                state: Path) -> tuple[str, str]:
    last = "no attempt"
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                log_path = state / "log" / f"{name}.log"
                raise AioError(f"{name} exited with status {proc.returncode}; log {log_path}:\n{_tail(log_path)}")
        try:
            storage_url, token = _auth(auth_url, USER, KEY)
            _round_trip(storage_url, token)
            storage_url2, _ = _auth(auth_url, USER2, KEY2)
            return storage_url, storage_url2
        except (AioError, OSError) as e:
            last = str(e)
        if time.monotonic() > deadline:
            logs = "\n".join(f"log {state / 'log' / f'{n}.log'}:\n{_tail(state / 'log' / f'{n}.log', 10)}"
                             for n in ("proxy", "account", "container", "object"))
            raise AioError(f"proxy at {auth_url} not ready in time (last: {last})\n{logs}")
        time.sleep(0.3)


def start(dir: str | os.PathLike[str], max_file_size: int = DEFAULT_MAX_FILE_SIZE,
          port_base: int | None = None, timeout: float = START_TIMEOUT,
          devices_tmpfs: bool | None = None, updaters: bool = True,
          die_with_parent: bool = True) -> dict[str, Any]:
    """Start memcached and the Swift servers with their state in ``dir``; return the env dict.

    Ports are chosen free unless ``port_base`` is given (then proxy, account, container, object
    and memcached listen on port_base .. port_base+4).  ``updaters=False`` leaves out the
    container and object updaters (no background CPU, e.g. for benchmarks; the account's
    byte/object counts then stay stale).

    ``die_with_parent`` (the default in process; the command line turns it off): the processes
    get SIGTERM when the calling thread dies, so a killed test run (timeout, SIGKILL) leaves no
    orphaned servers.  Call it from a thread that lives as long as the servers should (the main
    thread; not a worker thread that ends).  ``devices_tmpfs``: None mounts a tmpfs
    for the devices only if the disk lacks user xattrs.  Data in ``dir`` survives a stop/start.
    On failure everything started is stopped again and AioError is raised.
    """
    state = Path(dir).resolve()
    if os.geteuid() != 0:
        raise AioError("swift_aio needs root (mount namespaces and bind mounts for swift.conf)")
    missing = [b for b in ("memcached", "unshare", "mount", "swift-proxy-server", "swift-account-server",
                           "swift-container-server", "swift-object-server", *(u[1] for u in UPDATERS))
               if shutil.which(b) is None]
    if missing:
        raise AioError(f"missing programs: {', '.join(missing)} (apt-get install swift swift-proxy "
                       "swift-account swift-container swift-object memcached)")
    state.mkdir(parents=True, exist_ok=True)
    if any(_alive(rec) for rec in _read_procs(state)["procs"]):
        raise AioError(f"an all-in-one from {state} is still running; stop it first")
    for sub in ("log", "devices", "recon"):
        (state / sub).mkdir(exist_ok=True)

    if port_base is not None and not 0 < port_base <= 65535 - len(PORT_NAMES):
        raise AioError(f"--port-base {port_base} out of range")
    for attempt in range(1, 4):
        if port_base is not None:
            ports = {n: port_base + i for i, n in enumerate(PORT_NAMES)}
            busy = [p for p in ports.values() if not _port_is_free(p)]
            if busy:
                raise AioError(f"ports in use on 127.0.0.1: {busy} (--port-base {port_base})")
        else:
            ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
        try:
            return _start_once(state, ports, max_file_size, timeout, devices_tmpfs, updaters, die_with_parent)
        except _PortTaken as e:
            # Another instance starting at the same time took a port we had found free.
            if port_base is not None or attempt == 3:
                raise
            LOG.warning("%s; retrying with other ports", str(e).splitlines()[0])
    raise AssertionError("unreachable")


def _start_once(state: Path, ports: dict[str, int], max_file_size: int, timeout: float,
                devices_tmpfs: bool | None, updaters: bool, die_with_parent: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    deadline = t0 + timeout
    (state / PROCS_FILE).unlink(missing_ok=True)
    (state / ENV_FILE).unlink(missing_ok=True)
    starter = _Starter(state, die_with_parent)
    starter.record = {"procs": [], "tmpfs": None, "ports": ports}
    starter.save()
    try:
        devices = state / "devices"
        if devices_tmpfs is None:
            devices_tmpfs = not _supports_user_xattrs(devices)
        if devices_tmpfs and not _is_mountpoint(devices):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=4g", "tmpfs", str(devices)],
                           check=True, capture_output=True)
            starter.record["tmpfs"] = str(devices)
            starter.save()
            LOG.info("devices on tmpfs %s", devices)
        (devices / DEVICE).mkdir(exist_ok=True)

        # A hash prefix/suffix fixed per directory: objects stored in DIR stay reachable after a restart.
        tag = hashlib.sha256(str(state).encode()).hexdigest()[:16]
        (state / "swift.conf").write_text(_swift_conf(max_file_size, tag))
        for kind in RING_KINDS:
            (state / f"{kind}-server.conf").write_text(_backend_conf(state, kind, ports[kind]))
        (state / "proxy-server.conf").write_text(_proxy_conf(state, ports["proxy"], ports["memcached"]))
        _build_rings(state, ports)
        if not HOST_SWIFT_CONF.exists():  # a mount point for the per-server bind mounts
            HOST_SWIFT_CONF.parent.mkdir(parents=True, exist_ok=True)
            HOST_SWIFT_CONF.touch()

        procs: dict[str, subprocess.Popen[bytes]] = {}
        procs["memcached"] = starter.spawn(
            "memcached",
            [shutil.which("memcached") or "memcached", "-l", "127.0.0.1", "-p", str(ports["memcached"]),
             "-U", "0", "-u", "root", "-m", "64", "-c", "1024"],
            match=f"memcached -l 127.0.0.1 -p {ports['memcached']} ",
        )
        starter.wait_port("memcached", procs["memcached"], ports["memcached"], deadline)

        swift_procs = [(kind, f"swift-{kind}-server", kind) for kind in (*RING_KINDS, "proxy")]
        daemons = UPDATERS if updaters else ()
        for name, program, conf_of in [*swift_procs, *daemons]:
            conf = state / f"{conf_of}-server.conf"
            procs[name] = starter.spawn(name, _swift_argv(state, program, conf), match=str(conf))
        for kind in (*RING_KINDS, "proxy"):
            starter.wait_port(kind, procs[kind], ports[kind], deadline)

        auth_url = f"http://127.0.0.1:{ports['proxy']}/auth/v1.0"
        storage_url, storage_url2 = _wait_ready(auth_url, deadline, procs, state)
        for name, _, _ in daemons:
            starter.wait_log(name, procs[name], "Starting", deadline)
    except BaseException as e:
        LOG.debug("start failed, stopping what was started", exc_info=True)
        try:
            stop(state)
        except AioError as stop_err:
            LOG.error("%s", stop_err)
        if isinstance(e, AioError):
            raise
        if isinstance(e, subprocess.CalledProcessError):
            raise AioError(f"{e.cmd} failed: {(e.stderr or b'').decode(errors='replace').strip()}") from e
        raise

    env = {
        "auth_url": auth_url,
        "user": USER,
        "key": KEY,
        "storage_url": storage_url,
        "pids": [rec["pid"] for rec in starter.record["procs"]],
        "dir": str(state),
        "max_file_size": max_file_size,
        "user2": USER2,
        "key2": KEY2,
        "storage_url2": storage_url2,
        "ports": ports,
    }
    _write_json(state / ENV_FILE, env)
    LOG.info("swift all-in-one ready in %.1f s at %s", time.monotonic() - t0, auth_url)
    return env


def start_keystone_proxy(dir: str | os.PathLike[str], keystone: dict[str, str], timeout: float = START_TIMEOUT,
                         die_with_parent: bool = True) -> int:
    """Start a second proxy, authenticating with Keystone, on the running all-in-one of ``dir``.

    It serves the same account/container/object servers (and memcached) as the tempauth proxy,
    on a free port of its own, which is returned.  ``keystone``: ``auth_url`` (identity v3),
    and the service user authtoken validates tokens with: ``username``, ``password``,
    ``project_name`` (all in domain Default); ``operator_roles`` (default ``admin, member``);
    ``min_token_life``: renew the service token when fewer seconds are left (default 120, as
    keystoneauth; set it below the Keystone's token lifetime when that is short).
    Accounts are ``AUTH_<project id>``.  Recorded in ``procs.json`` like the other processes:
    :func:`stop` ends it with the rest, :func:`stop_keystone_proxy` alone.
    """
    state = Path(dir).resolve()
    record = _read_procs(state)
    memcached = record.get("ports", {}).get("memcached")
    if memcached is None or not any(_alive(rec) for rec in record["procs"] if rec["name"] == "memcached"):
        raise AioError(f"no running all-in-one in {state}: start it first")
    if any(_alive(rec) for rec in record["procs"] if rec["name"] == KEYSTONE_PROXY):
        raise AioError(f"a Keystone proxy from {state} is still running; stop it first")
    deadline = time.monotonic() + timeout
    conf = state / f"{KEYSTONE_PROXY}-server.conf"
    for attempt in range(1, 4):
        port = _free_ports(1)[0]
        conf.write_text(_keystone_proxy_conf(state, port, memcached, keystone))
        (state / f"{AUTHTOKEN_MODULE}.py").write_text(
            _AUTHTOKEN_SOURCE.format(min_token_life=int(keystone.get("min_token_life", 120))))
        starter = _Starter(state, die_with_parent)
        starter.record["procs"] = [rec for rec in starter.record["procs"] if rec["name"] != KEYSTONE_PROXY]
        argv = ["env", f"PYTHONPATH={state}", *_swift_argv(state, "swift-proxy-server", conf)]
        proc = starter.spawn(KEYSTONE_PROXY, argv, match=str(conf))
        try:
            starter.wait_port(KEYSTONE_PROXY, proc, port, deadline)
            status, _, body = _http("GET", f"http://127.0.0.1:{port}/healthcheck")
            if status != 200:
                raise AioError(f"{KEYSTONE_PROXY} /healthcheck answered {status} {body[:200]!r}")
        except _PortTaken as e:
            stop_keystone_proxy(state)
            if attempt == 3:
                raise
            LOG.warning("%s; retrying with another port", str(e).splitlines()[0])
            continue
        except BaseException:
            stop_keystone_proxy(state)
            raise
        record = _read_procs(state)
        record.setdefault("ports", {})[KEYSTONE_PROXY] = port
        _write_json(state / PROCS_FILE, record)
        LOG.info("Keystone proxy on 127.0.0.1:%d", port)
        return port
    raise AssertionError("unreachable")


def stop_keystone_proxy(dir: str | os.PathLike[str]) -> None:
    """Stop the Keystone proxy of ``dir`` by its recorded PID (SIGTERM, then SIGKILL); fine if none runs."""
    state = Path(dir).resolve()
    recs = [rec for rec in _read_procs(state)["procs"] if rec["name"] == KEYSTONE_PROXY]
    _signal_all(recs, signal.SIGTERM)
    left = _wait_gone(recs, STOP_TIMEOUT)
    if left:
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(left, KILL_TIMEOUT)
    if left:
        raise AioError(f"{KEYSTONE_PROXY} pid {left[0]['pid']} still running after SIGKILL")
    record = _read_procs(state)
    record["procs"] = [rec for rec in record["procs"] if rec["name"] != KEYSTONE_PROXY]
    _write_json(state / PROCS_FILE, record)


# --------------------------------------------------------------------------- stop


def _wait_gone(recs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    while True:
        left = [r for r in recs if _alive(r)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)


def _signal_all(recs: list[dict[str, Any]], sig: signal.Signals) -> None:
    for rec in recs:
        if _alive(rec):  # checked right before signalling: never a reused PID
            LOG.info("%s %s pid %d", sig.name, rec["name"], rec["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], sig)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None and st[2] == sid and st[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _kill_session_leftovers(recs: list[dict[str, Any]]) -> None:
    """SIGKILL forked children (e.g. an updater's sweep) left in the sessions of stopped processes.

    Each recorded process led its own session (setsid at spawn); a session ID stays taken while
    any member lives, so members found here were forked by our process: they also run our command.
    """
    for rec in recs:
        if _alive(rec):
            continue
        for pid in _session_members(int(rec["pid"])):
            if rec["match"] in _proc_cmdline(pid):
                LOG.info("SIGKILL leftover pid %d in the session of %s", pid, rec["name"])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def stop(dir: str | os.PathLike[str]) -> None:
    """Stop the processes recorded in ``dir`` (SIGTERM, then SIGKILL); fine if none runs."""
    state = Path(dir).resolve()
    record = _read_procs(state)
    recs = list(reversed(record.get("procs", [])))  # the reverse of the start order
    _signal_all(recs, signal.SIGTERM)
    left = _wait_gone(recs, STOP_TIMEOUT)
    if left:
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(left, KILL_TIMEOUT)
    _kill_session_leftovers(recs)
    if left:
        raise AioError("still running after SIGKILL: " + ", ".join(f"{r['name']} pid {r['pid']}" for r in left))
    tmpfs = record.get("tmpfs")
    if tmpfs and _is_mountpoint(Path(tmpfs)):
        proc = subprocess.run(["umount", tmpfs], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AioError(f"umount {tmpfs} failed: {proc.stderr.strip()}")
        LOG.info("unmounted tmpfs %s", tmpfs)
    if recs:
        LOG.info("stopped %d processes from %s", len(recs), state)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start an all-in-one; print its env as one JSON line")
    p_start.add_argument("--dir", required=True, help="private state directory (created)")
    p_start.add_argument("--max-file-size", type=int, default=DEFAULT_MAX_FILE_SIZE,
                         help=f"largest single object in bytes (default {DEFAULT_MAX_FILE_SIZE})")
    p_start.add_argument("--port-base", type=int, default=None,
                         help="use ports N..N+4 (proxy, account, container, object, memcached) "
                              "instead of free ones")
    p_start.add_argument("--no-updaters", dest="updaters", action="store_false",
                         help="no container/object updaters (no background CPU; account stats stay stale)")
    p_start.add_argument("--timeout", type=float, default=START_TIMEOUT, help=argparse.SUPPRESS)
    p_start.add_argument("--devices-tmpfs", action="store_true", default=None, help=argparse.SUPPRESS)
    p_stop = sub.add_parser("stop", help="stop the all-in-one recorded in DIR")
    p_stop.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="swift_aio: %(relativeCreated)6.0f ms: %(message)s")
    try:
        if args.command == "start":
            env = start(args.dir, max_file_size=args.max_file_size, port_base=args.port_base,
                        timeout=args.timeout, devices_tmpfs=args.devices_tmpfs, updaters=args.updaters,
                        die_with_parent=False)
            print(json.dumps(env), flush=True)
        else:
            stop(args.dir)
    except AioError as e:
        print(f"swift_aio: {args.command} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
