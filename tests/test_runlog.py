"""What a run reports and how it is asked to stop (tinyllm.runlog): the log, the train rows' window with its
read-back of non-finite steps, stop signals, the end row and the closing summary."""

import math
import os
import signal

import pytest
import torch

from tinyllm.config import Config
from tinyllm.runlog import EXIT_CODES, LogWindow, Progress, RunEnd, RunLog, StopFlag, progress_bar, summarize

T = torch.tensor


def test_run_log_writes_the_file_and_quiet_ranks_keep_only_warnings(tmp_path, capsys):
    log = RunLog(tmp_path / "train.log")
    log("hello")
    log.close()
    quiet = RunLog(None, quiet=True)
    quiet("not shown")
    quiet("warning: shown")
    assert (tmp_path / "train.log").read_text() == "hello\n"
    assert capsys.readouterr().err == "hello\nwarning: shown\n"


def test_progress_bar_off_is_none():
    log = RunLog(None)
    with progress_bar(False, 10, 0, log) as bar:
        assert bar is None and log.bar is None


def test_progress_bar_carries_the_log_above_it(capsys):
    log = RunLog(None)
    with progress_bar(True, 10, 3, log) as bar:
        assert log.bar is bar and bar.n == 3
        log("above the bar")
    assert log.bar is None
    assert "above the bar" in capsys.readouterr().err


def window(skip_nonfinite=False):
    messages = []
    p = Progress(step=0, tokens_seen=100)
    return LogWindow(torch.device("cpu"), p, skip_nonfinite, messages.append, now=0.0), p, messages


def test_the_window_averages_settled_steps_and_holds_back_the_last():
    w, p, _ = window()
    w.add(1, T(2.0), T(0.5), T(1.0), True)
    w.add(2, T(4.0), T(1.5), None, T(True))
    assert w.settle(keep=1) is None and w.count == 1  # step 2's verdict is still on the device
    assert w.settle(keep=0) is None
    p.tokens_seen = 300
    row = w.train_row(lr=0.1, now=2.0, z_loss=True, block_size=None)
    assert row == {"lr": 0.1, "tokens_per_sec": 100.0, "loss": 3.0, "z_loss": 1.0, "grad_norm": 1.0}
    w.restart(2.0)
    assert w.count == 0 and w.grad_norm is not None  # the latest gradient norm stays known
    assert w.train_row(lr=0.1, now=3.0, z_loss=False, block_size=16) == {
        "lr": 0.1, "tokens_per_sec": 0.0, "grad_norm": 1.0, "block_size": 16}


def test_a_nonfinite_step_is_an_error_unless_skipped():
    w, p, _ = window()
    w.add(7, T(math.nan), None, None, False)
    w.add(8, T(1.0), None, None, True)
    error = w.settle(keep=0)
    assert "non-finite loss or gradient at step 7" in error and "--skip_nonfinite" in error
    assert w.unsettled == [] and w.count == 0

    w, p, messages = window(skip_nonfinite=True)
    w.add(7, T(math.nan), None, None, False)
    w.add(8, T(1.0), None, None, True)
    assert w.settle(keep=0) is None
    assert p.skipped_steps == 1 and w.skipped == 1 and w.count == 1
    assert messages == ["warning: skipped step 7: non-finite loss or gradient (1 skipped so far)"]
    row = w.train_row(lr=0.1, now=1.0, z_loss=False, block_size=None)
    assert row["skipped_steps"] == 1 and row["skipped_since_last_row"] == 1 and row["loss"] == 1.0


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")
def test_stop_flag_turns_signals_into_a_request_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and EXIT_CODES[stop.signum] == 143
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM is the same request
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_ctrl_c_after_a_stop_request_interrupts_at_once():
    with StopFlag() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)


def test_end_row_and_summary(tmp_path):
    p = Progress(step=10, tokens_seen=2560, best_val_loss=1.25, time_s=3.0, skipped_steps=2)
    assert RunEnd("error", 1, "boom").row(p) == {"event": "end", "reason": "error", "error": "boom",
                                                  "skipped_steps": 2}
    assert RunEnd("max_steps").row(Progress()) == {"event": "end", "reason": "max_steps"}
    lines = []
    summarize(Config(out_dir=str(tmp_path), max_steps=20), p, "interrupted", lines.append)
    assert lines[0].startswith("done (interrupted) at step 10/20: best val loss 1.2500")
    assert "2 non-finite steps skipped" in lines[0]
    assert "--generate_only" in lines[2] and "--resume" in lines[3]
    lines = []
    summarize(Config(out_dir=str(tmp_path), max_steps=10, eval_interval=0), Progress(step=10), "max_steps",
              lines.append)
    assert "n/a (eval disabled)" in lines[0] and len(lines) == 3  # a finished run: nothing to continue
    # Stopped before its first evaluation; a DDP run is continued the way it was launched.
    lines = []
    summarize(Config(out_dir=str(tmp_path), max_steps=10, eval_interval=5, ddp=True), Progress(step=3),
              "interrupted", lines.append)
    assert "n/a (no evaluation yet)" in lines[0]
    assert lines[3].startswith("continue: torchrun --standalone --nproc_per_node=N train_tinyllm.py --ddp --out_dir")
