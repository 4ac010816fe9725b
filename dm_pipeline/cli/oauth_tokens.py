"""`dm-pipeline accounts connect` and `dm-pipeline oauth status | reset | rotate-key`.

Same rules as every command: configuration problems are one `error:` line and exit 2; a connect that did
not end with a stored pair is one line and exit 1. No token, code, verifier, key or secret is ever printed:
status says which key decrypts a pair, never what it decrypts to.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

from dm_pipeline.cli.common import CONTEXT, _escape, _settings, err, fail, friendly_errors, out
from dm_pipeline.errors import ConfigError


def _lookup(name: str | None) -> str | None:
    return (os.environ.get(name) or None) if name else None


def _say(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()      # the URL must reach a pipe (a test, a wrapper) before we wait


def _open_browser(url: str) -> bool:
    import webbrowser

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False        # no display: webbrowser would fall back to a console browser on this terminal
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def _when(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "—"
    from dm_pipeline.status import age

    delta = (ts - now).total_seconds()
    rel = f"in {age(delta)}" if delta > 0 else f"{age(-delta)} ago"
    return f"{ts.astimezone(UTC):%Y-%m-%d %H:%M}Z ({rel})"


# ---------------------------------------------------------------- accounts connect

@click.command("connect", context_settings=CONTEXT, short_help="Authorize an X account in a browser; store its tokens.")
@click.argument("key", metavar="KEY")
@click.option("--no-browser", is_flag=True, help="Do not open a browser: print the URL, and also accept the URL the "
              "browser was redirected to, pasted on standard input (a browser on another machine).")
@click.option("--timeout", "timeout_s", type=click.IntRange(min=1), default=300, show_default=True,
              metavar="SECONDS", help="How long to wait for X's redirect.")
@friendly_errors
def connect(key: str, no_browser: bool, timeout_s: int) -> None:
    """Connect the X account KEY (an entry with an `oauth:` block): OAuth 2.0 Authorization Code with
    PKCE in your browser, then its access and refresh tokens are stored encrypted in Postgres, and every
    sync refreshes them from there. Replaces a stored pair (a refused one included).

    Opens the authorization URL (`oauth.authorize_url`), waits for X's redirect on `oauth.redirect_uri`
    (default http://127.0.0.1:8976/callback: register it on the X app), checks that the account that
    approved is KEY's user_id. Needs the client ID variable (and the secret, if named) and
    DM_PIPELINE_TOKEN_KEY. Exit 0 stored, 1 not authorized (denied, timed out, refused), 2 configuration.

    \b
    Example: dm-pipeline accounts connect support-inbox
             dm-pipeline accounts connect support-inbox --no-browser    (paste the redirected URL)
    """
    from rich.markup import escape

    from dm_pipeline import preflight
    from dm_pipeline.accounts import describe_missing, missing_env
    from dm_pipeline.models import Provider
    from dm_pipeline.oauth import fernet_from
    from dm_pipeline.oauth_connect import ConnectError
    from dm_pipeline.oauth_connect import connect as authorize

    settings = _settings()
    selection = preflight.select([key], settings)
    (account,) = selection.accounts
    if account.provider is not Provider.X or account.oauth is None:
        raise ConfigError(f"account {key!r} in {selection.source} is not an X account with an `oauth:` block, which "
                          "connect needs (it stores a refreshable pair). Fix: add `oauth: {client_id_env: "
                          "X_CLIENT_ID}` to its entry (README: \"Connect an X account\")")
    missing = missing_env([account], preflight.env_lookup, stored_oauth=[account.key])
    if missing:
        raise ConfigError(describe_missing(missing, selection.source, preflight.missing_hint(settings, [account])))
    fernet_from(_lookup)                        # a malformed key, now rather than after the browser
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=settings.database_url is None)
    replacing = key in preflight.stored_oauth_tokens(engine)
    _say(f"Connecting {key} (X user {account.user_id}) with the OAuth 2.0 client in {account.oauth.client_id_env}"
         + ("; this replaces the pair stored for it." if replacing else "."))
    try:
        done = authorize(account, engine, secret=_lookup, say=_say, open_browser=None if no_browser else _open_browser,
                         paste=sys.stdin if no_browser else None, timeout_s=float(timeout_s))
    except ConnectError as exc:
        fail(escape(str(exc)), code=exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: nothing stored")
        sys.exit(130)
    who = f" (@{done.username})" if done.username else ""
    out.print(f"connected {key}: X user {done.user_id}{who}; scope {done.scope}; the access token expires "
              f"{done.expires_at:%Y-%m-%d %H:%M}Z and is refreshed by every sync from now on. The pair is stored "
              "encrypted in dm_private.oauth_tokens.", markup=False, soft_wrap=True)


# ---------------------------------------------------------------- oauth status | reset | rotate-key

@click.group("oauth", context_settings=CONTEXT, short_help="Stored X OAuth tokens: status, reset, rotate-key.")
def oauth() -> None:
    """The X OAuth 2.0 pairs stored, encrypted with DM_PIPELINE_TOKEN_KEY, in dm_private.oauth_tokens
    (`dm-pipeline accounts connect KEY` stores one).

    \b
    Example: dm-pipeline oauth status
    """


def _keys() -> tuple[Any, list[Any]]:
    """The current key (None when DM_PIPELINE_TOKEN_KEY is unset) and the old ones; malformed: ConfigError."""
    from dm_pipeline.oauth import KEY_ENV, old_keys, primary_key

    return (primary_key(_lookup) if _lookup(KEY_ENV) else None), old_keys(_lookup)


@oauth.command("status", context_settings=CONTEXT, short_help="Per account: stored?, scope, expiry, last refresh.")
@click.option("--account", "account_keys", multiple=True, metavar="KEY", help="Only this account (repeatable).")
@friendly_errors
def status(account_keys: tuple[str, ...]) -> None:
    """Per X account with `oauth` (and any other account with a stored pair): whether a pair is stored,
    the scope X granted, when the access token expires, when it was last refreshed and connected, and
    which key decrypts it (current, an old key of DM_PIPELINE_TOKEN_KEYS_OLD, or none). Never the tokens.

    \b
    Example: dm-pipeline oauth status --account support-inbox
    """
    from rich.table import Table

    from dm_pipeline import preflight
    from dm_pipeline.accounts import load_accounts
    from dm_pipeline.oauth_admin import pair_status

    settings = _settings()
    configured: list[str] = []
    try:
        configured = [a.key for a in load_accounts(settings.accounts_file) if a.oauth is not None]
    except ConfigError as exc:
        err.print(f"[yellow]warning:[/] {_escape(str(exc))} (showing what the database knows)", soft_wrap=True)
    primary, olds = _keys()
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=False)
    stored = {p.account_key: p for p in pair_status(engine, primary, olds)}
    keys = list(dict.fromkeys([*configured, *stored]))
    unknown = [k for k in account_keys if k not in keys]
    if unknown:
        raise ConfigError(f"no X account with `oauth` and no stored pair is called {', '.join(map(repr, unknown))}. "
                          f"Known: {', '.join(keys) or 'none'}")
    now = datetime.now(UTC)
    table = Table(title="X OAuth pairs in dm_private.oauth_tokens (times UTC; never the tokens)")
    for col in ("account", "pair", "scope", "access token expires", "last refreshed", "connected", "key"):
        table.add_column(col, overflow="fold")
    for key in keys:
        if account_keys and key not in account_keys:
            continue
        p = stored.get(key)
        if p is None:
            table.add_row(key, f"not connected: dm-pipeline accounts connect {key}", "—", "—", "—", "—", "—")
            continue
        pair = "stored" if p.has_refresh else "stored, no refresh token"
        if p.refresh_rejected_at is not None:
            pair = f"refresh refused {_when(p.refresh_rejected_at, now)}: dm-pipeline accounts connect {key}"
        elif key not in configured:
            pair += " (not in the accounts file)"
        key_state = p.key or "— (DM_PIPELINE_TOKEN_KEY not set)"
        table.add_row(key, pair, p.scope or "—", _when(p.expires_at, now) if p.expires_at else "—",
                      _when(p.last_refreshed_at, now), _when(p.authorized_at, now), key_state)
    out.print(table)


@oauth.command("reset", context_settings=CONTEXT, short_help="Forget an account's stored pair (dry run by default).")
@click.option("--account", "account_keys", multiple=True, required=True, metavar="KEY",
              help="The account whose pair to forget (repeatable).")
@click.option("--yes", is_flag=True, help="Really forget it (default: a dry run).")
@friendly_errors
def reset(account_keys: tuple[str, ...], yes: bool) -> None:
    """Forget the stored OAuth pair of an account (after X refused its refresh token, a lost key, or to
    connect another X account): the account does not sync until `dm-pipeline accounts connect KEY`.
    The tokens are not revoked at X (revoke the app in the X account's settings if you must).

    \b
    Example: dm-pipeline oauth reset --account support-inbox          (dry run)
             dm-pipeline oauth reset --account support-inbox --yes
    """
    from dm_pipeline import preflight
    from dm_pipeline.oauth_admin import forget

    settings = _settings()
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=False)
    stored = preflight.stored_oauth_tokens(engine)
    wanted = list(dict.fromkeys(account_keys))
    absent = [k for k in wanted if k not in stored]
    for k in absent:
        out.print(f"{k}: no pair stored; nothing to forget", markup=False)
    present = [k for k in wanted if k in stored]
    if not present:
        return
    if not yes:
        out.print(f"dry run: would forget the stored pair of {', '.join(present)}. Re-run with --yes; then connect "
                  "again with dm-pipeline accounts connect KEY.", markup=False, soft_wrap=True)
        return
    for k in forget(engine, present):
        out.print(f"{k}: stored pair forgotten; it syncs again after dm-pipeline accounts connect {k}", markup=False)


@oauth.command("rotate-key", context_settings=CONTEXT,
               short_help="Re-encrypt every stored pair with DM_PIPELINE_TOKEN_KEY.")
@friendly_errors
def rotate_key() -> None:
    """Re-encrypt every stored pair from the old key(s) in DM_PIPELINE_TOKEN_KEYS_OLD (comma-separated)
    to DM_PIPELINE_TOKEN_KEY, in one transaction: all or nothing. Syncs keep working throughout: with
    both variables set, pairs under an old key are still read, and new ones are written with the new key.

    \b
    Example: export DM_PIPELINE_TOKEN_KEYS_OLD=$DM_PIPELINE_TOKEN_KEY DM_PIPELINE_TOKEN_KEY=<a new Fernet key>
             dm-pipeline oauth rotate-key      (then unset DM_PIPELINE_TOKEN_KEYS_OLD everywhere)
    """
    from dm_pipeline import preflight
    from dm_pipeline.oauth import KEY_ENV, OLD_KEYS_ENV, primary_key
    from dm_pipeline.oauth_admin import rotate

    primary = primary_key(_lookup)
    _, olds = _keys()
    if not olds:
        raise ConfigError(f"{OLD_KEYS_ENV} is not set: no old key to re-encrypt from. Fix: export {OLD_KEYS_ENV}=<the "
                          f"previous key> (comma-separated if several) and the new key as {KEY_ENV}")
    settings = _settings()
    engine = preflight.database(settings)
    preflight.ensure_schema(engine, settings, migrate=False)
    done = rotate(engine, primary, olds)
    total = len(done.rotated) + len(done.renewed)
    names = ", ".join([*done.rotated, *done.renewed]) or "none stored"
    out.print(f"re-encrypted {total} stored pair{'s' if total != 1 else ''} with {KEY_ENV} ({names}); "
              f"{len(done.rotated)} {'was' if len(done.rotated) == 1 else 'were'} under an old key. Every pair now "
              f"needs only {KEY_ENV}: {OLD_KEYS_ENV} can be unset.", markup=False, soft_wrap=True)
