"""The Data tab's work (tinyllm.gui.datafile): statistics of a text file, keeping an upload, cleaning WikiText.
No gradio needed."""

from __future__ import annotations

import pytest

from tinyllm.errors import UserError
from tinyllm.gui.datafile import clean_wikitext, default_clean_path, keep_upload, text_stats


def test_text_stats(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("héllo\nwörld\n", encoding="utf-8")
    s = text_stats(p, preview_chars=4)
    assert (s.size_bytes, s.chars, s.lines, s.vocab, s.preview) == (14, 12, 2, 9, "héll")
    assert "12" in s.markdown() and not s.partial
    (tmp_path / "bad.txt").write_bytes(b"ok\xff")
    with pytest.raises(UserError, match="not UTF-8"):
        text_stats(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    for bad, msg in ((tmp_path / "empty.txt", "empty"), (tmp_path, "folder"), (tmp_path / "no.txt", "not found")):
        with pytest.raises(UserError, match=msg):
            text_stats(bad)


def test_upload_is_kept_without_overwriting(tmp_path):
    src = tmp_path / "up.txt"
    src.write_text("a")
    first = keep_upload(src, tmp_path / "data")
    src.write_text("b")
    second = keep_upload(src, tmp_path / "data")
    assert first != second and first.read_text() == "a" and second.read_text() == "b"


def test_clean_wikitext_into_a_new_file(tmp_path):
    src = tmp_path / "wiki.train.tokens"
    src.write_text(" = Title = \n \n The state @-@ of @-@ the @-@ art is 1 @,@ 000 . \n", encoding="utf-8")
    dest = default_clean_path(src)
    assert dest.name == "wiki.train.clean.txt"
    assert "cleaned" in clean_wikitext(src, dest)
    assert dest.read_text() == "The state-of-the-art is 1,000 .\n"
    with pytest.raises(UserError, match="new file"):
        clean_wikitext(dest, dest)
    with pytest.raises(UserError, match="already exists"):
        clean_wikitext(src, dest)
    dest.write_text("old")
    assert "cleaned" in clean_wikitext(src, dest, replace=True) and dest.read_text().startswith("The state")
    with pytest.raises(UserError, match="give the cleaned file a path"):
        clean_wikitext(src, " ")


def test_a_large_file_is_counted_from_its_beginning_and_says_so(tmp_path, monkeypatch):
    from tinyllm.gui import datafile

    monkeypatch.setattr(datafile, "CHUNK", 64)
    monkeypatch.setattr(datafile, "FULL_SCAN_BYTES", 128)
    p = tmp_path / "big.txt"
    p.write_text("ab\n" * 200, encoding="utf-8")  # 600 bytes, only the first 128 are read
    s = text_stats(p)
    assert s.partial and s.chars == 128 and s.vocab == 3
    assert s.est_chars == 600 and "≈ 600" in s.markdown() and "counted in the first" in s.markdown()


def test_human_size():
    from tinyllm.gui.datafile import human_size

    assert [human_size(n) for n in (0, 1023, 1024, 5 << 20, 3 << 30, 5000 << 30)] == \
        ["0 B", "1,023 B", "1.0 KB", "5.0 MB", "3.0 GB", "5,000.0 GB"]
