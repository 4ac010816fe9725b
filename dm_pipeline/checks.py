"""Data-quality checks over the warehouse, as SQL. No message text leaves Postgres: results are counts
and IDs only. The Dagster asset checks call these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from dm_pipeline.models import Account


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def reconciliation(engine: Engine, account_keys: list[str]) -> CheckOutcome:
    """Every stored row was inserted by exactly one committed page: audit inserts = table rows. Audit rows
    from before the account's last erasure describe rows that no longer exist, so they are not counted.
    The audit before the roll-ups' watermark counts through them (they outlive the dropped partitions; one
    rolled up before a later erasure counts nothing), the rest through the pages that inserted rows (a
    partial index: docs/architecture.md §14)."""
    sql = text("""
        SELECT k AS account_key,
               (SELECT count(*) FROM dm_private.dm_history h WHERE h.account_key = k) AS stored,
               ((SELECT coalesce(sum(a.events_inserted), 0) FROM dm_audit.dm_sync_audit a
                  WHERE a.account_key = k AND a.row_kind = 'page' AND a.events_inserted > 0
                    AND a.finished_at > e.erased AND a.finished_at >= w.since)
                + (SELECT coalesce(sum(m.events_inserted), 0) FROM dm_audit.dm_sync_audit_monthly m
                    WHERE m.account_key = k AND coalesce(m.last_erasure_at, '-infinity') >= e.erased)
               )::bigint AS audited
        FROM unnest(CAST(:keys AS text[])) AS k
        CROSS JOIN LATERAL (SELECT coalesce(max(erased_at), '-infinity') AS erased FROM dm_audit.dm_erasures
                            WHERE account_key = k) AS e
        CROSS JOIN (SELECT coalesce(max(through), '-infinity') AS since FROM dm_audit.dm_sync_audit_monthly) AS w""")
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sql, {"keys": account_keys}).mappings()]
    bad = {r["account_key"]: {"stored": r["stored"], "audited": r["audited"]} for r in rows
           if r["stored"] != r["audited"]}
    return CheckOutcome(not bad, {"accounts": len(rows), "mismatched": bad})


def freshness(engine: Engine, account_keys: list[str], max_lag_s: float) -> CheckOutcome:
    """Every stream succeeded within `max_lag_s`, plus its own poll interval while a billed stream backs off
    (it is not due before next_poll_at); a dormant X conversation stream is as fresh as its inbox."""
    sql = text("""
        SELECT s.account_key, s.stream_key,
               extract(epoch FROM now() - CASE WHEN s.last_status = 'dormant' THEN i.last_success_at
                                               ELSE s.last_success_at END) AS lag_s,
               greatest(0, coalesce(extract(epoch FROM s.next_poll_at - s.updated_at), 0)) AS interval_s
        FROM dm_private.sync_state s
        LEFT JOIN dm_private.sync_state i ON i.account_key = s.account_key AND i.stream_key = 'dm_events'
        WHERE s.account_key = ANY(:keys)""")
    with engine.connect() as conn:
        rows = list(conn.execute(sql, {"keys": account_keys}).mappings())
    stale = [f"{r['account_key']}/{r['stream_key']}" for r in rows
             if r["lag_s"] is None or r["lag_s"] > max_lag_s + float(r["interval_s"])]
    lags = [float(r["lag_s"]) for r in rows if r["lag_s"] is not None]
    return CheckOutcome(not stale and bool(rows), {"streams": len(rows), "stale": stale,
                                                    "max_lag_s": round(max(lags), 1) if lags else None})


def gap_suspected(engine: Engine, account_keys: list[str]) -> CheckOutcome:
    """A windowed pass (X /2/dm_events: 30 days) ended without reaching the previous high-water mark."""
    sql = text("""
        SELECT account_key, stream_key, max(finished_at) AS last_gap
        FROM dm_audit.dm_sync_audit
        WHERE account_key = ANY(:keys) AND gap_suspected GROUP BY account_key, stream_key""")
    with engine.connect() as conn:
        rows = list(conn.execute(sql, {"keys": account_keys}).mappings())
    return CheckOutcome(not rows, {"streams_with_gap": [f"{r['account_key']}/{r['stream_key']}" for r in rows]})


def redaction(engine: Engine, account_keys: list[str], run_id: str | None = None) -> CheckOutcome:
    """No audit value equals or contains a stored message text (of 8 characters or more). Equality is
    checked for every audit row of the accounts, containment for the strings the given run's rows hold
    (cursors, error codes, endpoints, statuses; the ID and media arrays hold the provider's own IDs and
    references, which are checked for equality).

    Equality is a hash join on (account, value), so its cost is linear in texts + audit values; the old
    form (one join on the account, then `md5(value) = md5(text) OR …` per pair) compared every text with
    every audit value of its account, ~12 s per 50 accounts of 270 texts each. Containment is an equality
    join too: a value contains a text only if it holds the text's first k characters (k the largest of 8,
    16, 32, 64 not above the text's length) at some position, so each value yields its windows of those
    sizes and only the texts whose prefix equals one are compared with `strpos`. Pairwise, over every
    value of the run, a backfill compared every text with every ID of its account: 160 s for the 500
    accounts of a run (125,000 texts x 210,000 values), hours for one account of 100,000 messages."""
    sql = text("""
        WITH texts AS MATERIALIZED (
            SELECT account_key, message_id, text FROM dm_private.dm_history
            WHERE account_key = ANY(:keys) AND length(text) >= 8),
        audit_values AS MATERIALIZED (
            SELECT a.account_key, a.run_id, v
            FROM dm_audit.dm_sync_audit a,
                 LATERAL unnest(ARRAY[a.cursor_in, a.cursor_out, a.error_code, a.endpoint, a.job_status]
                                || a.message_ids || a.media_refs || a.unchanged_ids) AS v
            WHERE a.account_key = ANY(:keys) AND length(v) >= 8    -- shorter ones can neither equal nor contain
              -- only rows with a provider's value: pages, a provider's error code, a parked job's cursor (a
              -- no-op job row holds only our own status); partial indexes read just those (architecture §14)
              AND (a.row_kind = 'page' OR a.error_code IS NOT NULL
                   OR (a.row_kind = 'job' AND a.cursor_out IS NOT NULL))),
        run_values AS MATERIALIZED (
            SELECT a.account_key, v
            FROM dm_audit.dm_sync_audit a,
                 LATERAL unnest(ARRAY[a.cursor_in, a.cursor_out, a.error_code, a.endpoint, a.job_status]) AS v
            WHERE a.account_key = ANY(:keys) AND a.run_id = :run AND length(v) >= 8),
        windows AS MATERIALIZED (
            SELECT rv.account_key, rv.v, k, substr(rv.v, s, k) AS w
            FROM run_values rv, unnest(ARRAY[8, 16, 32, 64]) AS k, generate_series(1, length(rv.v) - k + 1) AS s),
        prefixes AS MATERIALIZED (   -- of the texts short enough to be inside one of the run's values
            SELECT account_key, message_id, text, b.k, left(text, b.k) AS p
            FROM texts, LATERAL (SELECT CASE WHEN length(text) >= 64 THEN 64 WHEN length(text) >= 32 THEN 32
                                             WHEN length(text) >= 16 THEN 16 ELSE 8 END AS k) AS b
            WHERE length(text) <= (SELECT max(length(v)) FROM run_values))
        SELECT DISTINCT message_id FROM (
            SELECT t.message_id FROM audit_values av
            JOIN texts t ON t.account_key = av.account_key AND t.text = av.v
            UNION ALL
            SELECT t.message_id FROM windows x
            JOIN prefixes t ON t.account_key = x.account_key AND t.k = x.k AND t.p = x.w
            WHERE length(x.v) >= length(t.text) AND strpos(x.v, t.text) > 0
        ) AS leaks
        LIMIT 20""")
    with engine.connect() as conn:
        leaked = list(conn.scalars(sql, {"keys": account_keys, "run": run_id or ""}))
    return CheckOutcome(not leaked, {"leaking_message_ids": leaked})


SWEEP_GRACE_S = 86400.0  # a due sweep of many conversations may take the rate limit's hours to finish


def sweep_freshness(engine: Engine, accounts: list[Account]) -> CheckOutcome:
    """Full-history streams (every stream but X's windowed inbox) of accounts that sweep, whose last complete
    walk is older than the account's sweep interval (plus a day's grace): deletions upstream are found late."""
    sweeping = {a.key: a.sweep_interval_s for a in accounts if a.sweep_interval_s > 0}
    if not sweeping:
        return CheckOutcome(True, {"accounts_sweeping": 0})
    sql = text("""
        SELECT account_key, stream_key, extract(epoch FROM now() - last_sweep_at)::float8 AS age_s
        FROM dm_private.sync_state WHERE account_key = ANY(:keys) AND stream_key <> 'dm_events'""")
    with engine.connect() as conn:
        rows = list(conn.execute(sql, {"keys": list(sweeping)}).mappings())
    late = [f"{r['account_key']}/{r['stream_key']}" for r in rows
            if r["age_s"] is None or r["age_s"] > sweeping[r["account_key"]] + SWEEP_GRACE_S]
    ages = [float(r["age_s"]) for r in rows if r["age_s"] is not None]
    return CheckOutcome(not late, {"accounts_sweeping": len(sweeping), "streams": len(rows), "late": late[:50],
                                   "oldest_sweep_days": round(max(ages) / 86400, 1) if ages else None})
