"""The training command (tinyllm.cli): flags parsed, the run or the sampler called, and its outcome turned into an
exit status: 0, the run's own status, 2 with one line for bad input, 130 for Ctrl-C. The bad-input contract
across every flag is in tests/test_bad_input.py."""

import pytest
from conftest import checkpoint_state, run_cli

from tinyllm import config as C
from tinyllm import generate_cli
from tinyllm import train as train_mod
from tinyllm.checkpoint import save_checkpoint
from tinyllm.errors import UserError


@pytest.fixture
def calls(monkeypatch):
    """Record what main() hands to the trainer and the sampler, and let a test choose what they do."""
    seen, outcome = [], {"do": lambda: 0}

    def fake_train(cfg, resume=None, **_):
        seen.append(("train", cfg.lr, resume and resume["step"]))
        return outcome["do"]()

    def fake_generation(cfg, ckpt, **_):
        seen.append(("generate", cfg.lr, ckpt["step"]))
        return outcome["do"]()

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(generate_cli, "run_generation", fake_generation)
    return seen, outcome


def test_main_calls_the_trainer_or_the_sampler(calls, tmp_path):
    seen, outcome = calls
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(checkpoint_state(C.Config(out_dir=str(out), lr=0.125).to_dict()), out / "ckpt.pt")
    assert run_cli(["--out_dir", out, "--lr", "0.5"]) == 0
    assert run_cli(["--out_dir", out, "--resume"]) == 0
    assert run_cli(["--out_dir", out, "--generate_only", "--lr", "0.25"]) == 0
    assert seen == [("train", 0.5, None), ("train", 0.125, 3), ("generate", 0.25, 3)]
    outcome["do"] = lambda: 1  # e.g. a run stopped by a non-finite loss
    assert run_cli([]) == 1


def test_errors_become_one_line_and_an_exit_status(calls, capsys):
    _, outcome = calls

    def bad():
        raise UserError("--data_path: file not found: x.txt")

    def ctrl_c():
        raise KeyboardInterrupt

    outcome["do"] = bad
    assert run_cli([]) == 2
    assert capsys.readouterr().err == "error: --data_path: file not found: x.txt\n"
    outcome["do"] = ctrl_c
    assert run_cli([]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_flag_errors_are_one_line_too(capsys):
    assert run_cli(["--resume", "--generate_only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --generate_only: not allowed with argument --resume")
    assert err.endswith("(see python train_tinyllm.py --help)\n") and err.count("\n") == 1
