"""The GUI's run management (tinyllm.gui.runs), gradio-free: run folders and their status, starting and stopping
real processes, and the missing-gradio message. The form, monitor, chart and Data tab have their own files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from tinyllm import config as C
from tinyllm.errors import UserError
from tinyllm.gui import runs as R
from tinyllm.rundir import lock_holder

posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups and signals as on POSIX")


def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    """Poll until cond() is truthy (a deadline, not a timing assumption)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------------- status


def write_run(out: Path, rows: list[dict], launch: dict | None = None, cfg: dict | None = None) -> Path:
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "config.json").write_text(json.dumps(cfg or {"max_steps": 100, "n_layer": 1}))
    if launch is not None:
        (out / R.PID_FILE).write_text(json.dumps(launch))
    return out


def test_status_from_end_row_and_liveness():
    train = {"step": 5, "time_s": 1.0, "loss": 2.0}
    assert R.derive_status([train], True, None, 10) == ("running", "")
    assert R.derive_status([train, {"step": 9, "event": "end", "reason": "max_steps"}], False, None, 10)[0] \
        == "finished"
    assert R.derive_status([train, {"step": 9, "event": "end", "reason": "max_time"}], False, None, 10)[0] \
        == "finished"
    assert R.derive_status([train, {"step": 9, "event": "end", "reason": "interrupted"}], False, None, 10) \
        == ("interrupted", "")
    status, detail = R.derive_status([{"step": 9, "event": "end", "reason": "error", "error": "boom"}], False,
                                     None, 10)
    assert (status, detail) == ("error", "boom")
    # Launched by the GUI (at time 100): died without an end row; or died before writing anything, even when
    # an older end row (from before a resume) is the last one.
    launch = {"started_at": 100.0}
    assert R.derive_status([train], False, launch, 150.0)[0] == "error"
    ended = [train, {"step": 9, "event": "end", "reason": "interrupted"}]
    assert R.derive_status(ended, False, launch, 150.0)[0] == "interrupted"
    status, detail = R.derive_status(ended, False, launch, 50.0)
    assert status == "error" and "before training started" in detail
    assert R.derive_status([train], False, None, 10)[0] == "unknown"
    assert R.derive_status([], False, None, 0)[0] == "new"


