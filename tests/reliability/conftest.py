"""Prints the reliability figures after the run: the fault matrix as a table and the summary line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.reliability.results import RESULTS, tally


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    faults = RESULTS.get("fault", [])
    if faults:
        tr.section("fault matrix (provider route x fault -> outcome)")
        width = max(len(name) for name, _, _ in faults)
        for name, ok, detail in sorted(faults):
            tr.write_line(f"{name:<{width}}  {'as expected' if ok else 'UNEXPECTED '}  {detail}")
    crashes = RESULTS.get("crash", [])
    if crashes:
        tr.section("crash trials")
        for name, ok, detail in crashes:
            tr.write_line(f"{name}  {'exact' if ok else 'NOT EXACT'}  {detail}")
    for name, ok, detail in RESULTS.get("pg_dies", []):
        tr.write_line(f"{name}: {'resumed exactly, clear error' if ok else 'FAILED'} ({detail})")
    a, b = tally("crash")
    c, d = tally("fault")
    e, f = tally("bad_input")
    line = f"crash trials: {a}/{b} exact; fault cells: {c}/{d} as expected; bad inputs: {e}/{f} handled"
    tr.write_line(line)
    target = os.environ.get("DM_RELIABILITY_SUMMARY")
    if target:  # `make reliability` prints it again as its very last line, after pytest's own
        Path(target).write_text(line + "\n")
