"""What the CLI checks before it touches a provider: the settings, the database, the accounts file and the
environment variables the selected accounts need. Each problem is one ConfigError or DatabaseUnavailable
whose message names the file, the line or the key, and the fix; the CLI prints it and exits 2.

Values are never part of a message (tokens, keys, passwords): only the names of the variables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dm_pipeline.accounts import (
    OLD_KEYS_ENV,
    TOKEN_KEY_ENV,
    EnvNeed,
    describe_missing,
    endpoint,
    field_lines,
    is_simulator_url,
    load_accounts,
    missing_env,
    select_accounts,
)
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account, Provider
from dm_pipeline.settings import Settings, load_settings

if TYPE_CHECKING:
    from cryptography.fernet import Fernet, MultiFernet

Lookup = Callable[[str], str | None]
NUMERIC_SETTINGS: dict[str, tuple[type, float, str]] = {
    "DM_SIMULATOR_PORT": (int, 1, "a TCP port, e.g. 8765"),
    "DM_PIPELINE_PAGE_BUDGET": (int, 1, "pages per stream per run, e.g. 10000"),
    "DM_PIPELINE_TIME_BUDGET_S": (float, 1, "seconds per account per run, e.g. 600"),
}
TWID = re.compile(r"^u(=|%3D)[0-9]{1,19}$")


def env_lookup(name: str) -> str | None:
    return os.environ.get(name) or None


def checked_settings() -> Settings:
    """load_settings(), with a clear message for a malformed variable instead of a ValueError."""
    for name, (kind, minimum, example) in NUMERIC_SETTINGS.items():
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not a number. Fix: set it to {example}, "
                              f"or unset it for the default") from None
        if value < minimum or (name == "DM_SIMULATOR_PORT" and value > 65535):
            raise ConfigError(f"environment variable {name}={raw!r} is out of range. Fix: set it to {example}")
    raw_url = os.environ.get("DATABASE_URL")
    if raw_url:
        try:
            url = make_url(raw_url)
        except ArgumentError:
            raise ConfigError("DATABASE_URL is not a valid URL (its value is not shown: it may hold a password). "
                              "Fix: export DATABASE_URL=postgresql://user:password@host:5432/dm_pipeline, or unset "
                              "it to use the embedded server") from None
        if url.get_backend_name() != "postgresql":
            raise ConfigError(f"DATABASE_URL must be a PostgreSQL URL, not {url.get_backend_name()!r}. Fix: export "
                              "DATABASE_URL=postgresql://user:password@host:5432/dm_pipeline")
    return load_settings()


# ---------------------------------------------------------------- database

def database(settings: Settings) -> Engine:
    """An engine on the application database, after one successful connection (DatabaseUnavailable
    otherwise, naming the URL without its password)."""
    from sqlalchemy.exc import OperationalError

    from dm_pipeline.db.engine import app_url, get_engine, render
    from dm_pipeline.errors import DatabaseUnavailable

    try:
        engine = get_engine(app_url(settings).render_as_string(hide_password=False))
    except DatabaseUnavailable as exc:  # the embedded server is up but refuses connections
        if settings.database_url:
            raise
        raise DatabaseUnavailable(f"the embedded Postgres at {settings.pgdata} does not answer ({exc}). Fix: "
                                  "dm-pipeline db stop, then retry: it restarts with its data") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to Postgres at {render(engine.url)}: {reason}. Fix: check DATABASE_URL (host, port, "
            "user, password, database) and that the server is up, or unset DATABASE_URL to use the embedded "
            "server") from None
    return engine


def ensure_schema(engine: Engine, settings: Settings, *, migrate: bool) -> None:
    """The database must be at the migrations' head. With `migrate`, bring it there (the embedded
    server's, in `sync`); else say which command does."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from dm_pipeline.db.engine import render
    from dm_pipeline.db.migrate import alembic_config, upgrade

    url = engine.url.render_as_string(hide_password=False)
    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == heads:
        return
    if migrate:
        upgrade(url)
        return
    state = f"at migration {', '.join(sorted(current))}" if current else "not migrated (no dm_pipeline tables)"
    raise ConfigError(f"the database {render(engine.url)} is {state}; this version needs "
                      f"{', '.join(sorted(heads))}. Fix: dm-pipeline db upgrade")


@dataclass(frozen=True)
class StoredTokens:
    """One account's stored OAuth pair, still encrypted (never shown: no repr)."""

    access_enc: bytes = field(repr=False)
    refresh_enc: bytes | None = field(repr=False)

    def decrypts_with(self, fernet: Fernet | MultiFernet) -> bool:
        from cryptography.fernet import InvalidToken

        try:
            for enc in (self.access_enc, self.refresh_enc):
                if enc is not None:
                    fernet.decrypt(enc)
        except InvalidToken:
            return False
        return True


