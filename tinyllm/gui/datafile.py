"""The Data tab's work: inspect a text file, keep an upload, clean WikiText (no gradio here)."""

from __future__ import annotations

import codecs
import shutil
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import UserError

CHUNK = 1 << 22  # 4 MiB: statistics stream through the file, so a large corpus never sits in memory whole
FULL_SCAN_BYTES = 256 << 20  # beyond this, counts are extrapolated from the first 256 MiB (and say so)


@dataclass
class TextStats:
    path: Path
    size_bytes: int
    chars: int  # characters read (the whole file unless `partial`)
    vocab: int  # distinct characters seen
    lines: int
    preview: str
    partial: bool = False  # True when only the first FULL_SCAN_BYTES were read

    @property
    def est_chars(self) -> int:
        if not self.partial:
            return self.chars
        return round(self.chars * self.size_bytes / FULL_SCAN_BYTES)

    def markdown(self) -> str:
        approx = "≈ " if self.partial else ""
        note = f" (counted in the first {FULL_SCAN_BYTES >> 20} MiB)" if self.partial else ""
        return "\n".join([
            f"**{self.path}**", "",
            "| size | characters | lines | vocabulary (distinct characters) | estimated tokens |",
            "|---|---|---|---|---|",
            f"| {human_size(self.size_bytes)} | {approx}{self.est_chars:,} | {approx}{self.lines:,} | "
            f"{self.vocab:,}{note} | {approx}{self.est_chars:,} (char tokenizer: one per character) |",
        ])


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def text_stats(path: str | Path, preview_chars: int = 2000) -> TextStats:
    """Size, characters, lines, distinct characters and the beginning of a UTF-8 text file."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise UserError("choose a file, type its path, or upload one")
    if not p.exists():
        raise UserError(f"file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; choose a text file inside it")
    size = p.stat().st_size
    if size == 0:
        raise UserError(f"{p} is empty")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    chars = lines = offset = 0
    vocab: set[str] = set()
    preview = ""
    with open(p, "rb") as f:
        while offset < FULL_SCAN_BYTES:
            chunk = f.read(CHUNK)
            final = not chunk
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as e:
                raise UserError(f"{p} is not UTF-8 (invalid byte near offset {offset + max(e.start, 0):,}); "
                                "convert it, e.g. `iconv -f latin1 -t utf-8`") from None
            if len(preview) < preview_chars:
                preview += text[: preview_chars - len(preview)]
            chars += len(text)
            lines += text.count("\n")
            vocab.update(text)
            offset += len(chunk)
            if final:
                break
    return TextStats(path=p, size_bytes=size, chars=chars, vocab=len(vocab), lines=lines, preview=preview,
                     partial=offset < size)


def keep_upload(uploaded: str | Path, dest_dir: str | Path) -> Path:
    """Copy an upload out of the web server's temporary cache into `dest_dir`, never overwriting a file."""
    src = Path(uploaded)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    n = 1
    while dest.exists():
        dest = dest_dir / f"{src.stem}-{n}{src.suffix}"
        n += 1
    shutil.copyfile(src, dest)
    return dest


def default_clean_path(path: str | Path) -> Path:
    """wiki.train.tokens -> wiki.train.clean.txt beside it."""
    p = Path(path)
    stem = p.name[: -len(".tokens")] if p.name.endswith(".tokens") else p.stem
    return p.with_name(f"{stem}.clean.txt")


def clean_wikitext(src: str | Path, dest: str | Path, keep_headings: bool = False, replace: bool = False) -> str:
    """Clean a WikiText file into a new file with tinyllm.wikitext; never over its input, and over another
    existing file only when asked."""
    from tinyllm.wikitext import clean_file

    if not str(dest).strip():
        raise UserError("give the cleaned file a path")
    s, d = Path(src).expanduser(), Path(dest).expanduser()
    if s.exists() and d.exists() and s.resolve() == d.resolve():
        raise UserError("the cleaned file must be a new file, not the input")
    if d.is_file() and not replace:
        raise UserError(f"{d} already exists; choose another cleaned file, or tick 'replace an existing file'")
    try:
        n_in, n_out = clean_file(s, d, keep_headings=keep_headings)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None
    return f"cleaned {s} ({human_size(n_in)}) into {d} ({human_size(n_out)})"
