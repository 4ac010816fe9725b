"""The account gate (dm_pipeline/gate.py) against real Postgres and the simulator over loopback: dormant
conversation streams, one rate-limit state per account, account-level failures, gap detection that honours
the last covered pass, resumed and restarted passes, and the daily budget."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.clients import build_client, http_client
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, StreamStatus, SyncResult
from dm_pipeline.runner import sync_accounts
from dm_pipeline.simulator import RequestInfo, Simulator, World
from dm_pipeline.sync import RunLimits, sync_account
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth, warehouse_rows

CONVERSATION_ROUTES = ("dm_conversation", "dm_conversation_with")


def run_sync(engine: Engine, account: Account, limits: RunLimits | None = None,
             policy: RetryPolicy | None = None) -> SyncResult:
    with http_client() as http:
        return sync_account(engine, build_client(account, http, policy=policy, engine=engine),
                            f"test-{uuid.uuid4()}", limits or RunLimits())


def no_sleep() -> RetryPolicy:
    return RetryPolicy(sleep=lambda s: None)


def log_of(sim: Simulator, user_id: str | None) -> list[tuple[str | None, str, int, dict[str, str]]]:
    return [entry for entry in list(sim.request_log) if entry[0] == user_id]


def job_rows(engine: Engine, run_id: str, account_key: str | None = None) -> dict[str, dict[str, Any]]:
    """The run's job audit rows by stream key (one per stream per run)."""
    sql = ("SELECT stream_key, job_status, error_code, requests, cost, retry_at, gap_suspected "
           "FROM dm_audit.dm_sync_audit WHERE row_kind = 'job' AND run_id = :r"
           + (" AND account_key = :k" if account_key else ""))
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(text(sql), {"r": run_id, "k": account_key}).mappings()]
    by_stream = {r["stream_key"]: r for r in rows}
    assert len(by_stream) == len(rows), "a stream has two job rows in one run"
    return by_stream


def stored_ids(engine: Engine, account_key: str) -> set[str]:
    return set(warehouse_rows(engine, account_key))