def stored_oauth_tokens(engine: Engine) -> dict[str, StoredTokens]:
    """The accounts whose OAuth tokens already live (encrypted) in Postgres, by key: with the ciphertexts,
    so that check_environment can tell whether DM_PIPELINE_TOKEN_KEY still decrypts them."""
    with engine.connect() as conn:
        if conn.scalar(text("SELECT to_regclass('dm_private.oauth_tokens')")) is None:
            return {}
        rows = conn.execute(text("SELECT account_key, access_token_enc, refresh_token_enc "
                                 "FROM dm_private.oauth_tokens")).all()
    return {key: StoredTokens(bytes(access), bytes(refresh) if refresh is not None else None)
            for key, access, refresh in rows}


def check_token_key(accounts: Iterable[Account], stored: Mapping[str, StoredTokens],
                    fernet: Fernet | MultiFernet) -> None:
    """The selected X accounts with `oauth` whose pair is stored: the key (or an old key of
    DM_PIPELINE_TOKEN_KEYS_OLD: `fernet` is then a MultiFernet) must decrypt it, else the sync would fail
    every stream of theirs with config_error. One ConfigError naming them and the fixes."""
    unreadable = [a for a in accounts if a.provider is Provider.X and a.oauth is not None and a.key in stored
                  and not stored[a.key].decrypts_with(fernet)]
    if not unreadable:
        return
    keys = [a.key for a in unreadable]
    named = f"account {keys[0]!r}" if len(keys) == 1 else "accounts " + ", ".join(repr(k) for k in keys)
    fresh = list(dict.fromkeys(n for a in unreadable for n in (a.token_env, a.oauth and a.oauth.refresh_token_env)
                               if n))
    reset = " ".join(f"--account {k}" for k in keys)
    connect = f"dm-pipeline accounts connect {keys[0] if len(keys) == 1 else 'KEY for each'}"
    raise ConfigError(
        f"{TOKEN_KEY_ENV} does not decrypt the OAuth tokens stored for {named} in dm_private.oauth_tokens (nor does "
        f"a key in {OLD_KEYS_ENV}): they were written with another key (no key or token is shown). Fix: export the "
        f"key they were written with as {TOKEN_KEY_ENV}, or, after a key change, put the old key in {OLD_KEYS_ENV} "
        f"(then dm-pipeline oauth rotate-key); or forget the stored pair{'s' if len(keys) > 1 else ''} and connect "
        f"again: dm-pipeline oauth reset {reset} --yes, then {connect}"
        + (f" (or export fresh tokens of a new authorization: {', '.join(fresh)})" if fresh else ""))


def check_connected(accounts: Iterable[Account], stored: Iterable[str], lookup: Lookup) -> None:
    """X accounts with `oauth` need a stored pair, or the first tokens in the variables they name (already
    checked by missing_env when they name some): else `dm-pipeline accounts connect`."""
    have = set(stored)
    unconnected = [a.key for a in accounts if a.provider is Provider.X and a.oauth is not None and a.key not in have
                   and not any(lookup(n) for n in (a.token_env, a.oauth.refresh_token_env) if n)]
    if unconnected:
        more = f" (also not connected: {', '.join(unconnected[1:])})" if len(unconnected) > 1 else ""
        raise ConfigError(f"account {unconnected[0]!r} is not connected: no OAuth tokens are stored for it in "
                          f"dm_private.oauth_tokens{more}. Fix: dm-pipeline accounts connect {unconnected[0]} "
                          "(README: \"Connect an X account\")")


# ---------------------------------------------------------------- accounts and environment

def simulator_base(settings: Settings) -> str:
    """The simulator's address, for messages; accounts are matched against it parsed (is_simulator_url)."""
    return f"http://127.0.0.1:{settings.simulator_port}"


def simulator_provided(settings: Settings, accounts: Iterable[Account], source: Path) -> dict[str, str]:
    """The credentials `dm-pipeline run` / `sync` export for accounts whose base_url is the simulator's
    (mainjob.simulator_if_needed). A user ID the simulator does not know is a configuration error."""
    base = simulator_base(settings)
    on_sim = [a for a in accounts if is_simulator_url(a.base_url, settings.simulator_port)]
    if not on_sim:
        return {}
    from dm_pipeline.mainjob import SIM_SEED, simulator_credentials
    from dm_pipeline.simulator import World

    world = World(seed=SIM_SEED)
    known = world.accounts()
    creds: dict[str, str] = {}
    for account in on_sim:
        if account.user_id not in known:
            where = field_lines(source).get((account.key, "user_id"), f"{source}:")
            raise ConfigError(f"{where} account {account.key!r} points at the simulator ({base}) but user_id "
                              f"{account.user_id} is not one of its accounts ({', '.join(known)}). Fix: use one of "
                              "those IDs, or point base_url at the real provider")
        creds.update(simulator_credentials(world, account))
    return creds


