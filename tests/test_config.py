"""MediaGoblin config files read unchanged, MediaGoblin's defaults, the embedded default, errors."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from goblinfs.config import STORES, ConfigError, load_config
from goblinfs.storage import storage_system_from_config
from goblinfs.storage.filestorage import BasicFileStorage

ROOT = Path(__file__).resolve().parent.parent

# mediagoblin.example.ini as shipped (v0.15), trimmed of comments only where noted.
EXAMPLE_INI = '''\
# If you want to make changes to this file, first copy it to
# mediagoblin_local.ini, then make the changes there.
#
# [DEFAULT]
# data_basedir = %(here)s/user_dev

[mediagoblin]
direct_remote_path = /mgoblin_static/
email_sender_address = "notice@mediagoblin.example.org"
# sql_engine = postgresql:///mediagoblin
email_debug_mode = true
allow_registration = true
# datetime_format = "%I:%M%p %Y-%m-%d"
user_privilege_scheme = "uploader,commenter,reporter"
[storage:queuestore]
base_dir = %(data_basedir)s/media/queue

[storage:publicstore]
base_dir = %(data_basedir)s/media/public
base_url = /mgoblin_media/

[celery]
# CELERY_DEFAULT_QUEUE = "default"

[plugins]
[[mediagoblin.plugins.geolocation]]
[[mediagoblin.plugins.processing_info]]
#[[mediagoblin.plugins.metadata_display]]

[[mediagoblin.plugins.basic_auth]]
#[[mediagoblin.plugins.ldap]]
#[[[server1]]]
#LDAP_SERVER_URI = 'ldap://ldap.testathon.net:389'
[[mediagoblin.plugins.flatpagesfile]]
about-view = '/about', about.html
[[mediagoblin.media_types.image]]
[[mediagoblin.media_types.video]]
available_resolutions = 144p,240p  # trailing comment
'''


def test_example_config(tmp_path: Any) -> None:
    path = tmp_path / "mediagoblin.ini"
    path.write_text(EXAMPLE_INI)
    config = load_config(str(path))
    here = str(tmp_path)
    assert config.stores["public"].params == {
        "storage_class": "mediagoblin.storage.filestorage:BasicFileStorage",
        "base_dir": f"{here}/user_dev/media/public",
        "base_url": "/mgoblin_media/",
    }
    assert config.stores["queue"].params["base_dir"] == f"{here}/user_dev/media/queue"
    assert "base_url" not in config.stores["queue"].params
    assert config.workbench_path == f"{here}/user_dev/media/workbench"
    store = config.stores["public"].build()
    assert isinstance(store, BasicFileStorage) and store.base_url == "/mgoblin_media/"


def test_directory_prefers_local_ini(tmp_path: Any) -> None:
    (tmp_path / "mediagoblin.ini").write_text(EXAMPLE_INI)
    (tmp_path / "mediagoblin_local.ini").write_text(
        "[DEFAULT]\ndata_basedir = /srv/media\n[storage:publicstore]\nbase_url = https://m.example.org/m/\n"
        "[goblinfs]\ncache_size = 1G\n")
    config = load_config(str(tmp_path))
    assert config.path == str(tmp_path / "mediagoblin_local.ini")
    # No base_dir line: MediaGoblin's spec default, interpolated in the spec, whose data_basedir
    # is always %(here)s/user_dev (test_data_basedir_reaches_only_written_values).
    assert config.stores["public"].params["base_dir"] == f"{tmp_path}/user_dev/media/public"
    assert config.stores["public"].params["base_url"] == "https://m.example.org/m/"
    assert config.options == {"cache_size": "1G"}


def test_cloudfiles_section(tmp_path: Any) -> None:
    (tmp_path / "m.ini").write_text(
        "[storage:publicstore]\nstorage_class = mediagoblin.storage.cloudfiles:CloudFilesStorage\n"
        "cloudfiles_user = test:tester\ncloudfiles_api_key = \"testing\"\ncloudfiles_container = media\n"
        "cloudfiles_host = http://127.0.0.1:1/auth/v1.0\ncloudfiles_use_servicenet = false\n")
    config = load_config(str(tmp_path / "m.ini"))
    params = config.stores["public"].params
    assert params["cloudfiles_api_key"] == "testing" and params["cloudfiles_container"] == "media"
    assert params["storage_class"].endswith("CloudFilesStorage")


def test_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    config = load_config(None)
    assert config.path is None
    assert config.stores["public"].params["base_dir"] == f"{tmp_path}/goblinfs/media/public"
    assert config.stores["queue"].params["base_dir"] == f"{tmp_path}/goblinfs/media/queue"
    assert config.workbench_path == f"{tmp_path}/goblinfs/media/workbench"


@pytest.mark.parametrize(("text", "message"), [
    ("[storage:publicstore]\nstorage_class = nosuch.module:Thing\n", "cannot import nosuch.module"),
    ("[storage:publicstore]\nstorage_class = goblinfs.storage:Nope\n", "has no Nope"),
    ("[storage:publicstore]\nstorage_class = no_colon\n", "module.path:ClassName"),
])
def test_bad_storage_class(tmp_path: Any, text: str, message: str) -> None:
    (tmp_path / "bad.ini").write_text(text)
    config = load_config(str(tmp_path / "bad.ini"))
    with pytest.raises(ConfigError) as exc:
        config.stores["public"].build()
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("text", "message"), [
    ("[storage:publicstore\nbase_dir = x\n", "bad section header"),
    ("[storage:publicstore]\nthis line has no equals\n", "expected 'key = value'"),
    ("[storage:publicstore]\nbase_dir = %(nowhere)s/x\n", "%(nowhere)s is not defined"),
    ("[a]\n[[[b]]]\n", "nested deeper"),
])
def test_syntax_errors(tmp_path: Any, text: str, message: str) -> None:
    (tmp_path / "bad.ini").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path / "bad.ini"))
    assert message in str(exc.value) and str(tmp_path / "bad.ini") in str(exc.value)


def test_unreadable(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.ini"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match="no mediagoblin_local.ini or mediagoblin.ini"):
        load_config(str(tmp_path / "dir"))


def test_storage_system_from_config() -> None:
    store = storage_system_from_config({"base_url": "http://example.org/moodia/",
                                        "base_dir": "a scratch folder/", "garbage_arg": "garbage"})
    assert isinstance(store, BasicFileStorage)
    assert store.base_url == "http://example.org/moodia/" and store.base_dir == "a scratch folder/"
    store = storage_system_from_config({"storage_class": "goblinfs.storage.filestorage:BasicFileStorage",
                                        "base_dir": os.sep})
    assert store.base_dir == os.sep


def test_missing_required_key() -> None:
    from goblinfs.config import StoreConfig

    with pytest.raises(ConfigError, match="base_dir"):
        StoreConfig("public", "storage:publicstore", {"base_url": "/x/"}).build()


# ------------------------------------------------------------------------- MediaGoblin, exactly
#
# A reference reader that follows MediaGoblin's read_mediagoblin_config step by step
# (/work/shared/notes/mediagoblin.md §7 and mediagoblin/init/config.py, facts only): a pre-read
# with ConfigObj(interpolation="ConfigParser"); the spec read with list_values=False and
# _inspec=True; DEFAULT's here/__file__ set on both, the spec's DEFAULT values set as defaults
# of the config's DEFAULT; the config read with configspec, encoding="UTF8" and
# interpolation="ConfigParser"; validated with validate.Validator, preserve_errors=True.
# The spec holds config_spec.ini's lines for the keys below (types and defaults as shipped).

MEDIAGOBLIN_SPEC = '''\
[DEFAULT]
data_basedir = %(here)s/user_dev

[mediagoblin]
workbench_path = string(default="%(data_basedir)s/media/workbench")
crypto_path = string(default="%(data_basedir)s/crypto")
direct_remote_path = string(default="/mgoblin_static/")
email_debug_mode = boolean(default=True)
email_sender_address = string(default="notice@mediagoblin.example.org")
allow_registration = boolean(default=False)
upload_limit = integer(default=None)
max_file_size = integer(default=None)
user_privilege_scheme = string(default="uploader,commenter,reporter")

[storage:publicstore]
storage_class = string(default="mediagoblin.storage.filestorage:BasicFileStorage")
base_dir = string(default="%(data_basedir)s/media/public")
base_url = string(default="/mgoblin_media/")

[storage:queuestore]
storage_class = string(default="mediagoblin.storage.filestorage:BasicFileStorage")
base_dir = string(default="%(data_basedir)s/media/queue")
'''


def mediagoblin_read(config_path: Path, spec_path: Path) -> tuple[Any, Any]:
    """(config, validation result) as MediaGoblin's read_mediagoblin_config makes them."""
    from configobj import ConfigObj
    from configobj.validate import Validator

    path = os.path.abspath(config_path)

    def setup_defaults(target: Any, extra: dict[str, Any] | None = None) -> None:
        target.setdefault("DEFAULT", {})
        target["DEFAULT"]["here"] = os.path.dirname(path)
        target["DEFAULT"]["__file__"] = path
        for key, value in (extra or {}).items():
            target["DEFAULT"].setdefault(key, value)

    pre = ConfigObj(path, interpolation="ConfigParser")
    setup_defaults(pre)
    spec = ConfigObj(str(spec_path), encoding="UTF8", list_values=False, _inspec=True)
    setup_defaults(spec)
    defaults = copy.copy(spec.get("DEFAULT", {}))
    defaults.update(pre["DEFAULT"])
    spec["plugins"] = {}  # no plugin of these configs ships a config_spec.ini here
    setup_defaults(spec, defaults)
    config = ConfigObj(path, configspec=spec, encoding="UTF8", interpolation="ConfigParser")
    setup_defaults(config, defaults)
    return config, config.validate(Validator(), preserve_errors=True)


