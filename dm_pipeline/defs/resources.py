"""Dagster resources: the warehouse (a URL from `EnvVar`) and the providers (accounts file + tokens).

Tokens never pass through run config: each account names an environment variable, read through
`dagster.EnvVar` at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from sqlalchemy import Engine

from dm_pipeline.accounts import load_accounts
from dm_pipeline.db.engine import get_engine, normalize_url
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account
from dm_pipeline.settings import load_settings


def env_var_token(name: str) -> str | None:
    return dg.EnvVar(name).get_value()


class WarehouseResource(dg.ConfigurableResource):
    """The Postgres warehouse. `dm-pipeline run` and `make dev` export DATABASE_URL (the embedded
    server's, unless you set your own)."""

    database_url: str

    def engine(self) -> Engine:
        return get_engine(normalize_url(self.database_url).render_as_string(hide_password=False))


class ProvidersResource(dg.ConfigurableResource):
    """Where the accounts are declared; default `$DM_PIPELINE_ACCOUNTS` or config/accounts.yaml."""

    accounts_file: str | None = None
    http_timeout_s: float = 30.0

    def accounts_path(self) -> Path:
        return Path(self.accounts_file) if self.accounts_file else load_settings().accounts_file

    def accounts(self) -> list[Account]:
        return load_accounts(self.accounts_path())

    def account(self, key: str) -> Account:
        return self.accounts_for([key])[0]

    def accounts_for(self, keys: Sequence[str]) -> list[Account]:
        """The accounts of `keys`, in that order, from one read of the file (a run over a range of 50
        partitions must not parse the file 50 times)."""
        by_key = {a.key: a for a in self.accounts()}
        stale = [k for k in keys if k not in by_key]
        if stale:
            raise ConfigError(f"account{'s' if len(stale) > 1 else ''} {', '.join(map(repr, stale))} "
                              f"{'are' if len(stale) > 1 else 'is'} not in {self.accounts_path()}; "
                              f"{'their partitions are' if len(stale) > 1 else 'its partition is'} stale. "
                              "Fix: add it back to the accounts file, or delete the partition in the UI")
        return [by_key[k] for k in keys]
