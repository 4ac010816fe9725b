"""The audit's daily maintenance as a Dagster job and schedule (docs/architecture.md §14): what
`dm-pipeline audit prune` does — this month's and the next two partitions exist, closed months are rolled up,
months past `DM_PIPELINE_AUDIT_RETENTION_MONTHS` are dropped whole (db/audit_partitions.py).

Unpartitioned and separate from the sync job: it touches no account. It creates and drops partitions, so
the warehouse URL must be the schema owner's (the embedded default is); with a runtime role such as
dm_loader, run `dm-pipeline audit prune` as the owner from cron instead and leave this schedule stopped.
It logs partition names and counts only. (No `from __future__ import annotations`: Dagster reads the op's
annotations at definition time, as in defs/assets.py.)
"""

import dagster as dg

from dm_pipeline.db.audit_partitions import maintain
from dm_pipeline.defs.resources import WarehouseResource
from dm_pipeline.settings import load_settings

AUDIT_MAINTENANCE_CRON = "17 3 * * *"  # daily, 03:17 UTC: away from the quarter hours of the sync schedule


@dg.op(description="Create the audit's partitions ahead, roll up closed months, drop those past the retention.")
def maintain_audit_partitions(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> None:
    months = load_settings().audit_retention_months
    report = maintain(warehouse.engine(), months)
    context.log.info(f"audit partitions: created {report.created or 'none'}, rolled up "
                     f"{[f'{m:%Y-%m}' for m in report.rolled_up] or 'none'}, dropped {report.dropped or 'none'} "
                     f"(retention {months} months)" + (f", kept {report.kept}" if report.kept else ""))


@dg.job(description="The audit's daily partition maintenance (dm-pipeline audit prune).",
        tags={"dm_pipeline/trigger": "audit_maintenance"})
def audit_maintenance_job() -> None:
    maintain_audit_partitions()


audit_maintenance_schedule = dg.ScheduleDefinition(
    name="audit_maintenance_daily", job=audit_maintenance_job, cron_schedule=AUDIT_MAINTENANCE_CRON,
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
