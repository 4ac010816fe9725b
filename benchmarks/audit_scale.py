"""Benchmark: the audit at 100 M rows (issue 18, item 5; docs/architecture.md §14).

Fills the partitioned `dm_audit.dm_sync_audit` of a fresh database with N synthetic rows (generate_series
inside Postgres, in time order, spread over 13 months and 10,000 accounts x 3 streams, as ticks of runs of 50
accounts would write them: ~94 % no-op job rows with their folded page, ~5 % pages that inserted a few rows,
0.1 % sweep pages with 100 unchanged IDs, failures, suspected gaps, Xquik credits), rolls up the closed months
as the daily maintenance would, then runs EXPLAIN (ANALYZE, BUFFERS) of every audit query behind
`dm_analytics.sync_health`, the asset checks (`checks.py`, for a 50- and a 1,000-account chunk), `dm-pipeline
status` (`status.py`, the whole fleet and a chunk), the gate's daily-budget sum, the deletions judge's read
and `dm-pipeline run`'s summary, printing each one's execution time. Last, the two oldest months are dropped
(`audit prune` with a shorter retention) and the whole one's drop is timed.

    .venv/bin/python -m benchmarks.audit_scale [--rows 1000000] [--accounts 10000] [--out results.json]
    .venv/bin/python -m benchmarks.audit_scale --rows 100000000      # 26 GB of disk, ~30 min on 2 cores

The queries are captured from the real functions (a cursor hook), so what is measured is what runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from benchmarks.common import bench_pgdata, fresh_database
from dm_pipeline import checks, status
from dm_pipeline.db import audit_partitions as ap
from dm_pipeline.db.account_state import spent_since
from dm_pipeline.db.engine import ensure_database, start_embedded
from dm_pipeline.db.migrate import upgrade
from dm_pipeline.mainjob import summarize
from dm_pipeline.models import Account, Provider

STREAMS = 3          # per account: the X inbox and two conversation streams
PER_RUN = 50         # accounts per run (DM_PIPELINE_ACCOUNTS_PER_RUN)
MONTHS = 13
CHUNK = 2_000_000    # rows per INSERT (one transaction each)

# One audit row per i, in time order; consecutive rows walk the fleet's streams as a tick does. 94 % no-op job
# rows (one request, the page folded in), 5 % pages that inserted 1-7 rows, 0.1 % sweep pages that saw 100
# IDs unchanged, 0.5 % failed jobs, 0.01 % suspected gaps, spread over every stream's ticks; one account in
# ten is Xquik (credits).
_AUDIT = """
INSERT INTO dm_audit.dm_sync_audit (audit_id, started_at, finished_at, requests, cost, events_received,
    events_inserted, page_seq, credits, http_status, folded_pages, gap_suspected, has_next_page, run_id,
    account_key, provider, stream_key, row_kind, job_status, endpoint, error_code, newest_id, oldest_id,
    cursor_in, cursor_out, message_ids, unchanged_ids)
