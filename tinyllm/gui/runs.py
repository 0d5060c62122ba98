"""Run folders and the training processes behind them (ARCHITECTURE.md section 6).

No gradio and no torch here: this is the part of the GUI that is unit-tested on its own. A run is a folder.
Everything the GUI shows about a run comes from files in it, so a browser refresh or a restarted GUI loses
nothing:

- `gui_config.json`: the settings the GUI launched the run with (the run writes its resolved `config.json`),
- `gui.pid`: the process the GUI started (pid, command, start time), for liveness checks after a restart,
- `console.log`: the process's stdout and stderr, which also holds errors raised before training starts,
- `metrics.jsonl`, `ckpt.pt`, `ckpt_best.pt`, `train.log`: written by the training loop itself.

Stopping is cooperative: the `STOP` file first (the loop checks it after every step, saves and ends with
reason "interrupted"), then SIGTERM (which also saves), then a kill of the whole process group.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyllm.atomic import atomic_write_json  # noqa: F401 - used here and by gui.form
from tinyllm.config import REPO_ROOT, SHAPE_KEYS, Config
from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics
from tinyllm.rundir import lock_holder, pid_alive

# The training loop's stop file (tinyllm.runlog.STOP_FILE; importing train would load torch into the GUI).
STOP_FILE = "STOP"
PID_FILE = "gui.pid"
LAUNCH_CONFIG = "gui_config.json"
CONSOLE_LOG = "console.log"
CKPT_FILES = {"last": "ckpt.pt", "best": "ckpt_best.pt"}
RUN_FILES = ("ckpt.pt", "ckpt_best.pt", "metrics.jsonl")  # a folder holding one of these holds a run
END_STATUS = {"max_steps": "finished", "max_time": "finished", "interrupted": "interrupted", "error": "error"}
_IS_POSIX = os.name == "posix"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------- processes


def _signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (the run and any workers it forked), else to pid alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if _IS_POSIX and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def child_env() -> dict[str, str]:
    """The environment of the GUI's subprocesses (training, evaluation, export): unbuffered output, and this
    checkout first on the path, so the child imports the tinyllm this GUI runs even when the package is not
    installed or the GUI was started from another folder."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def launch_values(cfg: Config, resume: bool) -> dict[str, Any]:
    """The settings written to the launch JSON. A run with init_from leaves out the shape settings, new or
    resumed: they come from the model it started from (the form's would conflict with it), as they do when typed
    without them."""
    values = cfg.to_dict()
    if cfg.init_from:
        values = {k: v for k, v in values.items() if k not in SHAPE_KEYS}
    return values


def started_from(cfg: dict[str, Any]) -> str:
    """Where a run started from (its config's init_from: a run folder, a checkpoint or a Hugging Face folder),
    or "" for a run from random weights."""
    return str(cfg.get("init_from") or "")


def launch_command(config_path: Path, resume: bool) -> list[str]:
    """The training command the GUI runs: the CLI module with the run's JSON, nothing else on the line."""
    argv = [sys.executable, "-m", "tinyllm.cli", "--config", str(config_path)]
    return [*argv, "--resume"] if resume else argv


