"""A run over a range of account partitions records one materialization per partition and asset, each with
its *own* account's figures (not the run's totals copied onto every partition), both through the fast path
of `add_partition_metadata` and through Dagster's public `context.add_asset_metadata`."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest
from sqlalchemy import Engine, text

from dm_pipeline.definitions import defs
from dm_pipeline.defs import assets
from dm_pipeline.defs.partitions import accounts_partitions
from dm_pipeline.defs.resources import WarehouseResource
from dm_pipeline.models import Account
from tests.conftest import sim_account

PAGE_SIZES = (50, 20, 100)  # distinct page counts per account, so a copied figure cannot pass for another's


@pytest.fixture
def accounts(sim, tmp_path, monkeypatch) -> Iterator[list[Account]]:
    accounts = [sim_account(sim, uid, monkeypatch, page_size=size, key=f"acct-{i}")
                for i, (uid, size) in enumerate(zip(sim.world.accounts(), PAGE_SIZES, strict=False))]
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n" + "".join(
        f"  - key: {a.key}\n    provider: x\n    user_id: \"{a.user_id}\"\n    base_url: {a.base_url}\n"
        f"    token_env: {a.token_env}\n    page_size: {a.page_size}\n" for a in accounts))
    monkeypatch.setenv("DM_PIPELINE_ACCOUNTS", str(path))
    yield accounts


def audited(engine: Engine, run_id: str) -> dict[str, tuple[int, int, int]]:
    """(pages, requests, inserted) per account, from the audit rows of one run."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT account_key, count(*) FILTER (WHERE row_kind = 'page'), "
            "coalesce(sum(requests) FILTER (WHERE row_kind = 'job'), 0), coalesce(sum(events_inserted), 0) "
            "FROM dm_audit.dm_sync_audit WHERE run_id = :r GROUP BY account_key"), {"r": run_id}).all()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


@pytest.mark.parametrize("fast", [True, False], ids=["accumulator", "add_asset_metadata"])
def test_each_partition_of_a_range_run_carries_its_own_figures(engine, db_url, sim, accounts,
                                                               monkeypatch, fast: bool) -> None:
    monkeypatch.setattr(assets, "FAST_PARTITION_METADATA", fast)
    keys = [a.key for a in accounts]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(accounts_partitions.name or "accounts", keys)
        result = defs.resolve_job_def("dm_sync_job").execute_in_process(
            instance=instance, raise_on_error=False,
            resources={"warehouse": WarehouseResource(database_url=db_url)},
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
        assert result.success
        per_account = audited(engine, result.run_id)
        assert set(per_account) == set(keys)
        assert len({v[:2] for v in per_account.values()}) == len(keys), per_account  # the accounts differ

        mats = result.asset_materializations_for_node("dm_history_assets")
        # Exactly one materialization per (asset, partition): none without a partition, no duplicates.
        assert sorted((m.asset_key.to_user_string(), m.partition) for m in mats) == sorted(
            (asset, k) for asset in ("dm_history", "dm_sync_audit") for k in keys)
        for account in accounts:
            pages, requests, inserted = per_account[account.key]
            history = next(m for m in mats if m.partition == account.key
                           and m.asset_key.to_user_string() == "dm_history").metadata
            assert history["account"].value == account.key
            assert history["status"].value == "succeeded"
            assert (history["pages"].value, history["requests"].value, history["events_inserted"].value) == (
                pages, requests, inserted)
            assert inserted == len(sim.world.truth(account.user_id))
            assert "accounts" not in history  # no run-level figure
            per_stream = [k for k in history if "/" in k]
            assert per_stream and all(k.startswith(f"{account.key}/") for k in per_stream), per_stream
            audit = next(m for m in mats if m.partition == account.key
                         and m.asset_key.to_user_string() == "dm_sync_audit").metadata
            assert set(audit) == {"pages", "status"} and audit["pages"].value == pages

            # What the UI shows for the partition: its latest stored materialization.
            stored = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("dm_history"), asset_partitions=[account.key]),
                limit=1).records[0].asset_materialization
            assert stored is not None and stored.metadata["account"].value == account.key
            assert stored.metadata["events_inserted"].value == inserted
