"""Turn WikiText ``*.tokens`` files into plain prose for language-model training.

WikiText (WikiText-2 / WikiText-103) ships Wikipedia articles pre-tokenised, with markup that
a character- or BPE-level model would otherwise waste capacity learning:

* Headings are whole lines wrapped in balanced runs of ``=``: ``= Title =`` starts an article,
  ``= = Section = =`` a section, ``= = = Sub = = =`` a subsection, and so on.
* Punctuation *inside* a number or compound word was split off and escaped so it would not be
  confused with sentence punctuation: ``1 @,@ 000`` is "1,000", ``3 @.@ 5`` is "3.5" and
  ``state @-@ of @-@ the @-@ art`` is "state-of-the-art".
* Every line starts with a space and ends with `` \\n``, and paragraphs are separated by lines
  holding a single space, with extra blank lines around headings.

Other tokenisation artefacts (``<unk>``, ``don 't``, spaces before ``,`` and ``.``) are left
alone: they are consistent, and undoing them needs guesswork that would corrupt real text.

Cleaning rules, applied to each line in turn:

1. Leading and trailing whitespace is stripped. The leading space WikiText puts on every line
   carries no information, and stripping it keeps the cleaned text looking like ordinary prose.
2. Heading lines are dropped, or with ``keep_headings=True`` kept as a plain line holding just
   the title. A line whose ``=`` runs do not balance (``= = Oops =``) is not a heading and is
   kept as text.
3. ``@-@``, ``@,@`` and ``@.@`` are rejoined with their neighbours.
4. Runs of blank lines (including whitespace-only ones) become one blank line; blank lines at
   the very start and very end of the output are dropped, so a non-empty output starts and ends
   with a text line and ends in ``\\n``.

Everything streams one line at a time, so memory use does not grow with the file size (only
with the longest single line). ``clean_file`` writes atomically: the output path either keeps
its old contents or holds the complete result, never a partial file.

Command line::

    python prepare_wikitext.py --input wiki.train.tokens --output train.txt [--keep_headings]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["clean_file", "clean_lines", "main"]

_OPENING_MARKS_RE = re.compile(r"(?:= )+")

# The optional spaces make the rule also hold at a line edge after stripping, and for a token
# that lost one of its spaces, so no "@-@" can survive into the output.
_AT_TOKEN_RE = re.compile(r" ?@([-,.])@ ?")


def _heading_title(line: str) -> str | None:
    """Return the title if ``line`` (already stripped) is a WikiText heading, else None."""
    opening = _OPENING_MARKS_RE.match(line)
    if opening is None:
        return None
    depth = opening.end() // 2
    # Counting is done by hand because a regex cannot check that both "=" runs are equally long.
    if not line.endswith(" =" * depth) or len(line) <= 4 * depth:
        return None
    title = line[2 * depth : -2 * depth].strip()
    # A title starting or ending in "=" means the runs are longer on one side: not a heading.
    if not title or title[0] == "=" or title[-1] == "=":
        return None
    return title


def clean_lines(lines: Iterable[str], keep_headings: bool = False) -> Iterator[str]:
    """Clean WikiText lines lazily; see the module docstring for the rules.

    ``lines`` is any iterable of single lines, with or without line endings (an open text file
    works). Yields cleaned lines, each ending in exactly one ``"\\n"``; a blank line is ``"\\n"``.
    Each output line is produced as soon as the input line that completes it is read, so this
    can sit in a pipeline over a file of any size.
    """
    wrote_text = False
    # A blank line is held back until the next text line arrives: that is what collapses runs
    # and drops trailing blanks without ever looking ahead more than one line.
    pending_blank = False
    for raw in lines:
        line = raw.strip()
        if not line:
            pending_blank = True
            continue
        title = _heading_title(line)
        if title is not None:
            if not keep_headings:
                # The blank lines around a dropped heading still separate the paragraphs on
                # either side of it, so pending_blank is deliberately left as it is.
                continue
            line = title
        line = _AT_TOKEN_RE.sub(r"\1", line)
        if pending_blank and wrote_text:
            yield "\n"
        pending_blank = False
        wrote_text = True
        yield line + "\n"


class _BadPathError(ValueError):
    """A ValueError that remembers which CLI flag it concerns, so main() can name it."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag


def _check_paths(input_path: Path, output_path: Path) -> None:
    """Raise ValueError, naming the file and the fix, before anything is written."""
    if not input_path.exists():
        raise _BadPathError(
            "--input", f"input file {str(input_path)!r} does not exist; pass the path of a WikiText file"
        )
    if input_path.is_dir():
        raise _BadPathError(
            "--input", f"input {str(input_path)!r} is a directory; pass a WikiText file inside it instead"
        )
    if input_path.stat().st_size == 0:
        raise _BadPathError("--input", f"input file {str(input_path)!r} is empty; pass a WikiText file with text in it")
    if output_path.is_dir():
        raise _BadPathError(
            "--output", f"output {str(output_path)!r} is a directory; pass a file path to write to"
        )
    out_dir = output_path.parent
    if not out_dir.is_dir():
        raise _BadPathError(
            "--output", f"output directory {str(out_dir)!r} does not exist; create it or choose another path"
        )
    # resolve() catches "a/../x" and symlinks; samefile() also catches hard links. Cleaning a
    # file onto itself would replace the source with its cleaned copy, losing the original.
    same = input_path.resolve() == output_path.resolve()
    if not same and output_path.exists():
        same = os.path.samefile(input_path, output_path)
    if same:
        raise _BadPathError(
            "--output",
            f"input and output are the same file ({str(input_path)!r}); write the cleaned text elsewhere",
        )


