"""The account is the unit of cost, rate limit and failure. One `AccountGate` per account per run decides,
before each stream, whether it needs a request at all:

- an X conversation stream whose history is complete is *dormant* while the inbox (`/2/dm_events`, every
  conversation of the last N days) is current: the inbox brings its new events, dedupe absorbs overlap;
- a billed provider's stream that kept finding nothing is not polled before its `next_poll_at`;
- once the account is known to be rate-limited past the run's budget, over its daily budget, or failing
  for an account-level reason (a refused credential, a spent bill), its remaining streams are parked or
  skipped without a request, each with a job audit row saying why and when it is tried again.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from dm_pipeline.db import account_state, writes
from dm_pipeline.db.account_state import AccountSnapshot
from dm_pipeline.db.writes import AuditEntry, StreamState
from dm_pipeline.errors import ACCOUNT_LEVEL_CODES, BudgetExhausted
from dm_pipeline.http.policy import Budget
from dm_pipeline.models import Account, Page, Provider, Stream, StreamResult, StreamStatus

log = logging.getLogger(__name__)

BILLED = frozenset({Provider.XQUIK, Provider.GETXAPI})  # billed per message or per call: idle streams back off
DAY = timedelta(days=1)


def page_cost(provider: Provider, page: Page) -> int:
    """What a page costs at the provider: Xquik bills credits (1 per message returned, lookups included),
    X counts requests against the account's window, GetXAPI bills each call."""
    return page.credits if provider is Provider.XQUIK else page.requests


def failed_cost(provider: Provider, requests: int) -> int:
    """What failed requests cost: X and GetXAPI count them; Xquik bills nothing for an error."""
    return 0 if provider is Provider.XQUIK else requests


def worst_request_cost(account: Account) -> int:
    """The most the next request can cost: an Xquik page bills one credit per message, up to a page."""
    return account.page_size if account.provider is Provider.XQUIK else 1


def next_poll(state: StreamState, found_new: bool, now: datetime, base_s: float, account: Account
              ) -> StreamState:
    """The backoff of a billed stream after a successful pass: after `poll_backoff_after` empty polls the
    interval doubles from the schedule's up to `max_poll_interval_s`; anything new resets it. The due time
    is a little early (a tenth of the base, at most a minute) so a tick that starts a few seconds before
    the exact multiple still polls."""
    if found_new or account.max_poll_interval_s <= 0 or account.provider not in BILLED:
        return replace(state, empty_polls=0, next_poll_at=None)
    empty = state.empty_polls + 1
    if empty < account.poll_backoff_after:
        return replace(state, empty_polls=empty, next_poll_at=None)
    interval = min(float(account.max_poll_interval_s), base_s * 2 ** (empty - account.poll_backoff_after + 1))
    if interval <= base_s:
        return replace(state, empty_polls=empty, next_poll_at=None)
    slack = min(60.0, base_s / 10)
    return replace(state, empty_polls=empty, next_poll_at=now + timedelta(seconds=interval - slack))


@dataclass(frozen=True)
class Park:
    """Why the account's remaining streams are not fetched this run."""

    status: StreamStatus
    error_code: str
    retry_at: datetime | None = None


