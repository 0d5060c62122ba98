import json
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from tinyllm import config as C
from tinyllm.cli import build_parser, resolve_config
from tinyllm.errors import UserError


def resolve(argv):
    return resolve_config(build_parser().parse_args(argv))[0]


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


def test_boolean_flags_have_no_variant():
    assert resolve(["--no-bias"]).bias is False
    assert resolve(["--bias"]).bias is True


@pytest.mark.parametrize("payload, needle", [
    ({"n_layers": 2}, "unknown config key 'n_layers'"),
    ({"n_layer": "2"}, "'n_layer' must be int"),
    ({"bias": 1}, "'bias' must be bool"),
    ({"n_layer": 2.5}, "'n_layer' must be int"),
])
def test_bad_json_is_an_error_naming_the_key(tmp_path: Path, payload, needle):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(payload))
    with pytest.raises(UserError, match=needle):
        resolve(["--config", str(f)])


def test_int_accepted_for_float():
    assert C.from_dict({"lr": 1}).lr == 1.0


@pytest.mark.parametrize("argv, needle", [
    (["--n_embd", "100", "--n_head", "3"], "divisible by --n_head"),
    (["--n_layer", "0"], "--n_layer must be at least 1"),
    (["--block_size", "-4"], "--block_size must be at least 1"),
    (["--lr", "0"], "--lr must be greater than 0"),
    (["--top_p", "1.5"], "--top_p must be at most 1.0"),
    (["--lr", "nan"], "--lr must be a finite number"),
])
def test_validation(argv, needle):
    with pytest.raises(UserError, match=needle):
        resolve(argv)


@pytest.mark.parametrize("preset", sorted((REPO / "config").glob("*.json")), ids=lambda p: p.name)
def test_every_preset_loads_and_validates(preset: Path):
    C.validate(C.from_dict(C.load_json(preset)))


def test_every_field_has_help_and_group():
    for name, f in C.FIELDS.items():
        assert f.metadata["help"], name
        assert f.metadata["group"] in C.GROUPS, name


def test_cli_bad_key_exits_2(tmp_path: Path, capsys):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"learning_rate": 1}))
    assert run_cli(["--config", f]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "Traceback" not in err
