"""The Dagster layer: definitions load, and a partitioned run materializes dm_history for an account
against the real database and the simulator, with counts-only metadata."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from dm_pipeline.definitions import defs
from dm_pipeline.defs.partitions import accounts_partitions
from dm_pipeline.defs.resources import WarehouseResource
from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth


def test_definitions_load_through_the_workspace_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # What `dagster dev -w workspace.yaml` loads; a throwaway DAGSTER_HOME keeps the instance out of it.
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def accounts_file(tmp_path, sim, monkeypatch):  # type: ignore[no-untyped-def]
    accounts = [sim_account(sim, uid, monkeypatch, key=f"acct-{i}") for i, uid in enumerate(sim.world.accounts())]
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n" + "".join(
        f"  - key: {a.key}\n    provider: x\n    user_id: \"{a.user_id}\"\n    base_url: {a.base_url}\n"
        f"    token_env: {a.token_env}\n    page_size: {a.page_size}\n" for a in accounts))
    monkeypatch.setenv("DM_PIPELINE_ACCOUNTS", str(path))
    return accounts


def _run(key: str, db_url: str, instance: dg.DagsterInstance, **config: object) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("dm_sync_job")
    return job.execute_in_process(
        partition_key=key, instance=instance, raise_on_error=False,
        resources={"warehouse": WarehouseResource(database_url=db_url)},
        run_config={"ops": {"dm_history_assets": {"config": config}}} if config else None)


def test_a_partitioned_run_materializes_the_account(engine, db_url, sim, accounts_file) -> None:  # type: ignore[no-untyped-def]
    account = accounts_file[0]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(accounts_partitions.name, [a.key for a in accounts_file])
        result = _run(account.key, db_url, instance)
        assert result.success
        assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
        mats = result.asset_materializations_for_node("dm_history_assets")
        assert {m.asset_key.to_user_string() for m in mats} == {"dm_history", "dm_sync_audit"}
        md = next(m for m in mats if m.asset_key.to_user_string() == "dm_history").metadata
        assert md["events_inserted"].value == len(sim.world.truth(account.user_id))
        assert md["status"].value == "succeeded"
        texts = [e["text"] for e in sim.world.truth(account.user_id) if e.get("text")]
        blob = str({k: v.value for k, v in md.items()})
        assert not any(t in blob for t in texts if len(t) >= 6)

        again = _run(account.key, db_url, instance)
        md2 = again.asset_materializations_for_node("dm_history_assets")[0].metadata
        assert (md2["events_inserted"].value, md2["requests"].value) == (0, 1)


def test_a_failed_sync_fails_the_run_with_its_error_code(engine, db_url, sim, accounts_file) -> None:  # type: ignore[no-untyped-def]
    account = accounts_file[1]
    sim.faults.inject(account.user_id, "dm_events", "403", count=10)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(accounts_partitions.name, [account.key])
        job = defs.resolve_job_def("dm_sync_job")
        # A 403 is not transient: the step fails at once, without the asset's RetryPolicy.
        result = job.execute_in_process(partition_key=account.key, instance=instance, raise_on_error=False,
                                        resources={"warehouse": WarehouseResource(database_url=db_url)})
        assert not result.success
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert len(failure) == 1 and "client_forbidden" in str(failure[0].event_specific_data)
        assert sim.requests(account.user_id) == 1


def test_the_accounts_sensor_registers_partitions(accounts_file) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.defs.automation import accounts_sensor

    with dg.instance_for_test() as instance:
        result = accounts_sensor(dg.build_sensor_context(instance=instance))
        (request,) = result.dynamic_partitions_requests
        assert sorted(request.partition_keys) == sorted(a.key for a in accounts_file)


def test_one_run_syncs_a_range_of_accounts_concurrently_and_checks_pass(engine, db_url, sim,  # type: ignore[no-untyped-def]
                                                                        accounts_file) -> None:
    keys = [a.key for a in accounts_file]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(accounts_partitions.name, keys)
        job = defs.resolve_job_def("dm_sync_job")
        result = job.execute_in_process(
            instance=instance, raise_on_error=False,
            resources={"warehouse": WarehouseResource(database_url=db_url)},
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
        assert result.success
        for account in accounts_file:
            assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
        mats = [m for m in result.asset_materializations_for_node("dm_history_assets")
                if m.asset_key.to_user_string() == "dm_history"]
        assert sorted(m.partition for m in mats) == sorted(keys)  # one per account, its own figures
        assert all(m.metadata["account"].value == m.partition for m in mats)
        evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations == {"reconciliation": True, "freshness": True, "gap_suspected": True, "redaction": True,
                               "sweep_freshness": True}


def test_the_redaction_check_catches_a_text_in_the_audit(engine, db_url, sim, accounts_file) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from dm_pipeline import checks

    account = accounts_file[0]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(accounts_partitions.name, [account.key])
        assert _run(account.key, db_url, instance).success
    assert checks.redaction(engine, [account.key]).passed
    with engine.begin() as conn:  # simulate a leak: a message text written as an audit cursor
        conn.execute(text("UPDATE dm_audit.dm_sync_audit SET cursor_in = (SELECT text FROM dm_private.dm_history "
                          "WHERE length(text) >= 8 LIMIT 1) WHERE audit_id = (SELECT min(audit_id) FROM "
                          "dm_audit.dm_sync_audit)"))
    outcome = checks.redaction(engine, [account.key])
    assert not outcome.passed and len(outcome.metadata["leaking_message_ids"]) >= 1
    assert checks.reconciliation(engine, [account.key]).passed
    # The command's full check finds it too, and names the message, never its text.
    from tests.integration.test_cli_errors import cli

    with engine.connect() as conn:
        leaked = conn.scalar(text("SELECT cursor_in FROM dm_audit.dm_sync_audit WHERE audit_id = (SELECT "
                                  "min(audit_id) FROM dm_audit.dm_sync_audit)"))
    proc = cli("audit", "redaction", env={"DATABASE_URL": db_url})
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stdout and outcome.metadata["leaking_message_ids"][0] in proc.stdout
    assert leaked not in proc.stdout + proc.stderr
    proc = cli("audit", "redaction", "no-such-account", env={"DATABASE_URL": db_url})
    assert proc.returncode == 0 and "passed for 1 account" in proc.stdout, proc.stderr


def test_the_redaction_check_finds_a_text_inside_a_value_of_the_run(engine, sim, accounts_file) -> None:  # type: ignore[no-untyped-def]
    """Containment, for texts of each prefix size (8, 16, 32, 64 characters and longer), at any position."""
    import uuid

    from sqlalchemy import text

    from dm_pipeline import checks
    from dm_pipeline.runner import sync_accounts
    from dm_pipeline.sync import RunLimits

    account, run_id = accounts_file[0], f"leak-{uuid.uuid4()}"
    sync_accounts(engine, [account], run_id, RunLimits())
    assert checks.redaction(engine, [account.key], run_id).passed
    with engine.connect() as conn:
        ids = list(conn.scalars(text("SELECT message_id FROM dm_private.dm_history WHERE account_key = :k "
                                     "ORDER BY message_id LIMIT 6"), {"k": account.key}))
    lengths = (8, 15, 16, 40, 64, 150)  # each side of each prefix size
    leaks = {m: "".join(chr(0x61 + (i + j) % 26) for j in range(n - 1)) + "ü"
             for i, (m, n) in enumerate(zip(ids, lengths, strict=True))}
    with engine.begin() as conn:  # each text, inside a different audit value of the run, at a different offset
        for message_id, leaked in leaks.items():
            conn.execute(text("UPDATE dm_private.dm_history SET text = :t WHERE account_key = :k AND message_id = :m"),
                         {"t": leaked, "k": account.key, "m": message_id})
        inside = ["x" * i + "<" + t + ">" for i, t in enumerate(leaks.values())]
        for row, values in (("max", inside[:3]), ("min", inside[3:])):  # the strings of two of the run's rows
            conn.execute(text(f"UPDATE dm_audit.dm_sync_audit SET cursor_in = :a, cursor_out = :b, error_code = :c "
                              f"WHERE audit_id = (SELECT {row}(audit_id) FROM dm_audit.dm_sync_audit "
                              "WHERE run_id = :r)"),
                         {"a": values[0], "b": values[1], "c": values[2], "r": run_id})
    found = checks.redaction(engine, [account.key], run_id).metadata["leaking_message_ids"]
    assert sorted(found) == sorted(leaks)
    assert checks.redaction(engine, [account.key], "another-run").passed  # containment: the run's values only
    first_id, first_text = next(iter(leaks.items()))
    with engine.begin() as conn:  # an ID array element equal to a text: equality
        conn.execute(text("UPDATE dm_audit.dm_sync_audit SET message_ids = message_ids || CAST(:t AS text) "
                          "WHERE audit_id = (SELECT max(audit_id) FROM dm_audit.dm_sync_audit WHERE run_id = :r)"),
                     {"t": first_text, "r": run_id})
    assert checks.redaction(engine, [account.key]).metadata["leaking_message_ids"] == [first_id]  # every pair
    # A run that neither wrote the value nor changed the text is not asked about the pair; a later run that
    # stores the text again is, against that older value.
    assert checks.redaction(engine, [account.key], "another-run").passed
    with engine.begin() as conn:
        conn.execute(text("UPDATE dm_private.dm_history SET last_changed_run_id = 'later-run' "
                          "WHERE account_key = :k AND message_id = :m"), {"k": account.key, "m": first_id})
    assert checks.redaction(engine, [account.key], "later-run").metadata["leaking_message_ids"] == [first_id]


def test_the_schedule_requests_one_run_per_chunk_of_accounts() -> None:
    from dm_pipeline.defs.automation import chunked_run_requests

    keys = [f"acct-{i:04d}" for i in range(1000)]
    requests = chunked_run_requests(keys, 50, "t0")
    assert len(requests) == 20
    assert requests[0].tags["dagster/asset_partition_range_start"] == "acct-0000"
    assert requests[-1].tags["dagster/asset_partition_range_end"] == "acct-0999"
    assert len({r.run_key for r in requests}) == 20
    mixed = chunked_run_requests(["a", "b", "c", "d"], 50, "t1", {"a": "x", "b": "x", "c": "xquik", "d": "x"})
    assert [r.tags.get("dm_pipeline/provider") for r in mixed] == ["x", "xquik", "x"]
