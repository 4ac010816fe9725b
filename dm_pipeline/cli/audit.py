"""`audit`: the audit's monthly partitions (create ahead, roll up, drop after the retention)."""

from __future__ import annotations

import click

from dm_pipeline.cli.common import CONTEXT, _settings, friendly_errors, out


@click.group(context_settings=CONTEXT, short_help="The audit's monthly partitions: retention and pruning.")
def audit() -> None:
    """The audit (dm_audit.dm_sync_audit) is partitioned by UTC month. Old months are dropped whole after
    DM_PIPELINE_AUDIT_RETENTION_MONTHS, never deleted row by row; their counts stay in
    dm_audit.dm_sync_audit_monthly (docs/operations.md, "The audit: retention and pruning").
    """


@audit.command("prune", context_settings=CONTEXT, short_help="Create partitions ahead, roll up, drop old months.")
@click.option("--retention-months", type=click.IntRange(min=0), default=None, metavar="N",
              help="Keep the current month and the N before it (default: DM_PIPELINE_AUDIT_RETENTION_MONTHS, "
                   "13; 0 keeps everything).")
@click.option("--dry-run", is_flag=True, help="Say what would be created, rolled up and dropped; change nothing.")
@friendly_errors
def prune(retention_months: int | None, dry_run: bool) -> None:
    """Maintain the audit's partitions: move rows the DEFAULT partition caught into their month's partition,
    create this month's and the next two, roll up every closed month, and drop the partitions older than the
    retention (unless an open first pass or sweep still needs them). Run it as the schema owner; the daily
    `audit_maintenance` Dagster job does the same.

    \b
    Example: dm-pipeline audit prune --dry-run
    """
    from dm_pipeline import preflight
    from dm_pipeline.db.audit_partitions import maintain

    settings = _settings()
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=False)
    months = settings.audit_retention_months if retention_months is None else retention_months
    report = maintain(engine, months, dry_run=dry_run)
    verb = "would " if dry_run else ""
    retention = f"the current month and the {months} before it" if months else "everything (retention 0)"
    out.print(f"retention: {retention}")
    for name in report.created:
        moved = report.adopted.get(name)
        out.print(f"{verb}create {name}" + (f" (moving {moved} rows out of the DEFAULT partition)" if moved else ""))
    for month in report.rolled_up:
        out.print(f"{verb}roll up {month:%Y-%m}")
    for name in report.dropped:
        out.print(f"{verb}drop {name}")
    for name, why in report.kept.items():
        out.print(f"keep {name}: {why}")
    if not (report.created or report.rolled_up or report.dropped or report.kept):
        out.print("nothing to do")
