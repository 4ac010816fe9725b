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


REDACTION_CHUNK = 200  # accounts per query of the full check


@audit.command("redaction", context_settings=CONTEXT, short_help="Check every audit value against every text.")
@click.argument("account_keys", nargs=-1, metavar="[KEY]...")
@friendly_errors
def redaction(account_keys: tuple[str, ...]) -> None:
    """Check that no audit value equals a stored message text, over every pair, whatever run wrote either
    side: the full form of the `redaction` asset check, which each run makes for the pairs it could have
    made (its own audit rows, and the texts it stored or changed). For the given accounts, else every account
    with stored state. Prints message IDs only, never text; exits 1 when a value equals a text.

    \b
    Example: dm-pipeline audit redaction
    """
    from sqlalchemy import text

    from dm_pipeline import checks, preflight

    settings = _settings()
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=False)
    keys = list(account_keys)
    if not keys:
        with engine.connect() as conn:
            keys = list(conn.scalars(text("SELECT DISTINCT account_key FROM dm_private.sync_state ORDER BY 1")))
    leaks: list[str] = []
    for i in range(0, len(keys), REDACTION_CHUNK):
        leaks += checks.redaction(engine, keys[i:i + REDACTION_CHUNK]).metadata["leaking_message_ids"]
    if leaks:
        out.print(f"redaction: FAILED, {len(leaks)} message(s) whose text an audit value holds: {', '.join(leaks)}")
        raise SystemExit(1)
    out.print(f"redaction: passed for {len(keys)} account(s)")
