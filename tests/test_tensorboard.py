"""--tensorboard: the metrics rows as TensorBoard scalars in out_dir/tensorboard."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import TINY, run_cli

from tinyllm.tensorboard import TB_DIR, TensorBoardWriter


def train(corpus, out, *flags) -> int:
    return run_cli(["--data_path", corpus, "--out_dir", out, *TINY, "--max_steps", "10", "--eval_interval", "5",
                    *flags])


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_the_metrics_across_resume_and_overwrite(corpus, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert train(corpus, out, "--tensorboard") == 0
    assert run_cli(["--out_dir", out, "--resume", "--max_steps", "15", "--no-progress"]) == 0  # inherits the flag
    got = scalars(out / TB_DIR)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = {"loss/train": "loss", "loss/val": "val_loss", "train/lr": "lr",
                "train/tokens_per_sec": "tokens_per_sec", "train/grad_norm": "grad_norm",
                "loss/train_eval": "train_eval_loss", "eval/val_bpb": "val_bpb"}
    for tag, key in expected.items():
        want = [(r["step"], r[key]) for r in rows if key in r]
        assert want, key
        assert [s for s, _ in got[tag]] == [s for s, _ in want], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want], rel=1e-6), tag
    assert [s for s, _ in got["loss/train"]] == [5, 10, 15]

    assert train(corpus, out, "--tensorboard", "--overwrite", "--max_steps", "5") == 0
    assert [s for s, _ in scalars(out / TB_DIR)["loss/train"]] == [5]  # the replaced run's curves are gone


def test_resume_purges_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    w = TensorBoardWriter(tmp_path, resume_step=None)
    for step in (5, 10, 15, 20):  # the run died after logging step 20; its last checkpoint was at step 10
        w.write({"step": step, "loss": float(step)})
    w.close()
    w = TensorBoardWriter(tmp_path, resume_step=10)
    for step in (15, 20):
        w.write({"step": step, "loss": 100.0 + step, "sample": "text", "event": "x", "flag": True})
    w.close()
    assert scalars(tmp_path / TB_DIR) == {"loss/train": [(5, 5.0), (10, 10.0), (15, 115.0), (20, 120.0)]}


def test_missing_tensorboard_names_the_extra(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "run"
    assert train(corpus, out, "--tensorboard") == 2
    err = capsys.readouterr().err
    assert "--tensorboard" in err and '.[tensorboard]' in err and "Traceback" not in err
    assert not (out / "config.json").exists()  # refused before the run folder was touched
