"""Property test (Hypothesis): any interleaving of world changes (new events, deletions, edits), page sizes,
write-ahead depths and crash points ends gap-free and duplicate-free, on real Postgres.

The provider is an in-memory newest-first pager. Two kinds of crash, both a BaseException that the engine
never catches (each page commit is atomic; the crash tests with real processes prove that part):

- `fetch k`: raised inside the k-th fetch. On its way out the committer still commits the pages it had
  queued, so every fetched page lands: the state a SIGKILL leaves when the writer had caught up.
- `kill c`: the TRUE kill state. The c-th committed page is the last one: the transaction holding page
  c+1 commits only its part up to page c (a transaction that landed before the kill), then the kill strikes
  the writer: the pages queued behind it are LOST, never committed on the way out (the committer's failed-
  writer path drops its queue). With write-ahead > 0 the fetching side has run ahead, so a kill loses
  fetched pages, as a real one does.

After every crashed run the committed pages of that run must be a prefix of the pages it fetched (exactly
c of them for `kill c`), the stored cursor the one after the last committed page, and the next run must
start at that cursor. The run after the last step (no crash) must end gap-free before any sweep, and the
audit must account for every stored row exactly once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from dm_pipeline.db import writes
from dm_pipeline.http.policy import Budget
from dm_pipeline.models import Account, EventRow, Page, Provider, Stream
from dm_pipeline.sync import RunLimits, sync_account

FULL = os.environ.get("DM_RELIABILITY") == "full"
STREAM = Stream(key="dm_events", endpoint="/fake", path="/fake")
REAL_COMMIT = writes.commit_pages


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing catches it."""


