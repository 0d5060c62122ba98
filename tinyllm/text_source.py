"""Where the training text comes from, and reading it: whole, or streamed in chunks that tokenise alike.

--data_path names one UTF-8 file, a folder or a glob pattern (open_source turns it into a TextSource). A folder
stands for every `.txt` and `.md` file under it, recursively, in sorted path order; a pattern (`notes/**/*.txt`)
for the .txt and .md files it matches, sorted likewise. The files of a folder or pattern are documents: each is
split into training and validation text on its own, and they are joined with a separator (tinyllm.tokens).
Every way the text can be unusable (a missing or empty file, an empty folder, a folder or pattern without text
files, a file that is not UTF-8) is a UserError that names the flag and the path and says what to do. The
source's stamp (each file's path, size and modification time) is what a token file's sidecar records, so that a
later run can tell whether the text changed, and which file did.

Big files are read in chunks, cut only at points where a cut cannot change the tokens
(tinyllm.tokenizer.safe_cut: before ASCII whitespace that follows a non-space character, preferably at a line
end), so chunk-by-chunk tokenisation equals tokenising the whole text at once, for the char and the BPE
tokenizer alike.
"""

from __future__ import annotations

import codecs
import glob
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyllm.errors import UserError
from tinyllm.tokenizer import safe_cut

CHUNK_BYTES = 1 << 22  # text read and tokenised per step of the streaming passes (4 MiB)
TEXT_SUFFIXES = (".txt", ".md")  # the files of a folder (or a glob pattern) that are read; others are ignored
_GLOB_MAGIC = re.compile(r"[*?[]")


def check_text_file(path: str | Path, flag: str = "--data_path") -> Path:
    """The path of a non-empty regular file, or a UserError saying what is wrong with it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag}: file not found: {p}; pass the path of a UTF-8 text file")
    if p.is_dir():
        raise UserError(f"{flag}: {p} is a directory; pass the path of a UTF-8 text file inside it")
    if p.stat().st_size == 0:
        raise UserError(f"{flag}: {p} is empty; give it some text to learn from")
    return p


def source_stamp(path: str) -> dict[str, Any]:
    """What identifies the text a token file was made from: its resolved path, size and modification time."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _not_utf8(p: Path, flag: str, offset: int, byte: int) -> UserError:
    return UserError(f"{flag}: {p} is not UTF-8 (invalid byte 0x{byte:02x} at byte offset {offset}); "
                     "convert it, e.g. `iconv -f latin1 -t utf-8`")


def check_utf8_head(p: Path, flag: str = "--data_path", n_bytes: int = 1 << 16) -> None:
    """A UserError when the first `n_bytes` of `p` are not UTF-8: a quick look for a wrong file (a Latin-1 text,
    a binary), where reading the whole file would take too long; the full check happens when it is read."""
    with open(p, "rb") as f:
        head = f.read(n_bytes)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError as e:
        raise _not_utf8(p, flag, e.start, head[e.start]) from None


# --- what --data_path names: one file, or the documents of a folder or a glob pattern ------------------------


@dataclass(frozen=True)
class TextSource:
    """The text files --data_path stands for.

    kind "file": one file, read as it always was (one document, its last val_fraction held out). kind "folder" or
    "glob": `files` are documents (empty ones included, so that the stamp notices when they get text), and
    `ignored` counts the other files by suffix, for the one message that says what was left out.
    """

    spec: str
    kind: str  # "file", "folder" or "glob"
    files: tuple[Path, ...]
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def is_documents(self) -> bool:
        return self.kind != "file"

    @property
    def text_files(self) -> list[Path]:
        """The files that hold text (a folder's empty files hold none, and are skipped)."""
        return [f for f in self.files if f.stat().st_size > 0]

    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def summary(self) -> str | None:
        """One line for a folder or pattern: how many files and bytes are read, and what was ignored."""
        if not self.is_documents:
            return None
        n_ignored = sum(self.ignored.values())
        ignored = ""
        if n_ignored:
            kinds = ", ".join(f"{n} {suffix or 'without suffix'}" for suffix, n in
                              sorted(self.ignored.items(), key=lambda kv: (-kv[1], kv[0])))
            ignored = f"; ignored {n_ignored} other file{'s' * (n_ignored != 1)} ({kinds}): only .txt and .md are read"
        what = "folder" if self.kind == "folder" else "pattern"
        n, n_empty = len(self.files), len(self.files) - len(self.text_files)
        empty = f" ({n_empty} empty)" if n_empty else ""
        return (f"data: --data_path {what} {self.spec}: {n} text file{'s' * (n != 1)}{empty}, "
                f"{self.total_bytes() / 2**20:,.2f} MiB{ignored}")

    def stamp(self) -> dict[str, Any]:
        """What a token file's sidecar records (see source_stamp): for one file exactly source_stamp(path); for a
        folder or pattern, its resolved path and every file's resolved path, size and modification time."""
        if not self.is_documents:
            return source_stamp(str(self.files[0]))
        root = str(Path(self.spec).resolve()) if self.kind == "folder" else os.path.abspath(self.spec)
        return {"kind": self.kind, "path": root, "files": [source_stamp(str(f)) for f in self.files]}


