"""The remote write state machine (goblinfs.vfs.writes) on the real Swift, without mounting:
old-or-new overwrites, failed writes never published, readers that outlive writers, the
journal and its recovery at the next mount, publication serialised with reads and writes."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from goblinfs.storage import StorageUnavailable
from goblinfs.storage.swift.plainstream import PLAIN_TRANSITIONS, PlainState
from goblinfs.vfs import ROOT_INO, Options, StoreMount, Vfs
from goblinfs.vfs.writes import TRANSITIONS, WriteState
from goblinfs.workbench import ReadCache

from .conftest import drop_container, make_cloud_storage

ROOT = Path(__file__).resolve().parent.parent


class Bench:
    """A Vfs over one Swift store with a real workbench (staging, journal, recovered)."""

    def __init__(self, swift_env: dict[str, Any], container: str, workbench: Path) -> None:
        self.swift_env = swift_env
        self.container = container
        self.workbench = workbench
        (workbench / "staging").mkdir(parents=True, exist_ok=True)
        self.storage = make_cloud_storage(swift_env, container, staging_dir=str(workbench / "spool"))
        self.vfs = self.new_vfs()

    def new_vfs(self) -> Vfs:
        options = Options(staging_dir=str(self.workbench / "staging"), workbench_dir=str(self.workbench),
                          dir_timeout=0.5, attr_timeout=0.5,
                          op_timeout=60)
        cache = ReadCache(str(self.workbench / "cache"), 1 << 30)
        return Vfs([StoreMount("public", self.storage, options)], options, cache=cache, single=True)

    async def create(self, name: str, data: bytes) -> int:
        handle, node = await self.vfs.create(ROOT_INO, name.encode(), os.O_WRONLY | os.O_CREAT)
        await self.vfs.write(handle.fh, 0, data)
        await self.vfs.flush(handle.fh)
        await self.vfs.release(handle.fh)
        return node.ino

    async def read(self, ino: int) -> bytes:
        handle = await self.vfs.open(ino, os.O_RDONLY)
        try:
            return bytes(await self.vfs.read(handle.fh, 0, 1 << 30))
        finally:
            await self.vfs.release(handle.fh)

    def stored(self, name: str) -> bytes:
        with self.storage.get_file([name], "rb") as f:
            return f.read()


@pytest.fixture
async def bench(swift_env: dict[str, Any], tmp_path: Path) -> AsyncIterator[Bench]:
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    b = Bench(swift_env, container, tmp_path / "wb")
    try:
        async with trio.open_nursery() as nursery:
            b.vfs.nursery = nursery
            yield b
            nursery.cancel_scope.cancel()
    finally:
        drop_container(swift_env, container)


def test_design_doc_prints_the_transition_table() -> None:
    """docs/design.md's table is the code's TRANSITIONS, cell for cell."""
    text = (ROOT / "docs" / "design.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| state \\ event |"))
    events = [cell.strip() for cell in header.strip("|").split("|")][1:]
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == len(events) + 1 and cells[0] in {s.value for s in WriteState}:
            rows[cells[0]] = cells[1:]
    documented = {(WriteState(state), event): WriteState(cell)
                  for state, cells in rows.items() for event, cell in zip(events, cells, strict=True) if cell != "·"}
    assert documented == TRANSITIONS


def test_design_doc_prints_the_plain_stream_table() -> None:
    """docs/design.md's plain stream table is the code's PLAIN_TRANSITIONS, cell for cell."""
    lines = (ROOT / "docs" / "design.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| plain state \\ event |"))
    events = [cell.strip() for cell in lines[start].strip("|").split("|")][1:]
    documented = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for event, cell in zip(events, cells[1:], strict=True):
            if cell != "·":
                documented[(PlainState(cells[0]), event)] = PlainState(cell)
    assert documented == PLAIN_TRANSITIONS


async def test_o_trunc_then_flush_keeps_the_old_object(bench: Bench) -> None:
    """dd/shell redirect: O_TRUNC open, a flush (close of a dup) before any write: the store
    keeps the old object; the content replaces it at the next flush."""
    old = os.urandom(3 * 1048576 + 17)
    ino = await bench.create("x.bin", old)
    handle = await bench.vfs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await bench.vfs.flush(handle.fh)  # the early close of a duplicated descriptor
    assert bench.stored("x.bin") == old
    assert bench.vfs.node(ino).remote.state is WriteState.TRUNCATED  # type: ignore[union-attr]
    new = os.urandom(2 * 1048576 + 5)
    for offset in range(0, len(new), 262144):
        await bench.vfs.write(handle.fh, offset, new[offset:offset + 262144])
        assert bench.stored("x.bin") == old  # streaming past segment_size: nothing visible yet
    await bench.vfs.flush(handle.fh)
    assert bench.stored("x.bin") == new
    await bench.vfs.release(handle.fh)
    assert await bench.read(ino) == new


async def test_deliberate_truncation_is_published(bench: Bench) -> None:
    """`: > f` (O_TRUNC, close) is published at the release; fsync publishes it at once."""
    ino = await bench.create("t.txt", b"some content")
    handle = await bench.vfs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await bench.vfs.flush(handle.fh)
    assert bench.stored("t.txt") == b"some content"
    await bench.vfs.release(handle.fh)
    assert bench.stored("t.txt") == b""
    ino2 = await bench.create("u.txt", b"more content")
    handle = await bench.vfs.open(ino2, os.O_WRONLY | os.O_TRUNC)
    await bench.vfs.fsync(handle.fh, False)
    assert bench.stored("u.txt") == b""
    await bench.vfs.release(handle.fh)


async def test_enospc_in_the_workbench_never_publishes(bench: Bench, tmp_path: Path) -> None:
    """A staging disk that fills: the write gets ENOSPC, so do flush and fsync, the stored
    object keeps its old content, and the staging file goes at the last release."""
    old = b"old content " * 1000
    ino = await bench.create("full.bin", old)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=True)
    try:
        bench.vfs.options.staging_dir = str(tiny)
        handle = await bench.vfs.open(ino, os.O_RDWR)  # not appending from empty: all staged
        with pytest.raises(OSError) as failure:
            for offset in range(0, 4 * 1048576, 65536):
                await bench.vfs.write(handle.fh, offset, os.urandom(65536))
        assert failure.value.errno == errno.ENOSPC
        assert bench.vfs.node(ino).remote.state is WriteState.FAILED  # type: ignore[union-attr]
        with pytest.raises(OSError) as at_close:
            await bench.vfs.flush(handle.fh)
        assert at_close.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            await bench.vfs.fsync(handle.fh, False)
        await bench.vfs.release(handle.fh)
        assert bench.stored("full.bin") == old
        assert os.listdir(tiny) == []
        assert bench.vfs.node(ino).remote is None
        assert await bench.read(ino) == old
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)


async def test_reader_that_outlives_the_writer_pins_nothing(bench: Bench) -> None:
    """Writer writes v1, a reader opens, the writer closes, another client replaces the object,
    the reader closes: a new open reads v2 and no staging file is left."""
    ino = await bench.create("f.txt", b"v0")
    writer = await bench.vfs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await bench.vfs.write(writer.fh, 0, b"v1\n")
    reader = await bench.vfs.open(ino, os.O_RDONLY)
    assert bytes(await bench.vfs.read(reader.fh, 0, 100)) == b"v1\n"
    await bench.vfs.flush(writer.fh)
    await bench.vfs.release(writer.fh)
    assert bench.vfs.node(ino).remote is None
    assert bytes(await bench.vfs.read(reader.fh, 0, 100)) == b"v1\n"  # what it had
    with open(bench.workbench / "v2", "wb") as f:
        f.write(b"v2 from another client\n")
    bench.storage.store_local_file(str(bench.workbench / "v2"), ["f.txt"])
    await bench.vfs.release(reader.fh)
    assert await bench.read(ino) == b"v2 from another client\n"
    assert os.listdir(bench.workbench / "staging") == []


async def test_publication_is_serialised_with_reads_and_writes(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow upload at flush: a read and a write on another handle wait for it; the cached
    copy after release is exactly what the store holds (issue 8 item 11)."""
    ino = await bench.create("r.bin", b"A" * 100000)
    real = bench.storage.store_local_file

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.storage, "store_local_file", slow)
    h1 = await bench.vfs.open(ino, os.O_RDWR)
    h2 = await bench.vfs.open(ino, os.O_RDWR)
    await bench.vfs.write(h1.fh, 0, b"B" * 100000)
    results: dict[str, Any] = {}

    async def flusher() -> None:
        await bench.vfs.flush(h1.fh)
        results["flushed"] = trio.current_time()

    async def other() -> None:
        await trio.sleep(0.2)  # the flush is uploading now
        results["read"] = bytes(await bench.vfs.read(h2.fh, 0, 100000))
        await bench.vfs.write(h2.fh, 0, b"C" * 10)
        results["wrote"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher)
        nursery.start_soon(other)
    assert results["read"] == b"B" * 100000
    assert results["wrote"] >= results["flushed"]
    assert bench.stored("r.bin") == b"B" * 100000
    await bench.vfs.flush(h2.fh)
    await bench.vfs.release(h1.fh)
    await bench.vfs.release(h2.fh)
    expected = b"C" * 10 + b"B" * 99990
    assert bench.stored("r.bin") == expected
    monkeypatch.setattr(bench.storage, "store_local_file", real)
    assert await bench.read(ino) == expected


