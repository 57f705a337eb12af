"""MediaGoblin config files read unchanged, MediaGoblin's defaults, the embedded default, errors."""

from __future__ import annotations

import os
from typing import Any

import pytest

from goblinfs.config import ConfigError, load_config
from goblinfs.storage import storage_system_from_config
from goblinfs.storage.filestorage import BasicFileStorage

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
    assert config.stores["public"].params["base_dir"] == "/srv/media/media/public"
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
