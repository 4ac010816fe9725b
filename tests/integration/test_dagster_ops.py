"""The operational side of the Dagster layer: the accounts sensor keeps one partition per account (and
removing one keeps its rows), the schedule chunks every account into provider-pure runs, a sweep run
refreshes edits an incremental run cannot see, and the project's dagster.yaml loads as documented.

Compute logs holding no message text are proved by tests/integration/test_redaction_canary.py (a
persistent instance's LocalComputeLogManager files, scanned for canaries) and, with the project's own
dagster.yaml and daemon-launched runs, by tests/e2e/test_webserver_backfill.py; not repeated here."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import URL, Engine, text

from dm_pipeline.definitions import defs
from dm_pipeline.defs import automation
from dm_pipeline.defs.assets import SWEEP_TAG
from dm_pipeline.defs.automation import PROVIDER_TAG, accounts_sensor, every_account_schedule
from dm_pipeline.defs.partitions import accounts_partitions
from dm_pipeline.defs.resources import WarehouseResource
from dm_pipeline.models import Account
from dm_pipeline.settings import PROJECT_ROOT
from dm_pipeline.simulator.world import MESSAGE_CREATE
from tests.conftest import getxapi_account, sim_account, xquik_account
from tests.e2e.stack import accounts_yaml, fresh_dagster_database, instance_env, write_dagster_home
from tests.integration.helpers import assert_equals_truth, warehouse_rows

NAME = accounts_partitions.name or "accounts"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def write_accounts(path: Path, accounts: Sequence[Account], monkeypatch: pytest.MonkeyPatch) -> None:
    path.write_text(accounts_yaml(accounts))
    monkeypatch.setenv("DM_PIPELINE_ACCOUNTS", str(path))


def sensor_tick(instance: dg.DagsterInstance) -> dg.SensorResult:
    """Evaluate the accounts sensor and apply its partition requests, as the sensor daemon does."""
    result = accounts_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def schedule_tick(instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2025, 1, 1, tzinfo=UTC))
    requests = every_account_schedule(context)
    assert isinstance(requests, list)
    return requests


def run_keys(request: dg.RunRequest, registered: list[str]) -> list[str]:
    """The partitions a run request covers: its key, or every registered key of its range."""
    if request.partition_key:
        return [request.partition_key]
    first, last = request.tags[RANGE_START], request.tags[RANGE_END]
    return registered[registered.index(first): registered.index(last) + 1]


def materialize(db_url: str, instance: dg.DagsterInstance, key: str,
                tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("dm_sync_job").execute_in_process(
        partition_key=key, instance=instance, raise_on_error=False, tags=tags,
        resources={"warehouse": WarehouseResource(database_url=db_url)})


# ----------------------------------------------------------------------------------- the sensor
def test_the_sensor_removes_the_partition_of_a_dropped_account_and_keeps_its_rows(  # type: ignore[no-untyped-def]
        engine: Engine, db_url: str, sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accounts = [sim_account(sim, uid, monkeypatch, key=f"acct-{i}") for i, uid in enumerate(sim.world.accounts())]
    keys = [a.key for a in accounts]
    dropped = accounts[1]
    accounts_file = tmp_path / "accounts.yaml"
    write_accounts(accounts_file, accounts, monkeypatch)
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance)
        assert instance.get_dynamic_partitions(NAME) == keys
        assert sorted(k for r in first.run_requests or [] for k in run_keys(r, keys)) == keys  # backfills them
        assert materialize(db_url, instance, dropped.key).success
        assert_equals_truth(engine, dropped.key, sim.world.truth(dropped.user_id))
        stored = warehouse_rows(engine, dropped.key)

        write_accounts(accounts_file, [accounts[0], accounts[2]], monkeypatch)
        # Before the sensor notices, the schedule already skips the account, and no run's range spans its
        # (still registered) partition: that run would fail on the stale key.
        with monkeypatch.context() as m:
            m.setattr(automation, "ACCOUNTS_PER_RUN", 50)
            before = schedule_tick(instance)
        assert [run_keys(r, keys) for r in before] == [["acct-0"], ["acct-2"]]

        second = sensor_tick(instance)
        (delete,) = second.dynamic_partitions_requests or []
        assert isinstance(delete, dg.DeleteDynamicPartitionsRequest) and list(delete.partition_keys) == [dropped.key]
        assert not second.run_requests  # removing an account launches nothing
        assert instance.get_dynamic_partitions(NAME) == ["acct-0", "acct-2"]
        assert warehouse_rows(engine, dropped.key) == stored  # its data stays
        assert not (sensor_tick(instance).dynamic_partitions_requests or [])  # idempotent

        write_accounts(accounts_file, accounts, monkeypatch)  # it comes back: registered and backfilled again
        again = sensor_tick(instance)
        assert instance.get_dynamic_partitions(NAME) == ["acct-0", "acct-2", dropped.key]
        assert [k for r in again.run_requests or [] for k in run_keys(r, instance.get_dynamic_partitions(NAME))] == [
            dropped.key]
        assert {r.run_key for r in again.run_requests or []}.isdisjoint({r.run_key for r in first.run_requests or []})


# ---------------------------------------------------------------------------------- the schedule
def test_the_schedule_requests_every_account_in_few_provider_pure_runs(  # type: ignore[no-untyped-def]
        sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_run = 2
    monkeypatch.setattr(automation, "ACCOUNTS_PER_RUN", per_run)
    u0, u1, u2 = sim.world.accounts()
    peers = [next(m for m in c.members if m != u0) for c in sim.world.conversations_of(u0) if not c.is_group]
    # Interleaved in the file, as a real one grows: x, xquik, getxapi, x, xquik, getxapi, x.
    accounts = [
        sim_account(sim, u0, monkeypatch, key="a-x0"), xquik_account(sim, u0, peers[:1], monkeypatch, key="b-q0"),
        getxapi_account(sim, u0, monkeypatch, key="c-g0"), sim_account(sim, u1, monkeypatch, key="d-x1"),
        xquik_account(sim, u1, peers[:1], monkeypatch, key="e-q1"), getxapi_account(sim, u1, monkeypatch, key="f-g1"),
        sim_account(sim, u2, monkeypatch, key="g-x2"),
    ]
    provider_of = {a.key: a.provider.value for a in accounts}
    write_accounts(tmp_path / "accounts.yaml", accounts, monkeypatch)
    with dg.instance_for_test() as instance:
        registration = sensor_tick(instance)
        registered = instance.get_dynamic_partitions(NAME)
        requests = schedule_tick(instance)

    per_provider = Counter(provider_of.values())
    fewest = sum(math.ceil(n / per_run) for n in per_provider.values())  # runs cannot mix providers
    for batch in (requests, registration.run_requests or []):
        covered = [run_keys(r, registered) for r in batch]
        assert sorted(k for keys in covered for k in keys) == sorted(provider_of)  # each account exactly once
        for request, keys in zip(batch, covered, strict=True):
            assert 1 <= len(keys) <= per_run
            assert {provider_of[k] for k in keys} == {request.tags[PROVIDER_TAG]}  # pure, and tagged so
        assert len(batch) == fewest == math.ceil(len(accounts) / per_run)
        assert len({r.run_key for r in batch}) == len(batch)


# ----------------------------------------------------------------------------------------- sweep
def test_a_sweep_run_refreshes_an_edit_a_normal_run_cannot_see(  # type: ignore[no-untyped-def]
        engine: Engine, db_url: str, sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = sim.world.accounts()[0]
    account = getxapi_account(sim, uid, monkeypatch, key="getxapi-0")
    write_accounts(tmp_path / "accounts.yaml", [account], monkeypatch)
    old = [e for e in sim.world.truth(uid, "getxapi:all") if e["event_type"] == MESSAGE_CREATE][-1]  # the oldest
    edited = f"edited in place {old['id']}"

    def stored_text() -> str:
        with engine.connect() as conn:
            return str(conn.scalar(text("SELECT text FROM dm_private.dm_history WHERE account_key = :k "
                                        "AND message_id = :m"), {"k": account.key, "m": old["id"]}))

    def updated(result: dg.ExecuteInProcessResult) -> int:
        md = next(m for m in result.asset_materializations_for_node("dm_history_assets")
                  if m.asset_key.to_user_string() == "dm_history").metadata
        return int(md["events_updated"].value)  # type: ignore[arg-type]

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(NAME, [account.key])
        assert materialize(db_url, instance, account.key).success
        assert stored_text() == old["text"]
        sim.world.edit(old["id"], edited)

        normal = materialize(db_url, instance, account.key)
        assert normal.success and updated(normal) == 0 and stored_text() == old["text"]

        sweep = materialize(db_url, instance, account.key, tags={SWEEP_TAG: "true"})
        assert sweep.success and updated(sweep) == 1 and stored_text() == edited
        assert instance.get_run_by_id(sweep.run_id).tags[SWEEP_TAG] == "true"  # type: ignore[union-attr]
        checks = {e.check_name: e.passed for e in sweep.get_asset_check_evaluations()}
        assert checks == {"reconciliation": True, "freshness": True, "gap_suspected": True, "redaction": True,
                               "sweep_freshness": True}


# ------------------------------------------------------------------------------------ dagster.yaml
@pytest.fixture
def dagster_pg_url(pg_server: URL) -> Iterator[str]:
    with fresh_dagster_database(pg_server) as url:
        yield url


def test_the_project_dagster_yaml_loads_with_its_settings(tmp_path: Path, db_url: str, dagster_pg_url: str,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    env = instance_env(tmp_path, dagster_pg_url, db_url, PROJECT_ROOT / "config" / "accounts.yaml")
    home = write_dagster_home(env)
    assert (home / "dagster.yaml").read_text() == (PROJECT_ROOT / "dagster.yaml").read_text()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        concurrency = instance.get_concurrency_config()
        queue = concurrency.run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 8
        assert list(queue.tag_concurrency_limits) == [
            {"key": PROVIDER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 2}]
        assert concurrency.pool_config.default_pool_limit == 4
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.telemetry_enabled
        logs = instance.compute_log_manager
        assert isinstance(logs, LocalComputeLogManager)
        assert Path(logs._base_dir) == Path(env["DM_PIPELINE_DAGSTER_COMPUTE_LOGS"])
        assert Path(instance.root_directory) == Path(env["DM_PIPELINE_DAGSTER_ARTIFACTS"])
        # An event write and read on the psycopg2 URL (psycopg 3 fails at the first event write).
        instance.add_dynamic_partitions(NAME, ["probe"])
        instance.report_runless_asset_event(dg.AssetMaterialization("dm_history", partition="probe"))
        assert instance.get_latest_materialization_event(dg.AssetKey("dm_history")) is not None
        assert instance.get_dynamic_partitions(NAME) == ["probe"]
