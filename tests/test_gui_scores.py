"""The Runs tab's evaluation (tinyllm/gui/scores.py: tinyllm-eval in a subprocess) and the GUI's side of
--init_from: the picker of runs to start from, a fine-tuning run started from the Configure form (its shape comes
from the source, whatever the form says), where each run started from, and the evaluation table in the app."""

from __future__ import annotations

import json
import time

import pytest
from conftest import TINY, free_port, make_text, run_cli

from tinyllm import config as C
from tinyllm.errors import UserError
from tinyllm.gui import form as F
from tinyllm.gui import runs as R
from tinyllm.gui import scores as S

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword")]


def tiny_run(data, out, steps: int = 2) -> None:
    assert run_cli(["--data_path", data, "--out_dir", out, *TINY, "--max_steps", str(steps), "--eval_interval", "0",
                    "--device", "cpu"]) == 0


# ---------------------------------------------------------------------------------------------- gradio-free


def test_a_new_run_from_a_model_leaves_the_shape_to_it():
    cfg = C.from_dict({**F.cli_defaults(), "init_from": "out/a", "n_layer": 7, "lr": 1e-4})
    launched = R.launch_values(cfg, resume=False)
    assert launched["init_from"] == "out/a" and launched["lr"] == 1e-4
    assert not set(C.SHAPE_KEYS) & set(launched)
    # Resumed, the run keeps the shape it started with: the form's shape fields are not its own.
    assert not set(C.SHAPE_KEYS) & set(R.launch_values(cfg, resume=True))
    cmd = F.command_preview(cfg)
    assert "--init_from out/a" in cmd and "--lr 0.0001" in cmd and "--n_layer" not in cmd
    resumed = F.command_preview(cfg, resume=True)
    assert "--init_from" not in resumed and "--n_layer" not in resumed and "--lr 0.0001" in resumed
    # Without init_from the form's shape is the run's own: it is launched, and checked against the checkpoint.
    assert R.launch_values(C.from_dict({**F.cli_defaults(), "n_layer": 7}), resume=True)["n_layer"] == 7

    # The picker cleared: no model to start from.
    values = F.values_from_config(cfg)
    values[[s.name for s in F.field_specs()].index("init_from")] = None
    assert F.config_from_values(values).init_from == ""
    assert R.started_from({"init_from": "out/a"}) == "out/a" and R.started_from({}) == ""


def test_scorer_runs_tinyllm_eval_and_keeps_its_figures(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(make_text(1500), encoding="utf-8")
    tiny_run(data, tmp_path / "out" / "a")
    (tmp_path / "out" / "new").mkdir()
    calls = []

    def command(model, data_path):
        calls.append(model)
        return S.eval_argv(model, data_path)

    scorer = S.Scorer(tmp_path, command=command)
    resolve = lambda p: (tmp_path / p).resolve()  # noqa: E731
    scores = scorer.scores(["out/a", "out/new"], "corpus.txt", resolve, lambda out: f"from {out.name}")
    a, new = scores
    assert a.loss is not None and 0 < a.loss < 5 and a.bpb is not None and a.tokens and not a.note
    assert a.row()[:2] == ["out/a", "from a"] and a.row()[2] == round(a.loss, 4)
    assert new.loss is None and "no checkpoint" in new.note
    again = scorer.scores(["out/a"], "corpus.txt", resolve)
    assert again[0].loss == a.loss and len(calls) == 1  # unchanged checkpoint and text: not scored again

    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1\n")
    bad = scorer.scores(["out/a"], "bad.txt", resolve)[0]
    assert bad.loss is None and "not UTF-8" in bad.note
    with pytest.raises(UserError, match="no such file"):
        scorer.scores(["out/a"], "missing.txt", resolve)
    with pytest.raises(UserError, match="select the runs"):
        scorer.scores([], "corpus.txt", resolve)


# ---------------------------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    pytest.importorskip("gradio", reason="the GUI tests need the gui extra: pip install -e \".[gui]\"")
    gradio_client = pytest.importorskip("gradio_client")
    from tinyllm.gui.app import build_app, launch

    home = tmp_path_factory.mktemp("gui_ft")
    (home / "corpus.txt").write_text(make_text(2000), encoding="utf-8")
    tiny_run(home / "corpus.txt", home / "out" / "src", steps=3)
    demo = build_app(out_root="out", cwd=home)
    ctx = demo.tinyllm_ctx
    _, url, _ = launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield {"home": home, "client": gradio_client.Client(url, verbose=False), "manager": ctx.manager}
    finally:
        ctx.manager.grace_stop_s = ctx.manager.grace_term_s = 5
        ctx.manager.shutdown(stop_runs=True)
        demo.close()


def form_values(home, **overrides) -> list:
    tiny = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4, "eval_iters": 1,
            "log_interval": 1, "eval_interval": 2, "sample_interval": 0, "lr": 1e-3, "lr_warmup_steps": 1,
            "progress": False, "device": "cpu", "max_steps": 2, "checkpoint_interval": 0}
    values = {**F.cli_defaults(), **tiny, "data_path": str(home / "corpus.txt"), **overrides}
    return [values[s.name] for s in F.field_specs()]


