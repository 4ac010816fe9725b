"""The audit at scale (issue 18, item 5; docs/architecture.md §14), on real Postgres and the simulator:

- a no-op tick writes at most 300 bytes of audit per X account (one inbox request, nothing new), measured as
  the growth of pg_total_relation_size over every partition of dm_sync_audit (table, indexes, TOAST);
- that tick writes one row per account, its job row, carrying the folded page's figures;
- a page that changes something records what it changed (the IDs inserted or updated), and what it saw as a
  range and a count; a sweep's pages record the rest of what they saw, the deletions judge's evidence.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine, text

from dm_pipeline import checks
from dm_pipeline.clients import build_client, http_client
from dm_pipeline.models import Account, Provider, StreamStatus
from dm_pipeline.runner import sync_accounts
from dm_pipeline.simulator import Simulator, World
from dm_pipeline.sync import RunLimits, sync_account
from tests.conftest import sim_account

ACCOUNTS = 200
TICKS = 6
PER_RUN = 50           # the schedule's chunk (DM_PIPELINE_ACCOUNTS_PER_RUN): one Dagster run per 50 accounts
TARGET_BYTES = 300

AUDIT_BYTES = text("SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('dm_audit.dm_sync_audit')")


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Simulator, list[Account]]]:
    world = World(seed=18, accounts=ACCOUNTS, users=ACCOUNTS + 4, events_per_account=30)
    with Simulator(world, rate_limit=10**9) as sim:
        accounts = []
        for i, user in enumerate(world.accounts()):
            monkeypatch.setenv(f"DM_TEST_FLEET_{i}", world.token_for(user))
            accounts.append(Account(key=f"acct-{i:05d}", provider=Provider.X, user_id=user, base_url=sim.url,
                                    token_env=f"DM_TEST_FLEET_{i}", page_size=100))
        yield sim, accounts


def _tick(engine: Engine, accounts: list[Account]) -> list[str]:
    """One scheduled tick as the schedule chunks it: a run (its own run ID) per 50 accounts. One writer at a
    time: concurrent inserts extend a table by up to 64 pages at once, free space that later ticks fill, too
    coarse for the 1,200 rows measured here; with one writer the table grows page by page, so its growth is
    what the rows take (benchmarks/audit_scale.py measures a concurrent fleet of 10,000 accounts)."""
    runs = []
    for k in range(0, len(accounts), PER_RUN):
        runs.append(str(uuid.uuid4()))  # as Dagster's run IDs
        results = sync_accounts(engine, accounts[k:k + PER_RUN], runs[-1], RunLimits(), per_provider=1)
        assert all(r.status is StreamStatus.SUCCEEDED for r in results)
    return runs


def test_a_noop_tick_writes_at_most_300_bytes_of_audit_per_account(engine: Engine, fleet) -> None:  # type: ignore[no-untyped-def]
    _, accounts = fleet
    _tick(engine, accounts)            # the backfill
    _tick(engine, accounts)            # a first no-op tick (the index pages settle)
    with engine.connect() as conn:
        before = int(conn.scalar(AUDIT_BYTES) or 0)
        rows_before = conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit"))
    runs = [r for _ in range(TICKS) for r in _tick(engine, accounts)]
    with engine.connect() as conn:
        grown = int(conn.scalar(AUDIT_BYTES) or 0) - before
        rows = conn.execute(text(
            "SELECT row_kind, job_status, requests, cost, folded_pages, events_received, newest_id, oldest_id, "
            "message_ids, endpoint, http_status, credits FROM dm_audit.dm_sync_audit WHERE run_id = ANY(:runs)"),
            {"runs": runs}).all()
        assert conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit")) - rows_before == len(rows)
        inserted = conn.scalar(text("SELECT coalesce(sum(events_inserted), 0) FROM dm_audit.dm_sync_audit "
                                    "WHERE run_id = ANY(:runs)"), {"runs": runs})
    per_account = grown / len(accounts) / TICKS
    print(f"\naudit bytes per account per no-op tick: {per_account:.0f} ({len(accounts)} accounts x {TICKS} ticks)")
    assert per_account <= TARGET_BYTES
    # One row per account per tick, its job row: one request, nothing new, the page folded into it with what it
    # saw (a range and a count), no IDs and no endpoint (sync_state has it).
    assert len(rows) == len(accounts) * TICKS and inserted == 0
    assert {(r.row_kind, r.job_status, r.requests, r.cost, r.folded_pages, r.http_status) for r in rows} == {
        ("job", "succeeded", 1, 1, 1, 200)}
    assert all(r.events_received > 1 and int(r.newest_id) > int(r.oldest_id) and r.message_ids is None
               and r.endpoint is None and r.credits is None for r in rows)
    keys = [a.key for a in accounts]
    assert checks.reconciliation(engine, keys).passed
    with engine.connect() as conn:  # sync_health counts the folded pages: 1 + TICKS per stream, beside the rows
        assert set(conn.scalars(text(
            "SELECT h.pages - (SELECT count(*) FROM dm_audit.dm_sync_audit a WHERE a.account_key = h.account_key "
            "AND a.stream_key = h.stream_key AND a.row_kind = 'page') FROM dm_analytics.sync_health h"))) == {1 + TICKS}


def _sync(engine: Engine, account: Account, run_id: str, **limits: object) -> None:
    with http_client() as http:
        result = sync_account(engine, build_client(account, http, engine=engine), run_id,
                              RunLimits(**limits))  # type: ignore[arg-type]
    assert result.status is StreamStatus.SUCCEEDED


def test_a_page_records_what_it_changed_and_a_sweep_what_it_saw(engine: Engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    me = sim.world.accounts()[0]
    (partner,) = sim.world.add_partners(me, 1, events_each=25)
    conversation = f"{min(me, partner, key=int)}-{max(me, partner, key=int)}"
    account = replace(sim_account(sim, me, monkeypatch, page_size=10), conversation_ids=(conversation,))
    _sync(engine, account, "backfill")
    sim.world.post(conversation, 3)                      # three new messages in the conversation
    _sync(engine, account, "incremental")
    _sync(engine, account, "sweep", sweep=True)
    with engine.connect() as conn:
        new = sorted(conn.scalars(text("SELECT message_id FROM dm_private.dm_history "
                                       "WHERE first_seen_run_id = 'incremental'")), key=int, reverse=True)
        pages = conn.execute(text(
            "SELECT message_ids, unchanged_ids, newest_id, oldest_id, events_received, events_inserted "
            "FROM dm_audit.dm_sync_audit WHERE run_id = 'incremental' AND row_kind = 'page'")).all()
        swept = conn.execute(text(
            "SELECT message_ids, unchanged_ids, events_received FROM dm_audit.dm_sync_audit "
            "WHERE run_id = 'sweep' AND row_kind = 'page' AND stream_key LIKE 'conversation:%'")).all()
        stored = set(conn.scalars(text("SELECT message_id FROM dm_private.dm_history WHERE conversation_id = :c"),
                                  {"c": conversation}))
    assert len(new) == 3 and len(pages) == 1   # the inbox's first page (the conversation stream is dormant)
    for page in pages:  # what changed: the three new IDs, newest first; what it saw: a range and a count
        assert page.message_ids == new and page.unchanged_ids is None and page.events_inserted == 3
        assert page.events_received >= 3 and page.newest_id == new[0] and int(page.oldest_id) <= int(new[-1])
    # The sweep changes nothing: its pages name every ID they saw as unchanged (the judge's evidence).
    assert len(swept) == 3 and all(p.message_ids is None for p in swept)
    assert {i for p in swept for i in p.unchanged_ids} == stored and len(stored) == 28
    assert sum(p.events_received for p in swept) == sum(len(p.unchanged_ids) for p in swept) == 28
