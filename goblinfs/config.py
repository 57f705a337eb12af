"""Read a MediaGoblin ``mediagoblin.ini`` unchanged, or use the embedded default.

MediaGoblin reads its config with ConfigObj (``interpolation="ConfigParser"``) against
``config_spec.ini``.  This module parses the same syntax (``[section]``, nested
``[[plugin]]`` sections, quoted and triple-quoted values, ``#`` comments, ``%(name)s``
interpolation from the section then ``[DEFAULT]``), without ConfigObj, and applies
MediaGoblin's defaults for the keys goblinfs uses:

* ``[DEFAULT] data_basedir = %(here)s/user_dev`` (``here``: the config file's directory);
* ``[storage:publicstore]``: BasicFileStorage, ``%(data_basedir)s/media/public``,
  ``base_url = /mgoblin_media/``;
* ``[storage:queuestore]``: BasicFileStorage, ``%(data_basedir)s/media/queue``;
* ``[mediagoblin] workbench_path = %(data_basedir)s/media/workbench``.

goblinfs's own options live in a ``[goblinfs]`` section.  No config file: the embedded
default, local queue and public stores under a per-user data directory.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .storage import Error as StorageError
from .storage import StorageInterface, storage_system_from_config

log = logging.getLogger(__name__)

#: The stores a mount shows, as (directory name, config section).
STORES = (("queue", "storage:queuestore"), ("public", "storage:publicstore"))

#: MediaGoblin's defaults (config_spec.ini) for what goblinfs reads.
SPEC_DEFAULTS: dict[str, dict[str, str]] = {
    "DEFAULT": {"data_basedir": "%(here)s/user_dev"},
    "mediagoblin": {"workbench_path": "%(data_basedir)s/media/workbench"},
    "storage:publicstore": {
        "storage_class": "mediagoblin.storage.filestorage:BasicFileStorage",
        "base_dir": "%(data_basedir)s/media/public",
        "base_url": "/mgoblin_media/",
    },
    "storage:queuestore": {
        "storage_class": "mediagoblin.storage.filestorage:BasicFileStorage",
        "base_dir": "%(data_basedir)s/media/queue",
    },
}


class ConfigError(Exception):
    """A config that cannot be used; the message is one line for the user."""


# ------------------------------------------------------------------------- parsing

_SECTION_RE = re.compile(r"^(\[+)\s*([^\]]*?)\s*(\]+)\s*(#.*)?$")
_KEY_RE = re.compile(r"^([^=]+?)\s*=\s*(.*)$")
_INTERP_RE = re.compile(r"%\(([^)]+)\)s")


@dataclass
class Section:
    """One section: its values (raw, uninterpolated) and nested sections."""

    name: str
    depth: int
    values: dict[str, str] = field(default_factory=dict)
    children: dict[str, Section] = field(default_factory=dict)


def parse_ini(text: str, source: str = "<config>") -> dict[str, Section]:
    """Parse ConfigObj syntax into top-level sections (``DEFAULT`` included if present)."""
    top: dict[str, Section] = {}
    stack: list[Section] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        raw = lines[index]
        index += 1
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(";"):
            continue
        if line.startswith("["):
            match = _SECTION_RE.match(line)
            if not match or len(match.group(1)) != len(match.group(3)) or not match.group(2):
                raise ConfigError(f"{source}:{index}: bad section header: {line}")
            depth = len(match.group(1))
            name = match.group(2).strip("\"'")
            if depth == 1:
                section = top.setdefault(name, Section(name, 1))
                stack = [section]
            else:
                if depth > len(stack) + 1 or not stack:
                    raise ConfigError(f"{source}:{index}: section {line} is nested deeper than its parent")
                parent = stack[depth - 2]
                section = parent.children.setdefault(name, Section(name, depth))
                stack = stack[: depth - 1] + [section]
            continue
        match = _KEY_RE.match(line)
        if not match:
            raise ConfigError(f"{source}:{index}: expected 'key = value': {line}")
        key = match.group(1).strip().strip("\"'")
        value, consumed = _parse_value(match.group(2), lines, index, source)
        index += consumed
        if not stack:
            # ConfigObj allows keys before any section; they belong to the root.
            stack = [top.setdefault("", Section("", 0))]
        stack[-1].values[key] = value
    return top


def _parse_value(rest: str, lines: list[str], index: int, source: str) -> tuple[str, int]:
    """A value as ConfigObj reads it; returns (value, extra lines consumed)."""
    rest = rest.strip()
    for quote in ('"""', "'''"):
        if rest.startswith(quote):
            body = rest[3:]
            if quote in body:
                return body[: body.index(quote)], 0
            parts = [body]
            consumed = 0
            while index + consumed < len(lines):
                line = lines[index + consumed]
                consumed += 1
                if quote in line:
                    parts.append(line[: line.index(quote)])
                    return "\n".join(parts), consumed
                parts.append(line)
            raise ConfigError(f"{source}:{index}: unterminated {quote} value")
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        end = rest.find(quote, 1)
        if end < 0:
            raise ConfigError(f"{source}:{index}: unterminated quoted value: {rest}")
        tail = rest[end + 1:].strip()
        if tail and not tail.startswith("#") and not tail.startswith(","):
            raise ConfigError(f"{source}:{index}: text after a quoted value: {rest}")
        if tail.startswith(","):
            return rest, 0  # a list; kept as written
        return rest[1:end], 0
    comment = re.search(r"\s#", rest)
    if comment:
        rest = rest[: comment.start()]
    return rest.strip(), 0


