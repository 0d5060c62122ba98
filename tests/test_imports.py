"""Imports flow one way. Entry points (the commands and the GUI) on top; the training loop and the sampler
beneath them; model, data, tokenizer, optimizers, checkpoint and the other pieces at the bottom. No circles.

Every `import` in every module of tinyllm counts, at the top of a file or inside a function (a lazy import
is still a dependency, and still a circle when it closes one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "tinyllm"

# What a user runs. They may import anything beneath them; nothing beneath imports them.
ENTRY_POINTS = ("tinyllm.cli", "tinyllm.generate_cli", "tinyllm.gui", "tinyllm.export", "tinyllm.evaluate",
                "tinyllm.serve")
# The training loop: only entry points import it. (The sampler, tinyllm.generate, is beneath the entry points
# too, but it is also the one way to load a model from a checkpoint, so lower modules may use it; it imports
# no training code and no entry point.)
LOOP = ("tinyllm.train", "tinyllm.evaluation", "tinyllm.runlog")
SAMPLER = "tinyllm.generate"


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module in the package (a package is its __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(source: str, module: str, known: set[str], is_package: bool = False) -> set[str]:
    """The modules of `known` that `source` (the module `module`) imports, anywhere in the file:
    `import tinyllm.x`, `from tinyllm.x import y` (tinyllm.x.y where y is a module, else tinyllm.x),
    `from tinyllm import x` and relative imports."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:  # `import a.b.c` depends on a.b.c (the longest prefix that is a module)
                parts = a.name.split(".")
                prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
                found.update([p for p in prefixes if p in known][:1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in found if m in known and m != module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the tinyllm modules it imports."""
    mods = modules(root)
    known = set(mods) - {"tinyllm"}  # every module imports the package first: not a dependency of meaning
    return {name: imported_modules(path.read_text(encoding="utf-8"), name, known, path.name == "__init__.py")
            for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def in_layer(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in layer)


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if in_layer(dep, ENTRY_POINTS) and not in_layer(mod, ENTRY_POINTS):
                bad.append(f"{mod} imports the entry point {dep}")
            elif in_layer(dep, LOOP) and not (in_layer(mod, ENTRY_POINTS) or in_layer(mod, LOOP)):
                bad.append(f"{mod} imports the training loop's {dep}")
    return bad


# -- the package --------------------------------------------------------------------------------------------

def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_lower_modules_never_import_entry_points_or_the_loop():
    assert layering_violations(import_graph()) == []


def test_the_sampler_imports_no_training_code():
    deps = import_graph()[SAMPLER]
    assert not [d for d in deps if in_layer(d, LOOP + ENTRY_POINTS)], deps


# -- the walker itself: it must see what a circle is made of -----------------------------------------------

KNOWN = {"tinyllm.cli", "tinyllm.config", "tinyllm.data", "tinyllm.errors", "tinyllm.generate", "tinyllm.gui",
         "tinyllm.gui.app", "tinyllm.gui.chart", "tinyllm.gui.form", "tinyllm.gui.runs", "tinyllm.model",
         "tinyllm.train"}


@pytest.mark.parametrize("source, module, expect", [
    ("import tinyllm.model\n", "tinyllm.train", {"tinyllm.model"}),
    ("import tinyllm.gui.app as app\n", "tinyllm.cli", {"tinyllm.gui.app"}),
    ("from tinyllm.generate import SamplingParams\n", "tinyllm.cli", {"tinyllm.generate"}),
    ("from tinyllm import config as C, data\n", "tinyllm.cli", {"tinyllm.config", "tinyllm.data"}),
    ("def f():\n    if True:\n        from tinyllm.cli import main\n", "tinyllm.generate", {"tinyllm.cli"}),
    ("from tinyllm.gui import form as F, launch\n", "tinyllm.gui.app", {"tinyllm.gui.form", "tinyllm.gui"}),
    ("from . import runs\nfrom .chart import line_chart\n", "tinyllm.gui.app",
     {"tinyllm.gui.runs", "tinyllm.gui.chart"}),
    ("from .app import build_app\n", "tinyllm.gui", {"tinyllm.gui.app"}),
    ("from ..errors import UserError\n", "tinyllm.gui.form", {"tinyllm.errors"}),
    ("import torch\nfrom numpy import zeros\n", "tinyllm.model", set()),
])
def test_imported_modules(source, module, expect):
    assert imported_modules(source, module, KNOWN, is_package=module == "tinyllm.gui") == expect


def test_a_lazy_import_that_closes_a_circle_is_found(tmp_path):
    # The shape of the circles this test was written against: generate.py ended by importing the CLI that
    # imports it, and the generation CLI imported the trainer's CLI for its config resolution.
    pkg = tmp_path / "tinyllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from tinyllm.errors import E\n\ndef main():\n"
                                "    from tinyllm.generate_cli import run\n")
    (pkg / "generate_cli.py").write_text("from tinyllm.generate import g\n\ndef main():\n"
                                         "    from tinyllm.cli import resolve_config\n")
    (pkg / "generate.py").write_text("def g():\n    pass\n\nif __name__ == '__main__':\n"
                                     "    from tinyllm.generate_cli import main\n")
    (pkg / "errors.py").write_text("class E(Exception):\n    pass\n")
    graph = import_graph(pkg)
    assert graph["tinyllm.cli"] == {"tinyllm.errors", "tinyllm.generate_cli"}
    assert find_cycle(graph) == ["tinyllm.cli", "tinyllm.generate_cli", "tinyllm.cli"]
    assert layering_violations(graph) == ["tinyllm.generate imports the entry point tinyllm.generate_cli"]
    (pkg / "generate.py").write_text("def g():\n    pass\n")
    (pkg / "generate_cli.py").write_text("from tinyllm.generate import g\n")
    assert find_cycle(import_graph(pkg)) is None and layering_violations(import_graph(pkg)) == []
