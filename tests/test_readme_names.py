"""The README's names table, checked row by row on a real mount (names=clean and names=strict)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from .mountutil import Mounted, write_local_config

README = Path(__file__).resolve().parent.parent / "README.md"


def names_table() -> list[tuple[list[str], list[str] | None, str]]:
    """(names created, names stored under clean or None for an error, strict's outcome) per create row."""
    text = README.read_text()
    table = text[text.index("| you do | `names=clean` (default) | `names=strict` |"):]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        you_do, clean, strict = (cell.strip() for cell in line.strip("|").split("|"))
        if you_do.startswith("create "):
            created = re.findall(r"`([^`]+)`", you_do)
        elif you_do.startswith("`cp "):
            created = [re.search(r'"public/([^"]+)"', you_do).group(1)]  # type: ignore[union-attr]
        else:
            continue  # length limits and foreign objects have their own tests
        stored = re.findall(r"`([^`]+)`", clean.split(";")[0]) if clean.startswith("stored as") else None
        assert stored is None or len(stored) == len(created), line
        assert stored is not None or clean.startswith("EINVAL"), line
        rows.append((created, stored, strict))
    return rows


def test_the_table_is_read() -> None:
    rows = names_table()
    assert len(rows) >= 4
    assert any(stored is None for _c, stored, _s in rows) and any(stored for _c, stored, _s in rows)


@pytest.mark.parametrize("mode", ["clean", "strict"])
def test_names_table_holds(tmp_path: Path, mode: str) -> None:
    config = write_local_config(tmp_path / "site")
    public = tmp_path / "site" / "data" / "media" / "public"
    with Mounted(config, tmp_path / "mnt", options=f"names={mode}") as mounted:
        for created, stored, strict in names_table():
            for i, name in enumerate(created):
                target = mounted.mountpoint / "public" / name
                expect_error = stored is None or (mode == "strict" and name != stored[i])
                if expect_error:
                    want = errno.EINVAL if (stored is None or mode == "strict") else None
                    if mode == "strict":
                        assert strict.startswith("EINVAL"), strict
                    with pytest.raises(OSError) as info:
                        target.write_bytes(b"data")
                    assert info.value.errno == want, (name, info.value)
                    continue
                assert stored is not None
                target.write_bytes(name.encode())
                assert (public / stored[i]).read_bytes() == name.encode(), (name, sorted(os.listdir(public)))
                assert target.read_bytes() == name.encode()  # the typed name still finds it
        left = sorted(os.listdir(public))
    expected = sorted({s for _c, stored, _s in names_table() for s in stored or []}) if mode == "clean" else []
    if mode == "strict":  # only names that were already clean are there
        expected = sorted({n for created, stored, _s in names_table() for i, n in enumerate(created)
                           if stored and stored[i] == n})
    assert left == expected
