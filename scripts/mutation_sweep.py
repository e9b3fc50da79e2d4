"""A quick mutation sweep of one source file: which lines can change without a test failing.

    python scripts/mutation_sweep.py FILE FIRST_TESTS [THEN_TESTS] [--from LINE]

Run it from the root of a throw-away clone (it rewrites FILE in place while it runs and puts it
back at the end, also on Ctrl-C), with the clone first on PYTHONPATH:

    git clone . /tmp/sweep && cd /tmp/sweep
    PYTHONPATH=$PWD $VENV/bin/python scripts/mutation_sweep.py firmware/core/xk.py \\
        tests/core tests/xk

Mutations, one at a time: a comparison, boolean, membership or identity operator swapped
(`==`/`!=`, `<`/`<=`, `>`/`>=`, `and`/`or`, `in`/`not in`, `is`/`is not`, `not` dropped),
True/False swapped, an `if` made `if False:`, a one-line statement replaced by `pass`. Nothing
inside a string literal is mutated. FIRST_TESTS (comma-separated pytest paths, e.g. the fast
core tests with fakes) run on every mutant; THEN_TESTS only on those FIRST_TESTS did not kill.
Prints each survivor as FILE:LINE, the mutation and the line: a rule no test holds to, a
second line that another one masks, or code that does nothing.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

SWAPS = [
    (" == ", " != "), (" != ", " == "), (" < ", " <= "), (" <= ", " < "), (" > ", " >= "),
    (" >= ", " > "), (" and ", " or "), (" or ", " and "), ("not ", ""), (" not in ", " in "),
    (" in ", " not in "), (" is not ", " is "), (" is ", " is not "), ("True", "False"),
    ("False", "True"),
]  # fmt: skip
STATEMENTS = (ast.Raise, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign)


def _in_string(code: str, at: int) -> bool:
    before = code[:at]
    return before.count('"') % 2 == 1 or before.count("'") % 2 == 1


def mutants(source: str, start: int = 0) -> list[tuple[int, str, str]]:
    """(line number, the mutated line, what changed) for every mutation of `source`."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    docstrings: set[int] = set()
    one_line: dict[int, ast.stmt] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, ast.stmt) and node.lineno == node.end_lineno:
            one_line.setdefault(node.lineno, node)
    out = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if number < start or number in docstrings or not text or text.startswith("#"):
            continue
        if text.startswith(("def ", "class ", "@", "import ", "from ")):
            continue
        code = line.split("  #")[0]
        for old, new in SWAPS:
            at = code.find(old)
            if at >= 0 and not _in_string(code, at):
                mutated = line[:at] + new + line[at + len(old) :]
                out.append((number, mutated, f"{old.strip()} -> {new.strip() or '(dropped)'}"))
        indent = line[: len(line) - len(line.lstrip())]
        node = one_line.get(number)
        if isinstance(node, STATEMENTS):
            out.append((number, indent + "pass\n", "deleted"))
        if isinstance(node, ast.If) and text.startswith("if "):
            out.append((number, indent + "if False:\n", "if -> if False"))
    return out


def passes(tests: list[str]) -> bool:
    run = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(run, capture_output=True, timeout=1800).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("first", help="comma-separated tests run on every mutant")
    parser.add_argument("then", nargs="?", default="", help="tests for the first's survivors")
    parser.add_argument("--from", dest="start", type=int, default=0, help="first line to mutate")
    args = parser.parse_args()
    first, then = args.first.split(","), [t for t in args.then.split(",") if t]
    original = args.file.read_text()
    lines = original.splitlines(keepends=True)
    found = mutants(original, args.start)
    print(f"{len(found)} mutants of {args.file}", flush=True)
    survivors = 0
    try:
        for number, mutated, what in found:
            changed = "".join([*lines[: number - 1], mutated, *lines[number:]])
            try:
                compile(changed, str(args.file), "exec")
            except SyntaxError:
                continue
            args.file.write_text(changed)
            if passes(first) and (not then or passes(then)):
                survivors += 1
                print(f"SURVIVED {args.file}:{number} {what}: {lines[number - 1].strip()}",
                      flush=True)  # fmt: skip
    finally:
        args.file.write_text(original)
    print(f"{survivors} of {len(found)} survived", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
