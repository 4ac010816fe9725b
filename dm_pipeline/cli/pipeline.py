"""`run` (the main job, through Dagster), `dev` (the Dagster UI) and `sync` (directly, outside Dagster)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

import click
from rich.table import Table

from dm_pipeline.cli.common import CONTEXT, _escape, _settings, err, friendly_errors, out
from dm_pipeline.errors import DatabaseUnavailable

# ---------------------------------------------------------------- run

@click.command(context_settings=CONTEXT, short_help="The main job: a Dagster run per account, then a summary.")
@click.option("--account", "accounts", multiple=True, metavar="KEY",
              help="Only this account key (repeatable; default: all).")
@friendly_errors
def run(accounts: tuple[str, ...]) -> None:
    """The main job: migrate, register the accounts as Dagster partitions, materialize dm_history with
    one Dagster run per account, then print a summary and one analyst query.

    Accounts whose base_url is the simulator's (http://127.0.0.1:$DM_SIMULATOR_PORT) get its credentials
    and a simulator is started for them. Everything is checked before the first run starts.

    \b
    Example: dm-pipeline run --account x-ada
    """
    from dm_pipeline import preflight
    from dm_pipeline.mainjob import run_main_job

    settings = _settings()
    selection = preflight.select(accounts, settings)
    engine = preflight.database(settings)
    selection.check_environment(stored_oauth=preflight.stored_oauth_tokens(engine))
    _check_dagster_storage(settings)

    result = run_main_job(settings, only=[a.key for a in selection.accounts])
    table = Table(title="dm_history — this run, per account and stream")
    for col in ("account", "stream", "status", "pages", "requests", "new", "updated", "unchanged", "error"):
        table.add_column(col, justify="right" if col in {"pages", "requests", "new", "updated",
                                                          "unchanged"} else "left")
    for s in result.streams:
        table.add_row(s.account_key, s.stream_key, s.status, str(s.pages), str(s.requests), str(s.inserted),
                      str(s.updated), str(s.unchanged), s.error_code or "")
    out.print(table)
    for key, n in result.dormant.items():
        out.print(f"{key}: {n} conversation stream{'s' if n > 1 else ''} dormant (the inbox keeps "
                  f"{'them' if n > 1 else 'it'} current): 0 requests", markup=False)
    ok = sum(1 for _, success in result.runs.values() if success)
    out.print(f"Dagster runs: {ok}/{len(result.runs)} succeeded "
              f"({', '.join(f'{k}={rid[:8]}' for k, (rid, _) in result.runs.items())})")
    q = Table(title="analyst query — events per account (no message text)")
    for col in ("account", "events", "conversations", "with_media", "first_event", "last_event"):
        q.add_column(col)
    for r in result.analyst:
        q.add_row(*(str(r[c]) for c in ("account_key", "events", "conversations", "with_media",
                                         "first_event", "last_event")))
    out.print(q)
    _explain_errors({s.error_code for s in result.streams if s.error_code})
    if ok != len(result.runs):
        sys.exit(1)


def _check_dagster_storage(settings: Any) -> None:
    """Dagster keeps its runs in Postgres too: check that database before Dagster reports it badly."""
    from sqlalchemy import create_engine

    from dm_pipeline.db.engine import connect_check, dagster_url, normalize_url

    raw = os.environ.get("DAGSTER_PG_URL")
    url = normalize_url(raw) if raw else normalize_url(dagster_url(settings))
    engine = create_engine(url, poolclass=None)
    try:
        connect_check(engine)
    except DatabaseUnavailable as exc:
        fix = ("Fix: check DAGSTER_PG_URL" if raw else
               "Fix: create a `dagster` database on that server (CREATE DATABASE dagster), or export DAGSTER_PG_URL")
        raise DatabaseUnavailable(f"Dagster's instance storage: {str(exc).split('. Check ')[0]}. {fix}") from None
    finally:
        engine.dispose()


def _explain_errors(codes: set[str]) -> None:
    from dm_pipeline.status import explain

    for code in sorted(codes):
        text = explain(code)
        if text:
            out.print(f"  {text}", soft_wrap=True, markup=False)


# ---------------------------------------------------------------- dev

@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "help_option_names": ["--help"]},
              short_help="`dagster dev` (the UI) on the environment `run` prepares, simulator included.")
@click.argument("dagster_args", nargs=-1, type=click.UNPROCESSED)
@friendly_errors
def dev(dagster_args: tuple[str, ...]) -> None:
    """The Dagster UI and daemon (`dagster dev -w workspace.yaml`; `make dev`) on what `run` prepares: the
    database URLs and DAGSTER_HOME exported, the embedded warehouse migrated, and for accounts whose
    base_url is the simulator's address, the simulator served with their credentials exported, so UI
    backfills and schedules of the default accounts succeed. Extra arguments go to `dagster dev`.

    Accounts on real providers use their own variables (a missing one is a warning: their runs fail
    until it is set) and a DATABASE_URL of yours is used as it is. Stops with dagster dev (Ctrl-C, or
    SIGTERM to this process). Only --help is this command's own: -h is `dagster dev`'s host.

    \b
    Example: dm-pipeline dev -h 127.0.0.1 -p 3001
    """
    from dm_pipeline.dev import run_dev

    settings = _settings()
    _check_dagster_storage(settings)
    code = run_dev(dagster_args, settings, echo=lambda line: err.print(_escape(line), soft_wrap=True))
    sys.exit(code)


# ---------------------------------------------------------------- sync (direct, no Dagster)

@click.command(context_settings=CONTEXT, short_help="Sync now, outside Dagster, with progress per stream.")
@click.option("--account", "account_keys", multiple=True, metavar="KEY",
              help="Only this account key (repeatable; default: all).")
@click.option("--sweep", is_flag=True, help="Re-walk whole streams to refresh edits (still checkpointed per page).")
@click.option("--due-only", is_flag=True, help="Skip billed streams that are backing off (as the schedule does); "
              "by default an explicit sync polls them.")
@click.option("--max-pages", type=click.IntRange(min=1), default=None,
              help="Pages per stream in this run (default: DM_PIPELINE_PAGE_BUDGET). A spent budget parks the pass.")
@click.option("--per-provider", type=click.IntRange(min=1), default=4, show_default=True,
              help="Accounts of one provider syncing at once.")
@friendly_errors
def sync(account_keys: tuple[str, ...], sweep: bool, due_only: bool, max_pages: int | None, per_provider: int) -> None:
    """Sync now, directly, outside Dagster: same engine, same checkpoints, accounts concurrently. Shows a
    progress bar per stream on a terminal (pages, events, rate-limit waits), plain lines otherwise.

    The embedded database is migrated if needed; accounts pointing at the simulator's address get a
    simulator. Exit 1 when a stream failed (rate-limited and budget-parked streams are not failures).

    \b
    Example: dm-pipeline sync --account x-ada --max-pages 5
    """
    from dm_pipeline import preflight
    from dm_pipeline.mainjob import simulator_if_needed
    from dm_pipeline.progress import SyncProgress
    from dm_pipeline.runner import sync_accounts
    from dm_pipeline.sync import RunLimits

    settings = _settings()
    selection = preflight.select(account_keys, settings)
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=settings.database_url is None)
    selection.check_environment(stored_oauth=preflight.stored_oauth_tokens(engine))

    limits = RunLimits(max_pages=max_pages or settings.page_budget, time_budget_s=settings.time_budget_s,
                       poll_interval_s=settings.poll_interval_s,
                       write_ahead=settings.write_ahead,
                       sweep=sweep, honour_backoff=due_only)
    run_id = f"cli-{uuid.uuid4()}"
    live = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    click.echo(f"sync {run_id}: {len(selection.accounts)} account(s) "
               f"({', '.join(a.key for a in selection.accounts)}){' sweep' if sweep else ''}")
    started = time.monotonic()
    with simulator_if_needed(settings, selection.accounts), SyncProgress(out, live=live) as progress:
        results = sync_accounts(engine, selection.accounts, run_id, limits, per_provider=per_provider,
                                on_page=progress.on_page, on_done=progress.on_done, policy=progress.policy_for,
                                on_stream_start=progress.on_stream_start)
    streams = [s for r in results for s in r.streams]
    counts: dict[str, int] = {}
    for s in streams:
        counts[s.status.value] = counts.get(s.status.value, 0) + 1
    waits = sum(w.count for w in progress.waits.values())
    wait_s = sum(w.seconds for w in progress.waits.values())
    dormant, not_due = sum(len(r.dormant) for r in results), sum(len(r.not_due) for r in results)
    if dormant:
        counts["dormant"] = dormant
    if not_due:
        counts["not due"] = not_due
    click.echo(f"done: {len(streams) + dormant + not_due} stream(s): "
               + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
               + f"; {sum(s.pages for s in streams)} pages, {sum(s.received for s in streams)} events "
               f"({sum(s.inserted for s in streams)} new, {sum(s.updated for s in streams)} updated); "
               f"{waits} rate-limit/retry waits ({wait_s:.0f}s); {time.monotonic() - started:.1f}s")
    failed = [s for s in streams if s.status.value == "failed"]
    _explain_errors({s.error_code for s in streams if s.error_code})
    if failed:
        sys.exit(1)
