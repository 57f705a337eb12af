"""Command line: ``goblinfs mount``, ``umount``, ``status``, ``gc``, and the mount(8) convention.

    goblinfs mount [CONFIG] MOUNTPOINT [-o opts] [-f] [--store NAME]
    goblinfs umount [-z] MOUNTPOINT
    goblinfs status MOUNTPOINT [--json] [--timeout SECONDS]
    goblinfs gc CONFIG [--dry-run] [--grace SECONDS] [--store NAME]
    goblinfs sync SRC DST [--transfers N] [--checksum] [--dry-run] [--delete] [--json]
    goblinfs CONFIG MOUNTPOINT [-o opts]        (what mount.fuse3 / fstab / systemd run)

CONFIG is a mediagoblin.ini (or a directory holding mediagoblin_local.ini or
mediagoblin.ini); without one, or with ``default``/``none``, the embedded default (local
stores under ~/.local/share/goblinfs).  Without -f the command returns once the mount is
ready, or exits non-zero with one line saying why it could not mount.

``status`` shows what a running mount is doing (pending uploads, recovered files, cache,
recent errors); ``gc`` deletes the orphan SLO segments failed uploads left in Swift.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import ConfigError, GoblinConfig, load_config

if TYPE_CHECKING:
    from .mount import MountOptions  # imported when mounting only (pyfuse3)

log = logging.getLogger("goblinfs")

NO_CONFIG = {"default", "none", "goblinfs", "-"}


def _fail(message: str, code: int = 1) -> int:
    print(f"goblinfs: {message}", file=sys.stderr)
    return code


def _mount_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Mount MediaGoblin's stores with FUSE.")
    parser.add_argument("paths", nargs="+", metavar="[CONFIG] MOUNTPOINT")
    parser.add_argument("-o", dest="options", action="append", default=[], help="mount options, comma separated")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("--store", help="mount this one store alone at the mountpoint (queue or public)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging (implies -f)")
    parser.add_argument("-s", dest="single_threaded", action="store_true", help=argparse.SUPPRESS)
    return parser


def cmd_mount(argv: list[str], prog: str = "goblinfs mount") -> int:
    from .mount import MountFailed, check_mountpoint, parse_options, prepare, run, setup_logging

    args = _mount_parser(prog).parse_args(argv)
    if len(args.paths) > 2:
        return _fail("usage: goblinfs mount [CONFIG] MOUNTPOINT [-o opts] [-f]", 2)
    config_path = args.paths[0] if len(args.paths) == 2 else None
    if config_path in NO_CONFIG:
        config_path = None
    mountpoint = os.path.abspath(args.paths[-1])
    words = [w for opt in args.options for w in opt.split(",")]
    try:
        config = load_config(config_path)
        opts = parse_options(list(_config_words(config.options)))
        opts = parse_options(words, opts)
        if args.debug:
            opts.debug = True
            args.foreground = True
        store = args.store or config.options.get("store")
        check_mountpoint(mountpoint)
    except (ConfigError, MountFailed) as exc:
        return _fail(str(exc))

    if args.foreground:
        from .systemd import Notifier

        setup_logging(opts.debug, opts.logfile)
        try:
            prepared = prepare(config, mountpoint, opts, store)
            # Under systemd (Type=notify) this process is the service: READY=1, STATUS=, STOPPING=1.
            return run(prepared, mountpoint, notifier=Notifier())
        except (ConfigError, MountFailed) as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"{exc.filename or mountpoint}: {exc.strerror or exc}")
    return _daemonize(config, mountpoint, opts, store)


def _config_words(options: dict[str, str]) -> list[str]:
    """The [goblinfs] section as -o words (``store`` is not a mount option)."""
    words = []
    for key, value in options.items():
        if key == "store":
            continue
        if key == "options":
            words.extend(value.split(","))
        else:
            words.append(f"{key}={value}")
    return words


def _daemonize(config: GoblinConfig, mountpoint: str, opts: MountOptions, store: str | None) -> int:
    """Fork; the child mounts and reports 'ready' or the error line through a pipe."""
    from .mount import MountFailed, prepare, run, setup_logging
    from .systemd import Notifier

    logfile = opts.logfile or os.path.join(opts.cache_dir or config.workbench_path, "goblinfs.log")
    try:
        os.makedirs(os.path.dirname(logfile), exist_ok=True)
        with open(logfile, "a"):
            pass
    except OSError as exc:
        return _fail(f"cannot write the log file {logfile}: {exc.strerror}")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode(errors="replace").strip()
        if message == "ready":
            # A Type=notify unit without -f: this process is the one systemd watches; hand over.
            Notifier().forked_ready(pid)
            return 0
        os.waitpid(pid, 0)
        return _fail(message or "the mount daemon exited before the mount was ready")
    # Child: new session, stdio away from the terminal, logs to a file.
    os.close(read_fd)
    os.setsid()
    status = 1
    try:
        setup_logging(opts.debug, logfile)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            prepared = prepare(config, mountpoint, opts, store)
        except (ConfigError, MountFailed) as exc:
            os.write(write_fd, str(exc).encode())
            os._exit(1)

        def ready() -> None:
            os.write(write_fd, b"ready")
            os.close(write_fd)

        try:
            status = run(prepared, mountpoint, ready, Notifier(forked=True))
        except MountFailed as exc:
            os.write(write_fd, str(exc).encode())
    except BaseException as exc:
        log.exception("daemon failed")
        with contextlib.suppress(OSError):
            os.write(write_fd, f"the mount daemon failed: {exc}".encode())
    finally:
        os._exit(status)


def cmd_umount(argv: list[str]) -> int:
    from .mount import MountFailed, unmount

    parser = argparse.ArgumentParser(prog="goblinfs umount", description="Unmount a goblinfs mount.")
    parser.add_argument("-z", "--lazy", action="store_true")
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    try:
        unmount(os.path.abspath(args.mountpoint), args.lazy)
    except MountFailed as exc:
        return _fail(str(exc))
    return 0


# ------------------------------------------------------------------ goblinfs status


class StatusUnavailable(Exception):
    """The status of a mountpoint cannot be read; the message is one line for the user."""


def _unescape_mountinfo(field: str) -> str:
    r"""A mountinfo path field: \040, \011, \012, \134 (octal escapes) back to characters."""
    out, index = [], 0
    while index < len(field):
        chunk = field[index:index + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def _enclosing_mount(path: str) -> tuple[str, str] | None:
    """(mountpoint, fstype) of the mount path is on: the longest mountpoint that contains it."""
    real = os.path.realpath(path)
    best: tuple[str, str] | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if "-" not in fields:
                    continue
                point = _unescape_mountinfo(fields[4])
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and (best is None or len(point) >= len(best[0])):
                    best = (point, fields[fields.index("-") + 1])
    except OSError:
        return None
    return best


def _getxattr(path: str, name: str, timeout: float) -> bytes:
    """os.getxattr in a thread, so a hung daemon cannot hang the command (TimeoutError)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = os.getxattr(path, name)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="goblinfs-status", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        # Left blocked in the kernel; it goes when the process exits.
        raise TimeoutError
    if "error" in result:
        raise result["error"]
    return result["value"]


