"""Command line: ``goblinfs mount``, ``goblinfs umount``, and the mount(8) convention.

    goblinfs mount [CONFIG] MOUNTPOINT [-o opts] [-f] [--store NAME]
    goblinfs umount [-z] MOUNTPOINT
    goblinfs CONFIG MOUNTPOINT [-o opts]        (what mount.fuse3 / fstab / systemd run)

CONFIG is a mediagoblin.ini (or a directory holding mediagoblin_local.ini or
mediagoblin.ini); without one, or with ``default``/``none``, the embedded default (local
stores under ~/.local/share/goblinfs).  Without -f the command returns once the mount is
ready, or exits non-zero with one line saying why it could not mount.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from . import __version__
from .config import ConfigError, load_config

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
        setup_logging(opts.debug, opts.logfile)
        try:
            prepared = prepare(config, mountpoint, opts, store)
            return run(prepared, mountpoint)
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


def _daemonize(config: object, mountpoint: str, opts: object, store: str | None) -> int:
    """Fork; the child mounts and reports 'ready' or the error line through a pipe."""
    from .mount import MountFailed, prepare, run, setup_logging

    logfile = opts.logfile or os.path.join(  # type: ignore[attr-defined]
        opts.cache_dir or config.workbench_path, "goblinfs.log")  # type: ignore[attr-defined]
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
            return 0
        os.waitpid(pid, 0)
        return _fail(message or "the mount daemon exited before the mount was ready")
    # Child: new session, stdio away from the terminal, logs to a file.
    os.close(read_fd)
    os.setsid()
    status = 1
    try:
        setup_logging(opts.debug, logfile)  # type: ignore[attr-defined]
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        try:
            prepared = prepare(config, mountpoint, opts, store)  # type: ignore[arg-type]
        except (ConfigError, MountFailed) as exc:
            os.write(write_fd, str(exc).encode())
            os._exit(1)

        def ready() -> None:
            os.write(write_fd, b"ready")
            os.close(write_fd)

        try:
            status = run(prepared, mountpoint, ready)
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
    # mount(8) convention: goblinfs SOURCE MOUNTPOINT -o opts
    return cmd_mount(argv, prog="goblinfs")


if __name__ == "__main__":
    sys.exit(main())
