"""Swift container listings and object metadata: mtime, content type, etags, Entries.

Pure functions (no requests) turning what Swift returns — listing items and HEAD headers —
into :class:`~goblinfs.storage.Entry` objects, plus :func:`iter_listing`, which pages a
listing with ``marker``.

* **mtime** is kept where a container *listing* returns it: a Content-Type parameter,
  ``image/jpeg;goblinfs_mtime=1764201001.123456789`` (seconds, 9 decimals, exact integer
  nanoseconds), and the swift CLI/rclone header ``X-Object-Meta-Mtime`` holds the same string.
* **Directories**: ``application/directory`` objects (markers ``name/`` or, from svfs and
  cloudfuse, ``name``) and the ``subdir`` entries of delimiter listings.
* **Large objects**: a listing gives an SLO its full size and its SLO etag (``slo_etag``); a
  DLO manifest is listed with 0 bytes (its size needs a HEAD).
"""

from __future__ import annotations

import calendar
import logging
import mimetypes
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote as urllib_unquote

from .. import Entry

log = logging.getLogger(__name__)

#: Content-Type parameter holding the mtime (seconds with 9 decimals).
MTIME_PARAM = "goblinfs_mtime"
#: Content-Type of directory markers (swift CLI, Horizon, rclone, svfs).
DIRECTORY_TYPE = "application/directory"
#: Default size of SLO segments (objects larger than this are segmented).

def format_mtime(mtime_ns: int) -> str:
    """Integer nanoseconds as exact decimal seconds with 9 decimals: ``1764201001.000000005``."""
    mtime_ns = int(mtime_ns)
    sign = "-" if mtime_ns < 0 else ""
    seconds, fraction = divmod(abs(mtime_ns), 1_000_000_000)
    return f"{sign}{seconds}.{fraction:09d}"


_DECIMAL_RE = re.compile(r"([+-]?)(\d+)(?:\.(\d*))?")


def parse_mtime(value: Any) -> int | None:
    """Decimal seconds (as stored by us, the swift CLI or rclone) to integer nanoseconds, exactly.

    Digits past the ninth decimal are dropped; None for anything unparseable.
    """
    if value is None:
        return None
    text = str(value).strip().strip('"')
    match = _DECIMAL_RE.fullmatch(text)
    if match:
        sign, seconds, fraction = match.groups()
        nanos = int(seconds) * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))
        return -nanos if sign == "-" else nanos
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return int((number * 1_000_000_000).to_integral_value(rounding=ROUND_FLOOR))


def split_content_type(value: str | None) -> tuple[str | None, int | None]:
    """Split ``type;goblinfs_mtime=S`` into (type without our parameter, mtime_ns or None).

    Other parameters are kept verbatim; ``swift_bytes`` (Swift's internal one) is dropped.
    """
    if not value:
        return None, None
    parts = value.split(";")
    kept = [parts[0].strip()]
    mtime_ns = None
    for part in parts[1:]:
        key, sep, param = part.strip().partition("=")
        lowered = key.strip().lower()
        if sep and lowered == MTIME_PARAM:
            mtime_ns = parse_mtime(param)
            continue
        if sep and lowered == "swift_bytes":
            continue
        if part.strip():
            kept.append(part.strip())
    return ";".join(kept), mtime_ns


def is_directory_type(content_type: str | None) -> bool:
    """True for ``application/directory`` (parameters and case ignored)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == DIRECTORY_TYPE


_LISTING_TIME_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z?")


def parse_listing_time(value: str | None) -> int:
    """A listing's ``last_modified`` (UTC, ISO format without zone) as integer nanoseconds; 0 if absent."""
    if not value:
        return 0
    match = _LISTING_TIME_RE.fullmatch(value.strip())
    if not match:
        return 0
    moment = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S")
    fraction = int((match[2] or "")[:9].ljust(9, "0"))
    return calendar.timegm(moment.timetuple()) * 1_000_000_000 + fraction


def listing_etag(item: Mapping[str, Any]) -> str | None:
    """The etag of a listing item as HEAD reports it.

    For an SLO, HEAD gives the SLO etag (MD5 of the segments' etags) while the listing's
    ``hash`` is the manifest's MD5 followed by ``; slo_etag=<SLO etag>`` (Swift 2.30; newer
    releases may give ``slo_etag`` as a key of its own): the SLO etag is taken.
    """
    value = str(item.get("hash") or "")
    base, _, params = value.partition(";")
    slo_etag = item.get("slo_etag")
    for param in params.split(";"):
        key, sep, param_value = param.strip().partition("=")
        if sep and key.strip().lower() == "slo_etag" and not slo_etag:
            slo_etag = param_value.strip()
    return strip_etag(slo_etag) or strip_etag(base) or None


