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


# The audit's string columns that hold a provider's value or ours; the arrays follow them in `_values`.
_AUDIT_STRINGS = ("cursor_in", "cursor_out", "error_code", "endpoint", "job_status")
_AUDIT_ARRAYS = ("message_ids", "media_refs", "unchanged_ids")


def _strings(alias: str) -> str:
    """`ARRAY[a.cursor_in, ...]`: one audit row's string values, as an SQL array."""
    return "ARRAY[" + ", ".join(f"{alias}.{c}" for c in _AUDIT_STRINGS) + "]"


def _columns(alias: str) -> str:
    """`a.cursor_in, ..., a.unchanged_ids`: the columns `_values` reads."""
    return ", ".join(f"{alias}.{c}" for c in _AUDIT_STRINGS + _AUDIT_ARRAYS)


def _values(alias: str) -> str:
    """Every value of one audit row (its strings, then its ID and media arrays), as an SQL array."""
    return " || ".join([_strings(alias), *(f"{alias}.{c}" for c in _AUDIT_ARRAYS)])


def redaction(engine: Engine, account_keys: list[str], run_id: str | None = None) -> CheckOutcome:
    """No audit value equals or contains a stored message text (of 8 characters or more), for every pair
    the run could have made: each value of the run's audit rows (cursors, error codes, endpoints, statuses,
    and the ID and media arrays) against every text of its accounts, and each text the run stored or changed
    against every audit value of its account, whatever run wrote it. Containment is checked for the run's
    strings (the arrays hold the provider's own IDs and references). A pair where both sides are older than
    the run was checked by the runs that wrote them; `run_id` None checks every pair of the accounts (every
    text counts as new), which `dm-pipeline` offers on demand.

    Equality is a hash join on (account, value). Reading every audit row of the run's accounts, as the first
    form did, cost 5-8 s per run of 1,000 accounts at 100 M audit rows (benchmarks/audit_scale.py), though a
    no-op tick changes no text; now only the accounts with a text new in the run have their audit rows read.
    Containment is an equality join too: a value contains a text only if it holds the text's first k
    characters (k the largest of 8, 16, 32, 64 not above the text's length) at some position, so each value
    yields its windows of those sizes and only the texts whose prefix equals one are compared with `strpos`
    (pairwise, a backfill of 500 accounts compared 125,000 texts with 210,000 values: 160 s)."""
    sql = text(f"""
        WITH texts AS MATERIALIZED (
            SELECT account_key, message_id, text, created_at, (:run = '' OR last_changed_run_id = :run) AS new
            FROM dm_private.dm_history
            WHERE account_key = ANY(:keys) AND length(text) >= 8),
        run_rows AS MATERIALIZED (
            SELECT a.account_key, {_columns("a")}
            FROM dm_audit.dm_sync_audit a WHERE a.run_id = :run AND a.account_key = ANY(:keys)),
        run_values AS MATERIALIZED (
            SELECT r.account_key, v FROM run_rows r,
                 LATERAL unnest({_values("r")}) AS v
            WHERE length(v) >= 8),
        changed AS MATERIALIZED (   -- the accounts whose texts the run changed, and since when to look: no
            -- audit row older than a message can hold its text (a day's margin for the provider's clock)
            SELECT account_key, CASE WHEN bool_or(created_at IS NULL) THEN CAST('-infinity' AS timestamptz)
                                     ELSE min(created_at) - interval '1 day' END AS since
            FROM texts WHERE new GROUP BY account_key),
        older_values AS MATERIALIZED (   -- per account (LATERAL: its index scans, its months only)
            SELECT c.account_key, v
            FROM changed c,
                 LATERAL (SELECT {_values("a")} AS vs
                          FROM dm_audit.dm_sync_audit a
                          WHERE a.account_key = c.account_key AND a.finished_at >= c.since
                            -- only rows with a provider's value: pages, a provider's error code, a parked
                            -- job's cursor (a no-op job row holds only our own status); partial indexes read
                            -- just those (architecture §14)
                            AND (a.row_kind = 'page' OR a.error_code IS NOT NULL
                                 OR (a.row_kind = 'job' AND a.cursor_out IS NOT NULL))
                          OFFSET 0) AS a,   -- kept a subquery per account, not flattened into a hash join
                 LATERAL unnest(a.vs) AS v
            WHERE length(v) >= 8),
        run_strings AS MATERIALIZED (
            SELECT r.account_key, v FROM run_rows r,
                 LATERAL unnest({_strings("r")}) AS v
            WHERE length(v) >= 8),
        windows AS MATERIALIZED (
            SELECT rs.account_key, rs.v, k, substr(rs.v, s, k) AS w
            FROM run_strings rs, unnest(ARRAY[8, 16, 32, 64]) AS k, generate_series(1, length(rs.v) - k + 1) AS s),
        prefixes AS MATERIALIZED (   -- of the texts short enough to be inside one of the run's strings
            SELECT account_key, message_id, text, b.k, left(text, b.k) AS p
            FROM texts, LATERAL (SELECT CASE WHEN length(text) >= 64 THEN 64 WHEN length(text) >= 32 THEN 32
                                             WHEN length(text) >= 16 THEN 16 ELSE 8 END AS k) AS b
            WHERE length(text) <= (SELECT max(length(v)) FROM run_strings))
        SELECT DISTINCT message_id FROM (
            SELECT t.message_id FROM run_values rv
            JOIN texts t ON t.account_key = rv.account_key AND t.text = rv.v
            UNION ALL
            SELECT t.message_id FROM older_values ov
            JOIN texts t ON t.account_key = ov.account_key AND t.text = ov.v AND t.new
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
