"""The run folder (tinyllm.rundir): one run per folder, one process per run, and whether a pid is still the run.
The same promises end to end, through the trainer, are in tests/test_safety.py."""

import json
import os
from pathlib import Path

import pytest

from tinyllm.errors import UserError
from tinyllm.metrics import read_metrics
from tinyllm.rundir import RunLock, check_writable, holds_run, pid_alive, prepare_run_dir


def test_pid_alive_checks_the_command_line():
    assert pid_alive(os.getpid())
    if Path("/proc/self/cmdline").exists():
        assert not pid_alive(os.getpid(), marker="no-such-marker-in-my-command-line")
    assert not pid_alive(0)


def test_a_fresh_run_is_refused_in_a_folder_holding_one_unless_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    prepare_run_dir(out, None, overwrite=False)  # an empty folder is fine
    (out / "ckpt.pt").write_bytes(b"old")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")
    assert holds_run(out) == ["ckpt.pt", "metrics.jsonl"]
    with pytest.raises(UserError, match=r"already holds a run \(ckpt.pt, metrics.jsonl\).*--resume.*--overwrite"):
        prepare_run_dir(out, None, overwrite=False)
    assert (out / "ckpt.pt").read_bytes() == b"old"
    prepare_run_dir(out, None, overwrite=True)
    assert holds_run(out) == [] and (out / "notes.txt").read_text() == "mine"  # only the run's own files go
    assert (out / ".replaced" / "ckpt.pt").read_bytes() == b"old"  # set aside until the new run has a checkpoint


def test_a_run_without_a_checkpoint_is_not_sent_to_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')  # killed, or failed, before its first checkpoint
    with pytest.raises(UserError, match=r"\(metrics.jsonl\); it has no ckpt.pt to resume: replace it with --overwrite"):
        prepare_run_dir(tmp_path, None, overwrite=False)


def test_resume_drops_the_metric_rows_after_the_checkpoint(tmp_path):
    rows = [{"step": 5, "loss": 2.0}, {"step": 10, "loss": 1.5}, {"step": 10, "event": "end"},
            {"step": 15, "loss": 1.2}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 20, "lo')  # a half-written row
    prepare_run_dir(tmp_path, 10, overwrite=False)
    assert read_metrics(metrics) == rows[:3]
    assert metrics.read_text().endswith("}\n")  # whole lines only: the next append starts a fresh row
    before = metrics.read_bytes()
    prepare_run_dir(tmp_path, 10, overwrite=False)
    assert metrics.read_bytes() == before


def test_one_lock_holder_at_a_time(tmp_path):
    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    first.acquire()
    try:
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
        if os.name == "posix":  # flock: a second open file is refused even in the same process
            with pytest.raises(UserError, match=f"in use by another training process \\(pid {os.getpid()}\\)"):
                second.acquire()
    finally:
        first.release()
    second.acquire()  # released: the folder is free again
    second.release()


def test_an_unwritable_out_dir_is_a_user_error(tmp_path):
    check_writable(tmp_path / "new" / "run")  # created on the way
    assert (tmp_path / "new" / "run").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="--out_dir .*cannot write there"):
        check_writable(blocker / "run")
