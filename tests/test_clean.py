"""clean_listy_filepath and the errors, exactly as MediaGoblin."""

from __future__ import annotations

import builtins

import pytest

from goblinfs import storage
from goblinfs.storage import (
    Error,
    ExactPath,
    InvalidFilepath,
    NoWebServing,
    StorageInterface,
    clean_listy_filepath,
    resolve_components,
)


def test_mediagoblin_examples() -> None:
    assert clean_listy_filepath(["dir1", "dir2", "linooks.jpg"]) == ["dir1", "dir2", "linooks.jpg"]
    assert clean_listy_filepath(["dir1/", "foo/../nasty", "linker.jpg"]) == ["dir1", "foo_.._nasty", "linker.jpg"]
    assert clean_listy_filepath(["/dir1/", "foo/../nasty", "linooks.jpg"]) == ["dir1", "foo_.._nasty", "linooks.jpg"]
    assert clean_listy_filepath(["../../../etc/", "passwd"]) == ["etc", "passwd"]
    with pytest.raises(InvalidFilepath):
        clean_listy_filepath(["../../", "linker.jpg"])


@pytest.mark.parametrize(("raw", "clean"), [
    ("My cool movie.mov", "My_cool_movie.mov"),
    ("../../../etc/passwd", "etc_passwd"),
    ("i contain cool ümläuts.txt", "i_contain_cool_umlauts.txt"),
    (".hidden", "hidden"),
    ("__init__.py", "init__.py"),
    ("a  b\tc\nd", "a_b_c_d"),
    ("日本語.jpg", "jpg"),
    ("ﬁle.txt", "file.txt"),
    ("a:b*c?.txt", "abc.txt"),
    ("-rf", "-rf"),
    ("résumé.PDF", "resume.PDF"),
    ("CON", "CON"),
])
def test_secure_filename_table(raw: str, clean: str) -> None:
    assert clean_listy_filepath([raw]) == [clean]


@pytest.mark.parametrize("raw", ["..", ".", "", "   ", "日本語", "../../"])
def test_cleans_to_nothing(raw: str) -> None:
    with pytest.raises(InvalidFilepath) as exc:
        clean_listy_filepath(["ok", raw])
    assert str(exc.value) == "A filename component could not be resolved into a usable name."


def test_tuples_and_new_lists() -> None:
    original = ("a b", "c")
    result = clean_listy_filepath(original)
    assert result == ["a_b", "c"] and isinstance(result, list)
    assert clean_listy_filepath([]) == []


def test_error_classes() -> None:
    assert issubclass(InvalidFilepath, Error) and issubclass(NoWebServing, Error)
    assert issubclass(storage.NotImplementedError, Error)
    assert not issubclass(storage.NotImplementedError, builtins.NotImplementedError)
    with pytest.raises(storage.NotImplementedError) as exc:
        StorageInterface().file_exists(["x"])
    assert str(exc.value) == "This feature not implemented in this storage API implementation."
    assert str(NoWebServing()) == "base_url not set, cannot provide file urls"


def test_exact_paths_are_validated_not_cleaned() -> None:
    assert resolve_components(ExactPath(["My Photo.jpg"])) == ["My Photo.jpg"]
    assert resolve_components(["My Photo.jpg"]) == ["My_Photo.jpg"]
    for bad in ["..", ".", "", "a/b", "x\0"]:
        with pytest.raises(InvalidFilepath):
            resolve_components(ExactPath([bad]))
    with pytest.raises(InvalidFilepath):
        resolve_components("a/string")  # type: ignore[arg-type]
