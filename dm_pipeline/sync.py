"""The incremental state machine of docs/architecture.md §2. No Dagster import: Dagster, the CLI and the
tests all drive this same code.

Per account x stream: resume the open pass (or start one whose stop_id is the high-water mark), fetch
newest-first pages, keep events newer than stop_id, and commit rows + cursor + audit per page (on the
committer's writer thread, so the next request does not wait for the commit). A crash costs at most the
pages not yet committed (at most 2 * `write_ahead` + 1: the group being committed, the queue and
the page in hand) of refetching and never leaves a gap.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from dm_pipeline.committer import PageCommitter
from dm_pipeline.db import writes
from dm_pipeline.db.account_state import AccountGovernor, AccountSnapshot
from dm_pipeline.db.deletions import SweepJudge
from dm_pipeline.db.writes import AuditEntry, PageWrite, StreamState
from dm_pipeline.errors import (
    BudgetExhausted,
    CursorLoop,
    DatabaseUnavailable,
    DmPipelineError,
    InvalidCursor,
    MalformedResponse,
    PageCommitError,
    ProviderError,
    RateLimited,
)
from dm_pipeline.gate import BILLED, AccountGate, failed_cost, next_poll, page_cost, wait_now
from dm_pipeline.http.policy import Budget
from dm_pipeline.models import Page, Provider, Stream, StreamResult, StreamStatus, SyncResult
from dm_pipeline.providers.base import ProviderClient, cursor_problem
from dm_pipeline.providers.x_api import INBOX_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLimits:
    max_pages: int = 10_000          # per stream per run; the pass parks when spent
    time_budget_s: float = 600.0     # per account per run, rate-limit waits included
    max_empty_pages: int = 5         # consecutive empty pages that still carry a cursor
    sweep: bool = False              # re-walk whole streams to refresh edits
    write_ahead: int = 8             # pages fetched ahead of the commits (0: commit each before the next fetch)
    poll_interval_s: float = 900.0   # the schedule's interval: billed streams back off from it
    max_wait_s: float = 900.0        # the longest rate-limit wait ever slept (RetryPolicy.max_hinted_wait_s)
    max_cursor_restarts: int = 3     # expired cursors per stream per run, each after a successful page
    max_stale_pass_runs: int = 5     # runs in a row a pass may park storing nothing before it is abandoned
    honour_backoff: bool = True      # skip billed streams not due yet (the schedule); `sync` polls them anyway
    clock: Callable[[], datetime] = field(default=writes.utcnow)   # dormancy, backoff and windows


PageHook = Callable[[StreamResult], None]
StreamStartHook = Callable[[str, str], None]  # (account key, stream key), before a stream's first request


def _max_id(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if int(a) >= int(b) else b


def sync_account(engine: Engine, client: ProviderClient, run_id: str, limits: RunLimits = RunLimits(),
                 on_page: PageHook | None = None, on_stream_start: StreamStartHook | None = None,
                 snapshot: AccountSnapshot | None = None) -> SyncResult:
    """Every stream of the account that needs a request, in order, under one gate (gate.py): dormant and
    not-due streams cost nothing, and an account-level failure or limit ends the account's run. `snapshot`:
    the account's stored state as its run read it for a batch of accounts (else the gate reads it)."""
    try:
        return _sync_account(engine, client, run_id, limits, on_page, on_stream_start, snapshot)
    except (OperationalError, InterfaceError) as exc:
        if not writes.connection_lost(exc):
            raise
        raise _unavailable(client.account.key, "*", exc) from None


def _unavailable(account_key: str, stream_key: str, exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"lost the connection to Postgres during {account_key}/{stream_key} "
        f"({type(getattr(exc, 'orig', None) or exc).__name__}). The pages committed before are kept; "
        "the next run resumes from the stored cursor")


