"""`dm_history` + `dm_sync_audit`: one multi-asset, partitioned by account. Thin: resolve the account,
call the engine, report counts and cursors (never text)."""


from collections.abc import Iterator

import dagster as dg

from dm_pipeline.clients import build_client, http_client
from dm_pipeline.defs.partitions import accounts_partitions
from dm_pipeline.defs.resources import ProvidersResource, WarehouseResource, env_var_token
from dm_pipeline.models import StreamStatus, SyncResult
from dm_pipeline.settings import load_settings
from dm_pipeline.sync import RunLimits, sync_account

# Failures worth the asset's RetryPolicy; a 403 or a bad token will not heal in five seconds.
TRANSIENT_CODES = frozenset({"service_unavailable", "transport_error", "malformed_response"})


class SyncConfig(dg.Config):
    sweep: bool = False            # re-walk whole streams to refresh edits (still checkpointed per page)
    max_pages: int | None = None   # per stream; default from settings


def sync_metadata(result: SyncResult) -> dict[str, dg.MetadataValue]:
    md: dict[str, dg.MetadataValue] = {
        "status": dg.MetadataValue.text(result.status.value),
        "pages": dg.MetadataValue.int(result.total("pages")),
        "requests": dg.MetadataValue.int(result.total("requests")),
        "events_received": dg.MetadataValue.int(result.total("received")),
        "events_inserted": dg.MetadataValue.int(result.total("inserted")),
        "events_updated": dg.MetadataValue.int(result.total("updated")),
    }
    for s in result.streams:
        md[f"stream/{s.stream_key}"] = dg.MetadataValue.json({
            "status": s.status.value, "pages": s.pages, "requests": s.requests, "inserted": s.inserted,
            "updated": s.updated, "high_water_id": s.high_water_id, "pass_cursor": s.pass_cursor,
            "error_code": s.error_code, "http_status": s.http_status, "gap_suspected": s.gap_suspected,
        })
    return md


@dg.multi_asset(
    specs=[
        dg.AssetSpec("dm_history", description="Private DM history, deduplicated on message ID.",
                     group_name="dm", kinds={"postgres"}),
        dg.AssetSpec("dm_sync_audit", description="Redacted audit: IDs, cursors, counts, status.",
                     group_name="dm", kinds={"postgres"}),
    ],
    partitions_def=accounts_partitions,
    can_subset=False,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),  # safe: every page is a checkpoint
)
def dm_history_assets(context: dg.AssetExecutionContext, config: SyncConfig, warehouse: WarehouseResource,
                      providers: ProvidersResource) -> Iterator[dg.MaterializeResult]:
    settings = load_settings()
    account = providers.account(context.partition_key)
    limits = RunLimits(max_pages=config.max_pages or settings.page_budget,
                       time_budget_s=settings.time_budget_s, sweep=config.sweep)
    with http_client(providers.http_timeout_s) as http:
        engine = warehouse.engine()
        client = build_client(account, http, env_var_token, engine=engine)
        result = sync_account(engine, client, context.run_id, limits)
    metadata = sync_metadata(result)
    context.log.info(f"account={account.key} status={result.status.value} pages={result.total('pages')} "
                     f"inserted={result.total('inserted')} updated={result.total('updated')}")
    if result.status is StreamStatus.FAILED:
        codes = sorted({s.error_code or "error" for s in result.streams if s.status is StreamStatus.FAILED})
        raise dg.Failure(description=f"sync of {account.key} failed: {', '.join(codes)} "
                                     "(committed pages are kept; the next run resumes)", metadata=metadata,
                         allow_retries=set(codes) <= TRANSIENT_CODES)
    yield dg.MaterializeResult(asset_key="dm_history", metadata=metadata)
    yield dg.MaterializeResult(asset_key="dm_sync_audit", metadata={
        "pages": metadata["pages"], "status": metadata["status"]})


dm_sync_job = dg.define_asset_job("dm_sync_job", selection=[dm_history_assets],
                                  partitions_def=accounts_partitions)
