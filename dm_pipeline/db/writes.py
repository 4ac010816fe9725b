"""The one-transaction page commit: rows + sync state + audit row, all or nothing (ARCHITECTURE.md §2)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, literal_column, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError

from dm_pipeline.db.tables import (
    dm_conversation_events,
    dm_conversations,
    dm_history,
    dm_quarantine,
    dm_sync_audit,
    dm_users,
    sync_state,
)
from dm_pipeline.errors import DatabaseUnavailable, PageCommitError
from dm_pipeline.models import Account, EventRow, Page, Stream


@dataclass(frozen=True)
class StreamState:
    """A row of dm_private.sync_state. `pass_open` is True while a pass is in progress."""

    high_water_id: str | None = None
    pass_open: bool = False
    pass_cursor: str | None = None
    pass_stop_id: str | None = None
    pass_newest_id: str | None = None
    pass_pages: int = 0
    pass_sweep: bool = False

    def start_pass(self, sweep: bool) -> StreamState:
        return replace(self, pass_open=True, pass_cursor=None, pass_newest_id=None, pass_pages=0,
                       pass_sweep=sweep, pass_stop_id=None if sweep else self.high_water_id)


@dataclass(frozen=True)
class AuditEntry:
    """The redacted audit columns of one page or one terminal job status: IDs, cursors, counts."""

    run_id: str
    row_kind: str                        # 'page' | 'job'
    job_status: str
    started_at: datetime
    page_seq: int | None = None
    cursor_in: str | None = None
    cursor_out: str | None = None
    has_next_page: bool | None = None
    http_status: int | None = None
    requests: int = 0
    events_received: int = 0
    message_ids: Sequence[str] = ()
    media_refs: Sequence[str] = ()
    newest_id: str | None = None
    oldest_id: str | None = None
    error_code: str | None = None
    gap_suspected: bool = False
    credits: int = 0
    events_quarantined: int = 0


def read_state(conn: Connection, account_key: str, stream_key: str) -> StreamState:
    row = conn.execute(select(sync_state).where(sync_state.c.account_key == account_key,
                                                sync_state.c.stream_key == stream_key)).mappings().first()
    if row is None:
        return StreamState()
    return StreamState(high_water_id=row["high_water_id"], pass_open=row["pass_started_at"] is not None,
                       pass_cursor=row["pass_cursor"], pass_stop_id=row["pass_stop_id"],
                       pass_newest_id=row["pass_newest_id"], pass_pages=row["pass_pages"],
                       pass_sweep=row["pass_sweep"])


def _history_values(account: Account, stream: Stream, run_id: str, e: EventRow) -> dict[str, Any]:
    return {
        "account_key": account.key, "message_id": e.message_id, "provider": account.provider.value,
        "stream_key": stream.key, "conversation_id": e.conversation_id, "event_type": e.event_type,
        "sender_id": e.sender_id, "recipient_id": e.recipient_id, "participant_ids": list(e.participant_ids),
        "created_at": e.created_at, "text": e.text, "media": e.media, "referenced_tweets": e.referenced_tweets,
        "reply_to_message_id": e.reply_to_message_id, "edit_count": e.edit_count, "raw": e.raw,
        "sanitized": e.sanitized, "flags": list(e.flags), "content_hash": e.content_hash,
        "first_seen_run_id": run_id,
        "last_changed_run_id": run_id,
    }


_CHANGING = ("conversation_id", "event_type", "sender_id", "recipient_id", "participant_ids", "created_at",
             "text", "media", "referenced_tweets", "reply_to_message_id", "edit_count", "raw", "sanitized",
             "flags", "content_hash", "last_changed_run_id")


def upsert_events(conn: Connection, account: Account, stream: Stream, run_id: str,
                  events: Sequence[EventRow]) -> tuple[int, int]:
    """Insert new events, update changed ones (content_hash differs), leave unchanged ones untouched.
    Returns (inserted, updated)."""
    unique = {e.message_id: e for e in events}  # a page may repeat an event; ON CONFLICT needs it once
    if not unique:
        return 0, 0
    insert = pg_insert(dm_history).values([_history_values(account, stream, run_id, e) for e in unique.values()])
    excluded = insert.excluded
    upsert = insert.on_conflict_do_update(
        index_elements=[dm_history.c.account_key, dm_history.c.message_id],
        set_={**{c: excluded[c] for c in _CHANGING}, "last_changed_at": func.now()},
        where=dm_history.c.content_hash.is_distinct_from(excluded.content_hash),
    )
    # xmax = 0 only on a freshly inserted tuple; unchanged rows return nothing (the WHERE skips them).
    stmt: Any = upsert.returning(literal_column("(xmax = 0)").label("inserted"))
    flags = conn.execute(stmt).scalars().all()
    inserted = sum(1 for f in flags if f)
    return inserted, len(flags) - inserted


def write_state(conn: Connection, account: Account, stream: Stream, state: StreamState, *,
                status: str | None = None, error_code: str | None = None, succeeded: bool = False) -> None:
    values: dict[str, Any] = {
        "provider": account.provider.value, "endpoint": stream.endpoint, "high_water_id": state.high_water_id,
        "pass_started_at": func.coalesce(sync_state.c.pass_started_at, func.now()) if state.pass_open else None,
        "pass_cursor": state.pass_cursor, "pass_stop_id": state.pass_stop_id,
        "pass_newest_id": state.pass_newest_id, "pass_pages": state.pass_pages,
        "pass_sweep": state.pass_sweep, "updated_at": func.now(),
    }
    if status is not None:
        values["last_status"] = status
        values["last_error_code"] = error_code
    if succeeded:
        values["last_success_at"] = func.now()
    insert_values = {**values, "account_key": account.key, "stream_key": stream.key}
    if state.pass_open:
        insert_values["pass_started_at"] = func.now()
    stmt = pg_insert(sync_state).values(insert_values)
    stmt = stmt.on_conflict_do_update(index_elements=[sync_state.c.account_key, sync_state.c.stream_key],
                                      set_=values)
    conn.execute(stmt)


def insert_audit(conn: Connection, account: Account, stream: Stream, entry: AuditEntry, inserted: int = 0,
                 updated: int = 0) -> None:
    conn.execute(dm_sync_audit.insert().values(
        run_id=entry.run_id, account_key=account.key, provider=account.provider.value, stream_key=stream.key,
        endpoint=stream.endpoint, row_kind=entry.row_kind, page_seq=entry.page_seq, cursor_in=entry.cursor_in,
        cursor_out=entry.cursor_out, has_next_page=entry.has_next_page, http_status=entry.http_status,
        requests=entry.requests, events_received=entry.events_received, events_inserted=inserted,
        events_updated=updated, message_ids=list(entry.message_ids), media_refs=list(entry.media_refs),
        newest_id=entry.newest_id, oldest_id=entry.oldest_id, job_status=entry.job_status,
        error_code=entry.error_code, gap_suspected=entry.gap_suspected, credits=entry.credits,
        events_quarantined=entry.events_quarantined,
        started_at=entry.started_at,
    ))


def upsert_side_data(conn: Connection, account: Account, stream: Stream, run_id: str, page: Page) -> None:
    """Users, conversations and conversation events that came with the page; unchanged rows are skipped."""
    provider = account.provider.value
    users = {u.user_id: u for u in page.users}
    if users:
        ins = pg_insert(dm_users).values([
            {"provider": provider, "user_id": u.user_id, "username": u.username, "name": u.name, "raw": u.raw,
             "content_hash": u.content_hash} for u in users.values()])
        conn.execute(ins.on_conflict_do_update(
            index_elements=[dm_users.c.provider, dm_users.c.user_id],
            set_={"username": ins.excluded.username, "name": ins.excluded.name, "raw": ins.excluded.raw,
                  "content_hash": ins.excluded.content_hash, "updated_at": func.now()},
            where=dm_users.c.content_hash.is_distinct_from(ins.excluded.content_hash)))
    conversations = {c.conversation_id: c for c in page.conversations}
    if conversations:
        cins = pg_insert(dm_conversations).values([
            {"account_key": account.key, "conversation_id": c.conversation_id, "provider": provider,
             "stream_key": stream.key, "conversation_type": c.conversation_type,
             "participant_ids": list(c.participant_ids), "raw": c.raw, "content_hash": c.content_hash}
            for c in conversations.values()])
        conn.execute(cins.on_conflict_do_update(
            index_elements=[dm_conversations.c.account_key, dm_conversations.c.conversation_id],
            set_={"conversation_type": cins.excluded.conversation_type, "stream_key": cins.excluded.stream_key,
                  "participant_ids": cins.excluded.participant_ids, "raw": cins.excluded.raw,
                  "content_hash": cins.excluded.content_hash, "updated_at": func.now()},
            where=dm_conversations.c.content_hash.is_distinct_from(cins.excluded.content_hash)))
    bad = {q.content_hash: q for q in page.quarantined}
    if bad:
        qins = pg_insert(dm_quarantine).values([
            {"account_key": account.key, "provider": provider, "stream_key": stream.key,
             "provider_event_id": q.provider_event_id, "error_code": q.error_code, "reason": q.reason,
             "raw": q.raw, "content_hash": q.content_hash, "first_seen_run_id": run_id} for q in bad.values()])
        conn.execute(qins.on_conflict_do_nothing())  # re-fetching a page must not quarantine it twice
    events = {e.event_key: e for e in page.conversation_events}
    if events:
        eins = pg_insert(dm_conversation_events).values([
            {"account_key": account.key, "event_key": e.event_key, "provider": provider,
             "conversation_id": e.conversation_id, "event_type": e.event_type, "created_at": e.created_at,
             "raw": e.raw, "first_seen_run_id": run_id} for e in events.values()])
        conn.execute(eins.on_conflict_do_nothing())


def commit_page(engine: Engine, account: Account, stream: Stream, run_id: str, events: Sequence[EventRow],
                state: StreamState, audit: AuditEntry, page: Page | None = None) -> tuple[int, int]:
    """THE crash-safety point: the page's rows, the advanced cursor and its audit row commit together."""
    try:
        with engine.begin() as conn:
            inserted, updated = upsert_events(conn, account, stream, run_id, events)
            if page is not None:
                upsert_side_data(conn, account, stream, run_id, page)
            write_state(conn, account, stream, state)
            insert_audit(conn, account, stream, audit, inserted, updated)
    except StatementError as exc:
        if connection_lost(exc):
            raise DatabaseUnavailable(
                f"lost the connection to Postgres while committing a page of {account.key}/{stream.key} "
                f"({type(getattr(exc, 'orig', None) or exc).__name__}). The pages committed before are kept; "
                "the next run resumes from the stored cursor") from None
        # Its message quotes the failing row and the parameters (message text): re-raise without both.
        raise PageCommitError(account.key, stream.key, exc) from None
    return inserted, updated


