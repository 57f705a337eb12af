"""Reading back what an interrupted upload left in ``<container>_segments`` (crash recovery).

A stream cut by a killed daemon has sent some segments of ``<name>/<upload id>/<index>``;
the journal names the upload.  ``read_upload`` concatenates them (they must be contiguous
from index 0) into a local file, and gives the SLO ETag a manifest of exactly those segments
would have, so the caller can tell whether the object at the name is already that upload.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import pwrite_all
from .largeobjects import segment_prefix

if TYPE_CHECKING:
    from ..cloudfiles import CloudFileStorage

READ_CHUNK = 1048576


def read_upload(store: CloudFileStorage, filepath: Sequence[str], upload_id: str, fd: int) -> tuple[int, str]:
    """Write the segments of upload *upload_id* of filepath into fd from offset 0 (fd is not
    truncated); return (bytes of the segments, the ETag of an SLO made of them).
    FileNotFoundError when there are none; OSError(EIO) when they are not contiguous from
    index 0 or a segment reads short."""
    name = store._file_name(filepath)
    prefix = segment_prefix(name, upload_id, store.max_object_name_length)
    try:
        items = list(store._iter_listing(prefix, container=store.segment_container))
    except FileNotFoundError:
        items = []
    if not items:
        raise FileNotFoundError(errno.ENOENT, f"no segment of upload {upload_id}", name)
    items.sort(key=lambda item: item["name"])
    etags = hashlib.md5(usedforsecurity=False)
    offset = 0
    for index, item in enumerate(items):
        leaf = str(item["name"]).rsplit("/", 1)[-1]
        if not leaf.isdigit() or int(leaf) != index:
            raise OSError(errno.EIO, f"upload {upload_id} of {name}: segment {index} missing")
        start = offset
        with store._open_reader(item["name"], container=store.segment_container) as body:
            while chunk := body.read(READ_CHUNK):
                pwrite_all(fd, chunk, offset)
                offset += len(chunk)
        if offset - start != int(item.get("bytes", -1)):
            raise OSError(errno.EIO, f"segment {item['name']} read {offset - start} of {item.get('bytes')} bytes")
        etags.update(str(item.get("hash", "")).encode())
    # The segments are a prefix of what the writer wrote, as is what fd held before (the staged
    # start): both agree where they overlap, and fd keeps the longer one.
    return offset, etags.hexdigest()
