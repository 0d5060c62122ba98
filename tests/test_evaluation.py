"""What the loop measures besides its own loss (tinyllm.evaluation): fixed-batch evaluation and text samples."""

import math
import random

import torch
import torch.nn.functional as F
from conftest import TINY, run_cli, tiny_trainer

from tinyllm.evaluation import eval_row, evaluate, sample_text, whole_split_loss
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


def test_whole_split_loss_scores_every_token_once(corpus, tmp_path):
    trainer = tiny_trainer(corpus, tmp_path / "run")
    try:
        model, precision = trainer.model.eval(), trainer.precision
        for n in (16 * 7 + 1, 16 * 7 + 6):  # 7 full windows of 16; then a short tail of 5 targets as well
            data = trainer.eval_splits["val"][:n].long()
            want, count = 0.0, 0
            for start in range(0, n - 1, 16):  # the reference: window by window, token by token
                x = data[start:min(start + 16, n - 1)][None]
                y = data[start + 1:start + 1 + x.shape[1]][None]
                with torch.no_grad():
                    nll = F.cross_entropy(model(x)[0][0].double(), y[0], reduction="sum")
                want, count = want + nll.item(), count + y.numel()
            got, batches = whole_split_loss(model, data, 16, 3, torch.device("cpu"), precision)
            assert count == n - 1 and math.isclose(got, want / count, rel_tol=1e-5)
            assert batches == 3 + (n % 16 > 1)  # 7 windows in batches of 3, and the tail alone
    finally:
        trainer.close()


def test_eval_full_scores_val_whole_whatever_the_seed(corpus, tmp_path):
    def losses(seed: int, **settings) -> dict[str, float]:
        trainer = tiny_trainer(corpus, tmp_path / f"run{seed}", seed=seed, eval_iters=2, overwrite=True, **settings)
        try:
            trainer.model.load_state_dict(weights)  # the same model: only the evaluation's seed differs
            return evaluate(trainer.model, trainer.eval_splits, trainer.cfg, trainer.device, trainer.precision)
        finally:
            trainer.close()

    first = tiny_trainer(corpus, tmp_path / "weights")
    weights, val = first.model.state_dict(), first.eval_splits["val"]
    whole, _ = whole_split_loss(first.model, val, 16, 4, first.device, first.precision)
    first.close()
    full = [losses(seed, eval_full=True) for seed in (1, 2)]
    assert full[0]["val"] == full[1]["val"] == whole
    assert full[0]["train"] != full[1]["train"]  # the train estimate stays a random draw
    sampled = [losses(seed) for seed in (1, 2)]
    assert sampled[0]["val"] != sampled[1]["val"]  # which random batches is the seed's


def test_eval_full_from_the_command_line(corpus, tmp_path):
    assert train(corpus, tmp_path / "run", "--max_steps", "4", "--eval_interval", "2", "--eval_full") == 0
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in rows] == [2, 4] and all(math.isfinite(r["val_loss"]) for r in rows)
    # From a memory-mapped token file (tokens.bin): the same run, the same figures.
    assert train(corpus, tmp_path / "mm", "--max_steps", "4", "--eval_interval", "2", "--eval_full",
                 "--memmap_dataset") == 0
    mm = [r for r in read_metrics(tmp_path / "mm" / "metrics.jsonl") if "val_loss" in r]
    assert [(r["step"], r["val_loss"]) for r in mm] == [(r["step"], r["val_loss"]) for r in rows]


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