@dataclass
class FakeWorld:
    events: dict[int, str] = field(default_factory=dict)  # id -> text
    next_id: int = 1_000_000

    def add(self, n: int) -> None:
        for _ in range(n):
            self.next_id += 1 + (self.next_id % 7)  # gaps between IDs, still increasing
            self.events[self.next_id] = f"message {self.next_id}"

    def delete(self, k: int) -> None:
        for i in sorted(self.events)[:: max(1, len(self.events) // max(k, 1))][:k]:
            del self.events[i]

    def edit(self, k: int) -> None:
        for i in sorted(self.events, reverse=True)[1: k + 1]:
            self.events[i] += " (edited)"


class FakeClient:
    def __init__(self, world: FakeWorld, page_size: int, crash_at: int | None) -> None:
        self.account = Account(key="acct", provider=Provider.X, user_id="1", base_url="http://fake",
                               token_env=None, page_size=page_size)
        self.world, self.page_size, self.crash_at, self.calls = world, page_size, crash_at, 0
        self.asked: list[str | None] = []                                  # the cursor of every fetch
        self.served: list[tuple[str | None, list[str], str | None]] = []  # (cursor in, IDs, cursor out)

    def streams(self) -> Iterator[Stream]:
        yield STREAM

    def fetch_page(self, stream: Stream, cursor: str | None, budget: Budget) -> Page:
        self.calls += 1
        self.asked.append(cursor)
        if self.crash_at is not None and self.calls >= self.crash_at:
            raise Crash
        ids = sorted((i for i in self.world.events if cursor is None or i < int(cursor)), reverse=True)
        chunk = ids[: self.page_size]
        more = len(ids) > self.page_size
        rows = tuple(EventRow(
            message_id=str(i), conversation_id="c", event_type="MessageCreate", sender_id="1", recipient_id="2",
            participant_ids=(), created_at=None, text=self.world.events[i], media=None, referenced_tweets=None,
            reply_to_message_id=None, edit_count=0, raw={"id": str(i)}, sanitized=False,
            content_hash=hashlib.sha256(self.world.events[i].encode()).hexdigest()) for i in chunk)
        next_cursor = str(chunk[-1]) if more and chunk else None
        self.served.append((cursor, [str(i) for i in chunk], next_cursor))
        return Page(events=rows, next_cursor=next_cursor, http_status=200, requests=1)


class KillAfter:
    """writes.commit_pages for a run killed after its `pages`-th committed page (see the module doc)."""

    def __init__(self, pages: int) -> None:
        self.left = pages

    def __call__(self, engine: Engine, account: Account, stream: Stream, run_id: str,
                 group: Sequence[writes.PageWrite]) -> list[tuple[int, int]]:
        if len(group) <= self.left:
            self.left -= len(group)
            return REAL_COMMIT(engine, account, stream, run_id, group)
        if self.left > 0:  # consecutive pages with the cursor after the last: a transaction of their own
            REAL_COMMIT(engine, account, stream, run_id, group[: self.left])
        self.left = 0
        raise Crash


@dataclass
class Run:
    run_id: str
    client: FakeClient
    crashed: bool


def run(engine: Engine, world: FakeWorld, page_size: int, crash: tuple[str, int] | None = None,
        sweep: bool = False, write_ahead: int = 8) -> Run:
    kind, n = crash or ("none", 0)
    client = FakeClient(world, page_size, n if kind == "fetch" else None)
    run_id = f"prop-{uuid.uuid4()}"
    patch = mock.patch.object(writes, "commit_pages", KillAfter(n)) if kind == "kill" else contextlib.nullcontext()
    crashed = True
    with contextlib.suppress(Crash), patch:
        sync_account(engine, client, run_id, RunLimits(sweep=sweep, write_ahead=write_ahead))
        crashed = False
    return Run(run_id, client, crashed)


def open_cursor(engine: Engine) -> str | None:
    """The cursor of the open pass, if one is open with a cursor."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT pass_cursor FROM dm_private.sync_state WHERE pass_started_at IS NOT NULL"
                                )).first()
    return row.pass_cursor if row is not None else None


def committed_pages(engine: Engine, run_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [(r.cursor_in, list(r.message_ids), r.cursor_out) for r in conn.execute(text(
            "SELECT cursor_in, message_ids, cursor_out FROM dm_audit.dm_sync_audit WHERE run_id = :r "
            "AND row_kind = 'page' ORDER BY audit_id"), {"r": run_id})]


def check_crashed_run(engine: Engine, done: Run, crash: tuple[str, int]) -> None:
    kind, n = crash
    served = done.client.served
    pages = committed_pages(engine, done.run_id)
    assert pages == served[: len(pages)], "the committed pages are not a prefix of the fetched ones"
    if kind == "kill":
        assert len(pages) == min(n, len(served)), "a page after the kill was committed, or one before it lost"
    else:  # a fetch crash: the committer commits what it had queued on its way out
        assert len(pages) == len(served)
    cursor = open_cursor(engine)
    if pages and cursor is not None:
        assert cursor == pages[-1][2], "the stored cursor is not the one after the last committed page"


step = st.tuples(
    st.sampled_from(["add", "delete", "edit", "sync"]),
    st.integers(min_value=0, max_value=40),                   # how many events (add/delete/edit)
    st.integers(min_value=1, max_value=12),                   # page size of that sync
    st.one_of(st.none(),                                      # a crash: at the k-th request, or after c commits
              st.tuples(st.just("fetch"), st.integers(min_value=1, max_value=6)),
              st.tuples(st.just("kill"), st.integers(min_value=0, max_value=6))),
    st.sampled_from([0, 1, 8]),                               # write-ahead of that sync
)


@pytest.mark.slow
@settings(max_examples=200 if FULL else 25, deadline=None, derandomize=not FULL,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.integers(min_value=0, max_value=60), steps=st.lists(step, max_size=12),
       final_page=st.integers(min_value=1, max_value=12))
def test_any_interleaving_ends_gap_free_and_duplicate_free(engine, initial, steps, final_page) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE dm_private.dm_history, dm_private.sync_state, dm_audit.dm_sync_audit"))
    world = FakeWorld()
    world.add(initial)
    ever: set[int] = set(world.events)

    def sync(page: int, crash: tuple[str, int] | None = None, write_ahead: int = 8, sweep: bool = False) -> None:
        resume_at = open_cursor(engine)
        done = run(engine, world, page, crash, sweep=sweep, write_ahead=write_ahead)
        if resume_at is not None and not sweep and done.client.asked:
            assert done.client.asked[0] == resume_at, "the run did not resume at the stored cursor"
        if done.crashed:  # (a crash point beyond the run's last page never strikes)
            assert crash is not None
            check_crashed_run(engine, done, crash)

    for op, n, page, crash, write_ahead in steps:
        if op == "add":
            world.add(n)
            ever |= set(world.events)
        elif op == "delete":
            world.delete(n)
        elif op == "edit":
            world.edit(n)
        else:
            sync(page, crash, write_ahead)
    sync(final_page)   # the resume: no crash

    def stored_and_inserted() -> tuple[dict[int, str], int]:
        with engine.connect() as conn:
            stored = dict(conn.execute(text("SELECT message_id::bigint, text FROM dm_private.dm_history")).all())
            inserted = conn.scalar(text("SELECT coalesce(sum(events_inserted), 0) FROM dm_audit.dm_sync_audit "
                                        "WHERE row_kind = 'page'"))
        return stored, inserted

    stored, inserted = stored_and_inserted()   # before any sweep: a sweep re-walks everything and would hide a gap
    assert set(world.events) <= set(stored), "gap: a live event is missing after the resume"
    assert set(stored) <= ever, "an event that never existed was stored"
    assert inserted == len(stored), "an event was inserted twice, or a row has no committed page"

    sync(final_page, sweep=True)  # a sweep refreshes edits of old events
    stored, inserted = stored_and_inserted()
    assert set(world.events) <= set(stored) and set(stored) <= ever
    assert inserted == len(stored), "an event was inserted twice, or a row has no committed page"
    assert all(stored[i] == t for i, t in world.events.items()), "a sweep left stale content"
