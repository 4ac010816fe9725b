"""The production topology, end to end: the code location served by `dagster api grpc` in a process of its own
(a Kubernetes user-code deployment), dagster-webserver and dagster-daemon reaching it through
`deploy/workspace.grpc.yaml`, all on the project's dagster.yaml with the embedded Postgres, and the simulator.

Only the code server gets the warehouse URL, the accounts file and the credentials. The daemon's accounts
sensor (evaluated in the code server) registers the accounts and requests their backfill in chunked runs;
the schedule, switched on as the UI's toggle does, ticks (cron every minute, from DM_PIPELINE_CRON in the
code server's environment) and syncs them again after the simulator moved on. Asserted: the webserver
reaches the location over gRPC (its origin is the code server's host and port, its server ID the code
server's); every run went through the queued coordinator (enqueued, then started by the daemon's run queue)
and was started by the code server (gRPC origin tag, the code server's reaped-children CPU); after each
phase every account in the warehouse equals the simulator's truth.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine

from dm_pipeline.models import Account, Provider
from tests.e2e.stack import (
    accounts_yaml,
    credentials_env,
    instance_env,
    mixed_accounts,
    runs_bound,
    truth_routes,
    write_dagster_home,
)
from tests.e2e.topology import SCHEDULE, SENSOR, ProductionStack
from tests.integration.helpers import audit_inserted_total, truth_rows, warehouse_rows

PER_RUN = 2
N_ACCOUNTS = 6          # two of each provider; the X ones with their inbox and two conversation streams


@pytest.fixture
def small_sim() -> Iterator[Any]:
    from dm_pipeline.simulator import Simulator, World

    world = World(seed=23, accounts=3, users=10, events_per_account=60)
    with Simulator(world, rate_limit=100_000) as server:
        yield server


def fleet(sim: Any) -> list[Account]:
    accounts = mixed_accounts(sim, N_ACCOUNTS, prefix="topo")
    return [dataclasses.replace(a, conversation_ids=tuple(c.id for c in sim.world.conversations_of(a.user_id)[:2]))
            if a.provider is Provider.X else a for a in accounts]


def assert_equals_truth(engine: Engine, sim: Any, accounts: list[Account], when: str) -> None:
    for account in accounts:
        expected: dict[str, tuple[object, ...]] = {}
        for route in truth_routes(sim.world, account):
            expected.update(truth_rows(sim.world.truth(account.user_id, route)))
        assert expected, account.key
        stored = warehouse_rows(engine, account.key)
        assert stored == expected, (when, account.key, len(stored), len(expected),
                                    sorted(set(expected) - set(stored))[:3], sorted(set(stored) - set(expected))[:3])
        assert audit_inserted_total(engine, account.key) == len(expected), (when, account.key)


@pytest.mark.slow
@pytest.mark.timeout(900)   # about 1 min on an idle machine, 5 min measured under a load average of 15
def test_the_production_topology(tmp_path: Path, db_url: str, engine: Engine, dagster_pg_url: str,
                                 small_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = small_sim
    accounts = fleet(sim)
    keys = [a.key for a in accounts]
    assert all(len(a.conversation_ids) == 2 for a in accounts if a.provider is Provider.X)
    accounts_file = tmp_path / "accounts.yaml"
    accounts_file.write_text(accounts_yaml(accounts))
    env = instance_env(tmp_path / "home", dagster_pg_url, db_url, accounts_file)
    code_env = {
        **credentials_env(sim.world, accounts),
        "DM_PIPELINE_ACCOUNTS_PER_RUN": str(PER_RUN),
        "DM_SIMULATOR_PORT": sim.url.rsplit(":", 1)[1],
        "DM_PIPELINE_CRON": "* * * * *",   # the code server's schedule ticks every minute once switched on
    }
    home = write_dagster_home(env)
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    stack = ProductionStack(env=env, code_env=code_env, log_dir=tmp_path / "logs", daemon=False)
    with stack:
        # The webserver reaches the location over gRPC, at the code server's address, and it is that server.
        origin = stack.location_origin()
        assert origin["load_status"] == "LOADED", origin
        assert origin["metadata"] == {"host": "127.0.0.1", "port": str(stack.grpc_port)}, origin
        assert origin["server_id"] == stack.server_id(), origin
        # Nothing may tick into the backfill: the schedule is off (the UI's toggle) before the daemon starts.
        assert stack.set_schedule(False) == "STOPPED"
        assert stack.schedule_state()["cron"] == "* * * * *"
        stack.start_daemon()
        timings["stack_ready_s"] = time.monotonic() - t0

        # --- the backfill: the accounts sensor's first tick registers the accounts and requests their runs
        t = time.monotonic()
        sensor_tick = stack.wait_tick(stack.sensor_state, "the accounts sensor's tick with runs",
                                      lambda tick: bool(tick["runIds"]), deadline_s=240)
        backfill_runs = stack.wait_runs(sensor_tick["runIds"], deadline_s=360)
        timings["backfill_s"] = time.monotonic() - t
        assert {r["status"] for r in backfill_runs} == {"SUCCESS"}, (backfill_runs, stack.diagnose())
        assert_equals_truth(engine, sim, accounts, "after the backfill")

        # --- the simulator moves on; the schedule, switched on, ticks and syncs every account again
        for uid in sim.world.accounts():
            sim.world.advance(uid, 3, seconds=60)
        schedule_tick = stack.one_schedule_tick(deadline_s=240)   # on (the UI's toggle), one tick, off
        assert schedule_tick["status"] == "SUCCESS" and schedule_tick["runIds"], schedule_tick
        assert stack.schedule_state()["status"] == "STOPPED"
        t = time.monotonic()
        tick_runs = stack.wait_runs(schedule_tick["runIds"], deadline_s=360)
        timings["tick_s"] = time.monotonic() - t
        assert {r["status"] for r in tick_runs} == {"SUCCESS"}, (tick_runs, stack.diagnose())
        stack.wait_runs_reaped()
        cpu = stack.cpu()
        diagnosis = stack.diagnose()
        codes = stack.stop()
    assert all(code is not None for code in codes.values()), codes
    assert_equals_truth(engine, sim, accounts, "after the schedule's tick")

    # Every run: requested by the sensor or the schedule, queued, dequeued by the daemon, started by the
    # DefaultRunLauncher through the code server's gRPC API, over a chunk of one provider's accounts.
    monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])
    for name in ("DM_PIPELINE_DAGSTER_ARTIFACTS", "DM_PIPELINE_DAGSTER_COMPUTE_LOGS"):
        monkeypatch.setenv(name, env[name])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        order = list(instance.get_dynamic_partitions("accounts"))  # a range covers this order, grouped by provider
        assert sorted(order) == sorted(keys)
        for runs, tag, name in ((backfill_runs, "dagster/sensor_name", SENSOR),
                                (tick_runs, "dagster/schedule_name", SCHEDULE)):
            assert 3 <= len(runs) <= runs_bound(N_ACCOUNTS, PER_RUN), [r["tags"] for r in runs]  # >= 1 per provider
            covered: list[str] = []
            for run in runs:
                stored = instance.get_run_by_id(run["runId"])
                assert stored is not None, run
                tags = dict(stored.tags)  # hidden tags too (GraphQL leaves them out)
                assert tags.get(tag) == name, tags
                assert json.loads(tags[".dagster/grpc_info"]) == {"host": "127.0.0.1", "port": stack.grpc_port}, tags
                assert tags.get("dm_pipeline/provider") in {p.value for p in Provider}, tags
                kinds = {e.dagster_event_type for e in instance.all_logs(run["runId"]) if e.dagster_event}
                # RUN_STARTING is what the daemon's run queue reports when it dequeues a run and launches it
                assert {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING,
                        dg.DagsterEventType.RUN_SUCCESS} <= kinds, (run["runId"], kinds)
                first = tags.get("dagster/asset_partition_range_start") or tags["dagster/partition"]
                last = tags.get("dagster/asset_partition_range_end") or first
                chunk = order[order.index(first): order.index(last) + 1]
                assert 1 <= len(chunk) <= PER_RUN and len({k.split("-")[-1] for k in chunk}) == 1, tags
                covered += chunk
            assert sorted(covered) == sorted(keys), (name, covered)
        assert instance.get_materialized_partitions(dg.AssetKey("dm_history")) == set(keys)
    # The runs were processes of the code server: it reaped them, and their CPU is its children's.
    assert cpu["runs"] > 0, (cpu, diagnosis)
    print(f"\nproduction topology, {N_ACCOUNTS} accounts: "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; runs {len(backfill_runs)} + {len(tick_runs)}, their CPU {cpu['runs']:.1f}s "
          + f"({cpu['runs'] / (len(backfill_runs) + len(tick_runs)):.1f}s per run); "
          + ", ".join(f"{k} CPU {v:.1f}s" for k, v in cpu.items() if k != "runs"))
