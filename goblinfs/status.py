"""What a running mount reports about itself: recent errors, and the status document as text.

The daemon answers the extended attribute ``user.goblinfs.status`` of the mount's root with a
JSON document (``Vfs.status()``)::

    {"mountpoint": str, "pid": int,
     "stores": {name: {"kind": "swift" | "local"}},
     "pending_uploads": [{"store", "path", "state", "bytes", "since"}],
     "journaled": [{"store", "path", "state", "since"}],
     "recovered": [{"store", "path", "file", "reason", "time"}],
     "cache": {"used": int, "limit": int},
     "errors": [{"time": float, "level": str, "message": str}]}

``ErrorLog`` is the logging handler the daemon keeps its last warnings and errors in (the
``errors`` list); ``format_status`` turns the document into one screen of plain text for
``goblinfs status``.  Every key is optional: what is missing is shown as unknown or left out.
"""

from __future__ import annotations

import collections
import datetime
import logging
import time
from typing import Any

#: The extended attribute of the mount's root directory that holds the status document.
STATUS_XATTR = "user.goblinfs.status"

#: Records kept by ErrorLog.
ERROR_LOG_SIZE = 20
#: A kept message is cut to this many characters (the whole document must fit in an xattr, 64 KiB).
ERROR_MESSAGE_MAX = 500
#: Items shown per list by format_status; the rest are counted.
LIST_LIMIT = 10


