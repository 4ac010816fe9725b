"""Write-ahead commits against real Postgres and the simulator: pages fetched ahead of their commit, several
pages per transaction, and still a committed prefix with its cursor whatever fails."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.db.writes import AuditEntry, PageWrite, StreamState, _text_array, commit_pages
from dm_pipeline.errors import PageCommitError
from dm_pipeline.models import Account, EventRow, Provider, StreamStatus
from dm_pipeline.providers.x_api import INBOX
from dm_pipeline.sync import RunLimits
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_sync_x import run_sync

PAGE = 20


def _audit_pages(engine: Engine, account_key: str) -> list[tuple[int, str | None, int, list[str]]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(  # type: ignore[misc]
            "SELECT page_seq, cursor_out, events_inserted, message_ids FROM dm_audit.dm_sync_audit "
            "WHERE account_key = :a AND row_kind = 'page' ORDER BY audit_id"), {"a": account_key})]


@pytest.mark.parametrize("write_ahead", [0, 1, 8])
def test_every_write_ahead_stores_the_same_rows_and_audit(engine, sim, monkeypatch, write_ahead) -> None:  # type: ignore[no-untyped-def]
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    result = run_sync(engine, account, limits=RunLimits(write_ahead=write_ahead))
    assert result.status is StreamStatus.SUCCEEDED
    assert result.total("inserted") == len(truth)
    pages = result.total("pages")
    assert pages == -(-len(truth) // PAGE) and result.total("requests") == pages
    assert 1 <= result.total("commits") <= pages
    if write_ahead == 0:
        assert result.total("commits") == pages
    assert_equals_truth(engine, account.key, truth)
    audit = _audit_pages(engine, account.key)
    assert [seq for seq, *_ in audit] == list(range(1, pages + 1))  # one row per page, in order
    assert sum(inserted for _, _, inserted, _ in audit) == len(truth)


def test_a_failing_commit_leaves_a_committed_prefix_with_its_cursor_and_the_resume_is_exact(  # type: ignore[no-untyped-def]
        engine, sim, monkeypatch) -> None:
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    assert len(truth) > 8 * PAGE
    trap_id = truth[5 * PAGE + 3]["id"]  # on page 6, newest first
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE dm_private.dm_history ADD CONSTRAINT write_ahead_trap "
                          f"CHECK (message_id <> '{int(trap_id)}')"))

    with pytest.raises(PageCommitError) as failed:
        run_sync(engine, account, limits=RunLimits(write_ahead=8))
    assert "write_ahead_trap" in str(failed.value)

    audit = _audit_pages(engine, account.key)
    committed = len(audit)
    assert committed < 6  # page 6 and everything queued with or after it: rolled back together
    assert [seq for seq, *_ in audit] == list(range(1, committed + 1))
    stored_ids = {m for _, _, _, ids in audit for m in ids}
    with engine.connect() as conn:
        rows = set(conn.scalars(text("SELECT message_id FROM dm_private.dm_history WHERE account_key = :a"),
                                {"a": account.key}))
        cursor = conn.scalar(text("SELECT pass_cursor FROM dm_private.sync_state WHERE account_key = :a"),
                             {"a": account.key})
    assert rows == stored_ids == {e["id"] for e in truth[:committed * PAGE]}
    assert cursor == (audit[-1][1] if audit else None)  # the checkpoint is the last committed page's cursor

    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE dm_private.dm_history DROP CONSTRAINT write_ahead_trap"))
    resumed = run_sync(engine, account)
    assert resumed.status is StreamStatus.SUCCEEDED
    assert resumed.total("inserted") == len(truth) - committed * PAGE
    assert_equals_truth(engine, account.key, truth)


def _event(message_id: int, text_: str) -> EventRow:
    return EventRow(message_id=str(message_id), conversation_id="1-2", event_type="MessageCreate", sender_id="1",
                    recipient_id="2", participant_ids=(), created_at=datetime(2026, 1, 1, tzinfo=UTC), text=text_,
                    media=None, referenced_tweets=None, reply_to_message_id=None, edit_count=0,
                    raw={"id": str(message_id), "text": text_}, sanitized=False,
                    content_hash=hashlib.sha256(text_.encode()).hexdigest())


def _write(seq: int, events: tuple[EventRow, ...], state: StreamState, ids: tuple[str, ...] = ()) -> PageWrite:
    ids = ids or tuple(e.message_id for e in events)
    return PageWrite(events, state, AuditEntry(run_id="group", row_kind="page", job_status="page_committed",
                                               started_at=datetime.now(UTC), page_seq=seq, message_ids=ids,
                                               events_received=len(ids), requests=1))


def test_one_group_counts_each_page_like_the_serial_loop_and_stores_the_last_cursor(engine) -> None:  # type: ignore[no-untyped-def]
    """Four pages in one transaction: a repeated ID within a page, an ID edited between two pages, a page
    with nothing to keep that closes the pass, and the first page of the next pass."""
    account = Account(key="grp", provider=Provider.X, user_id="1", base_url="http://127.0.0.1:9", token_env="T")
    commit_pages(engine, account, INBOX, "group", [_write(1, (_event(105, "e"),),
                                                           StreamState(pass_open=True, pass_cursor="c0"))])
    with engine.connect() as conn:
        first_started = conn.scalar(text("SELECT pass_started_at FROM dm_private.sync_state WHERE account_key = 'grp'"))
    assert first_started is not None

    counts = commit_pages(engine, account, INBOX, "group", [
        _write(2, (_event(100, "a"), _event(100, "a"), _event(99, "b")),
               StreamState(pass_open=True, pass_cursor="c1", pass_stop_id="90", pass_pages=2)),
        _write(3, (_event(99, "b, edited"), _event(98, "c")),
               StreamState(pass_open=True, pass_cursor="c2", pass_stop_id="90", pass_pages=3)),
        _write(4, (), StreamState(high_water_id="105"), ids=("90", "89")),  # all at or below stop: pass done
        _write(1, (_event(110, "d"),), StreamState(high_water_id="105", pass_open=True, pass_cursor="n1",
                                                   pass_stop_id="105", pass_pages=1)),
    ])
    assert counts == [(2, 0), (1, 1), (0, 0), (1, 0)]
    with engine.connect() as conn:
        audit = conn.execute(text(
            "SELECT page_seq, events_received, events_inserted, events_updated FROM dm_audit.dm_sync_audit "
            "WHERE account_key = 'grp' ORDER BY audit_id")).all()
        rows = dict(conn.execute(text("SELECT message_id, text FROM dm_private.dm_history "
                                      "WHERE account_key = 'grp'")).all())
        state = conn.execute(text("SELECT high_water_id, pass_cursor, pass_stop_id, pass_pages, pass_started_at "
                                  "FROM dm_private.sync_state WHERE account_key = 'grp'")).one()
    assert [tuple(r) for r in audit] == [(1, 1, 1, 0), (2, 3, 2, 0), (3, 2, 1, 1), (4, 2, 0, 0), (1, 1, 1, 0)]
    assert rows == {"105": "e", "100": "a", "99": "b, edited", "98": "c", "110": "d"}
    assert tuple(state[:4]) == ("105", "n1", "105", 1)
    assert state.pass_started_at > first_started  # the new pass has its own start, not the closed one's


def _waiting_on_locks(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()")) or 0)


def test_a_group_that_deadlocks_with_another_writer_is_retried_whole(engine) -> None:  # type: ignore[no-untyped-def]
    """A group locks newest-first pages in descending runs; another writer of the same rows (another stream
    of the account) can close a cycle. Postgres aborts the group's transaction; it is retried, not failed."""
    account = Account(key="dl", provider=Provider.X, user_id="1", base_url="http://127.0.0.1:9", token_env="T")
    open_pass = StreamState(pass_open=True, pass_cursor="c")
    commit_pages(engine, account, INBOX, "dl", [_write(1, (_event(100, "a"), _event(98, "b")), open_pass)])
    group = [_write(2, (_event(100, "a2"),), open_pass), _write(3, (_event(98, "b2"),), open_pass)]
    done: list[object] = []
    other = engine.connect()
    try:
        other.execute(text("SELECT 1 FROM dm_private.dm_history WHERE account_key = 'dl' AND message_id = '98' "
                           "FOR UPDATE"))
        writer = threading.Thread(target=lambda: done.append(commit_pages(engine, account, INBOX, "dl", group)))
        writer.start()
        while _waiting_on_locks(engine) == 0:  # the group holds 100 and waits for 98 (pytest-timeout bounds it)
            assert writer.is_alive(), "the group finished without waiting for the other writer's lock"
        other.execute(text("UPDATE dm_private.dm_history SET edit_count = 7 WHERE account_key = 'dl' "
                           "AND message_id = '100'"))  # closes the cycle; returns once the group is aborted
        other.commit()
    finally:
        other.close()
    writer.join(60)
    assert not writer.is_alive()
    assert done == [[(0, 1), (0, 1)]]  # the retry committed both pages
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT message_id, text FROM dm_private.dm_history "
                                      "WHERE account_key = 'dl'")).all())
    assert rows == {"100": "a2", "98": "b2"}


@pytest.mark.parametrize("values", [[], ["1", "2"], ['a"b', "c\\d", "x,y", "{z}", "NULL", "", " sp ", "é🙂"]])
def test_the_audit_arrays_reach_postgres_exactly(engine, values) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT CAST(:v AS text[])"), {"v": _text_array(values)}) == values
