"""Build the provider client of an account: its HTTP session, its token, its rate-limit governor."""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx

from dm_pipeline.errors import ConfigError
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, Provider
from dm_pipeline.providers.base import ProviderClient
from dm_pipeline.providers.x_api import XClient

TokenLookup = Callable[[str], str | None]


def env_token(name: str) -> str | None:
    return os.environ.get(name) or None


def token_getter(account: Account, lookup: TokenLookup = env_token) -> Callable[[], str]:
    def get() -> str:
        if not account.token_env:
            raise ConfigError(f"account {account.key!r} has no token_env. Fix: add `token_env: NAME` to its "
                              "entry in the accounts file and export NAME")
        token = lookup(account.token_env)
        if not token:
            raise ConfigError(f"environment variable {account.token_env} (token of account {account.key!r}) "
                              f"is not set. Fix: export {account.token_env}=<access token>")
        return token

    return get


def http_client(timeout_s: float = 30.0) -> httpx.Client:
    # httpx's own retries cover connect errors only; every retry decision lives in http/policy.py.
    return httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), follow_redirects=False,
                        headers={"User-Agent": "dm_pipeline/0.1"})


def build_client(account: Account, http: httpx.Client, lookup: TokenLookup = env_token,
                 policy: RetryPolicy | None = None) -> ProviderClient:
    if account.provider is Provider.X:
        return XClient(account, http, token_getter(account, lookup), policy=policy)
    raise ConfigError(f"provider {account.provider.value!r} of account {account.key!r} is not supported yet")
