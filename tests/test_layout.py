"""The package's architecture, checked from the source so that it stays true:

* imports run one way: ``analysis`` / ``experiments`` -> ``engines`` -> ``run`` -> ``models`` / ``data``
  -> ``masks`` -> ``runtime`` -> ``files`` (``cli`` on top; the package ``__init__`` is the public face
  and no module imports it);
* no import circles among colormae modules;
* no colormae import inside a function or class (the usual way to dodge a circle);
* no ``importlib`` / ``__import__``: modules are named by direct imports (``ENGINES``, ``COMMANDS``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "colormae"
# layer of each top-level name under colormae/ (sub-package or root module); a module may import its
# own package and any lower layer, never a higher one, nor another package of its own layer
LAYERS = {"files": 0, "runtime": 1, "masks": 2, "models": 3, "data": 3, "run": 4, "engines": 5,
          "experiments": 6, "analysis": 6, "cli": 7, "__main__": 8, "__init__": 9}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (PKG / name.replace(".", "/") / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def targets(node: ast.ImportFrom | ast.Import, importer: str) -> list[str]:
    """The colormae modules an import statement loads (names relative to colormae; '__init__' = the package)."""
    if isinstance(node, ast.Import):
        return [a.name.removeprefix("colormae.") or "__init__" for a in node.names
                if a.name == "colormae" or a.name.startswith("colormae.")]
    if node.level == 0:
        if node.module != "colormae" and not (node.module or "").startswith("colormae."):
            return []
        base = node.module.removeprefix("colormae").lstrip(".")
    else:
        here = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
        if importer == "__init__":
            here = []
        up = here[: len(here) - (node.level - 1)]
        base = ".".join(up + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        out.append(sub if sub in MODULES else (base or "__init__"))
    return out


def imports(name: str) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, target module, at module top level) for every colormae import in module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    top = set(map(id, tree.body))
    return [(node, t, id(node) in top) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for t in targets(node, name)]


def layer(name: str) -> tuple[str, int]:
    head = name.split(".")[0]
    return head, LAYERS[head]


def test_every_module_has_a_layer():
    assert {m.split(".")[0] for m in MODULES} <= set(LAYERS), sorted({m.split(".")[0] for m in MODULES} - set(LAYERS))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_the_layers(name):
    if name == "__init__":
        return  # the public face re-exports from anywhere below it
    own, rank = layer(name)
    for node, target, _ in imports(name):
        their, theirs = layer(target)
        assert their == own or theirs < rank, (
            f"colormae.{name} (line {node.lineno}) imports colormae.{target}: {own} (layer {rank}) may import "
            f"its own package and lower layers only, not {their} (layer {theirs})")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_colormae_import_inside_functions(name):
    inner = [(node.lineno, target) for node, target, top in imports(name) if not top]
    assert not inner, f"colormae.{name} imports inside a function or class: {inner}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_importlib(name):
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            uses = any(n.split(".")[0] == "importlib" for n in names)
            assert not uses, f"colormae.{name}:{node.lineno} imports importlib"
        if isinstance(node, ast.Name) and node.id == "__import__":
            raise AssertionError(f"colormae.{name}:{node.lineno} calls __import__")


def import_graph() -> dict[str, set[str]]:
    """module -> the colormae modules its top-level imports load (a package's ``__init__`` counts as
    the package; the implicit run of a parent ``__init__`` before a submodule is no edge: a package
    that re-exports its own modules is not a circle)."""
    return {name: {t for _, t, top in imports(name) if t != name and top} for name in MODULES}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (circle := visit(name)):
            return circle
    return None


def test_no_import_circles():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(f"colormae.{m}" for m in circle)


def test_the_checks_catch_planted_violations():
    """The source checks are live: an upward import, an import inside a function, importlib and a
    circle of two planted modules each fail them."""
    planted = {PKG / "masks" / "_planted_a.py": "import importlib\nfrom ..engines import pretrain\n"
                                                "from . import _planted_b\n\n\n"
                                                "def f():\n    from ..files import ROOT\n    return ROOT\n",
               PKG / "masks" / "_planted_b.py": "from . import _planted_a\n"}
    try:
        for path, text in planted.items():
            path.write_text(text)
            MODULES[module_name(path)] = path
        with pytest.raises(AssertionError, match="may import its own package and lower layers only"):
            test_imports_run_down_the_layers("masks._planted_a")
        with pytest.raises(AssertionError, match="imports inside a function"):
            test_no_colormae_import_inside_functions("masks._planted_a")
        with pytest.raises(AssertionError, match="imports importlib"):
            test_no_importlib("masks._planted_a")
        assert find_circle(import_graph()) in (["masks._planted_a", "masks._planted_b", "masks._planted_a"],
                                               ["masks._planted_b", "masks._planted_a", "masks._planted_b"])
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
            MODULES.pop(module_name(path), None)