def strip_etag(value: str | None) -> str | None:
    return value.strip().strip('"') if value else None


def guess_type(leaf: str) -> str:
    return mimetypes.guess_type(leaf, strict=False)[0] or "application/octet-stream"


_POST_KEPT_HEADERS = ("content-disposition", "content-encoding", "x-delete-at", "x-object-manifest")


def header_meta(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers of a HEAD that a POST must re-send to keep them (user metadata and friends)."""
    kept = {}
    for key, value in headers.items():
        lowered = key.lower()
        user_meta = lowered.startswith("x-object-meta-") and lowered != "x-object-meta-mtime"
        if user_meta or lowered in _POST_KEPT_HEADERS:
            kept[key] = value
    return kept



def is_slo(headers: Mapping[str, str] | None) -> bool:
    """Whether HEAD headers are those of a Static Large Object manifest."""
    if not headers:
        return False
    return str(headers.get("x-static-large-object", "")).lower() == "true"


def dlo_prefix(headers: Mapping[str, str] | None) -> tuple[str, str] | None:
    """(container, prefix) of a Dynamic Large Object manifest (``X-Object-Manifest``), else None."""
    value = (headers or {}).get("x-object-manifest")
    if not value:
        return None
    container, sep, prefix = urllib_unquote(str(value)).lstrip("/").partition("/")
    return (container, prefix) if container and sep else None


def maybe_slo(item: Mapping[str, Any]) -> bool:
    """Whether a listing item may be an SLO manifest (then a HEAD tells)."""
    return "slo_etag" in item or "slo_etag=" in str(item.get("hash") or "")


def maybe_dlo(item: Mapping[str, Any]) -> bool:
    """Whether a listing item may be a DLO manifest: a zero-byte object that is no directory
    (only a HEAD tells; DLO manifests are listed with 0 bytes)."""
    return int(item.get("bytes") or 0) == 0 and not is_directory_type(item.get("content_type")) \
        and not str(item.get("name", "")).endswith("/")


def entry_from_headers(leaf: str, headers: Mapping[str, str]) -> Entry:
    """The Entry of an object from its HEAD (or GET) headers."""
    content_type, mtime_ns = split_content_type(headers.get("content-type"))
    if mtime_ns is None:
        mtime_ns = parse_mtime(headers.get("x-object-meta-mtime"))
    if mtime_ns is None:
        mtime_ns = parse_mtime(headers.get("x-timestamp"))
    if mtime_ns is None and headers.get("last-modified"):
        with suppress(TypeError, ValueError):
            mtime_ns = int(parsedate_to_datetime(headers["last-modified"]).timestamp()) * 1_000_000_000
    if is_directory_type(content_type):
        return Entry(leaf, True, 0, mtime_ns or 0)
    plain = not headers.get("x-static-large-object") and not headers.get("x-object-manifest")
    return Entry(leaf, False, int(headers.get("content-length") or 0), mtime_ns or 0,
                 strip_etag(headers.get("etag")), content_type, plain=plain)


def entry_from_listing(leaf: str, item: Mapping[str, Any]) -> Entry:
    """The Entry of a listing item (no request)."""
    content_type, mtime_ns = split_content_type(item.get("content_type"))
    if mtime_ns is None:
        mtime_ns = parse_listing_time(item.get("last_modified"))
    if is_directory_type(content_type):
        return Entry(leaf, True, 0, mtime_ns)
    return Entry(leaf, False, int(item.get("bytes") or 0), mtime_ns, listing_etag(item), content_type,
                 plain=not maybe_slo(item) and not maybe_dlo(item))


def iter_listing(get_page: Callable[[str | None, int], list[dict[str, Any]]], page_size: int,
                 limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Listing items, paged with ``marker``: ``get_page(marker, want)`` returns one page (each
    page is one request, retried on its own); stops at a short page or after ``limit`` items."""
    marker: str | None = None
    remaining = limit
    while True:
        want = page_size if remaining is None else min(page_size, remaining)
        items = get_page(marker, want)
        yield from items
        if remaining is not None:
            remaining -= len(items)
            if remaining <= 0:
                return
        if len(items) < want:
            return
        last = items[-1]
        marker = last.get("name", last.get("subdir"))
