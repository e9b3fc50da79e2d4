"""plugin_tests/ is what an outside project would write: it imports nothing of kmsnode but the
names kmsnode_pytest exports (no firmware, hsm or tests modules), and the README's example is
its test_readme_example.py, word for word."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import kmsnode_pytest
from tests.plugin.procs import PROBE, REPO

OUTSIDE = [*sorted((REPO / "plugin_tests").glob("*.py")), PROBE]
ALLOWED = {"pytest", "grpc", "kmsnode_pytest"} | set(sys.stdlib_module_names)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in `path`."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", [alias.name for alias in node.names]))
    return found


def test_the_outside_project_imports_only_what_kmsnode_pytest_exports() -> None:
    assert len(OUTSIDE) >= 3
    for path in OUTSIDE:
        for module, names in imports(path):
            assert module.split(".")[0] in ALLOWED, f"{path.name} imports {module}"
            if module.split(".")[0] == "kmsnode_pytest":
                assert module == "kmsnode_pytest", f"{path.name} imports {module}"
                assert set(names) <= set(kmsnode_pytest.__all__), f"{path.name}: {names}"


def test_the_readme_example_is_the_tested_one_word_for_word() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## In other projects' CI", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    tested = (REPO / "plugin_tests" / "test_readme_example.py").read_text()
    docstring_end = tested.index('"""', 3) + 3
    assert blocks[0] == tested[docstring_end:].lstrip("\n")
    body = blocks[0].split("):\n", 1)[1]
    assert len(body.splitlines()) <= 10  # ten lines a DF2 vendor can paste
