"""Dagster resources: the warehouse (a URL from `EnvVar`) and the providers (accounts file + tokens).

Tokens never pass through run config: each account names an environment variable, read through
`dagster.EnvVar` at run time.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
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


_ENV_NAME = re.compile(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_parsed: dict[Path, tuple[tuple[object, ...], list[Account]]] = {}
_parsed_lock = threading.Lock()


def cached_accounts(path: Path) -> list[Account]:
    """`load_accounts(path)`, parsed once per process while the file's bytes and the variables it names
    (`${VAR}`) are unchanged: the sensor, the schedule and the runs of one process read the same file, and
    parsing it costs ~0.2 ms per account (2 s at 10,000). Failures are not cached."""
    try:
        raw = path.read_bytes()
    except OSError:
        return load_accounts(path)  # says what is wrong with the path
    names = sorted({m.decode() for m in _ENV_NAME.findall(raw)})
    key = (hashlib.blake2b(raw, digest_size=16).digest(), *(os.environ.get(n) for n in names))
    with _parsed_lock:
        hit = _parsed.get(path)
        if hit is not None and hit[0] == key:
            return list(hit[1])
    accounts = load_accounts(path)
    with _parsed_lock:
        _parsed[path] = (key, accounts)
    return list(accounts)


class WarehouseResource(dg.ConfigurableResource):
    """The Postgres warehouse. `dm-pipeline run` and `make dev` export DATABASE_URL (the embedded
    server's, unless you set your own)."""

    database_url: str

    def engine(self, pool_size: int = 5) -> Engine:
        """The process's engine, keeping up to `pool_size` connections (a run: runner.POOL_SIZE)."""
        return get_engine(normalize_url(self.database_url).render_as_string(hide_password=False), pool_size)


class ProvidersResource(dg.ConfigurableResource):
    """Where the accounts are declared; default `$DM_PIPELINE_ACCOUNTS` or config/accounts.yaml."""

    accounts_file: str | None = None
    http_timeout_s: float = 30.0

    def accounts_path(self) -> Path:
        return Path(self.accounts_file) if self.accounts_file else load_settings().accounts_file

    def accounts(self) -> list[Account]:
        return cached_accounts(self.accounts_path())

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
