"""`dm-pipeline accounts connect`: OAuth 2.0 Authorization Code with PKCE for one X account, end to end.

1. A PKCE pair (S256) and a random `state`; the authorization URL (`oauth.authorize_url`, default
   https://x.com/i/oauth2/authorize, or `{base_url}/i/oauth2/authorize` when base_url is a loopback address:
   the simulator) with the scopes dm.read tweet.read users.read offline.access.
2. A one-shot HTTP server on the loopback `oauth.redirect_uri` (default http://127.0.0.1:8976/callback, the
   callback registered on the X app), listening before the URL is shown. With `--no-browser` the redirected
   URL may also be pasted on standard input (a browser on another machine). The browser's page says how it
   ended, once the pair is stored (or why not).
3. The code is exchanged (authorization_code + code_verifier; HTTP Basic with a client secret), the grant
   must include offline.access (no refresh token otherwise), GET /2/users/me must name the account's
   user_id, and only then is the pair stored, encrypted, by `XOAuth.store_authorized`.

Nothing here prints or logs a token, a code, the verifier or a secret; errors carry HTTP statuses and RFC
6749 error codes only. Failures are ConnectError (exit 1; exit 2 when a setting must change).
"""

from __future__ import annotations

import base64
import hashlib
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
from sqlalchemy import Engine

from dm_pipeline.accounts import check_transport, endpoint
from dm_pipeline.clients import http_client
from dm_pipeline.errors import ConfigError, DmPipelineError, printable
from dm_pipeline.models import Account
from dm_pipeline.oauth import Secret, TokenPair, XOAuth, expiry, oauth_error
from dm_pipeline.oauth_callback import Arrival, Callback, CallbackServer, listen, loopback_http, page, read_pasted

SCOPES = ("dm.read", "tweet.read", "users.read", "offline.access")
REQUIRED_SCOPES = ("dm.read", "offline.access")
DEFAULT_AUTHORIZE_URL = "https://x.com/i/oauth2/authorize"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8976/callback"
DEFAULT_TIMEOUT_S = 300.0


class ConnectError(DmPipelineError):
    """The authorization did not end with a stored pair; `exit_code` 1, or 2 when a setting must change."""

    error_code = "connect_failed"

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------- PKCE, state, URL
def challenge_of(verifier: str) -> str:
    """RFC 7636 S256: base64url(SHA-256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, code_challenge): 86 unreserved characters (RFC 7636 allows 43-128) and its S256."""
    verifier = secrets.token_urlsafe(64)
    return verifier, challenge_of(verifier)


def new_state() -> str:
    return secrets.token_urlsafe(32)


def authorize_url_of(account: Account) -> str:
    assert account.oauth is not None
    if account.oauth.authorize_url:
        return account.oauth.authorize_url
    try:
        local = endpoint(account.base_url).loopback
    except ValueError:
        local = False
    return f"{account.base_url}/i/oauth2/authorize" if local else DEFAULT_AUTHORIZE_URL


def redirect_uri_of(account: Account) -> str:
    assert account.oauth is not None
    return account.oauth.redirect_uri or DEFAULT_REDIRECT_URI


def token_url_of(account: Account) -> str:
    assert account.oauth is not None
    return account.oauth.token_url or f"{account.base_url}/2/oauth2/token"


def authorization_url(authorize_url: str, client_id: str, redirect_uri: str, state: str, challenge: str,
                      scopes: tuple[str, ...] = SCOPES) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "scope": " ".join(scopes), "state": state, "code_challenge": challenge,
              "code_challenge_method": "S256"}
    sep = "&" if urlsplit(authorize_url).query else "?"
    return authorize_url + sep + urlencode(params, quote_via=quote)   # spaces as %20, as X documents


# ------------------------------------------------------------------------------- the flow
@dataclass(frozen=True)
class Connected:
    account_key: str
    user_id: str
    username: str | None
    scope: str
    expires_at: datetime


def connect(account: Account, engine: Engine, *, secret: Secret, say: Callable[[str], None],
            open_browser: Callable[[str], bool] | None = None, paste: IO[str] | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S, http: httpx.Client | None = None) -> Connected:
    """Authorize `account` in a browser and store its pair; ConnectError when that did not happen.
    `open_browser`: opens the URL (None: --no-browser); `paste`: standard input, read for a pasted URL."""
    if account.oauth is None:
        raise ConfigError(f"account {account.key!r} has no `oauth` block. Fix: add `oauth: {{client_id_env: "
                          "X_CLIENT_ID}` to its entry (README: \"Connect an X account\")")
    check_transport(account)
    oauth = account.oauth
    client_id = secret(oauth.client_id_env)
    if not client_id:
        raise ConfigError(f"{oauth.client_id_env} (the X app's OAuth 2.0 client ID, `oauth.client_id_env` of "
                          f"{account.key!r}) is not set. Fix: export {oauth.client_id_env}=<client ID>")
    client_secret = secret(oauth.client_secret_env) if oauth.client_secret_env else None
    if oauth.client_secret_env and not client_secret:
        raise ConfigError(f"{oauth.client_secret_env} (`oauth.client_secret_env` of {account.key!r}) is not set. "
                          f"Fix: export {oauth.client_secret_env}=<client secret>, or remove it for a public client")
    own = http is None
    client = http or http_client(30.0)
    try:
        return _run(account, client, XOAuth(account, engine, client, secret), client_id, client_secret, say=say,
                    open_browser=open_browser, paste=paste, timeout_s=timeout_s)   # XOAuth checks the token key
    finally:
        if own:
            client.close()


