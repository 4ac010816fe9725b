"""The one-transaction page commit: rows + sync state + audit row, all or nothing (docs/architecture.md §5).

The fixed statement texts and their parameter builders are in db/statements.py; they are importable from
here too, as before (tests and benchmarks use some of the private ones).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from psycopg.rows import RowFactory, dict_row, tuple_row
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError

from dm_pipeline.db import deletions
from dm_pipeline.db.deletions import SweepJudge
from dm_pipeline.db.statements import (
    _AUDIT_PAGE_COLUMNS,
    _CHANGING,
    _EVENT_COLUMNS,
    _EVENT_NAMES,
    _INSERT_AUDIT,
    _UPSERT_PAGE,
    _UPSERT_STATE,
    _UPSERT_USERS,
    _audit_values,
    _cast,
    _event_json,
    _json_default,
    _json_text,
    _nonempty_array,
    _page_params,
    _state_params,
    _text_array,
    _users_param,
    page_json,
    prepare_page,
)
from dm_pipeline.db.tables import dm_conversation_events, dm_conversations, dm_quarantine, sync_state
from dm_pipeline.errors import DatabaseUnavailable, PageCommitError
from dm_pipeline.models import Account, EventRow, Page, Stream

__all__ = [
    "_AUDIT_PAGE_COLUMNS", "_CHANGING", "_EVENT_COLUMNS", "_EVENT_NAMES", "_INSERT_AUDIT", "_UPSERT_PAGE",
    "_UPSERT_STATE", "_UPSERT_USERS", "AuditEntry", "PageWrite", "StreamState", "_audit_values", "_cast",
    "_event_json", "_json_default", "_json_text", "_nonempty_array", "_page_params", "_state_params", "_text_array",
    "_users_param",
    "commit_pages", "connection_lost", "finish_stream", "insert_audit", "page_json", "prepare_page", "read_state",
    "read_states", "stream_lock", "stream_session", "upsert_side_data", "utcnow", "write_state",
]


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
    history_complete: bool = False          # a pass reached the start of the stream once
    empty_polls: int = 0                    # billed providers: consecutive passes that found nothing new
    next_poll_at: datetime | None = None    # billed providers: not polled before this (backoff)
    pass_stale_runs: int = 0                # runs in a row that parked this pass without storing anything
    # Read-only here (the statement maintains them): start of the last successful pass, last status.
    covered_at: datetime | None = None
    last_status: str | None = None
    last_sweep_at: datetime | None = None   # the last completed walk of the whole stream

    def start_pass(self, sweep: bool) -> StreamState:
        return replace(self, pass_open=True, pass_cursor=None, pass_newest_id=None, pass_pages=0,
                       pass_sweep=sweep, pass_stop_id=None if sweep else self.high_water_id, pass_stale_runs=0)

    def close_pass(self, high_water_id: str | None, exhausted: bool) -> StreamState:
        """The state after the pass's last page. A pass that ran out of pages reached the stream's start."""
        return replace(self, high_water_id=high_water_id, pass_open=False, pass_cursor=None, pass_stop_id=None,
                       pass_newest_id=None, pass_pages=0, pass_sweep=False, pass_stale_runs=0,
                       history_complete=self.history_complete or exhausted)


@dataclass(frozen=True)
class AuditEntry:
    """The redacted audit columns of one page or one terminal job status: IDs, cursors, counts.

    On a page, `message_ids` are the IDs it returned: its statement records those it inserted or updated
    (and, on a full walk, the unchanged rest as evidence), and `media_refs` are recomputed from what it
    wrote. On a job row, `folded_pages`, `credits`, `newest_id` and `oldest_id` carry the figures of the
    pages that wrote no row of their own (docs/architecture.md §14)."""

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
    cost: int = 0
    partial_errors: int = 0
    retry_at: datetime | None = None
    folded_pages: int = 0


@dataclass(frozen=True)
class PageWrite:
    """Everything one fetched page commits: its rows, the state after it, its audit row, its side data."""

    events: Sequence[EventRow]
    state: StreamState
    audit: AuditEntry
    page: Page | None = None
    # The page statement's parameters, when built ahead (prepare_page) on the thread that fetched the page.
    params: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    full_walk: bool = False              # the page that completes a walk of the whole stream (first pass, sweep)
    judge: SweepJudge | None = None      # with full_walk: judge the stream's stored events (deletions.py)
    # A page of a pass that may complete a judged walk (no stop): its audit row keeps every ID it saw.
    evidence: bool = False
    # A one-page pass closing at the top: if it changes nothing, it writes no audit row and the stream's job
    # row carries its figures (committer.PageCommitter.job_figures).
    fold: bool = False


def _state_of(row: Any) -> StreamState:
    return StreamState(high_water_id=row["high_water_id"], pass_open=row["pass_started_at"] is not None,
                       pass_cursor=row["pass_cursor"], pass_stop_id=row["pass_stop_id"],
                       pass_newest_id=row["pass_newest_id"], pass_pages=row["pass_pages"],
                       pass_sweep=row["pass_sweep"], history_complete=row["history_complete"],
                       empty_polls=row["empty_polls"], next_poll_at=row["next_poll_at"],
                       pass_stale_runs=row["pass_stale_runs"],
                       covered_at=row["covered_at"], last_status=row["last_status"],
                       last_sweep_at=row["last_sweep_at"])


_READ_STATE = f"SELECT * FROM {sync_state.fullname} WHERE account_key = %(k)s AND stream_key = %(s)s"


def read_state(conn: Connection, account_key: str, stream_key: str) -> StreamState:
    """One stream's state, read once per stream under its lock: prepared, on the driver (see driver_execute)."""
    row = driver_execute(conn, _READ_STATE, {"k": account_key, "s": stream_key}, row_factory=dict_row)
    return StreamState() if row is None else _state_of(row)


