"""The Runs tab's evaluation: the loss and bits per byte of each selected run on one text, by `tinyllm-eval`.

Each run is scored by `python -m tinyllm.evaluate --model RUN --data_path FILE` in a subprocess (in the GUI's
working folder, as training runs), so the GUI's own process never imports torch, and a figure in the table is
exactly what that command prints. The figures of one (checkpoint, text) pair are kept while neither file
changes, so choosing runs again does not score them again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyllm.errors import UserError
from tinyllm.gui.runs import CKPT_FILES, child_env

EVAL_TIMEOUT_S = 3600.0
COLUMNS = ["run", "started from", "loss", "bpb", "perplexity", "tokens", "note"]


def eval_argv(model: str | Path, data_path: str | Path) -> list[str]:
    """The evaluation command for one run (the table's figures are its last line of output)."""
    return [sys.executable, "-m", "tinyllm.evaluate", "--model", str(model), "--data_path", str(data_path),
            "--no-progress"]


@dataclass
class Score:
    run: str
    started_from: str = ""
    loss: float | None = None
    bpb: float | None = None
    perplexity: float | None = None
    tokens: int | None = None
    note: str = ""

    def row(self) -> list[Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return [self.run, self.started_from, r(self.loss), r(self.bpb), r(self.perplexity), self.tokens, self.note]


def _stamp(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _error_line(stderr: str, code: int) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln.removeprefix("error:").strip()
    return (lines[-1] if lines else "") or f"tinyllm-eval exited with status {code}"


class Scorer:
    """Runs the evaluations (one at a time) and remembers their results."""

    def __init__(self, cwd: str | Path, timeout_s: float = EVAL_TIMEOUT_S,
                 command: Callable[[str | Path, str | Path], list[str]] = eval_argv):
        self.cwd = Path(cwd)
        self.timeout_s = timeout_s
        self.command = command
        self._cache: dict[tuple, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def evaluate(self, out: Path, data: Path) -> dict[str, Any]:
        """tinyllm-eval's JSON for the run folder `out` on the text `data`; a UserError with its message."""
        key = (str(out), _stamp(out / CKPT_FILES["last"]), str(data), _stamp(data))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            try:
                proc = subprocess.run(self.command(out, data), cwd=self.cwd, capture_output=True, text=True,
                                      timeout=self.timeout_s, env=child_env(), stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise UserError(f"the evaluation took longer than {self.timeout_s:g} s; run it on the command "
                                "line instead") from None
            if proc.returncode != 0:
                raise UserError(_error_line(proc.stderr, proc.returncode))
            try:
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                raise UserError("tinyllm-eval printed no result") from None
            self._cache[key] = result
            return result

    def scores(self, runs: list[str], data_path: str, resolve: Callable[[str], Path],
               started_from: Callable[[Path], str] = lambda _: "") -> list[Score]:
        """One Score per run, in order; a run that cannot be scored gets its reason as the note."""
        if not runs:
            raise UserError("select the runs to evaluate (Compare runs)")
        if not (data_path or "").strip():
            raise UserError("type the path of a text file to evaluate on")
        data = resolve(data_path.strip())
        if not data.exists():
            raise UserError(f"{data_path}: no such file or folder")
        out = []
        for name in runs:
            folder = resolve(name)
            score = Score(run=name, started_from=started_from(folder))
            if not (folder / CKPT_FILES["last"]).is_file():
                score.note = "no checkpoint (ckpt.pt) yet"
            else:
                try:
                    r = self.evaluate(folder, data)
                    score.loss, score.bpb = float(r["loss"]), float(r["bpb"])
                    score.perplexity, score.tokens = float(r["perplexity"]), int(r["tokens"])
                except UserError as e:
                    score.note = str(e)
            out.append(score)
        return out
