"""Collects reliability outcomes across the session; conftest prints the table and the summary line."""

from __future__ import annotations

from collections import defaultdict

RESULTS: dict[str, list[tuple[str, bool, str]]] = defaultdict(list)


def record(kind: str, name: str, ok: bool, detail: str = "") -> None:
    RESULTS[kind].append((name, ok, detail))


def tally(kind: str) -> tuple[int, int]:
    rows = RESULTS.get(kind, [])
    return sum(1 for _, ok, _ in rows if ok), len(rows)
