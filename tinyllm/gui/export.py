"""The Export tab's work, without gradio: say what a run exports as (or why it cannot) before anything is
written, and export in a subprocess running exactly the command the tab shows.

The check loads the checkpoint's model settings and tokenizer through `tinyllm.export.check_run`, the same
function the exporters use to refuse, so the tab and the command line can never disagree. The export itself
is `python -m tinyllm.export ...` run in the GUI's working folder, so a long export never holds the GUI's
process, and what the user copies from the tab does exactly what the button did.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import UserError
from tinyllm.export import DEFAULT_GGUF_DTYPE, FORMATS, check_run, command, command_text, default_output
from tinyllm.export_common import check_output
from tinyllm.gui.runs import child_env

EXPORT_TIMEOUT_S = 3600.0
_cache: dict[tuple, tuple[bool, str]] = {}


@dataclass
class ExportPlan:
    ok: bool  # the Export button may be pressed
    message: str  # markdown: what the run exports as, or why it cannot
    argv: list[str]  # the command, after `python`
    output: str  # the output path as shown (relative to the GUI's working folder where inside it)

    @property
    def command(self) -> str:
        return command_text(self.argv)


def suggested_output(run: str, fmt: str, dtype: str | None, which: str) -> str:
    return str(default_output(run, fmt, dtype, which)) if run else ""


def _check(out: Path, which: str, fmt: str, dtype: str | None) -> tuple[bool, str]:
    """(exportable, one line), cached while the checkpoint file is unchanged."""
    from tinyllm.checkpoint import CKPT_NAMES

    ckpt = out / CKPT_NAMES[which]
    try:
        st = ckpt.stat()
        key = (str(ckpt), st.st_mtime_ns, st.st_size, fmt, dtype)
    except OSError:
        key = None
    if key is not None and key in _cache:
        return _cache[key]
    try:
        result = (True, check_run(out, which, fmt, dtype))
    except UserError as e:
        result = (False, str(e))
    if key is not None:
        _cache[key] = result
    return result


def plan_export(resolve, run: str | None, which: str, fmt: str, dtype: str | None, output: str | None,
                no_ema: bool = False, overwrite: bool = False) -> ExportPlan:
    """What pressing Export would do. `resolve` turns a path as typed into an absolute one (RunManager.resolve)."""
    fmt = fmt if fmt in FORMATS else "gguf"
    dtype = (dtype or DEFAULT_GGUF_DTYPE) if fmt == "gguf" else None
    output = (output or "").strip() or suggested_output(run or "", fmt, dtype, which)
    argv = command(run or "RUN", fmt, output or "OUTPUT", which, dtype, no_ema, overwrite)
    if not run:
        return ExportPlan(False, "Pick a run with a checkpoint.", argv, output)
    ok, line = _check(resolve(run), which, fmt, dtype)
    if not ok:
        return ExportPlan(False, f"**refused:** {line}", argv, output)
    message = f"**{FORMATS[fmt]}:** {line}"
    target = resolve(output)
    empty_folder = fmt == "hf" and target.is_dir() and not any(target.iterdir())
    if target.exists() and not empty_folder and not overwrite:
        return ExportPlan(False, f"{message}\n\n**`{output}` already exists:** tick *replace an existing output* "
                                 "or choose another path.", argv, output)
    try:  # what the export itself refuses: the run's own folder or files, a folder for a .gguf, ...
        check_output(resolve(run), target, fmt, overwrite)
    except UserError as e:
        return ExportPlan(False, f"{message}\n\n**refused:** {e}", argv, output)
    return ExportPlan(True, message, argv, output)


def run_export(plan: ExportPlan, cwd: str | Path, timeout_s: float = EXPORT_TIMEOUT_S) -> tuple[bool, str]:
    """Run the plan's command; (succeeded, markdown to show)."""
    if not plan.ok:
        return False, plan.message
    try:
        proc = subprocess.run([sys.executable, *plan.argv], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout_s, env=child_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"**error:** the export took longer than {timeout_s:.0f} s and was stopped"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if proc.returncode == 0:
        said = next((ln for ln in reversed(lines) if ln.startswith("exported")), "")
        return True, f"**wrote `{plan.output}`**\n\n{said}"
    if proc.returncode == 2 and lines and lines[-1].startswith("error:"):
        return False, f"**{lines[-1]}**"
    tail = "\n".join(lines[-15:])
    return False, f"**error:** the export failed (exit status {proc.returncode}):\n\n```\n{tail}\n```"
