"""The environment variables an account needs (names only, never values), which of them are missing, and
one message naming the file, line and column where the first is named."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from dm_pipeline.accounts.errors import _node_at
from dm_pipeline.accounts.schema import TOKEN_KEY_ENV
from dm_pipeline.models import Account, Provider


@dataclass(frozen=True)
class EnvNeed:
    """An environment variable an account needs at run time. `alternatives`: any one of them will do."""

    account_key: str
    field: str                 # where the file names it, e.g. "token_env" or "oauth.client_id_env"
    name: str                  # the variable
    what: str                  # what it holds, for the message
    alternatives: tuple[tuple[str, str], ...] = ()   # (field, name) pairs that satisfy the need as well


def required_env(account: Account, *, oauth_tokens_stored: bool = False) -> list[EnvNeed]:
    """The environment variables `account` needs before a sync can start (names only, never values).

    X with OAuth refresh: the client ID, the client secret if one is named, the token-encryption key, and,
    until the first tokens are stored encrypted in Postgres, the access or the refresh token."""
    k = account.key
    needs: list[EnvNeed] = []
    if account.provider is Provider.X:
        if account.oauth is None:
            if account.token_env:
                needs.append(EnvNeed(k, "token_env", account.token_env, "the X OAuth 2.0 user access token"))
        else:
            o = account.oauth
            needs.append(EnvNeed(k, "oauth.client_id_env", o.client_id_env, "the X app's OAuth 2.0 client ID"))
            if o.client_secret_env:
                needs.append(EnvNeed(k, "oauth.client_secret_env", o.client_secret_env,
                                     "the X app's OAuth 2.0 client secret (confidential client)"))
            needs.append(EnvNeed(k, "oauth", TOKEN_KEY_ENV, "the Fernet key that encrypts stored OAuth tokens"))
            if not oauth_tokens_stored:
                options = [(f, n) for f, n in (("token_env", account.token_env),
                                               ("oauth.refresh_token_env", o.refresh_token_env)) if n]
                if options:
                    (field, name), *rest = options
                    needs.append(EnvNeed(k, field, name, "the first OAuth 2.0 access token (or the refresh token; "
                                         "afterwards both live encrypted in Postgres)", tuple(rest)))
    elif account.provider is Provider.XQUIK:
        if account.token_env:
            needs.append(EnvNeed(k, "token_env", account.token_env, "the Xquik API key"))
    elif account.provider is Provider.GETXAPI:
        if account.token_env:
            needs.append(EnvNeed(k, "token_env", account.token_env, "the GetXAPI API key"))
        if account.auth_token_env:
            needs.append(EnvNeed(k, "auth_token_env", account.auth_token_env, "the account's X auth_token cookie"))
        if account.ct0_env and account.twid_env:
            needs.append(EnvNeed(k, "ct0_env", account.ct0_env, "the account's X ct0 cookie (goes with twid)"))
            needs.append(EnvNeed(k, "twid_env", account.twid_env, "the account's X twid cookie, `u=<user ID>`"))
    return needs


def field_lines(path: Path) -> dict[tuple[str, str], str]:
    """(account key, dotted field) -> 'file:line:column:' of that field, for messages about values."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: dict[tuple[str, str], str] = {}
    entries = _node_at(root, ("accounts",))
    if not isinstance(entries, yaml.SequenceNode):
        return out
    for entry in entries.value:
        if not isinstance(entry, yaml.MappingNode):
            continue
        key = next((getattr(v, "value", None) for k, v in entry.value if getattr(k, "value", None) == "key"), None)
        if not isinstance(key, str):
            continue
        out[(key, "")] = f"{path}:{entry.start_mark.line + 1}:{entry.start_mark.column + 1}:"
        for k, v in entry.value:
            name = getattr(k, "value", None)
            out[(key, str(name))] = f"{path}:{v.start_mark.line + 1}:{v.start_mark.column + 1}:"
            if isinstance(v, yaml.MappingNode):
                for k2, v2 in v.value:
                    out[(key, f"{name}.{getattr(k2, 'value', '')}")] = \
                        f"{path}:{v2.start_mark.line + 1}:{v2.start_mark.column + 1}:"
    return out


Lookup = Callable[[str], str | None]


def missing_env(accounts: Iterable[Account], lookup: Lookup, *, stored_oauth: Iterable[str] = (),
                provided: Iterable[str] = ()) -> list[EnvNeed]:
    """The needs of `accounts` that no variable satisfies. `provided`: names that will be set before the
    sync starts (the simulator's credentials); `stored_oauth`: account keys with tokens in Postgres."""
    have = set(provided)
    stored = set(stored_oauth)

    def is_set(name: str) -> bool:
        return name in have or bool(lookup(name))

    missing: list[EnvNeed] = []
    for account in accounts:
        for need in required_env(account, oauth_tokens_stored=account.key in stored):
            if not is_set(need.name) and not any(is_set(n) for _, n in need.alternatives):
                missing.append(need)
    return missing


def describe_missing(missing: list[EnvNeed], source: Path, hint: Callable[[EnvNeed], str] | None = None) -> str:
    """One message for unset variables: the first in full (file:line, key, what, fix), the others by name."""
    lines = field_lines(source)
    first = missing[0]
    where = lines.get((first.account_key, first.field)) or lines.get((first.account_key, "")) or f"{source}:"
    alt = "".join(f" (or {n}, named by `{f}`)" for f, n in first.alternatives)
    named = (f"`{first.field}` of account {first.account_key!r}" if first.name != TOKEN_KEY_ENV
             else f"account {first.account_key!r} uses `oauth`, which needs {TOKEN_KEY_ENV}")
    fix = (f"export {first.name}=<value>" if first.name != TOKEN_KEY_ENV else
           f"export {TOKEN_KEY_ENV}=$(python -c 'from cryptography.fernet import Fernet; "
           "print(Fernet.generate_key().decode())') and keep it: the stored tokens need it")
    extra = hint(first) if hint else ""
    text = (f"{where} environment variable {first.name} is not set{alt}: {named}, {first.what}. "
            f"Fix: {fix}{extra}")
    others = list(dict.fromkeys(n.name for n in missing[1:] if n.name != first.name))
    if others:
        text += f"; also not set: {', '.join(others)}"
    return text
