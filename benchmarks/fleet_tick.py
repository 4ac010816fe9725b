"""Benchmark: the first backfill and a no-op tick of N accounts through the production path (issue 18).

The production topology of `tests/e2e/topology.py`: the code location served by `dagster api grpc` in a
process of its own, dagster-webserver and dagster-daemon reaching it through `deploy/workspace.grpc.yaml`,
the project's dagster.yaml (Postgres storage, QueuedRunCoordinator, run limits, pools), a fresh warehouse
and a fresh Dagster database on an embedded Postgres of the benchmark's own, and the simulator in its own
process. The fleet: N X accounts, each with its inbox and `--conversations` (default 2) conversation streams.

- backfill: the daemon starts; the accounts sensor's first tick registers the N partitions and requests the
  chunked runs; timed from that tick to the end of the last of its runs;
- tick: the schedule (cron every 2 minutes in the code server's environment, off until now) is switched on
  as the UI's toggle does, and off again as soon as its tick starts, so that exactly one tick runs (see
  `ProductionStack.one_schedule_tick`); timed from the tick to the end of its last run.
  After the backfill every conversation stream is dormant: an account's no-op is its inbox.

Each phase reports wall time, runs (and how many succeeded), ms and simulator requests per account, CPU per
run (the code server's reaped-children CPU: the run processes it started, and their step processes), the CPU
of the code server, daemon, webserver, Postgres and simulator, and the runs' queue wait and duration. Then,
with N partitions registered, the time headless Chromium (Debian's, driven by Playwright) takes from
navigation to the dm_history partitions view showing its partitions.

    .venv/bin/python -m benchmarks.fleet_tick --accounts 1000 [--out fleet-1000.json]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from benchmarks.common import (
    SIM_PIDS,
    emit,
    fresh_database,
    postgres_cpu_s,
    process_cpu_s,
    sim_accounts,
    sim_conversations,
    simulator_process,
    write_accounts_file,
)
from dm_pipeline.db.engine import embedded_running, start_embedded, stop_embedded
from dm_pipeline.settings import load_settings
from tests.e2e.stack import fresh_dagster_database, instance_env, write_dagster_home
from tests.e2e.topology import ProductionStack

TARGET_S = {1000: 30, 10000: 300}  # issue 18, for the tick and for the first backfill
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ALIAS = "dagster-ui.invalid"   # not 127.0.0.1: the UI opens its community dialog on loopback origins


def log(message: str) -> None:
    print(f"[fleet_tick {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fleet_pgdata() -> Path:
    return load_settings().home / "fleet-pgdata"


@contextmanager
def own_postgres(pgdata: Path) -> Iterator[Path]:
    """The benchmark's own embedded server (its CPU is then ours alone); stopped after if we started it."""
    started = not embedded_running(pgdata)
    start_embedded(pgdata)
    try:
        yield pgdata
    finally:
        if started:
            stop_embedded(pgdata)


