"""Account-level state in Postgres: the rate-limit window every stream and process of an account shares,
the cost it spent, the batched writes of streams a run did not fetch (dormant, skipped, woken), the state a
run reads for a batch of accounts at once, and the session a stream holds while it syncs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from dm_pipeline.db import writes
from dm_pipeline.db.tables import sync_state
from dm_pipeline.db.writes import AuditEntry, StreamState
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.models import Account, RateLimitInfo, Stream

_COLUMNS = """rl_limit, rl_remaining, extract(epoch FROM rl_reset_at)::float8 AS reset,
               extract(epoch FROM limited_until)::float8 AS until"""
_LOAD = text(f"SELECT {_COLUMNS} FROM dm_private.account_state WHERE account_key = :k")
_LOAD_MANY = text(f"SELECT account_key, {_COLUMNS} FROM dm_private.account_state WHERE account_key = ANY(:keys)")
_SPENT_MANY = text("""
SELECT account_key, coalesce(sum(cost), 0) AS spent, min(finished_at) AS oldest FROM dm_audit.dm_sync_audit
WHERE account_key = ANY(:keys) AND row_kind = 'job' AND finished_at > :since AND cost > 0 GROUP BY account_key""")
# The most restrictive hold wins: two processes may each have been told to wait.
_SAVE = text("""
INSERT INTO dm_private.account_state AS a (account_key, provider, rl_limit, rl_remaining, rl_reset_at,
                                           limited_until, updated_at)
