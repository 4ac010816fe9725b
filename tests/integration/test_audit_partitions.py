"""The audit's monthly partitions (migration 0009, db/audit_partitions.py, docs/architecture.md §14): rows are
never refused for lack of a partition and never lost; closed months roll up, old ones are dropped whole, and
the reconciliation check and sync_health read the same figures before and after; an open walk keeps the
partitions its judge reads; the migration converts existing rows and its downgrade gives them back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dm_pipeline import checks, status
from dm_pipeline.clients import build_client, http_client
from dm_pipeline.db import audit_partitions as ap
from dm_pipeline.db.migrate import downgrade, upgrade
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account, StreamStatus
from dm_pipeline.settings import load_settings
from dm_pipeline.sync import RunLimits, sync_account
from tests.conftest import sim_account, xquik_account

_HEALTH = text("SELECT account_key, stream_key, pages, runs, errors, gap_suspected, last_gap_at, last_page_at, "
              "credits FROM dm_analytics.sync_health ORDER BY 1, 2")


def _health(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(_HEALTH)]


def _sync(engine: Engine, account: Account, run_id: str, **limits: Any) -> None:
    with http_client() as http:
        result = sync_account(engine, build_client(account, http, engine=engine), run_id, RunLimits(**limits))
    assert result.status is StreamStatus.SUCCEEDED


def _accounts(sim, monkeypatch) -> list[Account]:  # type: ignore[no-untyped-def]
    me, other = sim.world.accounts()[:2]
    (partner,) = sim.world.add_partners(me, 1, events_each=12)
    conversation = f"{min(me, partner, key=int)}-{max(me, partner, key=int)}"
    x = replace(sim_account(sim, me, monkeypatch, page_size=10), conversation_ids=(conversation,))
    return [x, xquik_account(sim, other, [me], monkeypatch)]


def _partitions(engine: Engine) -> dict[date, str]:
    with engine.connect() as conn:
        return ap.partitions(conn)


def _count(engine: Engine, relation: str = "dm_audit.dm_sync_audit") -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text(f"SELECT count(*) FROM {relation}")) or 0)


def test_old_months_roll_up_then_drop_whole_and_the_checks_read_the_same(engine: Engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    accounts = _accounts(sim, monkeypatch)
    for run in ("first", "noop", "sweep"):
        for account in accounts:
            _sync(engine, account, f"{run}-{account.key}", sweep=run == "sweep")
    keys = [a.key for a in accounts]
    health = _health(engine)
    assert checks.reconciliation(engine, keys).passed and any(r[8] for r in health)  # Xquik credits
    rows = _count(engine)
    now = datetime.now(UTC)
    later = now + timedelta(days=15 * 31)   # this month is then closed, rolled up and past a 13-month retention
    this_month = ap.month_of(now)

    # An open walk (a sweep resumed later) pins every partition from its start on: its judge reads its pages.
    with engine.begin() as conn:
        conn.execute(text("UPDATE dm_private.sync_state SET pass_started_at = now(), pass_stop_id = NULL "
                          "WHERE account_key = :k AND stream_key LIKE 'conversation:%'"), {"k": accounts[0].key})
    pinned = ap.maintain(engine, 13, later)
    assert pinned.rolled_up[0] == this_month and not pinned.dropped
    assert "open walk" in pinned.kept[ap.partition_name(this_month)] and _count(engine) == rows
    with engine.begin() as conn:
        conn.execute(text("UPDATE dm_private.sync_state SET pass_started_at = NULL"))

    assert ap.maintain(engine, 0, later).dropped == []                  # retention 0 keeps everything
    dry = ap.maintain(engine, 13, later, dry_run=True)
    assert ap.partition_name(this_month) in dry.dropped and _count(engine) == rows   # a dry run changes nothing
    report = ap.maintain(engine, 13, later)
    assert ap.partition_name(this_month) in report.dropped and this_month not in _partitions(engine)
    assert _count(engine) == 0                                          # dropped whole, not deleted row by row
    # The roll-ups carry what the dropped rows said: the checks and the view read the same figures.
    assert checks.reconciliation(engine, keys).passed
    assert _health(engine) == health
    assert status.stream_status(engine, keys)                           # status still reads what is left
    with engine.connect() as conn:
        monthly = conn.execute(text("SELECT sum(audit_rows), sum(pages), min(month), max(month) "
                                    "FROM dm_audit.dm_sync_audit_monthly")).one()
    assert (monthly[0], monthly[2], monthly[3]) == (rows, this_month, this_month)


def test_the_current_month_rolls_up_to_date_and_an_erasure_since_counts_right(engine: Engine) -> None:
    """The daily roll-up takes the current month up to the start of the day: readers then take about a day of
    audit rows. A roll-up made before an erasure counts nothing for the reconciliation; the next one, after."""
    earlier = datetime.now(UTC) - timedelta(days=2)   # before the start of the day, whatever the hour
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO dm_audit.dm_sync_audit (run_id, account_key, provider, stream_key, row_kind, "
                          "job_status, started_at, finished_at, events_inserted, message_ids) VALUES "
                          "('r', 'old', 'x', 'dm_events', 'page', 'page_committed', :t, :t, 2, '{1,2}')"),
                     {"t": earlier})
        conn.execute(text("INSERT INTO dm_private.dm_history (account_key, message_id, provider, stream_key, "
                          "event_type, raw, content_hash, first_seen_run_id, last_changed_run_id) SELECT 'old', "
                          "m, 'x', 'dm_events', 'MessageCreate', '{}', m, 'r', 'r' FROM unnest('{1,2}'::text[]) m"))
    assert checks.reconciliation(engine, ["old"]).passed                 # from the audit rows
    report = ap.maintain(engine, 0)
    assert ap.month_of(earlier) in report.rolled_up
    with engine.connect() as conn:
        watermark = conn.scalar(text("SELECT max(through) FROM dm_audit.dm_sync_audit_monthly"))
        pages = conn.scalar(text("SELECT pages FROM dm_audit.dm_sync_audit_monthly WHERE account_key = 'old'"))
    assert watermark == datetime.combine((datetime.now(UTC) - ap.ROLL_UP_GRACE).date(), datetime.min.time(), UTC)
    assert pages == 1 and checks.reconciliation(engine, ["old"]).passed  # from the roll-up
    with engine.begin() as conn:  # an erasure, as erase.py records it
        conn.execute(text("DELETE FROM dm_private.dm_history WHERE account_key = 'old'"))
        conn.execute(text("INSERT INTO dm_audit.dm_erasures (run_id, account_key, history_rows, conversation_rows, "
                          "conversation_event_rows, token_rows, sync_state_rows, audit_rows_redacted) "
                          "VALUES ('e', 'old', 2, 0, 0, 0, 0, 0)"))
    assert checks.reconciliation(engine, ["old"]).passed                 # the earlier roll-up no longer counts
    ap.roll_up(engine, datetime.now(UTC) + timedelta(days=1))            # recomputed, after the erasure
    assert checks.reconciliation(engine, ["old"]).passed


def test_a_row_is_never_lost_for_lack_of_a_partition(engine: Engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A month with no partition yet (maintenance fell behind, a month boundary, a backdated insert): its rows
    land in the DEFAULT partition, everything reads them, and maintenance moves them into their month's."""
    account = _accounts(sim, monkeypatch)[0]
    month = ap.month_of(datetime.now(UTC))
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE dm_audit.{ap.partition_name(month)}"))
        conn.execute(text("INSERT INTO dm_audit.dm_sync_audit (run_id, account_key, provider, stream_key, row_kind, "
                          "job_status, started_at, finished_at) VALUES ('old', 'elsewhere', 'x', 'dm_events', "
                          "'job', 'succeeded', now(), now() - interval '200 days')"))
    _sync(engine, account, "lands-in-default")
    rows = _count(engine)
    assert _count(engine, ap.DEFAULT) == rows > 1
    assert checks.reconciliation(engine, [account.key]).passed
    report = ap.ensure(engine)
    old = ap.month_of(datetime.now(UTC) - timedelta(days=200))
    assert set(report.adopted) == {ap.partition_name(month), ap.partition_name(old)}
    assert sum(report.adopted.values()) == rows and _count(engine, ap.DEFAULT) == 0 and _count(engine) == rows
    assert {month, old, ap.add_months(month, 1), ap.add_months(month, 2)} <= set(_partitions(engine))
    _sync(engine, account, "after")                                      # and the new partition takes rows
    assert _count(engine, ap.DEFAULT) == 0 and checks.reconciliation(engine, [account.key]).passed
    assert ap.ensure(engine).created == []                               # idempotent, cheap


