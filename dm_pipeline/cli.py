"""`dm-pipeline`: the command line. Configuration errors print one clear line and exit 2."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from dm_pipeline.errors import ConfigError, DatabaseUnavailable, InvalidIdentifier
from dm_pipeline.settings import load_settings

F = TypeVar("F", bound=Callable[..., Any])
out = Console(highlight=False, width=max(120, Console().width))
err = Console(stderr=True, highlight=False)


def friendly_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DatabaseUnavailable, InvalidIdentifier) as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress (IDs, counts and statuses only; never text).")
def main(verbose: bool) -> None:
    """dm_pipeline: keep a private, queryable, incremental copy of the DMs of every connected X account."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


# ---------------------------------------------------------------- run

@main.command()
@click.option("--account", "accounts", multiple=True, help="Only these account keys (default: all).")
@friendly_errors
def run(accounts: tuple[str, ...]) -> None:
    """The main job: migrate, register accounts, materialize dm_history per account through Dagster runs,
    then print a per-account summary and one analyst query."""
    from dm_pipeline.mainjob import run_main_job

    result = run_main_job(only=list(accounts) or None)
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
    if ok != len(result.runs):
        sys.exit(1)


# ---------------------------------------------------------------- db

@main.group()
def db() -> None:
    """The warehouse database: the embedded server by default, or DATABASE_URL."""


@db.command("url")
@click.option("--dagster", is_flag=True, help="The URL of Dagster's instance storage instead.")
@friendly_errors
def db_url(dagster: bool) -> None:
    """Print the SQLAlchemy URL in use (starting the embedded server if needed)."""
    from dm_pipeline.db.engine import app_url, dagster_url

    url = dagster_url() if dagster else app_url()
    click.echo(url.render_as_string(hide_password=False))


@db.command("env")
@friendly_errors
def db_env() -> None:
    """Print `export` lines for DATABASE_URL, DAGSTER_PG_URL and DAGSTER_HOME (for `dagster dev`)."""
    import shlex

    from dm_pipeline.environment import dagster_env

    for key, value in dagster_env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


@db.command("start")
@friendly_errors
def db_start() -> None:
    """Start the embedded server (no-op with DATABASE_URL)."""
    from dm_pipeline.db.engine import app_url, render

    click.echo(f"running: {render(app_url())}")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    from dm_pipeline.db.engine import stop_embedded

    click.echo("stopped" if stop_embedded(load_settings().pgdata) else "not running")


@db.command("status")
def db_status() -> None:
    """Say which database is configured and whether the embedded server runs."""
    from dm_pipeline.db.engine import embedded_running, normalize_url, render

    settings = load_settings()
    if settings.database_url:
        click.echo(f"DATABASE_URL: {render(normalize_url(settings.database_url))}")
    else:
        state = "running" if embedded_running(settings.pgdata) else "stopped"
        click.echo(f"embedded Postgres at {settings.pgdata}: {state}")


@db.command("upgrade")
@friendly_errors
def db_upgrade() -> None:
    """Apply the Alembic migrations (alembic upgrade head)."""
    from dm_pipeline.db.engine import app_url, render
    from dm_pipeline.db.migrate import upgrade

    url = app_url()
    upgrade(url.render_as_string(hide_password=False))
    click.echo(f"migrated: {render(url)}")


# ---------------------------------------------------------------- accounts

@main.group()
def accounts() -> None:
    """The accounts file."""


@accounts.command("list")
@friendly_errors
def accounts_list() -> None:
    """List the configured accounts."""
    from dm_pipeline.accounts import load_accounts

    for a in load_accounts(load_settings().accounts_file):
        click.echo(f"{a.key}\t{a.provider.value}\t{a.user_id}\t{a.base_url}")


@accounts.command("validate")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@friendly_errors
def accounts_validate(path: str | None) -> None:
    """Validate an accounts file (default: the configured one)."""
    from pathlib import Path

    from dm_pipeline.accounts import load_accounts

    target = Path(path) if path else load_settings().accounts_file
    click.echo(f"{target}: {len(load_accounts(target))} accounts, valid")


# ---------------------------------------------------------------- sync (direct, no Dagster)