class ErrorLog(logging.Handler):
    """The last ``capacity`` records at WARNING and above, for the status document.

    Each is kept as ``{"time": float (epoch seconds), "level": str, "message": str}``, the
    message on one line: the formatted log message, plus the exception (type and text, not
    the traceback) when the record has one.  Safe to use from any thread.
    """

    def __init__(self, capacity: int = ERROR_LOG_SIZE, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.level:  # loggers check this; handle() called directly does not
            return
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if detail not in message:
                    message = f"{message} ({detail})"
            message = " ".join(message.split())  # one line
            if len(message) > ERROR_MESSAGE_MAX:
                message = message[: ERROR_MESSAGE_MAX - 1] + "…"
            entry = {"time": record.created, "level": record.levelname, "message": message}
        except Exception:
            self.handleError(record)
            return
        # The handler's own re-entrant lock (handle() already holds it around emit()).
        self.acquire()
        try:
            self._records.append(entry)
        finally:
            self.release()

    def recent(self) -> list[dict[str, Any]]:
        """The kept records, oldest first (copies)."""
        self.acquire()
        try:
            return [dict(entry) for entry in self._records]
        finally:
            self.release()


def install_error_log(logger: logging.Logger | None = None) -> ErrorLog:
    """The ErrorLog on the ``goblinfs`` logger, added if it has none (at most one is installed)."""
    logger = logger or logging.getLogger("goblinfs")
    for handler in logger.handlers:
        if isinstance(handler, ErrorLog):
            return handler
    handler = ErrorLog()
    logger.addHandler(handler)
    return handler


# ------------------------------------------------------------------ the document as text


def _text(value: Any) -> str:
    """Any value as printable one-line text (names may hold control characters)."""
    if isinstance(value, (list, tuple)):
        value = "/".join(str(part) for part in value)
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def format_time(value: Any) -> str:
    """Epoch seconds as local ISO time (to the second); text as is; '?' when unknown."""
    seconds = _number(value)
    if seconds is None:
        return _text(value) if isinstance(value, str) and value else "?"
    try:
        return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return "?"


def format_age(value: Any, now: float) -> str:
    """'42s', '5m', '3h', '2d' since the epoch time value; '' when unknown."""
    seconds = _number(value)
    if seconds is None:
        return ""
    age = max(0.0, now - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{int(age // size)}{unit}"
    return f"{int(age)}s"


def format_size(value: Any) -> str:
    """Bytes as '512 B', '1.5 KiB', '3.2 GiB'; '?' when unknown."""
    size = _number(value)
    if size is None or size < 0:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _items(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list):
        return []
    return [item if isinstance(item, dict) else {"path": item} for item in value]


def _where(item: dict[str, Any]) -> str:
    store, path = item.get("store"), item.get("path")
    path_text = _text(path).lstrip("/") if path not in (None, "") else "?"
    return f"{_text(store)}/{path_text}" if store not in (None, "") else path_text


def _since(value: Any, now: float) -> str:
    if value is None:
        return ""
    age = format_age(value, now)
    return f"since {format_time(value)}" + (f" ({age})" if age else "")


def _section(title: str, items: list[dict[str, Any]], line: Any, limit: int, lines: list[str]) -> None:
    if not items:
        lines.append(f"{title}: none")
        return
    lines.append(f"{title}: {len(items)}")
    for item in items[:limit]:
        lines.append("  " + "  ".join(part for part in line(item) if part))
    if len(items) > limit:
        lines.append(f"  … and {len(items) - limit} more")


def format_status(doc: dict[str, Any], now: float | None = None, limit: int = LIST_LIMIT) -> str:
    """The status document as plain text: a header, then one section per list with its count
    and at most ``limit`` items ("… and N more" for the rest).  Times are local ISO; ages are
    relative to ``now`` (default: the current time).  Missing or odd keys are tolerated."""
    now = time.time() if now is None else now
    lines: list[str] = []
    mountpoint = doc.get("mountpoint")
    pid = doc.get("pid")
    header = f"goblinfs at {_text(mountpoint) if mountpoint else '?'}"
    if pid is not None:
        header += f" (pid {_text(pid)})"
    lines.append(header)

    stores = doc.get("stores")
    if isinstance(stores, dict) and stores:
        described = []
        for name, info in stores.items():
            kind = info.get("kind") if isinstance(info, dict) else None
            described.append(f"{_text(name)} ({_text(kind)})" if kind else _text(name))
        lines.append("stores: " + ", ".join(described))
    else:
        lines.append("stores: ?")

    cache = doc.get("cache")
    if isinstance(cache, dict) and (cache.get("used") is not None or cache.get("limit") is not None):
        used, cap = _number(cache.get("used")), _number(cache.get("limit"))
        text = f"cache: {format_size(used)} used of {format_size(cap)}"
        if used is not None and cap:
            text += f" ({100 * used / cap:.0f}%)"
        lines.append(text)
    wb = doc.get("write_back")
    if isinstance(wb, dict):
        lines.append(f"write-back: {_text(wb.get('queued', 0))} file(s) queued "
                     f"({format_size(_number(wb.get('bytes')))}), {_text(wb.get('uploaded', 0))} uploaded, "
                     f"{_text(wb.get('failed_attempts', 0))} failed attempt(s), {_text(wb.get('transfers', '?'))} "
                     f"at once" + (", draining" if wb.get("draining") else ""))
    lines.append("")

    _section("pending uploads", _items(doc, "pending_uploads"), lambda item: (
        _where(item), _text(item.get("state", "")),
        format_size(item["bytes"]) if item.get("bytes") is not None else "",
        _since(item.get("since"), now)), limit, lines)
    _section("journaled", _items(doc, "journaled"), lambda item: (
        _where(item), _text(item.get("state", "")), _since(item.get("since"), now)), limit, lines)
    _section("recovered", _items(doc, "recovered"), lambda item: (
        format_time(item.get("time")) if item.get("time") is not None else "",
        _where(item),
        f"→ {_text(item['file'])}" if item.get("file") else "",
        f"({_text(item['reason'])})" if item.get("reason") else ""), limit, lines)
    errors = _items(doc, "errors")
    # The newest errors are the ones worth a line: show the last ones, newest last.
    shown = errors[-limit:] if len(errors) > limit else errors
    if not errors:
        lines.append("recent errors: none")
    else:
        lines.append(f"recent errors: {len(errors)}")
        if len(errors) > limit:
            lines.append(f"  … and {len(errors) - limit} more, earlier")
        for item in shown:
            lines.append("  " + "  ".join(part for part in (
                format_time(item.get("time")), _text(item.get("level", "")), _text(item.get("message", ""))) if part))
    return "\n".join(lines)

