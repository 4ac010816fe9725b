import math
import os

import dagster as dg

# One dynamic partition per connected account, registered from the accounts file.
accounts_partitions = dg.DynamicPartitionsDefinition(name="accounts")

# Accounts per Dagster run: DM_PIPELINE_ACCOUNTS_PER_RUN when set (read at import, like the schedule's cron),
# else sized to the fleet by `accounts_per_run`.
ACCOUNTS_PER_RUN: int | None = int(os.environ["DM_PIPELINE_ACCOUNTS_PER_RUN"]) \
    if os.environ.get("DM_PIPELINE_ACCOUNTS_PER_RUN", "").strip() else None
# A run costs a process start and Dagster's own bookkeeping, whatever its size: 5-6 s of CPU through the
# daemon and the run launcher (benchmarks/fleet_tick.py), while its accounts sync concurrently inside it. So
# a tick is as few runs as keep the run slots busy: one per slot of a provider (dagster.yaml lets 2 runs of
# one provider run at once), of at most MAX_ACCOUNTS_PER_RUN accounts each.
RUN_SLOTS = 2
RUNS_PER_SLOT = 1
MIN_ACCOUNTS_PER_RUN = 50
# The ceiling bounds what one run holds: its duration (a first backfill of long histories) and what a
# failure costs (a failed account fails its run's partitions; a retry re-runs it, no-ops for the rest).
MAX_ACCOUNTS_PER_RUN = 1000


def accounts_per_run(accounts: int) -> int:
    """The run size for a tick (or a first backfill) over `accounts` accounts of one provider."""
    return max(MIN_ACCOUNTS_PER_RUN, min(MAX_ACCOUNTS_PER_RUN, math.ceil(accounts / (RUN_SLOTS * RUNS_PER_SLOT))))