def read_states(conn: Connection, account_key: str) -> dict[str, StreamState]:
    """Every stream state of an account, in one query (an X account may have a thousand conversations)."""
    rows = conn.execute(select(sync_state).where(sync_state.c.account_key == account_key)).mappings()
    return {row["stream_key"]: _state_of(row) for row in rows}


def write_state(conn: Connection, account: Account, stream: Stream, state: StreamState, *,
                status: str | None = None, error_code: str | None = None, succeeded: bool = False) -> None:
    """Upsert the stream's state row. `status` (with `error_code`) sets the last status; `succeeded` stamps
    last_success_at. An open pass keeps its original pass_started_at."""
    driver_execute(conn, _UPSERT_STATE, {
        **_state_params(account, stream, state), "set_status": status is not None, "status": status,
        "error_code": error_code if status is not None else None, "succeeded": succeeded})


def driver_execute(conn: Connection, sql: str, params: dict[str, Any],
                   row_factory: RowFactory[Any] = tuple_row) -> Any:
    """Run a fixed statement, prepared server-side, on the psycopg connection of `conn` (the per-page and
    per-stream paths: SQLAlchemy's statement building is most of their client CPU, ~0.15 ms a statement).
    Returns the first row (a tuple, or what `row_factory` makes), if any. Errors come out as SQLAlchemy's,
    as if run through `conn`: a lost server also invalidates `conn`, so that the pool discards it instead of
    resetting it (a rollback on a dead socket, logged with its traceback)."""
    pg = conn.connection.driver_connection
    assert pg is not None
    try:
        with pg.cursor(row_factory=row_factory) as cur:
            cur.execute(sql, params, prepare=True)
            return cur.fetchone() if cur.description else None
    except psycopg.Error as exc:
        lost = conn.dialect.is_disconnect(cast(Any, exc), pg, None)  # (typed for an abstract DB-API module)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, None, exc, psycopg.Error, connection_invalidated=lost) from None


def insert_audit(conn: Connection, account: Account, stream: Stream, entry: AuditEntry, inserted: int = 0,
                 updated: int = 0) -> None:
    # A plain INSERT of these columns, prepared once per connection (see driver_execute).
    driver_execute(conn, _INSERT_AUDIT, {**_audit_values(account, stream, entry), "events_inserted": inserted,
                                          "events_updated": updated,
                                          "message_ids": _nonempty_array(entry.message_ids),
                                          "media_refs": _nonempty_array(entry.media_refs)})


def upsert_side_data(conn: Connection, account: Account, stream: Stream, run_id: str, page: Page) -> None:
    """Conversations, quarantined events and conversation events that came with the page (GetXAPI, bad
    input); unchanged rows are skipped. The users are written by `commit_pages`."""
    provider = account.provider.value
    # Per-account tables are written in key order, like dm_users (see _users_param): no deadlock.
    conversations = {c.conversation_id: c for c in page.conversations}
    if conversations:
        cins = pg_insert(dm_conversations).values([
            {"account_key": account.key, "conversation_id": c.conversation_id, "provider": provider,
             "stream_key": stream.key, "conversation_type": c.conversation_type,
             "participant_ids": list(c.participant_ids), "raw": c.raw, "content_hash": c.content_hash}
            for c in (conversations[k] for k in sorted(conversations))])
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
             "raw": q.raw, "content_hash": q.content_hash, "first_seen_run_id": run_id}
            for q in (bad[k] for k in sorted(bad))])
        conn.execute(qins.on_conflict_do_nothing())  # re-fetching a page must not quarantine it twice
    events = {e.event_key: e for e in page.conversation_events}
    if events:
        eins = pg_insert(dm_conversation_events).values([
            {"account_key": account.key, "event_key": e.event_key, "provider": provider,
             "conversation_id": e.conversation_id, "event_type": e.event_type, "created_at": e.created_at,
             "raw": e.raw, "first_seen_run_id": run_id} for e in (events[k] for k in sorted(events))])
        conn.execute(eins.on_conflict_do_nothing())


