"""The run folder: one run per folder, one process per run.

A fresh run in a folder that already holds one is refused unless --overwrite says to replace it, so runs
are never mixed and checkpoints never silently destroyed. A lock file (an flock held for the life of the
process) refuses a second trainer on the same folder; the kernel drops the lock when its process dies, even
by SIGKILL, so a stale lock file from a dead process never blocks anyone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tinyllm.atomic import atomic_write_text
from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics

RUN_FILES = ("ckpt.pt", "ckpt_best.pt", "metrics.jsonl", "train.log")
# What --overwrite sets aside: the run's files, and what describes them. They stay in REPLACED until the new run
# has saved a checkpoint, and come back if it ends without one, so a failed replacement loses nothing.
SET_ASIDE_FILES = (*RUN_FILES, "config.json", "tokenizer.json", "loss.png")
REPLACED = ".replaced"
LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # Windows: fall back to a pid file checked for liveness
    fcntl = None


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    code = ctypes.c_ulong()
    ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    ctypes.windll.kernel32.CloseHandle(handle)
    return code.value == 259  # STILL_ACTIVE


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Is `pid` a live (not zombie) process, and, where /proc can tell, one whose command line holds `marker`?

    The marker guards against pid reuse: after a reboot or a long time, the pid in a stale gui.pid may
    belong to an unrelated process, which must never be reported as the run, let alone signalled.
    """
    if pid <= 0:
        return False
    if os.name != "posix":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return True
    if state in ("Z", "X"):
        return False
    return marker is None or os.fsencode(marker) in cmdline


class RunLock:
    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise UserError(f"--out_dir {self.path.parent} is in use by another training process "
                                f"(pid {self._holder()}); wait for it to finish or choose another --out_dir") from None
        else:
            holder = self._holder()
            if holder and holder != os.getpid() and pid_alive(holder):
                os.close(fd)
                raise UserError(f"--out_dir {self.path.parent} is in use by another training process (pid {holder}); "
                                "wait for it to finish or choose another --out_dir")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def lock_holder(out: Path) -> int | None:
    """The pid of the live trainer holding OUT's run lock, else None: whoever started it (the GUI, a shell).

    It looks without taking the lock, since taking it even for an instant could refuse a trainer starting at
    that moment: on Linux /proc/locks lists the flocks held by file; elsewhere the pid in the file is checked
    for life."""
    path = Path(out) / LOCK_FILE
    try:
        st = path.stat()
        pid = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return pid if pid_alive(pid) else None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE 7167 fe:00:2146811 0 EOF"
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode and fields[4].isdigit():
            return int(fields[4])
    return None


def holds_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (Path(out) / name).exists()]


def refuse_to_mix(out: Path, overwrite: bool) -> list[str]:
    """A fresh run may not start in a folder that holds one unless --overwrite says so (nothing is changed
    here). Returns the run files there."""
    existing = holds_run(out)
    if existing and not overwrite:
        resume = "continue it with --resume, " if "ckpt.pt" in existing else "it has no ckpt.pt to resume: "
        raise UserError(f"--out_dir {out} already holds a run ({', '.join(existing)}); {resume}replace it with "
                        "--overwrite, or choose another --out_dir")
    return existing


def prepare_run_dir(out: Path, resume_step: int | None, overwrite: bool) -> None:
    """Before a run writes anything: refuse to mix runs, clear a replaced run, and on resume drop the metric
    rows of steps after the checkpoint (they are about to be trained again)."""
    out = Path(out)
    if resume_step is None:
        existing = refuse_to_mix(out, overwrite)
        aside = out / REPLACED
        # A set-aside run is already there when the run meant to replace it was killed before its first
        # checkpoint: that older run is the one worth keeping, so the killed run's files go.
        keep_older = aside.is_dir()
        if existing and not keep_older:
            aside.mkdir()
        for name in SET_ASIDE_FILES:
            if (out / name).exists():
                if keep_older or not existing:
                    (out / name).unlink()
                else:
                    os.replace(out / name, aside / name)
        return
    metrics = out / "metrics.jsonl"
    rows = read_metrics(metrics)
    kept = [r for r in rows if r.get("step", 0) <= resume_step]
    if len(kept) != len(rows) or (metrics.exists() and not metrics.read_text().endswith("\n")):
        atomic_write_text(metrics, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def discard_replaced(out: Path) -> bool:
    """The new run has a checkpoint: the run it replaced goes for good. Whether there was one."""
    aside = Path(out) / REPLACED
    if not aside.is_dir():
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


def restore_replaced(out: Path) -> bool:
    """The new run ends without a checkpoint: its files go and the run it was to replace comes back, as it was.
    Whether there was one."""
    out = Path(out)
    aside = out / REPLACED
    if not aside.is_dir():
        return False
    for name in SET_ASIDE_FILES:
        (out / name).unlink(missing_ok=True)
        if (aside / name).exists():
            os.replace(aside / name, out / name)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def check_writable(out: Path) -> None:
    """Refuse an --out_dir this process cannot write into, before any training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"--out_dir {out}: cannot write there ({e.strerror}); choose a writable folder") from None
