"""Training batches: random windows of block_size+1 tokens, drawn by samplers whose state can be saved and
restored; and the curriculum on block size.

Two ways to draw batches, from a token tensor or a TokenFile alike (tinyllm.tokens):

* `BatchSampler` (the default, `--dataloader_workers 0`): in the training process, with a generator of its
  own whose state is the sampler's whole state.
* `LoaderSampler` (`--dataloader_workers N`): a torch DataLoader whose N worker processes build the
  batches ahead of the training step (pinned memory on CUDA). Batch k of the stream is a pure function of
  (seed, k), so the stream is the same for every N, and the state saved for resume is just k.

And the windows that score a text whole, every token once (`eval_windows`: `--eval_full` and
`python -m tinyllm.evaluate`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tinyllm.config import Config
from tinyllm.errors import UserError
from tinyllm.tokens import gather_windows

# --- in the training process ---------------------------------------------------------------------------------


@dataclass
class BatchSampler:
    """Uniformly random windows of block_size+1 tokens, drawn with a generator of its own.

    Owning the generator (instead of using the global RNG) is what makes resume exact: the
    generator's state is the sampler's whole state, and evaluation or sampling never disturb it.
    """

    data: Any  # a token tensor or a TokenFile
    block_size: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        # Windows are gathered with one indexing op: offsets are a fixed arange added to the starts.
        self._offsets = torch.arange(self.block_size + 1)

    def next(self, block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (inputs, targets); `block_size` shortens the windows (the curriculum uses it)."""
        t = block_size or self.block_size
        hi = len(self.data) - t
        starts = torch.randint(hi, (self.batch_size,), generator=self.generator)
        windows = gather_windows(self.data, starts[:, None] + self._offsets[: t + 1])
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if "generator" not in state:
            raise UserError("--dataloader_workers: this checkpoint was trained with DataLoader workers; resume it "
                            "with --dataloader_workers 1 or more (any number continues the same batches)")
        self.generator.set_state(state["generator"])


# --- batches from DataLoader workers ------------------------------------------------------------------------


def batch_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for batch `index` of the stream seeded with `seed`."""
    state = np.random.SeedSequence([seed % 2**64, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class WindowBatches(torch.utils.data.Dataset):
    """Item k is batch k: batch_size random windows of block_size+1 tokens, drawn with a generator seeded
    by (seed, k) alone. Any worker can therefore make any batch, and the stream does not depend on how many
    workers there are, or on which of them made which batch."""

    def __init__(self, data: Any, block_size: int, batch_size: int, seed: int):
        self.data, self.block_size, self.batch_size, self.seed = data, block_size, batch_size, seed
        self._offsets = torch.arange(block_size + 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(batch_seed(self.seed, index))
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=gen)
        windows = gather_windows(self.data, starts[:, None] + self._offsets)
        return windows[:, :-1], windows[:, 1:]


class _CountFrom(torch.utils.data.Sampler):
    """Batch indices start, start+1, ... without end (the loop decides when training stops)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id, base_seed drawn from the loader's own generator
    # (seeded from --seed): pass the same seed on to numpy and random, so a worker is reproducible whatever
    # it draws. The batches themselves do not depend on it (see WindowBatches).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def _quiet_tokenizers_fork() -> Iterator[None]:
    """`tokenizers` prints a warning in every forked child once it has used its thread pool, unless
    TOKENIZERS_PARALLELISM is set. The workers never tokenize: set it while they are forked, then restore."""
    had = "TOKENIZERS_PARALLELISM" in os.environ
    if not had:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if not had:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


