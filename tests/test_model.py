"""Model-based tests of the semantics layer (``goblinfs.vfs.Vfs``) with hypothesis.

Random sequences of create/open (O_TRUNC, O_APPEND, read-only/write-only/read-write), writes at
offsets, truncates (with and without a handle), reads, flush, fsync, close, release, rename,
unlink and forget, over several handles and three names, are run against a real ``Vfs`` (on a
local directory and on the real Swift, 64 KiB segments so SLOs and streaming run) and checked
against a small in-memory model of the contract:

* Through the mount every read sees the latest writes of any handle to that file (one shared
  content per file), short only at the end of the file.
* Durable close (Swift): after flush (close) or fsync returns on a writable handle the store,
  read directly, holds exactly the file's current content -- except when the only change since
  the last publication is the O_TRUNC of an open: flush leaves the old object alone (dd, shell
  redirections); fsync, or the release of the last writable handle, publishes it.  After the
  release of the last handle the store holds the file's content.
* Old-or-new: the store holds the last published content, or (where the model allows it) a
  newer complete content; never a partial, empty or truncated version that was not published.
* unlink removes the name while open handles keep their data; rename moves the content;
  O_APPEND writes go at the end.
* Local store: writes go straight into the backing file, so the store always equals the content.

A third machine runs the same rules on Swift through the fault proxy (tests/faultproxy.py) with
a rule injecting one-shot faults; a failed operation leaves that file "old or new".

A fourth machine runs them on Swift in write-back mode (``Options(writeback=True)``), its
background uploads running in the test's nursery while the steps go on; extra rules hold the
uploads (the transfers semaphore), let them go, slow Swift's requests down through the proxy
(delays only, no faults), close a file and at once rename onto it, and *settle* (wait, bounded,
until ``vfs.write_back.files`` is empty).  Its contract: through the mount, as above; a close
leaves the store old-or-new (not narrowed) and *owes* the content: after a settle with no change
in between the store holds exactly each owed file's content (an unlinked name: nothing); fsync
publishes at once; the store never holds a content the model does not allow.

The hypothesis engine runs in a worker thread; every vfs call is sent to the test's trio loop
with ``trio.from_thread.run`` (a call that does not return within HANG_SECONDS fails).  Each
example gets a fresh Vfs and a fresh directory of the store.  Environment:
``GOBLINFS_HYPOTHESIS_EXAMPLES=N`` examples per machine, ``GOBLINFS_HYPOTHESIS_STEPS=N`` steps
per example, ``GOBLINFS_HYPOTHESIS_SHRINK=1`` to shrink a failure (off by default: shrinking a
Swift sequence takes minutes).  By default the examples are derandomized (the same ones every
run, so the suite's verdict does not depend on the day's luck); ``GOBLINFS_HYPOTHESIS_RANDOM=1``
searches new random examples instead, keeps failures in an example database outside the tree
and replays them first.  Each machine prints (``-s`` or ``-rP``) and records (junit properties) how many
examples and steps ran, in how long, and which rules.  The minimal sequences found so far are
kept at the end as plain regression tests.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from goblinfs.storage import StorageUnavailable
from goblinfs.storage.filestorage import BasicFileStorage
from goblinfs.vfs import ROOT_INO, Options, StoreMount, Vfs
from goblinfs.workbench import ReadCache

from .conftest import drop_container, make_cloud_storage

T = TypeVar("T")

NAMES = ("a.txt", "b.txt", "c.txt")
SEGMENT_SIZE = 65536
#: A vfs call taking longer than this is a hang (store calls give up after op_timeout, 20 s here).
HANG_SECONDS = 45.0
#: Write-back: the longest a settle step waits for the background uploads to finish.
SETTLE_SECONDS = 30.0
#: Write-back: background uploads at once (Options.transfers).
TRANSFERS = 2
OP_TIMEOUT = 20.0
#: Bytes written are slices of this (distinct enough that a shifted or stale slice shows).
PATTERN = random.Random(20261201).randbytes(1 << 18)

TRUNC_ONLY = "only"  # the only change since the last publication is an open's O_TRUNC
TRUNC_MAYBE = "maybe"  # an O_TRUNC on top of unpublished changes: flush may or may not publish


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _settings(default_examples: int, default_steps: int) -> settings:
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    if os.environ.get("GOBLINFS_HYPOTHESIS_SHRINK", "") not in ("", "0"):
        phases.append(Phase.shrink)
    explore = os.environ.get("GOBLINFS_HYPOTHESIS_RANDOM", "") not in ("", "0")
    return settings(
        max_examples=_env_int("GOBLINFS_HYPOTHESIS_EXAMPLES", default_examples),
        stateful_step_count=_env_int("GOBLINFS_HYPOTHESIS_STEPS", default_steps),
        deadline=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        derandomize=not explore,
        # Outside the working tree: failures found by a random search are replayed first next time.
        database=DirectoryBasedExampleDatabase(os.path.join(tempfile.gettempdir(), "goblinfs-hypothesis"))
        if explore else None,
        print_blob=True,
    )


def data_of(length: int, seed: int) -> bytes:
    start = (seed * 9973) % (len(PATTERN) - length)
    return PATTERN[start:start + length]


def _dedupe(values: list[T]) -> list[T]:
    out: list[T] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _write_into(content: bytes, offset: int, data: bytes) -> bytes:
    if offset > len(content):
        content = content + b"\0" * (offset - len(content))
    return content[:offset] + data + content[offset + len(data):]


def _resize(content: bytes, size: int) -> bytes:
    return content[:size] + b"\0" * max(0, size - len(content))


def _short(value: bytes | None) -> str:
    if value is None:
        return "absent"
    if len(value) > 24:
        return f"{len(value)}B:{value[:12].hex()}..{value[-6:].hex()}"
    return f"{len(value)}B:{value.hex()}"


# ---------------------------------------------------------------------------------------- the model


@dataclass
class MFile:
    """A file (an inode) of the model; name None once unlinked or replaced."""

    fid: int
    #: What the mount may show (one candidate without faults or races).
    contents: list[bytes]
    name: str | None
    #: Changed since its last (mandatory) publication.
    dirty: bool = False
    #: TRUNC_ONLY / TRUNC_MAYBE while an open's O_TRUNC is the pending change, else None.
    trunc: str | None = None
    #: An operation on it failed since its last publication (faults): the vfs keeps the data
    #: staged for a retry at the next flush/fsync of a writer or at unmount.
    failed: bool = False
    #: Write-back: a close acknowledged the current content and nothing changed it since: once
    #: the background uploads have settled the store must hold exactly this content.
    owed: bool = False
    #: Write-back: contents a background upload may still put into the store (queued by a
    #: close and not overtaken by a write, a publication or a settle).
    pending: list[bytes] = field(default_factory=list)


@dataclass
class MHandle:
    """An open file description: the vfs's fh and the inode it was opened on."""

    hid: int
    fid: int
    readable: bool
    writable: bool
    append: bool
    fh: int = 0
    ino: int = 0

    def __repr__(self) -> str:
        mode = ("r" if self.readable else "") + ("w" if self.writable else "") + ("a" if self.append else "")
        return f"h{self.hid}({mode})"


