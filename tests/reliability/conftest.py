"""Prints the reliability figures after the run: the fault matrix as a table and the summary line.

Every family registers its planned cases when the tests are collected (`pytest_collection_finish`, after
deselection), so each figure's denominator is what was planned, and a case that raised, errored or was never
recorded counts as failed (results.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import results

# (test file, test function) -> family. A parametrized test runs one case per item, named by its ID; a test
# running several cases itself (the crash trials) lists them in its module's PLANNED_CASES.
FAMILIES = {
    ("test_crash_trials.py", "test_crash_trials"): "crash",
    ("test_fault_matrix.py", "test_fault_cell"): "fault",
    ("test_bad_inputs.py", "test_bad_input"): "bad_input",
    ("test_postgres_dies.py", "test_postgres_dies_mid_run_and_the_next_run_resumes"): "pg_dies",
}


def _cases(item: pytest.Item) -> list[str]:
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        return [callspec.id]
    return list(getattr(getattr(item, "module", None), "PLANNED_CASES", None) or [item.name])


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        kind = FAMILIES.get((item.path.name, getattr(item, "originalname", item.name)))
        if kind is not None:
            results.plan(kind, item.nodeid, _cases(item))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        results.mark_failed(report.nodeid, report.when)


def summary_line() -> str:
    crash, fault, bad, pg = (results.tally(k) for k in ("crash", "fault", "bad_input", "pg_dies"))
    line = (f"crash trials: {crash.passed}/{crash.planned} exact{crash.suffix()}; "
            f"fault cells: {fault.passed}/{fault.planned} as expected{fault.suffix()}; "
            f"bad inputs: {bad.passed}/{bad.planned} handled{bad.suffix()}")
    if pg.planned:
        line += f"; postgres dies: {pg.passed}/{pg.planned} resumed exactly{pg.suffix()}"
    return line


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not results.RESULTS and not results.PLANNED:
        return
    tr = terminalreporter
    faults = results.outcomes("fault")
    details = {name: detail for name, _, detail in results.RESULTS.get("fault", [])}
    if faults:
        tr.section("fault matrix (provider route x fault -> outcome)")
        width = max(len(name) for name in faults)
        for name, (ok, why) in sorted(faults.items()):
            tr.write_line(f"{name:<{width}}  {'as expected' if ok else 'FAILED     '}  {details.get(name, why)}")
    crashes = results.outcomes("crash")
    if crashes:
        tr.section("crash trials")
        recorded = {name: detail for name, _, detail in results.RESULTS.get("crash", [])}
        for name, (ok, why) in crashes.items():
            tr.write_line(f"{name}  {'exact' if ok else 'NOT EXACT'}  {recorded.get(name, why)}")
    recorded_pg = {name: detail for name, _, detail in results.RESULTS.get("pg_dies", [])}
    for name, (ok, why) in results.outcomes("pg_dies").items():
        tr.write_line(f"{name}: {'resumed exactly, clear error' if ok else 'FAILED'} ({recorded_pg.get(name, why)})")
    line = summary_line()
    tr.write_line(line)
    target = os.environ.get("DM_RELIABILITY_SUMMARY")
    if target:  # `make reliability` prints it again as its very last line, after pytest's own
        Path(target).write_text(line + "\n")
