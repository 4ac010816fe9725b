"""The sync engine against real Postgres and the simulator over loopback: backfill, incremental,
retries and typed failures (docs/architecture.md §2)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.clients import build_client, http_client
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, StreamStatus, SyncResult
from dm_pipeline.sync import RunLimits, sync_account
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth


def run_sync(engine: Engine, account: Account, policy: RetryPolicy | None = None,
             limits: RunLimits | None = None) -> SyncResult:
    with http_client() as http:
        return sync_account(engine, build_client(account, http, policy=policy, engine=engine), f"test-{uuid.uuid4()}",
                            limits or RunLimits())


@pytest.fixture
def account(sim, monkeypatch):  # type: ignore[no-untyped-def]
    return sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=50)


def test_first_backfill_equals_truth_and_a_rerun_changes_nothing(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    truth = sim.world.truth(account.user_id)
    first = run_sync(engine, account)
    assert first.status is StreamStatus.SUCCEEDED
    assert first.total("inserted") == len(truth) and first.total("updated") == 0
    assert first.total("requests") == math.ceil(len(truth) / account.page_size)
    assert_equals_truth(engine, account.key, truth)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT message_id, last_changed_at FROM dm_private.dm_history")).all()

    again = run_sync(engine, account)
    assert again.status is StreamStatus.SUCCEEDED
    assert (again.total("inserted"), again.total("updated"), again.total("requests")) == (0, 0, 1)
    with engine.connect() as conn:
        after = conn.execute(text("SELECT message_id, last_changed_at FROM dm_private.dm_history")).all()
    assert sorted(before) == sorted(after)  # unchanged re-fetches write nothing


@pytest.mark.parametrize("n", [0, 1, 49, 50, 51, 137])
def test_incremental_stores_exactly_the_new_events_within_the_request_bound(engine, sim, account, n) -> None:  # type: ignore[no-untyped-def]
    run_sync(engine, account)
    new_ids = sim.world.advance(account.user_id, n)
    result = run_sync(engine, account)
    assert result.total("inserted") == n == len(new_ids)
    assert result.total("requests") <= math.ceil(n / account.page_size) + 1
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))


def test_deleting_the_high_water_event_at_the_source_still_stops_the_pass(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    run_sync(engine, account)
    newest = sim.world.truth(account.user_id)[0]["id"]
    sim.world.delete(newest)
    sim.world.advance(account.user_id, 3)
    result = run_sync(engine, account)
    assert result.total("inserted") == 3 and result.total("requests") == 1


def test_a_page_budget_parks_the_pass_and_the_next_run_resumes(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    truth = sim.world.truth(account.user_id)
    parked = run_sync(engine, account, limits=RunLimits(max_pages=2))
    assert parked.status is StreamStatus.PARTIAL and parked.streams[0].pass_cursor
    assert parked.total("inserted") == 100
    resumed = run_sync(engine, account)
    assert resumed.status is StreamStatus.SUCCEEDED
    assert resumed.total("inserted") == len(truth) - 100
    assert_equals_truth(engine, account.key, truth)


def test_429_with_retry_after_is_waited_out(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    waits: list[float] = []
    sim.faults.inject(account.user_id, "dm_events", "429", count=1, retry_after=2)
    result = run_sync(engine, account, policy=RetryPolicy(sleep=waits.append))
    assert result.status is StreamStatus.SUCCEEDED
    assert waits == [2.0]
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
    with engine.connect() as conn:
        first_page = conn.execute(text("SELECT requests, http_status FROM dm_audit.dm_sync_audit "
                                       "WHERE row_kind = 'page' ORDER BY audit_id LIMIT 1")).one()
    assert tuple(first_page) == (2, 200)


def test_503_burst_is_retried(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    waits: list[float] = []
    sim.faults.inject(account.user_id, "dm_events", "503", count=3)
    result = run_sync(engine, account, policy=RetryPolicy(sleep=waits.append))
    assert result.status is StreamStatus.SUCCEEDED and len(waits) == 3


def test_403_fails_fast_and_its_code_is_in_the_audit_row(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    waits: list[float] = []
    sim.faults.inject(account.user_id, "dm_events", "403", count=1)
    result = run_sync(engine, account, policy=RetryPolicy(sleep=waits.append))
    (stream,) = result.streams
    assert stream.status is StreamStatus.FAILED and stream.error_code == "client_forbidden"
    assert stream.requests == 1 and waits == []
    with engine.connect() as conn:
        job = conn.execute(text("SELECT job_status, error_code, http_status FROM dm_audit.dm_sync_audit "
                                "WHERE row_kind = 'job'")).one()
        stored = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history"))
        state = conn.execute(text("SELECT last_status, last_error_code FROM dm_private.sync_state")).one()
    assert tuple(job) == ("failed", "client_forbidden", 403)
    assert tuple(state) == ("failed", "client_forbidden")
    assert stored == 0  # nothing half-written
    # The failure is not sticky: the next run succeeds.
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED


def test_a_rate_limit_wait_beyond_the_budget_parks_the_pass_as_rate_limited(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    sim.faults.inject(account.user_id, "dm_events", "429", count=1, retry_after=3600)
    result = run_sync(engine, account, policy=RetryPolicy(sleep=lambda s: None),
                      limits=RunLimits(time_budget_s=60))
    assert result.status is StreamStatus.RATE_LIMITED
    # The wait is the account's, stored: a run that starts before it ends asks nothing and says when.
    requests_before = len(sim.request_log)
    again = run_sync(engine, account)
    assert again.status is StreamStatus.RATE_LIMITED and len(sim.request_log) == requests_before
    retry_at = again.streams[0].retry_at
    assert retry_at is not None and 3500 < (retry_at - datetime.now(UTC)).total_seconds() <= 3601
    with engine.begin() as conn:  # the hour passes
        conn.execute(text("UPDATE dm_private.account_state SET limited_until = now() - interval '1 second'"))
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))


def test_the_audit_table_contains_no_message_text(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    sim.faults.inject(account.user_id, "dm_events", "503", count=1)
    run_sync(engine, account, policy=RetryPolicy(sleep=lambda s: None))
    texts = {e["text"] for e in sim.world.truth(account.user_id) if e.get("text") and len(e["text"]) >= 6}
    assert texts
    with engine.connect() as conn:
        audit_dump = [str(tuple(r)) for r in conn.execute(text("SELECT * FROM dm_audit.dm_sync_audit"))]
    leaked = [t for t in texts if any(t in row for row in audit_dump)]
    assert leaked == []


def test_two_accounts_keep_separate_copies_of_a_shared_conversation(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, b = (sim_account(sim, uid, monkeypatch) for uid in sim.world.accounts()[:2])
    for acc in (a, b):
        run_sync(engine, acc)
        assert_equals_truth(engine, acc.key, sim.world.truth(acc.user_id))