def _is_text_file(p: Path) -> bool:
    return p.suffix.lower() in TEXT_SUFFIXES


def _collect(paths: list[Path], sort_key: Any) -> tuple[tuple[Path, ...], dict[str, int]]:
    texts = sorted((p for p in paths if _is_text_file(p)), key=sort_key)
    ignored = Counter(p.suffix.lower() for p in paths if not _is_text_file(p))
    return tuple(texts), dict(ignored)


def _folder_files(root: Path) -> list[Path]:
    """Every regular file under root, recursively (symbolic links to folders are not followed: no loops)."""
    found = []
    for folder, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            p = Path(folder) / name
            if p.is_file():
                found.append(p)
    return found


def open_source(spec: str | Path, flag: str = "--data_path") -> TextSource:
    """The TextSource that `spec` names, or a UserError naming the flag and the path and saying what to do.

    An existing folder is a folder; an existing file is one file; a path that does not exist but holds a glob
    character (`*`, `?`, `[`) is a pattern (`**` matches folders at any depth); anything else is a missing file.
    """
    spec = str(spec)
    p = Path(spec)
    if p.is_dir():
        all_files = _folder_files(p)
        if not all_files:
            raise UserError(f"{flag}: the folder {p} holds no files; put .txt or .md files in it, or pass a file")
        files, ignored = _collect(all_files, sort_key=lambda f: f.relative_to(p).parts)
        if not files:
            n = len(all_files)
            raise UserError(f"{flag}: the folder {p} holds no .txt or .md file ({n} other file{'s' * (n != 1)} "
                            "ignored); put the text in .txt or .md files, or pass a file")
        source = TextSource(spec, "folder", files, ignored)
    elif p.exists() or not _GLOB_MAGIC.search(spec):
        return TextSource(spec, "file", (check_text_file(p, flag),))
    else:
        matched = [Path(m) for m in glob.glob(spec, recursive=True)]
        # `**` follows symbolic links to folders: one file can match under several names (a link loop gives
        # dozens); each is read once, under the first name in sorted order.
        by_target: dict[str, Path] = {}
        for m in sorted(matched, key=lambda f: Path(os.path.abspath(f)).parts):
            if m.is_file():
                by_target.setdefault(os.path.realpath(m), m)
        all_files = list(by_target.values())
        if not all_files:
            raise UserError(f"{flag}: the pattern {spec!r} matches no file; check it (and quote it, so that the "
                            "shell does not expand it)")
        files, ignored = _collect(all_files, sort_key=lambda f: Path(os.path.abspath(f)).parts)
        if not files:
            n = len(all_files)
            raise UserError(f"{flag}: the pattern {spec!r} matches {n} file{'s' * (n != 1)} but no .txt or .md "
                            "file; only those are read: change the pattern or rename the files")
        source = TextSource(spec, "glob", files, ignored)
    if not source.text_files:
        raise UserError(f"{flag}: every .txt and .md file of {spec} is empty; give them some text to learn from")
    return source


def glance_source(spec: str | Path, flag: str = "--data_path") -> TextSource:
    """open_source, plus a look at the first bytes of (up to 100 of) its files for UTF-8: quick enough for a
    form checked at every edit; the full check happens when the text is read."""
    source = open_source(spec, flag)
    for f in source.text_files[:100]:
        check_utf8_head(f, flag)
    return source


def read_text(path: str | Path, flag: str = "--data_path") -> str:
    """Read a UTF-8 file, turning every way it can be unusable into a clear UserError."""
    p = check_text_file(path, flag)
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(p, flag, e.start, raw[e.start]) from None


def iter_text_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES, limit_bytes: int | None = None,
                     flag: str = "--data_path") -> Iterator[str]:
    """The file's text in pieces of about `chunk_bytes`, each cut at a safe point (see the module docstring):
    "".join(pieces) == read_text(path), holding one piece at a time. With `limit_bytes`, only about the
    first `limit_bytes` bytes (the last piece is cut there, at a character boundary)."""
    p = check_text_file(path, flag)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    carry, offset, emitted = "", 0, 0
    with open(p, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            try:
                text = carry + decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                # e.start counts from the bytes the decoder held back from the previous block.
                held = len(e.object) - len(block)
                raise _not_utf8(p, flag, offset - held + e.start, e.object[e.start]) from None
            offset += len(block)
            # The carried text has no cut point inside it, so only the new part needs searching.
            cut = safe_cut(text, start=max(len(carry) - 1, 0)) if block else len(text)
            if cut is None:  # no whitespace in this block at all: read on (memory grows with such a stretch)
                carry = text
                continue
            piece, carry = text[:cut], text[cut:]
            if limit_bytes is not None:
                size = len(piece.encode("utf-8"))
                if emitted + size >= limit_bytes:
                    yield piece.encode("utf-8")[: limit_bytes - emitted].decode("utf-8", "ignore")
                    return
                emitted += size
            if piece:
                yield piece
            if not block:
                return
