"""Benchmark: wall time of a no-op scheduled tick for N registered accounts (default 1,000).

Backfills every account once (not timed), then times what the schedule does every 15 minutes: evaluate the
schedule (one run per chunk of accounts), execute each run through Dagster against the real database and
the simulator (own process). Prints the total, the per-account cost and the requests per stream.

    .venv/bin/python -m benchmarks.noop_tick [--accounts 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import dagster as dg
import httpx
from sqlalchemy import create_engine, text

from benchmarks.common import (
    emit,
    fresh_database,
    project_instance,
    sim_accounts,
    simulator_process,
    stopwatch,
    write_accounts_file,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--events", type=int, default=30, help="events per account in the simulated world")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--per-provider", type=int, default=None,
                        help="override SyncConfig.per_provider (default: what the schedule requests)")
    parser.add_argument("--instance", choices=["postgres", "sqlite"], default="postgres",
                        help="postgres: the project's dagster.yaml as deployed; sqlite: dagster's test instance")
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
        print(f"backfill of {len(accounts)} accounts (not timed): {backfill_s:.1f}s", file=sys.stderr, flush=True)
        before = int(httpx.get(f"{sim_url}/_sim/stats", timeout=30).json().get("total", 0) or 0)

        instance_cm = (project_instance(Path(tmp)) if args.instance == "postgres"
                       else dg.instance_for_test(temp_dir=tmp))
        with instance_cm as instance:
            instance.add_dynamic_partitions(accounts_partitions.name or "accounts", [a.key for a in accounts])
            job = defs.resolve_job_def("dm_sync_job")
            t0 = stopwatch()
            requests = cast(list[dg.RunRequest], every_account_schedule(dg.build_schedule_context(
                instance=instance, scheduled_execution_time=datetime.now(UTC))))
            runs_ok = 0
            phases: list[dict[str, float]] = []
            for request in requests:
                # The run config the schedule requests (none: SyncConfig defaults), console quiet.
                run_config: dict[str, Any] = {**dict(request.run_config or {}),
                                              "loggers": {"console": {"config": {"log_level": "ERROR"}}}}
                if args.per_provider:
                    run_config["ops"] = {"dm_history_assets": {"config": {"per_provider": args.per_provider}}}
                started = stopwatch()
                result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                                tags=request.tags, raise_on_error=False, run_config=run_config)
                phases.append(run_phases(instance, result.run_id, stopwatch() - started))
                runs_ok += int(result.success)
            tick_s = stopwatch() - t0
        stats = httpx.get(f"{sim_url}/_sim/stats", timeout=30).json()
        with engine.connect() as conn:
            inserted = conn.scalar(text("SELECT coalesce(sum(events_inserted),0) FROM dm_audit.dm_sync_audit "
                                        "WHERE run_id NOT LIKE 'bench-backfill-%'"))
            streams = int(conn.scalar(text("SELECT count(*) FROM dm_private.sync_state")) or 0)
        engine.dispose()
    tick_requests = int(stats.get("total", 0) or 0) - before
    emit({
        "accounts": args.accounts, "instance": args.instance, "runs": len(requests), "runs_succeeded": runs_ok,
        "backfill_s": round(backfill_s, 2), "noop_tick_s": round(tick_s, 2),
        "per_account_ms": round(1000 * tick_s / args.accounts, 2),
        "streams": streams, "tick_requests": tick_requests,
        "requests_per_stream": round(tick_requests / max(streams, 1), 3),
        "tick_rows_inserted": inserted, "target_s": 60, "ratio_to_target": round(tick_s / 60, 3),
        "per_run_mean_s": {k: round(sum(p[k] for p in phases) / len(phases), 3) for k in phases[0]} if phases else {},
    }, args.out)


def run_phases(instance: dg.DagsterInstance, run_id: str, wall_s: float) -> dict[str, float]:
    """Where one run's wall time went, from its event log: Dagster before the op body, the syncs (op body
    up to the first materialization), the checks (to the last check evaluation), Dagster after."""
    events = [e for e in instance.all_logs(run_id) if e.dagster_event]
    at: dict[dg.DagsterEventType | None, float] = {}
    for e in events:
        at.setdefault(e.dagster_event_type, e.timestamp)
    last_check = max((e.timestamp for e in events
                      if e.dagster_event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION), default=None)
    start, step = at.get(dg.DagsterEventType.RUN_START), at.get(dg.DagsterEventType.STEP_START)
    mat = at.get(dg.DagsterEventType.ASSET_MATERIALIZATION)
    if not (start and step and mat and last_check):
        return {"wall": wall_s, "before_op": 0.0, "sync": 0.0, "checks": 0.0, "after_checks": 0.0}
    return {"wall": wall_s, "before_op": step - start, "sync": mat - step, "checks": last_check - mat,
            "after_checks": wall_s - (last_check - start)}


if __name__ == "__main__":
    main()
