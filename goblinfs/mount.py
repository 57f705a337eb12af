"""Mount lifecycle: options, stores, pyfuse3 session, signals, clean shutdown.

``mount(...)`` builds the stores (logging in to Swift), checks the mountpoint, mounts, and
runs the trio loop until the filesystem is unmounted (umount, ``fusermount3 -u``,
``goblinfs umount``) or the daemon gets SIGTERM/SIGINT.  Everything accepted is in the
store before the process exits: close() already uploads, and anything still dirty is
uploaded at shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import gc
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyfuse3
import trio

from .config import ConfigError, GoblinConfig, ensure_local_dirs
from .fuse_ops import Operations
from .status import install_error_log
from .storage import Error as StorageError
from .systemd import JournalFormatter, Notifier, report_status, safe_status_line, stderr_is_journal
from .vfs import Options, StoreMount, Vfs
from .workbench import WorkbenchManager

if TYPE_CHECKING:
    from .metrics import MountMetrics

log = logging.getLogger(__name__)

#: FUSE mount options libfuse 3.14 accepts through pyfuse3.init (see docs/pyfuse3 notes).
FUSE_PASSTHROUGH = {"allow_other", "allow_root", "auto_unmount", "default_permissions", "noatime", "atime",
                    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "dirsync", "ro", "rw",
                    "blkdev"}
FUSE_PASSTHROUGH_VALUED = {"fsname", "subtype", "blksize", "context", "fscontext", "defcontext", "rootcontext"}
#: Generic mount(8)/fstab/systemd options that mean nothing to a FUSE daemon: accepted, ignored.
IGNORED = {"_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults", "relatime", "norelatime",
           "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime", "silent", "loud", "owner", "group",
           "bg", "fg", "-n", "nosymfollow", "iversion", "noiversion", "mand", "nomand"}
IGNORED_PREFIXES = ("x-systemd.", "x-gvfs", "comment=", "x-", "helper=")


class MountFailed(Exception):
    """The filesystem cannot be mounted; the message is one line for the user."""


def parse_size(text: str) -> int:
    """'10G', '512M', '4096' → bytes (K/M/G/T, powers of 1024)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise MountFailed(f"bad size {text!r} (examples: 4096, 512M, 10G)") from None


@dataclass
class MountOptions:
    """What -o (and [goblinfs] in the config) can say."""

    vfs: Options = field(default_factory=Options)
    fuse: set[str] = field(default_factory=set)
    cache_dir: str | None = None
    cache_size: int = 10 << 30
    debug: bool = False
    attr_timeout_set: bool = False
    dir_timeout_set: bool = False
    logfile: str | None = None
    #: HOST:PORT to serve Prometheus metrics on (goblinfs.metrics); None: no metrics.
    metrics: str | None = None


def parse_options(pairs: list[str], base: MountOptions | None = None) -> MountOptions:
    """Parse ``-o`` words (already split on commas)."""
    opts = base or MountOptions()
    for word in pairs:
        word = word.strip()
        if not word:
            continue
        key, has_value, value = word.partition("=")
        try:
            if key == "ro":
                opts.vfs.ro = True
                opts.fuse.add("ro")
            elif key == "rw":
                opts.vfs.ro = False
                opts.fuse.discard("ro")
            elif key == "uid":
                opts.vfs.uid = int(value)
            elif key == "gid":
                opts.vfs.gid = int(value)
            elif key == "umask":
                opts.vfs.umask = int(value, 8)
            elif key in ("cache_dir", "workbench"):
                opts.cache_dir = value
            elif key == "cache_size":
                opts.cache_size = parse_size(value)
            elif key in ("attr_timeout", "attr_cache_ttl"):
                opts.vfs.attr_timeout = float(value)
                opts.attr_timeout_set = True
            elif key in ("dir_timeout", "dir_cache_ttl"):
                opts.vfs.dir_timeout = float(value)
                opts.dir_timeout_set = True
            elif key == "names":
                if value not in ("clean", "strict"):
                    raise MountFailed(f"names={value}: use names=clean or names=strict")
                opts.vfs.names = value
            elif key == "op_timeout":
                opts.vfs.op_timeout = float(value)
            elif key == "gc_grace":
                opts.vfs.gc_grace = float(value)
                if opts.vfs.gc_grace < 0:
                    raise ValueError(value)
            elif key == "writeback" and not has_value:
                opts.vfs.writeback = True
            elif key == "transfers":
                opts.vfs.transfers = int(value)
                if not 1 <= opts.vfs.transfers <= 64:
                    raise MountFailed(f"transfers={value}: use a number from 1 to 64")
            elif key == "nogc":
                opts.vfs.gc_grace = None
            elif key == "logfile":
                opts.logfile = value
            elif key == "metrics":
                opts.metrics = _metrics_address(word, value)
            elif key == "debug":
                opts.debug = True
            elif key in FUSE_PASSTHROUGH and not has_value:
                opts.fuse.add(key)
            elif key in FUSE_PASSTHROUGH_VALUED and has_value:
                opts.fuse.add(word)
            elif word in IGNORED or key in IGNORED or word.startswith(IGNORED_PREFIXES):
                log.debug("ignoring mount option %s", word)
            else:
                raise MountFailed(f"unknown mount option {word!r}")
        except ValueError:
            raise MountFailed(f"bad value in mount option {word!r}") from None
    return opts


DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def _in_mountinfo(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            field = line.split()[4].replace("\\040", " ")
            if field == real:
                return True
    return False


def _mountpoint_state(mountpoint: str) -> str:
    """'ok', 'missing', 'notdir', 'mounted' or 'stale' (a dead FUSE mount)."""
    if _in_mountinfo(mountpoint):
        # statvfs is never answered from the kernel's attribute cache: it reaches the daemon.
        try:
            os.statvfs(mountpoint)
        except OSError as exc:
            if exc.errno in DEAD_MOUNT_ERRNOS:
                return "stale"
            raise MountFailed(f"mountpoint {mountpoint}: {exc.strerror}") from None
        return "mounted"
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno in DEAD_MOUNT_ERRNOS:
            return "stale"
        raise MountFailed(f"mountpoint {mountpoint}: {exc.strerror}") from None
    if not os.path.isdir(mountpoint):
        return "notdir"
    return "ok"


def check_mountpoint(mountpoint: str) -> None:
    """Raise MountFailed unless mountpoint can take a mount; clear a stale one (after kill -9)."""
    state = _mountpoint_state(mountpoint)
    if state == "stale":
        log.info("%s: clearing the dead mount left by a crashed daemon", mountpoint)
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)
        state = _mountpoint_state(mountpoint)
    if state == "missing":
        raise MountFailed(f"mountpoint {mountpoint} does not exist")
    if state == "notdir":
        raise MountFailed(f"mountpoint {mountpoint} is not a directory")
    if state == "mounted":
        raise MountFailed(f"mountpoint {mountpoint} is busy: something is already mounted there")
    if state != "ok":
        raise MountFailed(f"mountpoint {mountpoint} is not usable")


@dataclass
class Prepared:
    vfs: Vfs
    fuse_options: set[str]
    #: The metrics being served (-o metrics=), stopped when run() ends.
    metrics: MountMetrics | None = None


def _metrics_address(word: str, value: str) -> str:
    from .metrics import parse_address  # prometheus-client is loaded only when metrics are asked for

    try:
        parse_address(value)
    except ValueError as exc:
        raise MountFailed(f"mount option {word!r}: {exc}") from None
    return value


def _start_metrics(addr: str, vfs: Vfs) -> MountMetrics:
    """Serve the mount's metrics at addr; MountFailed with one line if it cannot listen there."""
    from .metrics import MountMetrics

    try:
        # The Vfs's own run, not pyfuse3's token: that one is gone while uploads drain at stop.
        return MountMetrics(addr, vfs, lambda: vfs.trio_token)
    except ValueError as exc:
        raise MountFailed(f"metrics={addr}: {exc}") from None
    except OSError as exc:
        raise MountFailed(f"metrics={addr}: cannot listen there: {exc.strerror or exc}") from None


def _stop_metrics(prepared: Prepared) -> None:
    if prepared.metrics is not None:
        try:
            prepared.metrics.close()
        except Exception as exc:
            log.warning("stopping the metrics server: %s", exc)
        prepared.metrics = None


def _make_base_dir(store: str, base_dir: str) -> None:
    """Create a local store's missing base_dir with its parents, as MediaGoblin does on its first write.

    A fresh site has stored nothing yet, so ``user_dev/media/queue`` does not exist; MediaGoblin
    creates store directories when it first writes (``os.makedirs``, mode 0o777 under the umask).
    MountFailed with one line when it cannot be made.
    """
    if os.path.lexists(base_dir) and not os.path.isdir(base_dir):
        raise MountFailed(f"store {store}: base_dir {base_dir} is not a directory")
    try:
        os.makedirs(base_dir, exist_ok=True)
    except OSError as exc:
        raise MountFailed(f"store {store}: cannot create base_dir {exc.filename or base_dir}: "
                          f"{exc.strerror or exc}") from None
    log.info("store %s: created base_dir %s (a fresh site: nothing stored yet)", store, base_dir)