class RunManager:
    """Starts, watches and stops training processes, one per out_dir.

    `grace_stop_s` is how long the STOP file gets before SIGTERM, `grace_term_s` how long SIGTERM gets
    before the process group is killed. Both are generous because a step of a large model, or an
    evaluation, can take many seconds on a CPU, and the loop only looks at the stop file between steps.
    """

    def __init__(self, cwd: str | Path | None = None, grace_stop_s: float = 30.0, grace_term_s: float = 30.0,
                 command: Callable[[Path, bool], list[str]] = launch_command):
        self.cwd = Path(cwd or os.getcwd()).resolve()
        self.grace_stop_s = grace_stop_s
        self.grace_term_s = grace_term_s
        self.command = command
        self._procs: dict[Path, subprocess.Popen] = {}
        self._stopping: dict[Path, threading.Thread] = {}
        self._stop_results: dict[Path, str] = {}
        self._lock = threading.Lock()

    def resolve(self, out_dir: str | Path) -> Path:
        """Relative paths mean what they mean to the training process, which runs in `self.cwd`."""
        p = Path(out_dir).expanduser()
        return (p if p.is_absolute() else self.cwd / p).resolve()

    # ------------------------------------------------------------------ liveness
    def pid_info(self, out: Path) -> dict[str, Any] | None:
        return read_json(out / PID_FILE)

    def live_pid(self, out_dir: str | Path) -> int | None:
        """The pid of the process training in the folder: the GUI's own child, the one its launch record names
        (the GUI was restarted), or any other trainer holding the folder's lock (one started in a shell)."""
        out = self.resolve(out_dir)
        proc = self._procs.get(out)
        if proc is not None and proc.poll() is None:  # poll() also reaps it: a finished child is no zombie
            return proc.pid
        info = self.pid_info(out)
        if proc is None and info and pid_alive(int(info.get("pid", 0)), info.get("marker")):
            return int(info["pid"])
        return lock_holder(out)

    def is_running(self, out_dir: str | Path) -> bool:
        return self.live_pid(out_dir) is not None

    def is_stopping(self, out_dir: str | Path) -> bool:
        t = self._stopping.get(self.resolve(out_dir))
        return t is not None and t.is_alive()

    def running(self) -> list[Path]:
        return [out for out in list(self._procs) if self.is_running(out)]

    # ------------------------------------------------------------------ start
    def start(self, cfg: Config, resume: bool = False) -> Path:
        """Launch training for `cfg` in its own out_dir; returns the run folder. Raises UserError when the
        folder is busy, would be overwritten, has nothing to resume, or disagrees with its checkpoint."""
        with self._lock:
            out = self.resolve(cfg.out_dir)
            self.preflight(cfg, resume)
            pid = self.live_pid(out)
            if pid is not None:
                raise UserError(f"--out_dir {cfg.out_dir} is in use by a running run (pid {pid}); stop it, "
                                "or choose another out_dir")
            if resume:
                self._check_resumable(out, cfg)
            elif not getattr(cfg, "overwrite", False) and any((out / n).exists() for n in RUN_FILES):
                resumable = "; resume it, " if (out / CKPT_FILES["last"]).exists() else " (with no ckpt.pt to resume); "
                raise UserError(f"--out_dir {cfg.out_dir} already holds a run{resumable}tick overwrite to replace "
                                "it, or choose another out_dir")
            out.mkdir(parents=True, exist_ok=True)
            config_path = out / LAUNCH_CONFIG
            atomic_write_json(config_path, launch_values(cfg, resume))
            (out / STOP_FILE).unlink(missing_ok=True)
            argv = self.command(config_path, resume)
            env = child_env()
            started_at = time.time()  # before the process exists, so anything it writes is newer
            with open(out / CONSOLE_LOG, "ab") as log:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
                log.flush()
                kwargs: dict[str, Any] = {"start_new_session": True} if _IS_POSIX else {
                    "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
                proc = subprocess.Popen(argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, **kwargs)
            self._procs[out] = proc
            self._stop_results.pop(out, None)
            atomic_write_json(out / PID_FILE, {
                "pid": proc.pid, "marker": str(config_path), "argv": argv, "started_at": started_at,
                "resume": resume,
            })
            return out

    def preflight(self, cfg: Config, resume: bool = False) -> None:
        """What the trainer would refuse as soon as it starts, refused before a folder is made or a process
        started: data that is missing or (from its first bytes) not UTF-8, a device this machine lacks, a model
        to start from that is not there. Quick enough for every edit of the form."""
        from tinyllm.device import resolve_device
        from tinyllm.text_source import glance_source

        data = Path(cfg.data_path).expanduser()
        glance_source(data if data.is_absolute() else self.cwd / data)  # (not resolve(): a pattern stays one)
        resolve_device(cfg.device)
        if cfg.init_from and not resume and not self.resolve(cfg.init_from).exists():
            raise UserError(f"--init_from: {cfg.init_from} not found; pick a run, or type the path of a run "
                            "folder, a checkpoint or a Hugging Face model folder")

    @staticmethod
    def _check_resumable(out: Path, cfg: Config) -> None:
        if not (out / CKPT_FILES["last"]).exists():
            raise UserError(f"--out_dir {cfg.out_dir} has no ckpt.pt to resume; start a new run instead")
        saved = read_json(out / "config.json") or {}
        for key in () if cfg.init_from else SHAPE_KEYS:  # launch_values leaves them out
            if key in saved and saved[key] != getattr(cfg, key):
                raise UserError(f"--{key} {getattr(cfg, key)} conflicts with the checkpoint in {cfg.out_dir}, "
                                f"which has {key}={saved[key]}; load its settings (Runs tab) or start a new run "
                                "in another out_dir")

    # ------------------------------------------------------------------ stop
    def _wait_exit(self, out: Path, pid: int, timeout: float, keep_stop_file: bool = False) -> bool:
        """Wait up to `timeout` s for the run (process `pid`) to end. With `keep_stop_file`, re-create the STOP
        file whenever it is gone: a run still starting up deletes a stale one, and must still see ours at its
        first step."""
        proc = self._procs.get(out)
        if proc is not None and proc.pid != pid:  # an earlier child of ours; the run is another process
            proc = None
        deadline = time.monotonic() + timeout
        while True:
            if keep_stop_file and not (out / STOP_FILE).exists():
                (out / STOP_FILE).touch()
            left = deadline - time.monotonic()
            if proc is not None:
                try:
                    proc.wait(timeout=max(0.0, min(0.2, left)))
                    return True
                except subprocess.TimeoutExpired:
                    pass
            elif self.live_pid(out) != pid:  # not our child (the GUI was restarted, or a shell's): poll
                return True
            else:
                time.sleep(max(0.0, min(0.2, left)))
            if left <= 0:
                return False

    def stop(self, out_dir: str | Path) -> str:
        """Stop a run and wait for it to end: STOP file, then SIGTERM, then kill. Returns what it took."""
        out = self.resolve(out_dir)
        pid = self.live_pid(out)
        if pid is None:
            result = "not running"
        else:
            self._note(out, f"asked to stop: created {STOP_FILE}")
            if self._wait_exit(out, pid, self.grace_stop_s, keep_stop_file=True):
                proc = self._procs.get(out)
                code = proc.returncode if proc is not None and proc.pid == pid else 0  # a shell's: unknown
                # A run that failed while starting up ends at once too, without having saved anything.
                result = ("stopped at the end of a step (checkpoint saved)" if not code else
                          f"ended with an error (exit status {code}), nothing saved; see its console log")
            else:
                self._note(out, f"still running {self.grace_stop_s:g} s after {STOP_FILE}: sending SIGTERM")
                # SIGTERM to the run alone: its handler saves, then ends its own workers.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
                if self._wait_exit(out, pid, self.grace_term_s):
                    result = "stopped by SIGTERM (checkpoint saved)"
                else:
                    self._note(out, f"still running {self.grace_term_s:g} s after SIGTERM: killing its process group")
                    if _IS_POSIX:
                        _signal_group(pid, signal.SIGKILL)
                    else:
                        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True)
                    self._wait_exit(out, pid, 10.0)
                    result = "killed (no checkpoint written since the last one)"
        (out / STOP_FILE).unlink(missing_ok=True)
        self._stop_results[out] = result
        if result != "not running":
            self._note(out, result)
        return result

    @staticmethod
    def _note(out: Path, msg: str) -> None:
        """A line in the run's console log, so the log tells what the GUI did to the process and when."""
        with contextlib.suppress(OSError), open(out / CONSOLE_LOG, "a", encoding="utf-8") as f:
            f.write(f"=== {time.strftime('%H:%M:%S')} GUI: {msg}\n")

    def stop_async(self, out_dir: str | Path) -> str:
        """Begin stopping in the background (the GUI must not block on a slow step) and say so."""
        out = self.resolve(out_dir)
        if not self.is_running(out):
            return f"{out_dir}: not running"
        if self.is_stopping(out):
            return f"{out_dir}: already stopping"
        t = threading.Thread(target=self.stop, args=(out,), daemon=True, name=f"stop {out.name}")
        self._stopping[out] = t
        t.start()
        return f"{out_dir}: stopping (asked the run to save and stop at the end of its current step)"

    def last_stop_result(self, out_dir: str | Path) -> str | None:
        return self._stop_results.get(self.resolve(out_dir))

    def shutdown(self, stop_runs: bool = False) -> None:
        """Called when the GUI closes: runs go on by default (they are independent processes)."""
        if stop_runs:
            for out in self.running():
                self.stop(out)
        for t in list(self._stopping.values()):
            t.join(timeout=self.grace_stop_s + self.grace_term_s + 15)


