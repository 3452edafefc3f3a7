"""The layers point one way: the product never imports evaluation code, and no shipped module
imports the test helpers (``sadakit.testing``). Read from the source (ast), so a lazy import
inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import sadakit

ROOT = Path(sadakit.__file__).parent

#: Evaluation: the harness and bench, the demo, the testbeds, the metrics, the bundled models'
#: judges and comparisons. The product may not import any of them.
EVALUATION = (
    "sadakit.bench", "sadakit.demo", "sadakit.demo_table", "sadakit.demo_command", "sadakit.testbeds",
    "sadakit.metrics", "sadakit.bundled.comparison", "sadakit.bundled.shapes.judging",
    "sadakit.bundled.shapes.comparison", "sadakit.bundled.shapes_dit.judging", "sadakit.bundled.shapes_dit.comparison",
    "sadakit.bundled.moving_shapes.judging", "sadakit.bundled.moving_shapes.comparison",
    "sadakit.bundled.notes.judging", "sadakit.bundled.notes.comparison",
    "sadakit.bundled.notes.pictures",
)
TESTING = ("sadakit.testing",)

#: Known exceptions, each with its reason (module -> imported module).
ALLOWED = {
    # `sadakit generate --pipeline tiny:<family>` builds the random-weight test pipelines by design
    ("sadakit.loading", "sadakit.testing"),
    # `sadakit adasde distill --testbed` distils against the analytic testbed (owned by the AdaSDE CLI)
    ("sadakit.adasde.cli", "sadakit.testbeds"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (relative ones resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _allowed(importer: str, imported: str) -> bool:
    return any(importer == n and _within(imported, (m,)) for n, m in ALLOWED)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def test_the_product_imports_no_evaluation_code():
    product = {n: p for n, p in _modules().items() if not _within(n, EVALUATION + TESTING)}
    assert "sadakit.cli" in product and "sadakit.runtime.session" in product and "sadakit.bundled.shapes.model" in product
    bad = sorted((n, m) for n, p in product.items() for m in _imports(p)
                 if _within(m, EVALUATION) and not _allowed(n, m))
    assert not bad, bad


def test_no_shipped_module_imports_the_test_helpers():
    shipped = {n: p for n, p in _modules().items() if not _within(n, TESTING + ("sadakit.demo",))}
    bad = sorted((n, m) for n, p in shipped.items() for m in _imports(p) if _within(m, TESTING) and not _allowed(n, m))
    assert not bad, bad


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The check itself: a lazy relative import in a function body is found and resolved."""
    module = ROOT / "bundled" / "shapes" / "model.py"
    assert "sadakit.bundled.tokenizers" in _imports(module)
    assert "sadakit.bench.harness" in _imports(ROOT / "bundled" / "comparison.py")  # lazy, inside compare_sada