def _sync_account(engine: Engine, client: ProviderClient, run_id: str, limits: RunLimits,
                  on_page: PageHook | None, on_stream_start: StreamStartHook | None,
                  snapshot: AccountSnapshot | None) -> SyncResult:
    budget = Budget.of(limits.time_budget_s)
    account = client.account
    result = SyncResult(account_key=account.key, provider=account.provider.value, run_id=run_id)
    gate = AccountGate.open(engine, account, sweep=limits.sweep, now=limits.clock(), max_wait_s=limits.max_wait_s,
                            honour_backoff=limits.honour_backoff, snapshot=snapshot)
    governor = getattr(client, "governor", None)
    try:
        for stream in client.streams():
            # A full-history stream whose last complete walk is older than the account's sweep interval is
            # swept this run (its own schedule: weekly for X by default), under the same gate as any pass.
            due = not limits.sweep and gate.sweep_due(stream)
            if gate.idle(stream, sweep_due=due):
                continue
            if isinstance(governor, AccountGovernor) and result.streams:
                governor.refresh()  # another process of this account may have learnt the window meanwhile
            if gate.park(stream, budget, wait_now(governor)):
                park = gate.parked
                assert park is not None
                result.streams.append(StreamResult(account.key, stream.key, status=park.status,
                                                   error_code=park.error_code, retry_at=park.retry_at))
                continue
            if on_stream_start:
                on_stream_start(account.key, stream.key)
            res = sync_stream(engine, client, stream, run_id, replace(limits, sweep=True) if due else limits,
                              budget, on_page, gate)
            result.streams.append(res)
            gate.after(stream, res)
            # (sync_stream re-read the inbox's state: its covered_at decides which streams are dormant)
            if _vouches(stream) and res.gap_suspected and any(k != stream.key for k in gate.states):
                gate.wake([k for k in gate.states if k != stream.key])
    except BaseException:
        with contextlib.suppress(OperationalError, InterfaceError):  # keep the error that got us here
            _close(engine, gate, governor, run_id)
        raise
    _close(engine, gate, governor, run_id)
    result.dormant, result.not_due = gate.dormant, gate.not_due
    return result


def _close(engine: Engine, gate: AccountGate, governor: object, run_id: str) -> None:
    """The account's state after the run: its rate-limit window, the skipped streams' rows, the newly
    dormant, in one transaction, and none when nothing changed."""
    save = isinstance(governor, AccountGovernor) and not governor.defer_save() and governor.dirty
    if not save and not gate.has_writes():
        return
    with engine.begin() as conn:
        if save and isinstance(governor, AccountGovernor):
            governor.save(conn)
        gate.close(run_id, conn)


def _vouches(stream: Stream) -> bool:
    """The X inbox vouches for the account's conversation streams (see gate.py)."""
    return stream.key == INBOX_KEY and stream.vouched_by is None


def sync_stream(engine: Engine, client: ProviderClient, stream: Stream, run_id: str, limits: RunLimits,
                budget: Budget, on_page: PageHook | None = None, gate: AccountGate | None = None) -> StreamResult:
    try:
        return _sync_stream(engine, client, stream, run_id, limits, budget, on_page, gate)
    except (OperationalError, InterfaceError) as exc:
        if not writes.connection_lost(exc):
            raise
        raise _unavailable(client.account.key, stream.key, exc) from None