def read_status(mountpoint: str, timeout: float = 10.0) -> dict[str, Any]:
    """The status document of the goblinfs mount at mountpoint; StatusUnavailable saying why not."""
    from .status import STATUS_XATTR

    try:
        raw = _getxattr(mountpoint, STATUS_XATTR, timeout)
    except TimeoutError:
        raise StatusUnavailable(f"the goblinfs daemon at {mountpoint} did not answer in {timeout:g} s "
                                f"(hung or overloaded?); see its log") from None
    except OSError as exc:
        code = exc.errno
        if code == errno.ENOENT:
            raise StatusUnavailable(f"{mountpoint} does not exist") from None
        if code in (errno.ENOTCONN, errno.ECONNABORTED):
            raise StatusUnavailable(f"the goblinfs daemon of {mountpoint} is gone (the mount is dead): "
                                    f"mount it again with goblinfs mount, which clears the dead mount") from None
        if code in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            enclosing = _enclosing_mount(mountpoint)
            if enclosing and enclosing[1] == "fuse.goblinfs":
                point = enclosing[0]
                if point == os.path.realpath(mountpoint):
                    raise StatusUnavailable(f"the goblinfs daemon at {mountpoint} does not report its status "
                                            f"(an older version: remount to update it)") from None
                raise StatusUnavailable(f"{mountpoint} is inside the goblinfs mount at {point}, not its root: "
                                        f"run goblinfs status {point}") from None
            raise StatusUnavailable(f"{mountpoint} is not a goblinfs mount") from None
        if code in (errno.E2BIG, errno.ERANGE):
            raise StatusUnavailable(f"the status of {mountpoint} is too large to read as an extended attribute") \
                from None
        raise StatusUnavailable(f"{mountpoint}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StatusUnavailable(f"the goblinfs daemon at {mountpoint} answered a status that is not JSON") from None
    if not isinstance(doc, dict):
        raise StatusUnavailable(f"the goblinfs daemon at {mountpoint} answered a status that is not a JSON object")
    if "mountpoint" not in doc:  # the daemon may not know the path it is mounted at
        doc = {"mountpoint": mountpoint, **doc}
    return doc


def cmd_status(argv: list[str]) -> int:
    from .status import format_status

    parser = argparse.ArgumentParser(prog="goblinfs status",
                                     description="Show what a running goblinfs mount is doing.")
    parser.add_argument("mountpoint")
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up if the daemon does not answer in this time (default 10)")
    args = parser.parse_args(argv)
    mountpoint = os.path.abspath(args.mountpoint)
    try:
        doc = read_status(mountpoint, args.timeout)
    except StatusUnavailable as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(format_status(doc))
    return 0


# ------------------------------------------------------------------ goblinfs gc


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def cmd_gc(argv: list[str]) -> int:
    from .storage import Error as StorageError
    from .storage import StorageInterface

    parser = argparse.ArgumentParser(
        prog="goblinfs gc",
        description="Delete the orphan SLO segments (left by failed or interrupted uploads) of Swift stores.")
    parser.add_argument("config", metavar="CONFIG",
                        help="mediagoblin.ini, a directory holding it, or 'default' (the embedded default)")
    parser.add_argument("--dry-run", "-n", action="store_true", help="list what would be deleted, delete nothing")
    parser.add_argument("--grace", type=float, default=86400.0, metavar="SECONDS",
                        help="keep segments younger than this: uploads in progress (default 86400)")
    parser.add_argument("--store", help="only this store (queue or public)")
    args = parser.parse_args(argv)
    if not args.grace >= 0:
        return _fail(f"--grace {args.grace:g}: must be 0 or more seconds")
    try:
        config = load_config(None if args.config in NO_CONFIG else args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    names = list(config.stores)
    if args.store is not None:
        if args.store not in config.stores:
            return _fail(f"--store {args.store}: no such store (have: {', '.join(names)})")
        names = [args.store]
    for name in names:
        try:
            storage = config.stores[name].build()
        except ConfigError as exc:
            return _fail(_one_line(exc))
        try:
            # The interface's own collect_garbage is "nothing is ever left behind".
            method = getattr(type(storage), "collect_garbage", None)
            if method is None or method is getattr(StorageInterface, "collect_garbage", None):
                why = "local store" if storage.local_storage else "this store leaves nothing behind"
                print(f"{name}: nothing to collect ({why})")
                continue
            deleted = list(storage.collect_garbage(grace_seconds=args.grace, dry_run=args.dry_run))
        except (StorageError, OSError) as exc:
            sys.stdout.flush()
            return _fail(_one_line(f"store {name}: {exc}"))
        except Exception as exc:
            sys.stdout.flush()
            return _fail(_one_line(f"store {name}: garbage collection failed: {type(exc).__name__}: {exc}"))
        finally:
            close = getattr(storage, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
        verb = "would delete" if args.dry_run else "deleted"
        container = getattr(storage, "segment_container", None)
        for segment in deleted:
            shown = f"{container}/{segment}" if container and not segment.startswith(f"{container}/") else segment
            print(f"{name}: {verb} {shown}")
        noun = "orphan segment" if len(deleted) == 1 else "orphan segments"
        if args.dry_run:
            print(f"{name}: {len(deleted)} {noun} would be deleted (dry run: nothing deleted)")
        else:
            print(f"{name}: {len(deleted)} {noun} deleted")
        sys.stdout.flush()
    return 0


# ------------------------------------------------------------------ goblinfs sync


def cmd_sync(argv: list[str]) -> int:
    """``goblinfs sync SRC DST``: copy a store into another (goblinfs.sync); the exit status."""
    from .sync import DEFAULT_TRANSFERS, Options, run_command

    parser = argparse.ArgumentParser(
        prog="goblinfs sync",
        description="Copy one store into another: parallel, verified (MD5), resumable. SRC and DST are "
                    "CONFIG:public, CONFIG:queue (a store of a mediagoblin.ini) or a local directory.")
    parser.add_argument("src", metavar="SRC")
    parser.add_argument("dst", metavar="DST")
    parser.add_argument("--transfers", type=int, default=DEFAULT_TRANSFERS, metavar="N",
                        help=f"files copied in parallel (default {DEFAULT_TRANSFERS})")
    parser.add_argument("--checksum", "-c", action="store_true",
                        help="compare by size and MD5 instead of size and mtime")
    parser.add_argument("--dry-run", "-n", action="store_true", help="list what would be copied or deleted")
    parser.add_argument("--delete", action="store_true", help="delete what the source lacks (after the copies)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                        help="a bar on a terminal, periodic lines otherwise (default auto)")
    parser.add_argument("--interval", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between progress lines (default 10)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT while running")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log the store's warnings (retries...); -vv: its details too")
    args = parser.parse_args(argv)
    if args.transfers < 1:
        return _fail(f"--transfers {args.transfers}: must be 1 or more", 2)
    if not args.interval > 0:
        return _fail(f"--interval {args.interval:g}: must be positive", 2)
    # Failures come back per file or as one line; the store's own log only when asked for.
    level = (logging.CRITICAL, logging.WARNING, logging.INFO)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="goblinfs sync: %(name)s: %(message)s")
    options = Options(transfers=args.transfers, checksum=args.checksum, dry_run=args.dry_run, delete=args.delete)
    if args.metrics_port is not None and not 1 <= args.metrics_port <= 65535:
        return _fail(f"--metrics-port {args.metrics_port}: must be between 1 and 65535", 2)
    return run_command(args.src, args.dst, options, as_json=args.json, progress=args.progress,
                       interval=args.interval, metrics_port=args.metrics_port)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"goblinfs {__version__}")
        return 0
    if argv[0] == "mount":
        return cmd_mount(argv[1:])
    if argv[0] in ("umount", "unmount"):
        return cmd_umount(argv[1:])
    # Neither takes -o: with it, "status"/"gc" is a config's name in the mount(8) convention.
    if argv[0] == "status" and "-o" not in argv:
        return cmd_status(argv[1:])
    if argv[0] == "gc" and "-o" not in argv:
        return cmd_gc(argv[1:])
    if argv[0] == "sync" and "-o" not in argv:
        return cmd_sync(argv[1:])
    # mount(8) convention: goblinfs SOURCE MOUNTPOINT -o opts
    return cmd_mount(argv, prog="goblinfs")


if __name__ == "__main__":
    sys.exit(main())