def _journal(bench: Bench) -> list[dict[str, Any]]:
    import json

    directory = bench.workbench / "journal"
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


async def _recover_in_new_vfs(bench: Bench) -> None:
    """What the next mount does: a new Vfs over the same workbench recovers the journal."""
    bench.vfs = bench.new_vfs()
    await bench.vfs.recover()


async def test_failed_upload_is_journaled_and_uploaded_at_the_next_mount(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    old = b"old"
    ino = await bench.create("j.txt", old)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("injected: Swift is down")

    real = bench.storage.store_local_file
    monkeypatch.setattr(bench.storage, "store_local_file", down)
    handle = await bench.vfs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await bench.vfs.write(handle.fh, 0, b"new content that must not be lost")
    with pytest.raises(OSError) as failure:
        await bench.vfs.flush(handle.fh)
    assert failure.value.errno == errno.EIO
    records = _journal(bench)
    assert [r["state"] for r in records] == ["sealed"]
    assert records[0]["path"] == ["j.txt"]
    assert bench.stored("j.txt") == old
    # The daemon dies here (no release, no unmount); Swift comes back; the next mount:
    monkeypatch.setattr(bench.storage, "store_local_file", real)
    await _recover_in_new_vfs(bench)
    assert bench.stored("j.txt") == b"new content that must not be lost"
    assert _journal(bench) == []
    assert not (bench.workbench / "recovered").exists()


async def test_changed_object_or_unclosed_data_is_kept_not_published(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    await bench.create("c.txt", b"base")
    ino_d = await bench.create("d.txt", b"d base")

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("injected: Swift is down")

    real = bench.storage.store_local_file
    monkeypatch.setattr(bench.storage, "store_local_file", down)
    node = await bench.vfs.lookup(ROOT_INO, b"c.txt")
    handle = await bench.vfs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
    await bench.vfs.write(handle.fh, 0, b"ours")
    with pytest.raises(OSError):
        await bench.vfs.flush(handle.fh)
    # A writer that never closed (killed mid-write):
    unclosed = await bench.vfs.open(ino_d, os.O_WRONLY | os.O_TRUNC)
    await bench.vfs.write(unclosed.fh, 0, b"half of a new d")
    monkeypatch.setattr(bench.storage, "store_local_file", real)
    # Another client replaces c.txt meanwhile.
    (bench.workbench / "theirs").write_bytes(b"theirs")
    bench.storage.store_local_file(str(bench.workbench / "theirs"), ["c.txt"])
    await _recover_in_new_vfs(bench)
    assert bench.stored("c.txt") == b"theirs"
    assert bench.stored("d.txt") == b"d base"
    kept = {item["path"]: item for item in bench.vfs.recovered()}
    assert set(kept) == {"c.txt", "d.txt"}
    assert Path(kept["c.txt"]["file"]).read_bytes() == b"ours"
    assert re.search("changed", kept["c.txt"]["reason"])
    assert Path(kept["d.txt"]["file"]).read_bytes() == b"half of a new d"
    assert re.search("never closed", kept["d.txt"]["reason"])
    assert _journal(bench) == []
    status = bench.vfs.status()
    assert {item["path"] for item in status["recovered"]} == {"c.txt", "d.txt"}


async def test_small_files_written_and_closed_need_no_journal_record(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staging file's name says where it belongs; a record is written only when recovery
    needs more (a stream's segments, a failed publication): none for cp of small files."""
    from goblinfs.vfs.journal import Journal

    writes: list[str] = []
    real = Journal.write

    def counting(self: Journal, record_id: str, record: dict[str, Any], durable: bool = False) -> None:
        writes.append(record["state"])
        real(self, record_id, record, durable)

    monkeypatch.setattr(Journal, "write", counting)
    for i in range(5):
        await bench.create(f"small{i}.txt", b"x" * 1000)
    ino = (await bench.vfs.lookup(ROOT_INO, b"small0.txt")).ino
    handle = await bench.vfs.open(ino, os.O_WRONLY | os.O_TRUNC)
    name = os.listdir(bench.workbench / "staging")
    assert name and name[0].startswith("staging-public%2Fsmall0.txt.")
    await bench.vfs.write(handle.fh, 0, b"y" * 100)
    await bench.vfs.flush(handle.fh)
    await bench.vfs.release(handle.fh)
    assert writes == []
    # A stream is journaled (its upload id): appending past segment_size from empty.
    handle, _node = await bench.vfs.create(ROOT_INO, b"big.bin", os.O_WRONLY | os.O_CREAT)
    for offset in range(0, 3 * 1048576, 262144):
        await bench.vfs.write(handle.fh, offset, os.urandom(262144))
    assert writes == ["streaming"]
    await bench.vfs.flush(handle.fh)
    await bench.vfs.release(handle.fh)
    assert _journal(bench) == []