def missing_hint(settings: Settings, accounts: Iterable[Account]) -> Callable[[EnvNeed], str]:
    """Where to look for a missing variable, for the message (the simulator's address, or the README)."""
    by_key = {a.key: a for a in accounts}

    def hint(need: EnvNeed) -> str:
        account = by_key.get(need.account_key)
        if account is None:
            return ""
        if account.oauth is not None and need.field in ("token_env", "oauth.refresh_token_env"):
            return (f" (or, instead of exporting tokens, connect the account: dm-pipeline accounts connect "
                    f"{account.key})")
        if need.field.startswith("oauth") or need.name == TOKEN_KEY_ENV:
            return " (README: \"X API v2 (official)\")"
        if is_simulator_url(account.base_url, settings.simulator_port):
            return ""  # the simulator provides tokens and keys, so this is not one of them
        try:
            loopback = endpoint(account.base_url).loopback
        except ValueError:
            loopback = False
        if loopback:
            return (f" (its base_url {account.base_url} is not the simulator's address {simulator_base(settings)}"
                    " from DM_SIMULATOR_PORT, exactly: scheme http, host 127.0.0.1 (not localhost), that port; so the"
                    " simulator's credentials are not exported for it)")
        return " (README: \"Connecting real accounts\")"

    return hint


def check_environment(accounts: list[Account], settings: Settings, source: Path, *, lookup: Lookup = env_lookup,
                      provided: Iterable[str] = (),
                      stored_oauth: Iterable[str] | Mapping[str, StoredTokens] = ()) -> None:
    """Every variable the accounts need is set (or will be, by the simulator), well-formed where we can
    tell; else one ConfigError naming the first missing one, its line in `source` and the fix.
    `stored_oauth`: the keys of the accounts with stored OAuth tokens; given as stored_oauth_tokens()
    returns it, the token key must also decrypt the selected accounts' stored tokens (check_token_key)."""
    missing = missing_env(accounts, lookup, stored_oauth=stored_oauth, provided=provided)
    if missing:
        raise ConfigError(describe_missing(missing, source, missing_hint(settings, accounts)))
    if any(a.oauth is not None for a in accounts):
        from cryptography.fernet import Fernet, MultiFernet

        from dm_pipeline.oauth import old_keys

        try:
            fernet = Fernet((lookup(TOKEN_KEY_ENV) or "").encode())
        except ValueError:
            raise ConfigError(f"{TOKEN_KEY_ENV} is not a valid Fernet key (44 url-safe base64 characters; the value "
                              f"is not shown). Fix: export {TOKEN_KEY_ENV}=$(python -c 'from cryptography.fernet "
                              "import Fernet; print(Fernet.generate_key().decode())'), or restore the key the stored "
                              "tokens were written with") from None
        keys = MultiFernet([fernet, *old_keys(lambda name: lookup(name) if name else None)])
        if isinstance(stored_oauth, Mapping):
            check_token_key(accounts, stored_oauth, keys)
            check_connected(accounts, stored_oauth, lookup)
    lines = field_lines(source)
    for account in accounts:
        if account.provider is Provider.GETXAPI and account.twid_env:
            twid = lookup(account.twid_env)
            if twid and not TWID.match(twid):
                where = lines.get((account.key, "twid_env"), f"{source}:")
                raise ConfigError(f"{where} {account.twid_env} (`twid_env` of account {account.key!r}) does not look "
                                  "like X's twid cookie (`u=<numeric user ID>`; the value is not shown). Fix: copy "
                                  "the twid cookie of the account's x.com session")


@dataclass(frozen=True)
class Selection:
    """The selected accounts of the accounts file, and the simulator credentials they will be given."""

    settings: Settings
    source: Path
    accounts: list[Account]
    simulator_credentials: dict[str, str]

    def check_environment(self, *, lookup: Lookup = env_lookup,
                          stored_oauth: Iterable[str] | Mapping[str, StoredTokens] = ()) -> None:
        check_environment(self.accounts, self.settings, self.source, lookup=lookup,
                          provided=self.simulator_credentials, stored_oauth=stored_oauth)


def select(keys: Iterable[str], settings: Settings) -> Selection:
    """Load and validate the accounts file, select `keys` (all when empty; an unknown key is an error)."""
    source = settings.accounts_file
    selected = select_accounts(load_accounts(source), keys, source)
    return Selection(settings, source, selected, simulator_provided(settings, selected, source))
