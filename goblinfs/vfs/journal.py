"""The write journal: what is staged in the workbench and not yet confirmed by the store.

One small JSON record per remote file being written (``<workbench>/journal/<id>.json``):
its store, path, staging file, state, the ETag the content was based on and the id of any
upload whose segments are in flight.  A record is written (atomically: a temporary file
renamed over it) when the file's write state changes, and removed when the store confirmed
the content or nothing is left to keep.  It survives a killed daemon (it is in the page
cache as soon as it is written; a power loss may lose it together with the staging file).

At the next mount ``recover`` (goblinfs.vfs.writes) reads every record back: content whose
publication had been asked for (a close or fsync) is uploaded if the object is still the one
it was based on; everything else that holds data is moved under ``<workbench>/recovered/``
with its store and path, and reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class Journal:
    """The journal directory of one workbench."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    @staticmethod
    def new_id() -> str:
        return f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"

    def _path(self, record_id: str) -> str:
        return os.path.join(self.directory, f"{record_id}.json")

    def write(self, record_id: str, record: dict[str, Any], durable: bool = False) -> None:
        """Write (or replace) a record atomically; durable: fsynced, and its name too, before
        returning (it then survives a power loss, not only a killed daemon)."""
        path = self._path(record_id)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, record_id: str) -> None:
        if not record_id:  # a record kept elsewhere (a staging file's own)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(record_id))

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every record as (id, record); unreadable ones are logged and set aside."""
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            if not name.endswith(".json"):
                continue
            try:
                with open(path) as f:
                    record = json.load(f)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as exc:
                log.error("journal record %s unreadable (%s): set aside as %s.bad", path, exc, path)
                with contextlib.suppress(OSError):
                    os.replace(path, path + ".bad")
                continue
            yield name[: -len(".json")], record


def recovered_path(recovered_dir: str, store: str, path: list[str] | tuple[str, ...]) -> str:
    """Where staged data of store/path is kept when it cannot be uploaded (a free name)."""
    safe = [c if c not in ("", ".", "..") else "_" for c in path] or ["_"]
    target = os.path.join(recovered_dir, store, *safe)
    if os.path.exists(target):
        target = f"{target}.{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return target


def list_recovered(recovered_dir: str) -> list[dict[str, Any]]:
    """Files kept under the recovered directory: {store, path, file, reason, time}."""
    out: list[dict[str, Any]] = []
    if not os.path.isdir(recovered_dir):
        return out
    for root, _dirs, files in os.walk(recovered_dir):
        for name in files:
            if name.endswith(".why"):
                continue
            full = os.path.join(root, name)
            rel = os.path.relpath(full, recovered_dir).split(os.sep)
            try:
                when = os.stat(full).st_mtime
            except OSError:
                continue
            item: dict[str, Any] = {"store": rel[0], "path": "/".join(rel[1:]), "file": full, "reason": "",
                                    "time": when}
            with contextlib.suppress(OSError, ValueError), open(full + ".why") as f:
                why = json.load(f)
                if isinstance(why, dict):
                    item.update({k: why[k] for k in ("store", "path", "reason", "time") if k in why})
            out.append(item)
    out.sort(key=lambda item: item["time"])
    return out
