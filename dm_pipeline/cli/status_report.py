"""`status`: where every account x stream stands, and what it costs."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table

from dm_pipeline.cli.common import CONTEXT, _escape, _settings, err, friendly_errors, out
from dm_pipeline.errors import ConfigError


@click.command(context_settings=CONTEXT, short_help="Per account × stream: lag, high-water, last error.")
@click.option("--account", "account_keys", multiple=True, metavar="KEY",
              help="Only this account key (repeatable; default: all).")
@friendly_errors
def status(account_keys: tuple[str, ...]) -> None:
    """Where every account x stream stands: last run and its status, last success and the lag since, the
    high-water mark (the created_at of the newest stored event of a finished pass), the pass in progress,
    and the last error with what to do about it.

    \b
    Example: dm-pipeline status --account x-ada
    """
    from dm_pipeline import preflight
    from dm_pipeline.accounts import load_accounts
    from dm_pipeline.status import account_costs, age, explain, since, stream_status

    settings = _settings()
    configured: list[str] = []
    configured_accounts = []
    try:
        configured_accounts = load_accounts(settings.accounts_file)
        configured = [a.key for a in configured_accounts]
    except ConfigError as exc:
        err.print(f"[yellow]warning:[/] {_escape(str(exc))} (showing what the database knows)", soft_wrap=True)
    unknown = [k for k in account_keys if k not in configured]
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=False)
    rows = stream_status(engine, list(account_keys) or None)
    synced = {r.account_key for r in rows}
    if unknown and not all(k in synced for k in unknown):
        raise ConfigError(f"unknown account key(s) {', '.join(k for k in unknown if k not in synced)}: neither in "
                          f"{settings.accounts_file} nor in the database. Known keys: "
                          f"{', '.join(sorted(set(configured) | synced)) or 'none'}")
    now = datetime.now(UTC)
    table = Table(title="sync status per account × stream (times UTC)")
    for col in ("account", "stream", "last run", "lag", "high-water event", "pass in progress", "last sweep",
                "last error"):
        table.add_column(col, no_wrap=col in {"account", "stream", "high-water event"}, overflow="fold")
    for r in rows:
        state = f"{r.last_status or '—'} {since(r.last_run_at, now)}"
        if r.last_status == "dormant":
            state += " (the inbox keeps it current)"
        if r.next_poll_at is not None and r.next_poll_at > now:
            state += f"; idle {r.empty_polls}×, next poll in {age((r.next_poll_at - now).total_seconds())}"
        hw = "—" if not r.high_water_id else (
            f"{r.high_water_at:%Y-%m-%d %H:%M}" if r.high_water_at else f"id {r.high_water_id}")
        if r.gap_suspected:
            hw += " (gap suspected)"
        pass_ = (f"{r.pass_pages} pages since {r.pass_started_at:%m-%d %H:%M}"
                 if r.pass_in_progress and r.pass_started_at else "—")
        error = "—" if not r.last_error_code else (
            f"{r.last_error_code}" + (f" (HTTP {r.last_error_http})" if r.last_error_http else "")
            + f" {since(r.last_error_at, now)}")
        sweep = since(r.last_sweep_at, now) + (f"; {r.marked_deleted} deleted upstream" if r.marked_deleted else "")
        table.add_row(r.account_key, r.stream_key, state, age(r.lag_s) if r.last_success_at else "never", hw,
                      pass_, sweep, error)
    for key in configured:
        if key not in synced and (not account_keys or key in account_keys):
            table.add_row(key, "—", "never synced", "—", "—", "—", "—", "—")
    out.print(table)
    costs = account_costs(engine, settings.poll_interval_s, list(account_keys) or None)
    if costs:
        budgets = {a.key: a.daily_budget for a in configured_accounts}
        cost_table = Table(title="cost per account: last 24 hours and forecast per day at the current schedule")
        for col in ("account", "unit", "requests 24h", "cost 24h", "forecast / day", "budget / day", "streams",
                    "rate limit"):
            cost_table.add_column(col, no_wrap=True)
        for c in costs:
            limited = (f"limited, next try in {age((c.limited_until - now).total_seconds())}"
                       if c.limited_until and c.limited_until > now else "—")
            budget = budgets.get(c.account_key)
            streams = f"{c.streams}" + (f" ({c.dormant} dormant)" if c.dormant else "") + (
                f" ({c.backing_off} backing off)" if c.backing_off else "")
            cost_table.add_row(c.account_key, c.unit, str(c.requests_24h), str(c.cost_24h),
                               f"{c.forecast_per_day:,.0f}", str(budget) if budget is not None else "—", streams,
                               limited)
        out.print(cost_table)
    current = {r.last_error_code for r in rows if r.last_error_code
               and r.last_status not in {None, "succeeded", "dormant"}}
    if rows and not current:
        out.print("no stream is failing right now.")
    for code in sorted(current):
        text = explain(code)
        if text:
            out.print(f"  {text}", soft_wrap=True, markup=False)
