"""Reading the training text: every way a file can be unusable, streaming in safe chunks, the source's stamp;
a folder or glob pattern of files, and every way it can be unusable."""

from __future__ import annotations

import pytest

from tinyllm.errors import UserError
from tinyllm.text_source import check_text_file, iter_text_chunks, open_source, read_text, source_stamp


def test_read_text_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="is a directory"):
        read_text(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        read_text(empty)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf" + b"\xe9 ok")
    with pytest.raises(UserError, match="byte offset 3"):
        read_text(bad)


def test_text_chunks_join_to_the_text_and_cut_safely(text_file):
    text = text_file.read_bytes().decode("utf-8")
    pieces = list(iter_text_chunks(text_file, chunk_bytes=97))  # cuts inside multi-byte characters
    assert len(pieces) > 100 and "".join(pieces) == text
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert b[0] in " \t\n\r\x0b\x0c" and not a[-1].isspace()
    limited = "".join(iter_text_chunks(text_file, chunk_bytes=97, limit_bytes=1000))
    assert len(limited.encode("utf-8")) <= 1000 and text.startswith(limited) and len(limited) > 900


def test_streaming_reports_the_real_offset_of_a_bad_byte(tmp_path):
    p = tmp_path / "bad.txt"
    good = "é" * 100  # 200 bytes of two-byte characters
    p.write_bytes(good.encode() + b"ok \xff tail")
    with pytest.raises(UserError, match=r"invalid byte 0xff at byte offset 203"):
        list(iter_text_chunks(p, chunk_bytes=7))  # blocks end mid-character: the held-back byte counts
    with pytest.raises(UserError, match=r"invalid byte 0xff at byte offset 203"):
        read_text(p)


def test_errors_name_the_flag_and_the_stamp_identifies_the_file(text_file, tmp_path):
    with pytest.raises(UserError, match="^--tokenizer_path: file not found"):
        check_text_file(tmp_path / "nope.txt", flag="--tokenizer_path")
    assert check_text_file(str(text_file)) == text_file
    st = text_file.stat()
    assert source_stamp(str(text_file)) == {"path": str(text_file.resolve()), "size": st.st_size,
                                            "mtime_ns": st.st_mtime_ns}


def make_tree(root, files: dict[str, bytes | str]):
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def test_a_folder_is_its_text_files_recursively_in_sorted_path_order(tmp_path):
    root = make_tree(tmp_path / "notes", {
        "b.txt": "b", "a/z.md": "z", "a/b/c.txt": "c", "A.TXT": "upper", "a.txt": "a", "empty.md": "",
        "pic.png": b"\x89PNG", "data.csv": "1,2", "more/x.csv": "3", "README": "no suffix",
    })
    (tmp_path / "notes" / "nothing").mkdir()
    src = open_source(root)
    assert src.kind == "folder" and src.is_documents
    assert [f.relative_to(root).as_posix() for f in src.files] == \
        ["A.TXT", "a/b/c.txt", "a/z.md", "a.txt", "b.txt", "empty.md"]
    assert [f.name for f in src.text_files] == ["A.TXT", "c.txt", "z.md", "a.txt", "b.txt"]  # empty: no text
    assert src.ignored == {".png": 1, ".csv": 2, "": 1}
    msg = src.summary()
    assert msg is not None and "6 text files (1 empty)" in msg
    assert "ignored 4 other files (2 .csv, 1 without suffix, 1 .png)" in msg and str(root) in msg
    one = open_source(root / "a.txt")  # a file stays a file: no summary, the stamp of old
    assert one.kind == "file" and one.summary() is None and one.stamp() == source_stamp(str(root / "a.txt"))


def test_a_glob_pattern_selects_text_files_likewise(tmp_path, monkeypatch):
    make_tree(tmp_path / "notes", {"x/2.txt": "2", "x/1.txt": "1", "y/3.md": "3", "y/4.csv": "4", "top.txt": "t"})
    monkeypatch.chdir(tmp_path)
    src = open_source("notes/**/*.txt")
    assert src.kind == "glob" and [f.as_posix() for f in src.files] == ["notes/top.txt", "notes/x/1.txt",
                                                                        "notes/x/2.txt"]
    src = open_source("notes/y/*")
    assert [f.name for f in src.files] == ["3.md"] and src.ignored == {".csv": 1}
    stamp = src.stamp()
    assert stamp["kind"] == "glob" and stamp["path"] == str(tmp_path / "notes" / "y" / "*")
    assert stamp["files"] == [source_stamp(str(tmp_path / "notes" / "y" / "3.md"))]


@pytest.mark.skipif(not hasattr(__import__("os"), "symlink"), reason="needs symbolic links")
def test_a_pattern_reads_each_file_once_through_linked_folders(tmp_path, monkeypatch):
    """`**` follows links to folders: a file reached under two names, or through a link loop, is read once."""
    import os

    root = make_tree(tmp_path / "notes", {"a/deep/e.txt": "e", "b/f.txt": "f"})
    try:
        os.symlink(root / "a", root / "b" / "link")  # a/deep/e.txt again as b/link/deep/e.txt
        os.symlink(root / "b", root / "b" / "loop")  # b/loop/loop/... as far as glob goes
    except OSError:
        pytest.skip("symbolic links are not allowed here")
    monkeypatch.chdir(tmp_path)
    src = open_source("notes/**/*.txt")
    assert [f.as_posix() for f in src.files] == ["notes/a/deep/e.txt", "notes/b/f.txt"]


def test_a_folders_stamp_records_every_file(tmp_path):
    root = make_tree(tmp_path / "notes", {"a.txt": "aa", "b/c.md": "ccc", "skip.bin": "x"})
    stamp = open_source(root).stamp()
    assert stamp["kind"] == "folder" and stamp["path"] == str(root.resolve())
    assert stamp["files"] == [source_stamp(str(root / "a.txt")), source_stamp(str(root / "b" / "c.md"))]
    assert [f["size"] for f in stamp["files"]] == [2, 3]


def test_unusable_folders_and_patterns_name_the_path_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^--data_path: the folder .*empty holds no files; put .txt or .md"):
        open_source(tmp_path / "empty")
    make_tree(tmp_path / "other", {"a.pdf": "x", "b/c.docx": "y"})
    with pytest.raises(UserError, match=r"folder .*other holds no .txt or .md file \(2 other files ignored\)"):
        open_source(tmp_path / "other")
    make_tree(tmp_path / "blank", {"a.txt": "", "b.md": ""})
    with pytest.raises(UserError, match=r"every .txt and .md file of .*blank is empty"):
        open_source(tmp_path / "blank")
    with pytest.raises(UserError, match=r"^--data_path: the pattern '.*nope/\*\*/\*.txt' matches no file; .*quote"):
        open_source(str(tmp_path / "nope" / "**" / "*.txt"))
    with pytest.raises(UserError, match=r"matches 2 files but no .txt or .md file"):
        open_source(str(tmp_path / "other" / "**" / "*"))
    with pytest.raises(UserError, match="--data_path: file not found"):  # no glob character: a missing file
        open_source(tmp_path / "missing.txt")
    # A file that is not UTF-8 inside a folder: named, with the byte offset, when it is read.
    root = make_tree(tmp_path / "mixed", {"a.txt": "fine", "sub/latin1.txt": b"caf\xe9"})
    bad = [f for f in open_source(root).files if f.name == "latin1.txt"][0]
    with pytest.raises(UserError, match=r"latin1.txt is not UTF-8 \(invalid byte 0xe9 at byte offset 3\)"):
        list(iter_text_chunks(bad))
