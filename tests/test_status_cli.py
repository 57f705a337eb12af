"""``goblinfs status`` and ``goblinfs gc``, for real, and the pieces behind them.

* the text of a status document (``format_status``) and the daemon's error log (``ErrorLog``);
* ``goblinfs status`` on a directory that is no goblinfs mount, inside a mount, on a real
  local mount (the daemon answers ``user.goblinfs.status``) and on a mount whose daemon died;
* ``goblinfs gc`` on local stores, and on the real Swift: an orphan segment older than the
  grace is listed by ``--dry-run`` and kept, deleted without it; a segment an SLO manifest
  references is never deleted; a refused login is one error line.

Every daemon is the test's own child (``Mounted``), stopped by PID and unmounted by mountpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goblinfs import mount as mount_module
from goblinfs.status import ERROR_LOG_SIZE, ErrorLog, format_status, install_error_log

from .conftest import drop_container
from .mountutil import Mounted, force_unmount, is_mounted, write_local_config, write_swift_config

ROOT = Path(__file__).resolve().parent.parent
GOBLINFS = ROOT / ".venv" / "bin" / "goblinfs"

#: 2025-12-01 14:40:00 UTC.
T0 = 1764600000.0


def goblinfs(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    assert GOBLINFS.exists(), f"{GOBLINFS} missing: create the venv (scripts/test)"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([str(GOBLINFS), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd="/")


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 1, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("goblinfs: "), lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------------ the text of a status document


@pytest.fixture
def india_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC+05:30 (a POSIX TZ string: no tzdata needed)."""
    monkeypatch.setenv("TZ", "IST-05:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def sample_doc() -> dict[str, Any]:
    return {
        "mountpoint": "/srv/mediagoblin/mnt",
        "pid": 4242,
        "stores": {"queue": {"kind": "local"}, "public": {"kind": "swift"}},
        "pending_uploads": [{"store": "public", "path": f"media/{i:02d}.jpg", "state": "uploading",
                             "bytes": 3 * 1048576, "since": T0 - 600 + i} for i in range(13)],
        "journaled": [{"store": "public", "path": "big/video.webm", "state": "journaled", "since": T0 - 7200}],
        "recovered": [{"store": "public", "path": "evil\nname\x1b[31m.jpg", "file": "/wb/recovered/0001",
                       "reason": "upload failed at unmount", "time": T0 - 86400}],
        "cache": {"used": 512 * 1048576, "limit": 2 << 30},
        "errors": [{"time": T0 - 25 + i, "level": "ERROR" if i % 2 else "WARNING", "message": f"problem {i}"}
                   for i in range(25)],
    }


def test_format_status_of_a_sample_document(india_time: None) -> None:
    text = format_status(sample_doc(), now=T0)
    lines = text.splitlines()
    assert lines[0] == "goblinfs at /srv/mediagoblin/mnt (pid 4242)"
    assert "stores: queue (local), public (swift)" in lines
    assert "cache: 512.0 MiB used of 2.0 GiB (25%)" in lines
    # Sections with their counts; at most 10 items each, the rest counted.
    assert "pending uploads: 13" in lines
    pending = [line for line in lines if line.startswith("  public/media/")]
    assert [line.split()[0] for line in pending] == [f"public/media/{i:02d}.jpg" for i in range(10)]
    assert "  … and 3 more" in lines
    # Local ISO time (UTC+05:30) and the age.
    assert pending[0] == "  public/media/00.jpg  uploading  3.0 MiB  since 2025-12-01 20:00:00 (10m)"
    assert "journaled: 1" in lines
    assert "  public/big/video.webm  journaled  since 2025-12-01 18:10:00 (2h)" in lines
    assert "recovered: 1" in lines
    # A name with control characters cannot break the screen or colour the terminal.
    recovered = lines[lines.index("recovered: 1") + 1]
    assert "\x1b" not in text and "\n" not in recovered
    assert recovered == ("  2025-11-30 20:10:00  public/evil\\nname\\x1b[31m.jpg  → /wb/recovered/0001"
                         "  (upload failed at unmount)")
    # Errors: the newest ten, newest last, the older ones counted.
    start = lines.index("recent errors: 25")
    assert lines[start + 1] == "  … and 15 more, earlier"
    assert lines[start + 2] == "  2025-12-01 20:09:50  ERROR  problem 15"
    assert lines[start + 11] == "  2025-12-01 20:09:59  WARNING  problem 24"
    assert len(lines) == start + 12
    assert len(lines) <= 45  # one screen, more or less


def test_format_status_tolerates_missing_and_odd_keys() -> None:
    assert format_status({}).splitlines() == [
        "goblinfs at ?", "stores: ?", "", "pending uploads: none", "journaled: none", "recovered: none",
        "recent errors: none"]
    odd = {"mountpoint": "/m", "stores": {"public": {}}, "cache": {"used": 10},
           "pending_uploads": [{"path": "only/path"}, "bare-string", {"store": "queue"}],
           "journaled": None, "recovered": [{"time": "yesterday"}],
           "errors": [{"message": "no time or level"}]}
    lines = format_status(odd, now=T0).splitlines()
    assert "stores: public" in lines
    assert "cache: 10 B used of ?" in lines
    assert "pending uploads: 3" in lines
    assert "  only/path" in lines and "  bare-string" in lines and "  queue/?" in lines
    assert "journaled: none" in lines
    assert "  yesterday  ?" in lines
    assert "  ?  no time or level" in lines


# ------------------------------------------------------------------ the error log


def _record(level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("goblinfs.vfs", level, __file__, 1, message, None, exc_info)


def test_error_log_keeps_the_last_20_warnings_and_errors() -> None:
    errors = ErrorLog()
    errors.handle(_record(logging.INFO, "just information"))
    errors.handle(_record(logging.DEBUG, "debugging"))
    assert errors.recent() == []
    before = time.time()
    for i in range(25):
        errors.handle(_record(logging.WARNING if i % 2 else logging.ERROR, f"problem {i}"))
    kept = errors.recent()
    assert len(kept) == ERROR_LOG_SIZE == 20
    assert [r["message"] for r in kept] == [f"problem {i}" for i in range(5, 25)]
    assert [r["level"] for r in kept[:2]] == ["WARNING", "ERROR"]
    assert all(before <= r["time"] <= time.time() for r in kept)
    assert set(kept[0]) == {"time", "level", "message"}
    # Copies: the caller cannot change what is kept.
    kept[0]["message"] = "changed"
    assert errors.recent()[0]["message"] == "problem 5"


def test_error_log_message_is_one_line_with_the_exception() -> None:
    errors = ErrorLog()
    errors.handle(_record(logging.ERROR, "upload of a.jpg failed:\nsecond line", OSError(5, "I/O error")))
    errors.handle(_record(logging.CRITICAL, "x" * 5000))
    first, second = errors.recent()
    assert first["message"] == "upload of a.jpg failed: second line (OSError: [Errno 5] I/O error)"
    assert first["level"] == "ERROR"
    assert len(second["message"]) <= 500
    assert json.loads(json.dumps(errors.recent())) == errors.recent()


def test_error_log_from_many_threads() -> None:
    logger = logging.getLogger(f"goblinfs.test.{uuid.uuid4().hex}")
    logger.propagate = False
    errors = ErrorLog()
    logger.addHandler(errors)
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(len(errors.recent()))

    def writer(n: int) -> None:
        for i in range(500):
            logger.error("thread %d message %d", n, i)

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watcher.join()
    kept = errors.recent()
    assert len(kept) == 20
    assert all(0 <= n <= 20 for n in seen)
    # Each thread's own messages stay in order.
    for n in range(8):
        mine = [int(r["message"].split()[-1]) for r in kept if r["message"].startswith(f"thread {n} ")]
        assert mine == sorted(mine)


def test_setup_logging_installs_one_error_log_on_the_goblinfs_logger() -> None:
    root = logging.getLogger()
    goblinfs_logger = logging.getLogger("goblinfs")
    saved = (root.handlers[:], root.level, goblinfs_logger.handlers[:],
             {name: logging.getLogger(name).level for name in ("swiftclient", "urllib3", "requests")})
    try:
        goblinfs_logger.handlers[:] = [h for h in goblinfs_logger.handlers if not isinstance(h, ErrorLog)]
        mount_module.setup_logging(False, os.devnull)
        mount_module.setup_logging(False, os.devnull)
        installed = [h for h in goblinfs_logger.handlers if isinstance(h, ErrorLog)]
        assert len(installed) == 1
        assert install_error_log() is installed[0]
        logging.getLogger("goblinfs.vfs.writes").error("upload of %s failed", "x.jpg")
        logging.getLogger("goblinfs.vfs").info("not an error")
        logging.getLogger("swiftclient").error("not goblinfs's own")
        assert [r["message"] for r in installed[0].recent()] == ["upload of x.jpg failed"]
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        goblinfs_logger.handlers[:] = saved[2]
        for name, level in saved[3].items():
            logging.getLogger(name).setLevel(level)


# ------------------------------------------------------------------ goblinfs status


def test_status_of_a_directory_that_is_not_a_goblinfs_mount(tmp_path: Path) -> None:
    assert_one_error_line(goblinfs("status", tmp_path), str(tmp_path), "not a goblinfs mount")
    assert_one_error_line(goblinfs("status", tmp_path, "--json"), "not a goblinfs mount")
    assert_one_error_line(goblinfs("status", tmp_path / "nothere"), "does not exist")


@pytest.mark.fuse
def test_status_of_a_real_local_mount(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    with Mounted(config, mnt) as mounted:
        assert mounted.proc is not None
        # A warning in the daemon: a new name that cleans to nothing (EINVAL).
        with pytest.raises(OSError):
            (mnt / "public" / "日本").write_bytes(b"x")
        (mnt / "public" / "kept.txt").write_text("written")
        # Inside the mount, not its root.
        assert_one_error_line(goblinfs("status", mnt / "public"), "inside the goblinfs mount", str(mnt))
        result = goblinfs("status", mnt, "--json")
        assert_ok(result)
        doc = json.loads(result.stdout)
        assert doc["mountpoint"] == str(mnt)
        assert doc["pid"] == mounted.proc.pid
        assert doc["stores"] == {"queue": {"kind": "local"}, "public": {"kind": "local"}}
        assert doc.get("pending_uploads", []) == []
        assert any("cleans to nothing" in e["message"] and e["level"] == "WARNING" for e in doc["errors"]), doc
        assert {"used", "limit"} <= set(doc["cache"])
        text = goblinfs("status", mnt)
        assert_ok(text)
        lines = text.stdout.splitlines()
        assert lines[0] == f"goblinfs at {mnt} (pid {mounted.proc.pid})"
        assert "stores: queue (local), public (local)" in lines
        assert "pending uploads: none" in lines
        assert any("WARNING" in line and "cleans to nothing" in line for line in lines)
        mounted.check_log()


#: Opens argv[1] for writing, writes 100 kB, says so, and closes it when stdin ends.
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"p" * 100_000)
print("written", flush=True)
sys.stdin.read()
os.close(fd)
"""


@pytest.mark.fuse
@pytest.mark.swift
def test_status_shows_a_pending_upload_on_swift(tmp_path: Path, swift_env: dict[str, Any],
                                                gc_container: str) -> None:
    """A file written on Swift and still open is a pending upload, with its size, until close()."""
    config = write_swift_config(tmp_path / "cfg", swift_env, gc_container)
    mnt = tmp_path / "mnt"
    with Mounted(config, mnt) as mounted:
        # The writer is another process: a file open here would be flushed (published) by every
        # fork+exec of this process (close-on-exec closes it in the child: FUSE FLUSH).
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(mnt / "public" / "pending.bin")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "written\n"
            result = goblinfs("status", mnt, "--json")
            assert_ok(result)
            doc = json.loads(result.stdout)
            assert doc["stores"] == {"queue": {"kind": "swift"}, "public": {"kind": "swift"}}
            pending = [p for p in doc["pending_uploads"] if p["path"] == "pending.bin"]
            assert len(pending) == 1, doc
            assert pending[0]["store"] == "public" and pending[0]["bytes"] == 100_000
            assert abs(pending[0]["since"] - time.time()) < 120
            text = goblinfs("status", mnt)
            assert_ok(text)
            assert "pending uploads: 1" in text.stdout.splitlines()
            assert any(line.startswith("  public/pending.bin ") and "97.7 KiB" in line
                       for line in text.stdout.splitlines()), text.stdout
            writer.communicate("", timeout=60)  # the writer closes the file: uploaded
            assert writer.returncode == 0
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        result = goblinfs("status", mnt, "--json")
        assert_ok(result)
        assert json.loads(result.stdout)["pending_uploads"] == []
        mounted.check_log()


@pytest.mark.fuse
def test_status_when_the_daemon_died(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    mounted = Mounted(config, mnt).__enter__()
    try:
        assert mounted.proc is not None
        os.listdir(mnt)
        mounted.proc.send_signal(signal.SIGKILL)
        mounted.proc.wait(timeout=30)
        assert is_mounted(mnt)  # the dead mount stays until cleared
        line = assert_one_error_line(goblinfs("status", mnt, timeout=60), "gone", "mount it again")
        assert str(mnt) in line
    finally:
        mounted.stop(clean=False)
        force_unmount(mnt)
    assert not is_mounted(mnt)


@pytest.mark.fuse
def test_status_when_the_daemon_does_not_answer(tmp_path: Path) -> None:
    """A stopped (hung) daemon: the command gives up after --timeout with one line, not hang."""
    config = write_local_config(tmp_path / "cfg")
    mnt = tmp_path / "mnt"
    with Mounted(config, mnt) as mounted:
        assert mounted.proc is not None
        os.listdir(mnt)
        mounted.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            result = goblinfs("status", mnt, "--timeout", "2", timeout=60)
            took = time.monotonic() - started
        finally:
            mounted.proc.send_signal(signal.SIGCONT)
        assert_one_error_line(result, "did not answer in 2 s", str(mnt))
        assert took < 30, took
        os.listdir(mnt)  # serving again


# ------------------------------------------------------------------ goblinfs gc


def test_gc_of_local_stores_has_nothing_to_collect(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "cfg")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = goblinfs("gc", config, "--grace", "0")
    assert_ok(result)
    assert result.stdout.splitlines() == ["queue: nothing to collect (local store)",
                                          "public: nothing to collect (local store)"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    result = goblinfs("gc", tmp_path / "cfg", "--store", "public")  # a directory, as mount takes it
    assert_ok(result)
    assert result.stdout.splitlines() == ["public: nothing to collect (local store)"]


def test_gc_errors_are_one_line(tmp_path: Path) -> None:
    config = write_local_config(tmp_path / "cfg")
    assert_one_error_line(goblinfs("gc", tmp_path / "nothere.ini"), "cannot read config", "nothere.ini")
    assert_one_error_line(goblinfs("gc", config, "--store", "attic"), "attic", "queue, public")
    assert_one_error_line(goblinfs("gc", config, "--grace", "-5"), "--grace")
    bad = tmp_path / "bad.ini"
    bad.write_text("[storage:publicstore]\nstorage_class = nosuchpackage.x:Storage\n")
    assert_one_error_line(goblinfs("gc", bad), "nosuchpackage")


def _swift_conn(swift_env: dict[str, Any]) -> Any:
    import swiftclient

    return swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"], key=swift_env["key"],
                                  retries=0)


def _exists(conn: Any, container: str, name: str) -> bool:
    import swiftclient

    try:
        conn.head_object(container, name)
    except swiftclient.ClientException as exc:
        if exc.http_status == 404:
            return False
        raise
    return True


@pytest.fixture
def gc_container(swift_env: dict[str, Any], swift_container_name: str) -> Iterator[str]:
    yield swift_container_name
    for name in (swift_container_name, f"{swift_container_name}-queue"):
        drop_container(swift_env, name)


@pytest.mark.swift
def test_gc_deletes_orphan_segments_and_never_referenced_ones(tmp_path: Path, swift_env: dict[str, Any],
                                                             gc_container: str) -> None:
    container = gc_container
    segments = f"{container}_segments"
    config = write_swift_config(tmp_path / "cfg", swift_env, container)
    conn = _swift_conn(swift_env)
    conn.put_container(container)
    conn.put_container(segments)
    # An orphan: a segment of an upload that never got its manifest.
    orphan = f"lost.jpg/{uuid.uuid4().hex}/00000000"
    conn.put_object(segments, orphan, b"o" * 4096)
    # A real SLO: two segments and the manifest referencing them.
    upload = uuid.uuid4().hex
    parts = [b"a" * 1048576, b"b" * 1000]
    manifest = []
    for index, data in enumerate(parts):
        name = f"kept.jpg/{upload}/{index:08d}"
        conn.put_object(segments, name, data)
        manifest.append({"path": f"/{segments}/{name}", "etag": hashlib.md5(data).hexdigest(),
                         "size_bytes": len(data)})
    conn.put_object(container, "kept.jpg", json.dumps(manifest), query_string="multipart-manifest=put")
    referenced = [entry["path"].split("/", 2)[2] for entry in manifest]
    time.sleep(1.5)  # older than a grace of 0 s, whatever the resolution of the check

    # Younger than the grace: kept, not even listed.
    result = goblinfs("gc", config, "--grace", "3600", "--store", "public")
    assert_ok(result)
    assert orphan not in result.stdout
    assert "public: 0 orphan segments deleted" in result.stdout.splitlines()
    assert _exists(conn, segments, orphan)

    # --dry-run lists it and deletes nothing (both stores; the queue's containers do not exist).
    result = goblinfs("gc", config, "--dry-run", "--grace", "0")
    assert_ok(result)
    would = [line for line in result.stdout.splitlines() if line.startswith("public: would delete ")]
    assert len(would) == 1 and orphan in would[0], result.stdout
    assert "public: 1 orphan segment would be deleted (dry run: nothing deleted)" in result.stdout.splitlines()
    assert any(line.startswith("queue: ") for line in result.stdout.splitlines())
    assert not any(name in result.stdout for name in referenced)
    assert _exists(conn, segments, orphan)

    # Without --dry-run: deleted; the SLO and its segments untouched.
    result = goblinfs("gc", config, "--grace", "0", "--store", "public")
    assert_ok(result)
    deleted = [line for line in result.stdout.splitlines() if line.startswith("public: deleted ")]
    assert len(deleted) == 1 and orphan in deleted[0], result.stdout
    assert "public: 1 orphan segment deleted" in result.stdout.splitlines()
    assert not _exists(conn, segments, orphan)
    for name in referenced:
        assert _exists(conn, segments, name)
    _headers, body = conn.get_object(container, "kept.jpg")
    assert body == b"".join(parts)

    # Nothing left to collect.
    result = goblinfs("gc", config, "--grace", "0", "--store", "public")
    assert_ok(result)
    assert "public: 0 orphan segments deleted" in result.stdout.splitlines()


@pytest.mark.swift
def test_gc_with_a_refused_login_is_one_line(tmp_path: Path, swift_env: dict[str, Any],
                                             gc_container: str) -> None:
    env = dict(swift_env, key="wrong-key")
    config = write_swift_config(tmp_path / "cfg", env, gc_container)
    text = config.read_text().replace("segment_size = 1048576\n", "segment_size = 1048576\nretries = 0\n")
    config.write_text(text)
    result = goblinfs("gc", config, "--dry-run", "--store", "public", timeout=120)
    line = assert_one_error_line(result, "login refused", "publicstore")
    assert "wrong-key" not in line