def connection_lost(exc: BaseException) -> bool:
    """The server went away (crash, restart, network) as opposed to a statement failing on its own."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or ""
    return isinstance(exc, OperationalError | InterfaceError) and (
        sqlstate.startswith(("08", "57P")) or not sqlstate)


def finish_stream(engine: Engine, account: Account, stream: Stream, state: StreamState | None,
                  audit: AuditEntry) -> None:
    """The terminal job row, and the stream's last status, in one transaction."""
    with engine.begin() as conn:
        if state is not None:
            write_state(conn, account, stream, state, status=audit.job_status, error_code=audit.error_code,
                        succeeded=audit.job_status == "succeeded")
        insert_audit(conn, account, stream, audit)


@contextmanager
def stream_lock(engine: Engine, account_key: str, stream_key: str) -> Iterator[bool]:
    """A session-level advisory lock per account x stream, held on its own connection for the pass.
    Yields False when another run holds it. A killed process's lock dies with its session."""
    with engine.connect() as conn:
        key = f"dm_pipeline:{account_key}:{stream_key}"
        got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"), {"k": key}))
        conn.commit()
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": key})
                    conn.commit()
                except (OperationalError, InterfaceError):
                    pass  # the session is gone, and its lock with it; keep the error that got us here


def utcnow() -> datetime:
    return datetime.now(UTC)
