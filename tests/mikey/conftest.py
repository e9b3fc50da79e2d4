"""Coverage gate for firmware/mikey, fed by the coverage pytest-cov already collected (the suite
runs once; nothing here measures anything by itself).

Rules:
- Active only when pytest-cov measured this run (``--cov=firmware/mikey`` or a parent such as
  ``--cov=firmware``; branch coverage comes from ``[tool.coverage.run] branch = true``), every
  test module of tests/mikey was collected, none of its tests was deselected (-k, -m, --lf ...),
  and the run has passed so far: a partial run says nothing about the package's coverage.
- Then the run fails (exit status 1) when the coverage of firmware/mikey alone - statements and
  branches, as ``coverage report`` counts them - is below ``MIN_COVERAGE`` percent.

Typical use: ``.venv/bin/pytest -q tests/mikey --cov=firmware/mikey --cov-branch``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

MIN_COVERAGE = 98.0
HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parents[1] / "firmware" / "mikey"

_deselected_here: list[str] = []


def _ours(item: pytest.Item) -> bool:
    return HERE in Path(item.path).resolve().parents


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected_here.extend(item.nodeid for item in items if _ours(item))


def _whole_directory_ran(session: pytest.Session) -> bool:
    if _deselected_here:
        return False
    collected = {Path(item.path).resolve() for item in session.items if _ours(item)}
    return collected == {p.resolve() for p in HERE.glob("test_*.py")}


def _package_coverage(config: pytest.Config) -> float | None:
    """Percent covered in firmware/mikey from pytest-cov's data, or None if it measured none."""
    plugin = config.pluginmanager.getplugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    cov = getattr(controller, "cov", None)
    if cov is None:
        return None
    if not any(Path(f).resolve().is_relative_to(PACKAGE) for f in cov.get_data().measured_files()):
        return None
    percent: float = cov.report(include=[str(PACKAGE / "*")], file=io.StringIO())
    return percent


_verdict: list[tuple[str, bool]] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != pytest.ExitCode.OK or not _whole_directory_ran(session):
        return
    percent = _package_coverage(session.config)
    if percent is None:
        return
    failed = percent < MIN_COVERAGE
    _verdict.append((f"firmware/mikey coverage {percent:.2f}% (gate {MIN_COVERAGE:.0f}%)", failed))
    if failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line, failed in _verdict:
        terminalreporter.write_sep("-", ("FAILED: " if failed else "") + line, red=failed)