def _sync_stream(engine: Engine, client: ProviderClient, stream: Stream, run_id: str, limits: RunLimits,
                 budget: Budget, on_page: PageHook | None, gate: AccountGate | None) -> StreamResult:
    account = client.account
    refresh = gate is not None and _vouches(stream) and any(k != stream.key for k in gate.states)
    gate = gate or AccountGate.open(engine, account, sweep=limits.sweep, now=limits.clock(),
                                    max_wait_s=limits.max_wait_s)
    res = StreamResult(account_key=account.key, stream_key=stream.key)
    started = writes.utcnow()
    with writes.stream_session(engine, account.key, stream.key) as (locked, session):
        if not locked:
            res.status = StreamStatus.SKIPPED_LOCKED
            writes.finish_stream(engine, account, stream, None, AuditEntry(
                run_id=run_id, row_kind="job", job_status=res.status.value, started_at=started))
            if refresh:
                gate.refresh(stream.key, session)  # the holder may have moved it on
            return res
        committer = PageCommitter(lambda group: writes.commit_pages(engine, account, stream, run_id, group),
                                  write_ahead=limits.write_ahead, name=f"commit:{account.key}/{stream.key}")
        try:
            try:
                state = writes.read_state(session, account.key, stream.key)
                state = _walk(client, stream, state, run_id, limits, budget, res, committer, on_page, gate)
            finally:
                committer.close(raise_error=False)
                _account(res, committer, on_page)
                res.commits = committer.transactions
            committer.close()  # a failed commit fails the stream here, after the pages before it were counted
        except PageCommitError as exc:
            # The committed prefix and its cursor stand. The stream's job row says so, typed; the error
            # (which names no row value) goes on, so Dagster's RetryPolicy retries the step.
            log.warning("%s; the committed pages and their cursor stand", exc)
            res.status, res.error_code = StreamStatus.FAILED, "commit_failed"
            writes.finish_stream(engine, account, stream, None, AuditEntry(
                run_id=run_id, row_kind="job", job_status=res.status.value, started_at=started,
                requests=res.requests, events_received=res.received, error_code=res.error_code, cost=res.cost,
                **committer.job_figures()))
            raise
        if res.status is StreamStatus.PARTIAL and state.pass_open and not state.pass_sweep and res.pages:
            stored = res.inserted + res.updated
            state = replace(state, pass_stale_runs=0 if stored else state.pass_stale_runs + 1)
        if res.status is StreamStatus.SUCCEEDED and not limits.sweep and account.provider in BILLED:
            state = next_poll(state, res.inserted + res.updated > 0, gate.now, limits.poll_interval_s, account)
        res.high_water_id, res.pass_cursor = state.high_water_id, state.pass_cursor
        writes.finish_stream(engine, account, stream, state, AuditEntry(
            run_id=run_id, row_kind="job", job_status=res.status.value, started_at=started,
            requests=res.requests, events_received=res.received, http_status=res.http_status,
            error_code=res.error_code, gap_suspected=res.gap_suspected, cursor_out=state.pass_cursor,
            cost=res.cost, retry_at=res.retry_at, **committer.job_figures()))
        if refresh:
            gate.refresh(stream.key, session)
    log.info("stream done account=%s stream=%s status=%s pages=%d requests=%d inserted=%d updated=%d",
             account.key, stream.key, res.status, res.pages, res.requests, res.inserted, res.updated)
    return res


def _account(res: StreamResult, committer: PageCommitter, on_page: PageHook | None) -> None:
    """Count the pages the writer has committed since the last call (and what a completed walk judged)."""
    for write, inserted, updated in committer.committed():
        if write.judge is not None and write.judge.result is not None:
            res.marked_deleted += write.judge.result[0]
            res.restored += write.judge.result[1]
        res.pages += 1
        res.requests += write.audit.requests
        res.cost += write.audit.cost
        res.received += write.audit.events_received
        res.inserted += inserted
        res.updated += updated
        if on_page:
            on_page(res)


