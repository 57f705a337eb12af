"""Read a MediaGoblin ``mediagoblin.ini`` unchanged, with ConfigObj as MediaGoblin does.

MediaGoblin reads its config with ConfigObj (``encoding="UTF8"``,
``interpolation="ConfigParser"``) and validates it against ``config_spec.ini``.  goblinfs
reads it the same way, with ConfigObj itself: the same syntax (``[section]``, nested
``[[plugin]]`` sections, quoted and triple-quoted values, ``#`` comments, comma-separated
lists), the same ``%(name)s`` interpolation (looked up in the section, its ``DEFAULT``
subsection, then each parent and its ``DEFAULT``, up to the top-level ``[DEFAULT]``; ``%%``
is not an escape), ``%(here)s`` = the config file's directory and ``%(__file__)s`` = its path,
and MediaGoblin's spec defaults for the keys goblinfs uses (``SPEC_DEFAULTS``):

* ``[DEFAULT] data_basedir = %(here)s/user_dev`` unless the file sets it;
* ``[storage:publicstore]``: BasicFileStorage, ``%(data_basedir)s/media/public``,
  ``base_url = /mgoblin_media/``;
* ``[storage:queuestore]``: BasicFileStorage, ``%(data_basedir)s/media/queue``;
* ``[mediagoblin] workbench_path = %(data_basedir)s/media/workbench``.

As in MediaGoblin, a spec default is interpolated in the spec, whose ``data_basedir`` is
always ``%(here)s/user_dev``: a ``[DEFAULT] data_basedir`` of the file reaches only the
values written in the file (such as the ``base_dir`` lines of ``mediagoblin.example.ini``),
not the defaults of keys the file leaves out.

goblinfs's own options live in a ``[goblinfs]`` section (a list value is joined with
commas).  No config file: the embedded default, local queue and public stores under a
per-user data directory.

Errors: every problem is one line naming the file and, where there is one, the line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from configobj import (
    ConfigObj,
    ConfigObjError,
    DuplicateError,
    InterpolationError,
    InterpolationLoopError,
    MissingInterpolationOption,
    NestingError,
    ParseError,
    Section,
    flatten_errors,
)
from configobj.validate import Validator

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

#: The section of goblinfs's own options.
OPTIONS_SECTION = "goblinfs"


class ConfigError(Exception):
    """A config that cannot be used; the message is one line for the user.

    Line breaks in it (from the file's text: a value may hold a carriage return) are escaped.
    """

    def __init__(self, message: str) -> None:
        super().__init__("".join(repr(char)[1:-1] if char in _BREAKS else char for char in message))


#: What str.splitlines() splits at.
_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


# ------------------------------------------------------------------------- reading


def _spec_lines() -> list[str]:
    """SPEC_DEFAULTS as a ConfigObj configspec: ``key = string(default="...")`` lines."""
    lines = []
    for section, keys in SPEC_DEFAULTS.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            lines.append(f"{key} = {value}" if section == "DEFAULT" else f'{key} = string(default="{value}")')
    return lines


#: The embedded default: both stores and the workbench under the data directory (``%(here)s``).
_EMBEDDED = [
    "[DEFAULT]", "data_basedir = %(here)s",
    "[mediagoblin]", "workbench_path = %(data_basedir)s/media/workbench",
    "[storage:queuestore]", "base_dir = %(data_basedir)s/media/queue",
    "[storage:publicstore]", "base_dir = %(data_basedir)s/media/public", "base_url = /mgoblin_media/",
]


def _unquote(text: str) -> str:
    """A key or section name as ConfigObj stores it: one pair of matching quotes removed."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _walk(lines: list[str]) -> Iterator[tuple[int, tuple[str, ...], str | None]]:
    """(line number, section path, key or None for a section header) of each entry.

    Uses ConfigObj's own line patterns, so on a file ConfigObj parsed it finds exactly
    ConfigObj's entries; the lines of a triple-quoted value are skipped.
    """
    path: tuple[str, ...] = ()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.strip().startswith("#"):
            continue
        section = ConfigObj._sectionmarker.match(line)
        if section is not None:
            depth = section.group(2).count("[")
            path = (*path[: depth - 1], _unquote(section.group(3)))
            yield index, path, None
            continue
        keyword = ConfigObj._keyword.match(line)
        if keyword is None:
            continue
        yield index, path, _unquote(keyword.group(2))
        quote = keyword.group(3)[:3]
        if quote in ('"""', "'''") and quote not in keyword.group(3)[3:]:
            while index < len(lines) and quote not in lines[index]:
                index += 1
            index += 1


def _label(path: tuple[str, ...]) -> str:
    """``[a]``, ``[a] [[b]]``: a section path as the file writes it."""
    return " ".join("[" * depth + name + "]" * depth for depth, name in enumerate(path, 1)) or "the top level"


_PARSE_ERRORS: tuple[tuple[type[ConfigObjError], str, str], ...] = (
    (NestingError, "Cannot compute the section depth", "bad section header: the brackets do not match"),
    (NestingError, "Section too nested", "section nested deeper than its parent"),
    (NestingError, "Cannot compute nesting level", "section nesting does not match"),
    (ParseError, "Parse error in multiline value", "unterminated triple-quoted value"),
    (ParseError, "Parse error in value", "badly quoted value"),
)


def _duplicate(line: str, number: int, lines: list[str]) -> str:
    """What a DuplicateError at this line repeats, and where it first was."""
    entries = list(_walk(lines[: number - 1]))
    path = entries[-1][1] if entries else ()
    section = ConfigObj._sectionmarker.match(line)
    if section is not None:
        depth = section.group(2).count("[")
        target: tuple[tuple[str, ...], str | None] = ((*path[: depth - 1], _unquote(section.group(3))), None)
        what = "duplicate section"
    else:
        keyword = ConfigObj._keyword.match(line)
        target = (path, _unquote(keyword.group(2)) if keyword else "")
        what = f"duplicate key in {_label(path)}"
    first = next((at for at, at_path, key in entries if (at_path, key) == target), None)
    return f"{what} (first at line {first})" if first else what


def _parse_error(exc: ConfigObjError, lines: list[str], source: str) -> ConfigError:
    """One line for a ConfigObj syntax error: file:line, what is wrong, the line itself."""
    number = exc.line_number or 0
    line = exc.line or ""
    text = line.strip()
    what = str(exc).split(" at line ")[0]
    for kind, prefix, message in _PARSE_ERRORS:
        if isinstance(exc, kind) and what.startswith(prefix):
            what = message
            break
    else:
        if isinstance(exc, DuplicateError):
            what = _duplicate(line, number, lines)
        elif isinstance(exc, ParseError) and what.startswith("Invalid line"):
            what = "bad section header" if text.startswith("[") else "expected 'key = value' or a [section]"
    return ConfigError(f"{source}:{number}: {what}: {text}")


def _read(path: str) -> list[str]:
    """The file's lines as ConfigObj reads a file (split at newlines, UTF-8, BOM dropped)."""
    try:
        with open(path, "rb") as f:
            raw = f.readlines()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        return [line.decode("utf-8-sig" if number == 0 else "utf-8").rstrip("\r\n")
                for number, line in enumerate(raw)]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason})") from exc


