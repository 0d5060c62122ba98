"""Never lose work, never run untrusted code (docs/safety.md: each promise there names its test here)."""

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY, run_cli, tiny_trainer

from tinyllm import checkpoint as ckpt_io
from tinyllm import train as train_mod
from tinyllm.checkpoint import load_checkpoint
from tinyllm.metrics import read_metrics

RUN = [*TINY, "--max_steps", "40", "--log_interval", "1", "--eval_interval", "0", "--checkpoint_interval", "1",
       "--dropout", "0.1", "--lr_decay_steps", "40"]


def train(corpus, out, *extra):
    return run_cli(["--data_path", corpus, "--out_dir", out, *RUN, *extra])


def popen(args):
    return subprocess.Popen([sys.executable, str(REPO / "train_tinyllm.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def losses_by_step(out):
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def test_sigkill_at_random_moments_loses_nothing(corpus, tmp_path):
    """SIGKILL a run that checkpoints every step, again and again at random moments (often mid-write); each
    time the last checkpoint loads, and the resumed runs end exactly where an uninterrupted run does."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train(corpus, straight) == 0
    rng = random.Random(0)
    kills = 0
    for _ in range(8):
        args = ["--data_path", corpus, "--out_dir", killed, *RUN, "--no-progress"]
        if (killed / "ckpt.pt").exists():
            args.append("--resume")
        proc = popen(args)
        start_step = load_checkpoint(killed / "ckpt.pt")["step"] if "--resume" in args else 0
        deadline = time.monotonic() + 120
        while max(losses_by_step(killed), default=0) <= start_step and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))  # a random moment: the kill lands anywhere in a step or a save
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        ckpt = load_checkpoint(killed / "ckpt.pt")  # always loadable
        assert ckpt["step"] >= start_step
        if ckpt["step"] == 40:
            break
    assert kills >= 2, "the runs finished before they could be killed"
    if load_checkpoint(killed / "ckpt.pt")["step"] < 40:
        assert run_cli(["--out_dir", killed, "--resume", "--no-progress"]) == 0
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(killed / "ckpt.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # the resumed runs reproduce the uninterrupted loss curve, one row per step
    assert losses_by_step(killed) == losses_by_step(straight)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps))


def nan_on_call(monkeypatch, n):
    real = train_mod.training_loss
    calls = {"n": 0}

    def fake(logits, targets, *a, **k):
        calls["n"] += 1
        ce, z = real(logits, targets, *a, **k)
        return (ce * float("nan"), z) if calls["n"] == n else (ce, z)

    monkeypatch.setattr(train_mod, "training_loss", fake)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    nan_on_call(monkeypatch, 7)
    assert train(corpus, out, "--checkpoint_interval", "5") == 1
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at step 7" in err and "--skip_nonfinite" in err
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    end = read_metrics(out / "metrics.jsonl")[-1]
    assert (end["reason"], end["step"]) == ("error", 7)  # the step the message names


def test_skip_nonfinite_skips_and_counts(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    nan_on_call(monkeypatch, 7)
    assert train(corpus, out, "--skip_nonfinite", "--max_steps", "12") == 0
    assert "skipped step 7" in capsys.readouterr().err
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["skipped_steps"] == 1 and rows[-1]["reason"] == "max_steps"
    assert [r for r in rows if r.get("skipped_since_last_row")][0]["step"] == 7
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 12 and ckpt["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())



def test_nonfinite_between_log_rows_is_caught_before_the_next_save(corpus, tmp_path, monkeypatch, capsys):
    # steps 6-9 are no boundary: step 7's verdict is read back a step later, never after a save
    out = tmp_path / "run"
    nan_on_call(monkeypatch, 7)
    assert train(corpus, out, "--log_interval", "5", "--checkpoint_interval", "5") == 1
    assert "non-finite loss or gradient at step 7" in capsys.readouterr().err
    assert load_checkpoint(out / "ckpt.pt")["step"] == 5
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == 7  # not step 8, taken before 7's verdict was read


def test_skipped_step_between_log_rows_leaves_no_trace_in_the_optimizer(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_on_call(monkeypatch, 7)
    assert train(corpus, out, "--optimizer", "adamw", "--skip_nonfinite", "--max_steps", "12", "--log_interval", "5",
                 "--checkpoint_interval", "0", "--ema") == 0
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [(r["step"], r.get("skipped_since_last_row")) for r in rows] == [(5, None), (10, 1), (12, 0)]
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["skipped_steps"] == 1
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {11.0}  # 12 steps, 1 skipped
    for weights in (ckpt["model"], ckpt["ema"]):
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_fused_adamw_skips_a_nonfinite_step_on_the_device(corpus, tmp_path, monkeypatch):
    trainer = tiny_trainer(corpus, tmp_path / "run", ema=True)
    try:
        assert trainer.skips_on_device  # torch's fused AdamW, one process, no loss scaling
        trainer.train_step(16)

        def snapshot():
            opt = trainer.optimizer.state_dict()["state"]
            return ([v.clone() for v in trainer.model.state_dict().values()],
                    [v.clone() for s in opt.values() for v in s.values()],
                    [v.clone() for v in trainer.ema.state_dict().values()])

        before = snapshot()
        nan_on_call(monkeypatch, 1)
        finite = trainer.train_step(16)[3]
        assert isinstance(finite, torch.Tensor) and not bool(finite)  # a verdict left on the device
        for old, new in zip(before, snapshot(), strict=True):
            assert all(torch.equal(a, b) for a, b in zip(old, new, strict=True))
        monkeypatch.undo()
        assert bool(trainer.train_step(16)[3])
        assert not torch.equal(before[0][0], trainer.model.state_dict()[next(iter(trainer.model.state_dict()))])
    finally:
        trainer.close()


def test_a_step_that_would_stop_the_run_leaves_its_verdict_on_the_device(corpus, tmp_path):
    """Any optimizer (Muon here, which cannot skip a step on the device): with --skip_nonfinite off the step is
    taken and whether it was finite is read back later, so the host does not wait for the device each step.
    With --skip_nonfinite it must be read before the step, to skip it."""
    for skip, deferred in ((False, True), (True, False)):
        trainer = tiny_trainer(corpus, tmp_path / f"run{skip}", optimizer="muon", skip_nonfinite=skip)
        try:
            assert not trainer.skips_on_device and trainer.stops_on_nonfinite == deferred
            finite = trainer.train_step(16)[3]
            assert isinstance(finite, torch.Tensor) == deferred and bool(finite)
        finally:
            trainer.close()


def test_a_stop_right_after_a_nonfinite_step_saves_nothing_it_took(corpus, tmp_path, monkeypatch, capsys):
    """Step 7 is non-finite and, taken (see above), leaves NaN weights; the STOP file arrives in the same step,
    between boundaries. The end's save reads the verdict first: an error, and the step-5 checkpoint stays."""
    out = tmp_path / "run"
    real = train_mod.training_loss
    calls = {"n": 0}

    def nan_and_stop(logits, targets, *a, **k):
        calls["n"] += 1
        ce, z = real(logits, targets, *a, **k)
        if calls["n"] == 7:
            (out / "STOP").touch()
            return ce * float("nan"), z
        return ce, z

    monkeypatch.setattr(train_mod, "training_loss", nan_and_stop)
    assert train(corpus, out, "--optimizer", "muon", "--log_interval", "5", "--checkpoint_interval", "5") == 1
    assert "non-finite loss or gradient at step 7" in capsys.readouterr().err
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 5 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_failed_save_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = ckpt_io.atomic_write_bytes
    calls = {"n": 0}

    def disk_full(path, data):
        calls["n"] += 1
        if calls["n"] > 1:  # the step-5 checkpoint succeeds, the final one finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt_io, "atomic_write_bytes", disk_full)
    assert train(corpus, out, "--max_steps", "10", "--checkpoint_interval", "5") == 1
    err = capsys.readouterr().err
    assert "could not save" in err and "No space left on device" in err and "intact" in err
    assert load_checkpoint(out / "ckpt.pt")["step"] == 5
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_out_dir_is_refused_before_training(corpus, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert train(corpus, blocker / "run") == 2
    assert "--out_dir" in capsys.readouterr().err


def test_existing_run_needs_overwrite(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "3") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train(corpus, out, "--max_steps", "4") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert train(corpus, out, "--max_steps", "4", "--overwrite") == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["step"] == 1 and [r for r in rows if r.get("event")] == [rows[-1]]  # the old rows are gone
    assert load_checkpoint(out / "ckpt.pt")["step"] == 4
    assert not (out / ".replaced").exists()  # the replaced run went once this one had its checkpoint


def test_a_failed_overwrite_gives_the_old_run_back(corpus, tmp_path, monkeypatch, capsys):
    """--overwrite sets the old run aside until the new one has saved a checkpoint: a run that fails before
    that (here a non-finite loss at step 3, checkpoints every 5 steps) leaves the old run's every file as it was."""
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "3") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert {"ckpt.pt", "metrics.jsonl", "config.json", "tokenizer.json", "train.log"} <= set(before)
    capsys.readouterr()
    nan_on_call(monkeypatch, 3)
    assert train(corpus, out, "--max_steps", "4", "--overwrite", "--seed", "5", "--checkpoint_interval", "5") == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "that --overwrite was to replace is restored as it was" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert not (out / ".replaced").exists()

    # Killed before its first checkpoint, a replacing run leaves the old run set aside: the next --overwrite
    # keeps that older run (not the killed one's files) until it has a checkpoint of its own.
    (out / ".replaced").mkdir()
    for name in before:
        (out / name).rename(out / ".replaced" / name)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')  # the killed run's
    nan_on_call(monkeypatch, 3)
    assert train(corpus, out, "--max_steps", "4", "--overwrite", "--seed", "5", "--checkpoint_interval", "5") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_second_trainer_on_the_same_folder_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    proc = popen(["--data_path", corpus, "--out_dir", out, *TINY, "--max_steps", "100000", "--eval_interval", "0"])
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and losses_by_step(out)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        before = (out / "metrics.jsonl").stat().st_size
        assert train(corpus, out, "--overwrite") == 2  # even --overwrite cannot take a folder in use
        err = capsys.readouterr().err
        assert "in use by another training process" in err and str(proc.pid) in err
        assert (out / "metrics.jsonl").stat().st_size >= before  # the running run's files were not touched
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 130


def test_stale_lock_from_a_dead_process_is_ignored(corpus, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(dead.stdout.strip())
    assert train(corpus, out, "--max_steps", "3") == 0
    assert (out / ".lock").read_text() == str(os.getpid())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_training_step_on_cuda_never_waits_for_the_device(corpus, tmp_path):
    """No host sync inside train_step (the loop reads a verdict back once per step, outside it), for fused
    AdamW and for Muon: torch raises on any synchronising call in this mode."""
    for optimizer in ("adamw", "muon"):
        trainer = tiny_trainer(corpus, tmp_path / optimizer, optimizer=optimizer, device="cuda")
        try:
            trainer.train_step(16)  # first-step allocations and lazy initialisation
            torch.cuda.set_sync_debug_mode("error")
            try:
                finite = trainer.train_step(16)[3]
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert bool(finite)
        finally:
            trainer.close()