SELECT i, t - interval '2 seconds', t, 1, CASE WHEN xq THEN 100 ELSE 1 END, 100,
       CASE WHEN page THEN 1 + i % 7 ELSE 0 END, CASE WHEN kind < 60 THEN 1 END,
       CASE WHEN xq THEN 100 END, CASE WHEN failed THEN 503 ELSE 200 END,
       CASE WHEN kind >= 60 AND NOT failed THEN 1 END, kind = 777 AND tick % 10 = 0,
       CASE WHEN kind < 60 THEN kind = 55 END,
       md5((i / (:streams * :per_run))::text)::uuid::text,
       'acct-' || lpad(a::text, 5, '0'), CASE WHEN xq THEN 'xquik' ELSE 'x' END,
       CASE WHEN st = 0 THEN 'dm_events' ELSE 'conversation:' || (1000000 + a) || '-' || (2000000 + st) END,
       CASE WHEN kind < 60 THEN 'page' ELSE 'job' END,
       CASE WHEN kind < 60 THEN 'page_committed' WHEN failed THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN kind < 60 THEN '/2/dm_events' END, CASE WHEN failed THEN 'service_unavailable' END,
       (id0 + 99)::text, id0::text, CASE WHEN kind = 55 THEN 'c' || i END, CASE WHEN kind = 55 THEN 'n' || i END,
       CASE WHEN page THEN ARRAY(SELECT (id0 + 99 - k)::text FROM generate_series(0, i % 7) AS k) END,
       CASE WHEN kind = 1 THEN ARRAY(SELECT (id0 + k)::text FROM generate_series(0, 99) AS k) END
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS i,
     LATERAL (SELECT CAST(:start AS timestamptz) + (i * CAST(:step AS double precision)) * interval '1 second' AS t,
                     (i % (:accounts * :streams)) / :streams AS a, i % :streams AS st,
                     i / (:accounts * :streams) AS tick,
                     -- what the row is varies from tick to tick within a stream, and across streams
                     (i / (:accounts * :streams) + (i % (:accounts * :streams)) * 7) % 1000 AS kind,
                     1800000000000000000 + i * 100 AS id0) AS g,
     LATERAL (SELECT g.kind BETWEEN 2 AND 51 AS page, g.kind BETWEEN 900 AND 904 AS failed,
                     g.a % 10 = 1 AS xq) AS f"""

_STATE = """
INSERT INTO dm_private.sync_state (account_key, stream_key, provider, endpoint, high_water_id, last_success_at,
                                   last_status, history_complete, covered_at, last_sweep_at, updated_at)
SELECT 'acct-' || lpad(a::text, 5, '0'),
       CASE WHEN st = 0 THEN 'dm_events' ELSE 'conversation:' || (1000000 + a) || '-' || (2000000 + st) END,
       CASE WHEN a % 10 = 1 THEN 'xquik' ELSE 'x' END, '/2/dm_events', '1900000000000000000',
       now() - interval '5 minutes', CASE WHEN st = 0 THEN 'succeeded' ELSE 'dormant' END, true,
       now() - interval '5 minutes', now() - interval '2 days', now() - interval '5 minutes'
FROM generate_series(0, :accounts - 1) AS a, generate_series(0, :streams - 1) AS st"""

_HISTORY = """
INSERT INTO dm_private.dm_history (account_key, message_id, provider, stream_key, conversation_id, event_type,
    created_at, text, raw, content_hash, first_seen_run_id, last_changed_run_id)
SELECT 'acct-' || lpad(a::text, 5, '0'), (1700000000000000000 + a * 1000 + m)::text, 'x', 'dm_events',
       (1000000 + a) || '-' || (2000000 + m % 2 + 1), 'MessageCreate', now() - make_interval(hours => m),
       'synthetic private text number ' || m || ' of ' || a, '{}', md5(a || '/' || m), 'bench', 'bench'
FROM generate_series(0, :accounts - 1) AS a, generate_series(0, :texts - 1) AS m"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--texts", type=int, default=30, help="stored messages per account (the checks read them)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed), to look at "
                        "the plans afterwards")
    parser.add_argument("--explain-only", metavar="URL", default=None,
                        help="a database kept by --keep: measure its queries again, without loading or dropping")
    args = parser.parse_args()
    results: dict[str, Any] = {"rows": args.rows, "accounts": args.accounts, "streams": args.accounts * STREAMS}
    if args.explain_only:
        engine = create_engine(args.explain_only, pool_size=2)
        results |= {"sizes": sizes(engine), "queries": explain_all(engine, args.accounts, datetime.now(UTC))}
        engine.dispose()
        print(json.dumps({k: q["ms"] for k, q in results["queries"].items()}, indent=1))
        if args.out:
            args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        return
    with _database(args.keep) as url:
        engine = create_engine(url, pool_size=2)
        now = datetime.now(UTC)
        results["load"] = load(engine, args, now)
        results["roll_up"] = roll_up(engine)
        results["sizes"] = sizes(engine)
        results["queries"] = explain_all(engine, args.accounts, now)
        results["drop"] = drop_oldest(engine)
        engine.dispose()
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


