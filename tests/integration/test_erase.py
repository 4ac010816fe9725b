"""`dm-pipeline erase`: an account's private rows go in one transaction (dry run by default); its audit rows
stay with IDs, counts and statuses but lose cursors and media references; the erasure is recorded; other
accounts, including one sharing a conversation, are untouched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.db.writes import stream_lock
from dm_pipeline.erase import SyncInProgress, erase_account
from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import sim_account
from tests.integration.test_sync_x import run_sync

PRIVATE = ("dm_history", "dm_conversations", "dm_conversation_events", "oauth_tokens", "sync_state")
AUDIT = text("""
    SELECT count(*), count(*) FILTER (WHERE cursor_in IS NOT NULL OR cursor_out IS NOT NULL),
           count(*) FILTER (WHERE cardinality(media_refs) > 0), coalesce(sum(cardinality(message_ids)), 0),
           coalesce(sum(events_inserted), 0), count(DISTINCT job_status),
           count(*) FILTER (WHERE cursor_in IS NOT NULL OR cursor_out IS NOT NULL OR cardinality(media_refs) > 0)
    FROM dm_audit.dm_sync_audit WHERE account_key = :k""")


def _counts(engine: Engine, key: str) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: int(conn.scalar(text(f"SELECT count(*) FROM dm_private.{t} WHERE account_key = :k"), {"k": key}))
                for t in PRIVATE}


def _audit(engine: Engine, key: str) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(AUDIT, {"k": key}).one())


@pytest.fixture
def two_accounts(engine, sim, monkeypatch):  # type: ignore[no-untyped-def]
    """Accounts 0 and 1 share a 1:1 conversation; account 0 also has a token and GetXAPI-style side rows."""
    a, b = (sim_account(sim, uid, monkeypatch, page_size=50) for uid in sim.world.accounts()[:2])
    for acc in (a, b):
        run_sync(engine, acc)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO dm_private.oauth_tokens (account_key, provider, access_token_enc) "
                          "VALUES (:k, 'x', '\\x00'::bytea)"), {"k": a.key})
        conn.execute(text("INSERT INTO dm_private.dm_conversations (account_key, conversation_id, provider, "
                          "stream_key, raw, content_hash) VALUES (:k, 'c1', 'x', 'dm_events', '{}', 'h')"),
                     {"k": a.key})
        conn.execute(text("INSERT INTO dm_private.dm_conversation_events (account_key, event_key, provider, "
                          "event_type, raw, first_seen_run_id) VALUES (:k, 'e1', 'x', 'trust', '{}', 'r')"),
                     {"k": a.key})
    return a, b


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dm_pipeline.cli", "erase", *args], cwd=PROJECT_ROOT,
                          env={**os.environ, "DATABASE_URL": db_url}, capture_output=True, text=True, timeout=120)


def test_a_dry_run_changes_nothing_and_yes_erases_the_private_copy(engine, db_url, sim, two_accounts) -> None:  # type: ignore[no-untyped-def]
    a, b = two_accounts
    before_a, before_b, audit_before = _counts(engine, a.key), _counts(engine, b.key), _audit(engine, a.key)
    assert all(before_a.values()) and audit_before[1] and audit_before[2]  # cursors and media refs to redact

    dry = _cli(db_url, "--account", a.key)
    assert dry.returncode == 0 and "dry run" in dry.stdout, dry.stderr
    assert str(before_a["dm_history"]) in dry.stdout
    assert _counts(engine, a.key) == before_a and _audit(engine, a.key) == audit_before

    done = _cli(db_url, "--account", a.key, "--yes")
    assert done.returncode == 0 and "erased" in done.stdout, done.stderr
    assert _counts(engine, a.key) == dict.fromkeys(PRIVATE, 0)
    assert _counts(engine, b.key) == before_b
    # Kept: every row, its message IDs, counts and statuses. Gone: cursors, media references.
    rows, cursors, media, ids, inserted, statuses, redactable = _audit(engine, a.key)
    assert (rows, cursors, media, ids, inserted, statuses, redactable) == (
        audit_before[0], 0, 0, audit_before[3], audit_before[4], audit_before[5], 0)
    with engine.connect() as conn:
        record = conn.execute(text(
            "SELECT history_rows, conversation_rows, conversation_event_rows, token_rows, sync_state_rows, "
            "audit_rows_redacted, requested_by = current_user, run_id LIKE 'erase-%' "
            "FROM dm_audit.dm_erasures WHERE account_key = :k"), {"k": a.key}).all()
        views = conn.execute(text(
            "SELECT (SELECT count(*) FROM dm_analytics.messages WHERE account_key = :a), "
            "(SELECT count(*) FROM dm_analytics.messages), "
            "(SELECT count(*) FROM dm_analytics.sync_health WHERE account_key = :a)"), {"a": a.key}).one()
    assert record == [(before_a["dm_history"], 1, 1, 1, before_a["sync_state"], audit_before[6], True, True)]
    assert tuple(views) == (0, len(sim.world.truth(b.user_id)), 0)  # shared messages live on in b's copy

    again = _cli(db_url, "--account", a.key, "--yes")
    assert again.returncode == 0 and "nothing to erase" in again.stdout
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM dm_audit.dm_erasures")) == 1


def test_an_erasure_is_all_or_nothing(engine, two_accounts) -> None:  # type: ignore[no-untyped-def]
    a, _ = two_accounts
    before, audit_before = _counts(engine, a.key), _audit(engine, a.key)
    with engine.begin() as conn:  # the very last statement of the erasure fails
        conn.execute(text("CREATE FUNCTION dm_audit.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"))
        conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON dm_audit.dm_erasures "
                          "FOR EACH ROW EXECUTE FUNCTION dm_audit.refuse()"))
    with pytest.raises(Exception, match="refused"):
        erase_account(engine, a.key)
    assert _counts(engine, a.key) == before and _audit(engine, a.key) == audit_before


def test_an_erasure_waits_for_no_running_sync(engine, two_accounts) -> None:  # type: ignore[no-untyped-def]
    a, _ = two_accounts
    before = _counts(engine, a.key)
    with stream_lock(engine, a.key, "dm_events") as locked:  # what a running sync holds for its pass
        assert locked
        with pytest.raises(SyncInProgress):
            erase_account(engine, a.key)
    assert _counts(engine, a.key) == before
    assert erase_account(engine, a.key).history_rows == before["dm_history"]


def test_an_unknown_account_is_one_clear_line_and_exit_2(db_url) -> None:  # type: ignore[no-untyped-def]
    proc = _cli(db_url, "--account", "nobody", "--yes")
    assert proc.returncode == 2 and "unknown to the warehouse" in proc.stderr and "Traceback" not in proc.stderr


def test_after_an_erasure_a_resync_reconciles_again(engine, sim, two_accounts) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline import checks

    a, _ = two_accounts
    assert checks.reconciliation(engine, [a.key]).passed
    erase_account(engine, a.key)
    resynced = run_sync(engine, a)
    assert resynced.total("inserted") == len(sim.world.truth(a.user_id))
    assert checks.reconciliation(engine, [a.key]).passed
