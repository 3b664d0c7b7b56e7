"""The package's shape: imports point down the layers only, no cycles, modules of one story.

The layers (docs/ARCHITECTURE.md), lowest first; a module may import its own package and
any lower layer, never a higher one or a sibling package of its own layer:

    errors
    files settings progress devices        (shared helpers)
    data models                            (text and ids; the networks)
    checkpoint evaluate                    (the run directory; loss and bpc)
    train infer                            (the loop; the loaded model, sampling, fast steps)
    serve lab                              (the HTTP server; the memorisation experiments)
    cli                                    (the command line)
    __main__ __init__                      (python -m charnn; the public API)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import charnn

PACKAGE = Path(charnn.__file__).parent
LAYERS = [
    ["errors"],
    ["files", "settings", "progress", "devices"],
    ["data", "models"],
    ["checkpoint", "evaluate"],
    ["train", "infer"],
    ["serve", "lab"],
    ["cli"],
    ["__main__", "__init__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _unit(module: str) -> str:
    """The layer unit of a module: its sub-package, or the top-level module itself."""
    return module.split(".")[0]


def _imports(path: Path, module: str) -> set[str]:
    """charnn modules imported anywhere in the file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("charnn.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "charnn":
                # `from charnn import x`: a submodule, or the package's own __version__.
                found |= {f"charnn.{a.name}" for a in node.names if a.name != "__version__"}
            elif node.module.startswith("charnn."):
                found.add(node.module)
    return {m.removeprefix("charnn.") for m in found}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units <= set(RANK), f"put these in LAYERS (and docs/ARCHITECTURE.md): {units - set(RANK)}"


def test_imports_point_down():
    wrong = []
    for module, path in _modules().items():
        unit = _unit(module)
        for target in _imports(path, module):
            t_unit = _unit(target)
            if t_unit == unit or RANK[t_unit] < RANK[unit]:
                continue
            wrong.append(f"{module} imports {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = {m: {t for t in _imports(p, m) if t in _modules() or f"{t}.__init__" in _modules()}
             for m, p in _modules().items()}
    graph = {m: {t if t in graph else f"{t}.__init__" for t in ts} for m, ts in graph.items()}
    # Package __init__ files re-export their modules: an edge into one is an edge into the package.
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if t.endswith("__init__") and m.startswith(t.removesuffix("__init__")):
                continue  # a module importing its own package's __init__ re-exports
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, m, t]))
            if state.get(t) is None:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_and_classes_of_one_story(module):
    path = _modules()[module]
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines; split it into modules of one story"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{module}.{node.name} has {size} lines; it holds two stories"
