"""The fault matrix: every simulator fault x provider route, each cell with its expected outcome.

Outcomes:
- `ok`            retried where needed, then the stream succeeded and equals the truth
- `ok_flagged`    succeeded; some rows were sanitized (NUL / lone surrogates replaced) and flagged
- `ok_partial`    succeeded; fields the provider left out are NULL, every ID is stored
- `gap`           succeeded, with `gap_suspected` recorded (X /2/dm_events 30-day window)
- `rate_limited`  the provider's wait exceeds the run's budget: the pass is parked, the run is not failed
- `failed:<code>` a typed failure: the job audit row carries <code>, nothing of the failing page is stored
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from dm_pipeline.clients import build_client, http_client
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, OAuthConfig, Provider, StreamResult, StreamStatus
from dm_pipeline.sync import RunLimits, sync_account
from tests.integration.helpers import truth_rows, warehouse_rows

ROUTES = {"x": "dm_events", "x_conversation": "dm_conversation_with", "xquik": "xquik_history",
          "getxapi": "getxapi_list"}


@dataclass(frozen=True)
class Cell:
    provider: str
    fault: str
    expect: str
    params: dict[str, Any] = field(default_factory=dict)
    count: int = 1

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.fault}"


# fault -> (expected outcome, params, count); per-provider overrides below.
COMMON: dict[str, tuple[str, dict[str, Any], int]] = {
    "429_retry_after": ("ok", {"retry_after": 1}, 2),
    "429_no_headers": ("ok", {}, 2),
    "503": ("ok", {}, 3),
    "500": ("failed:http_500", {}, 1),
    "slow": ("ok", {"delay_s": 1.5}, 1),
    "drop": ("ok", {}, 1),
    "truncated": ("ok", {}, 1),
    "malformed_json": ("failed:malformed_response", {}, 1),
    "html": ("failed:http_502", {"status": 502}, 1),
    "cursor_loop": ("failed:cursor_loop", {}, 1),
    "empty_page": ("ok", {}, 1),
    "duplicates": ("ok", {"overlap": 3}, 1),
    "nul_text": ("ok_flagged", {}, 1),
    "missing_optional": ("ok_partial", {}, 1),
    "expired_cursor": ("ok", {}, 1),
}
SPECIFIC: dict[str, dict[str, tuple[str, dict[str, Any], int]]] = {
    "x": {"401": ("failed:unauthorized", {}, 1), "403": ("failed:client_forbidden", {}, 1),
          "dm_not_permitted": ("failed:not_authorized_for_resource", {}, 1),
          "429_no_headers": ("ok", {"rate_headers": False}, 2), "window_gap": ("gap", {}, 0),
          "429_reset_beyond_budget": ("rate_limited", {"reset_in": 3600}, 1),
          "401_oauth_refresh": ("ok", {}, 1)},
    "x_conversation": {"401": ("failed:unauthorized", {}, 1), "403": ("failed:client_forbidden", {}, 1),
                       "429_no_headers": ("ok", {"rate_headers": False}, 2)},
    "xquik": {"401": ("failed:unauthenticated", {}, 1), "500": ("failed:internal_error", {}, 1),
              "no_credits": ("failed:no_credits", {}, 1),
              "dm_not_permitted": ("failed:dm_not_permitted", {}, 1),
              "account_restricted": ("failed:account_restricted", {}, 1),
              "account_needs_reauth": ("failed:account_needs_reauth", {}, 1),
              "x_dm_not_allowed": ("failed:x_dm_not_allowed", {}, 1)},
    "getxapi": {"401": ("failed:invalid_auth_token", {}, 1)},
}


def cells() -> list[Cell]:
    out = []
    for provider in ROUTES:
        for fault, (expect, params, count) in {**COMMON, **SPECIFIC.get(provider, {})}.items():
            out.append(Cell(provider, fault, expect, params, count))
    return out


@dataclass
class Observed:
    outcome: str
    detail: str = ""


def account_for(provider: str, sim: Any, env: dict[str, str]) -> tuple[Account, str, list[str]]:
    """(account, stream key under test, truth routes of all its streams) for one provider route."""
    world = sim.world
    uid = world.accounts()[0]
    peer = next(next(m for m in c.members if m != uid) for c in world.conversations_of(uid) if not c.is_group)
    if provider in ("x", "x_conversation"):
        env["FM_X_TOKEN"] = world.token_for(uid)
        base = Account(key=f"fm-{provider}", provider=Provider.X, user_id=uid, base_url=sim.url,
                       token_env="FM_X_TOKEN", page_size=25)
        if provider == "x":
            return base, "dm_events", ["dm_events"]
        return (replace(base, participant_ids=(peer,)), f"with:{peer}",
                ["dm_events", f"dm_conversation_with:{peer}"])
    if provider == "xquik":
        env["FM_XQUIK_KEY"] = world.xquik_key()
        return (Account(key="fm-xquik", provider=Provider.XQUIK, user_id=uid, base_url=sim.base_url("xquik"),
                        token_env="FM_XQUIK_KEY", handle=world.xquik_handle(uid), partners=(peer,)),
                f"with:{peer}", [f"xquik:{peer}"])
    env["FM_GETXAPI_KEY"], env["FM_AUTH"] = world.getxapi_key(), world.getxapi_auth_token(uid)
    return (Account(key="fm-getxapi", provider=Provider.GETXAPI, user_id=uid, base_url=sim.base_url("getxapi"),
                    token_env="FM_GETXAPI_KEY", auth_token_env="FM_AUTH", tabs=("all",), page_size=20),
            "tab:all", ["getxapi:all"])


def _stream(results: list[StreamResult], key: str) -> StreamResult:
    return next(s for s in results if s.stream_key == key)


def run_cell(cell: Cell, engine: Engine, sim: Any, env: dict[str, str]) -> Observed:
    account, stream_key, truth_routes = account_for(cell.provider, sim, env)
    route = ROUTES[cell.provider]
    uid = account.user_id
    lookup = env.get
    waits: list[float] = []

    def sync(limits: RunLimits | None = None) -> StreamResult:
        with http_client(timeout_s=1.0) as http:
            client = build_client(account, http, lookup, policy=RetryPolicy(sleep=waits.append), engine=engine)
            result = sync_account(engine, client, f"fm-{uuid.uuid4()}", limits or RunLimits())
        return _stream(result.streams, stream_key)

    fault = cell.fault
    if fault in ("expired_cursor", "cursor_loop"):  # both need a stored cursor: park a pass after one page
        sync(RunLimits(max_pages=1))
        sim.faults.inject(uid, route, fault, count=1)
    elif fault == "window_gap":  # the stored high-water event ages out of the 30-day window before the next run
        sync()
        sim.world.advance(uid, 3, seconds=timedelta(days=45).total_seconds())
        with engine.begin() as conn:  # the same 45 days pass for the warehouse: its last pass is that old
            conn.execute(text("UPDATE dm_private.sync_state SET covered_at = covered_at - interval '45 days' "
                              "WHERE account_key = :k"), {"k": account.key})
    elif fault == "401_oauth_refresh":
        access, refresh = sim.oauth.issue(uid)
        from cryptography.fernet import Fernet

        env.update(FM_ACCESS=access, FM_REFRESH=refresh, FM_CLIENT="fm-client",
                   DM_PIPELINE_TOKEN_KEY=Fernet.generate_key().decode())
        account = replace(account, token_env="FM_ACCESS",
                          oauth=OAuthConfig(client_id_env="FM_CLIENT", refresh_token_env="FM_REFRESH"))
        sim.oauth.expire(uid)
    else:
        kind = {"429_retry_after": "429", "429_no_headers": "429", "429_reset_beyond_budget": "429"}.get(fault, fault)
        sim.faults.inject(uid, route, kind, count=cell.count, **cell.params)

    stream = sync()
    truth = {k: v for r in truth_routes for k, v in truth_rows(sim.world.truth(uid, r)).items()}
    stored = warehouse_rows(engine, account.key)
    with engine.connect() as conn:
        job = conn.execute(text("SELECT job_status, error_code, run_id FROM dm_audit.dm_sync_audit "
                                "WHERE row_kind = 'job' AND account_key = :k AND stream_key = :s "
                                "ORDER BY audit_id DESC LIMIT 1"), {"k": account.key, "s": stream_key}).one()
        pages_written = conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit WHERE run_id = :r "
                                         "AND stream_key = :s AND row_kind = 'page'"),
                                    {"r": job.run_id, "s": stream_key})
        flagged = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history WHERE sanitized AND account_key = :k"),
                              {"k": account.key})
    if stream.status is StreamStatus.FAILED:
        detail = f"job row {job.job_status}/{job.error_code}"
        # A loop is detected after its page committed (kept by design); any other failure writes nothing.
        if fault != "cursor_loop" and pages_written:
            return Observed("failed:half_written", detail)
        return Observed(f"failed:{stream.error_code}" if job.error_code == stream.error_code else "failed:unaudited",
                        detail)
    if stream.status is not StreamStatus.SUCCEEDED:
        return Observed(stream.status.value)
    if stream.gap_suspected:
        return Observed("gap", f"{len(stored)} stored")
    if set(stored) != set(truth):
        return Observed("mismatch", f"missing {len(set(truth) - set(stored))}, extra {len(set(stored) - set(truth))}")
    if flagged:
        return Observed("ok_flagged", f"{flagged} rows flagged")
    if stored != truth:
        return Observed("ok_partial", f"{sum(stored[k] != truth[k] for k in truth)} rows with NULL fields")
    return Observed("ok", f"{len(stored)} rows, {len(waits)} waits")
