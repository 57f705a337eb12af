"""``goblinfs sync`` against the real Swift all-in-one: local → Swift → local with sha256 of every
file, Swift → Swift in one account with no data through the client (the Swift proxy's own log),
SIGTERM at random points then a rerun, corruption found by ``--checksum``, names the
destination cannot hold, ``--dry-run`` / ``--delete``, and the command's errors.

The command runs as users run it (``python -m goblinfs sync ... --json``, a subprocess);
what it did is checked behind its back, with python-swiftclient and the local filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import swiftclient

from goblinfs.sync import Mismatch, check_layout

from .conftest import ROOT, drop_container

pytestmark = pytest.mark.swift

#: Bigger than the test cluster's max_file_size (5 MiB): Swift only takes it as an SLO.
BIG = 6 * 1048576 + 12345


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_sync(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``goblinfs sync ARGS --json``; (exit status, the JSON summary or None, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "goblinfs", "sync", *args, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        pytest.fail(f"not JSON on stdout: {proc.stdout!r}\nstderr: {proc.stderr}")
    return proc.returncode, report, proc.stderr


def write_config(directory: Path, swift_env: dict[str, Any], public: str, queue: str, extra: str = "") -> Path:
    """A mediagoblin.ini whose public and queue stores are two containers of one Swift account.
    segment_size is left at its default (100 MiB): only the cluster's max_file_size makes SLOs."""
    directory.mkdir(parents=True, exist_ok=True)
    common = ("storage_class = mediagoblin.storage.cloudfiles:CloudFilesStorage\n"
              f"cloudfiles_user = {swift_env['user']}\ncloudfiles_api_key = {swift_env['key']}\n"
              f"cloudfiles_host = {swift_env['auth_url']}\n{extra}")
    config = directory / "mediagoblin.ini"
    config.write_text(f"[storage:publicstore]\n{common}cloudfiles_container = {public}\n"
                      f"[storage:queuestore]\n{common}cloudfiles_container = {queue}\n")
    return config


