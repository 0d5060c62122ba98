import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from tinyllm import config as C
from tinyllm.cli import build_parser
from tinyllm.errors import UserError
from tinyllm.runconfig import resolve_config


def resolve(argv):
    return resolve_config(build_parser().parse_args(argv))[0]


@pytest.mark.parametrize("text, needle", [
    ('{"lr": NaN}', "NaN is not a number JSON allows"),
    ('{"lr": -Infinity}', "-Infinity is not a number JSON allows"),
    ('{"lr": 0.1, "n_layer": 2, "lr": 0.2}', "the key 'lr' is given more than once"),
])
def test_json_that_python_reads_but_is_not_plain_json_names_the_file(tmp_path: Path, text, needle):
    f = tmp_path / "odd.json"
    f.write_text(text)
    with pytest.raises(UserError, match=f"--config {re.escape(str(f))}: {needle}"):
        resolve(["--config", str(f)])


def test_a_byte_order_mark_is_not_part_of_the_json(tmp_path: Path):
    f = tmp_path / "notepad.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"n_layer": 2}).encode())
    assert resolve(["--config", str(f)]).n_layer == 2


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
    # these used to reach torch.multinomial as infinities and crash --generate_only with a traceback
    (["--temperature", "1e-300"], "--temperature must be 0 \\(greedy\\) or at least 1e-06"),
    (["--repetition_penalty", "1e-300"], "--repetition_penalty must be between 1e-06 and 1e\\+06"),
    # beta 1 divides by zero in Adam's bias correction (or the optimizer refuses it with a traceback)
    (["--beta1", "1"], "--beta1 must be less than 1.0"),
    (["--beta2", "1.0"], "--beta2 must be less than 1.0"),
    # torch.manual_seed overflows beyond 64 bits, where the evaluation's seed offsets took it mid-run
    (["--seed", "18446744073709551615"], "--seed must be at most 4294967295"),
    (["--seed", "-1"], "--seed must be at least 0"),
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


def test_settings_page_is_generated_from_the_dataclass():
    page = REPO / "docs" / "settings.md"
    committed = page.read_text(encoding="utf-8") if page.is_file() else ""
    assert committed == C.settings_markdown(), (
        f"docs/settings.md is stale (a Config field changed): regenerate it with `{C.MARKDOWN_COMMAND}`")


def test_settings_page_lists_every_field_under_its_group():
    text = C.settings_markdown()
    for name, f in C.FIELDS.items():
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| `--{name}`"))
        section = text[:text.index(row)].rsplit("\n## ", 1)[1].splitlines()[0]
        assert section == C.GROUP_TITLES[f.metadata["group"]], name
        assert row.count(" | ") == 4, f"a `|` in {name}'s help would split its table row: {row}"


def test_markdown_command_prints_the_page():
    out = subprocess.run([sys.executable, "-m", "tinyllm.config", "--markdown"], cwd=REPO, capture_output=True,
                         check=True).stdout
    assert out.decode("utf-8").replace("\r\n", "\n") == C.settings_markdown()
