"""Dagster entry point: wires defs/ together. No I/O at import."""

import dagster as dg

from dm_pipeline.defs.assets import dm_history_assets, dm_sync_job
from dm_pipeline.defs.automation import accounts_sensor, every_account_schedule
from dm_pipeline.defs.resources import ProvidersResource, WarehouseResource

defs = dg.Definitions(
    assets=[dm_history_assets],
    jobs=[dm_sync_job],
    sensors=[accounts_sensor],
    schedules=[every_account_schedule],
    resources={
        "warehouse": WarehouseResource(database_url=dg.EnvVar("DATABASE_URL")),
        "providers": ProvidersResource(),
    },
    executor=dg.in_process_executor,  # UI backfills too: one step per run, no second process (defs/assets.py)
)