@contextmanager
def _database(keep: bool) -> Iterator[str]:
    if not keep:
        with fresh_database("bench_audit") as url:
            yield url
        return
    name = f"bench_audit_kept_{int(time.time())}"
    url = ensure_database(start_embedded(bench_pgdata()), name).render_as_string(hide_password=False)
    upgrade(url)
    print(f"database kept: {url}", flush=True)
    yield url


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - t0, 2)


def load(engine: Engine, args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    start = now - timedelta(days=round(MONTHS * 30.4))
    month = ap.month_of(start)
    while month <= ap.month_of(now):           # the partitions first: no row goes to DEFAULT
        ap.ensure(engine, datetime(month.year, month.month, 15, tzinfo=UTC))
        month = ap.add_months(month, 1)
    step = (now - timedelta(minutes=1) - start).total_seconds() / args.rows
    params = {"accounts": args.accounts, "streams": STREAMS, "per_run": PER_RUN, "start": start, "step": step}
    # As a bulk restore does: the migration's indexes dropped for the load and built after it (the same
    # definitions, read back from the catalog), which is hours faster at 100 M rows than maintaining them.
    with engine.begin() as conn:
        indexes = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes "
                                    "WHERE schemaname = 'dm_audit' AND tablename = 'dm_sync_audit'")).all()
        for name, _ in indexes:
            conn.execute(text(f"DROP INDEX dm_audit.{name}"))
    t0 = time.perf_counter()
    for lo in range(0, args.rows, CHUNK):
        with engine.begin() as conn:
            conn.execute(text(_AUDIT), {**params, "lo": lo, "hi": min(lo + CHUNK, args.rows)})
        done = min(lo + CHUNK, args.rows)
        print(f"loaded {done:,} audit rows in {time.perf_counter() - t0:.0f} s", flush=True)
    insert_s = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        for _, definition in indexes:
            conn.execute(text(definition.replace(" ON ONLY ", " ON ")))
    index_s = round(time.perf_counter() - t0, 1)
    print(f"built {len(indexes)} indexes in {index_s:.0f} s", flush=True)
    with engine.begin() as conn:
        conn.execute(text(f"SELECT setval('dm_audit.dm_sync_audit_audit_id_seq', {args.rows + 1})"))
        conn.execute(text(_STATE), params)
        conn.execute(text(_HISTORY), {**params, "texts": args.texts})
        conn.execute(text("INSERT INTO dm_audit.dm_erasures (run_id, account_key, history_rows, conversation_rows, "
                          "conversation_event_rows, token_rows, sync_state_rows, audit_rows_redacted, erased_at) "
                          "SELECT 'erase-' || a, 'acct-' || lpad(a::text, 5, '0'), 0, 0, 0, 0, 0, 0, now() - "
                          "interval '100 days' FROM generate_series(0, :accounts - 1, 997) AS a"), params)
    # As autovacuum would (insert-triggered): the visibility map lets the checks read indexes alone.
    _, vacuum_s = _timed(lambda: _autocommit(engine, ["VACUUM (ANALYZE) dm_audit.dm_sync_audit",
                                                      "VACUUM (ANALYZE) dm_private.sync_state",
                                                      "VACUUM (ANALYZE) dm_private.dm_history"]))
    return {"insert_s": insert_s, "rows_per_s": round(args.rows / max(insert_s, 0.001)), "index_build_s": index_s,
            "vacuum_analyze_s": vacuum_s}


def _autocommit(engine: Engine, statements: list[str]) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for sql in statements:
            conn.execute(text(sql))


def roll_up(engine: Engine) -> dict[str, Any]:
    """What the daily maintenance does: every closed month rolled up, one at a time (each one's time)."""
    per_month = {}
    while True:
        t0 = time.perf_counter()
        done = ap.roll_up(engine, max_months=1).rolled_up
        if not done:
            break
        per_month[f"{done[0]:%Y-%m}"] = round(time.perf_counter() - t0, 2)
    with engine.connect() as conn:
        rows = conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit_monthly"))
    return {"months": len(per_month), "monthly_rows": rows, "s_per_month": per_month}


