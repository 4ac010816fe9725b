"""Collects reliability outcomes across the session; conftest prints the table and the summary line.

The denominators are the PLANNED cases, not the cases that got as far as `record`: at collection, conftest
registers every case of every family (`plan`), and a planned case counts as passed only when it was
recorded as ok AND the test that runs it did not fail. A case that raised before `record`, errored in
setup or teardown, was skipped or was never reached counts as failed, so the summary line can never say
`1/1 handled` while pytest failed that case."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

RESULTS: dict[str, list[tuple[str, bool, str]]] = defaultdict(list)
PLANNED: dict[str, dict[str, str]] = defaultdict(dict)   # kind -> case name -> nodeid of the test running it
FAILED_TESTS: dict[str, str] = {}                         # nodeid -> phase that failed (setup, call, teardown)


def record(kind: str, name: str, ok: bool, detail: str = "") -> None:
    RESULTS[kind].append((name, ok, detail))


def plan(kind: str, nodeid: str, names: list[str]) -> None:
    """Register the cases a collected test will run (called at collection, before anything runs)."""
    for name in names:
        PLANNED[kind][name] = nodeid


def mark_failed(nodeid: str, phase: str) -> None:
    FAILED_TESTS.setdefault(nodeid, phase)


@dataclass
class Tally:
    passed: int = 0
    planned: int = 0
    failed: dict[str, str] = field(default_factory=dict)   # case name -> why it counts as failed

    def suffix(self, limit: int = 5) -> str:
        if not self.failed:
            return ""
        names = list(self.failed)
        shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
        return f" ({len(names)} failed: {shown})"


def outcomes(kind: str) -> dict[str, tuple[bool, str]]:
    """Every planned (and any unplanned but recorded) case of `kind` -> (passed, detail or why not)."""
    planned = PLANNED.get(kind, {})
    recorded: dict[str, tuple[bool, str]] = {}
    for name, ok, detail in RESULTS.get(kind, []):
        was_ok = recorded.get(name, (True, ""))[0]
        recorded[name] = (was_ok and ok, detail)
    by_test: dict[str, list[str]] = defaultdict(list)
    for name, nodeid in planned.items():
        by_test[nodeid].append(name)
    out: dict[str, tuple[bool, str]] = {}
    for name in [*planned, *(n for n in recorded if n not in planned)]:  # an unplanned record still counts
        if name not in recorded:
            out[name] = (False, "never recorded (the test raised, errored, was skipped or never got there)")
        else:
            out[name] = recorded[name]
    for nodeid, phase in FAILED_TESTS.items():
        names = by_test.get(nodeid, [])
        # A test running several cases (the crash trials) that failed in its call: cases it recorded as ok
        # stand when the failure is explained by a case of its own; otherwise every case of it fails.
        explained = phase == "call" and len(names) > 1 and any(not out[n][0] for n in names)
        for name in names:
            if out[name][0] and not explained:
                out[name] = (False, f"recorded ok, but its test failed in {phase}")
    return out


def tally(kind: str) -> Tally:
    result = Tally()
    for name, (ok, detail) in outcomes(kind).items():
        result.planned += 1
        if ok:
            result.passed += 1
        else:
            result.failed[name] = detail
    return result
