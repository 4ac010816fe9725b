"""The dm_analytics views: every example of docs/analyst.md runs as an analyst and returns rows, and each
uses an index (or says in the docs why it reads everything) on a synthetic load; on synced simulator data
the views count and deduplicate exactly as documented."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from benchmarks.analytics_load import doc_queries, explain, load, sample_params
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import StreamStatus
from dm_pipeline.sync import RunLimits
from tests.conftest import TEMPLATE_DB, sim_account
from tests.integration.test_sync_x import run_sync

# Small enough to load in ~1 s; the plans are those of 1 M events (benchmarks/explain_analytics.py), with
# the nested-loop dedupe probe ~20 % cheaper than the hash alternative already at this size.
LOAD_EVENTS = 50_000


@pytest.fixture(scope="module")
def loaded(pg_server: URL) -> Iterator[tuple[Engine, Engine, dict[str, object]]]:
    """A migrated database with the synthetic load; (owner engine, analyst engine, the docs' parameters)."""
    name, role = f"dm_test_load_{uuid.uuid4().hex[:10]}", f"dm_test_analyst_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"'))
        conn.execute(text(f"CREATE ROLE {role} LOGIN IN ROLE dm_analyst"))
    owner = create_engine(pg_server.set(database=name), poolclass=NullPool)
    analyst = create_engine(pg_server.set(database=name, username=role), poolclass=NullPool)
    load(owner, LOAD_EVENTS)
    with owner.connect() as conn:
        params = sample_params(conn)
    yield owner, analyst, params
    owner.dispose()
    analyst.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
    admin.dispose()


def test_the_docs_hold_examples_for_every_view() -> None:
    queries = doc_queries()
    assert len(queries) >= 8
    blob = "\n".join(q.sql for q in queries)
    assert all(f"dm_analytics.{v}" in blob for v in ("messages", "conversations", "daily_volume", "sync_health"))


def test_every_documented_example_runs_as_an_analyst_and_returns_rows(loaded) -> None:  # type: ignore[no-untyped-def]
    _, analyst, params = loaded
    empty = []
    with analyst.connect() as conn:
        for q in doc_queries():
            rows = conn.execute(text(q.bindable()), {k: params[k] for k in q.params}).all()
            if not rows:
                empty.append(q.title)
    assert empty == []


def test_each_documented_query_uses_an_index_or_says_why_not(loaded) -> None:  # type: ignore[no-untyped-def]
    owner, _, params = loaded
    unjustified = {}
    justified = 0
    with owner.connect() as conn:
        for q in doc_queries():
            plan = explain(conn, q, {k: params[k] for k in q.params}, analyze=False)
            if q.justification:
                justified += 1
                assert len(q.justification) > 20, q.title
            elif not plan.indexes or plan.seq_scans_big_table:
                unjustified[q.title] = (plan.indexes, plan.seq_scanned)
    assert unjustified == {}
    assert 0 < justified < len(doc_queries()) // 2


# ------------------------------------------------------------------------------- on synced data
def _fetch(engine: Engine, sql: str, **params: object) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def test_views_deduplicate_and_count_as_documented(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    a, b = (sim_account(sim, uid, monkeypatch, page_size=50) for uid in world.accounts()[:2])
    run_sync(engine, a)
    run_sync(engine, b)  # b's copies of shared messages are newer: the view shows them
    truth = {acc.key: {e["id"]: e for e in world.truth(acc.user_id)} for acc in (a, b)}
    shared = sorted(set(truth[a.key]) & set(truth[b.key]), key=int)
    assert shared

    rows = _fetch(engine, "SELECT message_id, account_key, text_length, has_media, media_urls "
                          "FROM dm_analytics.messages")
    by_id = {r[0]: r for r in rows}
    assert len(rows) == len(by_id) == len(set(truth[a.key]) | set(truth[b.key]))
    assert {by_id[m][1] for m in shared} == {b.key}
    for mid, e in truth[a.key].items():
        if mid not in shared:
            assert by_id[mid][1:3] == (a.key, len(e["text"]) if e.get("text") is not None else None)
        assert by_id[mid][3] == bool(e.get("attachments")) == bool(by_id[mid][4])

    # An edit seen by a only: a's copy is now the newest version of that message.
    edited = next(m for m in shared if truth[a.key][m]["event_type"] == "MessageCreate")
    world.edit(edited, "twelve chars")
    run_sync(engine, a, limits=RunLimits(sweep=True))
    assert _fetch(engine, "SELECT account_key, text_length FROM dm_analytics.messages WHERE message_id = :m",
                  m=edited) == [(a.key, 12)]

    conv = next(c for m in shared if "-" in (c := truth[a.key][m]["dm_conversation_id"]))  # the 1:1 of a and b
    in_conv = {m for t in truth.values() for m, e in t.items() if e["dm_conversation_id"] == conv}
    ((keys, events, participants),) = _fetch(
        engine, "SELECT account_keys, events, participant_ids FROM dm_analytics.conversations "
                "WHERE conversation_id = :c", c=conv)
    assert (keys, events) == (sorted([a.key, b.key]), len(in_conv))
    assert set(conv.split("-")) == {a.user_id, b.user_id} == set(participants)

    per_account = dict(_fetch(engine, "SELECT account_key, sum(events) FROM dm_analytics.daily_volume GROUP BY 1"))
    assert per_account == {a.key: len(truth[a.key]), b.key: len(truth[b.key])}


def test_sync_health_reports_failures_and_open_passes(engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    world = sim.world
    a, b = (sim_account(sim, uid, monkeypatch, page_size=50) for uid in world.accounts()[:2])
    run_sync(engine, a)
    sim.faults.inject(b.user_id, "dm_events", "403", count=1)
    assert run_sync(engine, b, policy=RetryPolicy(sleep=lambda s: None)).status is StreamStatus.FAILED
    world.advance(a.user_id, 120)
    assert run_sync(engine, a, limits=RunLimits(max_pages=1)).status is StreamStatus.PARTIAL

    health = {r[0]: r[1:] for r in _fetch(engine, """
        SELECT account_key, last_status, last_error_code, pass_in_progress, pages, errors, gap_suspected,
               last_success_at IS NOT NULL, lag IS NOT NULL
        FROM dm_analytics.sync_health WHERE stream_key = 'dm_events'""")}
    pages_a = -(-len(world.truth(a.user_id)[120:]) // 50) + 1
    assert health == {a.key: ("partial", None, True, pages_a, 0, False, True, True),
                      b.key: ("failed", "client_forbidden", True, 0, 1, False, False, False)}
