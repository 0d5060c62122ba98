"""Text -> token ids -> random-window batches, with a sampler whose state can be saved and restored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tinyllm.errors import UserError


def read_text(path: str | Path, flag: str = "--data_path") -> str:
    """Read a UTF-8 file, turning every way it can be unusable into a clear UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag}: file not found: {p}; pass the path of a UTF-8 text file")
    if p.is_dir():
        raise UserError(f"{flag}: {p} is a directory; pass the path of a UTF-8 text file inside it")
    raw = p.read_bytes()
    if not raw:
        raise UserError(f"{flag}: {p} is empty; give it some text to learn from")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{flag}: {p} is not UTF-8 (invalid byte 0x{raw[e.start]:02x} at byte offset "
                        f"{e.start}); convert it, e.g. `iconv -f latin1 -t utf-8`") from None


def split_ids(ids: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `val_fraction` of the tokens is validation, as nanoGPT's prepare scripts do."""
    n_train = int(len(ids) * (1.0 - val_fraction))
    return ids[:n_train], ids[n_train:]


def check_split_lengths(train: torch.Tensor, val: torch.Tensor, block_size: int, need_val: bool,
                        source: str) -> None:
    need = block_size + 1
    for name, part in (("train", train), ("validation", val)):
        if name == "validation" and not need_val:
            continue
        if len(part) < need:
            raise UserError(f"--data_path: the {name} split of {source} has {len(part)} tokens but "
                            f"--block_size {block_size} needs at least {need}; use a longer text, a smaller "
                            "--block_size or a different --val_fraction")


@dataclass
class BatchSampler:
    """Uniformly random windows of block_size+1 tokens, drawn with a generator of its own.

    Owning the generator (instead of using the global RNG) is what makes resume exact: the
    generator's state is the sampler's whole state, and evaluation or sampling never disturb it.
    """

    data: torch.Tensor
    block_size: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        # Windows are gathered with one indexing op: offsets are a fixed arange added to the starts.
        self._offsets = torch.arange(self.block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        hi = len(self.data) - self.block_size
        starts = torch.randint(hi, (self.batch_size,), generator=self.generator)
        windows = self.data[starts[:, None] + self._offsets].long()
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def encode_to_tensor(ids: list[int], vocab_size: int) -> torch.Tensor:
    # int32 halves the memory of int64; batches are widened to long only when drawn.
    dtype = torch.int16 if vocab_size < 2**15 else torch.int32
    return torch.tensor(ids, dtype=dtype)
