"""TensorBoard scalars beside metrics.jsonl (`--tensorboard`; needs the `tensorboard` extra).

Every numeric value of a metrics row becomes a scalar at the row's step, in out_dir/tensorboard, so
`tensorboard --logdir out` shows every run under out/ side by side. metrics.jsonl stays the record the GUI,
the plots and the benchmarks read; these events are a copy for TensorBoard's viewer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tinyllm.errors import UserError

TB_DIR = "tensorboard"
TB_HINT = 'pip install -e ".[tensorboard]"'
# Related curves share a chart: TensorBoard groups tags by the part before the slash.
TAGS = {
    "loss": "loss/train", "val_loss": "loss/val", "train_eval_loss": "loss/train_eval", "val_bpb": "eval/val_bpb",
    "lr": "train/lr", "tokens_per_sec": "train/tokens_per_sec", "grad_norm": "train/grad_norm",
}
NOT_SCALARS = ("step", "time_s")


def require() -> None:
    """Fail before training starts, not at the first log row, when the package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard needs the `tensorboard` package, which is not installed; install the "
                        f"extra: {TB_HINT} (or drop --tensorboard)") from None


def tag(key: str) -> str:
    return TAGS.get(key, f"{'eval' if key.startswith('val_') else 'train'}/{key}")


class TensorBoardWriter:
    """Writes metrics rows as scalars. On resume, events after the checkpoint's step are purged (they are
    about to be trained again, as metrics.jsonl drops them); a fresh run starts from an empty folder."""

    def __init__(self, out_dir: str | Path, resume_step: int | None):
        require()
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(out_dir) / TB_DIR
        if resume_step is None and log_dir.is_dir():
            for old in log_dir.glob("events.out.tfevents.*"):  # a replaced run's curves (--overwrite)
                old.unlink()
        purge = None if resume_step is None else resume_step + 1
        self._w = SummaryWriter(log_dir=str(log_dir), purge_step=purge, flush_secs=10)

    def write(self, row: dict[str, Any]) -> None:
        step = row.get("step")
        for key, value in row.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._w.add_scalar(tag(key), value, global_step=step)

    def close(self) -> None:
        self._w.close()