def _walk(client: ProviderClient, stream: Stream, state: StreamState, run_id: str, limits: RunLimits,
          budget: Budget, res: StreamResult, committer: PageCommitter, on_page: PageHook | None,
          gate: AccountGate) -> StreamState:
    # A pass left open by an earlier run is finished first; then one fresh pass picks up whatever
    # arrived meanwhile, so a run always ends current (when its budget allows).
    resumed = state.pass_open and not (limits.sweep and not state.pass_sweep)
    if resumed and not state.pass_sweep and state.pass_stale_runs >= limits.max_stale_pass_runs:
        # Endless distinct cursors: the pass has parked run after run without storing anything. It must not
        # hold back newer messages forever: it is abandoned where it got to, flagged as a suspected gap (a
        # sweep re-reads the range), and a fresh pass starts from the top.
        log.warning("abandoning a pass of %s/%s after %d runs that stored nothing", res.account_key, stream.key,
                    state.pass_stale_runs)
        res.error_code, res.gap_suspected = "pass_abandoned", True
        state = state.close_pass(_max_id(state.high_water_id, state.pass_newest_id), exhausted=False)
        resumed = False
    if not resumed:
        state = state.start_pass(sweep=limits.sweep)
    provider = client.account.provider
    seen_cursors = {state.pass_cursor} if state.pass_cursor else set()
    empty_streak = 0
    restarts = 0
    paged_since_restart = True
    fetched = 0
    while True:
        _account(res, committer, on_page)
        committer.check()  # a failed commit ends the stream before another request is spent
        if fetched >= limits.max_pages or budget.remaining() <= 0:
            res.status = StreamStatus.PARTIAL
            return state
        cursor_in = state.pass_cursor
        if cursor_in is None:
            # The top page is as fresh as a new pass's: a resumed pass that starts (or restarts) here needs
            # no second pass after it.
            resumed = False
        page_started = writes.utcnow()
        try:
            gate.check_budget()
            page = client.fetch_page(stream, cursor_in, budget)
        except InvalidCursor as exc:
            _charge(res, gate, provider, exc.requests)
            if cursor_in is None or not paged_since_restart or restarts >= limits.max_cursor_restarts:
                return _fail(res, exc, state)
            # An expired cursor: restart the pass from the top, same stop_id; the upsert absorbs overlap.
            restarts += 1
            paged_since_restart = False
            state = replace(state, pass_cursor=None)
            seen_cursors.clear()
            continue
        except RateLimited as exc:
            _charge(res, gate, provider, exc.requests)
            res.status, res.error_code, res.http_status = StreamStatus.RATE_LIMITED, exc.error_code, exc.http_status
            res.retry_at = gate.now + timedelta(seconds=math.ceil(exc.wait_s)) if exc.wait_s else None
            return state
        except BudgetExhausted as exc:
            res.status, res.error_code = StreamStatus.BUDGET_EXHAUSTED, exc.error_code
            res.retry_at = gate.budget_frees_at()
            return state
        except ProviderError as exc:
            _charge(res, gate, provider, exc.requests)
            return _fail(res, exc, state)
        except DmPipelineError as exc:
            return _fail(res, exc, state)
        except Exception as exc:  # whatever a response did to the decoder, the stream ends typed
            # Only the class is named: an exception's text may quote what the provider sent.
            log.warning("unexpected %s while reading a page of %s/%s", type(exc).__name__, res.account_key,
                        stream.key)
            _charge(res, gate, provider, 1)
            return _fail(res, MalformedResponse(f"the page could not be read ({type(exc).__name__})"), state)
        problem = cursor_problem(page.next_cursor)
        if problem is not None:
            _charge(res, gate, provider, page.requests)
            return _fail(res, MalformedResponse(f"the provider sent {problem}", http_status=page.http_status,
                                                requests=page.requests), state)

        paged_since_restart = True
        cost = page_cost(provider, page)
        gate.charge(cost)
        page_seq = state.pass_pages + 1
        stop = int(state.pass_stop_id) if state.pass_stop_id and not state.pass_sweep else None
        state, done, gap = _advance(state, page, stream, gate.now)
        keep = [e for e in page.events if stop is None or e.id_int > stop]
        ids = [e.message_id for e in page.events]
        loop = page.next_cursor is not None and page.next_cursor in seen_cursors
        empty_streak = 0 if page.events else empty_streak + 1
        audit = AuditEntry(
            run_id=run_id, row_kind="page", job_status="page_committed", started_at=page_started,
            page_seq=page_seq, cursor_in=cursor_in,
            cursor_out=page.next_cursor, has_next_page=page.next_cursor is not None,
            http_status=page.http_status, requests=page.requests, events_received=len(page.events),
            message_ids=ids,  # the statement records those it writes, and their media (db/statements.py)
            newest_id=max(ids, key=int) if ids else None, oldest_id=min(ids, key=int) if ids else None,
            error_code="cursor_loop" if loop else "oversized_page" if len(page.events) + len(page.quarantined)
            > client.account.page_size else None, gap_suspected=gap, credits=page.credits,
            events_quarantined=len(page.quarantined), cost=cost, partial_errors=page.partial_errors,
        )
        # A pass with no stop that ran out of pages walked the whole stream (a first pass, a sweep): the
        # stream's stored events are judged against it, in the commit of this last page (deletions.py).
        full_walk = done and stop is None and page.next_cursor is None
        judge = None
        if full_walk and stream.sweep_scope is not None and client.account.on_upstream_delete != "keep":
            judge = SweepJudge(stream.sweep_scope, erase=client.account.on_upstream_delete == "erase")
        # The audit at scale (docs/architecture.md §14): every page of a walk the judge may read keeps the
        # IDs it saw; a one-page pass that closes at the top and changes nothing writes no page row (its
        # figures go to the job row).
        evidence = stop is None and stream.sweep_scope is not None and client.account.on_upstream_delete != "keep"
        fold = (not evidence and page_seq == 1 and cursor_in is None and done and not gap
                and audit.error_code is None and not page.quarantined and not page.partial_errors)
        committer.submit(writes.prepare_page(client.account, stream, run_id, PageWrite(
            keep, state, audit, page, full_walk=full_walk, judge=judge, evidence=evidence, fold=fold)))
        fetched += 1
        res.http_status = page.http_status
        res.gap_suspected = res.gap_suspected or gap
        if loop:
            return _fail(res, CursorLoop("the provider repeated a pagination cursor"), state)
        if empty_streak > limits.max_empty_pages:
            err = ProviderError("too many consecutive empty pages", error_code="empty_page_loop")
            return _fail(res, err, state)
        if done and resumed:
            resumed = False
            state = state.start_pass(sweep=False)
            seen_cursors.clear()
            continue
        if done:
            res.status = StreamStatus.SUCCEEDED
            return state
        seen_cursors.add(page.next_cursor)  # type: ignore[arg-type]


