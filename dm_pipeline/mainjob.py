"""`dm-pipeline run`: the main job on whatever is configured (by default, the embedded Postgres and the
simulator). Migrates, registers the accounts as partitions, materializes `dm_history` for each account
through a real Dagster run, and reports from the audit table."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, text

from dm_pipeline.accounts import load_accounts
from dm_pipeline.db.engine import get_engine
from dm_pipeline.db.migrate import upgrade
from dm_pipeline.environment import prepare
from dm_pipeline.models import Account, Provider
from dm_pipeline.settings import Settings, load_settings

SIM_SEED = 7
# The event log keeps every event; the terminal shows only warnings, then our summary.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class StreamSummary:
    account_key: str
    stream_key: str
    status: str
    pages: int
    requests: int
    received: int
    inserted: int
    updated: int
    error_code: str | None

    @property
    def unchanged(self) -> int:
        return self.received - self.inserted - self.updated


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def simulator_credentials(world: Any, account: Account) -> dict[str, str]:
    """The simulator's credentials for one account, under the variable names its entry declares."""
    creds: dict[str, str] = {}
    if account.provider is Provider.X and account.token_env:
        creds[account.token_env] = world.token_for(account.user_id)
    elif account.provider is Provider.XQUIK and account.token_env:
        creds[account.token_env] = world.xquik_key()
    elif account.provider is Provider.GETXAPI:
        if account.token_env:
            creds[account.token_env] = world.getxapi_key()
        if account.auth_token_env:
            creds[account.auth_token_env] = world.getxapi_auth_token(account.user_id)
    return creds


@contextlib.contextmanager
def simulator_if_needed(settings: Settings, accounts: list[Account]) -> Iterator[None]:
    """Serve the simulator when accounts point at its default address and nothing listens there yet.
    Simulator tokens are exported only for accounts that talk to the simulator."""
    sim_base = f"http://127.0.0.1:{settings.simulator_port}"
    on_sim = [a for a in accounts if a.base_url.startswith(sim_base)]
    if not on_sim:
        yield
        return
    from dm_pipeline.simulator import Simulator, World

    world = World(seed=SIM_SEED)
    for account in on_sim:
        for name, value in simulator_credentials(world, account).items():
            os.environ.setdefault(name, value)
    host = urlsplit(sim_base).hostname or "127.0.0.1"
    if not _port_free(host, settings.simulator_port):
        yield  # a simulator (`dm-pipeline simulator serve`) is already there
        return
    with Simulator(world, host=host, port=settings.simulator_port):
        yield


def summarize(engine: Engine, run_ids: list[str]) -> list[StreamSummary]:
    sql = text("""
        SELECT account_key, stream_key,
               max(job_status) FILTER (WHERE row_kind = 'job')           AS status,
               count(*) FILTER (WHERE row_kind = 'page')                  AS pages,
               coalesce(sum(requests) FILTER (WHERE row_kind = 'job'), 0) AS requests,
               coalesce(sum(events_received) FILTER (WHERE row_kind = 'page'), 0) AS received,
               coalesce(sum(events_inserted), 0)                          AS inserted,
               coalesce(sum(events_updated), 0)                           AS updated,
               max(error_code) FILTER (WHERE row_kind = 'job')            AS error_code
        FROM dm_audit.dm_sync_audit WHERE run_id = ANY(:runs)
        GROUP BY account_key, stream_key ORDER BY account_key, stream_key""")
    with engine.connect() as conn:
        return [StreamSummary(**row) for row in conn.execute(sql, {"runs": run_ids}).mappings()]


ANALYST_QUERY = """
SELECT account_key,
       count(*)                                    AS events,
       count(DISTINCT conversation_id)             AS conversations,
       count(*) FILTER (WHERE media IS NOT NULL)   AS with_media,
       to_char(min(created_at), 'YYYY-MM-DD HH24:MI')   AS first_event,
       to_char(max(created_at), 'YYYY-MM-DD HH24:MI')   AS last_event
FROM dm_private.dm_history
GROUP BY account_key ORDER BY account_key"""


def analyst_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(ANALYST_QUERY)).mappings()]


@dataclass
class MainJobResult:
    runs: dict[str, tuple[str, bool]]   # account key -> (Dagster run id, success)
    streams: list[StreamSummary]
    analyst: list[dict[str, object]]


def run_main_job(settings: Settings | None = None, only: list[str] | None = None) -> MainJobResult:
    import dagster as dg

    from dm_pipeline.definitions import defs
    from dm_pipeline.defs.partitions import accounts_partitions

    settings = settings or load_settings()
    env = prepare(settings)
    upgrade(env["DATABASE_URL"])
    accounts = load_accounts(settings.accounts_file)
    if only:
        accounts = [a for a in accounts if a.key in only]
    engine = get_engine(env["DATABASE_URL"])
    runs: dict[str, tuple[str, bool]] = {}
    with simulator_if_needed(settings, accounts), dg.DagsterInstance.get() as instance:
        name = accounts_partitions.name or "accounts"
        known = set(instance.get_dynamic_partitions(name))
        instance.add_dynamic_partitions(name, [a.key for a in accounts if a.key not in known])
        job = defs.resolve_job_def("dm_sync_job")
        for account in accounts:
            result = job.execute_in_process(partition_key=account.key, instance=instance, raise_on_error=False,
                                            tags={"dm_pipeline/trigger": "dm-pipeline run"},
                                            run_config=QUIET_CONSOLE)
            runs[account.key] = (result.run_id, result.success)
    return MainJobResult(runs=runs, streams=summarize(engine, [r for r, _ in runs.values()]),
                         analyst=analyst_rows(engine))