def test_discover_runs_reads_folders(tmp_path):
    root = tmp_path / "out"
    write_run(root / "done", [{"step": 5, "time_s": 1.0, "loss": 2.5}, {"step": 10, "time_s": 2, "val_loss": 2.2},
                              {"step": 20, "time_s": 4, "val_loss": 2.0}, {"step": 20, "event": "end",
                                                                            "reason": "max_steps"}],
              cfg={"max_steps": 20, "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "data_path": "a.txt"})
    write_run(root / "dead", [{"step": 5, "time_s": 1.0, "loss": 2.5}],
              launch={"pid": 2 ** 22 + 12345, "marker": "nothing", "started_at": 0.0})
    (root / "not_a_run").mkdir()
    (root / "hf_export").mkdir()  # a Hugging Face export kept under the root is a model, not a run
    (root / "hf_export" / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    (root / "starting").mkdir()  # a run that has written only its config so far
    (root / "starting" / "config.json").write_text(json.dumps({"max_steps": 5}))
    runs = {r.name: r for r in R.discover_runs(root)}
    assert set(runs) == {"done", "dead", "starting"}
    assert runs["done"].status == "finished" and runs["done"].best_val_loss == 2.0 and runs["done"].step == 20
    assert runs["done"].last_loss == 2.5 and runs["done"].max_steps == 20
    assert runs["dead"].status == "error"
    assert "1/2/32/32" in R.config_summary(runs["done"].config) and "a.txt" in R.config_summary(runs["done"].config)
    assert R.discover_runs(tmp_path / "missing") == []


def test_tail_text_keeps_the_last_progress_bar_state(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"first\n 10%|#   \r 50%|#####\r\x1b[32m 90%|#########\x1b[0m\nlast line\n")
    assert R.tail_text(log) == "first\n 90%|#########\nlast line"
    assert R.tail_text(log, max_lines=1) == "last line"
    assert R.tail_text(tmp_path / "none.log") == ""


def test_stop_file_name_matches_the_training_loop():
    from tinyllm import runlog

    assert R.STOP_FILE == runlog.STOP_FILE


# ---------------------------------------------------------------------------------------------- processes

# Stand-ins for the training process: each writes "ready" once its signal handling is set up.
COOPERATIVE = """
import json, pathlib, sys, time
out = pathlib.Path(sys.argv[1]).parent
(out / "ready").touch()
while not (out / "STOP").exists():
    time.sleep(0.02)
(out / "STOP").unlink()
with open(out / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 1, "time_s": 0.1, "event": "end", "reason": "interrupted"}) + "\\n")
"""
# Like the trainer starting up: it deletes a STOP file it finds (a stale one, it must assume) before its loop.
STARTING = """
import pathlib, sys, time
out = pathlib.Path(sys.argv[1]).parent
(out / "ready").touch()
while not (out / "STOP").exists():
    time.sleep(0.02)
(out / "STOP").unlink()
(out / "deleted").touch()
while not (out / "STOP").exists():
    time.sleep(0.02)
"""
TERM_ONLY = """
import pathlib, sys, time
out = pathlib.Path(sys.argv[1]).parent
(out / "ready").touch()
while True:
    time.sleep(0.05)
"""
STUBBORN = """
import pathlib, signal, subprocess, sys, time
out = pathlib.Path(sys.argv[1]).parent
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"])
(out / "child.pid").write_text(str(child.pid))
(out / "ready").touch()
while True:
    time.sleep(0.05)
"""


def fake_manager(tmp_path: Path, script: str, **kw) -> R.RunManager:
    """A manager whose "trainer" is `script`, in a working folder holding the default data file (which the
    manager checks before it starts anything)."""
    data = tmp_path / C.Config.data_path
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("some text to learn from\n", encoding="utf-8")
    return R.RunManager(cwd=tmp_path, command=lambda cfg_path, resume: [sys.executable, "-c", script,
                                                                         str(cfg_path)], **kw)


@posix_only
def test_stop_is_cooperative_first(tmp_path):
    m = fake_manager(tmp_path, COOPERATIVE, grace_stop_s=20, grace_term_s=1)
    out = m.start(C.Config(out_dir="runs/a"))
    assert out == tmp_path / "runs" / "a" and json.loads((out / R.LAUNCH_CONFIG).read_text())["out_dir"] == "runs/a"
    pid = json.loads((out / R.PID_FILE).read_text())["pid"]
    wait_for(lambda: (out / "ready").exists(), what="the process to start")
    assert m.is_running("runs/a") and R.run_info(out, m).status == "running"
    assert m.stop("runs/a").startswith("stopped at the end of a step")
    assert not R.pid_alive(pid) and not (out / "STOP").exists()
    assert R.run_info(out, m).status == "interrupted"
    # A fresh manager (a restarted GUI) sees the same thing from the folder alone.
    assert R.run_info(out, R.RunManager(cwd=tmp_path)).status == "interrupted"


@posix_only
def test_stop_reaches_a_run_that_is_still_starting(tmp_path):
    m = fake_manager(tmp_path, STARTING, grace_stop_s=20, grace_term_s=1)
    out = m.start(C.Config(out_dir="s"))
    wait_for(lambda: (out / "ready").exists(), what="the process to start")
    assert m.stop(out).startswith("stopped at the end of a step")
    assert (out / "deleted").exists() and m._procs[out].returncode == 0


# A run that fails while starting up (bad data, say): it ends with status 2 when it sees the STOP file too.
FAILS_AT_START = """
import pathlib, sys, time
out = pathlib.Path(sys.argv[1]).parent
(out / "ready").touch()
while not (out / "STOP").exists():
    time.sleep(0.02)
sys.exit(2)
"""


@posix_only
def test_stop_of_a_run_that_fails_does_not_claim_a_checkpoint(tmp_path):
    m = fake_manager(tmp_path, FAILS_AT_START, grace_stop_s=20, grace_term_s=1)
    out = m.start(C.Config(out_dir="f"))
    wait_for(lambda: (out / "ready").exists(), what="the process to start")
    result = m.stop(out)
    assert result.startswith("ended with an error (exit status 2)") and "checkpoint saved" not in result
    assert result in (out / R.CONSOLE_LOG).read_text()


@posix_only
def test_stop_escalates_to_sigterm(tmp_path):
    m = fake_manager(tmp_path, TERM_ONLY, grace_stop_s=0.3, grace_term_s=20)
    out = m.start(C.Config(out_dir=str(tmp_path / "b")))
    wait_for(lambda: (out / "ready").exists(), what="the process to start")
    assert m.stop(out).startswith("stopped by SIGTERM")
    assert m._procs[out].returncode == -signal.SIGTERM
    assert R.run_info(out, m).status == "error"  # no end row: it did not save, and the GUI says so


@posix_only
def test_stop_kills_the_process_tree_when_signals_are_ignored(tmp_path):
    m = fake_manager(tmp_path, STUBBORN, grace_stop_s=0.3, grace_term_s=0.3)
    out = m.start(C.Config(out_dir=str(tmp_path / "c")))
    wait_for(lambda: (out / "ready").exists(), what="the process to start")
    child = int((out / "child.pid").read_text())
    assert R.pid_alive(child)
    assert m.stop(out).startswith("killed")
    assert m._procs[out].returncode == -signal.SIGKILL
    wait_for(lambda: not R.pid_alive(child), timeout=10, what="the grandchild to die")


# A trainer started in a shell: it holds the folder's run lock as the real one does, and stops cooperatively.
LOCKED = """
import json, pathlib, sys, time
from tinyllm.rundir import RunLock
out = pathlib.Path(sys.argv[1])
lock = RunLock(out)
lock.acquire()
(out / "ready").touch()
while not (out / "STOP").exists():
    time.sleep(0.02)
with open(out / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 2, "time_s": 0.1, "event": "end", "reason": "interrupted"}) + "\\n")
"""


@posix_only
def test_a_trainer_started_elsewhere_in_a_guis_folder_is_seen_as_running(tmp_path):
    """The GUI launched a run in the folder once; now a trainer from a shell holds it. The GUI must report it
    running (not "killed or crashed"), refuse to start or resume into it, and stop that process."""
    m = fake_manager(tmp_path, COOPERATIVE, grace_stop_s=20, grace_term_s=1)
    out = m.start(C.Config(out_dir="r"))
    wait_for(lambda: (out / "ready").exists(), what="the GUI's run to start")
    assert m.stop(out).startswith("stopped at the end of a step")
    (out / "ready").unlink()
    assert not m.is_running(out) and lock_holder(out) is None  # a lock file with no holder

    shell = subprocess.Popen([sys.executable, "-c", LOCKED, str(out)], env=R.child_env())
    try:
        wait_for(lambda: (out / "ready").exists(), what="the shell's trainer to start")
        assert lock_holder(out) == shell.pid
        assert m.live_pid(out) == shell.pid and R.run_info(out, m).status == "running"
        assert R.run_info(out, R.RunManager(cwd=tmp_path)).status == "running"  # a restarted GUI too
        with pytest.raises(UserError, match=f"in use by a running run \\(pid {shell.pid}\\)"):
            m.start(C.Config(out_dir="r"), resume=True)
        assert m.stop(out).startswith("stopped at the end of a step")
        assert shell.wait(timeout=20) == 0
    finally:
        shell.kill()
    assert not m.is_running(out) and R.run_info(out, m).status == "interrupted"


@posix_only
def test_runs_do_not_clash_and_busy_folders_are_refused(tmp_path):
    m = fake_manager(tmp_path, TERM_ONLY, grace_stop_s=0.1, grace_term_s=20)
    a = m.start(C.Config(out_dir="a"))
    b = m.start(C.Config(out_dir="b"))
    try:
        with pytest.raises(UserError, match="in use by a running run"):
            m.start(C.Config(out_dir="a"))
        with pytest.raises(UserError, match="in use by a running run"):
            m.start(C.Config(out_dir=str(a)), resume=True)
        assert m.is_running("a") and m.is_running("b") and set(m.running()) == {a, b}
        pa, pb = (json.loads((p / R.PID_FILE).read_text())["pid"] for p in (a, b))
        assert pa != pb
        # Another GUI process sees the run as busy through the pid file alone.
        other = R.RunManager(cwd=tmp_path)
        with pytest.raises(UserError, match="in use"):
            other.start(C.Config(out_dir="a"))
    finally:
        m.shutdown(stop_runs=True)
    assert not m.is_running("a") and not m.is_running("b")


def test_start_refuses_overwrite_and_bad_resume(tmp_path):
    m = fake_manager(tmp_path, TERM_ONLY, grace_stop_s=0.1)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "ckpt.pt").write_bytes(b"x")
    (tmp_path / "old" / "config.json").write_text(json.dumps(C.Config(out_dir="old").to_dict()))
    with pytest.raises(UserError, match="already holds a run; resume it, tick overwrite"):
        m.start(C.Config(out_dir="old"))
    with pytest.raises(UserError, match="--n_layer 2 conflicts with the checkpoint"):
        m.start(C.Config(out_dir="old", n_layer=2), resume=True)
    with pytest.raises(UserError, match="no ckpt.pt to resume"):
        m.start(C.Config(out_dir="empty"), resume=True)
    # A run killed before its first checkpoint: Start does not advise a resume that cannot be.
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')
    with pytest.raises(UserError, match=r"already holds a run \(with no ckpt.pt to resume\); tick overwrite"):
        m.start(C.Config(out_dir="killed"))
    assert m.running() == []
    if "overwrite" in C.FIELDS:  # the trainer replaces the old run itself when asked to
        m.start(C.Config(out_dir="old", overwrite=True))
        assert m.is_running("old")
        m.shutdown(stop_runs=True)


def test_start_refuses_what_the_trainer_would_refuse_at_once(tmp_path):
    """Missing or non-UTF-8 data, a device this machine lacks, a model to start from that is not there: refused
    with the trainer's own message before any folder or process exists."""
    m = fake_manager(tmp_path, TERM_ONLY)
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    cases = [({"data_path": "nope.txt"}, "--data_path: file not found"),
             ({"data_path": "latin1.txt"}, "is not UTF-8 (invalid byte 0xe9 at byte offset 3)"),
             ({"data_path": "nothing/*.txt"}, "matches no file"),
             ({"device": "tpu"}, "--device 'tpu'"),
             ({"init_from": "out/missing"}, "--init_from: out/missing not found")]
    for values, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            m.start(C.Config(out_dir="x", **values))
        assert not (tmp_path / "x").exists()
    m.preflight(C.Config(data_path=str(tmp_path / "data" / "*.txt")))  # an absolute pattern that matches


# ---------------------------------------------------------------------------------------------- entry point


def test_gui_without_gradio_names_the_extra(tmp_path):
    blocker = tmp_path / "gradio"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('gradio is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    r = subprocess.run([sys.executable, str(REPO / "gui.py"), "--port", "1"], capture_output=True, text=True,
                       env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert 'pip install -e ".[gui]"' in r.stderr and "Traceback" not in r.stderr


def test_child_env_lets_a_child_import_this_checkout_from_anywhere(tmp_path):
    """Without site-packages (-S: no installed tinyllm) and from another folder, the GUI's subprocesses still
    import the tinyllm of this checkout."""
    out = subprocess.run([sys.executable, "-S", "-c", "import tinyllm; print(tinyllm.__file__)"], cwd=tmp_path,
                         env=R.child_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out) == REPO / "tinyllm" / "__init__.py"
