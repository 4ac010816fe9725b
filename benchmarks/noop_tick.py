"""Benchmark: the first backfill and a no-op scheduled tick of N registered accounts, through Dagster.

The fleet of issue 18: N X accounts (default 1,000), each with its inbox and `--conversations` (default 2)
conversation streams. Both phases run what the daemon would run, in this process, one run after another
(`execute_in_process` against the project's dagster.yaml on Postgres, the simulator in its own process):

- backfill: the accounts sensor registers the partitions and requests its chunked runs; each is executed;
- tick: the schedule is evaluated (one run per chunk of accounts) and each run executed. After the
  backfill every conversation stream is dormant, so an account's no-op is one request (its inbox).

Each phase reports its wall time, runs, ms and requests per account, CPU per run (this process, all
threads: the run's CPU), the simulator's and Postgres's CPU, and where a run's wall time went.

    .venv/bin/python -m benchmarks.noop_tick [--accounts 1000] [--conversations 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import dagster as dg
import httpx
from sqlalchemy import create_engine, text

from benchmarks.common import (
    SIM_PIDS,
    bench_pgdata,
    emit,
    fresh_database,
    postgres_cpu_s,
    process_cpu_s,
    project_instance,
    sim_accounts,
    sim_conversations,
    simulator_process,
    stopwatch,
    write_accounts_file,
)

TARGET_S = {1000: 30, 10000: 300}  # issue 18: the tick (and the first backfill) through the production path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=2, help="conversation streams per account")
    parser.add_argument("--events", type=int, default=30, help="events per account in the simulated world")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--per-provider", type=int, default=None,
                        help="override SyncConfig.per_provider (default: what the schedule requests)")
    parser.add_argument("--instance", choices=["postgres", "sqlite"], default="postgres",
                        help="postgres: the project's dagster.yaml as deployed; sqlite: dagster's test instance")
    parser.add_argument("--backfill", choices=["dagster", "direct"], default="dagster",
                        help="dagster: the sensor's runs (timed); direct: one sync_accounts call")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="the simulator answers each request of the tick this much later (a real provider's "
                             "round trip; the simulator's own is ~1 ms)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, fresh_database("bench_noop") as db_url, \
            simulator_process(args.accounts, args.events) as sim_url:
        accounts_file = Path(tmp) / "accounts.yaml"
        sim = sim_accounts(sim_url)[: args.accounts]
        convs = sim_conversations(sim_url, [a["user_id"] for a in sim], args.conversations) \
            if args.conversations else None
        write_accounts_file(accounts_file, sim_url, sim, conversations=convs)
        os.environ.update(DATABASE_URL=db_url, DM_PIPELINE_ACCOUNTS=str(accounts_file))
        t0 = stopwatch()
        from dm_pipeline.definitions import defs
        from dm_pipeline.defs.automation import accounts_sensor, every_account_schedule
        from dm_pipeline.defs.partitions import accounts_partitions
        import_s = stopwatch() - t0

        engine = create_engine(db_url)
        meter = Meter(sim_url)
        instance_cm = (project_instance(Path(tmp)) if args.instance == "postgres"
                       else dg.instance_for_test(temp_dir=tmp))
        with instance_cm as instance:
            job = defs.resolve_job_def("dm_sync_job")
            execute = runner(job, instance, args.per_provider)
            if args.backfill == "direct":
                backfill = meter.phase("backfill", args.accounts, lambda: direct_backfill(instance, db_url))
            else:
                backfill = meter.phase("backfill", args.accounts,
                                       lambda: [execute(r) for r in sensor_requests(instance, accounts_sensor)])
            print(f"backfill: {backfill['wall_s']} s, {backfill['runs']} runs", file=sys.stderr, flush=True)
            names = accounts_partitions.name or "accounts"
            assert len(instance.get_dynamic_partitions(names)) == args.accounts

            if args.latency_ms:
                httpx.post(f"{sim_url}/_sim/faults", timeout=30, json={
                    "route": "*", "kind": "slow", "count": args.accounts * 2, "delay_s": args.latency_ms / 1000})

            def tick() -> list[dict[str, Any]]:
                requests = cast(list[dg.RunRequest], every_account_schedule(dg.build_schedule_context(
                    instance=instance, scheduled_execution_time=datetime.now(UTC))))
                return [execute(r) for r in requests]

            noop = meter.phase("tick", args.accounts, tick)
        with engine.connect() as conn:
            inserted = conn.scalar(text("SELECT coalesce(sum(events_inserted),0) FROM dm_audit.dm_sync_audit "
                                        "WHERE finished_at > :t"), {"t": noop["started_at"]})
            streams = int(conn.scalar(text("SELECT count(*) FROM dm_private.sync_state")) or 0)
        engine.dispose()
    target = TARGET_S.get(args.accounts, round(args.accounts * 0.03))
    emit({
        "accounts": args.accounts, "conversations_per_account": args.conversations, "instance": args.instance,
        "latency_ms": args.latency_ms, "per_provider": args.per_provider,
        "import_definitions_s": round(import_s, 2),
        "backfill": {k: v for k, v in backfill.items() if k != "started_at"},
        "tick": {k: v for k, v in noop.items() if k != "started_at"},
        # The keys of the one-stream benchmark, kept for whoever reads them.
        "runs": noop["runs"], "runs_succeeded": noop["runs_succeeded"], "backfill_s": backfill["wall_s"],
        "noop_tick_s": noop["wall_s"], "per_account_ms": noop["per_account_ms"], "streams": streams,
        "tick_requests": noop["requests"],
        "requests_per_stream": round(noop["requests"] / max(streams, 1), 3),
        "tick_rows_inserted": inserted, "target_s": target, "ratio_to_target": round(noop["wall_s"] / target, 3),
        "per_run_mean_s": noop["per_run_mean_s"],
    }, args.out)


def sensor_requests(instance: dg.DagsterInstance, sensor: Any) -> list[dg.RunRequest]:
    """What the daemon does with the accounts sensor's result: register the partitions, return the runs."""
    result = sensor(dg.build_sensor_context(instance=instance))
    for req in result.dynamic_partitions_requests or ():
        if isinstance(req, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return list(result.run_requests or ())


def direct_backfill(instance: dg.DagsterInstance, db_url: str) -> list[dict[str, Any]]:
    from dm_pipeline.accounts import load_accounts
    from dm_pipeline.runner import sync_accounts
    from dm_pipeline.settings import load_settings
    from dm_pipeline.sync import RunLimits

    accounts = load_accounts(load_settings().accounts_file)
    engine = create_engine(db_url, pool_size=20, max_overflow=20)
    sync_accounts(engine, accounts, f"bench-backfill-{uuid.uuid4()}", RunLimits(), per_provider=8)
    engine.dispose()
    instance.add_dynamic_partitions("accounts", [a.key for a in accounts])
    return []


def runner(job: Any, instance: dg.DagsterInstance, per_provider: int | None) -> Callable[[dg.RunRequest],
                                                                                          dict[str, Any]]:
    def execute(request: dg.RunRequest) -> dict[str, Any]:
        # The run config the request carries (none: SyncConfig defaults), console quiet.
        run_config: dict[str, Any] = {**dict(request.run_config or {}),
                                      "loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        if per_provider:
            run_config["ops"] = {"dm_history_assets": {"config": {"per_provider": per_provider}}}
        cpu, started = cpu_s(), stopwatch()
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                        tags=request.tags, raise_on_error=False, run_config=run_config)
        wall, cpu, after = stopwatch() - started, cpu_s() - cpu, cpu_s()
        phases = run_phases(instance, result.run_id, wall)  # reading the run's events is not the run's time
        phases["cpu"] = cpu
        return {"ok": result.success, "phases": phases, "accounts": run_accounts(request),
                "overhead_s": stopwatch() - started - wall, "overhead_cpu_s": cpu_s() - after}

    return execute


def run_accounts(request: dg.RunRequest) -> int:
    start = request.tags.get("dagster/asset_partition_range_start")
    end = request.tags.get("dagster/asset_partition_range_end")
    if start and end and start.startswith("acct-") and end.startswith("acct-"):
        return int(end[5:]) - int(start[5:]) + 1
    return 1


def cpu_s() -> float:
    """CPU seconds of this process so far, every thread (a run executes in it)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall time, requests (the simulator's count) and CPU (this process, the simulator, Postgres) of a
    phase made of runs."""

    def __init__(self, sim_url: str) -> None:
        self.sim_url = sim_url

    def requests(self) -> int:
        return int(httpx.get(f"{self.sim_url}/_sim/stats", timeout=30).json().get("total", 0) or 0)

    def phase(self, name: str, accounts: int, body: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
        started_at = datetime.now(UTC)
        requests, sim_cpu, pg_cpu = self.requests(), process_cpu_s(SIM_PIDS[self.sim_url]), \
            postgres_cpu_s(bench_pgdata())
        cpu, t0 = cpu_s(), stopwatch()
        runs = body()
        overhead = sum(r["overhead_s"] for r in runs)  # the benchmark's own reads between runs
        wall = stopwatch() - t0 - overhead
        cpu = cpu_s() - cpu - sum(r["overhead_cpu_s"] for r in runs)
        sim_cpu = process_cpu_s(SIM_PIDS[self.sim_url]) - sim_cpu
        pg_cpu = postgres_cpu_s(bench_pgdata()) - pg_cpu
        requests = self.requests() - requests
        phases = [r["phases"] for r in runs]
        out = {
            "started_at": started_at, "wall_s": round(wall, 2), "runs": len(runs),
            "runs_succeeded": sum(r["ok"] for r in runs), "accounts_per_run_max": max(
                (r["accounts"] for r in runs), default=0),
            "per_account_ms": round(1000 * wall / accounts, 2), "requests": requests,
            "requests_per_account": round(requests / accounts, 3),
            "cpu_per_run_s": round(sum(p["cpu"] for p in phases) / len(phases), 3) if phases else None,
            "cpu_ms_per_account": {"runs": round(1000 * cpu / accounts, 2), "simulator": round(
                1000 * sim_cpu / accounts, 2), "postgres": round(1000 * pg_cpu / accounts, 2)},
            "per_run_mean_s": {k: round(sum(p[k] for p in phases) / len(phases), 3) for k in phases[0]}
            if phases else {},
            "load_avg": round(os.getloadavg()[0], 2),
        }
        print(f"{name}: {out}", file=sys.stderr, flush=True)
        return out


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
