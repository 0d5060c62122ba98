"""The generation command (tinyllm-generate / python -m tinyllm.generate_cli): stop strings, --interactive."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from conftest import REPO, run_cli, tiny_trained_run

from tinyllm.generate import StopScanner, parse_stop
from tinyllm.generate_cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory.mktemp("gen"))


def gen(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


GREEDY = ("--prompt", "The ", "--temperature", "0", "--sample_chars", "40")


def test_parse_stop():
    assert parse_stop("") == []
    assert parse_stop("cat") == ["cat"]
    assert parse_stop("cat|dog||") == ["cat", "dog"]
    assert parse_stop(r"\n\n|a\|b|c\\d|\x") == ["\n\n", "a|b", "c\\d", "\\x"]


def test_stop_scanner_holds_back_only_what_could_become_a_stop():
    s = StopScanner(["cat.", "\n\n"])
    assert s.cut("the ca") == (4, False)  # "ca" may become "cat."
    assert s.cut("the cab") == (7, False)  # it did not
    assert s.cut("a\n") == (1, False)
    assert s.cut("a cat. b") == (2, True)  # ends right before the stop string
    assert s.cut("x\n\ny cat.") == (1, True)  # the earliest stop string wins


def test_stop_strings_end_generation_exactly_at_the_string(run, capsys):
    code, full, _ = gen(capsys, "--out_dir", run, *GREEDY)
    assert code == 0 and full.startswith("The ") and full.endswith("\n")
    text = full[len("The "):-1]
    assert len(text) == 40
    stop = text[20:23]  # a string the model does produce, at a known place
    first = text.find(stop)
    code, out, err = gen(capsys, "--out_dir", run, *GREEDY, "--stop", stop)
    assert code == 0
    assert out == "The " + text[:first] + "\n"  # everything before the stop string, not the string itself
    assert f"generated {first + len(stop)} tokens" in err  # and not one token more was sampled

    # Alternatives: the one that occurs first ends it; one that never occurs changes nothing.
    code, out, _ = gen(capsys, "--out_dir", run, *GREEDY, "--stop", f"zzzz|{stop}")
    assert out == "The " + text[:first] + "\n"
    code, out, _ = gen(capsys, "--out_dir", run, *GREEDY, "--stop", "zzzz")
    assert out == full

    # --generate_only has the same flag and prints the same text (it runs the same code).
    capsys.readouterr()
    assert run_cli(["--out_dir", run, "--generate_only", *GREEDY, "--stop", stop]) == 0
    assert capsys.readouterr().out == "The " + text[:first] + "\n"


def test_defaults_come_from_the_run_and_bad_flags_are_refused(run, capsys):
    code, out, err = gen(capsys, "--out_dir", run, "--sample_chars", "5", "--prompt", "a")
    assert code == 0 and len(out) == len("a") + 5 + 1 and "loaded" in err
    assert gen(capsys, "--out_dir", run, "--lr", "0.1")[0] == 2  # a training flag is not accepted and ignored
    code, _, err = gen(capsys, "--out_dir", run, "--top_p", "0")
    assert code == 2 and "--top_p" in err
    code, out, err = gen(capsys, "--out_dir", run.parent / "none")
    assert code == 2 and "no checkpoint" in err and out == ""


def test_interactive_keeps_the_model_and_answers_each_line(run, capsys, monkeypatch):
    _, the, _ = gen(capsys, "--out_dir", run, "--prompt", "The", "--temperature", "0", "--sample_chars", "15")
    _, a, _ = gen(capsys, "--out_dir", run, "--prompt", "A", "--temperature", "0", "--sample_chars", "15")
    monkeypatch.setattr(sys, "stdin", io.StringIO("The\n§\nA\n\nnever read\n"))
    code, out, err = gen(capsys, "--out_dir", run, "--interactive", "--temperature", "0", "--sample_chars", "15")
    assert code == 0
    assert out == the + a  # an answer per line; the empty line ended the loop
    assert err.count("loaded") == 1  # loaded once
    assert "'§'" in err  # a line that cannot be encoded is reported, and the loop goes on
    monkeypatch.setattr(sys, "stdin", io.StringIO("The\n"))  # end of input ends it too
    code, out, _ = gen(capsys, "--out_dir", run, "--interactive", "--temperature", "0", "--sample_chars", "15")
    assert code == 0 and out == the


def test_module_and_console_script(run):
    script = re.search(r'^tinyllm-generate = "([\w.]+):(\w+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    module, func = script.groups()
    assert callable(getattr(__import__(module, fromlist=[func]), func))
    p = subprocess.run([sys.executable, "-m", "tinyllm.generate_cli", "--out_dir", str(run), "--prompt", "The",
                        "--sample_chars", "7", "--stop", "zzzz"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("The") and len(p.stdout) == len("The") + 7 + 1
    assert "Warning" not in p.stderr  # runpy's double-import warning, for one


def test_ema_help_says_what_it_means_when_reading_a_run():
    """--ema of the commands that read a run picks weights the run kept; it does not start an average."""
    from tinyllm import generate_cli, serve

    for parser in (generate_cli.build_parser(), serve.build_parser()):
        text = " ".join(parser.format_help().split())
        assert "Use the EMA weights when the run kept them" in text and "Keep an exponential" not in text


def test_a_prompt_outside_the_vocabulary_names_the_flag_and_is_echoed_as_the_model_saw_it(run, capsys):
    code, out, err = gen(capsys, "--out_dir", run, "--prompt", "§The ", "--temperature", "0", "--sample_chars", "5")
    assert code == 2 and "\nerror: --prompt: characters not in the vocabulary: '§'" in err, err
    code, out, err = gen(capsys, "--out_dir", run, "--prompt", "§The ", "--temperature", "0", "--sample_chars", "5",
                         "--drop_unknown_chars")
    assert code == 0 and "dropped prompt characters" in err and "['§']" in err
    plain = gen(capsys, "--out_dir", run, "--prompt", "The ", "--temperature", "0", "--sample_chars", "5")[1]
    assert out == plain and out.startswith("The ")  # the § is neither shown nor given to the model