class Meter:
    """Simulator requests, CPU seconds (per process kind) and the growth of Dagster's event log since a
    snapshot."""

    def __init__(self, stack: ProductionStack, sim_url: str, pgdata: Path, dagster_pg_url: str) -> None:
        self.stack, self.sim_url, self.pgdata = stack, sim_url, pgdata
        self.dagster_db = create_engine(dagster_pg_url, poolclass=NullPool)

    def snapshot(self) -> dict[str, float]:
        total = httpx.get(f"{self.sim_url}/_sim/stats", timeout=120).json().get("total", 0)
        with self.dagster_db.connect() as conn:
            events = conn.execute(text("SELECT coalesce(max(id), 0), pg_total_relation_size('event_logs') "
                                       "FROM event_logs")).one()
        return {"requests": float(total or 0), **self.stack.cpu(), "postgres": postgres_cpu_s(self.pgdata),
                "simulator": process_cpu_s(SIM_PIDS[self.sim_url]),
                "event_log_rows": float(events[0]), "event_log_bytes": float(events[1])}

    def launches(self, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Where a run's start-up goes, from its events: the daemon's run queue dequeuing it once a slot is
        free (RUN_STARTING after the previous run ended), then the run process starting (RUN_STARTING to
        RUN_START: a process spawned by the code server importing Dagster and the code)."""
        with self.dagster_db.connect() as conn:
            rows = conn.execute(text(
                "SELECT run_id, dagster_event_type, extract(epoch FROM timestamp) FROM event_logs "
                "WHERE run_id = ANY(:ids) AND dagster_event_type IN "
                "('PIPELINE_ENQUEUED', 'PIPELINE_STARTING', 'PIPELINE_START', 'PIPELINE_SUCCESS', "
                "'PIPELINE_FAILURE')"), {"ids": list(run_ids)}).all()
        at: dict[str, dict[str, float]] = {}
        for run_id, kind, ts in rows:
            at.setdefault(run_id, {}).setdefault(kind, float(ts))
        ends = sorted(t.get("PIPELINE_SUCCESS", t.get("PIPELINE_FAILURE", 0.0)) for t in at.values())
        dequeue, start = [], []
        for t in at.values():
            if "PIPELINE_STARTING" not in t:
                continue
            freed = max([e for e in ends if e <= t["PIPELINE_STARTING"]] + [t.get("PIPELINE_ENQUEUED", 0.0)])
            dequeue.append(t["PIPELINE_STARTING"] - freed)
            if "PIPELINE_START" in t:
                start.append(t["PIPELINE_START"] - t["PIPELINE_STARTING"])
        return {"dequeue_after_slot_free_s": spread(dequeue), "process_start_s": spread(start)}

    def since(self, before: Mapping[str, float]) -> dict[str, float]:
        now = self.snapshot()
        return {k: now[k] - before.get(k, 0.0) for k in now}


def spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(ordered), 2), "p50": round(ordered[len(ordered) // 2], 2),
            "max": round(ordered[-1], 2)}


def phase(n_accounts: int, tick: Mapping[str, Any], runs: list[dict[str, Any]],
          used: Mapping[str, float], launches: Mapping[str, Any]) -> dict[str, Any]:
    ends = [float(r["endTime"]) for r in runs if r.get("endTime")]
    wall = max(ends) - float(tick["timestamp"]) if ends else float("nan")
    target = TARGET_S.get(n_accounts)
    cpu = {k: round(v, 1) for k, v in used.items() if k not in {"requests", "event_log_rows", "event_log_bytes"}}
    return {
        "wall_s": round(wall, 1),
        "runs": len(runs),
        "runs_succeeded": sum(r["status"] == "SUCCESS" for r in runs),
        "per_account_ms": round(1000 * wall / n_accounts, 1),
        "requests": int(used["requests"]),
        "requests_per_account": round(used["requests"] / n_accounts, 3),
        "cpu_per_run_s": round(used.get("runs", 0.0) / max(len(runs), 1), 2),
        "cpu_s": cpu,
        # what the phase costs the machine, whatever else runs on it: its wall time on idle cores is at least this
        "cpu_total_s": round(sum(cpu.values()), 1),
        "cpu_bound_wall_s": round(sum(cpu.values()) / (os.cpu_count() or 1), 1),
        "tick_evaluation_s": round(float(tick["endTimestamp"]) - float(tick["timestamp"]), 1)
        if tick.get("endTimestamp") else None,
        "queue_wait_s": spread([float(r["startTime"]) - float(r["creationTime"]) for r in runs if r.get("startTime")]),
        "run_wall_s": spread([float(r["endTime"]) - float(r["startTime"]) for r in runs
                              if r.get("startTime") and r.get("endTime")]),
        **launches,
        "event_log_rows_per_account": round(used["event_log_rows"] / n_accounts, 1),
        "event_log_bytes_per_account": round(used["event_log_bytes"] / n_accounts),
        "target_s": target,
        "ratio_to_target": round(wall / target, 2) if target else None,
    }


def progress_logger(what: str, every_s: float = 30.0) -> Any:
    last = [0.0]

    def report(runs: list[dict[str, Any]]) -> None:
        if time.monotonic() - last[0] >= every_s:
            last[0] = time.monotonic()
            counts: dict[str, int] = {}
            for r in runs:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            log(f"{what}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))

    return report


def time_partition_view(url: str, key_pattern: str, n_partitions: int, screenshot: Path | None,
                        timeout_ms: int = 600_000) -> dict[str, Any]:
    """Seconds from navigation to the dm_history partitions view showing its partitions, in a fresh headless
    Chromium, then again on a reload: `*_list_s` until a partition key (`key_pattern`) is visible in the
    partition list, `*_s` until the status counts cover all `n_partitions` ("Materialized (N)")."""
    if not Path(CHROMIUM).exists():
        return {"skipped": f"{CHROMIUM} is missing (apt-get install -y chromium)"}
    from urllib.parse import urlsplit

    from playwright.sync_api import sync_playwright

    parts = urlsplit(url)
    page_url = f"http://{ALIAS}:{parts.port}/assets/dm_history?view=partitions"
    out: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=[*CHROMIUM_FLAGS, f"--host-resolver-rules=MAP {ALIAS} {parts.hostname}"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(timeout_ms)
            counted = re.compile(rf"^Materialized \(({n_partitions:,}|{n_partitions})\)$")
            for label in ("load", "reload"):
                t0 = time.perf_counter()
                if label == "load":
                    page.goto(page_url, wait_until="commit")
                else:
                    page.reload(wait_until="commit")
                page.get_by_text(re.compile(key_pattern)).first.wait_for(state="visible")
                out[f"{label}_list_s"] = round(time.perf_counter() - t0, 2)
                page.get_by_text(counted).first.wait_for(state="visible")
                out[f"{label}_s"] = round(time.perf_counter() - t0, 2)
            if screenshot:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
                out["screenshot"] = str(screenshot)
        finally:
            browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=2, help="conversation streams per account")
    parser.add_argument("--events", type=int, default=30, help="events per account in the simulated world")
    parser.add_argument("--deadline-s", type=float, default=4 * 3600, help="per phase")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-browser", action="store_true", help="skip the partitions view timing")
    parser.add_argument("--screenshot", type=Path, default=None, help="the partitions view, as timed")
    parser.add_argument("--logs", type=Path, default=None, help="keep the services' logs here")
    args = parser.parse_args()
    n = args.accounts
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="dm-fleet-") as tmp_name, own_postgres(fleet_pgdata()) as pgdata, \
            fresh_database("bench_fleet", pgdata) as db_url, \
            fresh_dagster_database(start_embedded(pgdata)) as dagster_pg_url, \
            simulator_process(n, args.events) as sim_url:
        tmp = Path(tmp_name)
        t0 = time.monotonic()
        sim = sim_accounts(sim_url)[:n]
        convs = sim_conversations(sim_url, [a["user_id"] for a in sim], args.conversations) \
            if args.conversations else None
        accounts_file = tmp / "accounts.yaml"
        write_accounts_file(accounts_file, sim_url, sim, conversations=convs)
        log(f"{n} accounts with {args.conversations} conversation streams each, in {time.monotonic() - t0:.0f}s")
        env = instance_env(tmp / "home", dagster_pg_url, db_url, accounts_file)
        code_env = {**{f"BENCH_TOKEN_{i}": a["token"] for i, a in enumerate(sim)},
                    "DM_PIPELINE_CRON": "*/2 * * * *"}   # switched on only for the timed tick
        write_dagster_home(env)
        stack = ProductionStack(env=env, code_env=code_env, log_dir=args.logs or tmp / "logs", daemon=False)
        results: dict[str, Any] = {
            "accounts": n, "streams_per_account": 1 + args.conversations, "events_per_account": args.events,
            "topology": "dagster api grpc (code server) + dagster-daemon + dagster-webserver, "
                        "deploy/workspace.grpc.yaml, dagster.yaml (Postgres, QueuedRunCoordinator)",
            "machine": {"cores": os.cpu_count(), "load_avg_at_start": round(load_at_start, 2)},
        }
        with stack:
            results["stack_ready_s"] = round(time.monotonic() - t0, 1)
            stack.set_schedule(False)   # nothing ticks into the backfill
            meter = Meter(stack, sim_url, pgdata, dagster_pg_url)

            # --- the first backfill: the accounts sensor's first tick, then its runs
            before = meter.snapshot()
            stack.start_daemon()
            tick = stack.wait_tick(stack.sensor_state, "the accounts sensor's tick with runs",
                                   lambda t: bool(t["runIds"]), deadline_s=args.deadline_s)
            log(f"sensor tick: {len(tick['runIds'])} runs requested")
            runs = stack.wait_runs(tick["runIds"], args.deadline_s, every_s=5.0,
                                   progress=progress_logger("backfill runs"))
            stack.wait_runs_reaped()
            results["backfill"] = phase(n, tick, runs, meter.since(before), meter.launches(tick["runIds"]))
            log(f"backfill: {results['backfill']}")

            # --- a no-op tick of the schedule
            before = meter.snapshot()
            tick = stack.one_schedule_tick(args.deadline_s, every_minutes=2)   # on, one tick, off
            log(f"schedule tick: {len(tick['runIds'])} runs requested")
            runs = stack.wait_runs(tick["runIds"], args.deadline_s, every_s=5.0,
                                   progress=progress_logger("tick runs"))
            stack.wait_runs_reaped()
            results["tick"] = phase(n, tick, runs, meter.since(before), meter.launches(tick["runIds"]))
            results["tick"]["other_schedule_ticks"] = sum(  # must be 0: one tick was timed, alone
                t["timestamp"] > tick["timestamp"] for t in stack.schedule_state(limit=10)["ticks"])
            log(f"tick: {results['tick']}")

            # --- the partitions view with N partitions
            if not args.no_browser:
                view = time_partition_view(stack.url, r"^acct-[0-9]{5}$", n, args.screenshot)
                results["partition_view"] = {"partitions": n, **view}
                log(f"partition view: {results['partition_view']}")
    results["machine"]["load_avg_at_end"] = round(os.getloadavg()[0], 2)
    emit(results, args.out)


if __name__ == "__main__":
    main()