def union_truth(world: World, user_id: str, routes: list[str]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for route in routes:
        for e in world.truth(user_id, route):
            seen.setdefault(e["id"], e)
    return list(seen.values())


# ------------------------------------------------------------------------------------------------ 1
def test_a_thousand_dormant_conversations_cost_one_request_and_new_events_come_through_the_inbox(
        engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    uid = world.accounts()[0]
    world.add_partners(uid, 1000, events_each=1)
    conversations = world.conversations_of(uid)
    assert len(conversations) > 1000
    account = replace(sim_account(sim, uid, monkeypatch, page_size=100), discover_conversations=True)

    # Backfill: the inbox first, then every conversation it stored (discovered in the same run).
    first = run_sync(engine, account)
    assert first.status is StreamStatus.SUCCEEDED, [s for s in first.streams if s.status is not StreamStatus.SUCCEEDED]
    conversation_keys = {f"conversation:{c.id}" for c in conversations}
    assert {s.stream_key for s in first.streams} == {"dm_events"} | conversation_keys
    assert first.dormant == []
    assert_equals_truth(engine, account.key, world.truth(uid))

    # Nothing new: one request (the inbox's top page); every conversation is dormant, without an audit row.
    before = len(log_of(sim, uid))
    idle = run_sync(engine, account)
    assert len(log_of(sim, uid)) - before == 1
    assert [s.stream_key for s in idle.streams] == ["dm_events"] and idle.status is StreamStatus.SUCCEEDED
    assert set(idle.dormant) == conversation_keys
    assert set(job_rows(engine, idle.run_id)) == {"dm_events"}

    # New messages in 50 existing conversations (3 each): the inbox brings them, no conversation route is asked.
    busy = conversations[::20][:50]
    assert len({c.id for c in busy}) == 50
    new_ids = [i for c in busy for i in world.post(c.id, 3, seconds=30)]
    assert len(new_ids) == 150
    before = len(log_of(sim, uid))
    third = run_sync(engine, account)
    asked = log_of(sim, uid)[before:]
    # Newest first: 150 new events fill page 1 (100) and half of page 2, which also reaches the high-water mark.
    assert len(asked) == len(new_ids) // account.page_size + 1 == 2
    assert len(asked) <= math.ceil(len(new_ids) / account.page_size) + 1
    assert [route for _, route, _, _ in asked] == ["dm_events", "dm_events"]
    assert not any(route in CONVERSATION_ROUTES for _, route, _, _ in asked)
    assert third.total("inserted") == 150 and set(third.dormant) == conversation_keys
    assert set(new_ids) <= stored_ids(engine, account.key)
    assert_equals_truth(engine, account.key, world.truth(uid))


# ------------------------------------------------------------------------------------------------ 2
def pages_needed(world: World, user_id: str, routes: list[str], page_size: int) -> int:
    return sum(max(1, math.ceil(len(world.truth(user_id, r)) / page_size)) for r in routes)


def test_a_shared_rate_limit_parks_the_account_before_a_429_and_the_next_run_asks_nothing(
        engine, world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    limit, page_size = 10, 50
    a, b, c = world.accounts()

    def peer(acct: str, i: int) -> str:
        ones = [conv for conv in world.conversations_of(acct) if not conv.is_group]
        return next(m for m in ones[i].members if m != acct)

    def group(acct: str, i: int) -> str:
        return [conv.id for conv in world.conversations_of(acct) if conv.is_group][i]

    # 11 streams: 4 + 4 + 3, listed (no discovery). Pages of 50 make each account need about 10 requests.
    with Simulator(world, rate_limit=limit, rate_window_s=120) as sim:
        accounts = [
            replace(sim_account(sim, a, monkeypatch, page_size), participant_ids=(peer(a, 0), peer(a, 1)),
                    conversation_ids=(group(a, 0),)),
            replace(sim_account(sim, b, monkeypatch, page_size), participant_ids=(peer(b, 0),),
                    conversation_ids=(group(b, 0), group(b, 1))),
            replace(sim_account(sim, c, monkeypatch, page_size), participant_ids=(peer(c, 1), peer(c, 2))),
        ]
        routes = {acc.key: ["dm_events", *(f"dm_conversation_with:{p}" for p in acc.participant_ids),
                            *(f"dm_conversation:{g}" for g in acc.conversation_ids)] for acc in accounts}
        assert sum(len(r) for r in routes.values()) == 11
        needed = {acc.key: pages_needed(world, acc.user_id, routes[acc.key], page_size) for acc in accounts}
        over = {k for k, n in needed.items() if n > limit}
        assert len(over) >= 2, needed  # the test needs accounts that cannot finish inside one window

        slept: list[float] = []
        limits = RunLimits(time_budget_s=5)
        first = sync_accounts(engine, accounts, "run-1", limits,
                              policy=lambda acc: RetryPolicy(sleep=slept.append))
        assert [status for _, _, status, _ in sim.request_log if status == 429] == []
        assert slept == []  # never waited: the shared state parked the account instead
        for acc, res in zip(accounts, first, strict=True):
            asked = log_of(sim, acc.user_id)
            assert len(asked) == min(needed[acc.key], limit), acc.key
            assert {status for _, _, status, _ in asked} == {200}
            assert res.total("requests") == len(asked)
            statuses = [s.status for s in res.streams]
            if acc.key in over:
                assert StreamStatus.RATE_LIMITED in statuses
                cut = statuses.index(StreamStatus.RATE_LIMITED)
                # Everything after the first limited stream is parked, none of it failed or fetched.
                assert set(statuses[:cut]) <= {StreamStatus.SUCCEEDED}
                assert set(statuses[cut:]) == {StreamStatus.RATE_LIMITED}
                for s in res.streams[cut:]:
                    assert s.retry_at is not None
                    wait = (s.retry_at - datetime.now(UTC)).total_seconds()
                    assert 60 < wait <= 125, (s.stream_key, wait)
                parked_rows = job_rows(engine, "run-1", acc.key)
                for s in res.streams[cut + 1:]:  # parked without a request
                    row = parked_rows[s.stream_key]
                    assert (row["job_status"], row["requests"], row["error_code"]) == ("rate_limited", 0,
                                                                                      "rate_limited")
                    assert row["retry_at"] is not None
            else:
                assert set(statuses) == {StreamStatus.SUCCEEDED}

        # Back to back: the accounts whose window is spent make no request at all, and still no 429.
        spent = {acc.key for acc in accounts if len(log_of(sim, acc.user_id)) == limit}
        assert over <= spent
        before = {acc.key: len(log_of(sim, acc.user_id)) for acc in accounts}
        second = sync_accounts(engine, accounts, "run-2", limits, policy=lambda acc: RetryPolicy(sleep=slept.append))
        assert [status for _, _, status, _ in sim.request_log if status == 429] == []
        assert slept == []
        for acc, res in zip(accounts, second, strict=True):
            if acc.key not in spent:
                continue
            assert len(log_of(sim, acc.user_id)) == before[acc.key], acc.key
            assert res.streams, acc.key
            assert {s.status for s in res.streams} == {StreamStatus.RATE_LIMITED}
            assert {s.stream_key for s in res.streams} | set(res.dormant) == {
                "dm_events", *(f"with:{p}" for p in acc.participant_ids),
                *(f"conversation:{g}" for g in acc.conversation_ids)}
            rows = job_rows(engine, "run-2", acc.key)
            assert set(rows) == {s.stream_key for s in res.streams}
            for s in res.streams:
                row = rows[s.stream_key]
                assert (row["job_status"], row["requests"]) == ("rate_limited", 0)
                assert row["retry_at"] is not None and s.retry_at is not None
                assert row["retry_at"] > datetime.now(UTC)


# ------------------------------------------------------------------------------------------------ 3
@pytest.mark.parametrize("how", ["invalid_token", "expired_token"])
def test_a_refused_token_stops_the_account_after_one_request_and_the_other_account_still_syncs(
        engine, sim, monkeypatch, how) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    bad_uid, good_uid = world.accounts()[0], world.accounts()[2]
    ones = [c for c in world.conversations_of(bad_uid) if not c.is_group]
    peers = tuple(next(m for m in c.members if m != bad_uid) for c in ones[:2])
    groups = tuple(c.id for c in world.conversations_of(bad_uid) if c.is_group)[:1]
    bad = replace(sim_account(sim, bad_uid, monkeypatch), participant_ids=peers, conversation_ids=groups)
    good = replace(sim_account(sim, good_uid, monkeypatch),
                   conversation_ids=tuple(c.id for c in world.conversations_of(good_uid))[:2])
    assert bad.token_env is not None
    if how == "invalid_token":
        monkeypatch.setenv(bad.token_env, "sim-x-not-a-token")   # the simulator cannot tell whose it is
        failing_user = None
    else:
        sim.faults.inject(bad_uid, "*", "401", count=50)          # a token X no longer accepts
        failing_user = bad_uid

    results = sync_accounts(engine, [bad, good], "run-auth", RunLimits(), policy=lambda acc: no_sleep())

    refused = [entry for entry in sim.request_log if entry[0] in (None, bad_uid)]
    assert [(user, status) for user, _, status, _ in refused] == [(failing_user, 401)]
    bad_res, good_res = results
    assert [s.stream_key for s in bad_res.streams] == [
        "dm_events", *(f"with:{p}" for p in peers), *(f"conversation:{g}" for g in groups)]
    first, *rest = bad_res.streams
    assert (first.status, first.error_code, first.requests) == (StreamStatus.FAILED, "unauthorized", 1)
    assert len(rest) == 3
    assert {(s.status, s.error_code, s.requests) for s in rest} == {(StreamStatus.SKIPPED, "unauthorized", 0)}
    rows = job_rows(engine, "run-auth", bad.key)
    assert set(rows) == {s.stream_key for s in bad_res.streams}
    assert (rows["dm_events"]["job_status"], rows["dm_events"]["requests"]) == ("failed", 1)
    for s in rest:
        row = rows[s.stream_key]
        assert (row["job_status"], row["error_code"], row["requests"], row["cost"]) == (
            "skipped", "unauthorized", 0, 0)
    assert stored_ids(engine, bad.key) == set()

    assert good_res.status is StreamStatus.SUCCEEDED and len(good_res.streams) == 3
    assert {s.status for s in good_res.streams} == {StreamStatus.SUCCEEDED}
    assert_equals_truth(engine, good.key, union_truth(
        world, good_uid, ["dm_events", *(f"dm_conversation:{g}" for g in good.conversation_ids)]))


# ------------------------------------------------------------------------------------------------ 4
def test_an_inbox_whose_newest_event_aged_out_is_not_a_gap_while_its_last_pass_is_recent(
        engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = World(seed=11, history_days=60)       # half of the history is beyond /2/dm_events' 30 days
    uid = world.accounts()[0]
    with Simulator(world, rate_limit=100_000) as sim:
        account = sim_account(sim, uid, monkeypatch)
        backfill = run_sync(engine, account)
        assert backfill.status is StreamStatus.SUCCEEDED
        assert_equals_truth(engine, account.key, world.truth(uid))
        world.advance(None, 0, seconds=31 * 86_400)  # a quiet month: the high-water event leaves the window
        assert world.truth(uid) == []

        quiet = [run_sync(engine, account) for _ in range(2)]   # two runs, back to back
        for res in quiet:
            (stream,) = res.streams
            assert (stream.status, stream.requests, stream.inserted, stream.gap_suspected) == (
                StreamStatus.SUCCEEDED, 1, 0, False)
        with engine.connect() as conn:
            flagged = conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit WHERE gap_suspected "
                                       "AND run_id = ANY(:runs)"), {"runs": [r.run_id for r in quiet]})
        assert flagged == 0
        assert len(log_of(sim, uid)) == math.ceil(len(stored_ids(engine, account.key)) / account.page_size) + 2


def test_an_inbox_pass_older_than_its_window_flags_a_gap_and_wakes_the_conversations(
        engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    uid = world.accounts()[0]
    account = replace(sim_account(sim, uid, monkeypatch), discover_conversations=True)
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    conversation_keys = {f"conversation:{c.id}" for c in world.conversations_of(uid)}
    assert set(run_sync(engine, account).dormant) == conversation_keys  # history complete, inbox current

    # A month passes: 6 messages at its start are beyond the inbox's window by now, 4 more are spread over it.
    lost = world.advance(uid, 6, seconds=3600)
    later = world.advance(uid, 4, seconds=31 * 86_400)
    inbox_ids = {e["id"] for e in world.truth(uid)}
    assert not set(lost) & inbox_ids and len(lost) == 6
    with engine.begin() as conn:  # ... and the inbox's last successful pass is that old too
        moved = conn.execute(text("UPDATE dm_private.sync_state SET covered_at = covered_at - interval '31 days' "
                                  "WHERE account_key = :k AND stream_key = 'dm_events'"), {"k": account.key})
        assert moved.rowcount == 1

    before = len(log_of(sim, uid))
    woken = run_sync(engine, account)
    inbox = woken.streams[0]
    assert inbox.stream_key == "dm_events" and inbox.gap_suspected
    assert woken.dormant == []
    assert {s.stream_key for s in woken.streams} == {"dm_events"} | conversation_keys
    assert {s.status for s in woken.streams} == {StreamStatus.SUCCEEDED}
    rows = job_rows(engine, woken.run_id)
    assert rows["dm_events"]["gap_suspected"] is True
    asked = log_of(sim, uid)[before:]
    assert sum(1 for _, route, _, _ in asked if route == "dm_conversation") >= len(conversation_keys)
    # The woken conversations walked down to their own high-water marks: the aged-out messages are stored.
    assert set(lost) | set(later) <= stored_ids(engine, account.key)
    assert_equals_truth(engine, account.key, union_truth(
        world, uid, ["dm_events", *(f"dm_conversation:{c.id}" for c in world.conversations_of(uid))]))
    with engine.connect() as conn:
        still_open = conn.scalar(text("SELECT count(*) FROM dm_private.sync_state WHERE account_key = :k "
                                      "AND pass_started_at IS NOT NULL"), {"k": account.key})
    assert still_open == 0


# ------------------------------------------------------------------------------------------------ 5
def test_a_resumed_pass_that_never_fetched_a_page_fetches_the_top_page_once(
        engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    uid = world.accounts()[0]
    account = sim_account(sim, uid, monkeypatch)
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    new_ids = world.advance(uid, 5)
    with engine.begin() as conn:  # a pass opened (by a crash, a wake-up) before its first page
        opened = conn.execute(text(
            "UPDATE dm_private.sync_state SET pass_started_at = now(), pass_cursor = NULL, pass_newest_id = NULL, "
            "pass_stop_id = high_water_id, pass_pages = 0, pass_sweep = false "
            "WHERE account_key = :k AND stream_key = 'dm_events'"), {"k": account.key})
        assert opened.rowcount == 1

    before = len(log_of(sim, uid))
    res = run_sync(engine, account)
    (stream,) = res.streams
    assert len(log_of(sim, uid)) - before == 1
    assert (stream.status, stream.requests, stream.inserted) == (StreamStatus.SUCCEEDED, 1, 5)
    assert stream.high_water_id == max(new_ids, key=int)
    with engine.connect() as conn:
        state = conn.execute(text("SELECT pass_started_at, high_water_id FROM dm_private.sync_state "
                                  "WHERE account_key = :k AND stream_key = 'dm_events'"), {"k": account.key}).one()
    assert state == (None, max(new_ids, key=int))
    assert_equals_truth(engine, account.key, world.truth(uid))


# ------------------------------------------------------------------------------------------------ 6
def test_two_expired_cursors_in_one_run_restart_the_pass_twice_and_it_still_succeeds(
        engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    uid = world.accounts()[0]
    account = sim_account(sim, uid, monkeypatch, page_size=20)
    pages = math.ceil(len(world.truth(uid)) / account.page_size)
    fault_at = (3, 7)   # the account's 3rd request (page 3) and its 7th (page 4 after the first restart)
    carried: list[bool] = []

    def on_request(info: RequestInfo) -> None:
        if info.user_id == uid and info.seq in fault_at:
            carried.append("pagination_token" in info.query)
            sim.faults.inject(uid, "dm_events", "expired_cursor", count=1)   # taken by this very request

    sim.on_request = on_request
    try:
        res = run_sync(engine, account, policy=no_sleep())
    finally:
        sim.on_request = None
    assert carried == [True, True]
    (stream,) = res.streams
    assert stream.status is StreamStatus.SUCCEEDED, stream.error_code
    asked = log_of(sim, uid)
    assert [i + 1 for i, (_, _, status, _) in enumerate(asked) if status != 200] == list(fault_at)
    assert {status for _, _, status, _ in asked} == {200, 400}
    # pages 1-2, the refused page 3; pages 1-3 again, the refused page 4; then the whole walk.
    assert len(asked) == 2 + 1 + 3 + 1 + pages
    assert_equals_truth(engine, account.key, world.truth(uid))


# ------------------------------------------------------------------------------------------------ 7
def test_a_daily_budget_parks_the_account_after_exactly_its_budget_and_the_next_run_asks_nothing(
        engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    uid = world.accounts()[0]
    groups = tuple(c.id for c in world.conversations_of(uid) if c.is_group)[:1]
    account = replace(sim_account(sim, uid, monkeypatch, page_size=20), daily_budget=3, conversation_ids=groups)
    assert math.ceil(len(world.truth(uid)) / account.page_size) > 3

    started = datetime.now(UTC)
    first = run_sync(engine, account)
    assert len(log_of(sim, uid)) == 3
    inbox, conversation = first.streams
    assert (inbox.status, inbox.requests, inbox.inserted) == (StreamStatus.BUDGET_EXHAUSTED, 3, 60)
    assert (conversation.status, conversation.requests) == (StreamStatus.BUDGET_EXHAUSTED, 0)
    for s in first.streams:
        assert s.retry_at is not None
        assert timedelta(hours=23, minutes=59) < s.retry_at - started < timedelta(days=1, minutes=1)
    rows = job_rows(engine, first.run_id)
    assert set(rows) == {"dm_events", f"conversation:{groups[0]}"}
    for key, row in rows.items():
        assert (row["job_status"], row["error_code"]) == ("budget_exhausted", "budget_exhausted"), key
        assert row["retry_at"] is not None
    assert (rows["dm_events"]["requests"], rows["dm_events"]["cost"]) == (3, 3)

    second = run_sync(engine, account)
    assert len(log_of(sim, uid)) == 3
    assert {s.status for s in second.streams} == {StreamStatus.BUDGET_EXHAUSTED} and len(second.streams) == 2
    rows = job_rows(engine, second.run_id)
    assert {(r["job_status"], r["requests"], r["retry_at"] is not None) for r in rows.values()} == {
        ("budget_exhausted", 0, True)}


def test_the_main_job_summary_counts_the_dormant_streams(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.mainjob import dormant_streams

    account = replace(sim_account(sim, sim.world.accounts()[0], monkeypatch), discover_conversations=True)
    run_sync(engine, account)                  # backfill: the inbox, then each conversation's first pass
    assert dormant_streams(engine, [account.key]) == {}
    noop = run_sync(engine, account)
    assert len(noop.dormant) == len(sim.world.conversations_of(account.user_id)) > 0
    assert dormant_streams(engine, [account.key, "other"]) == {account.key: len(noop.dormant)}
