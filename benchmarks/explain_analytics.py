"""EXPLAIN every documented analyst query (docs/analyst.md) on a synthetic load, by default 1 M events.

    .venv/bin/python -m benchmarks.explain_analytics [--events 1000000] [--keep] [--plans]

Creates a throwaway database `dm_bench_analytics` on the configured server (DATABASE_URL's, else the
embedded one), migrates it, loads it with `INSERT … SELECT generate_series`, VACUUM (ANALYZE)s it, then prints for each
query: the indexes its plan uses, any sequential scan of a big table, rows and execution time, and whether
that is acceptable (an index, or a `-- plan:` justification in the docs). Exit code 1 if one is not.
"""

from __future__ import annotations

import argparse
import sys
import time

from sqlalchemy import create_engine, text

from benchmarks.analytics_load import doc_queries, explain, load, plan_text, sample_params
from dm_pipeline.db.engine import ensure_database, render, server_url
from dm_pipeline.db.migrate import upgrade

DATABASE = "dm_bench_analytics"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ap.add_argument("--plans", action="store_true", help="print each full EXPLAIN ANALYZE plan")
    args = ap.parse_args()

    base = server_url()
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    url = ensure_database(base, DATABASE)
    upgrade(url.render_as_string(hide_password=False))
    engine = create_engine(url)
    print(f"database: {render(url)}")
    try:
        t0 = time.perf_counter()
        load(engine, args.events)
        with engine.connect() as conn:
            rows = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history"))
            audit = conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit"))
            params = sample_params(conn)
        print(f"loaded {args.events:,} events ({rows:,} rows with shared copies, {audit:,} audit rows) "
              f"in {time.perf_counter() - t0:.1f}s")
        print(f"parameters: {params}\n")
        bad = 0
        with engine.connect() as conn:
            for i, q in enumerate(doc_queries(), 1):
                explain(conn, q, params)  # warm the cache: report the second, steady-state run
                rep = explain(conn, q, params)
                ok = (bool(rep.indexes) and not rep.seq_scans_big_table) or q.justification is not None
                bad += not ok
                verdict = ("index" if rep.indexes and not rep.seq_scans_big_table
                           else f"justified in the docs: {q.justification.split(' — ')[0]}" if q.justification
                           else "NO INDEX")
                print(f"[{i}] {q.title}")
                print(f"    {rep.execution_ms:9.1f} ms  rows={rep.rows:<6} {verdict}")
                print(f"    indexes: {', '.join(dict.fromkeys(rep.indexes)) or '-'}")
                if rep.seq_scanned:
                    print(f"    seq scans: {', '.join(dict.fromkeys(rep.seq_scanned))}")
                if args.plans:
                    print("    " + plan_text(conn, q, params).replace("\n", "\n    "))
        print(f"\n{len(doc_queries()) - bad}/{len(doc_queries())} documented queries use an index or are justified")
        return 1 if bad else 0
    finally:
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