@dataclass
class AccountGate:
    engine: Engine
    account: Account
    sweep: bool
    now: datetime
    max_wait_s: float                                  # the longest wait the HTTP policy would sleep
    honour_backoff: bool = True                        # False: poll billed streams even when not due
    states: dict[str, StreamState] = field(default_factory=dict)
    spent: int = 0                                     # cost recorded in the last 24 hours, before this run
    oldest_spend: datetime | None = None
    charged: int = 0                                   # cost of this run so far
    parked: Park | None = None
    skips: list[tuple[Stream, AuditEntry]] = field(default_factory=list)
    dormant: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, engine: Engine, account: Account, *, sweep: bool, now: datetime, max_wait_s: float,
             honour_backoff: bool = True, snapshot: AccountSnapshot | None = None) -> AccountGate:
        """The account's gate, from its stream states (and spend): `snapshot` when its run read them for a
        batch of accounts, else read here."""
        gate = cls(engine, account, sweep, now, max_wait_s, honour_backoff)
        if snapshot is not None:
            gate.states = dict(snapshot.states)
            gate.spent, gate.oldest_spend = snapshot.spent if account.daily_budget is not None else (0, None)
            return gate
        with engine.connect() as conn:
            gate.states = writes.read_states(conn, account.key)
            if account.daily_budget is not None:
                gate.spent, gate.oldest_spend = account_state.spent_since(conn, account.key, now - DAY)
        return gate

    # ------------------------------------------------------------------ before a stream
    def state(self, stream: Stream) -> StreamState:
        return self.states.get(stream.key) or StreamState()

    def inbox_vouches(self, stream: Stream) -> bool:
        """The stream's inbox finished a pass that started within its window: every event of every
        conversation created since then, and up to a window before, has been fetched."""
        inbox = self.states.get(stream.vouched_by or "")
        if inbox is None or inbox.covered_at is None:
            return False
        window = stream.vouching_window_days
        return window is None or inbox.covered_at > self.now - timedelta(days=window)

    def sweep_due(self, stream: Stream) -> bool:
        """The stream walked its whole history once, has no pass open, and its last complete walk is older
        than the account's sweep interval: this run sweeps it (deletions and edits upstream)."""
        interval = self.account.sweep_interval_s
        state = self.state(stream)
        if stream.sweep_scope is None or interval <= 0 or not state.history_complete or state.pass_open:
            return False
        return state.last_sweep_at is None or state.last_sweep_at <= self.now - timedelta(seconds=interval)

    def idle(self, stream: Stream, sweep_due: bool = False) -> bool:
        """True when the stream needs no request this run: dormant (the inbox vouches for it) or, for a
        billed provider, not due yet. Neither writes an audit row. A due sweep is never idle."""
        if self.sweep or sweep_due:
            return False
        state = self.state(stream)
        if stream.vouched_by and state.history_complete and not state.pass_open and self.inbox_vouches(stream):
            self.dormant.append(stream.key)
            return True
        if (self.honour_backoff and self.account.provider in BILLED and state.next_poll_at is not None
                and not state.pass_open and state.next_poll_at > self.now):
            self.not_due.append(stream.key)
            return True
        return False

    def park(self, stream: Stream, budget: Budget, wait_s: float) -> bool:
        """True when the account is parked or stopped (rate limit past the run's budget, daily budget,
        an account-level failure): the stream's job row is queued, no request is made. `wait_s`: how
        long the account's rate-limit state says to wait now."""
        if self.parked is None and wait_s > min(self.max_wait_s, budget.remaining()):
            self.parked = Park(StreamStatus.RATE_LIMITED, "rate_limited",
                               self.now + timedelta(seconds=math.ceil(wait_s)))
        if self.parked is None and self.over_budget():
            self.parked = Park(StreamStatus.BUDGET_EXHAUSTED, "budget_exhausted", self.budget_frees_at())
        if self.parked is None:
            return False
        self.skips.append((stream, AuditEntry(
            run_id="", row_kind="job", job_status=self.parked.status.value, started_at=writes.utcnow(),
            error_code=self.parked.error_code, retry_at=self.parked.retry_at)))
        return True

    # ------------------------------------------------------------------ the daily budget
    def over_budget(self) -> bool:
        cap = self.account.daily_budget
        return cap is not None and self.spent + self.charged + worst_request_cost(self.account) > cap

    def budget_frees_at(self) -> datetime:
        return (self.oldest_spend or self.now) + DAY

    def charge(self, cost: int) -> None:
        self.charged += cost

    def check_budget(self) -> None:
        """Called before every request of a stream: raises BudgetExhausted (no request spent)."""
        if self.over_budget():
            raise BudgetExhausted(f"account {self.account.key!r} would exceed its daily budget of "
                                  f"{self.account.daily_budget}", requests=0)

    # ------------------------------------------------------------------ after a stream
    def after(self, stream: Stream, res: StreamResult) -> None:
        if res.status is StreamStatus.FAILED and res.error_code in ACCOUNT_LEVEL_CODES:
            self.parked = Park(StreamStatus.SKIPPED, res.error_code)
            log.warning("account %s stopped after %s: %s; its remaining streams are skipped",
                        self.account.key, stream.key, res.error_code)
        elif res.status is StreamStatus.RATE_LIMITED:
            self.parked = Park(StreamStatus.RATE_LIMITED, "rate_limited", res.retry_at)
        elif res.status is StreamStatus.BUDGET_EXHAUSTED:
            self.parked = Park(StreamStatus.BUDGET_EXHAUSTED, "budget_exhausted", res.retry_at)

    def refresh(self, stream_key: str, conn: Connection | None = None) -> None:
        """Re-read one stream's state after it ran (the inbox's covered_at decides what is dormant), on
        `conn` when the caller holds one."""
        if conn is not None:
            self.states[stream_key] = writes.read_state(conn, self.account.key, stream_key)
            return
        with self.engine.connect() as conn:
            self.states[stream_key] = writes.read_state(conn, self.account.key, stream_key)

    def wake(self, stream_keys: list[str]) -> None:
        """The inbox cannot vouch (its pass ended with a suspected gap): open a pass on every stream it
        was vouching for, so each walks down to its own high-water mark, in this run or the next."""
        woken = set(account_state.wake(self.engine, self.account.key, stream_keys))
        for key in woken:
            self.states[key] = replace(self.states[key], pass_open=True)
        if woken:
            log.info("account %s: inbox gap suspected, %d conversation streams woken", self.account.key, len(woken))

    def newly_dormant(self) -> list[str]:
        """The dormant streams whose stored status does not say so yet (after the first no-op run: none)."""
        return [k for k in self.dormant if (self.states.get(k) or StreamState()).last_status != "dormant"]

    def has_writes(self) -> bool:
        return bool(self.skips or self.newly_dormant())

    def close(self, run_id: str, conn: Connection | None = None) -> None:
        """Write the skipped streams' job rows and the newly dormant streams, in `conn`'s transaction when
        given (the caller commits), else in one of their own."""
        skips = [(s, replace(e, run_id=run_id)) for s, e in self.skips]
        account_state.record_skips(conn or self.engine, self.account, skips)
        account_state.mark_dormant(conn or self.engine, self.account.key, self.newly_dormant())
        if self.parked is not None and self.parked.retry_at is not None and self.skips:
            log.warning("account %s %s: %d streams parked without a request; tried again after %s",
                        self.account.key, self.parked.error_code, len(self.skips),
                        self.parked.retry_at.isoformat(timespec="seconds"))


def wait_now(governor: object) -> float:
    wait = getattr(governor, "wait_before_next", None)
    return float(wait(time.time())) if wait is not None else 0.0
