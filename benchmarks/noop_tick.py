"""Benchmark: wall time of a no-op scheduled tick for N registered accounts (default 1,000).

Backfills every account once (not timed), then times what the schedule does every 15 minutes: evaluate the
schedule (one run per chunk of accounts), execute each run through Dagster against the real database and
the simulator (own process). Prints the total, the per-account cost and the requests per stream.

    .venv/bin/python -m benchmarks.noop_tick [--accounts 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from pathlib import Path

import dagster as dg
import httpx
from sqlalchemy import create_engine, text

from benchmarks.common import emit, fresh_database, sim_accounts, simulator_process, stopwatch, write_accounts_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--events", type=int, default=30, help="events per account in the simulated world")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, fresh_database("bench_noop") as db_url, \
            simulator_process(args.accounts, args.events) as sim_url:
        accounts_file = Path(tmp) / "accounts.yaml"
        write_accounts_file(accounts_file, sim_url, sim_accounts(sim_url)[: args.accounts])
        os.environ.update(DATABASE_URL=db_url, DM_PIPELINE_ACCOUNTS=str(accounts_file))
        from dm_pipeline.accounts import load_accounts
        from dm_pipeline.definitions import defs
        from dm_pipeline.defs.automation import every_account_schedule
        from dm_pipeline.defs.partitions import accounts_partitions
        from dm_pipeline.runner import sync_accounts
        from dm_pipeline.sync import RunLimits

        accounts = load_accounts(accounts_file)
        engine = create_engine(db_url, pool_size=20, max_overflow=20)
        t0 = stopwatch()
        sync_accounts(engine, accounts, f"bench-backfill-{uuid.uuid4()}", RunLimits(), per_provider=8)
        backfill_s = stopwatch() - t0
        before = int(httpx.get(f"{sim_url}/_sim/stats", timeout=30).json().get("total", 0) or 0)

        with dg.instance_for_test(temp_dir=tmp) as instance:
            instance.add_dynamic_partitions(accounts_partitions.name or "accounts", [a.key for a in accounts])
            job = defs.resolve_job_def("dm_sync_job")
            t0 = stopwatch()
            requests = every_account_schedule(dg.build_schedule_context(instance=instance))
            runs_ok = 0
            for request in requests:  # type: ignore[union-attr]
                result = job.execute_in_process(
                    instance=instance, partition_key=request.partition_key, tags=request.tags,
                    raise_on_error=False, run_config={"ops": {"dm_history_assets": {"config": {"per_provider": 8}}},
                                                      "loggers": {"console": {"config": {"log_level": "ERROR"}}}})
                runs_ok += int(result.success)
            tick_s = stopwatch() - t0
        stats = httpx.get(f"{sim_url}/_sim/stats", timeout=30).json()
        with engine.connect() as conn:
            inserted = conn.scalar(text("SELECT coalesce(sum(events_inserted),0) FROM dm_audit.dm_sync_audit "
                                        "WHERE run_id NOT LIKE 'bench-backfill-%'"))
        engine.dispose()
    tick_requests = int(stats.get("total", 0) or 0) - before
    emit({
        "accounts": args.accounts, "runs": len(requests), "runs_succeeded": runs_ok,  # type: ignore[arg-type]
        "backfill_s": round(backfill_s, 2), "noop_tick_s": round(tick_s, 2),
        "per_account_ms": round(1000 * tick_s / args.accounts, 2),
        "tick_requests": tick_requests, "requests_per_stream": round(tick_requests / args.accounts, 3),
        "tick_rows_inserted": inserted, "target_s": 60, "ratio_to_target": round(tick_s / 60, 3),
    }, args.out)


if __name__ == "__main__":
    main()
