"""Real tools through a real mount, on both backends, checked against the store behind.

Every test drives coreutils/rsync/tar/attr through ``mount_case`` (local directories, then
the real Swift) and compares what the tool saw with what the store holds (read directly with
the StorageInterface, not through FUSE) or with a source tree in tmp_path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from goblinfs.storage import ExactPath

from .conftest import MountCase
from .mountutil import run

MiB = 1048576

#: Fixed, distinct mtimes with nanoseconds (cp -a / rsync -a / touch must keep them exactly).
MTIME_A = 1_600_000_000_123_456_789
MTIME_B = 1_500_000_000_987_654_321
MTIME_DIR = 1_400_000_000_000_000_001


# ---------------------------------------------------------------------- helpers


def q(path: Path | str) -> str:
    return shlex.quote(str(path))


def fail(cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command that must fail; return it (for its stderr)."""
    result = run(cmd, check=False)
    assert result.returncode != 0, f"{cmd!r} succeeded but should have failed:\n{result.stdout}\n{result.stderr}"
    return result


def store_bytes(store: Any, parts: list[str]) -> bytes:
    """The whole content of a file, read from the store directly."""
    with store.get_file(ExactPath(parts), "rb") as f:
        return f.read()


def store_tree(store: Any, parts: list[str] | None = None) -> dict[str, Any]:
    """{relative path: bytes for a file, None for a directory} under parts, from the store."""
    parts = parts or []
    out: dict[str, Any] = {}
    for entry in store.list_dir(ExactPath(parts)):
        rel = [*parts, entry.name]
        key = "/".join(rel)
        if entry.is_dir:
            out[key] = None
            out.update(store_tree(store, rel))
        else:
            out[key] = store_bytes(store, rel)
    return out