@dataclass
class Model:
    """The contract, as state: mount contents, what the store may hold, who is open."""

    local: bool
    files: dict[int, MFile] = field(default_factory=dict)
    names: dict[str, int] = field(default_factory=dict)
    #: Swift: the contents each name may hold in the store (None: no object).
    store: dict[str, list[bytes | None]] = field(default_factory=lambda: {n: [None] for n in NAMES})
    handles: dict[int, MHandle] = field(default_factory=dict)
    #: Names whose store content must equal the mount content now (a mandatory publication).
    narrow: set[str] = field(default_factory=set)
    #: Faults may be pending: release swallows a failed upload, so it publishes nothing for sure.
    faults: bool = False
    #: Write-back mode: a close queues the content (durable in the workbench), a background
    #: task uploads it later; fsync still publishes at once.
    writeback: bool = False
    next_fid: int = 0
    next_hid: int = 0

    def clone(self) -> Model:
        return copy.deepcopy(self)

    # -- queries

    def file(self, name: str) -> MFile | None:
        fid = self.names.get(name)
        return self.files[fid] if fid is not None else None

    def writers(self, f: MFile) -> int:
        return sum(1 for h in self.handles.values() if h.fid == f.fid and h.writable)

    def opened(self, f: MFile) -> int:
        return sum(1 for h in self.handles.values() if h.fid == f.fid)

    # -- publication

    def publish(self, f: MFile, mandatory: bool) -> None:
        if self.local:
            return
        if mandatory:
            f.dirty = False
            f.trunc = None
            f.failed = False
            # Published now: nothing is left for a background upload (it finds the file clean).
            f.owed = False
            f.pending = []
        if f.name is None:
            return
        if mandatory:
            self.store[f.name] = list(_dedupe(list(f.contents)))
            self.narrow.add(f.name)
        else:
            self.store[f.name] = _dedupe(self.store[f.name] + list(f.contents))

    def close_publish(self, f: MFile, mandatory: bool) -> None:
        """What a close (flush, last release, truncate with no writer) does: durable mode
        publishes; write-back queues (mandatory: the content is owed)."""
        if self.writeback and not self.local:
            self.queue(f, owed=mandatory)
        else:
            self.publish(f, mandatory)

    def queue(self, f: MFile, owed: bool) -> None:
        """Write-back: the content is acknowledged and may reach the store at any moment from
        now on (old or new, not narrowed); owed: it must be there once uploads settle."""
        if owed:
            f.dirty = False
            f.trunc = None
            f.failed = False
            f.owed = True
        if f.name is None:
            return
        f.pending = _dedupe(f.pending + list(f.contents))
        self.store[f.name] = _dedupe(self.store[f.name] + list(f.contents))

    def settled(self) -> None:
        """Write-back: no background upload is left: every owed file is stored as it is now."""
        for f in self.files.values():
            if f.owed:
                self.publish(f, mandatory=True)
            f.pending = []

    def changed(self, f: MFile) -> None:
        f.dirty = True
        f.trunc = None
        # Whatever was queued is overtaken: the upload task (which takes the file's lock, as
        # every write does) either ran before this change or finds the file dirty and stops.
        f.owed = False
        f.pending = []
        if f.name is not None:
            self.narrow.discard(f.name)

    # -- operations (called once the vfs call succeeded)

    def new_handle(self, fid: int, readable: bool, writable: bool, append: bool) -> MHandle:
        handle = MHandle(self.next_hid, fid, readable, writable, append)
        self.next_hid += 1
        self.handles[handle.hid] = handle
        return handle

    def create(self, name: str, readable: bool, append: bool) -> MHandle:
        f = MFile(self.next_fid, [b""], name, dirty=True)
        self.next_fid += 1
        self.files[f.fid] = f
        self.names[name] = f.fid
        self.narrow.discard(name)
        return self.new_handle(f.fid, readable, True, append)

    def open(self, name: str, readable: bool, writable: bool, append: bool, trunc: bool) -> MHandle:
        f = self.file(name)
        assert f is not None
        if trunc:
            was_clean = not f.dirty or f.trunc == TRUNC_ONLY
            self.changed(f)
            f.contents = [b""]
            f.trunc = TRUNC_ONLY if was_clean else TRUNC_MAYBE
        return self.new_handle(f.fid, readable, writable, append)

    def write(self, h: MHandle, offset: int, data: bytes) -> None:
        f = self.files[h.fid]
        f.contents = _dedupe([_write_into(c, len(c) if h.append else offset, data) for c in f.contents])
        self.changed(f)

    def read(self, h: MHandle, offset: int, size: int) -> list[bytes]:
        return _dedupe([c[offset:offset + size] for c in self.files[h.fid].contents])

    def saw(self, f: MFile, keep: Callable[[bytes], bool]) -> bool:
        """Keep the candidates consistent with an observation; False if none is."""
        kept = [c for c in f.contents if keep(c)]
        if not kept:
            return False
        f.contents = kept
        return True

    def truncate(self, f: MFile, size: int) -> None:
        pending = f.dirty
        f.contents = _dedupe([_resize(c, size) for c in f.contents])
        self.changed(f)
        if self.writers(f) == 0:
            # truncate(2) of a file nobody writes is a complete operation: durable now if
            # nothing is open, at the latest at the last release otherwise.  (Only with faults
            # can a closed file still be dirty: its upload failed at release and waits for a
            # retry; the truncation joins it.)
            self.close_publish(f, mandatory=self.opened(f) == 0 and not pending)

    def flush(self, h: MHandle) -> None:
        f = self.files[h.fid]
        if not f.dirty:
            return
        if h.writable and f.trunc is None:
            self.close_publish(f, mandatory=True)
        elif f.trunc != TRUNC_ONLY:
            self.close_publish(f, mandatory=False)

    def fsync(self, h: MHandle) -> None:
        f = self.files[h.fid]
        if f.dirty or f.owed:
            # Write-back too: fsync publishes a queued file at once.
            self.publish(f, mandatory=h.writable)

    def release(self, h: MHandle) -> None:
        del self.handles[h.hid]
        f = self.files[h.fid]
        last = self.opened(f) == 0 or (h.writable and self.writers(f) == 0)
        if f.dirty:
            if last:
                # A reader's release is no retry point for an upload that failed earlier.
                self.close_publish(f, mandatory=not self.faults and (h.writable or not f.failed))
            elif f.trunc != TRUNC_ONLY:
                self.close_publish(f, mandatory=False)
        self._maybe_drop(f)

    def _maybe_drop(self, f: MFile) -> None:
        if f.name is None and self.opened(f) == 0:
            del self.files[f.fid]

    def unlink(self, name: str) -> None:
        f = self.file(name)
        assert f is not None
        del self.names[name]
        f.name = None
        self.store[name] = [None]
        self.narrow.discard(name)
        self._maybe_drop(f)

    def rename(self, src: str, dst: str) -> None:
        if src == dst:
            return
        f = self.file(src)
        assert f is not None
        old = self.file(dst)
        if old is not None:
            old.name = None
            self._maybe_drop(old)
        del self.names[src]
        self.names[dst] = f.fid
        f.name = dst
        moved = self.store[src] + (list(f.contents) if f.dirty else [])
        if self.writeback and f.pending and all(c is None or c in f.pending for c in self.store[src]):
            # Write-back moves a queued file that was never stored in the mount only (rsync's
            # temporary name): the object at dst stays until the upload replaces it (old-or-new).
            moved = self.store[dst] + moved
        self.store[dst] = _dedupe(moved)
        self.store[src] = [None]
        if src in self.narrow:
            self.narrow.add(dst)
        else:
            self.narrow.discard(dst)
        self.narrow.discard(src)

    def failed(self, f: MFile | None, before: list[bytes], stream: bool) -> None:
        """An operation on f failed (faults): the mount shows the content before or after it,
        or -- a failed streaming upload loses its bytes -- what the store holds; the store may
        hold any of them."""
        if f is None:
            return
        options = list(before) + list(f.contents)
        if stream and f.name is not None:
            options += [c or b"" for c in self.store[f.name]]
        f.contents = _dedupe(options)
        f.dirty = True
        f.failed = True
        if f.name is not None:
            self.store[f.name] = _dedupe(self.store[f.name] + list(f.contents))
            self.narrow.discard(f.name)

    @staticmethod
    def merge(states: list[Model]) -> Model:
        """One model allowing what any of the given serialisations allows."""
        merged = states[0].clone()
        for other in states[1:]:
            for fid, f in merged.files.items():
                g = other.files.get(fid)
                if g is None:
                    continue
                f.contents = _dedupe(f.contents + g.contents)
                f.dirty = f.dirty or g.dirty
                f.owed = f.owed and g.owed
                f.pending = _dedupe(f.pending + g.pending)
                if f.trunc != g.trunc:
                    f.trunc = TRUNC_MAYBE
            for name in NAMES:
                merged.store[name] = _dedupe(merged.store[name] + other.store[name])
            merged.narrow &= other.narrow
        return merged


# ---------------------------------------------------------------------------------------- the runner


@dataclass
class Context:
    """What a machine needs: the store, how to read it directly, the trio loop to call into."""

    kind: str
    storage: Any
    #: Reads the store behind the vfs's back (Swift: not through any fault proxy).
    direct: Any
    workdir: Path
    token: trio.lowlevel.TrioToken | None = None
    nursery: trio.Nursery | None = None
    cache: ReadCache | None = None
    proxy: Any = None
    #: The Vfs runs in write-back mode (Options.writeback; its uploads run in ``nursery``).
    writeback: bool = False
    #: Write-back: a FaultProxy in front of Swift used only to slow requests down (no faults).
    slow_proxy: Any = None
    #: Write-back: settle steps, and how many files the longest one waited for.
    settles: int = 0
    settle_waited_max: int = 0
    #: Write-back: store reads cut by a background replacement and read again.
    store_retries: int = 0
    examples: int = 0
    steps: int = 0
    failures_injected: int = 0
    errors_seen: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    #: Seconds spent in vfs calls and in reading the store directly.
    vfs_time: float = 0.0
    store_time: float = 0.0