def test_the_migration_converts_the_rows_and_its_downgrade_gives_them_back(db_url: str, engine: Engine) -> None:
    downgrade(db_url, "0008")
    columns = ("audit_id, run_id, account_key, row_kind, page_seq, http_status, requests, events_received, "
               "events_inserted, message_ids, media_refs, credits, events_quarantined, partial_errors, "
               "events_marked_deleted, events_restored, events_erased, endpoint, finished_at")
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO dm_audit.dm_sync_audit (run_id, account_key, provider, stream_key, endpoint, row_kind,
                page_seq, http_status, requests, events_received, events_inserted, message_ids, media_refs, credits,
                events_marked_deleted, job_status, started_at, finished_at)
            SELECT 'r' || i % 3, 'a' || i % 4, 'x', 'dm_events', '/2/dm_events',
                   CASE WHEN i % 2 = 0 THEN 'page' ELSE 'job' END, CASE WHEN i % 2 = 0 THEN 1 END, 200, 1, 2,
                   i % 2, CASE WHEN i % 2 = 0 THEN ARRAY[(1000 + i)::text] ELSE '{}' END,
                   CASE WHEN i % 6 = 0 THEN ARRAY['https://x/' || i] ELSE '{}' END, i % 5, i % 7 / 6, 'succeeded',
                   now(), now() - make_interval(days => i * 20)
            FROM generate_series(0, 59) AS i"""))
        before = conn.execute(text(f"SELECT {columns} FROM dm_audit.dm_sync_audit ORDER BY audit_id")).all()
    engine.dispose()
    upgrade(db_url)
    with engine.connect() as conn:
        converted = conn.execute(text(f"SELECT {columns} FROM dm_audit.dm_sync_audit ORDER BY audit_id")).all()
        partitions = ap.partitions(conn)
        in_default = conn.scalar(text(f"SELECT count(*) FROM {ap.DEFAULT}"))
    assert len(converted) == len(before) == 60 and in_default == 0
    assert {ap.month_of(r.finished_at) for r in before} <= set(partitions)   # a partition for every month
    for old, new in zip(before, converted, strict=True):
        zeroes = dict(zip(("credits", "q", "p", "m", "r", "e"), old[11:17], strict=True))
        assert new[:9] == old[:9] and new[17:] == old[17:]
        assert new.message_ids == (old.message_ids or None) and new.media_refs == (old.media_refs or None)
        assert list(new[11:17]) == [v or None for v in zeroes.values()]   # 0 is NULL now
    engine.dispose()
    downgrade(db_url, "0008")
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT {columns} FROM dm_audit.dm_sync_audit ORDER BY audit_id")).all() == before
    engine.dispose()
    upgrade(db_url)


def test_the_command_the_daily_job_and_the_setting(db_url: str, engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.defs.audit_maintenance import audit_maintenance_job
    from dm_pipeline.defs.resources import WarehouseResource
    from tests.integration.test_cli_errors import cli

    proc = cli("audit", "prune", "--dry-run", env={"DATABASE_URL": db_url})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "retention: the current month and the 13 before it"
    month = ap.month_of(datetime.now(UTC))
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE dm_audit.{ap.partition_name(ap.add_months(month, 2))}"))
    result = audit_maintenance_job.execute_in_process(resources={"warehouse": WarehouseResource(database_url=db_url)})
    assert result.success and ap.add_months(month, 2) in _partitions(engine)
    monkeypatch.setenv("DM_PIPELINE_AUDIT_RETENTION_MONTHS", "0")
    assert load_settings().audit_retention_months == 0
    monkeypatch.setenv("DM_PIPELINE_AUDIT_RETENTION_MONTHS", "-1")
    with pytest.raises(ConfigError, match="DM_PIPELINE_AUDIT_RETENTION_MONTHS"):
        load_settings()
