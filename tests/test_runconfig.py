"""Resolving a run's config (tinyllm.runconfig): defaults < --config JSON < flags, and on --resume and
--generate_only the checkpoint's config in place of the defaults, with shape flags checked against it."""

import json
from pathlib import Path

import pytest
from conftest import TINY, checkpoint_state, run_cli

from tinyllm import config as C
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.cli import build_parser
from tinyllm.errors import UserError
from tinyllm.runconfig import resolve_config


def resolve(argv):
    return resolve_config(build_parser().parse_args(argv))[0]


def train(corpus, out, *extra):
    return run_cli(["--data_path", corpus, "--out_dir", out, *TINY, *extra])


def test_precedence_defaults_json_flags(tmp_path: Path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"n_layer": 3, "lr": 0.002}))
    cfg = resolve(["--config", str(cfg_file), "--lr", "0.005"])
    assert cfg.n_layer == 3  # from JSON
    assert cfg.lr == 0.005  # the flag beats the JSON
    assert cfg.n_embd == C.Config.n_embd  # an explicit --config replaces the default JSON: dataclass default


def test_default_json_is_used_without_config():
    defaults = json.loads(C.DEFAULT_CONFIG_PATH.read_text())
    cfg = resolve([])
    assert cfg.to_dict() == C.from_dict(defaults).to_dict()


def test_resume_may_change_training_flags_but_not_shapes(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--max_steps", "5", "--eval_interval", "0") == 0
    before = (out / "ckpt.pt").read_bytes()
    assert run_cli(["--out_dir", out, "--resume", "--n_layer", "3"]) == 2
    err = capsys.readouterr().err
    assert "--n_layer 3 conflicts with the checkpoint" in err and "Traceback" not in err
    assert (out / "ckpt.pt").read_bytes() == before
    assert run_cli(["--out_dir", out, "--resume", "--max_steps", "8", "--lr", "0.005", "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 8 and ckpt["config"]["lr"] == 0.005 and ckpt["config"]["n_layer"] == 1


def fake_run(out: Path, **config) -> dict:
    """A run folder whose ckpt.pt holds `config` on top of the defaults (and a tiny model's weights)."""
    cfg = C.Config(out_dir=str(out), **config).to_dict()
    state = checkpoint_state(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, out / "ckpt.pt")
    save_checkpoint(state | {"step": 2}, out / "ckpt_best.pt")
    return cfg


def test_the_checkpoint_config_replaces_the_defaults_and_flags_override_it(tmp_path):
    out = tmp_path / "run"
    fake_run(out, n_layer=3, lr=0.004, device="cuda", temperature=0.5)
    cfg, ckpt = resolve_config(build_parser().parse_args(["--out_dir", str(out), "--resume", "--lr", "0.001"]))
    assert cfg.n_layer == 3 and cfg.temperature == 0.5  # the run's own settings
    assert cfg.lr == 0.001  # a flag still wins
    assert cfg.device == C.Config.device  # how the run was invoked is not part of it
    assert ckpt["step"] == 3


def test_generate_only_reads_the_checkpoint_that_ckpt_names(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    _, ckpt = resolve_config(build_parser().parse_args(["--out_dir", str(out), "--generate_only", "--ckpt", "best"]))
    assert ckpt["step"] == 2
    # --resume always continues from the last checkpoint
    _, ckpt = resolve_config(build_parser().parse_args(["--out_dir", str(out), "--resume", "--ckpt", "best"]))
    assert ckpt["step"] == 3


def test_a_shape_flag_must_match_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    fake_run(out, n_embd=48)
    assert resolve(["--out_dir", str(out), "--generate_only", "--n_embd", "48"]).n_embd == 48
    with pytest.raises(UserError, match="--n_embd 64 conflicts with the checkpoint"):
        resolve(["--out_dir", str(out), "--generate_only", "--n_embd", "64"])


def test_a_shape_key_missing_from_an_old_checkpoint_had_its_default(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    ckpt = load_checkpoint(out / "ckpt.pt")
    del ckpt["config"]["mlp"]
    save_checkpoint(ckpt, out / "ckpt.pt")
    assert resolve(["--out_dir", str(out), "--resume", "--mlp", C.Config.mlp]).mlp == C.Config.mlp
    with pytest.raises(UserError, match="conflicts with the checkpoint"):
        resolve(["--out_dir", str(out), "--resume", "--mlp", next(m for m in ("gelu", "swiglu") if m != C.Config.mlp)])


def test_the_generation_command_resolves_like_generate_only(tmp_path, monkeypatch):
    from tinyllm import generate_cli

    out = tmp_path / "run"
    fake_run(out, temperature=0.3, top_k=7)
    seen = []
    monkeypatch.setattr(generate_cli, "run_generation", lambda cfg, ckpt, interactive=False: seen.append(cfg) or 0)
    with pytest.raises(SystemExit):
        generate_cli.main(["--out_dir", str(out), "--top_k", "5"])
    assert seen == [resolve(["--out_dir", str(out), "--generate_only", "--top_k", "5"])]
    assert (seen[0].temperature, seen[0].top_k) == (0.3, 5)


def test_resuming_below_the_checkpoints_step_is_refused(tmp_path):
    out = tmp_path / "run"
    fake_run(out, max_steps=3)  # its checkpoint is at step 3
    with pytest.raises(UserError, match="--max_steps 2: the run in .* is already at step 3; give a --max_steps above"):
        resolve_config(build_parser().parse_args(["--out_dir", str(out), "--resume", "--max_steps", "2"]))
    assert resolve_config(build_parser().parse_args(["--out_dir", str(out), "--resume", "--max_steps", "9"]))[0] \
        .max_steps == 9