def commit_pages(engine: Engine, account: Account, stream: Stream, run_id: str,
                 pages: Sequence[PageWrite]) -> list[tuple[int, int]]:
    """THE crash-safety point: consecutive pages of one stream, each with its rows and its audit row, and
    the cursor after the last of them, in ONE transaction: all or nothing. Returns (inserted, updated) per
    page. The statements travel in one pipeline (one round trip) before the COMMIT.

    Each statement locks its rows in key order, but a group of newest-first pages takes them in
    descending runs, so two writers of one account on streams that share messages (the inbox and a
    conversation) can deadlock; Postgres then aborts one transaction, which is retried whole."""
    if not pages:
        return []
    for attempt in range(1, _RETRIES + 1):
        try:
            return _commit_pages(engine, account, stream, run_id, pages)
        except StatementError as exc:
            if attempt < _RETRIES and getattr(getattr(exc, "orig", None), "sqlstate", None) in _RETRYABLE:
                continue
            if connection_lost(exc):
                raise DatabaseUnavailable(
                    f"lost the connection to Postgres while committing a page of {account.key}/{stream.key} "
                    f"({type(getattr(exc, 'orig', None) or exc).__name__}). The pages committed before are kept; "
                    "the next run resumes from the stored cursor") from None
            # Its message quotes the failing row and the parameters (message text): re-raise without both.
            raise PageCommitError(account.key, stream.key, exc) from None
    raise AssertionError("unreachable")


_RETRIES = 3
_RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure: the group is retried whole


def _commit_pages(engine: Engine, account: Account, stream: Stream, run_id: str,
                  pages: Sequence[PageWrite]) -> list[tuple[int, int]]:
    # Every parameter is built before the pipeline opens (most were built by prepare_page on the fetching
    # thread): an error raised inside the pipeline after a failed statement would make psycopg log that
    # statement's error, whose DETAIL quotes the failing row.
    page_params = [w.params or _page_params(account, stream, run_id, w) for w in pages]
    users = _users_param(account.provider.value, (u for w in pages if w.page is not None for u in w.page.users))
    # The state row after the last page; and after any page that closes a pass within the group, so the
    # next pass gets its own pass_started_at (an open pass keeps the one it has).
    # A page write whose state has no open pass is the one that closed its pass.
    states = [{**_state_params(account, stream, w.state), "closing": True, "swept": w.full_walk}
              for w in pages[:-1] if not w.state.pass_open]
    states.append({**_state_params(account, stream, pages[-1].state), "closing": not pages[-1].state.pass_open,
                   "swept": pages[-1].full_walk})
    with engine.begin() as conn:
        for write in pages:
            if write.page is not None and (write.page.conversations or write.page.quarantined
                                           or write.page.conversation_events):
                upsert_side_data(conn, account, stream, run_id, write.page)
        pg = conn.connection.driver_connection
        assert pg is not None
        try:
            with pg.pipeline():
                cursors = [pg.cursor() for _ in pages]
                for cur, params in zip(cursors, page_params, strict=True):
                    cur.execute(_UPSERT_PAGE, params, prepare=True)
                if users is not None:
                    pg.cursor().execute(_UPSERT_USERS, users, prepare=True)
                if not any(w.judge is not None for w in pages):
                    for state in states:
                        pg.cursor().execute(_UPSERT_STATE, state, prepare=True)
                    states = []
            counts = [cur.fetchone() for cur in cursors]
            # A completed walk judges the stream's stored events, after its pages, before the state row
            # closes the pass (the judgement reads the pass's start from it).
            for write, count in zip(pages, counts, strict=True):
                if write.judge is not None:
                    deletions.judge(conn, account.key, stream.key, write.judge, int(count[2]) if count else None)
            for state in states:
                driver_execute(conn, _UPSERT_STATE, state)
        except psycopg.Error as exc:
            raise DBAPIError.instance("page commit", None, exc, psycopg.Error) from None
    return [(int(c[0]), int(c[1])) if c else (0, 0) for c in counts]


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


# The stream's lock, prepared on the driver like the state read between them (driver_execute).
_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%(k)s, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%(k)s, 0))"


@contextmanager
def stream_session(engine: Engine, account_key: str, stream_key: str) -> Iterator[tuple[bool, Connection]]:
    """A session-level advisory lock per account x stream (erase.py takes the same key), held on its own
    connection for the pass, in autocommit; yields whether it was got, and the connection: the stream's
    state is read over it, and re-read after the stream ran, so a stream checks out one pooled connection
    for the three. A killed process's lock dies with its session."""
    key = {"k": f"dm_pipeline:{account_key}:{stream_key}"}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        got = bool(driver_execute(conn, _TRY_LOCK, key)[0])
        try:
            yield got, conn
        finally:
            if got:  # (a session that is gone took its lock along: keep the error that got us here)
                with suppress(OperationalError, InterfaceError):
                    driver_execute(conn, _UNLOCK, key)


@contextmanager
def stream_lock(engine: Engine, account_key: str, stream_key: str) -> Iterator[bool]:
    """`stream_session`'s lock alone: False when another run holds it."""
    with stream_session(engine, account_key, stream_key) as (got, _):
        yield got


def utcnow() -> datetime:
    return datetime.now(UTC)