def prepare(config: GoblinConfig, mountpoint: str, opts: MountOptions, only_store: str | None = None) -> Prepared:
    """Build the stores (logging in to remote ones) and the Vfs; MountFailed with one line on error."""
    names = list(config.stores)
    if only_store is not None:
        if only_store not in config.stores:
            raise MountFailed(f"--store {only_store}: no such store (have: {', '.join(names)})")
        names = [only_store]
    workbench = opts.cache_dir or config.workbench_path
    try:
        if config.path is None:
            ensure_local_dirs(config)
        manager = WorkbenchManager(workbench, cache_size=opts.cache_size)
        staging = os.path.join(manager.base_workbench_dir, "staging")
        os.makedirs(staging, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise MountFailed(f"cannot create {exc.filename or workbench}: {exc.strerror}") from None
    opts.vfs.staging_dir = staging
    opts.vfs.workbench_dir = manager.base_workbench_dir
    stores = []
    any_remote = False
    for name in names:
        try:
            storage = config.stores[name].build()
        except ConfigError as exc:
            raise MountFailed(str(exc)) from None
        except StorageError as exc:
            raise MountFailed(f"store {name}: {exc}") from None
        base_dir = getattr(storage, "base_dir", None)
        if storage.local_storage and base_dir and not os.path.isdir(base_dir):
            _make_base_dir(name, base_dir)
        if not storage.local_storage:
            any_remote = True
            try:
                storage.list_dir([])  # logs in; a refused login or a dead server fails here
            except StorageError as exc:
                raise MountFailed(f"store {name}: {exc}") from None
            except OSError as exc:
                raise MountFailed(f"store {name}: {exc}") from None
        # Write-back uploads take at most `transfers` workers; the others stay free for lookups and reads.
        threads = 8 + (opts.vfs.transfers if opts.vfs.writeback else 0)
        stores.append(StoreMount(name, storage, opts.vfs, max_threads=threads))
    if any_remote:
        # Another mount may change the container: do not trust listings for long by default.
        if not opts.dir_timeout_set:
            opts.vfs.dir_timeout = 10.0
        if not opts.attr_timeout_set:
            opts.vfs.attr_timeout = 10.0
    vfs = Vfs(stores, opts.vfs, cache=manager.cache, single=only_store is not None)
    # The last warnings and errors, for the status document (user.goblinfs.status).
    vfs.error_log = install_error_log()
    fuse_options = set(opts.fuse) | {"fsname=goblinfs", "subtype=goblinfs"}
    if any(o.startswith("fsname=") for o in opts.fuse):
        fuse_options.discard("fsname=goblinfs")
    if "allow_other" in fuse_options or "allow_root" in fuse_options:
        fuse_options.add("default_permissions")
    if opts.debug:
        fuse_options.add("debug")
    metrics = _start_metrics(opts.metrics, vfs) if opts.metrics else None
    return Prepared(vfs, fuse_options, metrics)


def _raise_readahead(mountpoint: str, kb: int = 1024) -> None:
    """Raise the FUSE bdi's read-ahead (root only): bigger read requests, faster sequential reads."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if parts[4] == os.path.realpath(mountpoint) and " - fuse" in line:
                    with open(f"/sys/class/bdi/{parts[2]}/read_ahead_kb", "w") as bdi:
                        bdi.write(str(kb))
                    return
    except OSError as exc:
        log.debug("could not raise read-ahead: %s", exc)


def run(prepared: Prepared, mountpoint: str, ready: Callable[[], None] | None = None,
        notifier: Notifier | None = None) -> int:
    """Mount and serve until unmounted or signalled; returns the exit status.

    ``ready`` is called (and ``notifier`` sends READY=1, see goblinfs.systemd) once the mount
    answers: a stat of its root came back through the FUSE session.  MountFailed if it never does.
    """
    faulthandler.enable()
    with contextlib.suppress(AttributeError, ValueError):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    _tune_gc()
    ops = Operations(prepared.vfs, observer=prepared.metrics.fuse if prepared.metrics is not None else None)
    try:
        pyfuse3.init(ops, mountpoint, prepared.fuse_options)
    except RuntimeError as exc:
        _stop_metrics(prepared)
        raise MountFailed(f"cannot mount at {mountpoint}: {exc}") from None
    clean = False
    not_answering: str | None = None
    try:
        not_answering = trio.run(_serve, prepared.vfs, mountpoint, ready, notifier or Notifier.off())
        clean = True
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception as exc:  # already unmounted from outside
            log.debug("close: %s", exc)
        _stop_metrics(prepared)
    if not_answering == STOPPED_BEFORE_READY:
        # A stop asked for while starting (systemctl stop, Ctrl-C) is a clean stop, not a failure:
        # the session was unmounted and drained like any other.  (A forking `goblinfs mount`
        # still fails: its parent never heard "ready".)
        log.info("goblinfs at %s: stopped by a signal before it was ready", mountpoint)
        return 0 if clean else 1
    if not_answering is not None:
        raise MountFailed(f"the mount at {mountpoint} does not answer: {not_answering}")
    return 0 if clean else 1


#: Objects allocated between two young-generation collections (CPython's default: 700).
GC_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Fewer garbage collections for a daemon that holds a node per known file.

    A listing makes a few objects per entry (its Entry, the reply's attributes), almost none in
    reference cycles; with CPython's default threshold (700) a 100,000-file `du` triggered
    collections that walk every node the mount holds (A/B at 100,000 files: `du -s` 0.51-0.55x
    -> 0.68-0.71x of a bare pyfuse3 passthrough).  Startup objects are frozen out of collection.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, middle, old)


#: Why a mount did not become ready when a stop signal came first.
STOPPED_BEFORE_READY = "stopped by a signal before it was ready"


async def _root_answers(mountpoint: str, startup: trio.CancelScope) -> str | None:
    """None once a stat of the mountpoint's root came back (through our own FUSE session), else why not.

    A signal during the stat cancels ``startup``: the blocked thread is abandoned (the unmount
    after the session ends frees it) instead of waiting for a session that no longer answers.
    """
    with startup:
        try:
            await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None
    return STOPPED_BEFORE_READY


async def _serve(vfs: Vfs, mountpoint: str, ready: Callable[[], None] | None, notifier: Notifier) -> str | None:
    """Serve until the session ends, then drain; returns why the mount did not answer (None: it did)."""
    startup = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        vfs.nursery = nursery
        nursery.start_soon(_signals, startup, notifier)
        async with trio.open_nursery() as fuse_nursery:
            fuse_nursery.start_soon(_fuse_main)
            await trio.sleep(0)
            await trio.to_thread.run_sync(_raise_readahead, mountpoint)
            problem = await _root_answers(mountpoint, startup)
            if problem == STOPPED_BEFORE_READY:
                pyfuse3.terminate()
            elif problem is not None:
                log.error("goblinfs at %s: the mount does not answer (%s): unmounting", mountpoint, problem)
                pyfuse3.terminate()
            else:
                log.info("goblinfs mounted at %s (stores: %s)", mountpoint, ", ".join(vfs.stores))
                if ready is not None:
                    ready()
                if notifier.enabled:
                    notifier.ready(safe_status_line(vfs.status, mountpoint))
                    nursery.start_soon(report_status, notifier, vfs.status, mountpoint)
        # The session ended (unmount or terminate): push anything still dirty.
        if notifier.enabled:
            notifier.stopping()
            notifier.status(safe_status_line(vfs.status, mountpoint, stopping=True))
        await vfs.shutdown()
        nursery.cancel_scope.cancel()
    log.info("goblinfs at %s: stopped", mountpoint)
    return problem


async def _fuse_main() -> None:
    await pyfuse3.main(min_tasks=2, max_tasks=64)


async def _signals(startup: trio.CancelScope, notifier: Notifier) -> None:
    """SIGTERM/SIGINT end the session (STOPPING=1 to systemd first); SIGHUP is ignored."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                continue
            log.info("signal %d: unmounting", signum)
            notifier.stopping()
            startup.cancel()
            pyfuse3.terminate()


def setup_logging(debug: bool, logfile: str | None) -> None:
    handler: logging.Handler
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler()
    if logfile is None and stderr_is_journal():
        handler.setFormatter(JournalFormatter())  # systemd: priorities as <N> prefixes, no timestamps
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("swiftclient", "urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    install_error_log()  # goblinfs's own warnings and errors, kept for `goblinfs status`


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount (fusermount3 -u, or umount as root); MountFailed with the reason."""
    if not _in_mountinfo(mountpoint):
        raise MountFailed(f"{mountpoint} is not mounted")
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise MountFailed(message[-1] if message else f"cannot unmount {mountpoint}")


__all__ = ["MountFailed", "MountOptions", "parse_options", "prepare", "run", "unmount", "check_mountpoint"]