@main.command()
@click.option("--account", "account_keys", multiple=True, help="Account keys (default: all).")
@click.option("--sweep", is_flag=True, help="Re-walk whole streams to refresh edits.")
@click.option("--max-pages", type=int, default=None, help="Pages per stream in this run.")
@friendly_errors
def sync(account_keys: tuple[str, ...], sweep: bool, max_pages: int | None) -> None:
    """Sync directly, outside Dagster (same engine, same checkpoints)."""
    from dm_pipeline.accounts import load_accounts
    from dm_pipeline.clients import build_client, http_client
    from dm_pipeline.db.engine import app_url, connect_check, get_engine
    from dm_pipeline.sync import RunLimits, sync_account

    settings = load_settings()
    engine = get_engine(app_url(settings).render_as_string(hide_password=False))
    connect_check(engine)
    selected = [a for a in load_accounts(settings.accounts_file) if not account_keys or a.key in account_keys]
    limits = RunLimits(max_pages=max_pages or settings.page_budget, time_budget_s=settings.time_budget_s,
                       sweep=sweep)
    run_id = f"cli-{uuid.uuid4()}"
    failed = False
    with http_client() as http:
        for account in selected:
            result = sync_account(engine, build_client(account, http, engine=engine), run_id, limits)
            for s in result.streams:
                click.echo(f"{account.key}\t{s.stream_key}\t{s.status.value}\tpages={s.pages}\t"
                           f"requests={s.requests}\tnew={s.inserted}\tupdated={s.updated}"
                           + (f"\terror={s.error_code}" if s.error_code else ""))
                failed = failed or s.status.value == "failed"
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------- export, erase (privacy)

@main.command()
@click.option("--account", "account_key", required=True, help="The account key to export.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The JSON Lines file to write (replaced atomically).")
@friendly_errors
def export(account_key: str, out_path: str) -> None:
    """Write an account's messages as redacted JSON Lines (IDs, timestamps, media URL; never text)."""
    from pathlib import Path

    from dm_pipeline.db.engine import app_url, connect_check, get_engine
    from dm_pipeline.export import export_account

    engine = get_engine(app_url().render_as_string(hide_password=False))
    connect_check(engine)
    count = export_account(engine, account_key, Path(out_path))
    click.echo(f"{account_key}\texported={count}\t{out_path}")


@main.command()
@click.option("--account", "account_key", required=True, help="The account key to erase.")
@click.option("--yes", is_flag=True, help="Really erase (default: a dry run that shows the counts).")
@friendly_errors
def erase(account_key: str, yes: bool) -> None:
    """Delete an account's private rows (history, conversations, tokens, sync state) in one transaction;
    its audit rows keep IDs and statuses only. A dry run unless --yes."""
    from dm_pipeline.db.engine import app_url, connect_check, get_engine
    from dm_pipeline.erase import SyncInProgress, erase_account, plan

    engine = get_engine(app_url().render_as_string(hide_password=False))
    connect_check(engine)
    if yes:
        try:
            result = erase_account(engine, account_key)
        except SyncInProgress as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
            sys.exit(1)
    else:
        with engine.connect() as conn:
            result = plan(conn, account_key)
    table = Table(title=f"erase {account_key}" + ("" if yes else " — dry run, nothing changed"))
    table.add_column("what")
    table.add_column("rows", justify="right")
    for label, n in (("dm_history (deleted)", result.history_rows),
                     ("dm_conversations (deleted)", result.conversation_rows),
                     ("dm_conversation_events (deleted)", result.conversation_event_rows),
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

@main.group()
def simulator() -> None:
    """The provider simulator (X API v2 today) for local runs and tests."""


@simulator.command("serve")
@click.option("--port", type=int, default=None, help="Default: DM_SIMULATOR_PORT or 8765.")
@click.option("--seed", type=int, default=7, show_default=True)
def simulator_serve(port: int | None, seed: int) -> None:
    """Serve the simulator in the foreground until interrupted."""
    import threading

    from dm_pipeline.simulator import Simulator, World

    sim = Simulator(World(seed=seed), port=port or load_settings().simulator_port)
    with sim:
        click.echo(f"simulator on {sim.url} (accounts: {', '.join(sim.world.accounts())})")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