_QUOTED_NAME = re.compile(r'"(.*)"', re.DOTALL)


class _Reader:
    """One reading of a config: ConfigObj's parse and validation, errors located in the file."""

    def __init__(self, lines: list[str], path: str, source: str) -> None:
        self.lines = lines
        self.path = path
        self.source = source
        try:
            self.config = ConfigObj(list(lines), configspec=_spec_lines(), encoding="UTF8",
                                    interpolation="ConfigParser", raise_errors=True)
        except ConfigObjError as exc:
            raise _parse_error(exc, lines, source) from None
        self.index = {(at_path, key): at for at, at_path, key in _walk(lines)}

    def where(self, path: tuple[str, ...], key: str | None = None) -> str:
        """``file:line`` of a key (or a section header), else of its section, else the file."""
        line = self.index.get((path, key))
        if line is None and key is not None:  # a key written as a subsection: its header
            line = self.index.get(((*path, key), None))
        line = line or self.index.get((path, None))
        return f"{self.source}:{line}" if line else self.source

    def section(self, name: str) -> Any:
        """A top-level section (a configobj Section), None if absent; ConfigError for a value."""
        value = dict.get(self.config, name)
        if value is None or isinstance(value, Section):
            return value
        raise ConfigError(f"{self.where((), name)}: {name} must be a [{name}] section, not a value")

    def value(self, section: Any, path: tuple[str, ...], key: str) -> Any:
        """section[key] interpolated; ConfigError at the key's line for a bad reference."""
        label = f"{_label(path)} {key}"
        try:
            return section[key]
        except AttributeError:
            # ConfigObj looks a name up in section["DEFAULT"] too, and fails if that is a value.
            if "DEFAULT" not in section.scalars:
                raise
            raise self._default_value(path) from None
        except MissingInterpolationOption as exc:
            match = _QUOTED_NAME.search(str(exc))
            name = match.group(1) if match else str(exc)
            via = ""
            reference = f"%({name})s"
            if reference not in str(dict.__getitem__(section, key)):
                line = next((n for n, text in enumerate(self.lines, 1) if reference in text), None)
                via = f", referred to at line {line}" if line else ""
            raise ConfigError(f"{self.where(path, key)}: {label}: {reference} is not defined "
                              f"(not in the section, its parents or [DEFAULT]{via})") from None
        except InterpolationLoopError as exc:
            match = _QUOTED_NAME.search(str(exc))
            name = match.group(1) if match else key
            raise ConfigError(f"{self.where(path, key)}: {label}: interpolation loop: "
                              f"%({name})s refers back to itself") from None

    def _default_value(self, path: tuple[str, ...]) -> ConfigError:
        """The error for a section whose ``DEFAULT`` is a value where a lookup needs it."""
        return ConfigError(f"{self.where(path, 'DEFAULT')}: {_label(path)} DEFAULT must be a "
                           f"{'[' * (len(path) + 1)}DEFAULT{']' * (len(path) + 1)} section, not a value "
                           f"(a %(name)s not in the section is looked up there)")

    def string(self, section: Any, path: tuple[str, ...], key: str) -> str:
        """An interpolated value that must be one string, not a comma-separated list."""
        value = self.value(section, path, key)
        if isinstance(value, list):
            raise ConfigError(f"{self.where(path, key)}: {_label(path)} {key}: a list of {len(value)} values "
                              f"(a comma outside quotes), expected one value: quote it to keep the comma")
        return str(value)

    def setup_defaults(self) -> None:
        """MediaGoblin's DEFAULT: ``here`` and ``__file__`` set, the spec's ``data_basedir`` if unset.

        Set in the spec too, where MediaGoblin's spec defaults are interpolated.
        """
        for target in (self.config.configspec, self.config):
            if "DEFAULT" in target.scalars:
                raise ConfigError(f"{self.where((), 'DEFAULT')}: DEFAULT must be a [DEFAULT] section, not a value")
            if "DEFAULT" not in target:
                target["DEFAULT"] = {}
            target["DEFAULT"]["here"] = os.path.dirname(self.path)
            target["DEFAULT"]["__file__"] = self.path
        defaults = self.config["DEFAULT"]
        for key, value in SPEC_DEFAULTS["DEFAULT"].items():
            if key not in defaults:
                defaults[key] = value

    def validate(self) -> None:
        """Fill MediaGoblin's defaults and check the spec's keys (ConfigObj's validate, as MediaGoblin).

        What would make ConfigObj's validate fail with an exception is refused first; an
        interpolation error met during validation is reported at the key it stopped at.
        """
        for name, keys in SPEC_DEFAULTS.items():
            section = self.section(name)
            if name == "DEFAULT" or section is None:
                continue
            for key in keys:
                if key in section.sections:
                    raise ConfigError(f"{self.where((name, key))}: {_label((name,))} {key} must be a value, "
                                      f"not a [[{key}]] section")
        try:
            result = self.config.validate(Validator(), preserve_errors=True)
        except (InterpolationError, AttributeError) as exc:
            # Validation goes section by section, key by key in spec order, filling defaults as
            # it goes: the first spec key that fails now is the one it stopped at.  (A failed
            # lookup in a DEFAULT value leaves ConfigObj's interpolation switched off.)
            self.config.interpolation = "ConfigParser"
            for name in self.config.sections:
                for key in SPEC_DEFAULTS.get(name, {}) if name != "DEFAULT" else ():
                    if key in self.config[name].scalars:
                        self.value(self.config[name], (name,), key)
            if isinstance(exc, AttributeError):
                raise
            raise ConfigError(f"{self.source}: {exc}") from None
        for path, key, error in flatten_errors(self.config, result):
            if error is False:
                continue  # a missing value or section: the defaults cover every key goblinfs reads
            if key is not None and len(path) == 1 and key in self.config[path[0]].scalars:
                self.string(self.config[path[0]], (path[0],), key)  # a list: the clearer message
            label = _label(tuple(path)) + (f" {key}" if key else "")
            raise ConfigError(f"{self.where(tuple(path), key)}: {label}: {error}")

    def store_params(self, name: str) -> dict[str, str]:
        """Every value of a store section, interpolated (nested sections ignored, as strings)."""
        section = self.section(name)
        return {key: self.string(section, (name,), key) for key in section.scalars}

    def workbench_path(self) -> str:
        """``[mediagoblin] workbench_path``, interpolated."""
        return self.string(self.section("mediagoblin"), ("mediagoblin",), "workbench_path")

    def options(self) -> dict[str, str]:
        """The [goblinfs] section, interpolated; a list value joined with commas."""
        section = self.section(OPTIONS_SECTION)
        if section is None:
            return {}
        options = {}
        for key in section.scalars:
            value = self.value(section, (OPTIONS_SECTION,), key)
            options[key] = ",".join(value) if isinstance(value, list) else str(value)
        return options


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

    The stores' values are what MediaGoblin's ``storage_system_from_config`` would get
    (every key of the section, interpolated, MediaGoblin's defaults filled in), as strings.
    Raises ConfigError, one line naming the file and line, for an unreadable or non-UTF-8
    file, a syntax error (bad section header, nesting, duplicate key or section, bad
    quoting, a line that is no ``key = value``), an undefined interpolation or a loop in a
    value goblinfs reads, a list (a comma outside quotes) where goblinfs needs one string,
    or a section given as a value.
    """
    if path is None:
        data_dir = default_data_dir()
        reader = _Reader(_EMBEDDED, os.path.join(data_dir, "mediagoblin.ini"), "embedded default")
        config_path = None
    else:
        config_path = os.path.abspath(find_config(path))
        reader = _Reader(_read(config_path), config_path, config_path)
    reader.setup_defaults()
    reader.validate()
    stores = {name: StoreConfig(name, section, reader.store_params(section)) for name, section in STORES}
    workbench_path = reader.workbench_path()
    options = reader.options()
    log.debug("config from %s: stores %s, workbench %s", reader.source, stores, workbench_path)
    return GoblinConfig(path=config_path, stores=stores, workbench_path=workbench_path, options=options)


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
