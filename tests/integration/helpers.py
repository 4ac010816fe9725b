"""Comparing the warehouse with the simulator's ground truth."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

from sqlalchemy import Engine, text

from dm_pipeline.providers.base import parse_timestamp
from dm_pipeline.settings import PROJECT_ROOT


def truth_rows(truth: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {e["id"]: (e["event_type"], e.get("text"), e.get("dm_conversation_id"), e.get("sender_id"),
                      parse_timestamp(e.get("created_at")))
            for e in truth}


def warehouse_rows(engine: Engine, account_key: str) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT message_id, event_type, text, conversation_id, sender_id, created_at "
            "FROM dm_private.dm_history WHERE account_key = :k"), {"k": account_key}).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def audit_inserted_total(engine: Engine, account_key: str) -> int:
    """Every stored row was inserted by exactly one committed page: the audit accounts for each."""
    with engine.connect() as conn:
        return int(conn.scalar(text(
            "SELECT coalesce(sum(events_inserted), 0) FROM dm_audit.dm_sync_audit "
            "WHERE account_key = :k AND row_kind = 'page'"), {"k": account_key}) or 0)


def assert_equals_truth(engine: Engine, account_key: str, truth: list[dict[str, Any]]) -> None:
    stored = warehouse_rows(engine, account_key)
    expected = truth_rows(truth)
    missing = sorted(set(expected) - set(stored), key=int)
    extra = sorted(set(stored) - set(expected), key=int)
    assert not missing, f"{len(missing)} events missing (gap), e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexpected events, e.g. {extra[:3]}"
    differing = [k for k in expected if expected[k] != stored[k]]
    assert not differing, f"{len(differing)} events differ, e.g. {differing[:3]}"
    assert audit_inserted_total(engine, account_key) == len(stored)


def simulator_serve_process(env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`dm-pipeline simulator serve --port 0`, as a person runs it in a terminal, where Ctrl-C (SIGINT)
    stops it. A test run started as a background job of a shell without job control (`nohup make test &`)
    ignores SIGINT, and a child inherits an ignored signal (it would never stop); a handled one is reset to
    its default at exec. So the child is started while SIGINT is handled here."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "simulator", "serve", "--port", "0"],
                                cwd=PROJECT_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