def _run(account: Account, client: httpx.Client, manager: XOAuth, client_id: str, client_secret: str | None, *,
         say: Callable[[str], None], open_browser: Callable[[str], bool] | None, paste: IO[str] | None,
         timeout_s: float) -> Connected:
    redirect_uri = redirect_uri_of(account)
    verifier, challenge = pkce_pair()
    state = new_state()
    inbox: queue.Queue[Arrival] = queue.Queue()
    server = _listen_or_paste(redirect_uri, inbox, paste is not None, say)
    try:
        url = authorization_url(authorize_url_of(account), client_id, redirect_uri, state, challenge)
        say(f"Open this URL in a browser signed in to X as the account {account.key} (user {account.user_id}), "
            "and approve:")
        say(url)
        if open_browser is not None and not open_browser(url):
            say("(no browser could be opened here: open the URL above yourself)")
        minutes = (f"{timeout_s / 60:g} minute{'s' if timeout_s != 60 else ''}" if timeout_s % 60 == 0
                   else f"{timeout_s:g} second{'s' if timeout_s != 1 else ''}")
        if server is not None:
            say(f"Waiting up to {minutes} for X to send the browser to {redirect_uri} …")
        if paste is not None:
            say(f"If that browser is on another machine, paste here the URL it was sent to ({redirect_uri}?…), "
                "then Enter.")
            threading.Thread(target=read_pasted, args=(paste, redirect_uri, inbox, say), daemon=True).start()
        arrival = _wait(inbox, time.monotonic() + timeout_s, server is not None, account, minutes)
        try:
            result = _finish(arrival.callback, state, verifier, redirect_uri, account, client_id, client_secret,
                             manager, client)
        except Exception as exc:
            why = str(exc) if isinstance(exc, DmPipelineError) else f"an unexpected {type(exc).__name__}"
            arrival.page = page("Not connected", f"{why} (see the terminal)").decode()
            raise
        else:
            who = f"@{result.username} " if result.username else ""
            arrival.page = page("Connected", f"{account.key} is connected as {who}(user {result.user_id}). You can "
                                              "close this tab and go back to the terminal.").decode()
        finally:
            arrival.ready.set()
            if arrival.from_browser:
                arrival.sent.wait(10)
        return result
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def _listen_or_paste(redirect_uri: str, inbox: queue.Queue[Arrival], pasting: bool,
                     say: Callable[[str], None]) -> CallbackServer | None:
    if not loopback_http(redirect_uri):
        if pasting:
            return None
        raise ConfigError(f"oauth.redirect_uri {redirect_uri} is not an http:// address on this machine (127.0.0.1, "
                          "::1 or localhost), so connect cannot receive X's redirect. Fix: register "
                          f"{DEFAULT_REDIRECT_URI} as the X app's callback URL and use it (the default), or run "
                          "with --no-browser and paste the redirected URL")
    try:
        return listen(redirect_uri, inbox)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if pasting:
            say(f"note: cannot listen on {redirect_uri} ({reason}): paste the redirected URL instead")
            return None
        raise ConfigError(f"cannot listen on {redirect_uri} for X's redirect ({reason}; another connect "
                          "running?). Fix: stop the other process, or run with --no-browser and paste the "
                          "redirected URL") from None


def _wait(inbox: queue.Queue[Arrival], deadline: float, listening: bool, account: Account,
          minutes: str) -> Arrival:
    while True:
        try:
            arrival = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise ConnectError(f"no answer from X within {minutes}: nothing stored. Fix: run dm-pipeline accounts "
                               f"connect {account.key} again and approve in the browser (--timeout SECONDS for "
                               "more time); if the browser showed an error, check the X app's callback URL is "
                               f"exactly {redirect_uri_of(account)}") from None
        if arrival.callback is not None:
            return arrival
        if not listening:
            raise ConnectError("standard input closed before a redirected URL was pasted: nothing stored. Fix: "
                               f"run dm-pipeline accounts connect {account.key} again")


