"""What a run costs per account, kept from growing back: runs sized to the fleet, the accounts file parsed
once per process, an account's stored state read for a batch of accounts, its rate-limit window saved with
other accounts', and a run's planned materializations written by one statement (dm_pipeline/dagster_storage)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import URL, Engine, event, text

from dm_pipeline.defs import automation, partitions, resources
from dm_pipeline.defs.automation import chunked_run_requests
from dm_pipeline.defs.partitions import accounts_per_run
from dm_pipeline.runner import SNAPSHOT_BATCH, sync_accounts
from dm_pipeline.sync import RunLimits
from tests.conftest import sim_account
from tests.e2e.stack import fresh_dagster_database, instance_env, write_dagster_home

RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def test_runs_are_sized_to_the_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(automation, "ACCOUNTS_PER_RUN", None)
    assert accounts_per_run(20) == partitions.MIN_ACCOUNTS_PER_RUN
    assert accounts_per_run(1000) == 500                     # a run per slot: 2 runs of one provider at once
    assert accounts_per_run(10_000) == partitions.MAX_ACCOUNTS_PER_RUN
    for n, runs in ((20, 1), (1000, 2), (10_000, 10)):
        keys = [f"a{i:05d}" for i in range(n)]
        assert len(chunked_run_requests(keys, None, "t", {k: "x" for k in keys})) == runs
    # Each provider's runs are sized to its own accounts, and never mix providers.
    provider_of = {f"x{i:04d}": "x" for i in range(1000)} | {f"q{i:02d}": "xquik" for i in range(10)}
    sizes = Counter(r.tags[automation.PROVIDER_TAG] for r in chunked_run_requests(list(provider_of), None, "t",
                                                                                     provider_of))
    assert sizes == {"x": 2, "xquik": 1}
    assert len(chunked_run_requests([f"a{i}" for i in range(100)], 10, "t")) == 10  # the variable still rules


def test_the_accounts_file_is_parsed_once_while_it_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    path = tmp_path / "accounts.yaml"
    entry = ("accounts:\n  - key: a\n    provider: x\n    user_id: \"1\"\n    base_url: ${BASE:-http://127.0.0.1:1}\n"
             "    token_env: T\n")
    path.write_text(entry)
    parses = Counter[str]()
    real = resources.load_accounts
    monkeypatch.setattr(resources, "load_accounts", lambda p: parses.update(["parse"]) or real(p))
    first = resources.cached_accounts(path)
    assert resources.cached_accounts(path) == first and parses["parse"] == 1
    monkeypatch.setenv("BASE", "http://127.0.0.1:2")          # a variable the file names
    assert resources.cached_accounts(path)[0].base_url == "http://127.0.0.1:2" and parses["parse"] == 2
    path.write_text(entry.replace("key: a", "key: b"))          # the file itself
    assert resources.cached_accounts(path)[0].key == "b" and parses["parse"] == 3


def test_a_run_reads_state_per_batch_and_saves_windows_together(engine: Engine, sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    accounts = [sim_account(sim, uid, monkeypatch, key=f"acct-{i}") for i, uid in enumerate(sim.world.accounts())]
    sync_accounts(engine, accounts, f"first-{uuid.uuid4()}", RunLimits())
    statements: list[str] = []
    listener = lambda *args: statements.append(" ".join(args[2].split()))  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        sync_accounts(engine, accounts, f"noop-{uuid.uuid4()}", RunLimits())
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    batches = -(-len(accounts) // SNAPSHOT_BATCH)
    one_account = [s for s in statements if "FROM dm_private.account_state WHERE account_key = %(k)s" in s]
    assert not one_account                                       # no governor reads its own row
    assert sum("account_key = ANY" in s and "account_state" in s for s in statements) == batches
    saves = [s for s in statements if s.startswith("INSERT INTO dm_private.account_state")]
    assert len(saves) == 1                                       # one batch of saves for the run
    with engine.connect() as conn:
        saved = conn.execute(text("SELECT account_key, rl_remaining FROM dm_private.account_state "
                                  "WHERE account_key = ANY(:k)"), {"k": [a.key for a in accounts]}).all()
    assert {k for k, remaining in saved if remaining is not None} == {a.key for a in accounts}


@pytest.fixture
def pg_instance(pg_server: URL, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[dg.DagsterInstance]:
    from dm_pipeline.settings import PROJECT_ROOT

    with fresh_dagster_database(pg_server) as url:
        env = instance_env(tmp_path, url, db_url, PROJECT_ROOT / "config" / "accounts.yaml")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with dg.DagsterInstance.from_config(str(write_dagster_home(env))) as instance:
            yield instance


def test_a_runs_planned_materializations_are_one_row_per_partition_written_at_once(pg_instance) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.dagster_storage import BatchedPlansEventLogStorage
    from dm_pipeline.definitions import defs
    from dm_pipeline.defs.partitions import accounts_partitions

    storage = pg_instance.event_log_storage
    assert isinstance(storage, BatchedPlansEventLogStorage)
    keys = [f"acct-{i:03d}" for i in range(120)]
    pg_instance.add_dynamic_partitions(accounts_partitions.name, keys)
    inserts: list[int] = []
    listener = lambda *args: inserts.append(1) if args[2].startswith("INSERT INTO event_logs") else None  # noqa: E731
    event.listen(storage._engine, "before_cursor_execute", listener)
    try:
        run = pg_instance.create_run_for_job(defs.resolve_job_def("dm_sync_job"), tags=dict(zip(RANGE, (
            keys[10], keys[109]), strict=True)))
    finally:
        event.remove(storage._engine, "before_cursor_execute", listener)
    planned = [e for e in pg_instance.all_logs(run.run_id)
               if e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED]
    assert sorted((e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition) for e in planned) == sorted(
        (asset, k) for asset in ("dm_history", "dm_sync_audit") for k in keys[10:110])
    assert len(inserts) < 20                                     # not one per partition and asset (200)
    assert pg_instance.get_asset_records([dg.AssetKey("dm_history")])[0].asset_entry.last_run_id == run.run_id
    # The UI's partition status still comes from them: in progress, then failed with the run.
    status = pg_instance.get_status_by_partition(dg.AssetKey("dm_history"), keys[10:12], accounts_partitions)
    assert {str(s) for s in status.values()} == {"AssetPartitionStatus.IN_PROGRESS"}
    pg_instance.report_run_failed(run)
    status = pg_instance.get_status_by_partition(dg.AssetKey("dm_history"), keys[10:12], accounts_partitions)
    assert {str(s) for s in status.values()} == {"AssetPartitionStatus.FAILED"}


def test_the_event_log_storage_reuses_its_connection_and_closes_it_with_the_instance(pg_instance) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.defs.partitions import accounts_partitions

    storage = pg_instance.event_log_storage
    keys = [f"acct-{i:03d}" for i in range(200)]
    pg_instance.add_dynamic_partitions(accounts_partitions.name, keys[:100])
    connects: list[int] = []
    listener = lambda *args: connects.append(1)  # noqa: E731
    event.listen(storage._engine, "connect", listener)
    try:
        # What the sensor daemon asks of each key a sensor's AddDynamicPartitionsRequest carries.
        known = [pg_instance.has_dynamic_partition(accounts_partitions.name, k) for k in keys]
    finally:
        event.remove(storage._engine, "connect", listener)
    assert known == [True] * 100 + [False] * 100
    assert len(connects) <= 1                                    # not a connection per key (200)
    assert storage._engine.pool.checkedin() == 1
    pg_instance.dispose()
    assert storage._engine.pool.checkedin() == 0                 # the instance holds no connection after