def test_fine_tune_from_the_form_then_evaluate_in_the_runs_tab(gui):
    client, home, manager = gui["client"], gui["home"], gui["manager"]
    picker = client.predict("", api_name="/init_from_choices")
    assert [c[1] for c in picker["choices"]] == ["", "out/src"]  # none, then the runs with a checkpoint

    # The form's shape (2 layers, 16 wide) differs from the source's (1 layer, 32 wide): the source decides.
    msg, _ = client.predict(*form_values(home, init_from="out/src", out_dir="out/ft"), api_name="/start_run")
    assert msg.startswith("started `out/ft`") and "--init_from out/src" in msg and "--n_layer" not in msg
    deadline = time.monotonic() + 120
    while manager.is_running("out/ft") and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = [json.loads(line) for line in (home / "out" / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["event"] == "end" and rows[-1]["reason"] == "max_steps", rows[-1]
    saved = json.loads((home / "out" / "ft" / "config.json").read_text())
    assert (saved["init_from"], saved["n_layer"], saved["n_embd"], saved["lr"]) == ("out/src", 1, 32, 1e-3)

    # Resumed from the same form (its shape fields still not the run's), it continues to the new max_steps.
    msg, _ = client.predict(*form_values(home, init_from="out/src", out_dir="out/ft", max_steps=3),
                            api_name="/resume_run")
    assert msg.startswith("resumed `out/ft`"), msg
    deadline = time.monotonic() + 120
    while manager.is_running("out/ft") and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = [json.loads(line) for line in (home / "out" / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert (rows[-1]["event"], rows[-1]["reason"], rows[-1]["step"]) == ("end", "max_steps", 3), rows[-1]

    table, _ = client.predict("out", [], api_name="/list_runs")
    cols = table["headers"]
    by_run = {row[0]: dict(zip(cols, row, strict=True)) for row in table["data"]}
    assert by_run["out/ft"]["started from"] == "out/src" and by_run["out/src"]["started from"] == ""

    scores, note = client.predict(["out/src", "out/ft"], "corpus.txt", api_name="/evaluate_runs")
    assert scores["headers"] == S.COLUMNS and "evaluated 2 of 2 run(s)" in note
    got = {row[0]: dict(zip(S.COLUMNS, row, strict=True)) for row in scores["data"]}
    assert got["out/ft"]["started from"] == "out/src"
    for run in ("out/src", "out/ft"):
        assert 0 < got[run]["loss"] < 5 and 0 < got[run]["bpb"] < 8 and got[run]["tokens"] > 0
    _, refused = client.predict(["out/ft"], "nope.txt", api_name="/evaluate_runs")
    assert "no such file" in refused