# ---------------------------------------------------------------------------------------------- run folders


@dataclass
class RunInfo:
    """What the Runs tab and the monitor know about one run folder."""

    out_dir: Path
    status: str  # running, stopping, finished, interrupted, error, unknown, new
    detail: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    max_steps: int | None = None
    best_val_loss: float | None = None
    last_loss: float | None = None
    time_s: float = 0.0
    has_last: bool = False
    has_best: bool = False
    mtime: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.out_dir.name


def run_config(out: Path) -> dict[str, Any]:
    """The resolved config the run wrote, else the one the GUI launched it with."""
    return read_json(out / "config.json") or read_json(out / LAUNCH_CONFIG) or {}


def derive_status(rows: list[dict[str, Any]], alive: bool, launch: dict[str, Any] | None,
                  metrics_mtime: float) -> tuple[str, str]:
    """(status, detail) from the metrics rows and whether the process lives.

    A live process is running. Otherwise the last row decides: an end row gives its reason. A run the GUI
    launched that wrote nothing since (metrics not modified after the launch) failed before training: an error,
    even when an older end row (from before a resume) is the last row. No end row and a launch record: the
    process died without one (killed or crashed). No end row and no record: started elsewhere, unknown.
    """
    if alive:
        return "running", ""
    if launch is not None and metrics_mtime < float(launch.get("started_at", 0)):
        return "error", "the process ended before training started; see its console log"
    last = rows[-1] if rows else None
    if last and last.get("event") == "end":
        reason = str(last.get("reason", ""))
        status = END_STATUS.get(reason, reason or "unknown")
        return status, str(last.get("error", "")) or (reason if reason != status else "")
    if launch is not None:
        return "error", "the process ended without an end row (killed or crashed); see its console log"
    return ("unknown", "no end row and no GUI launch record (started elsewhere?)") if rows else ("new", "")


