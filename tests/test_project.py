"""Project-level promises: the included corpus, the README's flags and commands, the docs' links."""

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


PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _trainer_flag_lines(text: str) -> list[str]:
    """Lines that invoke the trainer, and the rows of tables headed `| flag |` (the trainer's flags); other
    tools (pytest, pip, prepare_wikitext.py, the exporter, the GUI) have flags of their own."""
    lines, in_flag_table = [], False
    for ln in text.splitlines():
        in_flag_table = ln.startswith("|") and (in_flag_table or ln.startswith("| flag |"))
        if "train_tinyllm.py" in ln or "tinyllm-train" in ln:
            # On a torchrun line, the flags before the script are torchrun's own.
            lines.append(ln.split("train_tinyllm.py", 1)[-1])
        elif in_flag_table:
            lines.append(ln)
    return lines


def test_every_flag_in_the_readme_exists():
    known = set()
    for action in build_parser()._actions:
        known.update(action.option_strings)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert any(re.search(r"--[a-z]", ln) for ln in _trainer_flag_lines(readme)), "the README shows no flags"
    for page in PAGES:
        lines = _trainer_flag_lines(page.read_text(encoding="utf-8"))
        flags = {f for ln in lines for f in re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", ln)}
        unknown = sorted(flags - known)
        assert not unknown, f"{page.relative_to(REPO)} shows flags the CLI lacks: {unknown}"


def _outside_code(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], None
    for ln in text.splitlines():
        mark = re.match(r"\s*(`{3,}|~{3,})", ln)
        if mark and (fence is None or mark.group(1)[0] == fence[0] and len(mark.group(1)) >= len(fence)):
            fence = None if fence else mark.group(1)
            continue
        if fence is None:
            lines.append(ln)
    return lines


def _anchors(page) -> set[str]:
    """The anchors GitHub gives the page's headings: markup dropped, lower case, punctuation removed, spaces
    to dashes, a repeated anchor numbered -1, -2, ..."""
    anchors, counts = set(), {}
    for ln in _outside_code(page.read_text(encoding="utf-8")):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", ln)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "").lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(f"{slug}-{n}" if n else slug)
    return anchors


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in PAGES:
        for ln in _outside_code(page.read_text(encoding="utf-8")):
            ln = re.sub(r"`[^`]*`", "", ln)
            for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", ln):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(REPO)}: ({target})"
                if not dest.exists():
                    broken.append(f"{where} names a missing file")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where} names a heading {dest.name} lacks")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    test_cmd = ci.strip().splitlines()[-1]
    assert test_cmd in readme
    assert "pip install -q torch==2.13.0" in ci


def test_every_extra_the_code_and_docs_name_exists():
    """A missing optional package's error names the extra to install: it must be one pyproject declares."""
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    declared = set(re.findall(r"^([\w-]+) = \[", section, flags=re.M))  # (tomllib is Python 3.11+)
    assert {"dev", "gui", "bpe"} <= declared
    files = [*(REPO / "tinyllm").rglob("*.py"), REPO / "README.md", *(REPO / "docs").glob("*.md")]
    named = {extra for f in files for group in re.findall(r'pip install[^"\n]*"\.\[([\w,-]+)\]"', f.read_text())
             for extra in group.split(",")}
    assert {"bnb", "gui", "export"} <= named  # the pattern finds them
    assert named <= declared, named - declared


def test_every_test_the_docs_name_exists():
    """A promise that cites its test (`tests/test_x.py::test_y`, or a bare `test_y`) cites one that exists."""
    defined = {p.name: set(re.findall(r"^def (test_\w+)", p.read_text(encoding="utf-8"), re.M))
               for p in (REPO / "tests").glob("test_*.py")}
    everywhere = set().union(*defined.values())
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for file, name in re.findall(r"tests/(test_\w+\.py)(?:::(\w+))?", text):
            if file not in defined or (name and name not in defined[file]):
                missing.append(f"{page.relative_to(REPO)}: tests/{file}{'::' + name if name else ''}")
        missing += [f"{page.relative_to(REPO)}: {name}" for name in re.findall(r"`(test_\w+)`", text)
                    if name not in everywhere]
    assert not missing, "the docs cite tests that do not exist:\n" + "\n".join(missing)


def test_the_layout_page_names_every_module():
    page = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    modules = [p.name for p in sorted((REPO / "tinyllm").glob("*.py")) if p.name != "__init__.py"]
    missing = [m for m in modules if f"`{m}`" not in page]
    assert not missing, f"docs/layout.md does not describe {missing}: add a row for each to its tables"


def test_every_module_has_its_test_file():
    """Tests mirror the modules: tinyllm/x.py is tested in tests/test_x.py, tinyllm/gui/x.py in tests/test_gui_x.py
    (the GUI app as a whole, gui/app.py, in tests/test_gui.py)."""
    package = REPO / "tinyllm"
    missing = []
    for module in sorted(package.rglob("*.py")):
        if module.name == "__init__.py":
            continue
        parts = module.relative_to(package).with_suffix("").parts
        name = "test_gui" if parts == ("gui", "app") else "_".join(("test", *parts))
        if not (REPO / "tests" / f"{name}.py").is_file():
            missing.append(f"{module.relative_to(REPO)} -> tests/{name}.py")
    assert not missing, "modules without their test file:\n" + "\n".join(missing)
