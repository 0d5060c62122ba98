"""The export command (tinyllm.export): checking what a run exports as before writing anything, the command
line the GUI shows and runs, and its errors. Each format's own tests: tests/test_export_hf.py and
tests/test_export_gguf.py."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from conftest import exit_status, tiny_model

from tinyllm.checkpoint import FORMAT_VERSION, save_checkpoint
from tinyllm.errors import UserError
from tinyllm.export import build_parser, check, check_run, command, command_text, default_output, main
from tinyllm.tokenizer import CharTokenizer


def export(*args) -> int:
    return exit_status(main, args)


@pytest.fixture
def run(tmp_path):
    model = tiny_model(mlp="relu2")  # no export target has relu2 with learned positions
    state = {"format_version": FORMAT_VERSION, "config": {}, "model_args": model.args.to_dict(),
             "model": model.state_dict(), "tokenizer": CharTokenizer(list("\n abcdefghijk")).to_json(), "step": 1}
    save_checkpoint(state, tmp_path / "run" / "ckpt.pt")
    return tmp_path / "run"


def test_check_refuses_by_name_without_writing(run):
    for fmt in ("hf", "gguf"):
        with pytest.raises(UserError, match="--mlp relu2"):
            check_run(run, "last", fmt)
    with pytest.raises(UserError, match="--format onnx: choose one of hf, gguf"):
        check(tiny_model().args, None, "onnx")
    with pytest.raises(UserError, match="no checkpoint at"):
        check_run(run, "best", "hf")
    assert sorted(p.name for p in run.iterdir()) == ["ckpt.pt"]


def test_the_command_shown_is_the_command_parsed():
    out = Path("out/my run")
    assert default_output(out, "hf") == Path("out/export/my run-hf")
    assert default_output(out, "gguf", "q8_0", which="best") == Path("out/export/my run-best-q8_0.gguf")
    argv = command(out, "gguf", default_output(out, "gguf", "q8_0"), which="best", dtype="q8_0", no_ema=True,
                   overwrite=True)
    text = command_text(argv)
    assert text.startswith("python -m tinyllm.export --out_dir 'out/my run' --format gguf")
    ns = build_parser().parse_args(shlex.split(text)[3:])
    assert (ns.out_dir, ns.format, ns.output, ns.ckpt, ns.dtype, ns.no_ema, ns.overwrite) == \
        ("out/my run", "gguf", "out/export/my run-q8_0.gguf", "best", "q8_0", True, True)
    assert command(out, "gguf", "m.gguf", dtype="f16") == ["-m", "tinyllm.export", "--out_dir", "out/my run",
                                                          "--format", "gguf", "--output", "m.gguf"]  # defaults left out


def test_command_errors_are_one_line_and_status_2(run, tmp_path, capsys):
    assert export("--out_dir", run, "--format", "hf", "--dtype", "f16", "--output", tmp_path / "hf") == 2
    assert capsys.readouterr().err == ("error: --dtype applies to --format gguf only; a Hugging Face folder is "
                                       "written in float32\n")
    assert export("--out_dir", tmp_path / "nothing", "--output", tmp_path / "hf") == 2
    err = capsys.readouterr().err  # no checkpoint (or, without the export extra, the extra to install)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "hf").exists()
    assert export("--out_dir", run, "--format", "zip", "--output", tmp_path / "hf") == 2  # argparse's own errors
    err = capsys.readouterr().err
    assert err.startswith("error: argument --format: invalid choice") and err.count("\n") == 1
    assert "(see python -m tinyllm.export --help)" in err


def test_overwrite_never_replaces_the_run_or_anything_but_an_earlier_export(run, tmp_path, capsys):
    """--overwrite replaces --output whole: the run folder, a folder holding it, the run's ckpt.pt or any other
    file that is not an export of that format are refused, and nothing is touched."""
    (tmp_path / "notes.txt").write_text("mine")
    cases = [("hf", run, "is the run folder"), ("hf", tmp_path, "a folder that holds the run"),
             ("gguf", run / "ckpt.pt", "is not a GGUF file"), ("gguf", tmp_path / "notes.txt", "is not a GGUF file"),
             ("hf", tmp_path, "a folder that holds the run")]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for fmt, output, message in cases:
        assert export("--out_dir", run, "--format", fmt, "--output", output, "--overwrite") == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("x")
    assert export("--out_dir", run, "--format", "hf", "--output", tmp_path / "other", "--overwrite") == 2
    assert "is not a Hugging Face model folder" in capsys.readouterr().err
    # An earlier export of the format is what --overwrite may replace (this run itself is then refused: relu2).
    (tmp_path / "old.gguf").write_bytes(b"GGUF" + bytes(20))
    assert export("--out_dir", run, "--format", "gguf", "--output", tmp_path / "old.gguf", "--overwrite") == 2
    assert "--mlp relu2" in capsys.readouterr().err and (tmp_path / "old.gguf").read_bytes()[:4] == b"GGUF"
