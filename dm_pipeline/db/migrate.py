"""Alembic, driven from Python (the CLI, `make run` and the tests all migrate the same way)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from dm_pipeline.settings import PROJECT_ROOT


def alembic_config(url: str) -> Config:
    config = Config(toml_file=str(PROJECT_ROOT / "pyproject.toml"))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: str) -> None:
    """Raises alembic.util.CommandError when the models and the migrations disagree."""
    command.check(alembic_config(url))
