"""The GUI's configuration form (tinyllm.gui.form), derived from the Config dataclass: its fields and their
typing, the command preview that reproduces a config, and the presets. No gradio needed."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tinyllm import config as C
from tinyllm.cli import build_parser
from tinyllm.errors import UserError
from tinyllm.gui import form as F
from tinyllm.runconfig import resolve_config


def test_form_has_every_field_once_grouped_in_order():
    specs = F.field_specs()
    assert [s.name for s in specs] == list(C.FIELDS)
    grouped = F.grouped_specs()
    assert sorted(s.name for g in grouped.values() for s in g) == sorted(C.FIELDS)
    assert list(grouped)[: 3] == [g for g in C.GROUPS if g in grouped][:3]
    by = {s.name: s for s in specs}
    assert by["ckpt"].kind == "choice" and by["ckpt"].choices == ("last", "best")
    assert by["progress"].kind == "bool" and by["n_layer"].kind == "int" and by["lr"].kind == "float"
    assert by["n_layer"].shape and "Fixed once a run has started" in by["n_layer"].info
    assert ">= 1" in by["n_layer"].info and C.FIELDS["n_layer"].metadata["help"] in by["n_layer"].info


def test_form_round_trip_and_typing():
    cfg = C.Config(n_layer=3, lr=0.002, progress=False, prompt="Once\n", ckpt="best")
    values = F.values_from_config(cfg)
    assert F.config_from_values(values) == cfg
    # Widgets give floats for whole numbers and ints for round floats; both come back typed.
    by = {s.name: i for i, s in enumerate(F.field_specs())}
    values[by["n_layer"]] = 3.0
    values[by["lr"]] = 1
    got = F.config_from_values(values)
    assert got.n_layer == 3 and isinstance(got.n_layer, int) and got.lr == 1.0 and isinstance(got.lr, float)
    values[by["n_layer"]] = 2.5
    with pytest.raises(UserError, match="--n_layer must be a whole number"):
        F.config_from_values(values)
    values[by["n_layer"]] = None
    with pytest.raises(UserError, match="--n_layer needs a value"):
        F.config_from_values(values)
    values[by["n_layer"]] = 4
    values[by["n_head"]] = 3
    with pytest.raises(UserError, match="divisible by --n_head"):
        F.config_from_values(values)
    with pytest.raises(UserError, match="reload the page"):
        F.config_from_values(values[:-1])


def test_a_field_added_to_the_dataclass_appears_everywhere(monkeypatch):
    @dataclass
    class Extended(C.Config):
        warp_drive: str = C.opt("off", "A setting added after the GUI was written.", "model", choices=("off", "on"))

    monkeypatch.setattr(C, "Config", Extended)
    monkeypatch.setattr(C, "FIELDS", {f.name: f for f in __import__("dataclasses").fields(Extended)})
    spec = next(s for s in F.field_specs() if s.name == "warp_drive")
    assert spec.kind == "choice" and spec.group == "model"
    assert spec in F.grouped_specs()["model"]
    cfg = Extended(warp_drive="on")
    assert F.config_from_values(F.values_from_config(cfg)) == cfg
    assert "--warp_drive on" in F.command_preview(cfg)


def test_command_preview_shows_only_changes_and_reproduces_the_config():
    assert F.command_preview(C.from_dict(F.cli_defaults())) == "python train_tinyllm.py"
    cfg = C.from_dict({**F.cli_defaults(), "n_layer": 2, "lr": 0.0005, "progress": False,
                       "data_path": "my data/a b.txt", "prompt": "It's"})
    cmd = F.command_preview(cfg)
    assert cmd.startswith("python train_tinyllm.py ")
    assert "--n_embd" not in cmd and "--no-progress" in cmd and "'my data/a b.txt'" in cmd
    # The real CLI turns the command back into the same settings.
    ns = build_parser().parse_args(shlex.split(cmd)[2:])
    assert resolve_config(ns)[0] == cfg
    assert F.command_preview(cfg, resume=True).endswith(" --resume")
    newline = C.from_dict({**F.cli_defaults(), "prompt": "a\nb"})
    assert "--prompt $'a\\nb'" in F.command_preview(newline)


def test_presets_load_save_and_errors(tmp_path):
    assert "tiny_char_gpt.json" in F.list_presets()
    assert F.load_preset(F.resolve_preset("tiny_char_gpt.json")) == C.from_dict(F.cli_defaults())
    cfg = C.Config(n_layer=2, out_dir="out/x")
    path = F.save_preset(cfg, tmp_path / "mine.json")
    assert F.load_preset(F.resolve_preset(str(path))) == cfg
    with pytest.raises(UserError, match="already exists"):
        F.save_preset(C.Config(n_layer=3), path)
    assert F.load_preset(path) == cfg
    assert F.load_preset(F.save_preset(C.Config(n_layer=3), path, replace=True)).n_layer == 3
    assert F.resolve_preset("mine.json", cwd=tmp_path) == tmp_path / "mine.json"
    with pytest.raises(UserError, match=r"\.json"):
        F.save_preset(cfg, tmp_path / "mine.txt")
    (tmp_path / "bad.json").write_text('{"n_layer": "four"}')
    with pytest.raises(UserError, match="n_layer"):
        F.load_preset(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        F.load_preset(tmp_path / "missing.json")


def test_presets_propose_their_run_folder_under_the_guis_output_root():
    assert F.under_root("out/tiny_char_gpt", "runs") == str(Path("runs") / "tiny_char_gpt")
    assert F.under_root("out/a/b", "/data/runs") == str(Path("/data/runs") / "a" / "b")
    for kept in ("out/tiny_char_gpt", "elsewhere/x", "/abs/out/x", "out"):
        assert F.under_root(kept, "out" if kept.startswith("out/") else "runs") == kept
