"""Loss plots: out_dir/loss.png after a run, and `python -m tinyllm.plot RUN_DIR [RUN_DIR ...]`."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import TINY, exit_status, run_cli

from tinyllm.plot import curve
from tinyllm.plot import main as plot_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train(corpus, out, *flags) -> int:
    return run_cli(["--data_path", corpus, "--out_dir", out, *TINY, "--max_steps", "10", "--eval_interval", "5",
                    *flags])


def assert_png(path) -> None:
    image = pytest.importorskip("matplotlib.image")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)  # decodes the whole file: a truncated PNG fails here
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not a blank canvas


def plot(*args) -> int:
    return exit_status(plot_main, args)


def test_runs_write_loss_png_and_the_command_overlays_them(corpus, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(corpus, a) == 0
    assert_png(a / "loss.png")  # written at the end of the run
    assert f"loss curves: {a / 'loss.png'}" in capsys.readouterr().err
    assert train(corpus, b, "--lr", "3e-3") == 0
    (a / "loss.png").unlink()
    assert plot(a) == 0  # one run: its own folder
    assert_png(a / "loss.png")
    monkeypatch.chdir(tmp_path)
    assert plot(a, b) == 0  # several: ./loss.png
    assert_png(tmp_path / "loss.png")
    assert plot(a, b, "--output", tmp_path / "cmp" / "both.png") == 0
    assert_png(tmp_path / "cmp" / "both.png")
    assert not [p for p in (tmp_path / "cmp").iterdir() if p.name.startswith(".")]  # written atomically
    code = plot(tmp_path / "nothing")
    assert code == 2 and "metrics.jsonl" in capsys.readouterr().err


def test_curve_keeps_the_latest_row_of_a_step():
    rows = [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.5}, {"step": 10, "val_loss": 2.6},
            {"step": 5, "loss": 2.9}, {"step": 10, "loss": 2.4}, {"step": 15, "loss": None}]
    assert curve(rows, "loss") == ([5, 10], [2.9, 2.4])
    assert curve(rows, "val_loss") == ([10], [2.6])


def test_without_matplotlib_a_run_notes_it_and_succeeds(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "run"
    assert train(corpus, out) == 0
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if "matplotlib is not installed" in ln]
    assert len(notes) == 1 and '.[plot]' in notes[0]
    assert not (out / "loss.png").exists()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "end"
    assert plot(out) == 2 and '.[plot]' in capsys.readouterr().err
