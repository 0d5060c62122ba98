"""What the loop measures besides its own loss (tinyllm.evaluation): fixed-batch evaluation and text samples."""

import math
import random

import torch
from conftest import TINY, run_cli, tiny_trainer

from tinyllm.evaluation import eval_row, evaluate, sample_text
from tinyllm.metrics import read_metrics

# The settings of tests/test_safety.py's runs, where this test was first written.
RUN = [*TINY, "--max_steps", "40", "--log_interval", "1", "--eval_interval", "0", "--checkpoint_interval", "1",
       "--dropout", "0.1", "--lr_decay_steps", "40"]


def train(corpus, out, *extra):
    return run_cli(["--data_path", corpus, "--out_dir", out, *RUN, *extra])


def test_evaluation_uses_the_same_batches_and_leaves_the_rngs_alone(corpus, tmp_path):
    trainer = tiny_trainer(corpus, tmp_path / "run", eval_iters=3)
    try:
        t = trainer
        t.model.train()
        torch.manual_seed(5)
        random.seed(5)
        first = evaluate(t.model, t.eval_splits, t.cfg, t.device, t.precision)
        after = (torch.rand(1), random.random())
        torch.manual_seed(5)
        random.seed(5)
        assert evaluate(t.model, t.eval_splits, t.cfg, t.device, t.precision) == first  # fixed batches
        assert (torch.rand(1), random.random()) == after  # the global RNGs did not move
        assert set(first) == {"train", "val"} and all(math.isfinite(v) for v in first.values())
        assert t.model.training  # back in the mode it was in
        other_rank = evaluate(t.model, t.eval_splits, t.cfg, t.device, t.precision, seed_offset=1)
        assert other_rank != first  # each DDP rank evaluates batches of its own
    finally:
        trainer.close()


def test_eval_row_reports_bits_per_byte_where_known():
    row = eval_row({"val": 2.0, "train": 1.5}, bytes_per_token=2.0)
    assert row == {"val_loss": 2.0, "train_eval_loss": 1.5, "val_bpb": 2.0 / math.log(2) / 2.0}
    assert "val_bpb" not in eval_row({"val": 2.0, "train": 1.5}, bytes_per_token=None)


def test_sample_text_is_seeded_and_drops_unknown_prompt_characters_with_a_warning(corpus, tmp_path):
    trainer = tiny_trainer(corpus, tmp_path / "run", prompt="The §", sample_chars=12, temperature=1.0)
    try:
        warnings = []
        a = sample_text(trainer.model, trainer.tokenizer, trainer.cfg, warnings.append, seed=3)
        b = sample_text(trainer.model, trainer.tokenizer, trainer.cfg, warnings.append, seed=3)
        assert a == b and a.startswith("The ")
        assert len(warnings) == 2 and warnings[0].startswith("warning: --prompt")
    finally:
        trainer.close()


def test_bad_prompt_during_training_warns_and_goes_on(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "6", "--sample_interval", "3", "--prompt", "§the") == 0
    assert "warning: --prompt" in capsys.readouterr().err
    assert len([r for r in read_metrics(out / "metrics.jsonl") if "sample" in r]) == 2
