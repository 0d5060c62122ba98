"""Loss curves from metrics.jsonl as a PNG (needs matplotlib: the `plot` extra).

    python -m tinyllm.plot RUN_DIR [RUN_DIR ...] [--output FILE]

Train loss (solid) and validation loss (dashed, with markers) against the step, one colour per run, so
several runs given together are overlaid for comparison. One run is written to RUN_DIR/loss.png, several to
./loss.png, unless --output says otherwise. A training run also writes its own out_dir/loss.png when it ends,
if matplotlib is installed.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

from tinyllm.atomic import atomic_write_bytes
from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics

PLOT_HINT = 'pip install -e ".[plot]"'
PLOT_NAME = "loss.png"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"plotting needs matplotlib, which is not installed; install the extra: {PLOT_HINT}") from None
    matplotlib.use("Agg")  # files only: no display needed, and no GUI toolkit is ever started
    import matplotlib.pyplot as plt

    return plt


def curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, sorted by step. Where a step appears twice (a run resumed from an earlier
    checkpoint trains it again), the later row wins."""
    by_step = {r["step"]: r[key] for r in rows if isinstance(r.get(key), int | float) and "step" in r}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_runs(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Draw the loss curves of every run into `output` (written atomically); returns its path."""
    plt = _pyplot()
    runs = []
    for d in map(Path, run_dirs):
        path = d / "metrics.jsonl"
        if not path.is_file():
            raise UserError(f"{d} has no metrics.jsonl; give the folder of a training run (its --out_dir)")
        runs.append((d, read_metrics(path)))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        drawn = 0
        for i, (d, rows) in enumerate(runs):
            color = f"C{i % 10}"
            label = d.resolve().name if len(runs) > 1 else ""
            for key, style, name in (("loss", {"linestyle": "-"}, "train"),
                                     ("val_loss", {"linestyle": "--", "marker": "o", "markersize": 3}, "val")):
                steps, values = curve(rows, key)
                if steps:
                    ax.plot(steps, values, color=color, label=f"{label} {name}".strip(), **style)
                    drawn += 1
        if not drawn:
            raise UserError(f"no loss rows yet in {', '.join(str(d) for d, _ in runs)}; plot once a run has logged")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(runs[0][0].resolve().name if len(runs) == 1 else "loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
        return _save(fig, Path(output))
    finally:
        plt.close(fig)


def _save(fig, output: Path) -> Path:
    """Render in memory, then write atomically: a reader never sees half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(output, buf.getvalue())
    return output


def plot_at_end(out_dir: str | Path, log: Callable[[str], None]) -> None:
    """out_dir/loss.png after a run. Never fails the run: without matplotlib it is skipped with a note."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log(f"note: no {PLOT_NAME} (matplotlib is not installed; {PLOT_HINT} to get one)")
        return
    try:
        path = plot_runs([out_dir], Path(out_dir) / PLOT_NAME)
        log(f"loss curves: {path}")
    except UserError:
        pass  # nothing logged yet (a run stopped before its first row): nothing to draw
    except Exception as e:  # a plotting problem must not turn a finished run into a failed one
        log(f"warning: could not draw {PLOT_NAME}: {type(e).__name__}: {e}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tinyllm.plot", description="Plot train and validation loss of "
                                "one or more runs (overlaid) from their metrics.jsonl.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Run folders (each a --out_dir of a training run).")
    p.add_argument("--output", default=None, help=f"PNG to write (default: RUN_DIR/{PLOT_NAME} for one run, "
                   f"./{PLOT_NAME} for several).")
    ns = p.parse_args(argv)
    output = ns.output or (Path(ns.run_dirs[0]) / PLOT_NAME if len(ns.run_dirs) == 1 else Path(PLOT_NAME))
    try:
        print(plot_runs(ns.run_dirs, output))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
