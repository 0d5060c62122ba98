"""Project-level promises: the included corpus, the README's flags and commands."""

import bz2
import re

from conftest import REPO

from tinyllm.cli import build_parser


def test_corpus_is_large_and_natural():
    data = (REPO / "data" / "tiny_corpus.txt").read_bytes()
    assert len(data) >= 100_000
    # Real prose compresses to 25-30% with bz2; templated text to under 10%.
    assert len(bz2.compress(data)) / len(data) >= 0.22
    data.decode("utf-8")


def test_every_flag_in_the_readme_exists():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    known = set()
    for action in build_parser()._actions:
        known.update(action.option_strings)
    # Only lines that invoke the trainer: other tools (pytest, pip, prepare_wikitext.py) have flags of their own.
    lines = [ln for ln in readme.splitlines() if "train_tinyllm.py" in ln or "tinyllm-train" in ln
             or ln.lstrip().startswith("| `--")]
    # On a torchrun line, the flags before the script are torchrun's own.
    lines = [ln.split("train_tinyllm.py", 1)[-1] for ln in lines]
    flags = {f for ln in lines for f in re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", ln)}
    assert flags, "the README shows no flags"
    unknown = sorted(flags - known)
    assert not unknown, f"README shows flags the CLI lacks: {unknown}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    test_cmd = ci.strip().splitlines()[-1]
    assert test_cmd in readme
    assert "pip install -q torch==2.13.0" in ci