def _finish(callback: Callback | None, state: str, verifier: str, redirect_uri: str, account: Account,
            client_id: str, client_secret: str | None, manager: XOAuth, client: httpx.Client) -> Connected:
    assert callback is not None
    again = f"run dm-pipeline accounts connect {account.key} again"
    if callback.state is None or not secrets.compare_digest(callback.state.encode(), state.encode()):
        raise ConnectError(f"the redirect's state does not match this request's (a stale or forged redirect): "
                           f"nothing stored. Fix: {again}, and use the URL it prints")
    if callback.error == "access_denied":
        raise ConnectError(f"the authorization was denied on X: nothing stored. Fix: {again} and choose Approve "
                           "(as the account to connect)")
    if callback.error is not None or not callback.code:
        raise ConnectError(f"X answered the authorization with error {callback.error!r}: nothing stored. Fix: "
                           f"check the X app's OAuth 2.0 settings (type, callback URL, scopes), then {again}")
    body = _exchange(client, account, client_id, client_secret, callback.code, verifier, redirect_uri, again)
    access, refresh, scope = body["access_token"], body.get("refresh_token"), body.get("scope")
    granted = scope.split() if isinstance(scope, str) else list(SCOPES)
    missing = [s for s in REQUIRED_SCOPES if s not in granted]
    if "offline.access" in missing or not isinstance(refresh, str) or not refresh:
        raise ConnectError("X granted no offline.access, so no refresh token came and the access token would die "
                           f"in 2 hours: nothing stored. Fix: {again} and approve every scope asked (the X app must "
                           "allow offline.access)")
    if missing:
        raise ConnectError(f"X did not grant {', '.join(missing)}: nothing stored. Fix: {again} and approve every "
                           "scope asked")
    user_id, username = _me(client, account, access, again)
    if user_id != account.user_id:
        raise ConnectError(f"the X account that approved is {f'@{username} ' if username else ''}(user {user_id}), "
                           f"not account {account.key!r} (user_id {account.user_id}): nothing stored. Fix: sign in "
                           f"to X as that account (the browser may hold another session) and {again}, or correct "
                           "its user_id in the accounts file", exit_code=2)
    pair = TokenPair(access, refresh, expiry(body.get("expires_in"), time.time()), scope=" ".join(granted))
    manager.store_authorized(pair)
    assert pair.expires_at is not None
    return Connected(account.key, user_id, username, " ".join(granted), pair.expires_at)


def _exchange(client: httpx.Client, account: Account, client_id: str, client_secret: str | None, code: str,
              verifier: str, redirect_uri: str, again: str) -> dict[str, Any]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if client_secret:
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier, "client_id": client_id}
    try:
        response = client.post(token_url_of(account), data=form, headers=headers)
    except httpx.TransportError as exc:
        raise ConnectError(f"the token endpoint {token_url_of(account)} could not be reached "
                           f"({type(exc).__name__}): nothing stored. Fix: check oauth.token_url and the network, "
                           f"then {again}") from None
    error = oauth_error(response)
    what = f"HTTP {response.status_code}{f' {error}' if error else ''}"
    if response.status_code == 401 or error in ("invalid_client", "unauthorized_client"):
        secret = f" and {account.oauth.client_secret_env}" if account.oauth and account.oauth.client_secret_env else ""
        raise ConnectError(f"X refused the OAuth client ({what}): nothing stored. Fix: check "
                           f"{account.oauth.client_id_env if account.oauth else 'the client ID'}{secret} (a Web App "
                           "is a confidential client: it needs `oauth.client_secret_env`)", exit_code=2)
    if response.status_code != 200:
        raise ConnectError(f"X refused the authorization code ({what}): codes are single-use, live 30 seconds, "
                           f"and need the same redirect_uri and PKCE verifier: nothing stored. Fix: {again}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise ConnectError(f"X answered the code exchange with HTTP 200 but no token: nothing stored. Fix: {again}")
    return body


def _me(client: httpx.Client, account: Account, access: str, again: str) -> tuple[str, str | None]:
    """The ID and username of the account the access token belongs to (GET /2/users/me)."""
    try:
        response = client.get(f"{account.base_url}/2/users/me", headers={"Authorization": f"Bearer {access}"})
    except httpx.TransportError as exc:
        raise ConnectError(f"GET /2/users/me failed ({type(exc).__name__}): nothing stored. Fix: {again}") from None
    try:
        data = response.json().get("data") if response.status_code == 200 else None
    except (ValueError, AttributeError):
        data = None
    user_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(user_id, str) or not user_id.isdigit():
        raise ConnectError(f"X did not say which account approved (GET /2/users/me: HTTP {response.status_code}): "
                           f"nothing stored. Fix: {again}")
    username = data.get("username") if isinstance(data, dict) else None
    return user_id, printable(username, 15) if isinstance(username, str) else None
