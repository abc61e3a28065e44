"""flashface_core.faces has no import cycle: the backends import the shared types, the registry imports
the backends, and each module imports first in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FACES = Path(__file__).resolve().parent.parent / "flashface_core" / "faces"
MODULES = sorted(path.stem for path in FACES.glob("*.py") if path.stem != "__init__")


def package_imports(module):
    """The faces modules `module` imports (`from . import x`, `from .x import y`), at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse((FACES / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found & set(MODULES)


def test_no_import_cycle():
    graph = {module: package_imports(module) for module in MODULES}
    done, path = set(), []

    def visit(module):
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + [module])}"
        if module not in done:
            path.append(module)
            for imported in graph[module]:
                visit(imported)
            path.pop()
            done.add(module)

    for module in MODULES:
        visit(module)
    assert all("detection" not in imports for imports in graph.values())  # the registry sits on top


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first(module):
    run = subprocess.run([sys.executable, "-c", f"import flashface_core.faces.{module}"],
                         cwd=FACES.parent.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
