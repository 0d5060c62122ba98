"""What the GUI's monitor shows (tinyllm.gui.monitor), computed from metrics.jsonl rows. No gradio needed."""

from __future__ import annotations

from pathlib import Path

from tinyllm.gui import runs as R
from tinyllm.gui.monitor import loss_series, speed_series, steps_per_second, summary, summary_markdown


def test_monitor_numbers():
    rows = [{"step": 10, "time_s": 1.0, "loss": 3.0, "tokens_per_sec": 100.0},
            {"step": 20, "time_s": 2.0, "loss": 2.0, "tokens_per_sec": 120.0},
            {"step": 20, "time_s": 2.0, "val_loss": 2.5}, {"step": 20, "time_s": 2.0, "sample": "hi"}]
    assert steps_per_second(rows) == 10.0
    assert loss_series(rows) == {"train": [(10, 3.0), (20, 2.0)], "val": [(20, 2.5)]}
    assert speed_series(rows) == {"tokens/s": [(10, 100.0), (20, 120.0)]}
    info = R.RunInfo(out_dir=Path("x"), status="running", step=20, max_steps=120, rows=rows, last_loss=2.0,
                     best_val_loss=2.5, time_s=2.0)
    s = summary(info)
    assert s["ETA"] == "0:10" and s["tokens/s"] == "120" and s["best val loss"] == "2.5000"
    assert s["step"] == "20 / 120"


def test_non_finite_values_are_left_out_and_a_finished_run_has_no_eta():
    rows = [{"step": 10, "time_s": 1.0, "loss": 3.0}, {"step": 20, "time_s": 2.0, "loss": float("nan")},
            {"step": 30, "time_s": 3.0, "loss": 2.0, "tokens_per_sec": None},
            {"step": 30, "time_s": 3.0, "val_loss": float("inf")}]
    assert loss_series(rows) == {"train": [(10, 3.0), (30, 2.0)], "val": []}
    assert speed_series(rows) == {"tokens/s": []}
    assert steps_per_second(rows) == 10.0  # from the last two finite train rows
    assert steps_per_second(rows[:1]) is None
    info = R.RunInfo(out_dir=Path("x"), status="finished", step=30, max_steps=30, rows=rows, last_loss=2.0,
                     time_s=3.0)
    s = summary(info)
    assert s["ETA"] == "–" and s["val loss"] == "–" and s["tokens/s"] == "–" and s["elapsed (training)"] == "0:03"
    table = summary_markdown(info, name="out/x")
    assert table.startswith("**out/x**") and "| finished | 30 / 30 | 2.0000 |" in table
