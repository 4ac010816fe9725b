"""Alembic environment: the URL comes from the caller (`-x url=…` or the config) or from settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from dm_pipeline.db.audit_partitions import AUDIT_PARTITION
from dm_pipeline.db.engine import app_url
from dm_pipeline.db.tables import AUDIT, PRIVATE, metadata

OWN_SCHEMAS = {PRIVATE, AUDIT, "dm_analytics"}


def _url() -> str:
    # Order: `alembic -x url=…`, a programmatic Config (tests), then settings (DATABASE_URL or embedded).
    config = context.config
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    return url or app_url().render_as_string(hide_password=False)


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # Compare only our schemas: Dagster or other tools may share the server.
    if type_ == "schema":
        return name in OWN_SCHEMAS
    # The audit's monthly partitions are created and dropped at run time (db/audit_partitions.py): the
    # partitioned table is the model, its partitions are not.
    return not (type_ == "table" and name is not None and AUDIT_PARTITION.fullmatch(name) is not None)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, include_schemas=True,
                      include_name=_include_name)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, include_schemas=True,
                          include_name=_include_name, compare_server_default=False)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
