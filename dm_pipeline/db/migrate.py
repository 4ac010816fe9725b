"""Alembic, driven from Python (the CLI, `make run` and the tests all migrate the same way)."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config

from dm_pipeline.settings import PROJECT_ROOT


def alembic_config(url: str) -> Config:
    config = Config(toml_file=str(PROJECT_ROOT / "pyproject.toml"))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
    if revision == "head":
        _ensure_audit_partitions(url)


def _ensure_audit_partitions(url: str) -> None:
    """This month's and the next two audit partitions (cheap when they exist): every `dm-pipeline run`,
    `make dev` and `db upgrade` keeps them ahead. A lock that cannot be had now, or a role that may not
    create tables, leaves it to the next time or to `audit prune` as the owner (the DEFAULT partition takes
    the rows meanwhile, and `audit prune` moves them)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from dm_pipeline.db.audit_partitions import ensure

    engine = create_engine(url)
    try:
        ensure(engine)
    except (OperationalError, ProgrammingError) as exc:
        logging.getLogger(__name__).warning(
            "audit partitions not created now (%s); `dm-pipeline audit prune` as the schema owner creates them",
            type(getattr(exc, "orig", None) or exc).__name__)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: str) -> None:
    """Raises alembic.util.CommandError when the models and the migrations disagree."""
    command.check(alembic_config(url))