def _new_file_mode(output_path: Path) -> int:
    """Permissions the replaced output should get (mkstemp always creates files as 0600)."""
    try:
        return output_path.stat().st_mode & 0o7777
    except FileNotFoundError:
        # There is no way to read the umask without setting it, so set it back immediately.
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; best effort because not every OS can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    keep_headings: bool = False,
) -> tuple[int, int]:
    """Clean the WikiText file ``input_path`` into ``output_path``; return ``(bytes_in, bytes_out)``.

    The input is read as strict UTF-8 one line at a time. The result goes to a temporary file in
    the output's directory (so the final rename never crosses filesystems), which is flushed,
    fsynced and then moved over ``output_path`` with ``os.replace``. On any failure the temporary
    file is removed and an existing ``output_path`` is left untouched.

    Raises ValueError, with a message naming the file, when the input is missing, a directory,
    unreadable or not valid UTF-8, when the output is a directory or its directory is missing,
    and when input and output are the same file. Errors while writing (disk full, no permission
    on the output directory) propagate as OSError.
    """
    src = Path(input_path)
    dst = Path(output_path)
    _check_paths(src, dst)
    mode = _new_file_mode(dst)
    bytes_in = 0
    line_no = 0

    def decoded(raw_lines: Iterable[bytes]) -> Iterator[str]:
        # Decoding line by line (instead of a text-mode file, which decodes 8 KiB chunks ahead of
        # the reader) lets a bad byte be reported at its real line. Splitting bytes on b"\n" is
        # safe for UTF-8 because 0x0A never occurs inside a multi-byte character.
        nonlocal bytes_in, line_no
        for raw in raw_lines:
            line_no += 1
            bytes_in += len(raw)
            yield raw.decode("utf-8", errors="strict")

    try:
        fin = open(src, "rb")  # noqa: SIM115 - closed by the with statement below
    except OSError as exc:
        raise _BadPathError("--input", f"cannot read input file {str(src)!r}: {exc.strerror or exc}") from exc

    with fin:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        tmp = Path(tmp_name)
        try:
            # newline="\n" gives byte-identical output on every platform.
            with open(fd, "w", encoding="utf-8", newline="\n") as fout:
                fout.writelines(clean_lines(decoded(fin), keep_headings=keep_headings))
                fout.flush()
                os.fsync(fout.fileno())
            os.chmod(tmp, mode)
            bytes_out = tmp.stat().st_size
            os.replace(tmp, dst)
        except UnicodeDecodeError as exc:
            tmp.unlink(missing_ok=True)
            raise _BadPathError(
                "--input",
                f"input file {str(src)!r} is not valid UTF-8 (line {line_no}, byte {exc.start + 1} of "
                f"that line: {exc.reason}); convert it to UTF-8 first, e.g. with iconv",
            ) from exc
        except BaseException:
            # BaseException so that Ctrl-C mid-write does not leave a stray temp file behind.
            tmp.unlink(missing_ok=True)
            raise

    _fsync_dir(dst.parent)
    return bytes_in, bytes_out


def _human_size(n: int) -> str:
    """Format a byte count with binary units: 512 B, 1.07 MiB, 2.30 GiB."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.2f} {unit}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_wikitext.py",
        description=(
            "Clean a WikiText .tokens file into plain text: drop '= Heading =' lines, rejoin "
            "'1 @,@ 000' style numbers and 'a @-@ b' compounds, collapse blank lines."
        ),
    )
    parser.add_argument("--input", required=True, metavar="FILE", help="WikiText file to read (UTF-8)")
    parser.add_argument("--output", required=True, metavar="FILE", help="where to write the cleaned text")
    parser.add_argument(
        "--keep_headings",
        action="store_true",
        help="keep headings as plain title lines instead of dropping them",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command-line tool; return the process exit status (0 ok, 2 bad input, 1 I/O error)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse has already printed usage and the error; hand back its status instead of exiting.
        return exc.code if isinstance(exc.code, int) else 2

    try:
        bytes_in, bytes_out = clean_file(args.input, args.output, keep_headings=args.keep_headings)
    except ValueError as exc:
        flag = exc.flag if isinstance(exc, _BadPathError) else "--input"
        print(f"error: {flag}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Reading was validated up front, so an OSError here is almost always the write side.
        print(
            f"error: --output: could not write {args.output!r}: {exc}; "
            "check that its directory is writable and has free space",
            file=sys.stderr,
        )
        return 1

    ratio = f"{100 * bytes_out / bytes_in:.1f}%" if bytes_in else "n/a"
    print(f"{args.input}: {_human_size(bytes_in)} -> {args.output}: {_human_size(bytes_out)} ({ratio})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
