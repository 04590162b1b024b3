"""Atomic writes: the file appears whole, and with the mode any file the process creates would get (umask)."""
from __future__ import annotations

import os
import stat

import pytest

from compress.io import atomic_write_json, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_keep_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "report.md", "# report\n")
        js = atomic_write_json(tmp_path / "sub" / "report.json", {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives: the reference mode
    finally:
        os.umask(old)
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE(text.stat().st_mode) == expected  # mkstemp alone would leave 0600
    assert stat.S_IMODE(js.stat().st_mode) == expected
    assert text.read_text() == "# report\n"


def test_atomic_write_keeps_an_existing_files_mode(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "new"
