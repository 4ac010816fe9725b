"""Messages deleted upstream (issue 16), on real Postgres against the simulator: a sweep of a full-history
stream marks exactly the stored events it no longer returns (in the middle, at the edges and across page
boundaries of a conversation), restores one that comes back, never marks wrongly after a SIGKILL
mid-sweep, and each policy does what it says; the analyst views and the export follow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.clients import build_client, http_client
from dm_pipeline.export import export_account
from dm_pipeline.models import Account, StreamStatus, SyncResult
from dm_pipeline.settings import PROJECT_ROOT
from dm_pipeline.sync import RunLimits, sync_account
from tests.conftest import sim_account

PAGE = 10
CONVERSATIONS = 5
EACH = 32  # messages per conversation: four pages of ten, the last one short


def _sync(engine: Engine, account: Account, **limits: object) -> SyncResult:
    with http_client() as http:
        return sync_account(engine, build_client(account, http, engine=engine), f"del-{uuid.uuid4()}",
                            RunLimits(**limits))  # type: ignore[arg-type]


@pytest.fixture
def setup(sim, monkeypatch):  # type: ignore[no-untyped-def]
    """An X account with five conversations of 32 messages, each its own stream, backfilled."""
    world = sim.world
    me = world.accounts()[0]
    partners = world.add_partners(me, CONVERSATIONS, events_each=EACH)
    conversations = tuple(f"{min(me, p, key=int)}-{max(me, p, key=int)}" for p in partners)
    account = replace(sim_account(sim, me, monkeypatch, page_size=PAGE), conversation_ids=conversations)
    return world, account, conversations


def _victims(world, account: Account, conversations: tuple[str, ...]) -> list[str]:  # type: ignore[no-untyped-def]
    """Six per conversation: newest, oldest, both sides of two page boundaries (pages of ten, newest first)."""
    picked = []
    for cid in conversations:
        ids = [e["id"] for e in world.truth_conversation(account.user_id, cid)]  # newest first
        assert len(ids) == EACH
        picked += [ids[0], ids[-1], ids[9], ids[10], ids[19], ids[20]]
    return picked


def _marked(engine: Engine, key: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(text("SELECT message_id FROM dm_private.dm_history WHERE account_key = :k "
                                     "AND deleted_upstream_at IS NOT NULL"), {"k": key}))


def test_a_sweep_marks_exactly_the_deleted_events_and_the_views_and_export_leave_them_out(
        engine, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world, account, conversations = setup
    assert _sync(engine, account).status is StreamStatus.SUCCEEDED
    victims = _victims(world, account, conversations)
    assert len(victims) == 30
    for mid in victims:
        assert world.delete(mid)
    incremental = _sync(engine, account)  # an incremental pass never judges: absence may only mean age
    assert sum(s.marked_deleted for s in incremental.streams) == 0 and _marked(engine, account.key) == set()

    swept = _sync(engine, account, sweep=True)
    assert swept.status is StreamStatus.SUCCEEDED
    assert _marked(engine, account.key) == set(victims)                       # exactly 30, no false mark
    per_stream = {s.stream_key: s.marked_deleted for s in swept.streams}
    assert per_stream == {"dm_events": 0, **{f"conversation:{c}": 6 for c in conversations}}
    with engine.connect() as conn:
        audit = conn.execute(text("SELECT stream_key, events_marked_deleted, events_erased FROM dm_audit.dm_sync_audit "
                                  "WHERE row_kind = 'page' AND events_marked_deleted > 0")).all()
        assert sorted(r.stream_key for r in audit) == sorted(f"conversation:{c}" for c in conversations)
        assert all(r.events_marked_deleted == 6 and r.events_erased is None for r in audit)  # NULL: none (0009)
        kept_text = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history WHERE deleted_upstream_at IS NOT NULL "
                                     "AND text IS NOT NULL"))
        assert kept_text == 30                                                # mark keeps the row
        in_view = set(conn.scalars(text("SELECT message_id FROM dm_analytics.messages")))
        assert not in_view & set(victims) and in_view
        hidden = conn.scalar(text("SELECT sum(deleted_upstream) FROM dm_analytics.conversations "
                                  "WHERE conversation_id = ANY(:c)"), {"c": list(conversations)})
        assert hidden == 30                                                   # and says how many it left out
    out = tmp_path / "export.jsonl"
    export_account(engine, account.key, out)
    exported = {json.loads(line)["message_id"] for line in out.read_text().splitlines()}
    assert not exported & set(victims) and exported

    again = _sync(engine, account, sweep=True)  # nothing new is missing: nothing marked twice
    assert sum(s.marked_deleted for s in again.streams) == 0 and _marked(engine, account.key) == set(victims)


def test_an_event_that_comes_back_is_restored(engine, setup) -> None:  # type: ignore[no-untyped-def]
    world, account, conversations = setup
    _sync(engine, account)
    live = world.truth_conversation(account.user_id, conversations[0])[5]["id"]
    with engine.begin() as conn:  # marked by an earlier sweep, then the provider served it again
        conn.execute(text("UPDATE dm_private.dm_history SET deleted_upstream_at = now() WHERE message_id = :m"),
                     {"m": live})
    swept = _sync(engine, account, sweep=True)
    assert sum(s.restored for s in swept.streams) == 1 and _marked(engine, account.key) == set()


def test_erase_deletes_the_private_content_and_keeps_the_ids_and_keep_records_nothing(
        engine, setup) -> None:  # type: ignore[no-untyped-def]
    world, account, conversations = setup
    _sync(engine, account)
    victims = _victims(world, account, conversations)
    for mid in victims:
        world.delete(mid)

    _sync(engine, replace(account, on_upstream_delete="keep"), sweep=True)
    assert _marked(engine, account.key) == set()                              # keep: nothing recorded

    _sync(engine, replace(account, on_upstream_delete="erase"), sweep=True)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, text, media, raw, flags FROM dm_private.dm_history "
                                 "WHERE deleted_upstream_at IS NOT NULL")).all()
        audit_ids = set(conn.scalars(text("SELECT unnest(message_ids) FROM dm_audit.dm_sync_audit")))
        erased = conn.scalar(text("SELECT sum(events_erased) FROM dm_audit.dm_sync_audit"))
    assert {r.message_id for r in rows} == set(victims) and erased == 30
    assert all(r.text is None and r.media is None and r.raw == {"erased": "deleted upstream"}
               and "erased_upstream_delete" in r.flags for r in rows)
    assert set(victims) <= audit_ids                                          # the audit keeps the IDs


def test_a_sweep_is_due_on_its_own_schedule(engine, setup) -> None:  # type: ignore[no-untyped-def]
    world, account, conversations = setup
    account = replace(account, sweep_interval_s=7 * 86400)
    _sync(engine, account)
    victim = world.truth_conversation(account.user_id, conversations[2])[15]["id"]
    world.delete(victim)
    assert sum(s.marked_deleted for s in _sync(engine, account).streams) == 0  # swept a moment ago: not due
    with engine.begin() as conn:
        conn.execute(text("UPDATE dm_private.sync_state SET last_sweep_at = now() - interval '8 days' "
                          "WHERE stream_key = :s"), {"s": f"conversation:{conversations[2]}"})
    result = _sync(engine, account)
    assert {s.stream_key: s.marked_deleted for s in result.streams if s.marked_deleted} == {
        f"conversation:{conversations[2]}": 1}
    assert _marked(engine, account.key) == {victim}


def test_a_sigkill_mid_sweep_marks_nothing_wrongly_and_the_resumed_sweep_is_exact(
        engine, sim, setup, db_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world, account, conversations = setup
    account = replace(account, conversation_ids=conversations[:1])
    sim_url = account.base_url
    _sync(engine, account)
    victims = _victims(world, account, conversations[:1])
    for mid in victims:
        world.delete(mid)
    accounts_file = tmp_path / "accounts.yaml"
    accounts_file.write_text(
        f"accounts:\n  - key: {account.key}\n    provider: x\n    user_id: \"{account.user_id}\"\n"
        f"    base_url: {sim_url}\n    token_env: {account.token_env}\n    page_size: {PAGE}\n"
        f"    conversations: {{ids: [\"{conversations[0]}\"]}}\n")
    # Hold the sweep's third request of the conversation stream, then kill the process: two pages committed.
    killed = _kill_on_request(sim, account, db_url, accounts_file, conversations[0], k=3)
    assert killed == -signal.SIGKILL
    assert _marked(engine, account.key) == set()                              # judged only at the end
    resumed = _sync(engine, account, sweep=True)
    assert resumed.status is StreamStatus.SUCCEEDED
    assert _marked(engine, account.key) == set(victims)


def _kill_on_request(sim, account: Account, db_url: str, accounts_file: Path, cid: str,  # type: ignore[no-untyped-def]
                     k: int) -> int | None:
    reached, release = threading.Event(), threading.Event()
    seen = [0]

    def hook(info) -> None:  # type: ignore[no-untyped-def]
        if info.user_id == account.user_id and cid in info.path:
            seen[0] += 1
            if seen[0] == k:
                reached.set()
                release.wait(60)

    sim.on_request = hook
    env = {**os.environ, "DATABASE_URL": db_url, "DM_PIPELINE_ACCOUNTS": str(accounts_file),
           "DM_PIPELINE_WRITE_AHEAD": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "sync", "--sweep", "--account", account.key],
                            env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert reached.wait(60), "the sweep never reached its third page"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        release.set()
        sim.on_request = None
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return proc.returncode