def _charge(res: StreamResult, gate: AccountGate, provider: Provider, requests: int) -> None:
    """Requests that brought no page: counted, and billed where the provider bills them."""
    res.requests += requests
    cost = failed_cost(provider, requests)
    res.cost += cost
    gate.charge(cost)


def _advance(state: StreamState, page: Page, stream: Stream, now: datetime) -> tuple[StreamState, bool, bool]:
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
    # Exhausted without meeting the old high-water mark: on a windowed endpoint, events between the oldest
    # one returned and that mark may have aged out before we saw them, unless the last successful pass
    # started within the window (then everything older than the window was already seen by it).
    window = stream.retention_window_days
    gap = (not reached and stop is not None and window is not None and not state.pass_sweep
           and (state.covered_at is None or state.covered_at <= now - timedelta(days=window)))
    return state.close_pass(_max_id(state.high_water_id, newest), exhausted=not reached), True, gap


def _fail(res: StreamResult, exc: DmPipelineError, state: StreamState) -> StreamState:
    res.status = StreamStatus.FAILED
    res.error_code = exc.error_code
    res.http_status = getattr(exc, "http_status", None) or res.http_status
    log.warning("stream failed account=%s stream=%s error_code=%s http_status=%s", res.account_key,
                res.stream_key, res.error_code, res.http_status)
    return state