def run_info(out: Path, manager: RunManager | None = None) -> RunInfo:
    metrics = out / "metrics.jsonl"
    rows = read_metrics(metrics)
    launch = read_json(out / PID_FILE)
    if manager is not None:
        alive = manager.is_running(out)
    else:
        alive = bool(launch) and pid_alive(int(launch.get("pid", 0)), launch.get("marker"))
    mtime = metrics.stat().st_mtime if metrics.exists() else 0.0
    status, detail = derive_status(rows, alive, launch, mtime)
    if manager is not None and alive and manager.is_stopping(out):
        status = "stopping"
    cfg = run_config(out)
    vals = [r["val_loss"] for r in rows if isinstance(r.get("val_loss"), (int, float))]
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
    mtimes = [p.stat().st_mtime for p in out.iterdir() if p.is_file()] if out.is_dir() else []
    return RunInfo(
        out_dir=out, status=status, detail=detail, config=cfg,
        step=int(rows[-1].get("step", 0)) if rows else 0, max_steps=cfg.get("max_steps"),
        best_val_loss=min(vals) if vals else None, last_loss=losses[-1] if losses else None,
        time_s=float(rows[-1].get("time_s", 0.0)) if rows else 0.0,
        has_last=(out / CKPT_FILES["last"]).exists(), has_best=(out / CKPT_FILES["best"]).exists(),
        mtime=max(mtimes, default=0.0), rows=rows,
    )


def _is_run_folder(p: Path) -> bool:
    if not p.is_dir():
        return False
    if any((p / n).exists() for n in (LAUNCH_CONFIG, "metrics.jsonl", CKPT_FILES["last"])):
        return True
    # A config.json alone: a run that has not written anything else yet, unless it is a Hugging Face model's
    # (an export kept under the output root), which names its architectures.
    cfg = read_json(p / "config.json")
    return cfg is not None and "architectures" not in cfg


def discover_runs(root: str | Path, manager: RunManager | None = None,
                  extra: list[str | Path] = ()) -> list[RunInfo]:
    """Run folders directly under `root` (and `extra` folders), newest first."""
    base = manager.resolve(root) if manager else Path(root).resolve()
    folders = {p.resolve() for p in base.iterdir() if _is_run_folder(p)} if base.is_dir() else set()
    if _is_run_folder(base):
        folders.add(base)
    for e in extra:
        p = manager.resolve(e) if manager else Path(e).resolve()
        if _is_run_folder(p):
            folders.add(p)
    return sorted((run_info(p, manager) for p in folders), key=lambda r: r.mtime, reverse=True)


def config_summary(cfg: dict[str, Any]) -> str:
    """One line: the model's shape and the data, enough to tell runs apart in a table."""
    if not cfg:
        return ""
    shape = "/".join(str(cfg.get(k, "?")) for k in ("n_layer", "n_head", "n_embd", "block_size"))
    return f"L/H/E/T {shape}, batch {cfg.get('batch_size', '?')}, lr {cfg.get('lr', '?')}, " \
           f"data {Path(str(cfg.get('data_path', '?'))).name}"


# ---------------------------------------------------------------------------------------------- logs

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tail_text(path: Path, max_lines: int = 40, max_bytes: int = 64_000) -> str:
    """The end of a log, as a terminal would show it: progress-bar redraws (\\r) keep their last state."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
    lines = []
    for line in text.rstrip("\n").split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines[-max_lines:])


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
