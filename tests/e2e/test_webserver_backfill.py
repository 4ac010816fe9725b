"""End to end, as an operator does it: `dagster-webserver` and `dagster-daemon run` as real subprocesses on
the project's dagster.yaml (instance storage in its own Postgres database, QueuedRunCoordinator, pools),
partitions registered, then the UI's `launchPartitionBackfill` mutation over several accounts of three
providers. The daemon chunks it into runs (BackfillPolicy.multi_run), launches them, and the warehouse ends
equal to the simulator's truth, audited per run, with every asset check passing and no message text in the
compute logs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, text

from dm_pipeline.defs.partitions import accounts_partitions
from tests.e2e.stack import (
    DagsterStack,
    accounts_yaml,
    credentials_env,
    instance_env,
    mixed_accounts,
    runs_bound,
    truth_routes,
    write_dagster_home,
)
from tests.integration.helpers import audit_inserted_total, truth_rows, warehouse_rows

PER_RUN = 2
N_ACCOUNTS = 5
ASSETS = ["dm_history", "dm_sync_audit"]
CHECKS = {"reconciliation", "freshness", "gap_suspected", "sweep_freshness", "redaction"}


@pytest.fixture
def small_sim() -> Iterator[object]:
    """A small world (fast runs on two cores) served over loopback by the test process."""
    from dm_pipeline.simulator import Simulator, World

    world = World(seed=23, accounts=3, users=10, events_per_account=90)
    with Simulator(world, rate_limit=100_000) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_ui_backfill_through_the_webserver_and_daemon(tmp_path: Path, db_url: str, engine: Engine,
                                                        dagster_pg_url: str, small_sim,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sim = small_sim
    accounts = mixed_accounts(sim, N_ACCOUNTS)
    keys = [a.key for a in accounts]
    accounts_file = tmp_path / "accounts.yaml"
    accounts_file.write_text(accounts_yaml(accounts))
    env = instance_env(tmp_path / "home", dagster_pg_url, db_url, accounts_file, {
        **credentials_env(sim.world, accounts),
        "DM_PIPELINE_ACCOUNTS_PER_RUN": str(PER_RUN),
        "DM_SIMULATOR_PORT": sim.url.rsplit(":", 1)[1],
        "DM_PIPELINE_CRON": "0 0 1 1 *",   # the schedule must not tick into the test
    })
    home = write_dagster_home(env)
    for name, value in env.items():  # the same instance, in this process
        monkeypatch.setenv(name, value)

    # Register the partitions through the instance (this also creates Dagster's schema once, before two
    # processes race for it). The daemon's accounts sensor then finds nothing to add.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(accounts_partitions.name or "accounts", keys)

    t0 = time.monotonic()
    stack = DagsterStack(env=env, log_dir=tmp_path / "logs")
    with stack:
        ready_s = time.monotonic() - t0
        backfill_id = stack.launch_asset_backfill(ASSETS, keys)
        state = stack.wait_backfill(backfill_id, deadline_s=360)
        backfill_s = time.monotonic() - t0 - ready_s
        diagnosis = stack.diagnose()
        codes = stack.stop()
    assert state["status"] == "COMPLETED_SUCCESS", f"{state}\n{diagnosis}"
    assert state["isAssetBackfill"] and sorted(state["partitionNames"]) == sorted(keys)
    assert all(code is not None for code in codes.values()), codes  # both exited on SIGTERM

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
        run_ids = [r.run_id for r in runs]
        # At most ceil(accounts / per run) runs, each over a range of at most PER_RUN accounts, together
        # covering every account once.
        assert 1 <= len(runs) <= runs_bound(N_ACCOUNTS, PER_RUN), [r.tags for r in runs]
        assert {r.run_id for r in runs} == {r["runId"] for r in state["runs"]}
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
        covered: list[str] = []
        for run in runs:
            first = run.tags.get("dagster/asset_partition_range_start") or run.tags["dagster/partition"]
            last = run.tags.get("dagster/asset_partition_range_end") or first
            chunk = keys[keys.index(first): keys.index(last) + 1]
            assert 1 <= len(chunk) <= PER_RUN, run.tags
            covered += chunk
        assert sorted(covered) == sorted(keys)

        materialized = instance.get_materialized_partitions(dg.AssetKey("dm_history"))
        assert materialized == set(keys)
        evaluations = [e.get_dagster_event().event_specific_data for rid in run_ids
                       for e in instance.all_logs(rid, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
        assert {(ev.check_name, ev.passed) for ev in evaluations} == {(c, True) for c in CHECKS}
        assert len(evaluations) == len(CHECKS) * len(runs)

    # The warehouse equals the simulator's truth, account by account, and every row is audited by a page
    # of one of the backfill's runs (nothing else ran).
    for account in accounts:
        expected: dict[str, tuple[object, ...]] = {}
        for route in truth_routes(sim.world, account):
            expected.update(truth_rows(sim.world.truth(account.user_id, route)))
        assert expected, account.key
        assert warehouse_rows(engine, account.key) == expected, account.key
        assert audit_inserted_total(engine, account.key) == len(expected)
    with engine.connect() as conn:
        audited = conn.execute(text(
            "SELECT account_key, array_agg(DISTINCT run_id) AS runs, count(*) FILTER (WHERE row_kind = 'job') AS jobs, "
            "bool_and(job_status = 'succeeded') FILTER (WHERE row_kind = 'job') AS ok "
            "FROM dm_audit.dm_sync_audit GROUP BY account_key")).mappings().all()
    assert {r["account_key"] for r in audited} == set(keys)
    for row in audited:
        assert set(row["runs"]) <= set(run_ids) and len(row["runs"]) == 1, row
        assert row["jobs"] >= 1 and row["ok"], row

    # Compute logs of the daemon-launched runs (the project's LocalComputeLogManager, via env) exist and
    # hold no message text.
    log_root = Path(env["DM_PIPELINE_DAGSTER_COMPUTE_LOGS"])
    blob = "\n".join(p.read_text(errors="replace") for p in log_root.rglob("*") if p.is_file())
    assert "account=" in blob, f"no compute logs under {log_root}"
    texts = {str(e["text"]) for a in accounts for r in truth_routes(sim.world, a)
             for e in sim.world.truth(a.user_id, r) if e.get("text") and len(str(e["text"])) >= 12}
    assert texts and not [t for t in texts if t in blob]
    print(f"stack ready in {ready_s:.1f}s, backfill of {N_ACCOUNTS} accounts in {len(runs)} runs "
          f"finished in {backfill_s:.1f}s")