def mediagoblin_view(config: Any) -> dict[str, Any]:
    """What MediaGoblin hands its stores (storage_system_from_config: dict(section.items())) and workbench."""
    from configobj import Section

    view: dict[str, Any] = {name: {key: value for key, value in config[section].items()
                                   if not isinstance(value, Section)}
                            for name, section in STORES}
    view["workbench_path"] = config["mediagoblin"]["workbench_path"]
    return view


def goblinfs_view(config: Any) -> dict[str, Any]:
    view: dict[str, Any] = {name: dict(config.stores[name].params) for name, _ in STORES}
    view["workbench_path"] = config.workbench_path
    return view


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "config_spec.ini"
    path.write_text(MEDIAGOBLIN_SPEC)
    return path


# Configs MediaGoblin's ConfigObj accepts, each exercising one part of the syntax.
ACCEPTED = {
    "example": EXAMPLE_INI,
    "example_with_default": EXAMPLE_INI.replace("# [DEFAULT]\n# data_basedir = %(here)s/user_dev",
                                                "[DEFAULT]\ndata_basedir = /srv/mg/data"),
    "data_basedir_without_base_dirs": "[DEFAULT]\ndata_basedir = /srv/mg/data\n[mediagoblin]\n",
    "empty": "",
    "comments_only": "# nothing\n   # indented comment\n\n",
    "quoting": (
        "[storage:publicstore]\n"
        "base_dir = \"/srv/with space/public\"   # comment after a quoted value\n"
        "base_url = 'https://m.example.org/a#b/'\n"
        "\"quoted key\" = \"v\"\n"
        "'single key' = x\n"
        "cloudfiles_api_key = \"a,b # not a comment\"\n"
        "empty =\n"
        "empty_quoted = \"\"\n"),
    "hash_starts_comment": "[storage:publicstore]\nbase_url = http://m.example.org/#fragment\n",
    "triple_quoted": (
        "[storage:publicstore]\n"
        "base_dir = '''/srv/tq'''\n"
        "note = \"\"\"first line\n[not a section]\nkey = not a key\nlast\"\"\"  # trailing comment\n"
        "base_url = /after/\n"),
    "percent_not_an_escape": "[storage:publicstore]\nbase_dir = /srv/100%%/public\nbase_url = /50%/\n",
    "here_and_file": "[storage:queuestore]\nbase_dir = %(here)s/q\nsource = %(__file__)s\n",
    "interpolation_chain": (
        "[DEFAULT]\nroot = /srv/mg\ndata_basedir = %(root)s/data\n"
        "[storage:publicstore]\nsub = media\nbase_dir = %(data_basedir)s/%(sub)s/public\n"
        "[mediagoblin]\nworkbench_path = %(root)s/wb\n"),
    "top_level_keys": "root = /srv/top\n[storage:queuestore]\nbase_dir = %(root)s/queue\n",
    "section_default": (
        "[storage:publicstore]\nbase_dir = %(inner)s/public\n"
        "[[DEFAULT]]\ninner = /srv/section-default\n"),
    "indented_and_nested": (
        "  [plugins]\n    [[mediagoblin.plugins.ldap]]\n      [[[server1]]]\n"
        "      LDAP_SERVER_URI = 'ldap://ldap.example.org:389'\n"
        "    [[mediagoblin.plugins.geolocation]]\n"
        "[storage:queuestore]\n    base_dir = /srv/indented/queue\n"),
    "quoted_section_names": "[\"storage:publicstore\"]\nbase_dir = /srv/qs\n[ 'goblinfs' ]\ncache_size = 1G\n",
    "lists_elsewhere": (
        "[jinja2]\nextensions = jinja2.ext.loopcontrols , jinja2.ext.with_\n"
        "[celery]\nCELERY_IMPORTS = a.b, c.d\n[goblinfs]\noptions = ro, allow_other\n"),
    "cloudfiles": (
        "[storage:publicstore]\nstorage_class = mediagoblin.storage.cloudfiles:CloudFilesStorage\n"
        "cloudfiles_host = http://127.0.0.1:1/auth/v1.0\ncloudfiles_user = test:tester\n"
        "cloudfiles_api_key = testing\ncloudfiles_container = media\nsegment_size = 1048576\n"),
    "uses_filled_in_defaults": ("[storage:publicstore]\ncloudfiles_x = %(base_dir)s/x\nbase_url = %(base_dir)s/\n"
                                "[mediagoblin]\nworkbench_path = %(data_basedir)s/wb\n"),
    "default_as_value_unused": "[storage:publicstore]\nDEFAULT = x\nbase_dir = /srv/p\n",
    "keys_as_subsection_of_store": "[storage:publicstore]\nbase_dir = /srv/p\n[[extra]]\nx = 1\n",
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_what_mediagoblin_accepts(tmp_path: Path, spec_path: Path, name: str) -> None:
    """Every config MediaGoblin's ConfigObj reading accepts gives goblinfs exactly its stores."""
    path = tmp_path / "mediagoblin.ini"
    path.write_text(ACCEPTED[name])
    mg_config, result = mediagoblin_read(path, spec_path)
    assert result is True, result  # MediaGoblin accepts it
    assert goblinfs_view(load_config(str(path))) == mediagoblin_view(mg_config)


def test_crlf_and_bom(tmp_path: Path, spec_path: Path) -> None:
    path = tmp_path / "mediagoblin.ini"
    path.write_bytes(b"\xef\xbb\xbf[storage:publicstore]\r\nbase_dir = /srv/crlf\r\nbase_url = /m/ # c\r\n")
    mg_config, result = mediagoblin_read(path, spec_path)
    assert result is True
    config = load_config(str(path))
    assert goblinfs_view(config) == mediagoblin_view(mg_config)
    assert config.stores["public"].params["base_dir"] == "/srv/crlf"
    assert config.stores["public"].params["base_url"] == "/m/"


def test_values_as_mediagoblin_reads_them(tmp_path: Path) -> None:
    """The same configs, with the values written out (not only compared with the reference)."""
    def read(name: str) -> Any:
        (tmp_path / name).mkdir()
        path = tmp_path / name / "mediagoblin.ini"
        path.write_text(ACCEPTED[name])
        return load_config(str(path))

    here = str(tmp_path / "example_with_default")
    config = read("example_with_default")
    assert config.stores["public"].params["base_dir"] == "/srv/mg/data/media/public"
    assert config.stores["queue"].params["base_dir"] == "/srv/mg/data/media/queue"
    assert config.workbench_path == f"{here}/user_dev/media/workbench"
    params = read("quoting").stores["public"].params
    assert params["base_dir"] == "/srv/with space/public" and params["base_url"] == "https://m.example.org/a#b/"
    assert params["quoted key"] == "v" and params["single key"] == "x"
    assert params["cloudfiles_api_key"] == "a,b # not a comment"
    assert params["empty"] == "" and params["empty_quoted"] == ""
    assert read("hash_starts_comment").stores["public"].params["base_url"] == "http://m.example.org/"
    params = read("triple_quoted").stores["public"].params
    assert params["base_dir"] == "/srv/tq" and params["base_url"] == "/after/"
    assert params["note"] == "first line\n[not a section]\nkey = not a key\nlast"
    params = read("percent_not_an_escape").stores["public"].params
    assert params["base_dir"] == "/srv/100%%/public" and params["base_url"] == "/50%/"
    params = read("here_and_file").stores["queue"].params
    here = str(tmp_path / "here_and_file")
    assert params["base_dir"] == f"{here}/q" and params["source"] == f"{here}/mediagoblin.ini"
    config = read("interpolation_chain")
    assert config.stores["public"].params["base_dir"] == "/srv/mg/data/media/public"
    assert config.workbench_path == "/srv/mg/wb"
    assert read("top_level_keys").stores["queue"].params["base_dir"] == "/srv/top/queue"
    assert read("section_default").stores["public"].params["base_dir"] == "/srv/section-default/public"
    assert read("indented_and_nested").stores["queue"].params["base_dir"] == "/srv/indented/queue"
    config = read("quoted_section_names")
    assert config.stores["public"].params["base_dir"] == "/srv/qs" and config.options == {"cache_size": "1G"}
    assert read("lists_elsewhere").options == {"options": "ro,allow_other"}
    config = read("uses_filled_in_defaults")
    base = f"{tmp_path}/uses_filled_in_defaults/user_dev"
    assert config.stores["public"].params["cloudfiles_x"] == f"{base}/media/public/x"
    assert config.stores["public"].params["base_url"] == f"{base}/media/public/"
    assert config.workbench_path == f"{base}/wb"
    assert read("keys_as_subsection_of_store").stores["public"].params == {
        "base_dir": "/srv/p", "storage_class": "mediagoblin.storage.filestorage:BasicFileStorage",
        "base_url": "/mgoblin_media/"}


def test_data_basedir_reaches_only_written_values(tmp_path: Path, spec_path: Path) -> None:
    """[DEFAULT] data_basedir moves what the file writes with %(data_basedir)s, not the spec defaults.

    MediaGoblin interpolates a spec default inside the spec, whose DEFAULT keeps its own
    data_basedir (%(here)s/user_dev): the file's data_basedir is only set where the spec has
    none.  So the example config's explicit base_dir lines move, the workbench does not.
    """
    path = tmp_path / "mediagoblin.ini"
    path.write_text(ACCEPTED["data_basedir_without_base_dirs"])
    mg_config, _ = mediagoblin_read(path, spec_path)
    config = load_config(str(path))
    expected = {"public": f"{tmp_path}/user_dev/media/public", "queue": f"{tmp_path}/user_dev/media/queue"}
    assert {name: config.stores[name].params["base_dir"] for name in expected} == expected
    assert config.workbench_path == f"{tmp_path}/user_dev/media/workbench"
    assert mg_config["storage:publicstore"]["base_dir"] == expected["public"]


# Each kind of error: (config text, line of the error, words of the one-line message,
# whether MediaGoblin's reading refuses it too).
ERRORS = {
    "bad_section_header": ("[DEFAULT]\ndata_basedir = /tmp\n[storage:publicstore\nbase_dir = /tmp\n", 3,
                           ["bad section header", "[storage:publicstore"], True),
    "unbalanced_brackets": ("[mediagoblin]\n[storage:publicstore]]\n", 2,
                            ["brackets do not match"], True),
    "too_nested": ("[a]\n[[[b]]]\n", 2, ["nested deeper than its parent", "[[[b]]]"], True),
    "duplicate_key": ("[storage:publicstore]\nbase_dir = /a\nbase_url = /u/\nbase_dir = /b\n", 4,
                      ["duplicate key in [storage:publicstore]", "first at line 2", "base_dir = /b"], True),
    "duplicate_section": ("[storage:publicstore]\nbase_dir = /a\n[plugins]\n[[p]]\n[storage:publicstore]\n", 5,
                          ["duplicate section", "first at line 1"], True),
    "duplicate_subsection": ("[plugins]\n[[p]]\n[[q]]\n[[p]]\n", 4,
                             ["duplicate section", "first at line 2", "[[p]]"], True),
    "no_equals": ("[storage:publicstore]\nthis line has no equals\n", 2, ["expected 'key = value'"], True),
    "semicolon_comment": ("; not a comment for ConfigObj\n[mediagoblin]\n", 1, ["expected 'key = value'"], True),
    "unterminated_triple_quote": ("[storage:publicstore]\nbase_url = '''/a\nb\n", 2,
                                  ["unterminated triple-quoted value"], True),
    "bad_quoting": ("[storage:publicstore]\nbase_dir = \"/a\" junk\n", 2, ["badly quoted value"], True),
    "missing_interpolation": ("[storage:publicstore]\nbase_dir = %(nowhere)s/x\n", 2,
                              ["[storage:publicstore] base_dir", "%(nowhere)s is not defined"], True),
    "missing_interpolation_via_default": (
        "[DEFAULT]\ndata_basedir = %(nope)s/x\n[storage:queuestore]\nbase_dir = %(data_basedir)s/q\n", 4,
        ["[storage:queuestore] base_dir", "%(nope)s is not defined", "referred to at line 2"], True),
    "error_after_multiline_value": (
        "[storage:publicstore]\nbase_dir = %(nowhere)s\nnote = \"\"\"\nbase_dir = inside\nbase_dir = end\"\"\"\n", 2,
        ["%(nowhere)s is not defined"], True),
    "quoted_key": ("[storage:publicstore]\n\"base_url\" = %(nowhere)s\n", 2, ["base_url", "%(nowhere)s"], True),
    "duplicate_quoted_key": ("[storage:queuestore]\n'base_dir' = /a\nbase_dir = /b\n", 3,
                             ["duplicate key in [storage:queuestore]", "first at line 2"], True),
    # Validation fills base_dir before base_url (spec order): base_url's default is not there yet.
    "default_not_filled_yet": ("[storage:publicstore]\nbase_dir = %(base_url)s/x\n", 2,
                               ["[storage:publicstore] base_dir", "%(base_url)s is not defined"], True),
    "interpolation_loop": ("[DEFAULT]\na = %(b)s\nb = %(a)s\n[storage:queuestore]\nbase_dir = %(a)s\n", 5,
                           ["interpolation loop", "[storage:queuestore] base_dir"], True),
    "self_reference": ("[mediagoblin]\nworkbench_path = %(workbench_path)s/x\n", 2,
                       ["interpolation loop", "%(workbench_path)s"], True),
    "list_in_spec_key": ("[storage:publicstore]\nbase_dir = /a, /b\n", 2,
                         ["base_dir", "a list of 2 values", "quote it"], True),
    # MediaGoblin would hand the storage class a Python list here; goblinfs wants one string.
    "list_in_store_key": ("[storage:publicstore]\ncloudfiles_api_key = ab,cd\n", 2,
                          ["cloudfiles_api_key", "a list of 2 values"], False),
    "store_section_as_value": ("storage:publicstore = /srv\n", 1, ["must be a [storage:publicstore] section"], True),
    "spec_key_as_section": ("[storage:publicstore]\n[[base_dir]]\nx = 1\n", 2,
                            ["base_dir must be a value", "[[base_dir]]"], True),
    "default_as_value_in_spec_key": ("[storage:publicstore]\nDEFAULT = x\nbase_dir = %(data_basedir)s/p\n", 2,
                                     ["[storage:publicstore] DEFAULT must be a [[DEFAULT]] section"], True),
    "default_as_value_in_store_key": ("[storage:queuestore]\nDEFAULT = x\ncloudfiles_x = %(here)s\n", 2,
                                      ["[storage:queuestore] DEFAULT must be a [[DEFAULT]] section"], True),
    "goblinfs_section_as_value": ("goblinfs = ro\n", 1, ["must be a [goblinfs] section"], False),
    "goblinfs_missing_interpolation": ("[goblinfs]\ncache_dir = %(nowhere)s\n", 2,
                                       ["[goblinfs] cache_dir", "%(nowhere)s is not defined"], False),
}


def mediagoblin_refuses(path: Path, spec_path: Path) -> bool:
    """Whether MediaGoblin's reading fails: an exception, or validation errors (ImproperlyConfigured)."""
    from configobj import flatten_errors

    try:
        config, result = mediagoblin_read(path, spec_path)
        _ = mediagoblin_view(config)
    except Exception:  # noqa: BLE001 - any failure of the reference counts as refusing
        return True
    return any(error is not False for _, _, error in flatten_errors(config, result))


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_kinds(tmp_path: Path, spec_path: Path, name: str) -> None:
    """Each error is one line: file:line: what is wrong."""
    text, line, words, mediagoblin_too = ERRORS[name]
    path = tmp_path / "bad.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    message = str(exc.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert mediagoblin_refuses(path, spec_path) is mediagoblin_too


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[mediagoblin]\nemail_sender_address = caf\xe9@example.org\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text") as exc:
        load_config(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["duplicate_key", "interpolation_loop", "list_in_spec_key"])
def test_cli_prints_one_line(tmp_path: Path, name: str) -> None:
    """At the CLI (goblinfs gc, which only reads the config) an error is one line, no traceback."""
    text, line, words, _ = ERRORS[name]
    path = tmp_path / "bad.ini"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "goblinfs", "gc", str(path), "--dry-run"],
                            capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"goblinfs: {path}:{line}: "), result.stderr
    assert all(word in lines[0] for word in words), result.stderr


def test_embedded_default_stores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x%y"))
    config = load_config(None)
    base = f"{tmp_path}/x%y/goblinfs/media"
    assert config.stores["public"].params == {
        "storage_class": "mediagoblin.storage.filestorage:BasicFileStorage",
        "base_dir": f"{base}/public", "base_url": "/mgoblin_media/"}
    assert config.stores["queue"].params["base_dir"] == f"{base}/queue" and config.options == {}


def test_readme_examples(tmp_path: Path, spec_path: Path) -> None:
    """The README's ini examples are configs MediaGoblin reads as goblinfs does (no ';' comments)."""
    text = (ROOT / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```ini\n")[1:]]
    assert blocks, "no ```ini block in README.md"
    for number, block in enumerate(blocks):
        path = tmp_path / f"readme{number}.ini"
        path.write_text(block)
        mg_config, result = mediagoblin_read(path, spec_path)
        assert result is True, result
        config = load_config(str(path))
        assert goblinfs_view(config) == mediagoblin_view(mg_config)
        assert not any(";" in value for store in config for value in store.params.values()), config
