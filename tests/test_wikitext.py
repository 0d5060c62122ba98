"""Tests for tinyllm.wikitext: the WikiText cleaner, its atomic file writing and its CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tinyllm import wikitext
from tinyllm.wikitext import clean_file, clean_lines, main

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2_valid.tokens.txt"

# Written independently of the module's own heading check, so a bug there cannot hide itself.
HEADING_LIKE = re.compile(r"(= )+\S.*( =)+")
SIZES_LINE = re.compile(
    r"^.+: \d+(\.\d\d)? (B|KiB|MiB|GiB) -> .+: \d+(\.\d\d)? (B|KiB|MiB|GiB) \(\d+\.\d%\)$"
)


def clean(text: str, keep_headings: bool = False) -> str:
    return "".join(clean_lines(text.splitlines(keepends=True), keep_headings=keep_headings))


# --- headings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "heading",
    [
        " = Homarus gammarus = \n",
        " = = Description = = \n",
        " = = = Early life = = = \n",
        " = = = = Deep level = = = = \n",
        "= Title =",  # no WikiText padding and no newline
    ],
)
def test_heading_lines_are_dropped_at_every_level(heading: str) -> None:
    assert "".join(clean_lines([" Before . \n", heading, " After . \n"])) == "Before .\nAfter .\n"


@pytest.mark.parametrize(
    ("heading", "title"),
    [
        (" = Homarus gammarus = \n", "Homarus gammarus"),
        (" = = Description = = \n", "Description"),
        (" = = = Early life = = = \n", "Early life"),
        (" = = Life cycle = = \n", "Life cycle"),
    ],
)
def test_keep_headings_keeps_the_bare_title(heading: str, title: str) -> None:
    text = f" Before . \n \n{heading} \n After . \n"
    assert clean(text, keep_headings=True) == f"Before .\n\n{title}\n\nAfter .\n"
    assert clean(text) == "Before .\n\nAfter .\n"


def test_keep_headings_also_fixes_at_tokens_in_titles() -> None:
    assert clean(" = = Post @-@ war years = = \n", keep_headings=True) == "Post-war years\n"


@pytest.mark.parametrize(
    "line",
    [
        "= = Unbalanced =",
        "= Unbalanced = =",
        "x = y + z",
        "= =",
        "==",
        "=",
        "= = = =",
    ],
)
def test_lines_that_are_not_balanced_headings_are_kept(line: str) -> None:
    assert clean(f" {line} \n") == f"{line}\n"


# --- @-@ tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1 @,@ 000", "1,000"),
        ("1 @,@ 000 @,@ 000 people", "1,000,000 people"),
        ("0 @.@ 7 kg", "0.7 kg"),
        ("state @-@ of @-@ the @-@ art", "state-of-the-art"),
        ("a 3 @.@ 5 @-@ inch gun , 1 @,@ 200 rounds", "a 3.5-inch gun , 1,200 rounds"),
    ],
)
def test_at_tokens_are_rejoined(raw: str, expected: str) -> None:
    assert clean(f" {raw} \n") == f"{expected}\n"


def test_other_text_is_left_alone() -> None:
    line = 'He said " it <unk> don \'t work " , and left ; email a@b.c'
    assert clean(f" {line} \n") == f"{line}\n"


# --- blank lines ---------------------------------------------------------------------------------


def test_runs_of_blank_lines_collapse_to_one() -> None:
    text = " \n\n \t \n A . \n \n\n  \n\r\n B . \n C . \n \n \n"
    assert clean(text) == "A .\n\nB .\nC .\n"


def test_output_never_starts_or_ends_with_blank_lines() -> None:
    out = clean(" \n \n = T = \n \n First . \n \n = = S = = \n \n Last . \n \n \n")
    assert out == "First .\n\nLast .\n"


def test_every_output_line_ends_in_a_single_newline() -> None:
    out = list(clean_lines(["A", "B\r\n", "  ", "C\n"]))
    assert out == ["A\n", "B\n", "\n", "C\n"]


def test_only_headings_and_blanks_give_empty_output() -> None:
    assert clean(" \n = T = \n \n = = S = = \n") == ""
    assert list(clean_lines([])) == []


# --- streaming ---------------------------------------------------------------------------------


def _lines_then_explode(lines: list[str]) -> Iterator[str]:
    yield from lines
    raise AssertionError("clean_lines read past the line it needed")


def test_clean_lines_yields_before_input_is_exhausted() -> None:
    out = clean_lines(_lines_then_explode([" \n", " = Title = \n", " \n", " First line . \n"]))
    assert next(out) == "First line .\n"


def test_clean_lines_reads_nothing_until_iterated() -> None:
    out = clean_lines(_lines_then_explode([]))  # must not raise here
    with pytest.raises(AssertionError, match="read past"):
        next(out)


def test_clean_lines_handles_an_endless_input() -> None:
    def endless() -> Iterator[str]:
        n = 0
        while True:
            n += 1
            yield f" line {n} @-@ x \n"
            yield " \n"

    out = clean_lines(endless())
    first = [next(out) for _ in range(5)]
    assert first == ["line 1-x\n", "\n", "line 2-x\n", "\n", "line 3-x\n"]


def test_clean_file_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    src = tmp_path / "big.tokens"
    paragraph = (
        " = = Section = = \n \n" + " Some text , with 1 @,@ 000 words and a 3 @.@ 5 ratio . \n" * 20 + " \n"
    )
    with open(src, "w", encoding="utf-8") as f:
        for _ in range(2500):
            f.write(paragraph)
    assert src.stat().st_size > 2_000_000

    tracemalloc.start()
    try:
        bytes_in, bytes_out = clean_file(src, tmp_path / "big.txt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bytes_in == src.stat().st_size
    assert 0 < bytes_out < bytes_in
    # Reading the whole file at once would need well over 2 MB.
    assert peak < 500_000, f"peak traced memory {peak} bytes suggests the file is not streamed"


# --- clean_file ---------------------------------------------------------------------------------


def test_clean_file_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "in.tokens"
    src.write_bytes(" \n = T = \n \n Café costs 1 @,@ 000 € . \r\n \n \n Next . \n".encode())
    dst = tmp_path / "out.txt"
    bytes_in, bytes_out = clean_file(src, dst)
    assert dst.read_bytes() == "Café costs 1,000 € .\n\nNext .\n".encode()
    assert (bytes_in, bytes_out) == (src.stat().st_size, dst.stat().st_size)


def test_clean_file_keep_headings(tmp_path: Path) -> None:
    src = tmp_path / "in.tokens"
    src.write_text(" = T = \n \n Body . \n", encoding="utf-8")
    clean_file(src, tmp_path / "out.txt", keep_headings=True)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "T\n\nBody .\n"


def test_clean_file_replaces_an_existing_output(tmp_path: Path) -> None:
    src = tmp_path / "in.tokens"
    src.write_text(" New . \n", encoding="utf-8")
    dst = tmp_path / "out.txt"
    dst.write_text("old contents that are longer than the new ones\n", encoding="utf-8")
    clean_file(src, dst)
    assert dst.read_text(encoding="utf-8") == "New .\n"


def _dir_listing(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def test_invalid_utf8_raises_and_creates_no_output(tmp_path: Path) -> None:
    src = tmp_path / "latin1.tokens"
    src.write_bytes(b" Good line . \n" * 5000 + " caf\xe9 \n".encode("latin-1"))
    dst = tmp_path / "out.txt"
    with pytest.raises(ValueError, match=r"latin1\.tokens.*not valid UTF-8.*line 5001"):
        clean_file(src, dst)
    assert not dst.exists()
    assert _dir_listing(tmp_path) == {"latin1.tokens"}, "a temporary file was left behind"


def test_failure_leaves_an_existing_output_untouched(tmp_path: Path) -> None:
    src = tmp_path / "bad.tokens"
    src.write_bytes(b" Good line . \n" * 5000 + b"\xff\xfe\n")
    dst = tmp_path / "out.txt"
    dst.write_text("precious\n", encoding="utf-8")
    before = dst.stat()
    with pytest.raises(ValueError, match="not valid UTF-8"):
        clean_file(src, dst)
    assert dst.read_text(encoding="utf-8") == "precious\n"
    assert dst.stat().st_ino == before.st_ino
    assert _dir_listing(tmp_path) == {"bad.tokens", "out.txt"}


def test_crash_mid_write_leaves_output_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crashing_clean_lines(lines: Iterable[str], keep_headings: bool = False) -> Iterator[str]:
        yield "partial line\n"
        raise KeyboardInterrupt

    monkeypatch.setattr(wikitext, "clean_lines", crashing_clean_lines)
    src = tmp_path / "in.tokens"
    src.write_text(" Text . \n", encoding="utf-8")
    dst = tmp_path / "out.txt"
    dst.write_text("precious\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        clean_file(src, dst)
    assert dst.read_text(encoding="utf-8") == "precious\n"
    assert _dir_listing(tmp_path) == {"in.tokens", "out.txt"}


def test_output_is_fsynced_in_its_own_directory_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", fd))
        real_fsync(fd)

    def spy_replace(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        events.append(("replace", (Path(a), Path(b))))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    src = tmp_path / "in.tokens"
    src.write_text(" Text . \n", encoding="utf-8")
    dst = tmp_path / "out.txt"
    clean_file(src, dst)

    names = [name for name, _ in events]
    assert "fsync" in names and "replace" in names
    assert names.index("fsync") < names.index("replace")
    tmp, target = next(arg for name, arg in events if name == "replace")
    assert target == dst
    assert tmp.parent == dst.parent  # same directory, so the rename is atomic


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX-specific")
def test_new_output_gets_normal_permissions_not_0600(tmp_path: Path) -> None:
    src = tmp_path / "in.tokens"
    src.write_text(" Text . \n", encoding="utf-8")
    old_umask = os.umask(0o022)
    try:
        clean_file(src, tmp_path / "new.txt")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644

    existing = tmp_path / "existing.txt"
    existing.write_text("old\n", encoding="utf-8")
    existing.chmod(0o640)
    clean_file(src, existing)
    assert existing.stat().st_mode & 0o777 == 0o640


def test_missing_input_raises_value_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.tokens.*does not exist"):
        clean_file(tmp_path / "nope.tokens", tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_empty_input_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.tokens").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.tokens.*is empty"):
        clean_file(tmp_path / "empty.tokens", tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_directory_input_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        clean_file(tmp_path, tmp_path / "out.txt")


def test_missing_output_directory_raises_value_error(tmp_path: Path) -> None:
    src = tmp_path / "in.tokens"
    src.write_text(" Text . \n", encoding="utf-8")
    with pytest.raises(ValueError, match="output directory.*does not exist"):
        clean_file(src, tmp_path / "no_such_dir" / "out.txt")


@pytest.mark.parametrize("spelling", ["same", "dotdot", "hardlink"])
def test_input_equal_to_output_is_refused(tmp_path: Path, spelling: str) -> None:
    src = tmp_path / "in.tokens"
    src.write_text(" = T = \n Text . \n", encoding="utf-8")
    if spelling == "same":
        dst = src
    elif spelling == "dotdot":
        (tmp_path / "sub").mkdir()
        dst = tmp_path / "sub" / ".." / "in.tokens"
    else:
        dst = tmp_path / "link.tokens"
        os.link(src, dst)
    with pytest.raises(ValueError, match="same file"):
        clean_file(src, dst)
    assert src.read_text(encoding="utf-8") == " = T = \n Text . \n"


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_missing_input_exits_2_with_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "wiki.missing.tokens"
    rc = main(["--input", str(missing), "--output", str(tmp_path / "out.txt")])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: --input")
    assert "wiki.missing.tokens" in err
    assert "Traceback" not in captured.err


def test_cli_bad_utf8_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.tokens"
    src.write_bytes(b" caf\xe9 \n")
    rc = main(["--input", str(src), "--output", str(tmp_path / "out.txt")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: --input") and "UTF-8" in err and "bad.tokens" in err
    assert not (tmp_path / "out.txt").exists()


def test_cli_output_directory_error_names_the_output_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.tokens"
    src.write_text(" Text . \n", encoding="utf-8")
    rc = main(["--input", str(src), "--output", str(tmp_path / "missing_dir" / "out.txt")])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error: --output")


def test_cli_missing_flag_returns_2_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--input", "x.tokens"]) == 2
    assert "--output" in capsys.readouterr().err


def test_cli_success_prints_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.tokens"
    src.write_text(" = T = \n \n Some text , 1 @,@ 000 words . \n" * 1000, encoding="utf-8")
    dst = tmp_path / "out.txt"
    assert main(["--input", str(src), "--output", str(dst), "--keep_headings"]) == 0
    out = capsys.readouterr().out.strip()
    assert SIZES_LINE.match(out), out
    assert out.startswith(f"{src}: ") and f" -> {dst}: " in out
    assert dst.read_text(encoding="utf-8").startswith("T\n\nSome text , 1,000 words .\n")


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1_121_681, "1.07 MiB"), (3 * 1024**3, "3.00 GiB")],
)
def test_human_size(n: int, text: str) -> None:
    assert wikitext._human_size(n) == text


def test_prepare_wikitext_script_runs_from_repo_root(tmp_path: Path) -> None:
    src = tmp_path / "wiki.valid.tokens"
    src.write_text(
        " \n = Title = \n \n A 3 @.@ 5 @-@ inch gun . \n \n \n = = S = = \n B . \n", encoding="utf-8"
    )
    dst = tmp_path / "cleaned.txt"
    proc = subprocess.run(
        [sys.executable, "prepare_wikitext.py", "--input", str(src), "--output", str(dst)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert SIZES_LINE.match(line), line
    assert "wiki.valid.tokens" in line and "cleaned.txt" in line
    assert dst.read_text(encoding="utf-8") == "A 3.5-inch gun .\n\nB .\n"


def test_prepare_wikitext_script_bad_input_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "prepare_wikitext.py",
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "o"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --input") and "Traceback" not in proc.stderr


# --- the real WikiText-2 validation file -----------------------------------------------------------


@pytest.fixture
def real_valid() -> Path:
    if not REAL_VALID.is_file():
        pytest.skip(f"real WikiText-2 file not available at {REAL_VALID}")
    return REAL_VALID


def test_real_wikitext_file_is_cleaned(real_valid: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cleaned.txt"
    bytes_in, bytes_out = clean_file(real_valid, dst)

    raw_lines = real_valid.read_text(encoding="utf-8").splitlines()
    out_lines = dst.read_text(encoding="utf-8").split("\n")
    assert out_lines.pop() == "", "output must end with a newline"

    assert bytes_in == real_valid.stat().st_size
    assert bytes_out == dst.stat().st_size
    assert bytes_out < bytes_in
    assert out_lines[0] != "" and out_lines[-1] != ""
    for token in ("@-@", "@,@", "@.@"):
        assert not any(token in line for line in out_lines), token
    assert not any(HEADING_LIKE.fullmatch(line) for line in out_lines)
    assert not any(a == "" and b == "" for a, b in zip(out_lines, out_lines[1:], strict=False))
    # Every line of body text survives as exactly one output line, in order. The substitution runs
    # before stripping because some lines end in " @,@ " and only the line's own padding follows.
    body = [line for line in raw_lines if line.strip() and not HEADING_LIKE.fullmatch(line.strip())]
    assert [line for line in out_lines if line] == [re.sub(r" @(.)@ ", r"\1", line).strip() for line in body]
    # The file really has headings and tokens to remove, so the checks above are not vacuous.
    assert sum(1 for line in raw_lines if HEADING_LIKE.fullmatch(line.strip())) > 100
    assert sum(line.count(" @-@ ") for line in raw_lines) > 100


def test_real_wikitext_file_keep_headings(real_valid: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cleaned.txt"
    clean_file(real_valid, dst, keep_headings=True)
    text = dst.read_text(encoding="utf-8")
    assert text.startswith("Homarus gammarus\n\nHomarus gammarus , known as the European lobster")
    assert "\nDescription\n" in text
    assert not any(HEADING_LIKE.fullmatch(line) for line in text.splitlines())
