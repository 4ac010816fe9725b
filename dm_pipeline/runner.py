"""Sync many accounts in one process: concurrently, bounded per provider (each provider rate-limits and
bills per account, and one slow provider must not starve the others). No Dagster import."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from dm_pipeline.clients import TokenLookup, build_client, env_token, http_client
from dm_pipeline.db.writes import connection_lost
from dm_pipeline.errors import DatabaseUnavailable, DmPipelineError, PageCommitError
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, StreamResult, StreamStatus, SyncResult
from dm_pipeline.sync import PageHook, RunLimits, StreamStartHook, sync_account


def sync_accounts(engine: Engine, accounts: Sequence[Account], run_id: str, limits: RunLimits, *,
                  per_provider: int = 4, lookup: TokenLookup = env_token,
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

    def one(account: Account) -> SyncResult:
        with gates[account.provider.value], http_client() as http:
            try:
                client = build_client(account, http, lookup, engine=engine,
                                      policy=policy(account) if policy else None)
                result = sync_account(engine, client, run_id, limits, on_page, on_stream_start)
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

    if len(accounts) <= 1:
        return [one(a) for a in accounts]
    workers = min(len(accounts), per_provider * len(gates))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dm-sync") as pool:
        return list(pool.map(one, accounts))