class OpFailed(Exception):
    """A vfs call failed while faults were allowed."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(str(exc))
        self.exc = exc


OFFSET_KINDS = ("start", "inside", "end", "past")
SIZE_KINDS = ("zero", "shrink", "grow", "big")
lengths = st.one_of(st.integers(1, 300), st.integers(1, 300), st.integers(20000, 70000))


def _offset(kind: str, pos: int, length: int) -> int:
    if kind == "start":
        return 0
    if kind == "inside":
        return pos % (length + 1)
    if kind == "end":
        return length
    return length + 1 + pos % 3000


def _size(kind: str, pos: int, length: int) -> int:
    if kind == "zero":
        return 0
    if kind == "shrink":
        return pos % (length + 1)
    if kind == "grow":
        return length + 1 + pos % 3000
    return SEGMENT_SIZE + pos % 70000


class VfsMachine(RuleBasedStateMachine):
    """One Vfs per example, its files in a fresh directory of the store."""

    ctx: Context  # set by the factory

    def __init__(self) -> None:
        super().__init__()
        ctx = self.ctx
        ctx.examples += 1
        self.model = Model(local=ctx.kind == "local")
        self.model.faults = ctx.proxy is not None
        self.model.writeback = ctx.writeback
        #: Write-back: the test holds every place of the uploads' semaphore (none can start).
        self.holding = False
        self.broken = False
        self.lookups: dict[int, int] = {}
        #: Names the model no longer follows (after a failed, half-done Swift rename).
        self.unknown: set[str] = set()
        #: A fault was injected in this example (then files may keep their old content at the end).
        self.faults_seen = False
        #: Names a step may have changed in the store (checked after it; all of them every few steps).
        self.touched: set[str] = set(NAMES)
        self.dirname = f"m{uuid.uuid4().hex[:10]}"
        options = Options(staging_dir=str(ctx.workdir / "staging"), workbench_dir=str(ctx.workdir),
                          op_timeout=OP_TIMEOUT, writeback=ctx.writeback, transfers=TRANSFERS)
        os.makedirs(options.staging_dir, exist_ok=True)
        self.vfs = Vfs([StoreMount("public", ctx.storage, options)], options, cache=ctx.cache)
        # The test's nursery: write-back's uploads run there, concurrently with the steps.
        self.vfs.nursery = ctx.nursery
        self.dir_ino = self.call(self._setup_dir)

    # -- plumbing

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a vfs call on the trio loop; one that does not return within HANG_SECONDS fails."""
        started = time.monotonic()

        async def bounded() -> T:
            with trio.move_on_after(HANG_SECONDS):
                return await fn(*args)
            raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} did not return within {HANG_SECONDS} s "
                                 f"(op_timeout is {OP_TIMEOUT} s): it waits for something that never comes")

        try:
            return trio.from_thread.run(bounded, trio_token=self.ctx.token)
        finally:
            self.ctx.vfs_time += time.monotonic() - started

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.ctx.token)

    async def _setup_dir(self) -> int:
        public = await self.vfs.lookup(ROOT_INO, b"public")
        node = await self.vfs.mkdir(public.ino, self.dirname.encode())
        return node.ino

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A rule's body: if it fails, the model is out of step (teardown checks nothing more)."""
        self.ctx.steps += 1
        self.ctx.rules[sys._getframe(2).f_code.co_name.replace("close_handle", "close")] += 1
        self.broken = True
        yield
        self.broken = False

    def attempt(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a vfs call; an error is a test failure, unless faults may be pending: then an
        OSError or StorageUnavailable (the adapter's EIO) is an operation that failed (OpFailed)."""
        try:
            return self.call(fn, *args)
        except (OSError, StorageUnavailable) as exc:
            if self.model.faults:
                self.ctx.errors_seen += 1
                self.ctx.errors[type(exc).__name__ + (f"/{errno.errorcode.get(exc.errno, exc.errno)}"
                                                      if isinstance(exc, OSError) else "")] += 1
                raise OpFailed(exc) from exc
            raise

    def expect_error(self, code: int, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """The call must fail with errno code (or, while faults may be pending, EIO)."""
        with pytest.raises((OSError, StorageUnavailable) if self.model.faults else OSError) as exc:
            self.call(fn, *args)
        if isinstance(exc.value, StorageUnavailable):
            return
        allowed = {code, errno.EIO} if self.model.faults else {code}
        assert exc.value.errno in allowed, f"expected {errno.errorcode[code]}, got {exc.value!r}"

    def lose(self, *names: str) -> None:
        for name in names:
            self.unknown.add(name)
            f = self.model.file(name)
            if f is not None:
                del self.model.names[name]
                f.name = None
            self.model.narrow.discard(name)

    def path(self, name: str) -> list[str]:
        return [self.dirname, name]

    def read_store(self, name: str) -> bytes | None:
        started = time.monotonic()
        try:
            if self.ctx.writeback:
                try:
                    return self.ctx.direct.read(self.path(name))
                except Exception as exc:  # noqa: BLE001 -- any failure of the GET itself
                    # A background upload replacing a large object deletes the old segments:
                    # a GET of the old manifest running across that is cut (Swift's behaviour,
                    # not a content).  One more GET reads whatever the store holds now.
                    self.ctx.store_retries += 1
                    note(f"  store read of {name} failed ({exc!r}), read again")
                    time.sleep(0.05)
            return self.ctx.direct.read(self.path(name))
        finally:
            self.ctx.store_time += time.monotonic() - started

    async def _lookup(self, name: str) -> int:
        node = await self.vfs.lookup(self.dir_ino, name.encode())
        self.lookups[node.ino] = self.lookups.get(node.ino, 0) + 1
        return node.ino

    async def _open(self, name: str, flags: int) -> tuple[int, int]:
        ino = await self._lookup(name)
        handle = await self.vfs.open(ino, flags)
        return handle.fh, ino

    async def _create(self, name: str, flags: int) -> tuple[int, int]:
        handle, node = await self.vfs.create(self.dir_ino, name.encode(), flags)
        self.lookups[node.ino] = self.lookups.get(node.ino, 0) + 1
        return handle.fh, node.ino

    async def _read(self, fh: int, offset: int, size: int) -> bytes:
        return bytes(await self.vfs.read(fh, offset, size))

    async def _close(self, fh: int) -> None:
        try:
            await self.vfs.flush(fh)
        finally:
            await self.vfs.release(fh)

    async def _truncate_path(self, name: str, size: int) -> None:
        ino = await self._lookup(name)
        await self.vfs.setattr(ino, size=size)

    # -- choosing handles and names (no assume(): a rejected step would reject the whole example)

    def pick(self, which: int, want: Callable[[MHandle], bool] = lambda h: True) -> MHandle | None:
        """The which-th live handle that fits (None if none does: the step does nothing)."""
        fitting = [h for h in self.model.handles.values() if want(h)]
        if not fitting:
            return None
        h = fitting[which % len(fitting)]
        f = self.model.files[h.fid]
        note(f"  -> {h} on {f.name or '(unlinked)'}")
        return h

    def touch(self, *names: str | None) -> None:
        self.touched.update(n for n in names if n is not None)

    # Preconditions steer the choice of rules towards ones that can do something.  With faults
    # the state depends on which requests failed, and hypothesis insists that the same choices
    # lead to the same draws: there every rule stays available (and may do nothing).

    def has_handles(self) -> bool:
        return self.model.faults or bool(self.model.handles)

    def has_writable(self) -> bool:
        return self.model.faults or any(h.writable for h in self.model.handles.values())

    def has_readable(self) -> bool:
        return self.model.faults or any(h.readable for h in self.model.handles.values())

    def has_names(self) -> bool:
        return self.model.faults or bool(self.model.names)

    # -- rules

    @precondition(has_names)
    @rule(op=st.sampled_from(["truncate", "unlink", "rename", "forget"]), name=st.sampled_from(NAMES),
          other=st.sampled_from(NAMES), kind=st.sampled_from(SIZE_KINDS), pos=st.integers(0, 1 << 20))
    def by_name(self, op: str, name: str, other: str, kind: str, pos: int) -> None:
        """What is done to a name: truncate(name), unlink(name), rename(name, other), forget."""
        if op == "truncate":
            self.truncate(name, kind, pos)
        elif op == "unlink":
            self.unlink(name)
        elif op == "rename":
            self.rename(name, other)
        else:
            self.forget(name)

    def create(self, name: str, rdwr: bool, append: bool, excl: bool) -> None:
        """creat(2) / open(O_CREAT) of a name the kernel thinks is absent."""
        if name in self.unknown:
            return
        with self.step():
            self.touch(name)
            flags = (os.O_RDWR if rdwr else os.O_WRONLY) | os.O_CREAT | (os.O_APPEND if append else 0)
            if self.model.file(name) is not None:
                # The kernel sends create only for a name it thinks absent; with O_EXCL it must fail.
                self.expect_error(errno.EEXIST, self._create, name, flags | os.O_EXCL)
                return
            try:
                fh, ino = self.attempt(self._create, name, flags | (os.O_EXCL if excl else 0))
            except OpFailed:
                return
            h = self.model.create(name, rdwr, append)
            h.fh, h.ino = fh, ino
            note(f"  -> {h}")

    @rule(name=st.sampled_from(NAMES), access=st.sampled_from(["r", "w", "rw"]), trunc=st.booleans(),
          append=st.booleans(), creat=st.booleans(), excl=st.booleans())
    def open(self, name: str, access: str, trunc: bool, append: bool, creat: bool, excl: bool) -> None:
        """open(2).  Writable on a missing name (or O_CREAT|O_EXCL): a create, what the kernel
        sends for O_CREAT then; read-only on a missing name: ENOENT."""
        if name in self.unknown:
            return
        if access != "r" and (self.model.file(name) is None or creat and excl):
            self.create(name, access == "rw", append, excl)
            return
        with self.step():
            self.touch(name)
            readable, writable = "r" in access, "w" in access
            trunc = trunc and writable
            flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[access]
            flags |= (os.O_TRUNC if trunc else 0) | (os.O_APPEND if append else 0)
            f = self.model.file(name)
            if f is None:
                self.expect_error(errno.ENOENT, self._open, name, flags)
                return
            before = list(f.contents)
            try:
                fh, ino = self.attempt(self._open, name, flags)
            except OpFailed:
                self.model.failed(f, before, stream=writable)
                return
            h = self.model.open(name, readable, writable, append, trunc)
            h.fh, h.ino = fh, ino
            note(f"  -> {h}")

    @precondition(has_writable)
    @rule(which=st.integers(0, 255), at=st.tuples(st.sampled_from(OFFSET_KINDS), st.integers(0, 1 << 20),
                                                   lengths, st.integers(0, 255)))
    def write(self, which: int, at: tuple[str, int, int, int]) -> None:
        """pwrite (at: where, pos, length, data seed); O_APPEND handles write at the end."""
        where, pos, length, seed = at
        h = self.pick(which, lambda h: h.writable)
        if h is None:
            return
        with self.step():
            f = self.model.files[h.fid]
            self.touch(f.name)
            offset = _offset(where, pos, len(f.contents[0]))
            data = data_of(length, seed)
            before = list(f.contents)
            try:
                written = self.attempt(self.vfs.write, h.fh, offset, data)
            except OpFailed:
                self.model.failed(f, before, stream=True)
                return
            assert written == len(data)
            self.model.write(h, offset, data)

    @precondition(has_readable)
    @rule(which=st.integers(0, 255), at=st.tuples(st.sampled_from(OFFSET_KINDS), st.integers(0, 1 << 20),
                                                   st.one_of(st.integers(1, 4096), st.just(1 << 20))))
    def read(self, which: int, at: tuple[str, int, int]) -> None:
        """pread (at: where, pos, size): exactly the model's bytes, short only at the end."""
        where, pos, size = at
        h = self.pick(which, lambda h: h.readable)
        if h is None:
            return
        with self.step():
            f = self.model.files[h.fid]
            self.touch(f.name)
            offset = _offset(where, pos, len(f.contents[0]))
            before = list(f.contents)
            try:
                got = self.attempt(self._read, h.fh, offset, size)
            except OpFailed:
                self.model.failed(f, before, stream=True)
                return
            expected = self.model.read(h, offset, size)
            ok = self.model.saw(f, lambda c: c[offset:offset + size] == got)
            assert ok, (f"read({h}, {offset}, {size}) of file {f.name or '(unlinked)'} gave {_short(got)}; "
                        f"the model allows {[_short(e) for e in expected]}")

    @precondition(has_handles)
    @rule(which=st.integers(0, 255))
    def stat(self, which: int) -> None:
        h = self.pick(which)
        if h is None:
            return
        with self.step():
            f = self.model.files[h.fid]
            try:
                attr = self.attempt(self.vfs.getattr, h.ino)
            except OpFailed:
                return
            ok = self.model.saw(f, lambda c: len(c) == attr.size)
            assert ok, f"getattr via {h}: size {attr.size}, the model allows {sorted({len(c) for c in f.contents})}"

    @precondition(has_writable)
    @rule(which=st.integers(0, 255), to=st.tuples(st.sampled_from(SIZE_KINDS), st.integers(0, 1 << 20)))
    def ftruncate(self, which: int, to: tuple[str, int]) -> None:
        """setattr(size) with the handle (to: kind of size, pos)."""
        kind, pos = to
        h = self.pick(which, lambda h: h.writable)
        if h is None:
            return
        with self.step():
            f = self.model.files[h.fid]
            self.touch(f.name)
            size = _size(kind, pos, len(f.contents[0]))
            before = list(f.contents)
            try:
                self.attempt(functools.partial(self.vfs.setattr, h.ino, size=size, fh=h.fh))
            except OpFailed:
                self.model.truncate(f, size)
                self.model.failed(f, before, stream=True)
                return
            self.model.truncate(f, size)

    def truncate(self, name: str, kind: str, pos: int) -> None:
        """truncate(2) by name, with or without handles open."""
        if name in self.unknown:
            return
        with self.step():
            self.touch(name)
            f = self.model.file(name)
            if f is None:
                self.expect_error(errno.ENOENT, self._truncate_path, name, 0)
                return
            size = _size(kind, pos, len(f.contents[0]))
            before = list(f.contents)
            try:
                self.attempt(self._truncate_path, name, size)
            except OpFailed:
                self.model.truncate(f, size)
                self.model.failed(f, before, stream=True)
                return
            self.model.truncate(f, size)

    @precondition(has_handles)
    @rule(which=st.integers(0, 255))
    def flush(self, which: int) -> None:
        """close(2) of a dup'd descriptor: flush without release."""
        h = self.pick(which)
        if h is None:
            return
        with self.step():
            f = self.model.files[h.fid]
            self.touch(f.name)
            before = list(f.contents)
            try:
                self.attempt(self.vfs.flush, h.fh)
            except OpFailed:
                self.model.failed(f, before, stream=True)
                return
            self.model.flush(h)

    @precondition(has_handles)
    @rule(which=st.integers(0, 255), datasync=st.booleans())
    def fsync(self, which: int, datasync: bool) -> None:
        h = self.pick(which)
        if h is None:
            return
        with self.step():
            f = self.model.files[h.fid]
            self.touch(f.name)
            before = list(f.contents)
            try:
                self.attempt(self.vfs.fsync, h.fh, datasync)
            except OpFailed:
                self.model.failed(f, before, stream=True)
                return
            self.model.fsync(h)

    @precondition(has_handles)
    @rule(which=st.integers(0, 255))
    def close(self, which: int) -> None:
        """close(2) of the last descriptor: flush, then release."""
        h = self.pick(which)
        if h is not None:
            self.close_handle(h)

    def close_handle(self, h: MHandle) -> None:
        with self.step():
            f = self.model.files[h.fid]
            self.touch(f.name)
            before = list(f.contents)
            try:
                self.attempt(self.vfs.flush, h.fh)
            except OpFailed:
                self.model.failed(f, before, stream=True)
            else:
                self.model.flush(h)
            self.release_handle(h)

    def release_handle(self, h: MHandle) -> None:
        """release: the handle is gone whatever happens (a failed upload is only logged)."""
        f = self.model.files[h.fid]
        before = list(f.contents)
        uploads = f.dirty
        try:
            self.attempt(self.vfs.release, h.fh)
        except OpFailed:
            self.model.release(h)
            self.model.failed(f, before, stream=True)
            return
        self.model.release(h)
        if self.model.faults and uploads and f.fid in self.model.files:
            # An upload at release that failed is only logged; a failed stream loses its bytes.
            self.model.failed(f, before, stream=True)

    @precondition(has_handles)
    @rule(which=st.integers(0, 255))
    def release(self, which: int) -> None:
        """A release without a flush just before (the flush came with an earlier close, e.g. mmap)."""
        h = self.pick(which)
        if h is None:
            return
        with self.step():
            self.touch(self.model.files[h.fid].name)
            self.release_handle(h)

    def unlink(self, name: str) -> None:
        if name in self.unknown:
            return
        with self.step():
            self.touch(name)
            f = self.model.file(name)
            if f is None:
                self.expect_error(errno.ENOENT, self.vfs.unlink, self.dir_ino, name.encode())
                return
            try:
                self.attempt(self.vfs.unlink, self.dir_ino, name.encode())
            except OpFailed:
                self.model.failed(f, list(f.contents), stream=False)
                self.model.store[name] = _dedupe(self.model.store[name] + [None])
                return
            self.model.unlink(name)
            self.expect_error(errno.ENOENT, self._lookup, name)

    def rename(self, src: str, dst: str) -> None:
        if src in self.unknown or dst in self.unknown:
            return
        with self.step():
            self.touch(src, dst)
            f = self.model.file(src)
            if f is None:
                self.expect_error(errno.ENOENT, self.vfs.rename, self.dir_ino, src.encode(), self.dir_ino,
                                  dst.encode())
                return
            try:
                self.attempt(self.vfs.rename, self.dir_ino, src.encode(), self.dir_ino, dst.encode())
            except OpFailed:
                # Swift renames are a copy and a delete, not atomic: either name may now hold
                # the object, and the mount may show either.  The model stops following both
                # names; the open handles of the files keep being checked.
                self.model.failed(f, list(f.contents), stream=False)
                self.lose(src, dst)
                return
            self.model.rename(src, dst)

    def forget(self, name: str) -> None:
        """The kernel drops its references to a closed file's inode."""
        f = self.model.file(name)
        if name in self.unknown or f is None or self.model.opened(f):
            return
        with self.step():
            try:
                ino = self.attempt(self._lookup, name)
            except OpFailed:
                return
            count = self.lookups.pop(ino, 0)
            self.call_sync(self.vfs.forget, [(ino, count)])

    # -- concurrency: two operations on two handles at once must equal one of their orders

    @precondition(lambda self: self.ctx.proxy is None and len(self.model.handles) >= 2)
    @rule(a=st.integers(0, 255), b=st.integers(0, 255),
          op_a=st.sampled_from(["read", "write", "flush", "fsync", "close", "ftruncate"]),
          op_b=st.sampled_from(["read", "write", "flush", "fsync", "close", "ftruncate"]),
          pos=st.integers(0, 1 << 20), length=lengths, seed=st.integers(0, 255))
    def concurrently(self, a: int, b: int, op_a: str, op_b: str, pos: int, length: int, seed: int) -> None:
        """Two operations on two handles at once: the outcome must be one of their two orders."""
        def able(op: str) -> Callable[[MHandle], bool]:
            if op == "read":
                return lambda h: h.readable
            if op in ("write", "ftruncate"):
                return lambda h: h.writable
            return lambda h: True
        ha = self.pick(a, able(op_a))
        hb = self.pick(b, lambda h: able(op_b)(h) and h is not ha)
        if ha is None or hb is None:
            return
        with self.step():
            self.touch(self.model.files[ha.fid].name, self.model.files[hb.fid].name)
            plan = [self._plan(ha, op_a, pos, length, seed),
                    self._plan(hb, op_b, pos // 2, length // 2 + 1, seed + 1)]
            self.run_both(plan, f"{op_a}({ha}) with {op_b}({hb})")

    def run_both(self, plan: list[tuple[Callable[[], Awaitable[Any]], Callable[[Model, Any], bool]]],
                 what: str) -> None:
        """Start both calls at once; the results and the model must match one of the two orders."""
        async def both() -> list[Any]:
            results: list[Any] = [None, None]

            async def one(i: int) -> None:
                results[i] = await plan[i][0]()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, 0)
                nursery.start_soon(one, 1)
            return results

        got = self.call(both)
        states = []
        for order in ((0, 1), (1, 0)):
            model = self.model.clone()
            ok = True
            for i in order:
                ok = plan[i][1](model, got[i]) and ok
            if ok:
                states.append(model)
        shown = [_short(g) if isinstance(g, bytes) else g for g in got]
        assert states, f"{what} at once gave {shown}: matches neither order"
        self.model = Model.merge(states)

    @precondition(lambda self: self.ctx.proxy is None and bool(self.model.handles) and bool(self.model.names))
    @rule(a=st.integers(0, 255), op_a=st.sampled_from(["read", "write", "flush", "fsync", "close", "ftruncate"]),
          op_name=st.sampled_from(["unlink", "rename", "truncate", "open_trunc"]), name=st.sampled_from(NAMES),
          other=st.sampled_from(NAMES), pos=st.integers(0, 1 << 20), length=lengths, seed=st.integers(0, 255))
    def concurrently_with_name(self, a: int, op_a: str, op_name: str, name: str, other: str, pos: int,
                               length: int, seed: int) -> None:
        """An operation on a handle while a name is unlinked, renamed, truncated or opened with
        O_TRUNC: the outcome must be one of their two orders."""
        able = {"read": lambda h: h.readable, "write": lambda h: h.writable,
                "ftruncate": lambda h: h.writable}.get(op_a, lambda h: True)
        ha = self.pick(a, able)
        f = self.model.file(name)
        if ha is None or f is None or (op_name == "rename" and other == name):
            return
        with self.step():
            self.touch(name, other, self.model.files[ha.fid].name)
            size = _size("shrink" if pos % 2 else "grow", pos // 3, len(f.contents[0]))
            vfs = self.vfs

            def apply(m: Model, got: Any) -> bool:
                if op_name == "unlink":
                    m.unlink(name)
                elif op_name == "rename":
                    m.rename(name, other)
                elif op_name == "truncate":
                    target = m.file(name)
                    assert target is not None
                    m.truncate(target, size)
                else:
                    h = m.open(name, False, True, False, True)
                    h.fh, h.ino = got
                return True

            call: Callable[[], Awaitable[Any]]
            if op_name == "unlink":
                call = functools.partial(vfs.unlink, self.dir_ino, name.encode())
            elif op_name == "rename":
                call = functools.partial(vfs.rename, self.dir_ino, name.encode(), self.dir_ino, other.encode())
            elif op_name == "truncate":
                call = functools.partial(self._truncate_path, name, size)
            else:
                call = functools.partial(self._open, name, os.O_WRONLY | os.O_TRUNC)
            self.run_both([self._plan(ha, op_a, pos, length, seed), (call, apply)],
                          f"{op_a}({ha}) with {op_name}({name})")

    def _plan(self, h: MHandle, op: str, pos: int, length: int,
              seed: int) -> tuple[Callable[[], Awaitable[Any]], Callable[[Model, Any], bool]]:
        """(the vfs call, how a model applies it and checks its result)."""
        vfs = self.vfs
        f = self.model.files[h.fid]
        if op == "read":
            offset = _offset("inside", pos, len(f.contents[0]))

            def check_read(m: Model, got: bytes) -> bool:
                return m.saw(m.files[h.fid], lambda c: c[offset:offset + 65536] == got)
            return functools.partial(self._read, h.fh, offset, 65536), check_read
        if op == "write":
            offset = _offset("inside", pos, len(f.contents[0]))
            data = data_of(length, seed)

            def apply_write(m: Model, got: int) -> bool:
                m.write(m.handles[h.hid], offset, data)
                return got == len(data)
            return functools.partial(vfs.write, h.fh, offset, data), apply_write
        if op == "ftruncate":
            size = _size("shrink" if pos % 2 else "grow", pos, len(f.contents[0]))

            def apply_truncate(m: Model, got: Any) -> bool:
                m.truncate(m.files[h.fid], size)
                return True
            return functools.partial(vfs.setattr, h.ino, size=size, fh=h.fh), apply_truncate

        def apply(m: Model, got: Any) -> bool:
            handle = m.handles[h.hid]
            if op == "flush":
                m.flush(handle)
            elif op == "fsync":
                m.fsync(handle)
            else:
                m.flush(handle)
                m.release(handle)
            return True
        if op == "flush":
            return functools.partial(vfs.flush, h.fh), apply
        if op == "fsync":
            return functools.partial(vfs.fsync, h.fh, False), apply
        return functools.partial(self._close, h.fh), apply

    # -- write-back

    def owes(self) -> bool:
        return self.holding or any(f.owed or f.pending for f in self.model.files.values())

    @precondition(lambda self: self.ctx.writeback)
    @rule(action=st.sampled_from(["settle", "settle", "hold", "let_go", "slow"]),
          method=st.sampled_from(["PUT", "PUT", "COPY", "DELETE", None]), times=st.integers(1, 3),
          delay=st.sampled_from([0.05, 0.2, 0.5]))
    def uploads(self, action: str, method: str | None, times: int, delay: float) -> None:
        """Write-back's background: settle, hold the uploads, let them go, slow Swift down."""
        if action == "settle":
            if self.owes():
                self.settle()
        elif action == "hold":
            if not self.holding:
                self.hold_uploads()
        elif action == "let_go":
            if self.holding:
                self.let_uploads_go()
        elif self.ctx.slow_proxy is not None:
            self.slow_swift(method, times, delay)

    @initialize(delay=st.sampled_from([0.0, 0.0, 0.05, 0.2]))
    def slow_every_put(self, delay: float) -> None:
        """Write-back: in some examples every PUT (of this example's directory) waits `delay` s
        before Swift sees it, so that background uploads stay in flight across steps."""
        if self.ctx.slow_proxy is not None and delay:
            self.slow_swift("PUT", None, delay)

    @precondition(lambda self: self.ctx.writeback and bool(self.model.handles))
    @rule(which=st.integers(0, 255), name=st.sampled_from(NAMES))
    def close_then_rename(self, which: int, name: str) -> None:
        """Write-back: close a file, then at once rename another name onto it (an editor's
        save, `mv tmp file` right after writing file): its upload may still be in flight."""
        h = self.pick(which, lambda h: h.writable)
        if h is None:
            return
        self.close_handle(h)
        target = self.model.files[h.fid].name if h.fid in self.model.files else None
        if target is not None and name != target and self.model.file(name) is not None:
            self.rename(name, target)

    def settle(self) -> None:
        """Wait (bounded) until write-back has no upload left: then every file a close
        acknowledged, and nothing changed since, is in the store exactly as the mount shows it
        (checked by the store invariant right after this step)."""
        with self.step():
            self.let_go()
            waited = self.call(self._settle)
            self.ctx.settles += 1
            self.ctx.settle_waited_max = max(self.ctx.settle_waited_max, waited)
            self.model.settled()
            self.touch(*NAMES)

    def hold_uploads(self) -> None:
        """Take every place of write-back's transfers semaphore (after the uploads in flight):
        queued files stay queued across the next steps (fsync, rename, reopen, unlink, writes
        meet them) until let_uploads_go or settle."""
        with self.step():
            self.call(self._hold)
            self.holding = True

    async def _hold(self) -> None:
        for _ in range(TRANSFERS):
            await self.vfs.write_back.transfers.acquire()

    def let_uploads_go(self) -> None:
        with self.step():
            self.let_go()

    def let_go(self) -> None:
        if self.holding:
            for _ in range(TRANSFERS):
                self.call_sync(self.vfs.write_back.transfers.release)
            self.holding = False

    def slow_swift(self, method: str | None, times: int | None, delay: float) -> None:
        """The next `times` requests (None: all) of this example's directory wait `delay` s
        before Swift sees them: an upload stays in flight across the next steps."""
        with self.step():
            self.ctx.slow_proxy.add_rule(method=method, path=re.escape(self.dirname), action="delay",
                                         delay=delay, times=times)

    async def _settle(self) -> int:
        """Until ``vfs.write_back.files`` is empty (at most SETTLE_SECONDS); how many files it
        held at the start."""
        files = self.vfs.write_back.files
        waiting = len(files)
        with trio.move_on_after(SETTLE_SECONDS):
            while files:
                await trio.sleep(0.01)
            return waiting
        left = ["/".join(rf.node.path) + f" ({rf.state.value})" for rf in files.values()]
        raise AssertionError(f"write-back still holds {left} after {SETTLE_SECONDS} s")

    # -- faults

    @precondition(lambda self: self.ctx.proxy is not None)
    @rule(method=st.sampled_from([None, "GET", "PUT", "HEAD", "DELETE", "COPY", "POST"]),
          action=st.sampled_from(["status", "drop", "reset", "truncate"]), times=st.integers(1, 3),
          status=st.sampled_from([500, 503]), after_bytes=st.sampled_from([0, 1, 100, 1000, 40000]))
    def inject_fault(self, method: str | None, action: str, times: int, status: int, after_bytes: int) -> None:
        """One-shot faults (for the next `times` matching requests) in front of Swift: an error
        status, a dropped or reset connection, a GET body cut short.  Only requests naming this
        example's directory (its objects, segments and listings) match, so a replayed example
        meets the same faults."""
        with self.step():
            if action == "truncate":
                method = "GET"
            path = re.escape(self.dirname)
            self.ctx.proxy.add_rule(method=method, path=path, action=action, status=status, times=times,
                                    after_bytes=after_bytes)
            self.ctx.failures_injected += 1
            self.faults_seen = True

    # -- the store, read directly

    @invariant()
    def store_holds_old_or_new(self) -> None:
        if self.broken:
            return
        self.broken = True  # a failure here must not be hidden by teardown's checks
        self._check_store()
        self.broken = False

    def _check_store(self, every: bool = False) -> None:
        model = self.model
        if every or self.ctx.steps % 5 == 0:
            self.touched.update(NAMES)
        names, self.touched = sorted(self.touched), set()
        for name in names:
            if name in self.unknown:
                continue
            got = self.read_store(name)
            f = model.file(name)
            if model.local:
                if f is None:
                    assert got is None, f"local store: {name} was removed, the store has {_short(got)}"
                else:
                    assert got is not None and model.saw(f, lambda c, got=got: c == got), (
                        f"local store: {name} holds {_short(got)}, the mount shows "
                        f"{[_short(c) for c in f.contents]}")
                continue
            allowed = model.store[name]
            assert got in allowed, (f"Swift: {name} holds {_short(got)}; the model allows "
                                    f"{[_short(c) for c in allowed]}")
            model.store[name] = [got]
            if self.ctx.proxy is not None and f is not None and f.dirty:
                # A failed upload keeps its data staged for a retry (a later flush, a rename,
                # the unmount): the store may still move on to it without a step saying so.
                model.store[name] = _dedupe([got, *f.contents])
            if f is not None and f.pending:
                # Write-back: a queued upload may land at any moment after this read.
                model.store[name] = _dedupe([got, *model.store[name], *f.pending])
            if name in model.narrow and f is not None:
                assert model.saw(f, lambda c, got=got: c == got), (
                    f"Swift: {name} was just published as {_short(got)} but the mount shows "
                    f"{[_short(c) for c in f.contents]}")
            model.narrow.discard(name)

    def teardown(self) -> None:
        """Clear the faults, close every handle, unmount (Vfs.shutdown uploads what is still
        pending): the store holds an allowed content for every name, nothing else."""
        try:
            if self.broken:  # a step failed: that failure is the report
                return
            if self.ctx.proxy is not None:
                self.ctx.proxy.clear()
                self.model.faults = False
            self.let_go()
            # Close everything: then the store holds every file's content.
            for h in list(self.model.handles.values()):
                self.close_handle(h)
            self._check_store(every=True)
            self.call(self.vfs.shutdown)
            for name in NAMES:
                if name in self.unknown:
                    continue
                got = self.read_store(name)
                f = self.model.file(name)
                allowed = self.model.store[name]
                if self.model.local:
                    allowed = [None] if f is None else list(f.contents)
                assert got in allowed, (f"after closing everything, {name} holds {_short(got)}; the model "
                                        f"allows {[_short(c) for c in allowed]}")
                if not self.faults_seen:
                    if f is None:
                        assert got is None, f"after closing everything, removed {name} holds {_short(got)}"
                    else:
                        assert got in f.contents, (f"after closing everything, {name} holds {_short(got)}; "
                                                   f"the mount shows {[_short(c) for c in f.contents]}")
            listed = self.ctx.direct.names(self.dirname)
            assert listed <= set(NAMES), f"unexpected objects left: {sorted(listed - set(NAMES))}"
        finally:
            for h in list(self.model.handles.values()):
                with contextlib.suppress(Exception):
                    self.call(self.vfs.release, h.fh)
            if self.ctx.proxy is not None:
                self.ctx.proxy.clear()
            if self.ctx.slow_proxy is not None:
                self.ctx.slow_proxy.clear()
            with contextlib.suppress(Exception):
                self.let_go()


def _machine(ctx: Context) -> type[VfsMachine]:
    class Machine(VfsMachine):
        pass

    Machine.ctx = ctx
    Machine.__name__ = f"VfsMachine_{ctx.kind}"
    return Machine


async def run_model(ctx: Context, config: settings, record: Callable[[str, object], None]) -> None:
    """Run the state machine in a worker thread, every vfs call on this trio loop."""
    ctx.token = trio.lowlevel.current_trio_token()
    machine = _machine(ctx)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        ctx.nursery = nursery
        try:
            await trio.to_thread.run_sync(functools.partial(run_state_machine_as_test, machine, settings=config))
        finally:
            elapsed = time.monotonic() - started
            record("examples", ctx.examples)
            record("steps", ctx.steps)
            record("seconds", round(elapsed, 1))
            label = ctx.kind + ("+writeback" if ctx.writeback else "")
            print(f"\n[{label}] {ctx.examples} examples, {ctx.steps} steps, {elapsed:.1f} s "
                  f"(vfs {ctx.vfs_time:.1f} s, store reads {ctx.store_time:.1f} s)"
                  + (f", {ctx.failures_injected} faults injected, {ctx.errors_seen} operations failed "
                     f"({dict(ctx.errors)})"
                     if ctx.proxy is not None else "")
                  + (f", {ctx.settles} settles (waited for at most {ctx.settle_waited_max} files), "
                     f"{ctx.store_retries} store reads cut and read again"
                     if ctx.writeback else "")
                  + "\n  steps by rule: " + ", ".join(f"{k} {v}" for k, v in ctx.rules.most_common()))
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------- tests


class LocalReader:
    """The local store's files, read with plain file calls."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, path: list[str]) -> bytes | None:
        try:
            return self.root.joinpath(*path).read_bytes()
        except FileNotFoundError:
            return None

    def names(self, directory: str) -> set[str]:
        return {p.name for p in (self.root / directory).iterdir()}


class SwiftReader:
    """A container's objects, read with swiftclient itself (no goblinfs code, no fault proxy)."""

    def __init__(self, swift_env: dict[str, Any], container: str) -> None:
        import swiftclient

        self.container = container
        self.conn = swiftclient.Connection(authurl=swift_env["auth_url"], user=swift_env["user"],
                                           key=swift_env["key"], retries=2)

    def read(self, path: list[str]) -> bytes | None:
        import swiftclient

        try:
            _headers, body = self.conn.get_object(self.container, "/".join(path))
        except swiftclient.ClientException as exc:
            if exc.http_status == 404:
                return None
            raise
        return bytes(body)

    def names(self, directory: str) -> set[str]:
        _headers, items = self.conn.get_container(self.container, prefix=directory + "/", full_listing=True)
        return {item["name"][len(directory) + 1:] for item in items} - {""}


def _local_context(tmp_path: Path) -> Context:
    (tmp_path / "store").mkdir()
    storage = BasicFileStorage(str(tmp_path / "store"))
    cache = ReadCache(str(tmp_path / "cache"), 1 << 30)
    return Context("local", storage, LocalReader(tmp_path / "store"), tmp_path, cache=cache)


def _swift_context(tmp_path: Path, swift_env: dict[str, Any], container: str, via: dict[str, Any] | None = None,
                   **kw: Any) -> Context:
    storage = make_cloud_storage(via or swift_env, container, segment_size=str(SEGMENT_SIZE),
                                 staging_dir=str(tmp_path), **kw)
    direct = SwiftReader(swift_env, container)
    return Context("swift", storage, direct, tmp_path, cache=ReadCache(str(tmp_path / "cache"), 1 << 30))


async def test_model_local(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    """The machine on a local directory: the store always equals the content."""
    await run_model(_local_context(tmp_path), _settings(100, 50), record_property)


async def test_model_swift(tmp_path: Path, swift_env: dict[str, Any],
                           record_property: Callable[[str, object], None]) -> None:
    """The machine on the real Swift, 64 KiB segments (SLOs, streamed appends)."""
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    try:
        await run_model(_swift_context(tmp_path, swift_env, container), _settings(50, 30), record_property)
    finally:
        drop_container(swift_env, container)


async def test_model_swift_with_faults(tmp_path: Path, swift_env: dict[str, Any], fault_swift: Any,
                                      record_property: Callable[[str, object], None]) -> None:
    """The same machine, the vfs talking to Swift through the fault proxy (one retry), with a
    rule injecting one-shot faults: an operation may fail (OSError), then the model allows old
    or new for that file; every read that succeeds must still match, and once the faults are
    cleared and everything is closed the store holds an allowed content, never a mix or a cut."""
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    ctx = _swift_context(tmp_path, swift_env, container, via=fault_swift.env, retries="1")
    ctx.proxy = fault_swift.proxy
    try:
        await run_model(ctx, _settings(35, 30), record_property)
    finally:
        fault_swift.proxy.clear()
        drop_container(swift_env, container)


async def test_model_swift_writeback(tmp_path: Path, swift_env: dict[str, Any], fault_swift: Any,
                                     record_property: Callable[[str, object], None]) -> None:
    """The machine on the real Swift in write-back mode (Options.writeback): its uploads run in
    the background, concurrently with the steps.  Through the mount nothing changes; a close
    leaves the store old-or-new, and once a settle step has waited for the uploads, the store
    holds exactly what every acknowledged (and since unchanged) file holds; fsync publishes at
    once; unlink leaves nothing; the store never holds a partial or mixed content."""
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    ctx = _swift_context(tmp_path, swift_env, container, via=fault_swift.env)
    ctx.writeback = True
    ctx.slow_proxy = fault_swift.proxy
    try:
        await run_model(ctx, _settings(25, 30), record_property)
    finally:
        fault_swift.proxy.clear()
        drop_container(swift_env, container)


# ---------------------------------------------------------------------------------------- regressions
# Minimal sequences found by the machines above, kept as plain tests.


class Direct:
    """A Vfs over one store (a fresh directory in it), and the store read behind its back."""

    def __init__(self, vfs: Vfs, storage: Any, direct: Any, dir_ino: int, dirname: str) -> None:
        self.vfs = vfs
        self.storage = storage
        self.direct = direct
        self.dir_ino = dir_ino
        self.dirname = dirname
        #: The fault proxy in front of the vfs's Swift (the faulty fixture only).
        self.proxy: Any = None

    def stored(self, name: str) -> bytes | None:
        return self.direct.read([self.dirname, name])

    async def create(self, name: str, flags: int = os.O_WRONLY) -> int:
        handle, _node = await self.vfs.create(self.dir_ino, name.encode(), flags | os.O_CREAT)
        return handle.fh

    async def open(self, name: str, flags: int) -> int:
        node = await self.vfs.lookup(self.dir_ino, name.encode())
        return (await self.vfs.open(node.ino, flags)).fh

    async def ino(self, name: str) -> int:
        return (await self.vfs.lookup(self.dir_ino, name.encode())).ino

    async def close(self, fh: int) -> None:
        try:
            await self.vfs.flush(fh)
        finally:
            await self.vfs.release(fh)

    async def read(self, fh: int, offset: int = 0, size: int = 1 << 20) -> bytes:
        return bytes(await self.vfs.read(fh, offset, size))

    async def put(self, name: str, data: bytes) -> None:
        fh = await self.create(name)
        await self.vfs.write(fh, 0, data)
        await self.close(fh)


@contextlib.asynccontextmanager
async def _direct_env(tmp_path: Path, ctx: Context, **option_kw: Any) -> AsyncIterator[Direct]:
    """A Vfs over ctx's store (option_kw: more Options), running in a nursery, with a fresh
    directory to work in."""
    options = Options(staging_dir=str(tmp_path / "staging"), workbench_dir=str(tmp_path), op_timeout=OP_TIMEOUT,
                      **option_kw)
    os.makedirs(options.staging_dir, exist_ok=True)
    vfs = Vfs([StoreMount("public", ctx.storage, options)], options, cache=ctx.cache)
    async with trio.open_nursery() as nursery:
        vfs.nursery = nursery
        public = await vfs.lookup(ROOT_INO, b"public")
        dirname = f"r{uuid.uuid4().hex[:10]}"
        node = await vfs.mkdir(public.ino, dirname.encode())
        yield Direct(vfs, ctx.storage, ctx.direct, node.ino, dirname)
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["local", "swift"])
async def direct(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Direct]:
    container = None
    if request.param == "local":
        ctx = _local_context(tmp_path)
    else:
        container = f"gfs-{uuid.uuid4().hex[:12]}"
        ctx = _swift_context(tmp_path, request.getfixturevalue("swift_env"), container)
    try:
        async with _direct_env(tmp_path, ctx) as env:
            yield env
    finally:
        if container is not None:
            drop_container(request.getfixturevalue("swift_env"), container)


swift_only = pytest.mark.parametrize("direct", ["swift"], indirect=True)


@swift_only
async def test_o_trunc_then_flush_keeps_the_old_object(direct: Direct) -> None:
    """open(O_TRUNC) + flush (a dup'd descriptor closed, as dd and shell redirections do) must
    not publish the empty file: the old object stays until content arrives; fsync or the last
    release publish the truncation."""
    await direct.put("a.txt", b"old content")
    fh = await direct.open("a.txt", os.O_WRONLY | os.O_TRUNC)
    await direct.vfs.flush(fh)
    assert direct.stored("a.txt") == b"old content"
    await direct.vfs.write(fh, 0, b"new")
    await direct.vfs.flush(fh)
    assert direct.stored("a.txt") == b"new"
    await direct.vfs.release(fh)
    assert direct.stored("a.txt") == b"new"
    # The truncation alone is published by the last release ...
    fh = await direct.open("a.txt", os.O_WRONLY | os.O_TRUNC)
    await direct.vfs.flush(fh)
    assert direct.stored("a.txt") == b"new"
    await direct.vfs.release(fh)
    assert direct.stored("a.txt") == b""
    # ... and by fsync.
    await direct.put("b.txt", b"old")
    fh = await direct.open("b.txt", os.O_RDWR | os.O_TRUNC)
    await direct.vfs.flush(fh)
    assert direct.stored("b.txt") == b"old"
    await direct.vfs.fsync(fh, False)
    assert direct.stored("b.txt") == b""
    await direct.close(fh)


async def test_reader_opened_before_a_writer_sees_its_writes(direct: Direct) -> None:
    """Read-your-writes across handles: a read-only handle opened before another handle writes
    (or a truncate by name) reads the new content, also after the writer is gone."""
    await direct.put("c.txt", b"0123456789")
    reader = await direct.open("c.txt", os.O_RDONLY)
    assert await direct.read(reader) == b"0123456789"
    writer = await direct.open("c.txt", os.O_WRONLY)
    await direct.vfs.write(writer, 2, b"ab")
    assert await direct.read(reader) == b"01ab456789"
    await direct.close(writer)
    assert await direct.read(reader) == b"01ab456789"
    assert direct.stored("c.txt") == b"01ab456789"
    await direct.vfs.setattr(await direct.ino("c.txt"), size=4)
    assert await direct.read(reader) == b"01ab"
    assert direct.stored("c.txt") == b"01ab"
    await direct.close(reader)


@swift_only
async def test_close_racing_an_append_keeps_every_byte(direct: Direct) -> None:
    """A file streaming to Swift (past one segment, appended only): the close of one handle
    while another appends must publish the file before or after that append, never a part."""
    tail = b"tail-" * 7
    for i in range(4):
        name = f"race{i}.bin"
        big = data_of(66668, i)
        a = await direct.create(name, os.O_WRONLY)
        await direct.vfs.write(a, 0, big)
        b = await direct.open(name, os.O_WRONLY | os.O_APPEND)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(direct.close, a)
            nursery.start_soon(direct.vfs.write, b, 0, tail)
        stored = direct.stored(name)
        assert stored in (big, big + tail), f"round {i}: the store holds {_short(stored)}"
        await direct.close(b)
        assert direct.stored(name) == big + tail
        reader = await direct.open(name, os.O_RDONLY)
        assert await direct.read(reader) == big + tail
        await direct.close(reader)


@pytest.fixture
async def faulty(tmp_path: Path, swift_env: dict[str, Any], fault_swift: Any) -> AsyncIterator[Direct]:
    """A Direct whose vfs talks to Swift through the fault proxy (one retry); .proxy to inject."""
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    ctx = _swift_context(tmp_path, swift_env, container, via=fault_swift.env, retries="1")
    try:
        async with _direct_env(tmp_path, ctx) as env:
            env.proxy = fault_swift.proxy
            yield env
    finally:
        fault_swift.proxy.clear()
        drop_container(swift_env, container)


async def test_failed_unlink_keeps_unsaved_writes(faulty: Direct) -> None:
    """unlink failing (Swift errors past the retries) leaves the file in place: data written
    before it and not yet uploaded must still reach the store at the next close."""
    await faulty.put("u.txt", b"old")
    fh = await faulty.open("u.txt", os.O_RDWR)
    await faulty.vfs.write(fh, 0, b"new!")
    faulty.proxy.add_rule(method="DELETE", path=re.escape(faulty.dirname), action="status", status=503, times=4)
    with pytest.raises((OSError, StorageUnavailable)):
        await faulty.vfs.unlink(faulty.dir_ino, b"u.txt")
    faulty.proxy.clear()
    assert await faulty.read(fh) == b"new!"
    await faulty.close(fh)
    assert faulty.stored("u.txt") == b"new!"


@swift_only
async def test_appends_after_renaming_an_open_file_go_to_the_new_name(direct: Direct) -> None:
    """A new file renamed while open for writing, then appended past one segment (so it
    streams): close must publish everything under the new name and nothing under the old."""
    fh = await direct.create("b.txt", os.O_WRONLY | os.O_APPEND)
    await direct.vfs.rename(direct.dir_ino, b"b.txt", direct.dir_ino, b"a.txt")
    data = data_of(104629, 3)
    await direct.vfs.write(fh, 0, data[:48017])
    await direct.vfs.write(fh, 0, data[48017:])
    await direct.close(fh)
    assert direct.stored("a.txt") == data
    assert direct.stored("b.txt") is None


async def test_cut_listing_is_an_oserror(faulty: Direct) -> None:
    """A listing whose body is cut short (connection lost mid-body, past the retries) must come
    out of the vfs as an OSError (or StorageUnavailable, the adapter's EIO), not as a raw
    urllib3/http.client exception."""
    for i in range(8):
        await faulty.put(f"file-with-a-longish-name-{i}.txt", b"x")
    faulty.proxy.add_rule(method="GET", path=r"prefix=" + re.escape(faulty.dirname), action="truncate",
                          after_bytes=100, times=4)
    faulty.vfs.node(faulty.dir_ino).children_time = 0.0  # the cached listing expired (dir_timeout)
    with pytest.raises((OSError, StorageUnavailable)):
        await faulty.vfs.opendir(faulty.dir_ino)
    faulty.proxy.clear()
    fh = await faulty.vfs.opendir(faulty.dir_ino)
    assert len(list(faulty.vfs.readdir_entries(fh, 0))) == 8


async def test_writes_to_an_unlinked_file_leave_the_new_file_of_that_name_alone(direct: Direct) -> None:
    """A file unlinked while open keeps being written; a new file created under the same name
    must keep its own size (the old inode's writes must not touch the name's cached entry)."""
    old, _ = await direct.vfs.create(direct.dir_ino, b"a.txt", os.O_RDWR | os.O_CREAT)
    await direct.vfs.unlink(direct.dir_ino, b"a.txt")
    await direct.put("a.txt", b"new")
    await direct.vfs.write(old.fh, 0, b"x" * 5000)
    node = await direct.vfs.lookup(direct.dir_ino, b"a.txt")
    direct.vfs.forget([(node.ino, node.lookups)])  # the kernel dropped it; the next lookup is fresh
    node = await direct.vfs.lookup(direct.dir_ino, b"a.txt")
    assert (await direct.vfs.getattr(node.ino)).size == 3
    fh = await direct.open("a.txt", os.O_RDONLY)
    assert await direct.read(fh) == b"new"
    await direct.close(fh)
    assert await direct.read(old.fh) == b"x" * 5000
    await direct.close(old.fh)
    assert direct.stored("a.txt") == b"new"


@pytest.fixture
async def writeback(tmp_path: Path, swift_env: dict[str, Any], fault_swift: Any) -> AsyncIterator[Direct]:
    """A Direct in write-back mode, its vfs talking to Swift through the fault proxy (.proxy, to
    slow requests down); uploads run in the fixture's nursery."""
    container = f"gfs-{uuid.uuid4().hex[:12]}"
    ctx = _swift_context(tmp_path, swift_env, container, via=fault_swift.env)
    try:
        async with _direct_env(tmp_path, ctx, writeback=True, transfers=TRANSFERS) as env:
            env.proxy = fault_swift.proxy
            yield env
    finally:
        fault_swift.proxy.clear()
        drop_container(swift_env, container)


async def _settled(vfs: Vfs) -> None:
    """Until write-back has no upload left (at most SETTLE_SECONDS)."""
    with trio.fail_after(SETTLE_SECONDS):
        while vfs.write_back.files:
            await trio.sleep(0.01)


async def test_rename_over_a_file_being_uploaded_keeps_the_moved_content(writeback: Direct) -> None:
    """Write-back: rename(a, b) while b's background upload is in flight (its PUT slowed down)
    must leave b holding a's content once the uploads settle: the replaced file's late upload
    must not land over the moved object."""
    wb = writeback
    await wb.put("a.txt", b"moved content")
    await wb.put("b.txt", b"old b")
    await _settled(wb.vfs)
    assert wb.stored("b.txt") == b"old b"
    fh = await wb.open("b.txt", os.O_WRONLY | os.O_TRUNC)
    await wb.vfs.write(fh, 0, b"replaced b")
    wb.proxy.add_rule(method="PUT", path=re.escape(f"{wb.dirname}/b.txt"), action="delay", delay=1.0, times=1)
    await wb.close(fh)  # queued; its upload starts and waits in the proxy
    await trio.sleep(0.2)
    assert wb.vfs.write_back.files, "the upload of b.txt should still be in flight"
    await wb.vfs.rename(wb.dir_ino, b"a.txt", wb.dir_ino, b"b.txt")
    await _settled(wb.vfs)
    assert wb.stored("a.txt") is None
    assert wb.stored("b.txt") == b"moved content", f"b.txt holds {_short(wb.stored('b.txt'))}"
    fh = await wb.open("b.txt", os.O_RDONLY)
    assert await wb.read(fh) == b"moved content"
    await wb.close(fh)


async def test_rename_over_a_file_being_closed_keeps_the_moved_content(faulty: Direct) -> None:
    """Durable mode: rename(a, b) while b's close is uploading (its PUT slowed down): whichever
    goes first, b ends up holding a's content (a replaced file's writers never publish over the
    new file)."""
    await faulty.put("a.txt", b"moved content")
    await faulty.put("b.txt", b"old b")
    fh = await faulty.open("b.txt", os.O_WRONLY | os.O_TRUNC)
    await faulty.vfs.write(fh, 0, b"replaced b")
    faulty.proxy.add_rule(method="PUT", path=re.escape(f"{faulty.dirname}/b.txt"), action="delay", delay=1.0,
                          times=1)

    async def rename_soon() -> None:
        await trio.sleep(0.2)
        await faulty.vfs.rename(faulty.dir_ino, b"a.txt", faulty.dir_ino, b"b.txt")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(faulty.close, fh)
        nursery.start_soon(rename_soon)
    assert faulty.stored("a.txt") is None
    assert faulty.stored("b.txt") == b"moved content", f"b.txt holds {_short(faulty.stored('b.txt'))}"


@swift_only
async def test_truncate_to_zero_of_a_streaming_file(direct: Direct) -> None:
    """A file written from empty and only appended to, past one segment (so it streams), then
    ftruncate(fd, 0): the truncation succeeds and the close stores the empty file."""
    fh = await direct.create("c.txt", os.O_WRONLY | os.O_APPEND)
    await direct.vfs.write(fh, 0, data_of(SEGMENT_SIZE + 1797, 1))
    await direct.vfs.setattr(await direct.ino("c.txt"), size=0, fh=fh)
    assert (await direct.vfs.getattr(await direct.ino("c.txt"))).size == 0
    await direct.close(fh)
    assert direct.stored("c.txt") == b""
