"""What a run tells its user while it goes, and how it is asked to stop.

- `RunLog`: messages to stderr (above the progress bar) and, on rank 0, to out_dir/train.log.
- `progress_bar`: the tqdm bar of steps.
- `Progress`: the counters that make a run resumable (saved in every checkpoint) and that the log reports.
- `LogWindow`: what the next train row reports (losses summed on the device since the last row), and the
  read-back of whether steps were finite, a step late, so that the host never waits for the device.
- `StopFlag` and `STOP_FILE`: SIGINT/SIGTERM, or a STOP file the GUI creates, ask the loop to save and stop
  at the next step boundary; `EXIT_CODES` are the exit statuses a signalled run ends with.
- `RunEnd` and `summarize`: why the run ended, and the closing lines that say where everything is.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyllm.config import Config

STOP_FILE = "STOP"  # the GUI creates out_dir/STOP to ask a run to save and stop
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunLog:
    """Messages go to stderr (above the progress bar) and, on rank 0, to out_dir/train.log. Other DDP
    ranks stay quiet except for warnings and errors, so each line appears once."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self._f = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - open for the whole run
        self.bar = None
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if self.quiet and not msg.startswith(("warning", "error")):
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)
        if self._f:
            self._f.write(msg + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, initial: int, log: RunLog) -> Iterator[Any]:
    """A tqdm bar of steps on stderr for the life of the loop (None when not enabled); `total` 0 means
    open-ended. While it shows, `log` writes its messages above it."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total or None, initial=initial, file=sys.stderr, unit="step", dynamic_ncols=True, smoothing=0.1)
    log.bar = bar
    try:
        yield bar
    finally:
        bar.close()
        log.bar = None


@dataclass
class Progress:
    """The counters that make a run resumable, saved in every checkpoint."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    time_s: float = 0.0
    skipped_steps: int = 0


class LogWindow:
    """The steps since the last train row: their losses summed on the device, the latest gradient norm and
    the steps skipped; and, behind them, the steps whose finiteness has not been read back yet."""

    def __init__(self, device: torch.device, progress: Progress, skip_nonfinite: bool, log: RunLog, now: float):
        self.progress, self.skip_nonfinite, self.log = progress, skip_nonfinite, log
        self.sums = {"loss": torch.zeros((), device=device), "z_loss": torch.zeros((), device=device)}
        self.count = self.skipped = 0
        self.grad_norm: torch.Tensor | None = None
        # (step, ce, z, grad norm, finite) of steps whose finiteness has not been read back yet
        self.unsettled: list[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor | None, Any]] = []
        self.restart(now)

    def add(self, step: int, ce: torch.Tensor, z: torch.Tensor | None, grad_norm: torch.Tensor | None,
            finite: Any) -> None:
        self.unsettled.append((step, ce, z, grad_norm, finite))

    def settle(self, keep: int) -> str | None:
        """Account for all but the last `keep` unsettled steps; an error message if one was non-finite
        and --skip_nonfinite is off (the run then stops without saving)."""
        p = self.progress
        while len(self.unsettled) > keep:
            step, ce, z, norm, finite = self.unsettled.pop(0)
            if not finite:
                if not self.skip_nonfinite:
                    self.unsettled.clear()
                    p.step = step  # the run ends at the step that failed (a later one may have been taken)
                    return (f"non-finite loss or gradient at step {step}; stopping without saving (the last "
                            f"good checkpoint is kept as it was). Lower --lr, use --grad_clip, or pass "
                            f"--skip_nonfinite to skip such steps")
                p.skipped_steps += 1
                self.skipped += 1
                self.log(f"warning: skipped step {step}: non-finite loss or gradient "
                         f"({p.skipped_steps} skipped so far)")
            else:
                self.sums["loss"] += ce
                if z is not None:
                    self.sums["z_loss"] += z
                self.count += 1
                self.grad_norm = norm if norm is not None else self.grad_norm
        return None

    def train_row(self, lr: float, now: float, z_loss: bool, block_size: int | None) -> dict[str, Any]:
        """The metrics row of the steps in this window (the losses are read back from the device here);
        `block_size` is given under --curriculum."""
        p = self.progress
        row: dict[str, Any] = {"lr": lr, "tokens_per_sec": round(self.tokens_per_sec(now), 1)}
        if self.count:
            row["loss"] = (self.sums["loss"] / self.count).item()
            if z_loss:
                row["z_loss"] = (self.sums["z_loss"] / self.count).item()
        if self.grad_norm is not None:
            row["grad_norm"] = self.grad_norm.item()
        if block_size is not None:
            row["block_size"] = block_size
        if p.skipped_steps:
            row["skipped_steps"] = p.skipped_steps
            row["skipped_since_last_row"] = self.skipped
        return row

    def tokens_per_sec(self, now: float) -> float:
        return (self.progress.tokens_seen - self.tokens_at_start) / max(now - self.t_start, 1e-9)

    def restart(self, now: float) -> None:
        """A new window after a train row (the gradient norm stays: it is the latest one known)."""
        for v in self.sums.values():
            v.zero_()
        self.count = self.skipped = 0
        self.t_start, self.tokens_at_start = now, self.progress.tokens_seen


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to save and stop at the next step boundary. A second
    Ctrl+C while saving falls back to Python's default and interrupts immediately."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopFlag:
        for s in EXIT_CODES:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class RunEnd:
    """Why the loop ended (max_steps, max_time, interrupted or error), the process's exit status, and the
    error message if there was one."""

    reason: str
    exit_code: int = 0
    error: str | None = None

    def row(self, p: Progress) -> dict[str, Any]:
        """The last row of the run's metrics."""
        row: dict[str, Any] = {"event": "end", "reason": self.reason}
        if self.error:
            row["error"] = self.error
        if p.skipped_steps:
            row["skipped_steps"] = p.skipped_steps
        return row


def summarize(cfg: Config, p: Progress, reason: str, log: RunLog, wall_s: float | None = None) -> None:
    """The closing lines; `wall_s`, this session's wall clock, beside the training time (which leaves out
    evaluations, samples and saves)."""
    out = Path(cfg.out_dir)
    best = f"{p.best_val_loss:.4f}" if math.isfinite(p.best_val_loss) else \
        "n/a (eval disabled)" if cfg.eval_interval == 0 else "n/a (no evaluation yet)"
    lines = [
        f"done ({reason}) at step {p.step}" + (f"/{cfg.max_steps}" if cfg.max_steps else "")
        + f": best val loss {best}, "
        f"{p.time_s:.1f} s of training"
        + (f" ({wall_s:.{0 if wall_s >= 10 else 1}f} s wall clock)" if wall_s is not None else "")
        + f", {p.tokens_seen:,} tokens seen"
        + (f", {p.skipped_steps} non-finite steps skipped" if p.skipped_steps else ""),
        f"checkpoints: {out / 'ckpt.pt'}" + (f" and {out / 'ckpt_best.pt'}" if math.isfinite(p.best_val_loss)
                                             else ""),
        f"sample: python train_tinyllm.py --out_dir {out} --generate_only --sample_chars 300",
    ]
    if reason == "interrupted" or (reason == "max_time" and cfg.max_steps):  # a time-budgeted run is complete
        launch = "torchrun --standalone --nproc_per_node=N train_tinyllm.py --ddp" if cfg.ddp else \
            "python train_tinyllm.py"  # --ddp belongs to the launch: a resume is not given it by the checkpoint
        lines.append(f"continue: {launch} --out_dir {out} --resume")
    for line in lines:
        log(line)
