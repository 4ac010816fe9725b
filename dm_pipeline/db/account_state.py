"""Account-level state in Postgres: the rate-limit window every stream and process of an account shares,
the cost it spent, and the batched writes of streams a run did not fetch (dormant, skipped, woken)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from dm_pipeline.db import writes
from dm_pipeline.db.writes import AuditEntry
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.models import Account, RateLimitInfo, Stream

_LOAD = text("""SELECT rl_limit, rl_remaining, extract(epoch FROM rl_reset_at)::float8 AS reset,
                       extract(epoch FROM limited_until)::float8 AS until
                FROM dm_private.account_state WHERE account_key = :k""")
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
    limited, else when the gate asks (`save`), so a no-op stream costs no extra write."""

    def __init__(self, engine: Engine, account: Account, reserve: int = 0) -> None:
        super().__init__(reserve)
        self._engine = engine
        self._account = account
        self._dirty = False
        self._save_lock = threading.Lock()
        self.load()

    def load(self) -> None:
        with self._engine.connect() as conn:
            row = conn.execute(_LOAD, {"k": self._account.key}).mappings().first()
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

    def save(self) -> None:
        with self._save_lock:
            if not self._dirty:
                return
            info, until = self.snapshot()
            with self._engine.begin() as conn:
                conn.execute(_SAVE, {
                    "k": self._account.key, "p": self._account.provider.value,
                    "limit": info.limit if info else None, "remaining": info.remaining if info else None,
                    "reset": info.reset_at if info else None, "until": until})
            self._dirty = False


def spent_since(conn: Connection, account_key: str, since: datetime) -> tuple[int, datetime | None]:
    """(cost the account's job rows recorded since `since`, the oldest such row's time)."""
    row = conn.execute(text("SELECT coalesce(sum(cost), 0), min(finished_at) FROM dm_audit.dm_sync_audit "
                            "WHERE account_key = :k AND row_kind = 'job' AND finished_at > :since AND cost > 0"),
                       {"k": account_key, "since": since}).one()
    return int(row[0]), row[1]


def mark_dormant(engine: Engine, account_key: str, stream_keys: Sequence[str]) -> None:
    """Streams the inbox vouched for this run. Written only when they were not dormant already, so a run
    over an account of a thousand dormant conversations writes nothing."""
    if not stream_keys:
        return
    with engine.begin() as conn:
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


def record_skips(engine: Engine, account: Account, skips: Sequence[tuple[Stream, AuditEntry]]) -> None:
    """The job rows of streams a run parked or skipped without a request, with their status, in one
    transaction."""
    if not skips:
        return
    with engine.begin() as conn:
        for stream, entry in skips:
            writes.insert_audit(conn, account, stream, entry)
        conn.execute(text("UPDATE dm_private.sync_state AS s SET last_status = v.status, last_error_code = v.code, "
                          "updated_at = now() FROM unnest(CAST(:keys AS text[]), CAST(:statuses AS text[]), "
                          "CAST(:codes AS text[])) AS v(key, status, code) "
                          "WHERE s.account_key = :k AND s.stream_key = v.key"),
                     {"k": account.key, "keys": [s.key for s, _ in skips],
                      "statuses": [e.job_status for _, e in skips], "codes": [e.error_code for _, e in skips]})
