"""`dm-pipeline status`: where every account x stream stands, from `dm_private.sync_state` and the audit.

Per stream: the last job's status and time, the last success and the lag since, the high-water mark (its
ID and the `created_at` of that event), the pass in progress (a long backfill or a parked pass), and the
last error code with its time. IDs, times and codes only: never message text.

`ERROR_HELP` explains every error code the engine can write to the audit (also the README's
troubleshooting table, which a test keeps in step with it).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text


def _api_key_help(provider: str) -> tuple[str, str]:
    """A billed provider's 401 for its API key: the same meaning and fix for each."""
    return (f"{provider}: the API key is missing or invalid (401)",
            f"export the key from the {provider} dashboard under the account's `token_env`")


# code -> (what it means, how to fix it). Keep in step with README.md "Troubleshooting".
ERROR_HELP: dict[str, tuple[str, str]] = {
    # X API v2
    "client_forbidden": ("X: the app is not enrolled for this endpoint (403 client-not-enrolled)",
                         "attach the X app to a Project with DM access in the developer portal"),
    "unsupported_authentication": ("X: an app-only bearer token was used; DMs need a user-context token",
                                   "use an OAuth 2.0 user access token (Authorization Code + PKCE)"),
    "unauthorized": ("X: the access token expired (2 hours) or was revoked (401)",
                     "add an `oauth` block and dm-pipeline accounts connect KEY (tokens then refresh "
                     "themselves), or export a fresh user token"),
    "usage_capped": ("X: the app's usage cap for the period is spent",
                     "wait for the cap to reset (the audit row's time + the period) or raise the plan"),
    "invalid_request": ("X: a request parameter was refused (400)",
                        "check page_size (1-100) and the IDs under `conversations` in the accounts file"),
    "not_authorized_for_resource": ("X: the account may not read this conversation (not a participant)",
                                    "remove the conversation from `conversations`, or sync it from a participant"),
    "resource_not_found": ("X: the conversation or participant does not exist (any more)",
                           "remove it from `conversations` in the accounts file"),
    "internal_error": ("the provider failed internally (500)", "nothing: the next run tries again; report it if "
                       "it persists"),
    "forbidden": ("the provider refused the request (403)", "check the account's access and the app's permissions"),
    "not_found": ("the provider does not know this resource (404)", "check the IDs in the accounts file"),
    "refresh_rejected": ("X refused the refresh token: revoked, already used, or a wrong client ID / secret. "
                         "It is never posted again",
                         "dm-pipeline accounts connect KEY (its new pair replaces the refused one); if the client "
                         "was refused, fix the client ID / secret variables first"),
    "refresh_unparseable": ("X answered the token refresh with something that is not a token: the refresh "
                            "token may have been spent", "dm-pipeline accounts connect KEY"),
    "partial_error": ("X answered 200 with `errors` and no data", "check the conversation IDs and the account's "
                      "access; the next run tries again"),
    "refresh_failed": ("the token refresh could not reach X, or X's token endpoint failed (5xx, 429)",
                       "nothing: the next run tries again"),
    "token_expired": ("X: the access token expired and no refresh token is stored",
                      "dm-pipeline accounts connect KEY (it asks for offline.access, so a refresh token comes "
                      "with the pair)"),
    "invalid_cursor": ("the provider rejected the stored pagination cursor twice",
                       "nothing usually: the next run restarts the pass from the top (dedupe absorbs overlap)"),
    # Xquik
    "account_required": ("Xquik: no connected account was passed (`account`)", "set `handle` for the account"),
    "unauthenticated": _api_key_help("Xquik"),
    "no_subscription": ("Xquik: no active subscription (402)", "subscribe on the Xquik dashboard"),
    "subscription_inactive": ("Xquik: the subscription is inactive (402)", "renew it on the Xquik dashboard"),
    "no_credits": ("the provider's credits are spent (402)",
                   "top up (Xquik bills 1 credit per message returned; GetXAPI per call)"),
    "insufficient_credits": ("Xquik: not enough credits for this page (402)", "top up credits"),
    "dm_not_permitted": ("Xquik: X refused the read: the account is not in this conversation, or needs reauth",
                         "check `partners`; reconnect the account on the Xquik dashboard"),
    "account_restricted": ("Xquik: the connected X account is suspended, locked or restricted",
                           "use a different connected account"),
    "account_needs_reauth": ("Xquik: the connected account must be reauthenticated",
                             "reconnect it from the Xquik dashboard"),
    "account_not_found": ("Xquik: no connected account has this handle",
                          "connect it on the Xquik dashboard, or fix `handle`"),
    "x_dm_not_allowed": ("Xquik: X does not allow DMs between these accounts (422)",
                         "do not retry unchanged: remove the partner or use another permitted account"),
    "x_rejected": ("Xquik: X rejected the request (422)", "check the partner and the account's state"),
    "invalid_input": ("Xquik: a parameter was refused (400)", "check `handle` and `partners`"),
    # GetXAPI
    "invalid_tab": ("GetXAPI: an inbox tab was refused", "use tabs among all, requests, hidden"),
    "invalid_auth_token": ("GetXAPI: the account's auth_token cookie is invalid or expired (401)",
                           "copy a fresh auth_token cookie from the account's x.com session and export it"),
    "invalid_api_key": _api_key_help("GetXAPI"),
    # the engine
    "cursor_loop": ("the provider repeated a pagination cursor", "nothing to repair: committed pages are kept; "
                    "report it to the provider if it persists"),
    "empty_page_loop": ("too many consecutive empty pages that still carried a cursor",
                        "committed pages are kept; the next run resumes. Report it if it persists"),
    "malformed_response": ("the provider answered something that is not its documented JSON",
                           "usually a proxy or an outage: the asset retries; check base_url if it persists"),
    "transport_error": ("the provider could not be reached (connection error or timeout, after retries)",
                        "check base_url and the network; the next run resumes"),
    "service_unavailable": ("the provider answered 503 on every retry", "nothing: the next run resumes"),
    "request_deadline": ("the provider did not answer completely within the request deadline (a stalled or "
                         "trickling connection); the account's other streams were skipped",
                         "nothing usually: the next run tries again; raise DM_PIPELINE_REQUEST_DEADLINE_S if the "
                         "provider is merely slow"),
    "response_too_large": ("the provider sent a body larger than DM_PIPELINE_MAX_BODY_MB",
                           "check base_url (a proxy page?); raise DM_PIPELINE_MAX_BODY_MB if pages are that big"),
    "commit_failed": ("Postgres refused a page commit (the log names the constraint, never a row value)",
                      "the committed pages stand and the next run resumes; check the database if it persists"),
    "pass_abandoned": ("a pass parked run after run without storing anything (endless distinct cursors) and "
                       "was abandoned where it got to, so newer messages are not held back; flagged as a gap",
                       "run `dm-pipeline sync --sweep` for the account to re-read the range; report it to the "
                       "provider"),
    "oversized_page": ("a page carried more events than max_results asked for (flagged on its audit row)",
                       "nothing: the events are stored; report it to the provider if it persists"),
    "rate_limited": ("the account's rate-limit window is spent past the run's budget: its streams are parked "
                     "without a request until the stored reset time",
                     "nothing: a run after the reset resumes (raise DM_PIPELINE_TIME_BUDGET_S to wait instead)"),
    "budget_exhausted": ("the account's daily budget (`budget:` in the accounts file) would be exceeded: its "
                         "streams are parked without a request",
                         "nothing: they resume when the rolling 24 hours free enough; raise `budget` to spend more"),
    "gap_suspected": ("/2/dm_events serves 30 days and a pass ended before reaching the last mark",
                      "sync more often than every 30 days; add `conversations: {discover: true}` for full history"),
    "skipped_locked": ("another run was syncing this stream, so this run skipped it", "nothing"),
    "config_error": ("configuration was missing at run time (e.g. an environment variable)",
                     "run `dm-pipeline accounts validate --env` and fix what it reports"),
    "invalid_identifier": ("an ID does not match the provider's pattern", "fix it in the accounts file"),
}