@pytest.fixture
def containers(swift_env: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Two fresh container names (public, queue), dropped with their segments at the end."""
    names = (f"sync-{uuid.uuid4().hex[:10]}", f"sync-{uuid.uuid4().hex[:10]}")
    try:
        yield names
    finally:
        for name in names:
            drop_container(swift_env, name)


def connect(swift_env: dict[str, Any]) -> swiftclient.Connection:
    return swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"], key=swift_env["key"])


def make_tree(root: Path, rng: random.Random, small: int = 12, big: bool = True) -> dict[str, bytes]:
    """Files with spaces and unicode in their names, a 0-byte file, nested and empty directories,
    a file over the cluster's max_file_size; exact mtimes to the nanosecond.  {relative path: bytes}."""
    files: dict[str, bytes] = {
        "zero-bytes": b"",
        "My Photo 1.jpg": rng.randbytes(2000),
        "été/résumé ü.txt": rng.randbytes(777),
        "日本/写真 2.png": rng.randbytes(4096),
        "media_entries/12/a b c.webm": rng.randbytes(30000),
        ".hidden name": rng.randbytes(10),
    }
    for index in range(small):
        files[f"media_entries/{index % 4}/file-{index}.bin"] = rng.randbytes(rng.randrange(1, 50000))
    if big:
        files["media_entries/big video.mp4"] = rng.randbytes(BIG)
    for index, (rel, data) in enumerate(sorted(files.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        mtime = 1_700_000_000_123_456_789 + index * 1_000_000_007
        os.utime(path, ns=(mtime, mtime))
    for rel in ("empty", "nested/deeper/empty too", "media_entries/99"):
        (root / rel).mkdir(parents=True)
    os.utime(root / "empty", ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_001))
    return files


EMPTY_DIRS = ("empty", "nested/deeper/empty too", "media_entries/99")


def swift_files(conn: swiftclient.Connection, container: str) -> dict[str, dict[str, Any]]:
    """Listing items of the container by name."""
    _headers, items = conn.get_container(container, full_listing=True)
    return {item["name"]: item for item in items}


def check_swift_has(conn: swiftclient.Connection, container: str, files: dict[str, bytes], source: Path) -> None:
    """Every file's bytes (sha256 of a GET), exact mtime and content type, markers for empty dirs."""
    from goblinfs.storage.swift.listing import guess_type, parse_mtime, split_content_type

    listing = swift_files(conn, container)
    for rel, data in files.items():
        headers, body = conn.get_object(container, rel)
        assert sha256(body) == sha256(data), rel
        content_type, mtime_ns = split_content_type(headers["content-type"])
        assert mtime_ns == os.stat(source / rel).st_mtime_ns, rel
        assert parse_mtime(headers["x-object-meta-mtime"]) == mtime_ns, rel
        assert content_type == guess_type(rel.rsplit("/", 1)[-1]), rel
        if len(data) > 5 * 1048576:
            assert headers.get("x-static-large-object") == "True", rel
    for rel in EMPTY_DIRS:
        assert listing[rel + "/"]["content_type"] == "application/directory", rel
    assert set(listing) == set(files) | {rel + "/" for rel in EMPTY_DIRS}


def check_local_has(root: Path, files: dict[str, bytes], source: Path) -> None:
    """sha256 and exact mtime of every file; the empty directories; nothing else."""
    for rel, data in files.items():
        path = root / rel
        assert sha256(path.read_bytes()) == sha256(data), rel
        assert path.stat().st_mtime_ns == (source / rel).stat().st_mtime_ns, rel
    for rel in EMPTY_DIRS:
        assert (root / rel).is_dir() and not any((root / rel).iterdir()), rel
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert found == set(files)


def test_local_to_swift_and_back(swift_env: dict[str, Any], containers: tuple[str, str], tmp_path: Path) -> None:
    public, _queue = containers
    config = write_config(tmp_path / "cfg", swift_env, *containers)
    source = tmp_path / "src"
    files = make_tree(source, random.Random(11))
    conn = connect(swift_env)

    rc, report, err = run_sync(str(source), f"{config}:public")
    assert rc == 0, err
    assert report is not None and report["failed"] == [] and report["copied"] == len(files)
    assert report["bytes_copied"] == sum(map(len, files.values()))
    check_swift_has(conn, public, files, source)
    # The large file is an SLO with segments of at most max_file_size in the store's segments container.
    _h, segments = conn.get_container(public + "_segments")
    assert len(segments) == 2 and all(item["bytes"] <= swift_env["max_file_size"] for item in segments)

    rc, report, err = run_sync(str(source), f"{config}:public")
    assert rc == 0, err
    assert report is not None and report["copied"] == 0 and report["up_to_date"] == len(files)

    back = tmp_path / "back"
    rc, report, err = run_sync(f"{config}:public", str(back), "--progress", "lines", "--interval", "0.05")
    assert rc == 0, err
    assert report is not None and report["copied"] == len(files) and report["failed"] == []
    check_local_has(back, files, source)
    assert (back / "empty").stat().st_mtime_ns == 1_600_000_000_000_000_001  # the marker's mtime
    assert not list(back.rglob(".goblinfs-sync-*"))
    rc, report, err = run_sync(f"{config}:public", str(back))
    assert rc == 0 and report is not None and report["copied"] == 0 and report["up_to_date"] == len(files), err

    # --dry-run lists, changes nothing; --delete says how many first, then deletes.
    (back / "media_entries" / "stray.txt").write_bytes(b"not in the source")
    (back / "stray dir").mkdir()
    rc, report, err = run_sync(f"{config}:public", str(back), "--dry-run", "--delete")
    assert rc == 0, err
    assert report is not None and report["would_delete"] == ["media_entries/stray.txt", "stray dir/"]
    assert (back / "media_entries" / "stray.txt").exists() and (back / "stray dir").exists()
    rc, report, err = run_sync(f"{config}:public", str(back), "--delete")
    assert rc == 0 and report is not None and report["deleted"] == 2, err
    assert "deleting 1 file(s) and 1 directory(ies)" in err
    assert not (back / "media_entries" / "stray.txt").exists() and not (back / "stray dir").exists()
    check_local_has(back, files, source)


def _proxy_log(swift_env: dict[str, Any]) -> Path:
    return Path(swift_env["dir"]) / "log" / "proxy.log"


def _client_requests(lines: list[str], container: str) -> list[tuple[str, str, int, int]]:
    """(method, path, bytes received, bytes sent) of the client's own requests (not the proxy's
    subrequests, whose swift_source is set) that name the container, from proxy-logging lines."""
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 18 or fields[0] != "proxy-server:" or fields[17] != "-":
            continue
        method, path = fields[4], fields[5]
        if f"/{container}" not in path:
            continue
        received = 0 if fields[11] == "-" else int(fields[11])
        sent = 0 if fields[12] == "-" else int(fields[12])
        found.append((method, path, received, sent))
    return found


def test_swift_to_swift_server_side(swift_env: dict[str, Any], containers: tuple[str, str], tmp_path: Path) -> None:
    public, queue = containers
    config = write_config(tmp_path / "cfg", swift_env, public, queue)
    source = tmp_path / "src"
    files = make_tree(source, random.Random(12))
    rc, _report, err = run_sync(str(source), f"{config}:public")
    assert rc == 0, err

    log = _proxy_log(swift_env)
    offset = log.stat().st_size
    rc, report, err = run_sync(f"{config}:public", f"{config}:queue")
    assert rc == 0, err
    assert report is not None and report["copied"] == len(files) and report["server_side_copies"] == len(files)
    time.sleep(0.5)  # the proxy logs a request once it has answered it
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", "replace").splitlines()
    requests = _client_requests(lines, public) + _client_requests(lines, queue)
    assert requests, "no request of the sync in the proxy log"
    total = sum(map(len, files.values()))
    through_client = sum(received + sent for _m, _p, received, sent in requests)
    # Listings, manifests and headers only: not one file's bytes went through the client.
    assert through_client < 100_000 < total, (through_client, total)
    copies = [r for r in requests if r[0] == "PUT" and f"/{queue}/" in r[1] and r[2] == 0]
    assert len(copies) >= len(files) - 1

    conn = connect(swift_env)
    check_swift_has(conn, queue, files, source)
    # The copy owns its segments: with the source container emptied, every file still reads back.
    drop_container(swift_env, public)
    for rel, data in files.items():
        assert sha256(conn.get_object(queue, rel)[1]) == sha256(data), rel
    _h, segments = conn.get_container(queue + "_segments")
    assert len(segments) == 2
    rc, report, err = run_sync(f"{config}:queue", f"{config}:public")
    assert rc == 0 and report is not None and report["copied"] == len(files), err
    rc, report, err = run_sync(f"{config}:queue", f"{config}:public", "--checksum")
    assert rc == 0 and report is not None and report["copied"] == 0 and report["up_to_date"] == len(files), err

    # --delete on Swift: a stray file, its directory and a stray empty directory's marker go.
    conn.put_object(public, "stray/file.txt", b"stray")
    conn.put_object(public, "stray empty/", b"", content_type="application/directory")
    rc, report, err = run_sync(f"{config}:queue", f"{config}:public", "--delete")
    assert rc == 0 and report is not None and report["deleted"] == 3 and report["to_delete"] == 3, err
    assert set(swift_files(conn, public)) == set(swift_files(conn, queue))


def _interrupt(args: list[str], fraction: float) -> int:
    """Start a sync, SIGTERM it once its progress lines say *fraction* of the files are done; its
    exit status (it must end within 60 s).  Two transfers, so that the run lasts on a fast machine."""
    proc = subprocess.Popen([sys.executable, "-m", "goblinfs", "sync", *args, "--json", "--transfers", "2",
                             "--progress", "lines", "--interval", "0.05"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            match = re.search(rb"sync: (\d+)/(\d+) files", line)
            if match and int(match[1]) >= fraction * int(match[2]):
                proc.send_signal(signal.SIGTERM)
                break
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # 0: it ended before the signal; 128+SIGTERM: stopped cleanly.  Never a failure.
    assert proc.returncode in (0, 128 + signal.SIGTERM), (b"".join(seen) + err).decode(errors="replace")
    return proc.returncode


def _swift_consistent(conn: swiftclient.Connection, container: str, files: dict[str, bytes]) -> int:
    """Every object in the container is a whole source file (listing MD5, or a GET for SLOs), and
    every segment belongs to a manifest: nothing partial.  The number of files there."""
    try:
        listing = swift_files(conn, container)
    except swiftclient.ClientException as exc:
        if exc.http_status != 404:
            raise
        return 0  # stopped before it made the container
    manifests: set[str] = set()
    count = 0
    for name, item in listing.items():
        if name.endswith("/"):
            continue
        data = files[name]
        assert item["bytes"] == len(data), name
        if len(data) > 5 * 1048576:
            assert sha256(conn.get_object(container, name)[1]) == sha256(data), name
            _h, manifest = conn.get_object(container, name, query_string="multipart-manifest=get")
            manifests.update(segment["name"].split("/", 2)[2] for segment in json.loads(manifest))
        else:
            assert item["hash"] == hashlib.md5(data).hexdigest(), name
        count += 1
    with contextlib.suppress(swiftclient.ClientException):
        _h, segments = conn.get_container(container + "_segments", full_listing=True)
        assert {segment["name"] for segment in segments} <= manifests, "segments of an unfinished upload left"
    return count


def test_interrupted_then_rerun(swift_env: dict[str, Any], containers: tuple[str, str], tmp_path: Path) -> None:
    public, _queue = containers
    config = write_config(tmp_path / "cfg", swift_env, *containers)
    source = tmp_path / "src"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    files = make_tree(source, rng, small=100)
    files["media_entries/second big.mp4"] = rng.randbytes(BIG // 2 + 1048576 * 3)
    (source / "media_entries/second big.mp4").write_bytes(files["media_entries/second big.mp4"])
    conn = connect(swift_env)

    statuses = []
    for _round in range(3):
        # The first cut early, so that at least one run is surely stopped with files still to copy.
        fraction = rng.uniform(0.05, 0.3) if _round == 0 else rng.uniform(0.05, 0.9)
        statuses.append(_interrupt([str(source), f"{config}:public"], fraction))
        present = _swift_consistent(conn, public, files)
        assert present <= len(files), seed
    rc, report, err = run_sync(str(source), f"{config}:public")
    assert rc == 0, (seed, statuses, err)
    assert report is not None and report["failed"] == []
    assert report["copied"] + report["up_to_date"] == len(files)
    check_swift_has(conn, public, files, source)
    assert _swift_consistent(conn, public, files) == len(files)

    # Swift -> local, interrupted: no temporary file stays, what is there is whole.
    back = tmp_path / "back"
    for _round in range(2):
        fraction = rng.uniform(0.05, 0.3) if _round == 0 else rng.uniform(0.05, 0.9)
        statuses.append(_interrupt([f"{config}:public", str(back)], fraction))
        assert not list(back.rglob(".goblinfs-sync-*")), (seed, statuses)
        for path in back.rglob("*"):
            if path.is_file():
                assert sha256(path.read_bytes()) == sha256(files[str(path.relative_to(back))]), path
    rc, report, err = run_sync(f"{config}:public", str(back))
    assert rc == 0, (seed, statuses, err)
    check_local_has(back, files, source)
    rc, report, err = run_sync(f"{config}:public", str(back))
    assert rc == 0 and report is not None and report["copied"] == 0, err
    # At least one run must really have been stopped by the signal (else nothing was tested).
    assert 128 + signal.SIGTERM in statuses, (seed, statuses)


def test_checksum_finds_corruption(swift_env: dict[str, Any], containers: tuple[str, str], tmp_path: Path) -> None:
    public, _queue = containers
    config = write_config(tmp_path / "cfg", swift_env, *containers)
    source = tmp_path / "src"
    files = make_tree(source, random.Random(13), small=4)
    rc, _report, err = run_sync(str(source), f"{config}:public")
    assert rc == 0, err
    conn = connect(swift_env)

    # Same size, same mtime metadata, other bytes: only the MD5 tells.
    victim = "été/résumé ü.txt"
    headers = conn.head_object(public, victim)
    bad = bytes(b ^ 0xFF for b in files[victim])
    conn.put_object(public, victim, bad, content_type=headers["content-type"],
                    headers={"X-Object-Meta-Mtime": headers["x-object-meta-mtime"]})
    rc, report, err = run_sync(str(source), f"{config}:public")
    assert rc == 0 and report is not None and report["copied"] == 0, err
    rc, report, err = run_sync(str(source), f"{config}:public", "--checksum")
    assert rc == 0, err
    assert report is not None and report["checksum_differed"] == [victim] and report["copied"] == 1
    assert conn.get_object(public, victim)[1] == files[victim]

    # Local destination: a flipped byte in the big file, size and mtime kept.
    back = tmp_path / "back"
    rc, _report, err = run_sync(f"{config}:public", str(back))
    assert rc == 0, err
    big = back / "media_entries/big video.mp4"
    st = big.stat()
    with open(big, "r+b") as f:
        f.seek(BIG - 10)
        f.write(b"X")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, report, err = run_sync(f"{config}:public", str(back), "--checksum")
    assert rc == 0, err
    assert report is not None and report["checksum_differed"] == ["media_entries/big video.mp4"]
    assert sha256(big.read_bytes()) == sha256(files["media_entries/big video.mp4"])
    rc, report, err = run_sync(f"{config}:public", str(back), "--checksum")
    assert rc == 0 and report is not None and report["copied"] == 0 and report["checksum_differed"] == [], err


def test_names_the_destination_cannot_hold(swift_env: dict[str, Any], containers: tuple[str, str],
                                           tmp_path: Path) -> None:
    public, _queue = containers
    config = write_config(tmp_path / "cfg", swift_env, *containers)
    source = tmp_path / "src"
    (source / "ok").mkdir(parents=True)
    (source / "ok" / "fine.txt").write_bytes(b"fine")
    long_dir = source.joinpath(*["d" * 250] * 5)  # each name fits a disk, the whole is > 1024 bytes
    long_dir.mkdir(parents=True)
    (long_dir / "too long.txt").write_bytes(b"x")
    os.symlink("ok/fine.txt", source / "link")
    rc, report, err = run_sync(str(source), f"{config}:public")
    assert rc == 1, err
    assert report is not None and report["copied"] == 1
    failed = {item["path"]: item["error"] for item in report["failed"]}
    assert "longer than this Swift allows" in failed["/".join(["d" * 250] * 5 + ["too long.txt"])]
    assert "symlink" in failed["link"]
    assert "FAILED link" in err
    conn = connect(swift_env)
    assert set(swift_files(conn, public)) == {"ok/fine.txt"}

    # Swift names no local directory holds: a file that is also a directory, an empty component.
    conn.put_object(public, "both", b"a file")
    conn.put_object(public, "both/child", b"a child")
    conn.put_object(public, "x//y", b"empty component")
    back = tmp_path / "back"
    rc, report, err = run_sync(f"{config}:public", str(back))
    assert rc == 1, err
    assert report is not None
    failed = {item["path"]: item["error"] for item in report["failed"]}
    assert set(failed) == {"both", "x//y"}, failed
    assert (back / "both" / "child").read_bytes() == b"a child"
    assert (back / "ok" / "fine.txt").read_bytes() == b"fine"


def test_command_errors(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "goblinfs", "sync", str(tmp_path / "missing"), str(tmp_path / "d")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such directory" in proc.stderr
    (tmp_path / "a").mkdir()
    proc = subprocess.run([sys.executable, "-m", "goblinfs", "sync", str(tmp_path / "a"), str(tmp_path / "a" / "in")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "overlap" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "goblinfs", "sync", "--transfers", "0", str(tmp_path / "a"),
                           str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--transfers 0" in proc.stderr
    config = tmp_path / "bad.ini"
    config.write_text("[storage:publicstore]\nstorage_class = no.such.module:Store\n")
    proc = subprocess.run([sys.executable, "-m", "goblinfs", "sync", f"{config}:public", str(tmp_path / "b")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no.such.module" in proc.stderr


def test_check_layout(tmp_path: Path) -> None:
    """The verification itself: per-part MD5s must match, a short file or one other byte is a Mismatch."""
    data = random.Random(5).randbytes(3000)
    path = tmp_path / "f"
    path.write_bytes(data)
    parts = [(1000, hashlib.md5(data[:1000]).hexdigest()), (2000, hashlib.md5(data[1000:]).hexdigest())]
    check_layout(str(path), parts, "f")
    check_layout(str(path), [(3000, hashlib.md5(data).hexdigest())], "f")
    with pytest.raises(Mismatch, match="segment 1"):
        check_layout(str(path), [parts[0], (2000, hashlib.md5(data[1000:2999] + b"!").hexdigest())], "f")
    with pytest.raises(Mismatch, match="3000 bytes here"):
        check_layout(str(path), [*parts, (1, "0" * 32)], "f")


def test_local_to_local(tmp_path: Path) -> None:
    """Two plain directories: the same tree, exact mtimes (directories too), nothing the second time,
    a flipped byte found by --checksum only."""
    source = tmp_path / "src"
    files = make_tree(source, random.Random(21), small=6, big=False)
    dest = tmp_path / "dst"
    rc, report, err = run_sync(str(source), str(dest))
    assert rc == 0 and report is not None and report["copied"] == len(files), err
    check_local_has(dest, files, source)
    for rel in ("empty", "nested", "été"):
        assert (dest / rel).stat().st_mtime_ns == (source / rel).stat().st_mtime_ns, rel
    victim = dest / "My Photo 1.jpg"
    st = victim.stat()
    data = files["My Photo 1.jpg"]
    victim.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, report, err = run_sync(str(source), str(dest))
    assert rc == 0 and report is not None and report["copied"] == 0, err
    rc, report, err = run_sync(str(source), str(dest), "--checksum")
    assert rc == 0 and report is not None and report["checksum_differed"] == ["My Photo 1.jpg"], err
    check_local_has(dest, files, source)


def test_mismatch_at_a_swift_destination_is_not_left_to_look_up_to_date(
        swift_env: dict[str, Any], containers: tuple[str, str], tmp_path: Path) -> None:
    """A server-side copy whose ETag is not the one the scan saw (the source changed in between) is
    a failure, and the copy is deleted: published with the source's size and mtime, it would pass
    for up to date at the next run."""
    from goblinfs.sync import FileInfo, Options, Sync, open_endpoint

    public, queue = containers
    config = write_config(tmp_path / "cfg", swift_env, public, queue)
    conn = connect(swift_env)
    conn.put_container(queue)
    conn.put_object(queue, "a.jpg", b"what the scan saw")
    src = open_endpoint(f"{config}:queue")
    dst = open_endpoint(f"{config}:public", create=True)
    job = Sync(src, dst, Options())
    assert job.server_side
    scanned = FileInfo(17, 1_700_000_000 * 10**9, etag=hashlib.md5(b"what the scan saw").hexdigest())
    conn.put_object(queue, "a.jpg", b"changed after the scan")  # same name, other bytes
    with pytest.raises(Mismatch):
        job._transfer(("a.jpg",), scanned, None)
    with pytest.raises(swiftclient.ClientException) as info:
        conn.head_object(public, "a.jpg")
    assert info.value.http_status == 404
    assert conn.get_object(queue, "a.jpg")[1] == b"changed after the scan"  # the source untouched
