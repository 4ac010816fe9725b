"""The incremental state machine of ARCHITECTURE.md §2. No Dagster import: Dagster, the CLI and the
tests all drive this same code.

Per account x stream: resume the open pass (or start one whose stop_id is the high-water mark), fetch
newest-first pages, keep events newer than stop_id, and commit rows + cursor + audit per page (on the
committer's writer thread, so the next request does not wait for the commit). A crash costs at most the
pages not yet committed (`write_ahead` + 1) of refetching and never leaves a gap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from dm_pipeline.committer import PageCommitter
from dm_pipeline.db import writes
from dm_pipeline.db.writes import AuditEntry, PageWrite, StreamState
from dm_pipeline.errors import (
    CursorLoop,
    DatabaseUnavailable,
    DmPipelineError,
    InvalidCursor,
    ProviderError,
    RateLimited,
)
from dm_pipeline.http.policy import Budget
from dm_pipeline.models import Page, Stream, StreamResult, StreamStatus, SyncResult
from dm_pipeline.providers.base import ProviderClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLimits:
    max_pages: int = 10_000          # per stream per run; the pass parks when spent
    time_budget_s: float = 600.0     # per account per run, rate-limit waits included
    max_empty_pages: int = 5         # consecutive empty pages that still carry a cursor
    sweep: bool = False              # re-walk whole streams to refresh edits
    write_ahead: int = 8             # pages fetched ahead of the commits (0: commit each before the next fetch)


PageHook = Callable[[StreamResult], None]


def _max_id(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if int(a) >= int(b) else b


def sync_account(engine: Engine, client: ProviderClient, run_id: str, limits: RunLimits = RunLimits(),
                 on_page: PageHook | None = None) -> SyncResult:
    budget = Budget.of(limits.time_budget_s)
    account = client.account
    result = SyncResult(account_key=account.key, provider=account.provider.value, run_id=run_id)
    for stream in client.streams():
        result.streams.append(sync_stream(engine, client, stream, run_id, limits, budget, on_page))
    return result


def sync_stream(engine: Engine, client: ProviderClient, stream: Stream, run_id: str, limits: RunLimits,
                budget: Budget, on_page: PageHook | None = None) -> StreamResult:
    try:
        return _sync_stream(engine, client, stream, run_id, limits, budget, on_page)
    except (OperationalError, InterfaceError) as exc:
        if not writes.connection_lost(exc):
            raise
        raise DatabaseUnavailable(
            f"lost the connection to Postgres during {client.account.key}/{stream.key} "
            f"({type(getattr(exc, 'orig', None) or exc).__name__}). The pages committed before are kept; "
            "the next run resumes from the stored cursor") from None


def _sync_stream(engine: Engine, client: ProviderClient, stream: Stream, run_id: str, limits: RunLimits,
                 budget: Budget, on_page: PageHook | None = None) -> StreamResult:
    account = client.account
    res = StreamResult(account_key=account.key, stream_key=stream.key)
    started = writes.utcnow()
    with writes.stream_lock(engine, account.key, stream.key) as locked:
        if not locked:
            res.status = StreamStatus.SKIPPED_LOCKED
            writes.finish_stream(engine, account, stream, None, AuditEntry(
                run_id=run_id, row_kind="job", job_status=res.status.value, started_at=started))
            return res
        committer = PageCommitter(lambda group: writes.commit_pages(engine, account, stream, run_id, group),
                                  write_ahead=limits.write_ahead, name=f"commit:{account.key}/{stream.key}")
        try:
            with engine.connect() as conn:
                state = writes.read_state(conn, account.key, stream.key)
            state = _walk(client, stream, state, run_id, limits, budget, res, committer, on_page)
        finally:
            committer.close(raise_error=False)
            _account(res, committer, on_page)
            res.commits = committer.transactions
        committer.close()  # a failed commit fails the stream here, after the pages before it were counted
        res.high_water_id, res.pass_cursor = state.high_water_id, state.pass_cursor
        writes.finish_stream(engine, account, stream, state, AuditEntry(
            run_id=run_id, row_kind="job", job_status=res.status.value, started_at=started,
            requests=res.requests, events_received=res.received, http_status=res.http_status,
            error_code=res.error_code, gap_suspected=res.gap_suspected, cursor_out=state.pass_cursor))
    log.info("stream done account=%s stream=%s status=%s pages=%d requests=%d inserted=%d updated=%d",
             account.key, stream.key, res.status, res.pages, res.requests, res.inserted, res.updated)
    return res


def _account(res: StreamResult, committer: PageCommitter, on_page: PageHook | None) -> None:
    """Count the pages the writer has committed since the last call."""
    for write, inserted, updated in committer.committed():
        res.pages += 1
        res.requests += write.audit.requests
        res.received += write.audit.events_received
        res.inserted += inserted
        res.updated += updated
        if on_page:
            on_page(res)


def _walk(client: ProviderClient, stream: Stream, state: StreamState, run_id: str, limits: RunLimits,
          budget: Budget, res: StreamResult, committer: PageCommitter, on_page: PageHook | None) -> StreamState:
    # A pass left open by an earlier run is finished first; then one fresh pass picks up whatever
    # arrived meanwhile, so a run always ends current (when its budget allows).
    resumed = state.pass_open and not (limits.sweep and not state.pass_sweep)
    if not resumed:
        state = state.start_pass(sweep=limits.sweep)
    seen_cursors = {state.pass_cursor} if state.pass_cursor else set()
    empty_streak = 0
    restarted = False
    fetched = 0
    while True:
        _account(res, committer, on_page)
        committer.check()  # a failed commit ends the stream before another request is spent
        if fetched >= limits.max_pages or budget.remaining() <= 0:
            res.status = StreamStatus.PARTIAL
            return state
        cursor_in = state.pass_cursor
        page_started = writes.utcnow()
        try:
            page = client.fetch_page(stream, cursor_in, budget)
        except InvalidCursor as exc:
            res.requests += exc.requests
            if cursor_in is None or restarted:
                return _fail(res, exc, state)
            # An expired cursor: restart the pass from the top, same stop_id; the upsert absorbs overlap.
            restarted = True
            state = replace(state, pass_cursor=None)
            seen_cursors.clear()
            continue
        except RateLimited as exc:
            res.requests += exc.requests
            res.status, res.error_code, res.http_status = StreamStatus.RATE_LIMITED, exc.error_code, exc.http_status
            return state
        except ProviderError as exc:
            res.requests += exc.requests
            return _fail(res, exc, state)
        except DmPipelineError as exc:
            return _fail(res, exc, state)

        page_seq = state.pass_pages + 1
        stop = int(state.pass_stop_id) if state.pass_stop_id and not state.pass_sweep else None
        state, done, gap = _advance(state, page, stream)
        keep = [e for e in page.events if stop is None or e.id_int > stop]
        ids = [e.message_id for e in page.events]
        loop = page.next_cursor is not None and page.next_cursor in seen_cursors
        empty_streak = 0 if page.events else empty_streak + 1
        audit = AuditEntry(
            run_id=run_id, row_kind="page", job_status="page_committed", started_at=page_started,
            page_seq=page_seq, cursor_in=cursor_in,
            cursor_out=page.next_cursor, has_next_page=page.next_cursor is not None,
            http_status=page.http_status, requests=page.requests, events_received=len(page.events),
            message_ids=ids, media_refs=[str(m.get("url") or m.get("media_key")) for e in page.events
                                         for m in e.media or ()],
            newest_id=max(ids, key=int) if ids else None, oldest_id=min(ids, key=int) if ids else None,
            error_code="cursor_loop" if loop else None, gap_suspected=gap, credits=page.credits,
            events_quarantined=len(page.quarantined),
        )
        committer.submit(writes.prepare_page(client.account, stream, run_id, PageWrite(keep, state, audit, page)))
        fetched += 1
        res.http_status = page.http_status
        res.gap_suspected = res.gap_suspected or gap
        if loop:
            return _fail(res, CursorLoop("the provider repeated a pagination cursor"), state)
        if empty_streak > limits.max_empty_pages:
            err = ProviderError("too many consecutive empty pages", error_code="empty_page_loop")
            return _fail(res, err, state)
        if done and resumed:
            resumed, restarted = False, False
            state = state.start_pass(sweep=False)
            seen_cursors.clear()
            continue
        if done:
            res.status = StreamStatus.SUCCEEDED
            return state
        seen_cursors.add(page.next_cursor)  # type: ignore[arg-type]


def _advance(state: StreamState, page: Page, stream: Stream) -> tuple[StreamState, bool, bool]:
    """The state after committing `page`: (new state, pass done, gap suspected)."""
    newest = state.pass_newest_id
    for event in page.events:
        newest = _max_id(newest, event.message_id)
    stop = int(state.pass_stop_id) if state.pass_stop_id and not state.pass_sweep else None
    reached = stop is not None and any(e.id_int <= stop for e in page.events)
    done = reached or page.next_cursor is None
    if not done:
        return replace(state, pass_cursor=page.next_cursor, pass_newest_id=newest,
                       pass_pages=state.pass_pages + 1), False, False
    # Exhausted without meeting the old high-water mark: on a windowed endpoint, events between the
    # oldest one returned and that mark may have aged out before we saw them.
    gap = (not reached and stop is not None and stream.retention_window_days is not None
           and not state.pass_sweep)
    high_water = _max_id(state.high_water_id, newest)
    closed = StreamState(high_water_id=high_water)
    return closed, True, gap


def _fail(res: StreamResult, exc: DmPipelineError, state: StreamState) -> StreamState:
    res.status = StreamStatus.FAILED
    res.error_code = exc.error_code
    res.http_status = getattr(exc, "http_status", None) or res.http_status
    log.warning("stream failed account=%s stream=%s error_code=%s http_status=%s", res.account_key,
                res.stream_key, res.error_code, res.http_status)
    return state
