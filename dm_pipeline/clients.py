"""Build the provider client of an account: its HTTP session, its credentials, its rate-limit governor."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable

import httpx
from sqlalchemy import Engine, text

from dm_pipeline.accounts import check_transport
from dm_pipeline.db.account_state import AccountGovernor
from dm_pipeline.errors import ConfigError
from dm_pipeline.http import bounds
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.models import Account, Provider
from dm_pipeline.providers.base import ProviderClient
from dm_pipeline.providers.getxapi import GetXApiClient
from dm_pipeline.providers.x_api import Windows, XClient
from dm_pipeline.providers.xquik import XquikClient
from dm_pipeline.settings import load_settings

TokenLookup = Callable[[str], str | None]


def env_token(name: str) -> str | None:
    return os.environ.get(name) or None


def required(account: Account, name: str | None, what: str, lookup: TokenLookup) -> Callable[[], str]:
    """A getter for a secret that must be set, failing with the variable's name and the fix."""

    def get() -> str:
        if not name:
            raise ConfigError(f"account {account.key!r} names no variable for its {what}. Fix: add it to its "
                              "entry in the accounts file and export it")
        value = lookup(name)
        if not value:
            raise ConfigError(f"environment variable {name} ({what} of account {account.key!r}) is not set. "
                              f"Fix: export {name}=…")
        return value

    return get


def token_getter(account: Account, lookup: TokenLookup = env_token) -> Callable[[], str]:
    return required(account, account.token_env, "access token", lookup)


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context every client shares: building one loads the CA bundle (~10-20 ms of CPU), which a
    client per account would pay a thousand times per tick. Same settings as httpx's default."""
    return httpx.create_ssl_context(verify=True, trust_env=True)


def http_client(timeout_s: float = 30.0) -> httpx.Client:
    # One client (connection pool, cookies) per account; httpx's own retries cover connect errors only,
    # every retry decision lives in http/policy.py.
    return httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), follow_redirects=False,
                        headers={"User-Agent": "dm_pipeline/0.1"}, transport=bounds.transport(_tls()))


def known_conversations(engine: Engine, account_key: str) -> Callable[[], list[str]]:
    def read() -> list[str]:
        with engine.connect() as conn:
            return list(conn.scalars(text(
                "SELECT DISTINCT conversation_id FROM dm_private.dm_history WHERE account_key = :k "
                "AND stream_key = 'dm_events' AND conversation_id IS NOT NULL ORDER BY 1"), {"k": account_key}))

    return read


def stored_user_id(engine: Engine, provider: str) -> Callable[[str], str | None]:
    def read(username: str) -> str | None:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT user_id FROM dm_private.dm_users WHERE provider = :p "
                                    "AND lower(username) = lower(:u) ORDER BY updated_at DESC LIMIT 1"),
                               {"p": provider, "u": username})

    return read


def build_client(account: Account, http: httpx.Client, lookup: TokenLookup = env_token,
                 policy: RetryPolicy | None = None, engine: Engine | None = None,
                 windows: Windows | None = None, governor: Governor | None = None) -> ProviderClient:
    # Whoever built the Account (the accounts file checks this too): its credentials go over plain http://
    # to a loopback host only, unless the account sets allow_insecure_http; base_url and oauth.token_url.
    check_transport(account)
    # One rate-limit state per account, in Postgres when there is one: shared by its streams and processes.
    # (`governor`: one built by the caller, e.g. from the state its run read for a batch of accounts)
    if governor is None:
        governor = AccountGovernor(engine, account) if engine is not None else Governor()
    if account.provider is Provider.X:
        token, refresh = token_getter(account, lookup), None
        if account.oauth is not None:
            if engine is None:
                raise ConfigError(f"account {account.key!r} uses OAuth refresh, which needs the database")
            from dm_pipeline.oauth import XOAuth

            manager = XOAuth(account, engine, http, lambda name: lookup(name) if name else None)
            token, refresh = manager.access_token, manager.refresh
        discovered = known_conversations(engine, account.key) if engine is not None else None
        if windows is None:
            settings = load_settings()
            windows = Windows(settings.x_inbox_window_days, settings.x_conversation_window_days)
        return XClient(account, http, token, policy=policy, known_conversations=discovered, refresh=refresh,
                       governor=governor, windows=windows)
    if account.provider is Provider.XQUIK:
        return XquikClient(account, http, required(account, account.token_env, "Xquik API key", lookup),
                           policy=policy, stored_user_id=stored_user_id(engine, "xquik") if engine else None,
                           governor=governor)
    if account.provider is Provider.GETXAPI:
        return GetXApiClient(account, http, required(account, account.token_env, "GetXAPI API key", lookup),
                             lambda name: lookup(name) if name else None, policy=policy, governor=governor)
    raise ConfigError(f"provider {account.provider.value!r} of account {account.key!r} is not supported")
