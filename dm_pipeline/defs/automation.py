"""The accounts sensor (partitions follow the accounts file) and the every-15-minutes schedule."""

from __future__ import annotations

import os
import time
from collections import Counter

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dm_pipeline.defs.assets import dm_sync_job
from dm_pipeline.defs.partitions import ACCOUNTS_PER_RUN, accounts_partitions, accounts_per_run
from dm_pipeline.defs.resources import cached_accounts
from dm_pipeline.settings import load_settings


def partition_changes(instance: dg.DagsterInstance) -> tuple[list[str], list[str]]:
    """(keys to add, keys to remove). New keys are grouped by provider (file order within a provider): a
    partition's position is fixed when it is added, and runs cover ranges of consecutive partitions of one
    provider, so grouping here is what lets the schedule chunk a provider's accounts into few runs."""
    accounts = cached_accounts(load_settings().accounts_file)
    wanted = [a.key for a in accounts]
    current = set(instance.get_dynamic_partitions(accounts_partitions.name or "accounts"))
    first_seen = {p: i for i, p in reversed(list(enumerate(a.provider.value for a in accounts)))}
    added = sorted((a for a in accounts if a.key not in current), key=lambda a: first_seen[a.provider.value])
    return [a.key for a in added], sorted(current - set(wanted))


@dg.sensor(job=dm_sync_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def accounts_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Adds a partition per new account and removes those of dropped ones (their data stays). New accounts
    are backfilled in chunks (one run per chunk, not one per account), sized as the schedule's."""
    added, removed = partition_changes(context.instance)
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if added:
        requests.append(accounts_partitions.build_add_request(added))
    if removed:
        requests.append(accounts_partitions.build_delete_request(removed))
    run_requests: list[dg.RunRequest] = []
    if added:
        provider_of = {a.key: a.provider.value for a in cached_accounts(load_settings().accounts_file)}
        # the tick makes run keys unique, so an account removed and added again is backfilled again
        tick = f"added@{context.cursor or ''}{time.time_ns()}"
        run_requests = chunked_run_requests(added, ACCOUNTS_PER_RUN, tick, provider_of)
    return dg.SensorResult(dynamic_partitions_requests=requests, run_requests=run_requests)


PROVIDER_TAG = "dm_pipeline/provider"  # dagster.yaml limits concurrent runs per value of this tag


def chunked_run_requests(keys: list[str], per_run: int | None, tick: str,
                         provider_of: dict[str, str] | None = None) -> list[dg.RunRequest]:
    """One run per chunk of consecutive partition keys (a partition range), not one per account: a tick
    over 1,000 accounts launches ceil(1000 / per_run) runs that sync their accounts concurrently. A chunk
    never mixes providers, so each run carries its provider tag for the per-provider run limit. `per_run`
    None: each provider's runs are sized to its accounts (`accounts_per_run`, over `provider_of`, the
    accounts file, else over `keys`)."""
    provider_of = provider_of or {}
    fleet: Counter[str | None] = Counter(provider_of.values()) if provider_of else Counter({None: len(keys)})
    size = {p: per_run or accounts_per_run(fleet[p]) for p in {*fleet, *map(provider_of.get, keys)}}
    chunks: list[list[str]] = []
    for key in keys:  # consecutive keys of one provider, at most its run size each
        provider = provider_of.get(key)
        if chunks and len(chunks[-1]) < size[provider] and provider_of.get(chunks[-1][0]) == provider:
            chunks[-1].append(key)
        else:
            chunks.append([key])
    requests = []
    for chunk in chunks:
        tags = {PROVIDER_TAG: provider_of[chunk[0]]} if chunk[0] in provider_of else {}
        if len(chunk) == 1:
            requests.append(dg.RunRequest(run_key=f"{chunk[0]}:{tick}", partition_key=chunk[0], tags=tags))
        else:
            requests.append(dg.RunRequest(run_key=f"{chunk[0]}..{chunk[-1]}:{tick}", tags={
                **tags, ASSET_PARTITION_RANGE_START_TAG: chunk[0], ASSET_PARTITION_RANGE_END_TAG: chunk[-1]}))
    return requests


@dg.schedule(job=dm_sync_job, cron_schedule=os.environ.get("DM_PIPELINE_CRON", "*/15 * * * *"),
             default_status=dg.DefaultScheduleStatus.RUNNING)
def every_account_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    # The built-in partitioned-schedule helper refuses dynamic partitions: request the keys ourselves.
    keys = list(context.instance.get_dynamic_partitions(accounts_partitions.name or "accounts"))
    provider_of = {a.key: a.provider.value for a in cached_accounts(load_settings().accounts_file)}
    tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "manual"
    # A partition whose account left the file is not requested (its data stays, nothing syncs it), and no
    # run's range may span it: a range covers every partition between its ends, and the run would fail on
    # the stale one. So chunk each stretch of registered keys that are still in the file separately.
    stretches: list[list[str]] = [[]]
    for key in keys:
        if key in provider_of:
            stretches[-1].append(key)
        elif stretches[-1]:
            stretches.append([])
    return [r for stretch in stretches for r in chunked_run_requests(stretch, ACCOUNTS_PER_RUN, tick, provider_of)]