def interpolate(value: str, section: dict[str, str], defaults: dict[str, str], depth: int = 0) -> str:
    """ConfigParser-style ``%(name)s`` from the section, then DEFAULT; ``%%`` is ``%``."""
    if depth > 10:
        raise ConfigError(f"interpolation too deep (a loop?) in {value!r}")

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in section:
            raw = section[name]
        elif name in defaults:
            raw = defaults[name]
        else:
            raise ConfigError(f"%({name})s is not defined (in {value!r})")
        return interpolate(raw, section, defaults, depth + 1)

    return _INTERP_RE.sub(replace, value.replace("%%", "\0")).replace("\0", "%")


# ------------------------------------------------------------------------- the config


@dataclass
class StoreConfig:
    """One store of the mount: its directory name, section and (interpolated) keys."""

    name: str
    section: str
    params: dict[str, str]

    def build(self) -> StorageInterface:
        """Instantiate the store (``storage_system_from_config``); ConfigError on failure."""
        try:
            return storage_system_from_config(self.params)
        except StorageError as exc:
            raise ConfigError(f"[{self.section}]: {exc}") from exc


@dataclass
class GoblinConfig:
    """What goblinfs takes from a config: the stores, the workbench, its own options."""

    path: str | None
    stores: dict[str, StoreConfig]
    workbench_path: str
    options: dict[str, str]

    def __iter__(self) -> Iterator[StoreConfig]:
        return iter(self.stores.values())


def default_data_dir() -> str:
    """Per-user data directory of the embedded default (``$XDG_DATA_HOME/goblinfs``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "goblinfs")


def find_config(path: str) -> str:
    """A directory means its mediagoblin_local.ini, else its mediagoblin.ini (as MediaGoblin)."""
    if os.path.isdir(path):
        for name in ("mediagoblin_local.ini", "mediagoblin.ini"):
            candidate = os.path.join(path, name)
            if os.path.exists(candidate):
                return candidate
        raise ConfigError(f"{path}: no mediagoblin_local.ini or mediagoblin.ini in this directory")
    return path


def load_config(path: str | None = None) -> GoblinConfig:
    """Read a MediaGoblin config (or the embedded default when path is None).

    Raises ConfigError, with one line saying what is wrong, for an unreadable file, a
    syntax error or an undefined interpolation.
    """
    if path is None:
        here = default_data_dir()
        sections: dict[str, Section] = {"DEFAULT": Section("DEFAULT", 1, {"data_basedir": here})}
        source = "embedded default"
    else:
        path = os.path.abspath(find_config(path))
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason})") from exc
        sections = parse_ini(text, path)
        here = os.path.dirname(path)
        source = path

    defaults = dict(SPEC_DEFAULTS["DEFAULT"])
    defaults.update(sections.get("DEFAULT", Section("DEFAULT", 1)).values)
    defaults["here"] = here
    if path is not None:
        defaults["__file__"] = path

    def section_values(name: str) -> dict[str, str]:
        raw = dict(SPEC_DEFAULTS.get(name, {}))
        raw.update(sections.get(name, Section(name, 1)).values)
        try:
            return {key: interpolate(value, raw, defaults) for key, value in raw.items()}
        except ConfigError as exc:
            raise ConfigError(f"{source}: [{name}]: {exc}") from None

    stores = {}
    for store_name, section in STORES:
        stores[store_name] = StoreConfig(store_name, section, section_values(section))
    workbench_path = section_values("mediagoblin")["workbench_path"]
    options = section_values("goblinfs") if "goblinfs" in sections else {}
    log.debug("config from %s: stores %s, workbench %s", source, stores, workbench_path)
    return GoblinConfig(path=path, stores=stores, workbench_path=workbench_path, options=options)


def ensure_local_dirs(config: GoblinConfig) -> None:
    """Create the base directories of local stores and the workbench (for the embedded default)."""
    for store in config:
        base_dir = store.params.get("base_dir")
        klass = store.params.get("storage_class", "")
        if base_dir and klass.endswith("BasicFileStorage"):
            os.makedirs(base_dir, exist_ok=True)
    os.makedirs(config.workbench_path, exist_ok=True)


def as_bool(value: Any) -> bool:
    """'true'/'yes'/'on'/'1' (any case) → True; everything else False."""
    return str(value).strip().lower() in ("true", "yes", "on", "1")
