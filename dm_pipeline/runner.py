"""Sync many accounts in one process: concurrently, bounded per provider (each provider rate-limits and
bills per account, and one slow provider must not starve the others). No Dagster import."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from dm_pipeline.clients import TokenLookup, build_client, env_token, http_client
from dm_pipeline.db import account_state
from dm_pipeline.db.account_state import AccountGovernor, AccountSnapshot, SaveBatch
from dm_pipeline.db.writes import connection_lost
from dm_pipeline.errors import DatabaseUnavailable, DmPipelineError, PageCommitError
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, StreamResult, StreamStatus, SyncResult
from dm_pipeline.providers.x_api import Windows
from dm_pipeline.settings import load_settings
from dm_pipeline.sync import PageHook, RunLimits, StreamStartHook, sync_account

# Accounts of one provider syncing at once in a process: an account mostly waits (on its provider, on
# Postgres). Each holds up to two connections while it syncs (its stream's session, its page writer), so
# MAX_WORKERS bounds a process's share of Postgres's connections whatever its providers.
PER_PROVIDER = 8
MAX_WORKERS = 10
SNAPSHOT_BATCH = 64  # accounts whose stored state one set of queries reads, as the first of them starts


def workers(accounts: int, providers: int = 1, per_provider: int = PER_PROVIDER) -> int:
    return max(1, min(accounts, per_provider * providers, MAX_WORKERS))


# A run's engine: two connections per syncing account, two for the run's own reads and writes. One pool per
# process whatever the run's size (a pool opens connections as they are needed, and keeps them).
POOL_SIZE = 2 * MAX_WORKERS + 2


class Snapshots:
    """The stored state of a run's accounts (stream states, rate-limit window, spend), read in batches of
    SNAPSHOT_BATCH in the order the accounts start: three queries per batch instead of two or three per
    account, each on a connection of its own. A batch is read when its first account starts, so what an
    account's gate sees is at most a batch of syncs old; each stream re-reads its own state under its lock."""

    def __init__(self, engine: Engine, accounts: Sequence[Account], limits: RunLimits) -> None:
        self._engine, self._accounts, self._limits = engine, list(accounts), limits
        self._index = {a.key: i for i, a in enumerate(self._accounts)}
        self._lock = threading.Lock()
        self._read: set[int] = set()
        self._ready: dict[str, AccountSnapshot] = {}

    def take(self, account: Account) -> AccountSnapshot | None:
        i = self._index.get(account.key)
        if i is None:
            return None
        with self._lock:
            batch = i // SNAPSHOT_BATCH
            if batch not in self._read:
                self._read.add(batch)
                chunk = self._accounts[batch * SNAPSHOT_BATCH:(batch + 1) * SNAPSHOT_BATCH]
                self._ready.update(account_state.snapshots(self._engine, chunk,
                                                           self._limits.clock() - timedelta(days=1)))
            return self._ready.pop(account.key, None)


def sync_accounts(engine: Engine, accounts: Sequence[Account], run_id: str, limits: RunLimits, *,
                  per_provider: int = PER_PROVIDER, lookup: TokenLookup = env_token,
                  on_page: PageHook | None = None,
                  on_stream_start: StreamStartHook | None = None,
                  on_done: Callable[[SyncResult], None] | None = None,
                  policy: Callable[[Account], RetryPolicy] | None = None) -> list[SyncResult]:
    """Results in the order of `accounts`. An account whose client cannot even be built (bad config)
    gets a failed result with the error code; the others still run. `policy(account)`, when given, is
    the account's HTTP retry policy (the CLI wraps its `sleep` to show rate-limit waits)."""
    gates: dict[str, threading.Semaphore] = {}
    for account in accounts:
        gates.setdefault(account.provider.value, threading.Semaphore(per_provider))
    snapshots = Snapshots(engine, accounts, limits)
    saves = SaveBatch(engine)
    settings = load_settings()  # once, not per account (it resolves paths)
    windows = Windows(settings.x_inbox_window_days, settings.x_conversation_window_days)

    def one(account: Account) -> SyncResult:
        with gates[account.provider.value], http_client() as http:
            try:
                snapshot = snapshots.take(account)
                governor = AccountGovernor(engine, account, snapshot=snapshot, batch=saves) \
                    if snapshot is not None else None
                client = build_client(account, http, lookup, engine=engine,
                                      policy=policy(account) if policy else None, windows=windows, governor=governor)
                result = sync_account(engine, client, run_id, limits, on_page, on_stream_start, snapshot)
            except DatabaseUnavailable:
                raise  # not this account's failure: the whole run stops, and says why
            except (OperationalError, InterfaceError) as exc:
                if not connection_lost(exc):
                    raise
                raise DatabaseUnavailable(f"lost the connection to Postgres while preparing {account.key} "
                                          f"({type(getattr(exc, 'orig', None) or exc).__name__}); nothing of it "
                                          "was fetched, the next run starts it") from None
            except DmPipelineError as exc:
                result = SyncResult(account.key, account.provider.value, run_id, [StreamResult(
                    account.key, "*", status=StreamStatus.FAILED, error_code=exc.error_code)])
            except PageCommitError as exc:
                # Its stream's job row is written; the other accounts of the run go on.
                result = SyncResult(account.key, account.provider.value, run_id, [StreamResult(
                    account.key, exc.stream_key, status=StreamStatus.FAILED, error_code="commit_failed",
                    detail=str(exc))])
        if on_done:
            on_done(result)
        return result

    try:
        if len(accounts) <= 1:
            results = [one(a) for a in accounts]
        else:
            with ThreadPoolExecutor(max_workers=workers(len(accounts), len(gates), per_provider),
                                    thread_name_prefix="dm-sync") as pool:
                results = list(pool.map(one, accounts))
    except BaseException:
        with contextlib.suppress(Exception):  # keep the error that got us here
            saves.flush()
        raise
    saves.flush()
    return results