def local_tree(root: Path, prefix: str = "") -> dict[str, Any]:
    """Same shape as store_tree, for a local directory (prefix prepended to every key)."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        key = prefix + path.relative_to(root).as_posix()
        out[key] = None if path.is_dir() else path.read_bytes()
    return out


#: Size of the tree's big file: segmented on the test Swift (1 MiB segments).
BIG = MiB + 300_000


def make_tree(root: Path, with_mtimes: bool = True, big: bool = False) -> Path:
    """A small source tree: files at two depths, an empty directory; with big, a file segmented on Swift."""
    root.mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub").mkdir()
    (root / "sub" / "b.bin").write_bytes(os.urandom(5000))
    (root / "sub" / "deeper").mkdir()
    (root / "sub" / "deeper" / "c.txt").write_bytes(b"")
    if big:
        (root / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(BIG))
    (root / "empty").mkdir()
    if with_mtimes:
        os.utime(root / "a.txt", ns=(MTIME_A, MTIME_A))
        os.utime(root / "sub" / "b.bin", ns=(MTIME_B, MTIME_B))
        os.utime(root / "sub" / "deeper" / "c.txt", ns=(MTIME_A, MTIME_A))
        if big:
            os.utime(root / "sub" / "deeper" / "big.bin", ns=(MTIME_B, MTIME_B))
        for d in ("sub/deeper", "sub", "empty"):
            os.utime(root / d, ns=(MTIME_DIR, MTIME_DIR))
    return root


def files_of(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- copying


def test_cp_file(mount_case: MountCase, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    run(f"cp {q(src)} {q(mount_case.public / 'photo.jpg')}")
    target = mount_case.public / "photo.jpg"
    assert target.stat().st_size == 300_000
    assert target.read_bytes() == src.read_bytes()
    store = mount_case.store("public")
    assert store.stat(["photo.jpg"]).size == 300_000
    assert store_bytes(store, ["photo.jpg"]) == src.read_bytes()
    # cat through the mount gives the same bytes.
    assert subprocess.run(["cat", str(target)], capture_output=True, check=True).stdout == src.read_bytes()


def test_cp_a_keeps_mtimes(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big=True)
    dst = mount_case.public / "tree"
    run(f"cp -a {q(src)} {q(dst)}")
    run(f"diff -r {q(src)} {q(dst)}")

    def check_mount() -> None:
        for rel, mtime in (("a.txt", MTIME_A), ("sub/b.bin", MTIME_B), ("sub/deeper/c.txt", MTIME_A),
                           ("sub/deeper/big.bin", MTIME_B)):
            st = os.stat(dst / rel)
            assert st.st_mtime_ns == mtime, rel
            assert st.st_size == (src / rel).stat().st_size, rel
        for rel in ("sub/deeper", "sub", "empty"):
            assert os.stat(dst / rel).st_mtime_ns == MTIME_DIR, rel

    check_mount()
    store = mount_case.store("public")
    assert store.stat(["tree", "a.txt"]).mtime_ns == MTIME_A
    assert store.stat(["tree", "sub", "b.bin"]).mtime_ns == MTIME_B
    assert store.stat(["tree", "sub", "deeper", "big.bin"]).mtime_ns == MTIME_B
    listed = {e.name: e for e in store.list_dir(["tree", "sub", "deeper"])}
    assert listed["c.txt"].mtime_ns == MTIME_A
    assert listed["big.bin"].mtime_ns == MTIME_B
    assert store.stat(["tree", "sub"]).mtime_ns == MTIME_DIR
    assert store_tree(store, ["tree"]) == local_tree(src, "tree/")

    mount_case.remount()
    check_mount()
    run(f"diff -r {q(src)} {q(dst)}")


def test_cp_r_tree(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", with_mtimes=False)
    dst = mount_case.public / "copy"
    run(f"cp -r {q(src)} {q(dst)}")
    run(f"diff -r {q(src)} {q(dst)}")
    assert files_of(dst) == files_of(src)
    assert (dst / "empty").is_dir()
    assert store_tree(mount_case.store("public"), ["copy"]) == local_tree(src, "copy/")
    # From the mount to the mount (reading and writing through FUSE at once), and across stores.
    run(f"cp -r {q(dst)} {q(mount_case.public / 'copy2')}")
    run(f"cp -r {q(dst)} {q(mount_case.queue / 'copy3')}")
    run(f"diff -r {q(src)} {q(mount_case.public / 'copy2')}")
    run(f"diff -r {q(src)} {q(mount_case.queue / 'copy3')}")
    assert store_tree(mount_case.store("queue"), ["copy3"]) == local_tree(src, "copy3/")


def test_ls_l_sizes_and_mtimes(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    run(f"cp -a {q(src)}/. {q(mount_case.public)}/")
    out = run(f"ls -l --time-style=+%s.%N {q(mount_case.public / 'sub')} {q(mount_case.public / 'sub/deeper')}",
              env={**os.environ, "LC_ALL": "C"}).stdout
    seen = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 7:
            # mode links owner group size time name
            seen[fields[6]] = (fields[0][0], int(fields[4]), fields[5])
    assert seen["b.bin"] == ("-", 5000, "1500000000.987654321")
    assert seen["c.txt"] == ("-", 0, "1600000000.123456789")
    assert seen["deeper"][0] == "d"
    assert seen["deeper"][2] == "1400000000.000000001"


def test_stat_tool(mount_case: MountCase) -> None:
    (mount_case.public / "f.txt").write_bytes(b"12345")
    os.utime(mount_case.public / "f.txt", ns=(MTIME_A, MTIME_A))
    out = run(f"stat -c '%s|%Y|%F|%h' {q(mount_case.public / 'f.txt')}").stdout.strip()
    assert out == "5|1600000000|regular file|1"
    out = run(f"stat -c '%.9Y' {q(mount_case.public / 'f.txt')}").stdout.strip()
    assert out == "1600000000.123456789"
    out = run(f"stat -c '%F' {q(mount_case.public)}").stdout.strip()
    assert out == "directory"
    fail(f"stat {q(mount_case.public / 'missing')}")


# ---------------------------------------------------------------------- moving and removing


def test_mv_file(mount_case: MountCase) -> None:
    data = os.urandom(70_000)
    (mount_case.public / "old.bin").write_bytes(data)
    (mount_case.public / "dir").mkdir()
    run(f"mv {q(mount_case.public / 'old.bin')} {q(mount_case.public / 'dir/new.bin')}")
    assert not (mount_case.public / "old.bin").exists()
    assert (mount_case.public / "dir" / "new.bin").read_bytes() == data
    store = mount_case.store("public")
    assert not store.file_exists(["old.bin"])
    assert store_bytes(store, ["dir", "new.bin"]) == data


def test_mv_dir(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big=True)
    run(f"cp -a {q(src)} {q(mount_case.public / 'before')}")
    run(f"mv {q(mount_case.public / 'before')} {q(mount_case.public / 'after')}")
    assert not (mount_case.public / "before").exists()
    assert "before" not in os.listdir(mount_case.public)
    run(f"diff -r {q(src)} {q(mount_case.public / 'after')}")
    assert os.stat(mount_case.public / "after" / "sub" / "b.bin").st_mtime_ns == MTIME_B
    store = mount_case.store("public")
    assert not store.file_exists(["before"])
    assert "before" not in {e.name for e in store.list_dir([])}
    assert store_tree(store, ["after"]) == local_tree(src, "after/")
    mount_case.remount()
    run(f"diff -r {q(src)} {q(mount_case.public / 'after')}")
    assert not (mount_case.public / "before").exists()


def test_mv_dir_onto_directory(mount_case: MountCase) -> None:
    p = mount_case.public
    run(f"mkdir -p {q(p / 'a')} {q(p / 'b')} {q(p / 'full')}")
    (p / "a" / "f.txt").write_bytes(b"f")
    (p / "full" / "g.txt").write_bytes(b"g")
    # Onto an empty directory: replaced.
    run(f"mv -T {q(p / 'a')} {q(p / 'b')}")
    assert sorted(os.listdir(p)) == ["b", "full"]
    assert (p / "b" / "f.txt").read_bytes() == b"f"
    # Onto a non-empty one: refused, nothing lost.
    result = fail(f"mv -T {q(p / 'b')} {q(p / 'full')}")
    assert "Directory not empty" in result.stderr or "File exists" in result.stderr
    assert (p / "b" / "f.txt").read_bytes() == b"f"
    assert (p / "full" / "g.txt").read_bytes() == b"g"
    # A file onto a directory and a directory onto a file: refused.
    fail(f"mv -T {q(p / 'b' / 'f.txt')} {q(p / 'full')}")
    fail(f"mv -T {q(p / 'full')} {q(p / 'b' / 'f.txt')}")
    store = mount_case.store("public")
    assert store_tree(store) == {"b": None, "b/f.txt": b"f", "full": None, "full/g.txt": b"g"}


def test_rename_onto_existing_file_replaces_it(mount_case: MountCase) -> None:
    (mount_case.public / "a.txt").write_bytes(b"new content")
    (mount_case.public / "b.txt").write_bytes(b"old content, longer")
    run(f"mv -f {q(mount_case.public / 'a.txt')} {q(mount_case.public / 'b.txt')}")
    assert sorted(os.listdir(mount_case.public)) == ["b.txt"]
    assert (mount_case.public / "b.txt").read_bytes() == b"new content"
    assert (mount_case.public / "b.txt").stat().st_size == len(b"new content")
    store = mount_case.store("public")
    assert sorted(e.name for e in store.list_dir([])) == ["b.txt"]
    assert store_bytes(store, ["b.txt"]) == b"new content"
    # Python's os.replace too (rename(2) straight).
    (mount_case.public / "c.txt").write_bytes(b"third")
    os.replace(mount_case.public / "c.txt", mount_case.public / "b.txt")
    assert (mount_case.public / "b.txt").read_bytes() == b"third"
    assert store_bytes(store, ["b.txt"]) == b"third"


def test_mv_across_stores(mount_case: MountCase) -> None:
    data = os.urandom(100_000)
    (mount_case.public / "moving.bin").write_bytes(data)
    os.utime(mount_case.public / "moving.bin", ns=(MTIME_A, MTIME_A))
    with pytest.raises(OSError) as info:
        os.rename(mount_case.public / "moving.bin", mount_case.queue / "moving.bin")
    assert info.value.errno == errno.EXDEV
    run(f"mv {q(mount_case.public / 'moving.bin')} {q(mount_case.queue / 'moved.bin')}")
    assert not (mount_case.public / "moving.bin").exists()
    assert (mount_case.queue / "moved.bin").read_bytes() == data
    assert os.stat(mount_case.queue / "moved.bin").st_mtime_ns == MTIME_A
    assert not mount_case.store("public").file_exists(["moving.bin"])
    assert store_bytes(mount_case.store("queue"), ["moved.bin"]) == data
    # A directory across stores, too.
    (mount_case.queue / "d").mkdir()
    (mount_case.queue / "d" / "x.txt").write_bytes(b"x")
    run(f"mv {q(mount_case.queue / 'd')} {q(mount_case.public / 'd')}")
    assert not (mount_case.queue / "d").exists()
    assert (mount_case.public / "d" / "x.txt").read_bytes() == b"x"
    assert store_bytes(mount_case.store("public"), ["d", "x.txt"]) == b"x"
    assert not mount_case.store("queue").file_exists(["d"])


def test_rm_r(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big=True)
    run(f"cp -r {q(src)} {q(mount_case.public / 'gone')}")
    (mount_case.public / "kept.txt").write_bytes(b"kept")
    run(f"rm -r {q(mount_case.public / 'gone')}")
    assert os.listdir(mount_case.public) == ["kept.txt"]
    store = mount_case.store("public")
    assert [e.name for e in store.list_dir([])] == ["kept.txt"]
    assert not store.file_exists(["gone", "a.txt"])
    mount_case.remount()
    assert os.listdir(mount_case.public) == ["kept.txt"]


def test_mkdir_p_persists(mount_case: MountCase) -> None:
    run(f"mkdir -p {q(mount_case.public / 'x/y/z')} {q(mount_case.queue / 'q1')}")
    assert (mount_case.public / "x" / "y" / "z").is_dir()
    assert os.listdir(mount_case.public / "x" / "y" / "z") == []
    # mkdir -p on what exists is fine; mkdir is not.
    run(f"mkdir -p {q(mount_case.public / 'x/y')}")
    assert "File exists" in fail(f"mkdir {q(mount_case.public / 'x')}").stderr
    store = mount_case.store("public")
    assert store.stat(["x", "y", "z"]).is_dir
    assert store.list_dir(["x", "y", "z"]) == []
    mount_case.remount()
    assert (mount_case.public / "x" / "y" / "z").is_dir()
    assert os.listdir(mount_case.public / "x") == ["y"]
    assert os.listdir(mount_case.queue) == ["q1"]
    run(f"find {q(mount_case.public)} -type d -empty -name z")


def test_rmdir(mount_case: MountCase) -> None:
    (mount_case.public / "full").mkdir()
    (mount_case.public / "full" / "f").write_bytes(b"f")
    (mount_case.public / "hollow").mkdir()
    result = fail(f"rmdir {q(mount_case.public / 'full')}")
    assert "Directory not empty" in result.stderr
    assert (mount_case.public / "full" / "f").read_bytes() == b"f"
    run(f"rmdir {q(mount_case.public / 'hollow')}")
    assert sorted(os.listdir(mount_case.public)) == ["full"]
    store = mount_case.store("public")
    assert not store.file_exists(["hollow"])
    assert store_bytes(store, ["full", "f"]) == b"f"
    assert "Not a directory" in fail(f"rmdir {q(mount_case.public / 'full/f')}").stderr
    # A store's root cannot go.
    fail(f"rmdir {q(mount_case.queue)}")


# ---------------------------------------------------------------------- times and sizes


def test_touch_d_exact_mtime(mount_case: MountCase) -> None:
    target = mount_case.public / "t.txt"
    stamp = "2020-01-02 03:04:05.123456789"
    env = {**os.environ, "TZ": "UTC"}
    run(f"touch -d {q(stamp)} {q(target)}", env=env)  # creates it
    (mount_case.public / "d").mkdir()
    run(f"touch -d {q(stamp)} {q(mount_case.public / 'd')}", env=env)
    expected = 1577934245_123456789
    assert target.stat().st_mtime_ns == expected
    assert target.stat().st_size == 0
    store = mount_case.store("public")
    assert store.stat(["t.txt"]).mtime_ns == expected
    assert run(f"stat -c %y {q(target)}", env=env).stdout.strip() == "2020-01-02 03:04:05.123456789 +0000"
    # touch of an existing file with content keeps the content.
    target.write_bytes(b"content")
    run(f"touch -d {q(stamp)} {q(target)}", env=env)
    assert target.stat().st_mtime_ns == expected
    assert store.stat(["t.txt"]).mtime_ns == expected
    mount_case.remount()
    assert target.stat().st_mtime_ns == expected
    assert target.read_bytes() == b"content"
    assert os.stat(mount_case.public / "d").st_mtime_ns == expected


def test_truncate_grow_and_shrink(mount_case: MountCase) -> None:
    target = mount_case.public / "t.bin"
    data = os.urandom(10_000)
    target.write_bytes(data)
    run(f"truncate -s 25000 {q(target)}")
    assert target.stat().st_size == 25000
    assert target.read_bytes() == data + b"\0" * 15000
    store = mount_case.store("public")
    assert store.stat(["t.bin"]).size == 25000
    assert store_bytes(store, ["t.bin"]) == data + b"\0" * 15000
    run(f"truncate -s 1234 {q(target)}")
    assert target.stat().st_size == 1234
    assert target.read_bytes() == data[:1234]
    assert store_bytes(store, ["t.bin"]) == data[:1234]
    run(f"truncate -s 0 {q(target)}")
    assert target.read_bytes() == b""
    assert store.stat(["t.bin"]).size == 0
    # truncate -s on a missing name creates it.
    run(f"truncate -s 100 {q(mount_case.public / 'new.bin')}")
    assert store_bytes(store, ["new.bin"]) == b"\0" * 100


def test_dd_fsync(mount_case: MountCase) -> None:
    target = mount_case.public / "dd.bin"
    run(f"dd if=/dev/urandom of={q(target)} bs=1M count=8 conv=fsync status=none")
    assert target.stat().st_size == 8 * MiB
    data = target.read_bytes()
    store = mount_case.store("public")
    assert store.stat(["dd.bin"]).size == 8 * MiB
    assert sha(store_bytes(store, ["dd.bin"])) == sha(data)
    # A large (segmented on Swift) object: renamed, shrunk, grown, removed.
    run(f"mv {q(target)} {q(mount_case.public / 'moved.bin')}")
    assert os.listdir(mount_case.public) == ["moved.bin"]
    assert not store.file_exists(["dd.bin"])
    assert sha(store_bytes(store, ["moved.bin"])) == sha(data)
    run(f"truncate -s 3M {q(mount_case.public / 'moved.bin')}")
    assert sha((mount_case.public / "moved.bin").read_bytes()) == sha(data[:3 * MiB])
    assert sha(store_bytes(store, ["moved.bin"])) == sha(data[:3 * MiB])
    run(f"truncate -s 9M {q(mount_case.public / 'moved.bin')}")
    assert sha(store_bytes(store, ["moved.bin"])) == sha(data[:3 * MiB] + b"\0" * 6 * MiB)
    run(f"rm {q(mount_case.public / 'moved.bin')}")
    assert os.listdir(mount_case.public) == []
    assert store.list_dir([]) == []


def test_dd_seek_writes_into_the_middle(mount_case: MountCase, tmp_path: Path) -> None:
    target = mount_case.public / "mid.bin"
    original = os.urandom(3 * MiB + 123)
    target.write_bytes(original)
    patch = tmp_path / "patch"
    patch.write_bytes(b"P" * 4096)
    # 4 KiB at offset 1 MiB + 8 KiB, without truncating the rest.
    run(f"dd if={q(patch)} of={q(target)} bs=4096 seek={(MiB + 8192) // 4096} conv=notrunc status=none")
    expected = bytearray(original)
    expected[MiB + 8192:MiB + 8192 + 4096] = b"P" * 4096
    assert target.stat().st_size == len(original)
    assert sha(target.read_bytes()) == sha(bytes(expected))
    store = mount_case.store("public")
    assert sha(store_bytes(store, ["mid.bin"])) == sha(bytes(expected))
    # A write past the end leaves a hole of zeros.
    run(f"dd if={q(patch)} of={q(target)} bs=1 count=3 seek={len(original) + 10} conv=notrunc status=none")
    expected += b"\0" * 10 + b"PPP"
    assert sha(store_bytes(store, ["mid.bin"])) == sha(bytes(expected))
    mount_case.remount()
    assert sha(target.read_bytes()) == sha(bytes(expected))


def test_head_of_large_object(mount_case: MountCase, tmp_path: Path) -> None:
    src = tmp_path / "big"
    run(f"dd if=/dev/urandom of={q(src)} bs=1M count=20 status=none")
    data = src.read_bytes()
    # Written straight into the store (never seen by this mount's cache; before the mount lists
    # the directory, since another writer's names show only after dir_timeout)...
    store = mount_case.store("public")
    with store.get_file(["direct.bin"], "wb") as f:
        f.write(data)
    # ...and through the mount with dd.
    run(f"dd if={q(src)} of={q(mount_case.public / 'big.bin')} bs=1M status=none")
    for name in ("big.bin", "direct.bin"):
        head = subprocess.run(["head", "-c", "100", str(mount_case.public / name)], capture_output=True, check=True)
        assert head.stdout == data[:100], name
        tail = subprocess.run(["tail", "-c", "100", str(mount_case.public / name)], capture_output=True, check=True)
        assert tail.stdout == data[-100:], name
        middle = subprocess.run(["dd", f"if={mount_case.public / name}", "bs=1000", "skip=12345", "count=1",
                                 "status=none"], capture_output=True, check=True)
        assert middle.stdout == data[12_345_000:12_346_000], name
        assert (mount_case.public / name).stat().st_size == 20 * MiB
    assert run(f"cmp {q(src)} {q(mount_case.public / 'direct.bin')}").returncode == 0
    assert sha(store_bytes(store, ["big.bin"])) == sha(data)


def test_parallel_readers_of_large_object(mount_case: MountCase) -> None:
    data = os.urandom(12 * MiB)
    store = mount_case.store("public")
    with store.get_file(["shared.bin"], "wb") as f:
        f.write(data)
    path = q(mount_case.public / "shared.bin")
    # Four readers at once (one download on Swift, shared), one of them starting far into the file.
    out = run(f"(sha256sum {path} & sha256sum {path} & sha256sum {path} & "
              f"dd if={path} bs=1M skip=10 status=none | sha256sum & wait) | cut -d' ' -f1 | sort").stdout.split()
    assert sorted(out) == sorted([sha(data)] * 3 + [sha(data[10 * MiB:])])
    assert sha((mount_case.public / "shared.bin").read_bytes()) == sha(data)


def test_cat_and_append(mount_case: MountCase) -> None:
    target = mount_case.public / "log.txt"
    run(f"echo one > {q(target)}")
    run(f"echo two >> {q(target)}")
    run(f"printf three >> {q(target)}")
    assert run(f"cat {q(target)}").stdout == "one\ntwo\nthree"
    assert target.stat().st_size == len("one\ntwo\nthree")
    store = mount_case.store("public")
    assert store_bytes(store, ["log.txt"]) == b"one\ntwo\nthree"
    mount_case.remount()
    run(f"echo four >> {q(target)}")
    assert run(f"cat {q(target)}").stdout == "one\ntwo\nthreefour\n"
    assert store_bytes(store, ["log.txt"]) == b"one\ntwo\nthreefour\n"


# ---------------------------------------------------------------------- whole-tree tools


def test_find_names_and_newer(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    run(f"cp -a {q(src)} {q(mount_case.public / 't')}")
    t = mount_case.public / "t"
    names = run(f"find {q(t)} -printf '%P\\n'").stdout.split()
    assert sorted(names) == sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    files = run(f"find {q(t)} -type f -printf '%P\\n'").stdout.split()
    assert sorted(files) == files_of(src)
    # -newer: only what has an mtime after a.txt's (MTIME_A is the newest in the tree).
    reference = t / "ref"
    reference.write_bytes(b"")
    os.utime(reference, ns=(MTIME_A + 1, MTIME_A + 1))
    (t / "sub" / "fresh.txt").write_bytes(b"fresh")
    newer = run(f"find {q(t)} -type f -newer {q(reference)} -printf '%P\\n'").stdout.split()
    assert newer == ["sub/fresh.txt"]
    older = run(f"find {q(t)} -type f ! -newer {q(t / 'a.txt')} -printf '%P\\n'").stdout.split()
    assert sorted(older) == ["a.txt", "sub/b.bin", "sub/deeper/c.txt"]


def test_du_s(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    run(f"cp -r {q(src)} {q(mount_case.public / 't')}")
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    kib = int(run(f"du -sk {q(mount_case.public / 't')}").stdout.split()[0])
    assert total // 1024 <= kib <= total // 1024 + 64
    assert run(f"du -b {q(mount_case.public / 't' / 'sub' / 'b.bin')}").stdout.split()[0] == "5000"
    assert 0 < int(run(f"du -sk {q(mount_case.public / 't' / 'sub' / 'b.bin')}").stdout.split()[0]) <= 8
    df = run(f"df -P {q(mount_case.public)}").stdout
    assert df.splitlines()[1].startswith("goblinfs")


def test_tar_round_trip(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    archive = tmp_path / "a.tar"
    run(f"tar cf {q(archive)} -C {q(src)} .")
    (mount_case.public / "unpacked").mkdir()
    run(f"tar xf {q(archive)} -C {q(mount_case.public / 'unpacked')}")
    run(f"diff -r {q(src)} {q(mount_case.public / 'unpacked')}")
    assert os.stat(mount_case.public / "unpacked" / "sub" / "b.bin").st_mtime_ns // 1_000_000_000 == MTIME_B // 10**9
    # tar c from the mount, x into a local directory: same tree back.
    back = tmp_path / "back"
    back.mkdir()
    run(f"tar cf - -C {q(mount_case.public / 'unpacked')} . | tar xf - -C {q(back)}")
    run(f"diff -r {q(src)} {q(back)}")
    assert store_tree(mount_case.store("public"), ["unpacked"]) == local_tree(src, "unpacked/")


def test_rsync_twice_transfers_nothing(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big=True)
    dst = mount_case.public / "dst"
    first = run(f"rsync -a --itemize-changes {q(src)}/ {q(dst)}/").stdout
    assert ">f" in first
    run(f"diff -r {q(src)} {q(dst)}")
    assert os.stat(dst / "sub" / "b.bin").st_mtime_ns == MTIME_B
    second = run(f"rsync -a --itemize-changes {q(src)}/ {q(dst)}/").stdout
    assert ">f" not in second, second
    mount_case.remount()
    third = run(f"rsync -a --itemize-changes {q(src)}/ {q(dst)}/").stdout
    assert ">f" not in third, third
    # A change in the source is transferred, and only it.
    (src / "sub" / "b.bin").write_bytes(b"changed")
    fourth = run(f"rsync -a --itemize-changes {q(src)}/ {q(dst)}/").stdout
    assert [line.split()[-1] for line in fourth.splitlines() if line.startswith(">f")] == ["sub/b.bin"]
    store = mount_case.store("public")
    assert store_bytes(store, ["dst", "sub", "b.bin"]) == b"changed"
    # --delete removes what the source no longer has, in the store too.
    (src / "a.txt").unlink()
    run(f"rsync -a --delete {q(src)}/ {q(dst)}/")
    assert not (dst / "a.txt").exists()
    assert not store.file_exists(["dst", "a.txt"])
    run(f"diff -r {q(src)} {q(dst)}")
    # Directory times were kept too: after a remount, nothing at all is left to do.
    mount_case.remount()
    last = run(f"rsync -a --itemize-changes {q(src)}/ {q(dst)}/").stdout
    assert last == "", last


def test_diff_r_detects_difference(mount_case: MountCase, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    run(f"cp -r {q(src)} {q(mount_case.public / 'c')}")
    run(f"diff -r {q(src)} {q(mount_case.public / 'c')}")
    (src / "sub" / "b.bin").write_bytes(b"different")
    result = fail(f"diff -r {q(src)} {q(mount_case.public / 'c')}")
    assert "b.bin" in result.stdout


# ---------------------------------------------------------------------- xattrs


def test_getfattr(mount_case: MountCase) -> None:
    (mount_case.public / "dir").mkdir()
    target = mount_case.public / "dir" / "pic.jpg"
    target.write_bytes(b"not really a jpeg")

    def getfattr(name: str, path: Path) -> str:
        return run(f"getfattr --only-values -n {name} {q(path)}").stdout

    assert getfattr("user.goblinfs.url", target) == "/mgoblin_media/dir/pic.jpg"
    store = mount_case.store("public")
    assert getfattr("user.goblinfs.etag", target) == store.stat(["dir", "pic.jpg"]).etag
    assert getfattr("user.goblinfs.content_type", target) == "image/jpeg"
    assert "No such attribute" in fail(f"getfattr -n user.goblinfs.nope {q(target)}").stderr
    dumped = run(f"getfattr -d {q(target)}").stdout
    assert "user.goblinfs.url=" in dumped and "user.goblinfs.etag=" in dumped
    # A name stored cleaned has the URL of the cleaned name.
    (mount_case.public / "My Photo.png").write_bytes(b"p")
    assert getfattr("user.goblinfs.url", mount_case.public / "My Photo.png") == "/mgoblin_media/My_Photo.png"
    # Setting one is refused, and nothing breaks.
    fail(f"setfattr -n user.other -v 1 {q(target)}")
    assert target.read_bytes() == b"not really a jpeg"
    # On a directory: the URL only.
    assert getfattr("user.goblinfs.url", mount_case.public / "dir") == "/mgoblin_media/dir"
    assert "No such attribute" in fail(f"getfattr -n user.goblinfs.etag {q(mount_case.public / 'dir')}").stderr


def test_getfattr_etag_follows_content(mount_case: MountCase) -> None:
    target = mount_case.public / "pic.jpg"
    target.write_bytes(b"not really a jpeg")
    store = mount_case.store("public")

    def etag() -> str:
        return run(f"getfattr --only-values -n user.goblinfs.etag {q(target)}").stdout

    old = etag()
    assert old == store.stat(["pic.jpg"]).etag
    # Rewritten through the mount: the etag is the new content's at once (no attr_timeout wait).
    target.write_bytes(b"other bytes")
    new = etag()
    assert new == store.stat(["pic.jpg"]).etag
    assert new != old
    run(f"echo more >> {q(target)}")
    assert etag() == store.stat(["pic.jpg"]).etag != new


def test_content_types(mount_case: MountCase) -> None:
    for name, expected in (("notes.txt", "text/plain"), ("pic.png", "image/png"), ("clip.webm", "video/webm"),
                           ("blob", "application/octet-stream")):
        (mount_case.public / name).write_bytes(b"x")
        got = run(f"getfattr --only-values -n user.goblinfs.content_type {q(mount_case.public / name)}").stdout
        assert got == expected, name
    # Also after a remount (read from the store, not remembered from the write).
    mount_case.remount()
    got = run(f"getfattr --only-values -n user.goblinfs.content_type {q(mount_case.public / 'pic.png')}").stdout
    assert got == "image/png"


# ---------------------------------------------------------------------- names


def test_unclean_new_name_is_stored_cleaned(mount_case: MountCase, tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(b"photo")
    run(f"cp {q(src)} {q(mount_case.public / 'My Photo.jpg')}")
    run(f"stat {q(mount_case.public / 'My Photo.jpg')}")
    assert (mount_case.public / "My Photo.jpg").read_bytes() == b"photo"
    assert os.listdir(mount_case.public) == ["My_Photo.jpg"]
    store = mount_case.store("public")
    assert [e.name for e in store.list_dir([])] == ["My_Photo.jpg"]
    assert store_bytes(store, ["My_Photo.jpg"]) == b"photo"
    run(f"mkdir {q(mount_case.public / 'New Folder')}")
    assert store.stat(["New_Folder"]).is_dir


@pytest.mark.parametrize("name", ["日本", "...", "%%%"])
def test_name_cleaning_to_nothing_is_einval(mount_case: MountCase, name: str) -> None:
    result = fail(f"touch {q(mount_case.public / name)}")
    assert "Invalid argument" in result.stderr
    assert "Invalid argument" in fail(f"mkdir {q(mount_case.public / name)}").stderr
    assert os.listdir(mount_case.public) == []
    assert mount_case.store("public").list_dir([]) == []
    # The mount keeps working.
    run(f"touch {q(mount_case.public / 'ok')}")
    assert os.listdir(mount_case.public) == ["ok"]


def test_name_too_long(mount_case: MountCase) -> None:
    result = fail(f"touch {q(mount_case.public / ('a' * 256))}")
    assert "File name too long" in result.stderr
    fail(f"mkdir {q(mount_case.public / ('b' * 256))}")
    assert os.listdir(mount_case.public) == []
    run(f"touch {q(mount_case.public / ('c' * 255))}")
    assert os.listdir(mount_case.public) == ["c" * 255]
    assert [e.name for e in mount_case.store("public").list_dir([])] == ["c" * 255]


def test_unclean_name_written_in_store(mount_case: MountCase) -> None:
    store = mount_case.store("public")
    with store.get_file(ExactPath(["Weird Name.txt"]), "wb") as f:
        f.write(b"weird")
    with store.get_file(ExactPath(["Sub Dir", "été.txt"]), "wb") as f:
        f.write(b"summer")
    assert sorted(os.listdir(mount_case.public)) == ["Sub Dir", "Weird Name.txt"]
    assert (mount_case.public / "Weird Name.txt").read_bytes() == b"weird"
    assert run(f"cat {q(mount_case.public / 'Weird Name.txt')}").stdout == "weird"
    assert os.listdir(mount_case.public / "Sub Dir") == ["été.txt"]
    assert (mount_case.public / "Sub Dir" / "été.txt").read_bytes() == b"summer"
    assert (mount_case.public / "Weird Name.txt").stat().st_size == 5
    # Rewriting it in place keeps the exact name (no cleaned twin appears).
    (mount_case.public / "Weird Name.txt").write_bytes(b"rewritten")
    assert store_bytes(store, ["Weird Name.txt"]) == b"rewritten"
    assert sorted(e.name for e in store.list_dir([])) == ["Sub Dir", "Weird Name.txt"]
    run(f"rm {q(mount_case.public / 'Weird Name.txt')}")
    assert not store.file_exists(ExactPath(["Weird Name.txt"]))
    assert not store.file_exists(["Weird_Name.txt"])


def _weird_names(store: Any) -> None:
    with store.get_file(ExactPath(["Weird Name.txt"]), "wb") as f:
        f.write(b"weird")
    store.make_dir(ExactPath(["Odd Dir"]))


def test_unclean_names_in_store_touch(mount_case: MountCase) -> None:
    store = mount_case.store("public")
    _weird_names(store)
    p = mount_case.public
    env = {**os.environ, "TZ": "UTC"}
    run(f"touch -d '2020-01-02 03:04:05.123456789' {q(p / 'Weird Name.txt')} {q(p / 'Odd Dir')}", env=env)
    assert os.stat(p / "Weird Name.txt").st_mtime_ns == 1577934245_123456789
    assert store.stat(ExactPath(["Weird Name.txt"])).mtime_ns == 1577934245_123456789
    assert store.stat(ExactPath(["Odd Dir"])).mtime_ns == 1577934245_123456789
    assert sorted(e.name for e in store.list_dir([])) == ["Odd Dir", "Weird Name.txt"]


def test_unclean_names_in_store_mv_rmdir(mount_case: MountCase) -> None:
    store = mount_case.store("public")
    _weird_names(store)
    p = mount_case.public
    run(f"mv {q(p / 'Weird Name.txt')} {q(p / 'Odd Dir' / 'inside.txt')}")
    assert store_bytes(store, ["Odd Dir", "inside.txt"]) == b"weird"
    assert not store.file_exists(ExactPath(["Weird Name.txt"]))
    run(f"rm {q(p / 'Odd Dir' / 'inside.txt')}")
    run(f"rmdir {q(p / 'Odd Dir')}")
    assert os.listdir(p) == []
    assert store.list_dir([]) == []


def test_rm_r_of_directories_written_by_mediagoblin(mount_case: MountCase) -> None:
    # MediaGoblin writes with get_file, creating directories as needed (none of them made with mkdir).
    store = mount_case.store("public")
    for parts in (["media_entries", "12", "photo.jpg"], ["media_entries", "12", "photo.thumbnail.jpg"],
                  ["media_entries", "13", "clip.webm"]):
        with store.get_file(parts, "wb") as f:
            f.write(parts[-1].encode())
    p = mount_case.public
    assert run(f"find {q(p)} -type f -printf '%P\n'").stdout.split() == sorted(
        ["media_entries/12/photo.jpg", "media_entries/12/photo.thumbnail.jpg", "media_entries/13/clip.webm"])
    run(f"mv {q(p / 'media_entries' / '13')} {q(p / 'media_entries' / '14')}")
    assert store_bytes(store, ["media_entries", "14", "clip.webm"]) == b"clip.webm"
    assert not store.file_exists(["media_entries", "13", "clip.webm"])
    assert sorted(os.listdir(p / "media_entries")) == ["12", "14"]
    run(f"rm -r {q(p / 'media_entries' / '12')}")
    assert os.listdir(p / "media_entries") == ["14"]
    assert not store.file_exists(["media_entries", "12", "photo.jpg"])
    run(f"rm {q(p / 'media_entries' / '14' / 'clip.webm')}")
    run(f"rmdir {q(p / 'media_entries' / '14')} {q(p / 'media_entries')}")
    assert os.listdir(p) == []
    assert store.list_dir([]) == []


# ---------------------------------------------------------------------- refused kinds


def test_symlink_hardlink_fifo_refused(mount_case: MountCase) -> None:
    (mount_case.public / "target.txt").write_bytes(b"t")
    assert "Operation not permitted" in fail(f"ln -s target.txt {q(mount_case.public / 'sym')}").stderr
    assert "Operation not permitted" in fail(
        f"ln {q(mount_case.public / 'target.txt')} {q(mount_case.public / 'hard')}").stderr
    assert "Operation not permitted" in fail(f"mkfifo {q(mount_case.public / 'fifo')}").stderr
    assert "Operation not permitted" in fail(f"mknod {q(mount_case.public / 'dev')} c 1 3").stderr
    assert os.listdir(mount_case.public) == ["target.txt"]
    assert [e.name for e in mount_case.store("public").list_dir([])] == ["target.txt"]
    # Still working.
    (mount_case.public / "after.txt").write_bytes(b"after")
    assert (mount_case.public / "after.txt").read_bytes() == b"after"
    assert (mount_case.public / "target.txt").read_bytes() == b"t"


def test_chmod_chown_accepted(mount_case: MountCase) -> None:
    target = mount_case.public / "f"
    target.write_bytes(b"data")
    run(f"chmod 600 {q(target)}")
    run(f"chmod -R u+rwX {q(mount_case.public)}")
    run(f"chown {os.getuid()}:{os.getgid()} {q(target)}")
    assert target.read_bytes() == b"data"
    assert mount_case.store("public").stat(["f"]).size == 4


def test_mount_root_holds_only_the_stores(mount_case: MountCase) -> None:
    mnt = mount_case.mnt
    assert "Operation not permitted" in fail(f"touch {q(mnt / 'x')}").stderr
    assert "Operation not permitted" in fail(f"mkdir {q(mnt / 'x')}").stderr
    fail(f"rmdir {q(mnt / 'queue')}")
    fail(f"mv {q(mnt / 'queue')} {q(mnt / 'other')}")
    assert sorted(os.listdir(mnt)) == ["public", "queue"]
    (mount_case.queue / "ok").write_bytes(b"ok")
    assert mount_case.store("queue").read_range(["ok"], 0, 10) == b"ok"


# ---------------------------------------------------------------------- read-only


def test_read_only_remount(mount_case: MountCase, tmp_path: Path) -> None:
    (mount_case.public / "d").mkdir()
    (mount_case.public / "d" / "f.txt").write_bytes(b"read me")
    mount_case.remount("ro")
    p = mount_case.public
    assert (p / "d" / "f.txt").read_bytes() == b"read me"
    assert run(f"cat {q(p / 'd' / 'f.txt')}").stdout == "read me"
    assert run(f"ls {q(p / 'd')}").stdout.split() == ["f.txt"]
    for cmd in (f"touch {q(p / 'new')}",
                f"echo x >> {q(p / 'd' / 'f.txt')}",
                f"mkdir {q(p / 'nd')}",
                f"rm {q(p / 'd' / 'f.txt')}",
                f"mv {q(p / 'd' / 'f.txt')} {q(p / 'd' / 'g.txt')}",
                f"truncate -s 0 {q(p / 'd' / 'f.txt')}",
                f"touch -d 2001-01-01 {q(p / 'd' / 'f.txt')}",
                f"rmdir {q(p / 'd')}"):
        result = fail(cmd)
        assert "Read-only file system" in result.stderr, (cmd, result.stderr)
    assert (p / "d" / "f.txt").read_bytes() == b"read me"
    assert store_bytes(mount_case.store("public"), ["d", "f.txt"]) == b"read me"
    assert os.stat(p / "d" / "f.txt").st_mode & 0o222 == 0
    assert run(f"getfattr --only-values -n user.goblinfs.url {q(p / 'd' / 'f.txt')}").stdout == "/mgoblin_media/d/f.txt"


# ---------------------------------------------------------------------- editing in place, behind the mount


def test_cp_over_bigger_file_and_sed_i(mount_case: MountCase, tmp_path: Path) -> None:
    target = mount_case.public / "conf.txt"
    target.write_bytes(b"x" * 200_000)
    src = tmp_path / "small"
    src.write_bytes(b"alpha beta\ngamma\n")
    run(f"cp {q(src)} {q(target)}")
    assert target.read_bytes() == b"alpha beta\ngamma\n"
    store = mount_case.store("public")
    assert store_bytes(store, ["conf.txt"]) == b"alpha beta\ngamma\n"
    # sed -i writes a temporary file beside it and renames it over the original.
    run(f"sed -i s/beta/BETA/ {q(target)}")
    assert run(f"cat {q(target)}").stdout == "alpha BETA\ngamma\n"
    assert store_bytes(store, ["conf.txt"]) == b"alpha BETA\ngamma\n"
    assert os.listdir(mount_case.public) == ["conf.txt"]
    assert [e.name for e in store.list_dir([])] == ["conf.txt"]


def test_unlinked_open_file_stays_readable(mount_case: MountCase) -> None:
    target = mount_case.public / "open.bin"
    data = os.urandom(50_000)
    target.write_bytes(data)
    out = subprocess.run(["bash", "-c", f"exec 3< {q(target)}; rm {q(target)}; ls {q(mount_case.public)}; "
                                        "cat <&3 | sha256sum"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [sha(data), "-"]
    assert os.listdir(mount_case.public) == []
    assert not mount_case.store("public").file_exists(["open.bin"])


def test_changes_behind_the_mount_show_after_timeouts(mount_case: MountCase) -> None:
    if mount_case.kind == "swift":  # Swift's default is 10 s: the same promise, with 1 s
        mount_case.remount("dir_timeout=1,attr_timeout=1")
    target = mount_case.public / "thumb.jpg"
    target.write_bytes(b"version-1")
    assert run(f"cat {q(target)}").stdout == "version-1"
    assert os.listdir(mount_case.public) == ["thumb.jpg"]
    store = mount_case.store("public")
    # Another writer (MediaGoblin itself) replaces it with same-size content, and adds a file.
    with store.get_file(["thumb.jpg"], "wb") as f:
        f.write(b"version-2")
    with store.get_file(["other.jpg"], "wb") as f:
        f.write(b"other")
    time.sleep(1.5)  # past attr_timeout and dir_timeout (1 s)
    assert sorted(run(f"ls {q(mount_case.public)}").stdout.split()) == ["other.jpg", "thumb.jpg"]
    assert run(f"cat {q(target)}").stdout == "version-2"
    assert run(f"cat {q(mount_case.public / 'other.jpg')}").stdout == "other"
    # And removed behind the mount: gone after the timeouts.
    store.delete_file(["other.jpg"])
    time.sleep(1.5)
    assert run(f"ls {q(mount_case.public)}").stdout.split() == ["thumb.jpg"]
    fail(f"cat {q(mount_case.public / 'other.jpg')}")


def test_rmdir_with_only_an_empty_subdir(mount_case: MountCase) -> None:
    run(f"mkdir -p {q(mount_case.public / 'a/b')}")
    assert "Directory not empty" in fail(f"rmdir {q(mount_case.public / 'a')}").stderr
    run(f"rmdir {q(mount_case.public / 'a/b')} {q(mount_case.public / 'a')}")
    assert os.listdir(mount_case.public) == []
    assert mount_case.store("public").list_dir([]) == []
    mount_case.remount()
    assert os.listdir(mount_case.public) == []
