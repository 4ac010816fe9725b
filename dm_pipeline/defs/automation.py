"""The accounts sensor (partitions follow the accounts file) and the every-15-minutes schedule."""

from __future__ import annotations

import os

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dm_pipeline.accounts import load_accounts
from dm_pipeline.defs.assets import ACCOUNTS_PER_RUN, dm_sync_job
from dm_pipeline.defs.partitions import accounts_partitions
from dm_pipeline.settings import load_settings


def partition_changes(instance: dg.DagsterInstance) -> tuple[list[str], list[str]]:
    wanted = [a.key for a in load_accounts(load_settings().accounts_file)]
    current = set(instance.get_dynamic_partitions(accounts_partitions.name or "accounts"))
    return [k for k in wanted if k not in current], sorted(current - set(wanted))


@dg.sensor(job=dm_sync_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def accounts_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Adds a partition per new account and removes those of dropped ones (their data stays)."""
    added, removed = partition_changes(context.instance)
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if added:
        requests.append(accounts_partitions.build_add_request(added))
    if removed:
        requests.append(accounts_partitions.build_delete_request(removed))
    return dg.SensorResult(dynamic_partitions_requests=requests,
                           run_requests=[dg.RunRequest(partition_key=k) for k in added])


def chunked_run_requests(keys: list[str], per_run: int, tick: str) -> list[dg.RunRequest]:
    """One run per chunk of consecutive partition keys (a partition range), not one per account: a tick
    over 1,000 accounts launches ceil(1000 / per_run) runs that sync their accounts concurrently."""
    requests = []
    for i in range(0, len(keys), per_run):
        chunk = keys[i:i + per_run]
        if len(chunk) == 1:
            requests.append(dg.RunRequest(run_key=f"{chunk[0]}:{tick}", partition_key=chunk[0]))
        else:
            requests.append(dg.RunRequest(run_key=f"{chunk[0]}..{chunk[-1]}:{tick}", tags={
                ASSET_PARTITION_RANGE_START_TAG: chunk[0], ASSET_PARTITION_RANGE_END_TAG: chunk[-1]}))
    return requests


@dg.schedule(job=dm_sync_job, cron_schedule=os.environ.get("DM_PIPELINE_CRON", "*/15 * * * *"),
             default_status=dg.DefaultScheduleStatus.RUNNING)
def every_account_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    # The built-in partitioned-schedule helper refuses dynamic partitions: request the keys ourselves.
    keys = list(context.instance.get_dynamic_partitions(accounts_partitions.name or "accounts"))
    tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "manual"
    return chunked_run_requests(keys, ACCOUNTS_PER_RUN, tick)