class LoaderSampler:
    """Training batches from a torch DataLoader with `workers` processes; same interface as BatchSampler.

    The state is the index of the next batch to hand out: batches the workers made ahead of time but the
    loop never took are simply made again after a resume. Its global-RNG use is nil: the loader gets a
    generator of its own for the workers' base seed.
    """

    def __init__(self, data: Any, block_size: int, batch_size: int, seed: int, workers: int,
                 pin_memory: bool = False):
        self.dataset = WindowBatches(data, block_size, batch_size, seed)
        self.block_size, self.seed, self.workers, self.pin_memory = block_size, seed, workers, pin_memory
        self.next_index = 0
        self._it: Iterator | None = None

    def _start(self) -> Iterator:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=_CountFrom(self.next_index), num_workers=self.workers,
            pin_memory=self.pin_memory, worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(self.seed % 2**63))
        with _quiet_tokenizers_fork():
            return iter(loader)

    def next(self, block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (inputs, targets); a `block_size` below the full one keeps the first tokens of each
        window (the curriculum uses it)."""
        if self._it is None:
            self._it = self._start()
        x, y = next(self._it)
        self.next_index += 1
        if block_size and block_size < self.block_size:
            x, y = x[:, :block_size], y[:, :block_size]
        return x, y

    def state_dict(self) -> dict:
        return {"kind": "dataloader", "seed": self.seed, "next_index": self.next_index}

    def load_state_dict(self, state: dict) -> None:
        if "next_index" not in state:
            raise UserError("--dataloader_workers: this checkpoint was trained with --dataloader_workers 0 (batches "
                            "drawn in the training process); resume it with --dataloader_workers 0")
        self.close()
        self.next_index = int(state["next_index"])

    def close(self) -> None:
        """Stop the workers (they also stop when the sampler is garbage-collected)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


# --- the run's sampler, and its batches on the device ---------------------------------------------------------


def make_train_sampler(data: Any, cfg: Config, seed: int, device: torch.device) -> BatchSampler | LoaderSampler:
    """The training batch sampler that --dataloader_workers asks for."""
    if cfg.dataloader_workers == 0:
        return BatchSampler(data, cfg.block_size, cfg.batch_size, seed=seed)
    return LoaderSampler(data, cfg.block_size, cfg.batch_size, seed, cfg.dataloader_workers,
                         pin_memory=device.type == "cuda")


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move (x, y) to the device. On CUDA the copy comes from pinned memory and does not block, so the host
    can prepare the next step while it runs (DataLoader batches arrive pinned already)."""
    if device.type != "cuda":
        return batch[0].to(device), batch[1].to(device)
    return tuple(t.to(device, non_blocking=True) if t.is_pinned() else t.pin_memory().to(device, non_blocking=True)
                 for t in batch)  # type: ignore[return-value]


# --- the curriculum ------------------------------------------------------------------------------------------


def curriculum_sizes(start: int, final: int) -> list[int]:
    """The discrete training block sizes of a curriculum: start, 2*start, 4*start, ... below final, then final.
    Few distinct shapes keep torch.compile from recompiling at every step."""
    sizes = []
    size = start
    while size < final:
        sizes.append(size)
        size *= 2
    return sizes + [final]


def curriculum_block_size(step: int, start: int, final: int, steps: int) -> int:
    """Training block size at `step`: the smaller sizes share the first `steps` steps equally, then `final`."""
    sizes = curriculum_sizes(start, final)
    if step >= steps or len(sizes) == 1:
        return final
    return sizes[step * (len(sizes) - 1) // steps]


# --- evaluation windows ---------------------------------------------------------------------------------------

Window = tuple[int, int, int]  # (start, length, offset of the first scored position)


def eval_windows(n_ids: int, context: int, stride: int = 0) -> list[Window]:
    """The windows that score tokens 1..n_ids-1 exactly once each: window (start, length, offset) feeds ids
    start..start+length-1 and scores the predictions of ids start+offset+1..start+length. stride 0 (or
    `context`): disjoint windows; 0 < stride < context: windows every `stride` ids, scoring only what is new."""
    stride = stride or context
    windows: list[Window] = []
    start, scored = 0, 0  # scored: the last target id scored so far (id 0 is never a target)
    while scored < n_ids - 1:
        end = min(start + context, n_ids - 1)  # inputs start..end-1, targets start+1..end
        windows.append((start, end - start, scored - start))
        scored = end
        start += stride
    return windows


def window_batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    """Consecutive windows of one length, up to batch_size of them, as one batch each (all but the last few
    windows have the full context)."""
    batches: list[list[Window]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and batches[-1][0][1] == w[1]:
            batches[-1].append(w)
        else:
            batches.append([w])
    return batches
