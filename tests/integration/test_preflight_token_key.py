"""Preflight: DM_PIPELINE_TOKEN_KEY must decrypt the OAuth tokens stored (encrypted) in Postgres for the
selected X accounts with an `oauth` block. A wrong key is one configuration error naming the account(s)
and the fix, before anything syncs, instead of a config_error on every stream at run time. Neither the key
nor a token is ever part of the message. Real Postgres (the migrated `engine` / `db_url` fixtures)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, create_engine

from dm_pipeline import preflight
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account, OAuthConfig, Provider
from dm_pipeline.oauth import XOAuth
from dm_pipeline.settings import load_settings
from tests.integration.test_cli_errors import audit_rows, cli, one_clear_line, x_entry

KEY_A = Fernet.generate_key().decode()  # the key the tokens were written with
KEY_B = Fernet.generate_key().decode()  # another valid key
SECRETS = {"DX_CLIENT_ID": "client-1", "DX_REFRESH": "refresh-SECRET-1", "DX_TOKEN_ADA": "access-SECRET-ada",
           "DX_TOKEN_BOB": "access-SECRET-bob", "DX_TOKEN_CY": "access-SECRET-cy"}
OAUTH = "    oauth:\n      client_id_env: DX_CLIENT_ID\n      refresh_token_env: DX_REFRESH\n"


def accounts_yaml(path: Path) -> Path:
    """x-ada and x-bob use OAuth refresh; x-cy is a plain X account (a bearer token, nothing stored)."""
    path.write_text("accounts:\n" + x_entry(key="x-ada", extra=OAUTH)
                    + x_entry(key="x-bob", token_env="DX_TOKEN_BOB", extra=OAUTH)
                    + x_entry(key="x-cy", token_env="DX_TOKEN_CY"))
    return path


def store_tokens(engine: Engine, account_key: str, token_env: str, key: str) -> None:
    """What the first sync of an OAuth account does: store the exported pair, encrypted with `key`."""
    account = Account(key=account_key, provider=Provider.X, user_id="1", base_url="https://api.x.com",
                      token_env=token_env, oauth=OAuthConfig(client_id_env="DX_CLIENT_ID",
                                                             refresh_token_env="DX_REFRESH"))
    env = {**SECRETS, "DM_PIPELINE_TOKEN_KEY": key}
    with httpx.Client() as http:  # never used: the exported access token is not expired
        assert XOAuth(account, engine, http, lambda name: env.get(name) if name else None).access_token()


def check(engine: Engine, path: Path, keys: tuple[str, ...], token_key: str) -> None:
    """The preflight the CLI runs before `sync` and `run`, with `token_key` in DM_PIPELINE_TOKEN_KEY."""
    settings = replace(load_settings(), accounts_file=path)
    env = {**SECRETS, "DM_PIPELINE_TOKEN_KEY": token_key}
    preflight.select(keys, settings).check_environment(lookup=env.get,
                                                       stored_oauth=preflight.stored_oauth_tokens(engine))


def no_secret_in(text: str) -> None:
    for value in (KEY_A, KEY_B, *SECRETS.values()):
        assert value not in text


def test_a_wrong_key_names_the_account_and_the_fix(engine: Engine, tmp_path: Path) -> None:
    path = accounts_yaml(tmp_path / "accounts.yaml")
    store_tokens(engine, "x-ada", "DX_TOKEN_ADA", KEY_A)
    with pytest.raises(ConfigError) as caught:
        check(engine, path, (), KEY_B)
    message = str(caught.value)
    assert "DM_PIPELINE_TOKEN_KEY does not decrypt the OAuth tokens stored for account 'x-ada'" in message
    assert "x-bob" not in message and "x-cy" not in message  # nothing stored, or no oauth: nothing to decrypt
    assert "export the key they were written with" in message
    assert "put the old key in DM_PIPELINE_TOKEN_KEYS_OLD" in message
    assert "dm-pipeline oauth reset --account x-ada --yes, then dm-pipeline accounts connect x-ada" in message
    assert "export fresh tokens" in message and "DX_TOKEN_ADA" in message and "DX_REFRESH" in message
    assert "\n" not in message
    no_secret_in(message)


def test_the_key_the_tokens_were_written_with_passes(engine: Engine, tmp_path: Path) -> None:
    path = accounts_yaml(tmp_path / "accounts.yaml")
    store_tokens(engine, "x-ada", "DX_TOKEN_ADA", KEY_A)
    check(engine, path, (), KEY_A)
    check(engine, path, ("x-ada",), KEY_A)


def test_accounts_without_stored_tokens_pass_with_any_valid_key(engine: Engine, tmp_path: Path) -> None:
    path = accounts_yaml(tmp_path / "accounts.yaml")
    check(engine, path, (), KEY_B)  # nothing stored yet: the first sync stores with KEY_B
    store_tokens(engine, "x-ada", "DX_TOKEN_ADA", KEY_A)
    check(engine, path, ("x-bob", "x-cy"), KEY_B)  # x-ada's unreadable pair is not selected: not checked


def test_every_account_the_key_does_not_decrypt_is_named(engine: Engine, tmp_path: Path) -> None:
    path = accounts_yaml(tmp_path / "accounts.yaml")
    store_tokens(engine, "x-ada", "DX_TOKEN_ADA", KEY_A)
    store_tokens(engine, "x-bob", "DX_TOKEN_BOB", KEY_A)
    with pytest.raises(ConfigError) as caught:
        check(engine, path, (), KEY_B)
    message = str(caught.value)
    assert "stored for accounts 'x-ada', 'x-bob'" in message
    assert "dm-pipeline oauth reset --account x-ada --account x-bob --yes" in message
    no_secret_in(message)
    store_tokens(engine, "x-cy", "DX_TOKEN_CY", KEY_B)  # a row of an account without `oauth`: never read
    check(engine, path, ("x-cy",), KEY_B)


@pytest.mark.parametrize("command", ["sync", "run"])
def test_the_cli_stops_with_exit_2_before_anything_syncs(db_url: str, tmp_path: Path, command: str) -> None:
    path = accounts_yaml(tmp_path / "accounts.yaml")
    engine = create_engine(db_url)
    try:
        store_tokens(engine, "x-ada", "DX_TOKEN_ADA", KEY_A)
    finally:
        engine.dispose()
    env = {**SECRETS, "DM_PIPELINE_ACCOUNTS": str(path), "DATABASE_URL": db_url, "DM_PIPELINE_TOKEN_KEY": KEY_B}
    proc = cli(command, "--account", "x-ada", env=env)
    line = one_clear_line(proc)
    assert "DM_PIPELINE_TOKEN_KEY does not decrypt the OAuth tokens stored for account 'x-ada'" in line
    assert "dm-pipeline oauth reset --account x-ada --yes" in line
    no_secret_in(proc.stdout + proc.stderr)
    assert audit_rows(db_url) == 0  # stopped in the preflight: no stream ran


def test_an_old_key_in_keys_old_passes_until_rotate_key(engine: Engine, tmp_path: Path) -> None:
    """After a key change (new key in DM_PIPELINE_TOKEN_KEY, the old one in DM_PIPELINE_TOKEN_KEYS_OLD) the
    pairs written with the old key still pass; a malformed old key is named by position, never shown."""
    path = accounts_yaml(tmp_path / "accounts.yaml")
    store_tokens(engine, "x-ada", "DX_TOKEN_ADA", KEY_A)
    settings = replace(load_settings(), accounts_file=path)
    for old in (KEY_A, f"{Fernet.generate_key().decode()},{KEY_A}", f" {KEY_A} "):
        env = {**SECRETS, "DM_PIPELINE_TOKEN_KEY": KEY_B, "DM_PIPELINE_TOKEN_KEYS_OLD": old}
        preflight.select((), settings).check_environment(lookup=env.get,
                                                         stored_oauth=preflight.stored_oauth_tokens(engine))
    env = {**SECRETS, "DM_PIPELINE_TOKEN_KEY": KEY_B, "DM_PIPELINE_TOKEN_KEYS_OLD": f"{KEY_A},not-a-key"}
    with pytest.raises(ConfigError, match="DM_PIPELINE_TOKEN_KEYS_OLD: item 2 is not a valid Fernet key") as caught:
        preflight.select((), settings).check_environment(lookup=env.get,
                                                         stored_oauth=preflight.stored_oauth_tokens(engine))
    assert "not-a-key" not in str(caught.value)
    no_secret_in(str(caught.value))


def test_an_oauth_account_that_was_never_connected_is_named_with_the_fix(engine: Engine, tmp_path: Path) -> None:
    """An `oauth` entry that names no token variable needs `accounts connect` before its first sync."""
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n" + x_entry(key="x-ada", extra="    oauth:\n      client_id_env: DX_CLIENT_ID\n")
                    .replace("    token_env: DX_TOKEN_ADA\n", ""))
    with pytest.raises(ConfigError) as caught:
        check(engine, path, (), KEY_A)
    assert "account 'x-ada' is not connected: no OAuth tokens are stored for it" in str(caught.value)
    assert "Fix: dm-pipeline accounts connect x-ada" in str(caught.value)
    store_tokens(engine, "x-ada", "DX_TOKEN_ADA", KEY_A)
    check(engine, path, (), KEY_A)                         # connected: nothing else is needed
