"""The layout's rules, checked on the code itself: which package may import which, no
import cycle, the pydantic-only config, and the size limits that keep modules readable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "actors", "strategies")
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 400, 300, 60


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _runtime_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports when it is imported: module level, outside
    ``if TYPE_CHECKING:`` (imports inside functions run later and cannot make a cycle)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body + getattr(node, "orelse", []) + [s for h in getattr(node, "handlers", []) for s in h.body])

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in MODULES}


def test_config_imports_neither_torch_nor_ray():
    """Validating a config must not cost a torch or Ray import (seconds)."""
    code = ("import sys, orchestrator.config; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("package, forbidden", [("actors", ("orchestrator",)),
                                                ("strategies", ("orchestrator", "actors"))])
def test_dependencies_point_one_way(package, forbidden):
    wrong = {name: sorted(m for m in _all_imports(path) if m.split(".")[0] in forbidden)
             for name, path in MODULES.items() if name.split(".")[0] == package}
    assert {k: v for k, v in wrong.items() if v} == {}


def _all_imports(path: Path) -> set[str]:
    """Every import anywhere in the file, function-level and TYPE_CHECKING ones included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_import_cycle():
    graph = {name: {m for m in _runtime_imports(path) if m != name} for name, path in MODULES.items()}
    done: set[str] = set()

    def cycle_from(name: str, stack: list[str]) -> list[str] | None:
        if name in stack:
            return stack[stack.index(name):] + [name]
        if name in done:
            return None
        for dep in sorted(graph[name]):
            if not dep.startswith(name + ".") and (found := cycle_from(dep, [*stack, name])):
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        assert cycle_from(name, []) is None


def test_sizes():
    too_big = []
    for name, path in MODULES.items():
        text = path.read_text()
        if (n := len(text.splitlines())) > MAX_MODULE:
            too_big.append(f"module {name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS:
                too_big.append(f"class {name}.{node.name}: {size} lines")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > MAX_FUNCTION:
                too_big.append(f"function {name}.{node.name}: {size} lines")
    assert too_big == []