def explain(code: str | None) -> str | None:
    if not code:
        return None
    if code in ERROR_HELP:
        meaning, fix = ERROR_HELP[code]
        return f"{code}: {meaning}. Fix: {fix}"
    if code.startswith("http_"):
        return f"{code}: the provider answered HTTP {code[5:]}, which it does not document. Fix: check base_url"
    return None


@dataclass(frozen=True)
class StreamStatusRow:
    account_key: str
    stream_key: str
    provider: str
    last_status: str | None
    last_run_at: datetime | None
    last_success_at: datetime | None
    lag_s: float | None                  # a dormant stream: the inbox's lag (the inbox keeps it current)
    high_water_id: str | None
    high_water_at: datetime | None
    pass_in_progress: bool
    pass_pages: int
    pass_started_at: datetime | None
    last_error_code: str | None
    last_error_at: datetime | None
    last_error_http: int | None
    gap_suspected: bool
    next_poll_at: datetime | None        # billed providers backing off: not polled before this
    empty_polls: int
    last_sweep_at: datetime | None       # the last complete walk of the stream (first pass or sweep)
    marked_deleted: int                  # stored events a walk found missing upstream (deleted_upstream_at)


# A stream's last error, for every selected stream at once: one ordered pass over the errors index (index-only,
# error rows alone, however many no-op rows the audit holds) rather than a probe of every monthly partition
# per stream, which at 100 M rows and 30,000 streams took 10 s (docs/architecture.md §14).
_SQL = text("""
WITH last_error AS (
    SELECT DISTINCT ON (a.account_key, a.stream_key) a.account_key, a.stream_key, a.error_code, a.finished_at,
           a.http_status
    FROM dm_audit.dm_sync_audit a
    WHERE a.error_code IS NOT NULL
      AND (CAST(:keys AS text[]) IS NULL OR a.account_key = ANY(CAST(:keys AS text[])))
    ORDER BY a.account_key DESC, a.stream_key DESC, a.finished_at DESC)
SELECT s.account_key, s.stream_key, s.provider, s.last_status, s.updated_at AS last_run_at, s.last_success_at,
       extract(epoch FROM now() - CASE WHEN s.last_status = 'dormant' THEN i.last_success_at
                                       ELSE s.last_success_at END)::float8 AS lag_s,
       s.high_water_id,
       (SELECT h.created_at FROM dm_private.dm_history h
         WHERE h.account_key = s.account_key AND h.message_id = s.high_water_id) AS high_water_at,
       s.pass_started_at IS NOT NULL AS pass_in_progress, s.pass_pages, s.pass_started_at,
       e.error_code AS last_error_code, e.finished_at AS last_error_at, e.http_status AS last_error_http,
       EXISTS (SELECT FROM dm_audit.dm_sync_audit g
                WHERE g.account_key = s.account_key AND g.stream_key = s.stream_key AND g.gap_suspected)
         AS gap_suspected,
       s.next_poll_at, s.empty_polls, s.last_sweep_at,
       (SELECT count(*) FROM dm_private.dm_history d WHERE d.account_key = s.account_key
         AND d.stream_key = s.stream_key AND d.deleted_upstream_at IS NOT NULL)::int AS marked_deleted
FROM dm_private.sync_state s
LEFT JOIN dm_private.sync_state i ON i.account_key = s.account_key AND i.stream_key = 'dm_events'
LEFT JOIN last_error e ON e.account_key = s.account_key AND e.stream_key = s.stream_key
WHERE CAST(:keys AS text[]) IS NULL OR s.account_key = ANY(CAST(:keys AS text[]))
ORDER BY s.account_key, s.stream_key""")


def stream_status(engine: Engine, account_keys: Sequence[str] | None = None) -> list[StreamStatusRow]:
    """One row per account x stream that has synced at least once (all accounts, or `account_keys`)."""
    with engine.connect() as conn:
        rows = conn.execute(_SQL, {"keys": list(account_keys) if account_keys else None}).mappings()
        return [StreamStatusRow(**row) for row in rows]


@dataclass
class AccountCost:
    """What an account spent in the last 24 hours, and what it will spend per day at the current schedule."""

    account_key: str
    provider: str
    unit: str                            # requests (X), credits (Xquik), calls (GetXAPI)
    requests_24h: int
    cost_24h: int
    forecast_per_day: float
    limited_until: datetime | None       # the account's rate-limit state: no request before this
    streams: int
    dormant: int
    backing_off: int


UNITS = {"x": "requests", "xquik": "credits", "getxapi": "calls"}

_COST_SQL = text("""
SELECT s.account_key, s.stream_key, s.provider, s.last_status, s.updated_at, s.next_poll_at,
       coalesce(j.polls, 0) AS polls, coalesce(j.requests, 0) AS requests, coalesce(j.cost, 0) AS cost,
       j.recent,
       (SELECT greatest(a.limited_until, CASE WHEN a.rl_remaining <= 0 THEN a.rl_reset_at END)
          FROM dm_private.account_state a WHERE a.account_key = s.account_key) AS limited_until
FROM dm_private.sync_state s
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE requests > 0) AS polls, sum(requests) AS requests, sum(cost) AS cost,
           (array_agg(cost ORDER BY finished_at DESC) FILTER (WHERE requests > 0))[1:5] AS recent
    FROM dm_audit.dm_sync_audit a
    WHERE a.account_key = s.account_key AND a.stream_key = s.stream_key AND a.row_kind = 'job'
      AND a.finished_at > now() - interval '24 hours'
      -- the same bound as a UTC day: the audit's per-stream index is keyed by day (docs/architecture.md §14)
      AND (a.finished_at AT TIME ZONE 'UTC')::date >= ((now() - interval '24 hours') AT TIME ZONE 'UTC')::date
    ) j ON true
WHERE CAST(:keys AS text[]) IS NULL OR s.account_key = ANY(CAST(:keys AS text[]))
ORDER BY s.account_key, s.stream_key""")


