"""`dm-pipeline run`: the main job on whatever is configured (by default, the embedded Postgres and the
simulator). Migrates, registers the accounts as partitions, materializes `dm_history` for each account
through a real Dagster run, and reports from the audit table."""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from dm_pipeline.accounts import is_simulator_url, load_accounts
from dm_pipeline.db.engine import get_engine
from dm_pipeline.db.migrate import upgrade
from dm_pipeline.environment import prepare
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account, Provider
from dm_pipeline.settings import Settings, load_settings

SIM_SEED = 7
SIM_HOST = "127.0.0.1"
PROOF_TIMEOUT_S = 5.0
PROOF_MAX_BYTES = 4096
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


def simulator_accounts(settings: Settings, accounts: list[Account]) -> list[Account]:
    """The accounts whose base_url is the simulator's address: http://127.0.0.1:<DM_SIMULATOR_PORT>, scheme,
    host and port compared parsed (not as a string prefix: http://127.0.0.1:87650 is another port)."""
    return [a for a in accounts if is_simulator_url(a.base_url, settings.simulator_port)]


def _challenge(host: str, port: int, nonce: str) -> dict[str, Any] | None:
    """The listener's JSON answer to GET /_sim/prove?nonce=…, or None (no HTTP, not 200, not JSON, too big,
    too slow). The request carries the nonce only: no credential, no proxy from the environment."""
    import httpx

    from dm_pipeline.simulator.control import PROVE_PATH

    try:
        with httpx.Client(timeout=PROOF_TIMEOUT_S, follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", f"http://{host}:{port}{PROVE_PATH}", params={"nonce": nonce}) as reply:
            if reply.status_code != 200:
                return None
            body = b""
            for chunk in reply.iter_bytes():
                body += chunk
                if len(body) > PROOF_MAX_BYTES:
                    return None
        answer = json.loads(body)
    except (httpx.HTTPError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def prove_simulator(port: int, *, host: str = SIM_HOST, seed: int = SIM_SEED) -> None:
    """Return only if the listener on host:port proves to be this project's simulator serving `seed`'s
    world: it answers a fresh random nonce with the HMAC only the simulator derives (control.proof_for).
    Anything else is a ConfigError, and it has received nothing but the nonce."""
    from dm_pipeline.simulator.control import PROVE_PATH, proof_for

    nonce = secrets.token_hex(16)
    answer = _challenge(host, port, nonce) or {}
    proof = answer.get("proof")

    def proves(candidate: int) -> bool:
        return isinstance(proof, str) and hmac.compare_digest(proof.encode(), proof_for(candidate, nonce).encode())

    if proves(seed):
        return
    other = answer.get("seed")
    if isinstance(other, int) and not isinstance(other, bool) and other != seed and proves(other):
        raise ConfigError(
            f"port {port} is in use by a dm_pipeline simulator serving seed {other}'s world, but `run` and `sync` "
            f"give the accounts on it the credentials of seed {seed}'s: they would be refused. Fix: stop it, or "
            f"serve it with `dm-pipeline simulator serve --seed {seed}`, or set DM_SIMULATOR_PORT to a free port")
    raise ConfigError(
        f"port {port} is in use by something that is not the dm_pipeline simulator; stop it or set "
        f"DM_SIMULATOR_PORT (to a free port, with the accounts' base_url on http://{host}:<that port>). It did not "
        f"answer the simulator's identity challenge (GET {PROVE_PATH}), so no credentials were sent to it")


@contextlib.contextmanager
def simulator_if_needed(settings: Settings, accounts: list[Account]) -> Iterator[None]:
    """Serve the simulator when accounts point at its address, and export its credentials for them (and
    only them). If the port is taken, the listener must prove to be the simulator of the same world
    (`dm-pipeline simulator serve`, seed 7): anything else is a ConfigError before any credential is set
    or sent."""
    on_sim = simulator_accounts(settings, accounts)
    if not on_sim:
        yield
        return
    from dm_pipeline.simulator import Simulator, World

    port = settings.simulator_port
    world = World(seed=SIM_SEED)
    served: Simulator | None = None
    try:
        # Binding decides (not a connect probe first): no window for another process to take the port.
        served = Simulator(world, host=SIM_HOST, port=port).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise ConfigError(f"cannot serve the simulator on {SIM_HOST}:{port} ({exc.strerror}). Fix: set "
                              "DM_SIMULATOR_PORT to a free port") from None
        prove_simulator(port)  # something listens there: it gets the credentials only if it is the simulator
    try:
        for account in on_sim:
            for name, value in simulator_credentials(world, account).items():
                os.environ.setdefault(name, value)
        yield
    finally:
        if served is not None:
            served.stop()


def summarize(engine: Engine, run_ids: list[str]) -> list[StreamSummary]:
    sql = text("""
        SELECT account_key, stream_key,
               max(job_status) FILTER (WHERE row_kind = 'job')           AS status,
               -- a no-op page writes no row: the job row counts it (folded_pages) and holds the totals
               count(*) FILTER (WHERE row_kind = 'page') + coalesce(sum(folded_pages), 0) AS pages,
               coalesce(sum(requests) FILTER (WHERE row_kind = 'job'), 0) AS requests,
               coalesce(sum(events_received) FILTER (WHERE row_kind = 'job'), 0) AS received,
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
    dormant: dict[str, int] = field(default_factory=dict)  # account -> X conversation streams the inbox vouched


def dormant_streams(engine: Engine, account_keys: list[str]) -> dict[str, int]:
    """Per account, the streams whose last status is dormant (no request, no audit row: not in `streams`)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT account_key, count(*) FROM dm_private.sync_state WHERE last_status = "
                                 "'dormant' AND account_key = ANY(:keys) GROUP BY 1 ORDER BY 1"),
                            {"keys": account_keys})
        return {key: int(n) for key, n in rows}


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
                         analyst=analyst_rows(engine), dormant=dormant_streams(engine, list(runs)))