def sizes(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        total = conn.scalar(text("SELECT sum(pg_total_relation_size(relid)) FROM "
                                 "pg_partition_tree('dm_audit.dm_sync_audit')"))
        heap = conn.scalar(text("SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('dm_audit.dm_sync_audit')"))
        rows = conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit"))
        indexes = dict(conn.execute(text(
            "SELECT i.relname, sum(pg_relation_size(x.indexrelid)) FROM pg_partition_tree('dm_audit.dm_sync_audit') t "
            "JOIN pg_index x ON x.indrelid = t.relid JOIN pg_inherits h ON h.inhrelid = x.indexrelid "
            "JOIN pg_class i ON i.oid = h.inhparent GROUP BY 1 ORDER BY 1")).all())
    per_row = {k: round(int(v) / max(rows, 1), 1) for k, v in indexes.items()}
    return {"total_gb": round(int(total) / 1e9, 2), "bytes_per_row": round(int(total) / max(rows, 1), 1),
            "heap_bytes_per_row": round(int(heap) / max(rows, 1), 1), "index_bytes_per_row": per_row}


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the block runs, with its parameters (the driver's form, ready to EXPLAIN)."""
    seen: list[tuple[str, Any]] = []

    def hook(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "WITH")) or "pg_catalog" in statement:
            return
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", hook)


def explain(engine: Engine, statement: str, parameters: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters).one()
    top = (plan if isinstance(plan, list) else json.loads(plan))[0]
    seq: set[str] = set()

    def walk(node: dict[str, Any]) -> None:  # a sequential scan of an audit partition that read rows
        read = node.get("Actual Rows", 0) * node.get("Actual Loops", 1) + node.get("Rows Removed by Filter", 0)
        if (node.get("Node Type") == "Seq Scan" and str(node.get("Relation Name", "")).startswith("dm_sync_audit")
                and read > 1000):
            seq.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(top["Plan"])
    return {"ms": round(top["Execution Time"], 1), "planning_ms": round(top["Planning Time"], 1),
            "shared_hit": top["Plan"].get("Shared Hit Blocks"), "shared_read": top["Plan"].get("Shared Read Blocks"),
            "audit_seq_scans": sorted(seq)}


def explain_all(engine: Engine, accounts: int, now: datetime) -> dict[str, Any]:
    keys = [f"acct-{a:05d}" for a in range(accounts)]
    run_ids = [r[0] for r in _recent_runs(engine, keys[len(keys) // 2])]
    fleet = [Account(key=k, provider=Provider.X, user_id="1", base_url="https://api.x.com", token_env=None,
                     sweep_interval_s=7 * 86400) for k in keys]
    cases: dict[str, Callable[[], Any]] = {}
    for size in (50, 1000):
        chunk = keys[len(keys) // 2: len(keys) // 2 + size]   # a range of consecutive partitions, as a run has
        accs = fleet[len(keys) // 2: len(keys) // 2 + size]
        cases |= {
            f"sync_health ({size} accounts)": lambda c=chunk: _query(
                engine, "SELECT * FROM dm_analytics.sync_health WHERE account_key = ANY(CAST(:k AS text[]))", k=c),
            f"check reconciliation ({size})": lambda c=chunk: checks.reconciliation(engine, c),
            f"check freshness ({size})": lambda c=chunk: checks.freshness(engine, c, 3600),
            f"check gap_suspected ({size})": lambda c=chunk: checks.gap_suspected(engine, c),
            # a run that changed no text (a no-op tick), and one that stored or changed texts of every account
            # (the loaded texts carry the run ID 'bench'): only the latter reads its accounts' older audit rows
            f"check redaction, no text changed ({size})": lambda c=chunk: checks.redaction(engine, c, run_ids[0]),
            f"check redaction, every account's texts changed ({size})": lambda c=chunk: checks.redaction(
                engine, c, "bench"),
            f"check sweep_freshness ({size})": lambda a=accs: checks.sweep_freshness(engine, a),
            f"status streams ({size})": lambda c=chunk: status.stream_status(engine, c),
            f"status costs ({size})": lambda c=chunk: status.account_costs(engine, 900, c),
        }
    cases |= {
        "sync_health (one account)": lambda: _query(
            engine, "SELECT * FROM dm_analytics.sync_health WHERE account_key = :k", k=keys[1]),
        "sync_health (whole fleet)": lambda: _query(engine, "SELECT * FROM dm_analytics.sync_health"),
        "dm-pipeline status: streams (whole fleet)": lambda: status.stream_status(engine, None),
        "dm-pipeline status: costs (whole fleet)": lambda: status.account_costs(engine, 900, None),
        "gate daily budget sum (one account)": lambda: _with_conn(
            engine, lambda conn: spent_since(conn, keys[1], now - timedelta(days=1))),
        "deletions judge: a walk's pages (one stream, 7 days)": lambda: _query(
            engine, "SELECT DISTINCT unnest(a.message_ids || a.unchanged_ids) FROM dm_audit.dm_sync_audit a "
                    "WHERE a.account_key = :k AND a.stream_key = 'dm_events' AND a.row_kind = 'page' "
                    "AND a.finished_at >= now() - interval '7 days'", k=keys[1]),
        "dm-pipeline run summary (3 runs)": lambda: summarize(engine, run_ids[:3]),
    }
    out = {}
    for name, fn in cases.items():
        with captured(engine) as statements:
            _, wall = _timed(fn)
        plans = [explain(engine, s, p) for s, p in statements]
        out[name] = {"call_s": wall, "ms": round(sum(p["ms"] for p in plans), 1), "plans": plans}
        print(f"{name:55s} {out[name]['ms']:>10,.1f} ms  (first call {wall:.2f} s)", flush=True)
    return out


def _recent_runs(engine: Engine, account_key: str) -> list[Any]:
    """The last three runs that synced `account_key` (a run covers 50 accounts)."""
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT run_id FROM dm_audit.dm_sync_audit WHERE account_key = :k "
            "GROUP BY 1 ORDER BY max(finished_at) DESC LIMIT 3"), {"k": account_key}))


def _query(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def _with_conn(engine: Engine, fn: Callable[[Any], Any]) -> Any:
    with engine.connect() as conn:
        return fn(conn)


def drop_oldest(engine: Engine) -> dict[str, Any]:
    """`audit prune` with a retention that leaves out the oldest months, one month at a time: the first (part
    of a month: the data starts in it) and the second (a whole month), each dropped whole and timed."""
    out = {}
    for _ in range(2):
        with engine.connect() as conn:
            oldest = min(ap.partitions(conn))
            name = ap.partition_name(oldest)
            rows = conn.scalar(text(f"SELECT count(*) FROM dm_audit.{name}"))
            size = conn.scalar(text(f"SELECT pg_total_relation_size('dm_audit.{name}')"))
        this = ap.month_of(datetime.now(UTC))
        months = (this.year - oldest.year) * 12 + this.month - oldest.month - 1
        report, seconds = _timed(lambda m=months: ap.prune(engine, m))
        out = {"partition": name, "rows": rows, "gb": round(int(size) / 1e9, 2), "dropped": report.dropped,
               "s": seconds}
    return out  # the whole month's


def report(results: dict[str, Any]) -> None:
    print(f"\n{results['rows']:,} audit rows, {results['accounts']:,} accounts x {STREAMS} streams: "
          f"{results['sizes']['total_gb']} GB, {results['sizes']['bytes_per_row']} bytes a row "
          f"(heap {results['sizes']['heap_bytes_per_row']}); load {results['load']['insert_s']} s, "
          f"indexes {results['load']['index_build_s']} s, "
          f"VACUUM (ANALYZE) {results['load']['vacuum_analyze_s']} s")
    print(f"roll-up: {results['roll_up']['months']} months, s per month {results['roll_up']['s_per_month']}")
    print(f"{'query':55s} {'EXPLAIN ANALYZE ms':>20s} {'first call s':>13s}  audit seq scans")
    for name, q in results["queries"].items():
        seq = sorted({r for p in q["plans"] for r in p["audit_seq_scans"]})
        print(f"{name:55s} {q['ms']:>20,.1f} {q['call_s']:>13.2f}  {', '.join(seq) or '-'}")
    d = results["drop"]
    print(f"drop of {d['partition']} ({d['rows']:,} rows, {d['gb']} GB): {d['s']} s")


if __name__ == "__main__":
    main()