VALUES (:k, :p, :limit, :remaining, to_timestamp(:reset), to_timestamp(:until), now())
ON CONFLICT (account_key) DO UPDATE SET
    provider = EXCLUDED.provider, rl_limit = EXCLUDED.rl_limit, rl_remaining = EXCLUDED.rl_remaining,
    rl_reset_at = EXCLUDED.rl_reset_at,
    limited_until = CASE WHEN a.limited_until > now() THEN greatest(a.limited_until, EXCLUDED.limited_until)
                         ELSE EXCLUDED.limited_until END,
    updated_at = now()""")


class AccountGovernor(Governor):
    """The Governor of one account, loaded from and saved to `dm_private.account_state`: a run that starts
    while the account is known to be limited waits (or parks) without asking the provider again, and
    concurrent processes of one account see each other's windows. Saved at once when the account becomes
    limited, else when the gate asks (`save`), so a no-op stream costs no extra write. `snapshot`: the
    account's row as read for its run's batch of accounts (`snapshots`), instead of a query of its own;
    `batch`: where the routine save at the account's end goes, written with other accounts' (SaveBatch)."""

    def __init__(self, engine: Engine, account: Account, reserve: int = 0,
                 snapshot: AccountSnapshot | None = None, batch: SaveBatch | None = None) -> None:
        super().__init__(reserve)
        self._engine = engine
        self._account = account
        self._batch = batch
        self._read_at = time.monotonic()
        self._dirty = False
        self._save_lock = threading.Lock()
        if snapshot is None:
            self.load()
        else:
            self._apply(snapshot.rate_limit)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def load(self) -> None:
        with self._engine.connect() as conn:
            row = conn.execute(_LOAD, {"k": self._account.key}).mappings().first()
        self._read_at = time.monotonic()
        self._apply(row)

    REFRESH_S = 2.0

    def refresh(self) -> None:
        """Before a stream: re-read the window another process of the account may have learnt meanwhile,
        unless it was read in the last REFRESH_S (the account's short streams one after another, as in a
        first backfill, would read it again for each; this process's own requests are already in it)."""
        if time.monotonic() - self._read_at >= self.REFRESH_S:
            self.load()

    def _apply(self, row: Mapping[Any, Any] | None) -> None:
        if row is None:
            return
        info = None
        if row["rl_remaining"] is not None or row["reset"] is not None:
            info = RateLimitInfo(limit=row["rl_limit"], remaining=row["rl_remaining"], reset_at=row["reset"])
        mine, until = self.snapshot()
        # Keep what this process learnt if it is newer than the stored copy (the reset time moves forward).
        if mine is not None and info is not None and (mine.reset_at or 0) > (info.reset_at or 0):
            info = mine
        stored_until = row["until"]
        self.restore(info, max(filter(None, (until, stored_until)), default=None))

    def observe(self, info: RateLimitInfo | None) -> None:
        super().observe(info)
        if info is None:
            return
        self._dirty = True
        if info.remaining is not None and info.remaining <= self._reserve:
            self.save()

    def hold_until(self, epoch: float) -> None:
        super().hold_until(epoch)
        self._dirty = True
        self.save()

    def save(self, conn: Connection | None = None) -> None:
        """Write the window if it changed: in its own transaction, or in the caller's `conn`."""
        with self._save_lock:
            params = self._take()
            if params is None:
                return
            if conn is None:
                with self._engine.begin() as own:
                    own.execute(_SAVE, params)
            else:
                conn.execute(_SAVE, params)

    def defer_save(self) -> bool:
        """Hand the routine save to the run's batch; False when there is none (or nothing to save)."""
        if self._batch is None or not self._dirty:
            return False
        self._batch.add(self)
        return True

    def _take(self) -> dict[str, Any] | None:
        """The save's parameters, marking the window saved; None when nothing changed."""
        if not self._dirty:
            return None
        info, until = self.snapshot()
        self._dirty = False
        return {"k": self._account.key, "p": self._account.provider.value,
                "limit": info.limit if info else None, "remaining": info.remaining if info else None,
                "reset": info.reset_at if info else None, "until": until}


class SaveBatch:
    """The routine saves of a run's accounts (the window the last response showed), written `size` at a
    time in one transaction, and the rest by `flush` when the run ends: a commit per batch instead of one
    per account. A window that becomes limited is still saved at once (AccountGovernor.observe); a crash
    loses only what the provider reports again on the next request."""

    def __init__(self, engine: Engine, size: int = 64) -> None:
        self._engine, self._size = engine, size
        self._lock = threading.Lock()
        self._pending: list[AccountGovernor] = []

    def add(self, governor: AccountGovernor) -> None:
        with self._lock:
            self._pending.append(governor)
            full = len(self._pending) >= self._size
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        params = []
        for governor in pending:
            with governor._save_lock:
                taken = governor._take()
            if taken is not None:
                params.append(taken)
        if params:
            with self._engine.begin() as conn:
                conn.execute(_SAVE, params)


@dataclass(frozen=True)
class AccountSnapshot:
    """What an account's gate and governor read when its sync starts, read for a batch of accounts at once."""

    states: dict[str, StreamState] = field(default_factory=dict)
    rate_limit: Mapping[Any, Any] | None = None           # its account_state row
    spent: tuple[int, datetime | None] = (0, None)        # cost of its job rows since `since`, the oldest's time


def snapshots(engine: Engine, accounts: Sequence[Account], since: datetime) -> dict[str, AccountSnapshot]:
    """The snapshot of each account, in three queries whatever their number (instead of two or three
    queries, each on a connection of its own, per account)."""
    keys = [a.key for a in accounts]
    budgeted = [a.key for a in accounts if a.daily_budget is not None]
    states: dict[str, dict[str, StreamState]] = {k: {} for k in keys}
    with engine.connect() as conn:
        for row in conn.execute(sync_state.select().where(sync_state.c.account_key.in_(keys))).mappings():
            states[row["account_key"]][row["stream_key"]] = writes._state_of(row)
        limits = {r["account_key"]: r for r in conn.execute(_LOAD_MANY, {"keys": keys}).mappings()}
        spent = {r["account_key"]: (int(r["spent"]), r["oldest"]) for r in conn.execute(
            _SPENT_MANY, {"keys": budgeted, "since": since}).mappings()} if budgeted else {}
    return {k: AccountSnapshot(states[k], limits.get(k), spent.get(k, (0, None))) for k in keys}


def spent_since(conn: Connection, account_key: str, since: datetime) -> tuple[int, datetime | None]:
    """(cost the account's job rows recorded since `since`, the oldest such row's time)."""
    row = conn.execute(text("SELECT coalesce(sum(cost), 0), min(finished_at) FROM dm_audit.dm_sync_audit "
                            "WHERE account_key = :k AND row_kind = 'job' AND finished_at > :since AND cost > 0"),
                       {"k": account_key, "since": since}).one()
    return int(row[0]), row[1]


def mark_dormant(engine: Engine | Connection, account_key: str, stream_keys: Sequence[str]) -> None:
    """Streams the inbox vouched for this run. Written only when they were not dormant already, so a run
    over an account of a thousand dormant conversations writes nothing. `engine` may be a connection in a
    transaction (the caller's)."""
    if not stream_keys:
        return
    with _transaction(engine) as conn:
        conn.execute(text("UPDATE dm_private.sync_state SET last_status = 'dormant', last_error_code = NULL, "
                          "updated_at = now() WHERE account_key = :k AND stream_key = ANY(:keys) "
                          "AND last_status IS DISTINCT FROM 'dormant'"), {"k": account_key, "keys": list(stream_keys)})


def wake(engine: Engine, account_key: str, stream_keys: Sequence[str]) -> list[str]:
    """Open a pass (down to its own high-water mark) on each of these streams that has none: the inbox can
    no longer vouch for them. Persisted, so a run that cannot finish them leaves them awake for the next."""
    if not stream_keys:
        return []
    with engine.begin() as conn:
        return list(conn.scalars(text("""
            UPDATE dm_private.sync_state SET pass_started_at = now(), pass_cursor = NULL, pass_newest_id = NULL,
                   pass_stop_id = high_water_id, pass_pages = 0, pass_sweep = false, updated_at = now()
            WHERE account_key = :k AND stream_key = ANY(:keys) AND pass_started_at IS NULL
            RETURNING stream_key"""), {"k": account_key, "keys": list(stream_keys)}))


def record_skips(engine: Engine | Connection, account: Account, skips: Sequence[tuple[Stream, AuditEntry]]) -> None:
    """The job rows of streams a run parked or skipped without a request, with their status, in one
    transaction (the caller's, when `engine` is a connection)."""
    if not skips:
        return
    with _transaction(engine) as conn:
        for stream, entry in skips:
            writes.insert_audit(conn, account, stream, entry)
        conn.execute(text("UPDATE dm_private.sync_state AS s SET last_status = v.status, last_error_code = v.code, "
                          "updated_at = now() FROM unnest(CAST(:keys AS text[]), CAST(:statuses AS text[]), "
                          "CAST(:codes AS text[])) AS v(key, status, code) "
                          "WHERE s.account_key = :k AND s.stream_key = v.key"),
                     {"k": account.key, "keys": [s.key for s, _ in skips],
                      "statuses": [e.job_status for _, e in skips], "codes": [e.error_code for _, e in skips]})


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction of its own on an engine; a connection is used as it is (its caller commits)."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn
