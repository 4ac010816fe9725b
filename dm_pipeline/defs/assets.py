"""`dm_history` + `dm_sync_audit`: one multi-asset, partitioned by account. Thin: resolve the accounts of
the run, call the engine, report counts and cursors (never text), evaluate the checks."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from dm_pipeline import checks
from dm_pipeline.defs.partitions import ACCOUNTS_PER_RUN, MAX_ACCOUNTS_PER_RUN, accounts_partitions
from dm_pipeline.defs.resources import ProvidersResource, WarehouseResource, env_var_token
from dm_pipeline.models import StreamStatus, SyncResult
from dm_pipeline.runner import PER_PROVIDER, POOL_SIZE, sync_accounts
from dm_pipeline.settings import load_settings
from dm_pipeline.sync import RunLimits

# Failures worth the asset's RetryPolicy; a 403 or a bad token will not heal in five seconds.
TRANSIENT_CODES = frozenset({"service_unavailable", "transport_error", "malformed_response", "database_unavailable",
                             "commit_failed"})
SWEEP_TAG = "dm_pipeline/sweep"


class SyncConfig(dg.Config):
    sweep: bool = False            # re-walk whole streams to refresh edits (still checkpointed per page)
    max_pages: int | None = None   # per stream; default from settings
    per_provider: int = PER_PROVIDER  # accounts of one provider syncing at once inside this run
    freshness_max_lag_s: float = 3600.0


def sync_metadata(results: list[SyncResult]) -> dict[str, dg.MetadataValue]:
    """The run's totals over its accounts, and per-stream detail for up to 50 of them: the metadata of a
    failed run's step failure. A materialization carries its own account's figures only (account_metadata)."""
    def total(attr: str) -> int:
        return sum(r.total(attr) for r in results)

    statuses = sorted({r.status.value for r in results})
    md: dict[str, dg.MetadataValue] = {
        "status": dg.MetadataValue.text(",".join(statuses)),
        "accounts": dg.MetadataValue.int(len(results)),
        "pages": dg.MetadataValue.int(total("pages")),
        "requests": dg.MetadataValue.int(total("requests")),
        "events_received": dg.MetadataValue.int(total("received")),
        "events_inserted": dg.MetadataValue.int(total("inserted")),
        "events_updated": dg.MetadataValue.int(total("updated")),
        "cost": dg.MetadataValue.int(total("cost")),
        "dormant_streams": dg.MetadataValue.int(sum(len(r.dormant) for r in results)),
        "not_due_streams": dg.MetadataValue.int(sum(len(r.not_due) for r in results)),
    }
    for r in results[:50]:
        md.update(stream_detail(r))
    return md


STREAM_DETAIL_LIMIT = 100  # per-stream entries per account; the totals always cover every stream


def account_metadata(r: SyncResult) -> dict[str, dg.MetadataValue]:
    """One account's figures: the metadata of its own partition's materialization of dm_history, whatever
    else its run synced. Counts, cursors, codes and statuses only, never text."""
    md: dict[str, dg.MetadataValue] = {
        "account": dg.MetadataValue.text(r.account_key),
        "status": dg.MetadataValue.text(r.status.value),
        "streams": dg.MetadataValue.int(len(r.streams)),
        "pages": dg.MetadataValue.int(r.total("pages")),
        "requests": dg.MetadataValue.int(r.total("requests")),
        "events_received": dg.MetadataValue.int(r.total("received")),
        "events_inserted": dg.MetadataValue.int(r.total("inserted")),
        "events_updated": dg.MetadataValue.int(r.total("updated")),
        "cost": dg.MetadataValue.int(r.total("cost")),
        "dormant_streams": dg.MetadataValue.int(len(r.dormant)),
        "not_due_streams": dg.MetadataValue.int(len(r.not_due)),
        **stream_detail(r),
    }
    if len(r.streams) > STREAM_DETAIL_LIMIT:
        md["streams_not_detailed"] = dg.MetadataValue.int(len(r.streams) - STREAM_DETAIL_LIMIT)
    return md


def stream_detail(r: SyncResult) -> dict[str, dg.MetadataValue]:
    """`<account>/<stream>` entries: status, counts, cursors and codes of each stream that ran (at most
    STREAM_DETAIL_LIMIT), and one `<account>/idle` entry for its dormant and not-due streams."""
    md: dict[str, dg.MetadataValue] = {}
    for s in r.streams[:STREAM_DETAIL_LIMIT]:
        md[f"{r.account_key}/{s.stream_key}"] = dg.MetadataValue.json({
            "status": s.status.value, "pages": s.pages, "requests": s.requests, "cost": s.cost,
            "inserted": s.inserted, "updated": s.updated, "high_water_id": s.high_water_id,
            "pass_cursor": s.pass_cursor, "error_code": s.error_code, "http_status": s.http_status,
            "gap_suspected": s.gap_suspected,
            "retry_at": s.retry_at.isoformat(timespec="seconds") if s.retry_at else None,
        })
    if r.dormant or r.not_due:
        # One entry, not one per stream: an account may have a thousand dormant conversations.
        md[f"{r.account_key}/idle"] = dg.MetadataValue.json({
            "dormant": len(r.dormant), "not_due": len(r.not_due), "examples": (r.dormant + r.not_due)[:5]})
    return md


# Set to False to record per-partition metadata through context.add_asset_metadata alone (the tests compare).
FAST_PARTITION_METADATA = True


def add_partition_metadata(context: dg.AssetExecutionContext, asset_key: str,
                           by_partition: dict[str, dict[str, dg.MetadataValue]]) -> None:
    """Metadata for each partition of a run over a range, so each partition's materialization carries its
    own figures. Dagster's API for it is `context.add_asset_metadata(md, asset_key=, partition_key=)`
    (MaterializeResult has no partition, and AssetMaterialization events yielded next to the outputs are
    extra events: dagster-io/dagster#29846). But each of those calls checks the key against storage: two
    lookups plus a read of every dynamic partition: 2.9-4.1 s per 50-account run at 10,000 accounts, against
    0.05 s this way (measured; a no-op run takes 2.3 s). The keys here are the run's own
    (context.partition_keys), already resolved, so they go into the same per-partition accumulator
    add_asset_metadata fills, without the lookups; if that internal is not there (another Dagster
    version), the public call does it."""
    step: Any = getattr(context.op_execution_context, "_step_execution_context", None)
    accumulator: Any = getattr(step, "_metadata_accumulator", None)
    if not FAST_PARTITION_METADATA or step is None or not hasattr(accumulator, "with_additional_asset_metadata"):
        for partition, md in by_partition.items():
            context.add_asset_metadata(md, asset_key=asset_key, partition_key=partition)
        return
    key = dg.AssetKey.from_user_string(asset_key)
    for partition, md in by_partition.items():
        accumulator = accumulator.with_additional_asset_metadata(asset_key=key, partition_key=partition,
                                                                 metadata=md)
    step._metadata_accumulator = accumulator


CHECKS = [
    dg.AssetCheckSpec("reconciliation", asset="dm_history",
                      description="audit inserts of committed pages equal the stored rows, per account"),
    dg.AssetCheckSpec("freshness", asset="dm_history", description="every stream succeeded recently"),
    dg.AssetCheckSpec("gap_suspected", asset="dm_history",
                      description="no windowed pass ended short of the previous high-water mark"),
    dg.AssetCheckSpec("sweep_freshness", asset="dm_history",
                      description="every full-history stream was swept within its account's sweep interval"),
    dg.AssetCheckSpec("redaction", asset="dm_sync_audit",
                      description="no audit value equals or contains a stored message text (checked in SQL)"),
]


@dg.multi_asset(
    specs=[
        dg.AssetSpec("dm_history", description="Private DM history, deduplicated on message ID.",
                     group_name="dm", kinds={"postgres"}),
        dg.AssetSpec("dm_sync_audit", description="Redacted audit: IDs, cursors, counts, status.",
                     group_name="dm", kinds={"postgres"}),
    ],
    check_specs=CHECKS,
    partitions_def=accounts_partitions,
    # A UI backfill of N accounts starts ceil(N / per run) runs; accounts sync concurrently inside each.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=ACCOUNTS_PER_RUN or MAX_ACCOUNTS_PER_RUN),
    can_subset=False,
    pool="dm_sync",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),  # safe: every page is a checkpoint
)
def dm_history_assets(context: dg.AssetExecutionContext, config: SyncConfig, warehouse: WarehouseResource,
                      providers: ProvidersResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    settings = load_settings()
    accounts = providers.accounts_for(context.partition_keys)
    sweep = config.sweep or context.run.tags.get(SWEEP_TAG, "").lower() in {"1", "true", "yes"}
    limits = RunLimits(max_pages=config.max_pages or settings.page_budget, time_budget_s=settings.time_budget_s,
                       poll_interval_s=settings.poll_interval_s,
                       write_ahead=settings.write_ahead,
                       sweep=sweep)
    engine = warehouse.engine(POOL_SIZE)
    results = sync_accounts(engine, accounts, context.run_id, limits, per_provider=config.per_provider,
                            lookup=env_var_token)
    # One event for the run, one line per account: a log call is an event-log write (a thousand of them
    # per tick of 1,000 accounts cost more than the no-op syncs themselves).
    context.log.info("\n".join(f"account={r.account_key} status={r.status.value} pages={r.total('pages')} "
                               f"inserted={r.total('inserted')} updated={r.total('updated')}" for r in results))
    failed = [r for r in results if r.status is StreamStatus.FAILED]
    if failed:
        codes = sorted({s.error_code or "error" for r in failed for s in r.streams if s.status is StreamStatus.FAILED})
        details = sorted({s.detail for r in failed for s in r.streams if s.detail})[:5]
        raise dg.Failure(description=f"sync failed for {len(failed)} of {len(results)} accounts: {', '.join(codes)} "
                                     "(committed pages are kept; the next run resumes)"
                                     + "".join(f"\n{d}" for d in details), metadata=sync_metadata(results),
                         allow_retries=set(codes) <= TRANSIENT_CODES)
    # One materialization per partition and asset, each with its own account's figures only: nothing is
    # attached to the results themselves, since Dagster copies that onto every partition of the range.
    by_account = {r.account_key: account_metadata(r) for r in results}
    add_partition_metadata(context, "dm_history", by_account)
    add_partition_metadata(context, "dm_sync_audit", {
        k: {"pages": md["pages"], "status": md["status"]} for k, md in by_account.items()})
    yield dg.MaterializeResult(asset_key="dm_history")
    yield dg.MaterializeResult(asset_key="dm_sync_audit")
    keys = [a.key for a in accounts]
    outcomes = {
        "reconciliation": (checks.reconciliation(engine, keys), dg.AssetCheckSeverity.ERROR, "dm_history"),
        "freshness": (checks.freshness(engine, keys, config.freshness_max_lag_s), dg.AssetCheckSeverity.WARN,
                      "dm_history"),
        "gap_suspected": (checks.gap_suspected(engine, keys), dg.AssetCheckSeverity.WARN, "dm_history"),
        "sweep_freshness": (checks.sweep_freshness(engine, accounts), dg.AssetCheckSeverity.WARN, "dm_history"),
        "redaction": (checks.redaction(engine, keys, context.run_id), dg.AssetCheckSeverity.ERROR, "dm_sync_audit"),
    }
    for name, (outcome, severity, asset) in outcomes.items():
        yield dg.AssetCheckResult(check_name=name, asset_key=asset, passed=outcome.passed, severity=severity,
                                  metadata=outcome.metadata)


# A run that hangs (a host that never finishes answering, a stuck database) is stopped by the daemon's run
# monitoring after DM_PIPELINE_RUN_TIMEOUT_S, so it frees its provider's run slot (dagster.yaml).
# A run is one step: it executes in the run's own process (the default executor would start a second
# process for it, importing Dagster and the project again: ~1.5 s of CPU per run); retries and pools hold.
dm_sync_job = dg.define_asset_job("dm_sync_job", selection=[dm_history_assets],
                                  partitions_def=accounts_partitions, executor_def=dg.in_process_executor,
                                  tags={"dagster/max_runtime": str(int(load_settings().run_timeout_s))})
