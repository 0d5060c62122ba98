"""Atomic file writes (tinyllm.atomic): the old file or the new one, whole, never a mix; torch-free."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from tinyllm import atomic
from tinyllm.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_replace_the_file_and_create_its_folder(tmp_path):
    target = tmp_path / "new" / "dir" / "f.txt"
    atomic_write_text(target, "first ü\n")
    assert target.read_text(encoding="utf-8") == "first ü\n"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    atomic_write_json(tmp_path / "d.json", {"b": [1, 2], "ä": None})
    text = (tmp_path / "d.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"b": [1, 2], "ä": None} and "ä" in text and text.endswith("}\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]  # no temporary file left


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_the_file_gets_a_plain_opens_mode_not_a_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_importing_it_loads_no_torch():
    code = "import sys, tinyllm.atomic; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert r.stdout.strip() == "False"
