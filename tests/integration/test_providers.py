"""Xquik, GetXAPI and X conversation streams end to end: real Postgres, simulator over loopback."""

from __future__ import annotations

import math
from dataclasses import replace

from sqlalchemy import text

from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import StreamStatus
from tests.conftest import getxapi_account, sim_account, xquik_account
from tests.integration.helpers import truth_rows, warehouse_rows
from tests.integration.test_sync_x import run_sync


def one_to_one_peers(world, uid: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [next(m for m in c.members if m != uid) for c in world.conversations_of(uid) if not c.is_group]


def union_truth(world, uid: str, routes: list[str]) -> dict:  # type: ignore[no-untyped-def, type-arg]
    merged: dict = {}  # type: ignore[type-arg]
    for route in routes:
        merged.update(truth_rows(world.truth(uid, route)))
    return merged


# ------------------------------------------------------------------ Xquik

def test_xquik_backfill_and_incremental_equal_truth_and_credits_are_audited(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uid = sim.world.accounts()[0]
    peers = one_to_one_peers(sim.world, uid)[:2]
    # One partner by numeric ID, one by username: the username costs one lookup.
    account = xquik_account(sim, uid, [peers[0], sim.world.user(peers[1]).username], monkeypatch)
    routes = [f"xquik:{p}" for p in peers]
    result = run_sync(engine, account)
    assert result.status is StreamStatus.SUCCEEDED
    assert warehouse_rows(engine, account.key) == union_truth(sim.world, uid, routes)
    with engine.connect() as conn:
        credits = conn.scalar(text("SELECT sum(credits) FROM dm_audit.dm_sync_audit WHERE row_kind = 'page'"))
    assert credits == sim.xquik_credits_used == result.total("received") + 1

    sim.world.advance(uid, 9)
    again = run_sync(engine, account)
    assert warehouse_rows(engine, account.key) == union_truth(sim.world, uid, routes)
    new_in_streams = sum(s.inserted for s in again.streams)
    assert again.total("requests") <= len(peers) + math.ceil(new_in_streams / 20) + 1  # +1: the username lookup


def test_xquik_errors_are_typed_and_audited(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uid = sim.world.accounts()[0]
    peer = one_to_one_peers(sim.world, uid)[0]
    account = xquik_account(sim, uid, [peer], monkeypatch)
    for kind, code, status in [("dm_not_permitted", "dm_not_permitted", 403), ("no_credits", "no_credits", 402),
                               ("account_needs_reauth", "account_needs_reauth", 403),
                               ("x_dm_not_allowed", "x_dm_not_allowed", 422)]:
        sim.faults.inject(uid, "xquik_history", kind, count=1)
        (stream,) = run_sync(engine, account, policy=RetryPolicy(sleep=lambda s: None)).streams
        assert (stream.status, stream.error_code, stream.http_status, stream.requests) == (
            StreamStatus.FAILED, code, status, 1), kind
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT error_code, http_status FROM dm_audit.dm_sync_audit "
                                 "WHERE row_kind = 'job' ORDER BY audit_id")).all()
        stored = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history"))
    assert [tuple(r) for r in rows] == [("dm_not_permitted", 403), ("no_credits", 402),
                                        ("account_needs_reauth", 403), ("x_dm_not_allowed", 422)]
    assert stored == 0
    no_account = replace(account, handle=None)
    (stream,) = run_sync(engine, no_account).streams
    assert stream.error_code == "account_required"


# ------------------------------------------------------------------ GetXAPI

def test_getxapi_tabs_conversations_users_events_and_edits(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uid = sim.world.accounts()[0]
    account = getxapi_account(sim, uid, monkeypatch)
    result = run_sync(engine, account)
    assert {s.stream_key for s in result.streams} == {"tab:all", "tab:requests", "tab:hidden"}
    assert result.status is StreamStatus.SUCCEEDED
    routes = [f"getxapi:{t}" for t in ("all", "requests", "hidden")]
    assert warehouse_rows(engine, account.key) == union_truth(sim.world, uid, routes)
    with engine.connect() as conn:
        conversations = set(conn.scalars(text("SELECT conversation_id FROM dm_private.dm_conversations")))
        users = conn.scalar(text("SELECT count(*) FROM dm_private.dm_users WHERE provider = 'getxapi'"))
        events = set(conn.scalars(text("SELECT event_key FROM dm_private.dm_conversation_events")))
    assert conversations == {c.id for c in sim.world.conversations_of(uid)}
    assert users >= 2
    expected_events = {e["id"] for t in ("all", "requests", "hidden")
                       for e in sim.world.truth(uid, f"getxapi_events:{t}")}
    assert events == expected_events

    # An edit is invisible to an incremental pass (older than the high-water mark) and refreshed by a sweep.
    target = sim.world.truth(uid, "getxapi:all")[5]["id"]
    sim.world.edit(target, "edited text")
    from dm_pipeline.sync import RunLimits

    assert run_sync(engine, account).total("updated") == 0
    swept = run_sync(engine, account, limits=RunLimits(sweep=True))
    assert swept.total("updated") == 1 and swept.total("inserted") == 0
    with engine.connect() as conn:
        row = conn.execute(text("SELECT text, edit_count FROM dm_private.dm_history WHERE message_id = :m"),
                           {"m": target}).one()
    assert row.text == "edited text" and row.edit_count >= 1


def test_getxapi_bad_auth_token_is_typed(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uid = sim.world.accounts()[0]
    account = getxapi_account(sim, uid, monkeypatch)
    monkeypatch.setenv(account.auth_token_env, "0" * 40)
    result = run_sync(engine, account)
    assert {s.error_code for s in result.streams} == {"invalid_auth_token"}


# ------------------------------------------------------------------ X conversations

def test_x_conversation_streams_reach_past_the_30_day_window(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.simulator import Simulator, World

    world = World(seed=5, history_days=45)
    with Simulator(world, rate_limit=100_000) as sim:
        uid = world.accounts()[0]
        account = replace(sim_account(sim, uid, monkeypatch), discover_conversations=True)
        first = run_sync(engine, account)
        assert first.status is StreamStatus.SUCCEEDED
        conv_streams = [s for s in first.streams if s.stream_key.startswith("conversation:")]
        assert conv_streams, "conversations were discovered from the inbox"
        stored = warehouse_rows(engine, account.key)
        inbox = truth_rows(world.truth(uid, "dm_events"))
        full = union_truth(world, uid, [f"dm_conversation:{s.stream_key.split(':', 1)[1]}" for s in conv_streams])
        assert set(inbox) <= set(stored) and stored == {**inbox, **full}
        assert set(full) - set(inbox), "events older than 30 days came through the conversation streams"
        again = run_sync(engine, account)
        assert again.total("inserted") == 0 and again.total("requests") == len(again.streams)


def test_getxapi_incremental_is_exact_and_ct0_twid_are_accepted(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uid = sim.world.accounts()[1]
    monkeypatch.setenv("DM_TEST_CT0", "csrf-token")
    monkeypatch.setenv("DM_TEST_TWID", f"u={uid}")
    account = replace(getxapi_account(sim, uid, monkeypatch), ct0_env="DM_TEST_CT0", twid_env="DM_TEST_TWID")
    routes = [f"getxapi:{t}" for t in ("all", "requests", "hidden")]
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    new_ids = sim.world.advance(uid, 30)
    result = run_sync(engine, account)
    assert result.total("inserted") == len(new_ids)
    assert result.total("requests") <= 3 + math.ceil(len(new_ids) / account.page_size)
    assert warehouse_rows(engine, account.key) == union_truth(sim.world, uid, routes)


def test_the_governor_keeps_a_sync_within_the_window_at_zero_429s(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """5 requests per 2-second window, a sync needing 8 pages: the governor waits for the window
    (real waits: the protocol's own clock) instead of earning a 429."""
    from dm_pipeline.simulator import Simulator, World

    world = World(seed=11)
    with Simulator(world, rate_limit=5, rate_window_s=2) as sim:
        account = sim_account(sim, world.accounts()[0], monkeypatch, page_size=50)
        result = run_sync(engine, account)
        assert result.status is StreamStatus.SUCCEEDED and result.total("requests") >= 6
        assert [s for _, _, s, _ in sim.request_log if s == 429] == []