def account_costs(engine: Engine, poll_interval_s: float, account_keys: Sequence[str] | None = None
                  ) -> list[AccountCost]:
    """Per account: requests and cost of the last 24 hours, and a forecast per day: each stream's typical
    cost per poll (the median of its last five polls, or its latest) times the polls a day brings at its
    current interval (the schedule's, or longer while a billed stream backs off; dormant costs nothing)."""
    with engine.connect() as conn:
        rows = list(conn.execute(_COST_SQL, {"keys": list(account_keys) if account_keys else None}).mappings())
    out: dict[str, AccountCost] = {}
    for r in rows:
        interval = poll_interval_s
        if r["next_poll_at"] is not None and r["updated_at"] is not None:
            interval = max(interval, (r["next_poll_at"] - r["updated_at"]).total_seconds())
        dormant = r["last_status"] == "dormant"
        recent = r["recent"] or []
        # The typical poll now: the median of the last five, or the latest while there are fewer (a
        # backfill's pages are not what a tick at the current schedule costs).
        per_poll = float(statistics.median(recent) if len(recent) >= 5 else recent[0] if recent else 0)
        forecast = 0.0 if dormant else per_poll * 86400 / interval
        c = out.setdefault(r["account_key"], AccountCost(
            account_key=r["account_key"], provider=r["provider"], unit=UNITS.get(r["provider"], "cost"),
            requests_24h=0, cost_24h=0, forecast_per_day=0.0, limited_until=r["limited_until"], streams=0,
            dormant=0, backing_off=0))
        c.requests_24h += int(r["requests"])
        c.cost_24h += int(r["cost"])
        c.forecast_per_day += forecast
        c.streams += 1
        c.dormant += dormant
        c.backing_off += interval > poll_interval_s
    return list(out.values())


def age(seconds: float | None) -> str:
    """A short human duration: 45s, 12m, 3h 05m, 4d 2h."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def since(ts: datetime | None, now: datetime) -> str:
    return "—" if ts is None else f"{age((now - ts).total_seconds())} ago"
