"""X OAuth 2.0 user tokens: refresh on expiry or 401, rotating single-use refresh tokens safely.

X refresh tokens are single-use: the pair a refresh returns is written, encrypted, and committed as the
very next thing after the response arrives, under an advisory lock per account so two processes never
spend the same refresh token. Hand-written rather than authlib's session: the order "receive, persist,
then use" inside our own transaction is the whole point, and a session's auto-refresh hides it.

A refresh token X refuses is remembered (`refresh_rejected_at`, committed before the error is raised) and
never posted again: the account fails without a request until `dm-pipeline accounts connect` stores the pair
of a new authorization (`store_authorized`), or the operator exports one, which the next refresh adopts.

Keys: pairs are written with DM_PIPELINE_TOKEN_KEY and read with it or any key in DM_PIPELINE_TOKEN_KEYS_OLD
(a MultiFernet), so a key change keeps every account syncing until `dm-pipeline oauth rotate-key`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dm_pipeline.db.tables import oauth_tokens
from dm_pipeline.errors import AuthError, ConfigError
from dm_pipeline.models import Account

KEY_ENV = "DM_PIPELINE_TOKEN_KEY"
OLD_KEYS_ENV = "DM_PIPELINE_TOKEN_KEYS_OLD"  # earlier keys, comma- or space-separated: read, never written
EXPIRY_MARGIN_S = 10.0  # refresh slightly early, as X's own SDK does
DEFAULT_EXPIRES_IN_S = 7200.0
EPOCH = datetime.fromtimestamp(0, UTC)  # the expiry of a pair with no access token: refresh before use
# RFC 6749 §5.2 error codes: the only part of a token endpoint's error body a message quotes.
OAUTH_ERRORS = frozenset({"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                          "unsupported_grant_type", "invalid_scope"})
# The client, not the refresh token, was refused: X looks at no token then, so it stays unspent.
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
Secret = Callable[[str | None], str | None]


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str | None
    expires_at: datetime | None
    rejected_at: datetime | None = None   # X refused `refresh`: it is never posted again
    scope: str | None = field(default=None, compare=False)   # as X granted it; None: unknown (keep the stored)

    def __repr__(self) -> str:  # never the tokens
        return f"TokenPair(expires_at={self.expires_at!r}, scope={self.scope!r})"


def old_keys(secret: Secret) -> list[Fernet]:
    """The keys in DM_PIPELINE_TOKEN_KEYS_OLD (none when unset); a malformed one is a ConfigError naming its
    position, never its value."""
    raw = secret(OLD_KEYS_ENV) or ""
    keys: list[Fernet] = []
    for n, item in enumerate(raw.replace(",", " ").split(), start=1):
        try:
            keys.append(Fernet(item.encode()))
        except ValueError:
            raise ConfigError(f"{OLD_KEYS_ENV}: item {n} is not a valid Fernet key (44 url-safe base64 characters; "
                              "the value is not shown). Fix: list the earlier keys, comma-separated") from None
    return keys


def primary_key(secret: Secret) -> Fernet:
    key = secret(KEY_ENV)
    if not key:
        raise ConfigError(f"{KEY_ENV} is not set; it encrypts stored OAuth tokens. Fix: export {KEY_ENV}=$(python "
                          "-c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')")
    try:
        return Fernet(key.encode())
    except ValueError:
        raise ConfigError(f"{KEY_ENV} is not a valid Fernet key (32 url-safe base64 bytes)") from None


def fernet_from(secret: Secret) -> MultiFernet:
    """Encrypts with DM_PIPELINE_TOKEN_KEY; decrypts with it or any key of DM_PIPELINE_TOKEN_KEYS_OLD."""
    return MultiFernet([primary_key(secret), *old_keys(secret)])


class XOAuth:
    def __init__(self, account: Account, engine: Engine, http: httpx.Client, secret: Secret,
                 clock: Callable[[], float] = time.time) -> None:
        assert account.oauth is not None
        self.account = account
        self._oauth = account.oauth
        self._engine = engine
        self._http = http
        self._secret = secret
        self._clock = clock
        self._fernet = fernet_from(secret)
        self._in_use: str | None = None
        self.refreshes = 0

    # ----------------------------------------------------------------- storage
    def _load(self, conn: Connection) -> TokenPair | None:
        row = conn.execute(select(oauth_tokens).where(oauth_tokens.c.account_key == self.account.key)).first()
        if row is None:
            return None
        try:
            access = self._fernet.decrypt(row.access_token_enc).decode()
            refresh = self._fernet.decrypt(row.refresh_token_enc).decode() if row.refresh_token_enc else None
        except InvalidToken:
            raise ConfigError(f"the stored OAuth tokens of {self.account.key!r} cannot be decrypted with "
                              f"{KEY_ENV} (nor {OLD_KEYS_ENV}). Fix: restore the key they were written with (as "
                              f"{OLD_KEYS_ENV} after a key change), or dm-pipeline oauth reset --account "
                              f"{self.account.key} --yes and dm-pipeline accounts connect {self.account.key}") from None
        return TokenPair(access, refresh, row.expires_at, row.refresh_rejected_at, row.scope)

    def _store(self, conn: Connection, pair: TokenPair, *, rejected: bool = False, refreshed: bool = False,
               authorized: bool = False) -> None:
        """Write `pair`; `rejected`: X refused its refresh token (now), else any earlier refusal is cleared.
        `refreshed`: a refresh rotated it (now); `authorized`: a new authorization (`accounts connect`)."""
        values: dict[str, Any] = {
            "provider": self.account.provider.value,
            "access_token_enc": self._fernet.encrypt(pair.access.encode()),
            "refresh_token_enc": self._fernet.encrypt(pair.refresh.encode()) if pair.refresh else None,
            "expires_at": pair.expires_at,
            "refresh_rejected_at": func.now() if rejected else None,
        }
        if pair.scope is not None:
            values["scope"] = pair.scope
        if refreshed:
            values["last_refreshed_at"] = func.now()
        if authorized:
            values.update(authorized_at=func.now(), last_refreshed_at=None, scope=pair.scope)
        stmt = pg_insert(oauth_tokens).values(account_key=self.account.key, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=[oauth_tokens.c.account_key],
                                                set_={**values, "updated_at": text("now()")}))

    def _expired(self, pair: TokenPair) -> bool:
        if pair.expires_at is None:
            return False
        return pair.expires_at.timestamp() - EXPIRY_MARGIN_S <= self._clock()

    def _reconnect(self) -> str:
        """How to recover from a spent or refused refresh token (names of variables, never values)."""
        names = " and ".join(n for n in (self.account.token_env, self._oauth.refresh_token_env) if n)
        connect = f"Fix: dm-pipeline accounts connect {self.account.key}"
        return f"{connect}; or authorize elsewhere and export the new pair under {names}" if names else connect

    def _exported_pair(self, stored: TokenPair) -> TokenPair | None:
        """The pair the operator exported after re-authorizing, when its refresh token is not the stored
        (refused) one; its access token only when it is new too (else it is refreshed before use)."""
        refresh = self._secret(self._oauth.refresh_token_env)
        if not refresh or refresh == stored.refresh:
            return None
        access = self._secret(self.account.token_env)
        if not access or access in (stored.access, self._in_use):
            return TokenPair("", refresh, EPOCH)
        return TokenPair(access, refresh, None)

    # ----------------------------------------------------------------- API
    def store_authorized(self, pair: TokenPair) -> None:
        """Store the pair of a new authorization (`accounts connect`) in place of whatever is stored (a refused
        refresh token included), under the account's refresh lock, so no refresh spends the old pair meanwhile."""
        with self._engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                         {"k": f"dm_pipeline:oauth:{self.account.key}"})
            self._store(conn, pair, authorized=True)

    def access_token(self) -> str:
        with self._engine.begin() as conn:
            pair = self._load(conn)
            if pair is None:  # first use: the tokens exported by the operator, stored encrypted from now on
                access = self._secret(self.account.token_env)
                refresh = self._secret(self._oauth.refresh_token_env)
                if not access and not refresh:
                    named = " nor ".join(n for n in (self.account.token_env, self._oauth.refresh_token_env) if n)
                    raise ConfigError(f"account {self.account.key!r} is not connected: no OAuth tokens are stored"
                                      f"{f' and neither {named} is set' if named else ''}. "
                                      f"Fix: dm-pipeline accounts connect {self.account.key}")
                pair = TokenPair(access or "", refresh, None if access else EPOCH)
                self._store(conn, pair)
        if not pair.access or self._expired(pair) or pair.rejected_at is not None:
            return self.refresh()
        self._in_use = pair.access
        return pair.access

    def refresh(self) -> str:
        """Exchange the refresh token; persist the new pair before returning it. A refresh token X refused
        is never posted again: AuthError `refresh_rejected` without a request, unless a fresh pair is
        exported (then that pair is stored and used)."""
        client_id = self._secret(self._oauth.client_id_env)
        if not client_id:
            raise ConfigError(f"{self._oauth.client_id_env} (OAuth client ID of {self.account.key!r}) is not set")
        client_secret = self._secret(self._oauth.client_secret_env)
        url = self._oauth.token_url or f"{self.account.base_url}/2/oauth2/token"
        refused: AuthError | None = None
        with self._engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                         {"k": f"dm_pipeline:oauth:{self.account.key}"})
            pair = self._load(conn)
            if pair is not None and pair.rejected_at is not None:
                exported = self._exported_pair(pair)
                if exported is None:
                    when = pair.rejected_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
                    raise AuthError(f"X refused the stored refresh token of {self.account.key!r} at {when}; "
                                    f"it is never posted again. {self._reconnect()}",
                                    error_code="refresh_rejected", http_status=None, requests=0)
                self._store(conn, exported)  # clears the refusal; committed with whatever follows
                pair = exported
                if pair.access:
                    self._in_use = pair.access
                    return pair.access
            elif pair and pair.access and pair.access != self._in_use and not self._expired(pair):
                self._in_use = pair.access  # another process refreshed while we waited for the lock
                return pair.access
            refresh = (pair.refresh if pair else None) or self._secret(self._oauth.refresh_token_env)
            if not refresh:
                raise AuthError("the X access token expired and no refresh token is stored",
                                http_status=401, error_code="token_expired", requests=0)
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if client_secret:
                basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            try:
                response = self._http.post(url, data={"grant_type": "refresh_token", "refresh_token": refresh,
                                                      "client_id": client_id}, headers=headers)
            except httpx.TransportError as exc:
                raise AuthError(f"token refresh failed: {type(exc).__name__}", error_code="refresh_failed",
                                requests=1) from None
            if response.status_code != 200:
                refused, spent = self._refusal(response)
                if spent:
                    # Remembered before the error leaves: committed on leaving this block, lock still held.
                    base = pair or TokenPair(self._secret(self.account.token_env) or "", None, EPOCH)
                    self._store(conn, TokenPair(base.access, refresh, base.expires_at), rejected=True)
            else:
                new = self._parse(response, refresh)
                self._store(conn, new, refreshed=True)  # committed on leaving this block: before it is used
        if refused is not None:
            raise refused
        self.refreshes += 1
        self._in_use = new.access
        return new.access

    def _refusal(self, response: httpx.Response) -> tuple[AuthError, bool]:
        """The error for a non-200 token reply, and whether it refused the refresh token itself (then X
        will not take it again: it is marked and never posted again). Not so when X refused the client
        (401, invalid_client / unauthorized_client: the token was not looked at) or failed (408, 429, 5xx)."""
        status = response.status_code
        error = _oauth_error(response)
        what = f"HTTP {status}{f' {error}' if error else ''}"
        if status in (408, 429) or status >= 500:
            return AuthError(f"the token refresh failed at X ({what}); the next run tries again",
                             http_status=status, error_code="refresh_failed", requests=1), False
        if status == 401 or error in CLIENT_ERRORS:
            secret = f" and {self._oauth.client_secret_env}" if self._oauth.client_secret_env else ""
            return AuthError(f"X refused the token refresh ({what}): the OAuth client was not accepted. Fix: "
                             f"check {self._oauth.client_id_env}{secret} (a confidential client needs its "
                             "secret, `oauth.client_secret_env`)",
                             http_status=status, error_code="refresh_rejected", requests=1), False
        if status < 400:
            return AuthError(f"X did not answer the token refresh with a token ({what}). Fix: check "
                             "`oauth.token_url`", http_status=status, error_code="refresh_rejected",
                             requests=1), False
        return AuthError(f"X refused the refresh token of {self.account.key!r} ({what}); it is never posted "
                         f"again. {self._reconnect()}", http_status=status, error_code="refresh_rejected",
                         requests=1), True

    def _parse(self, response: httpx.Response, spent: str) -> TokenPair:
        """A 200 token reply as the new pair. Anything but an object with a string `access_token` is a typed
        error: the refresh token was probably spent already, and the traceback would help nobody."""
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        access = body.get("access_token") if isinstance(body, dict) else None
        refresh = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access or not (refresh is None or isinstance(refresh, str)):
            raise AuthError(f"X answered the token refresh of {self.account.key!r} with HTTP 200 but no token; "
                            f"the refresh token may have been spent. {self._reconnect()}", http_status=200,
                            error_code="refresh_unparseable", requests=1)
        scope = body.get("scope")
        return TokenPair(access=access, refresh=refresh or spent,
                         expires_at=expiry(body.get("expires_in"), self._clock()),
                         scope=scope if isinstance(scope, str) and len(scope) <= 1000 else None)


def expiry(expires_in: Any, now: float) -> datetime:
    """When a token that lives `expires_in` seconds (a token reply's field; 2 hours if unusable) expires."""
    seconds = (float(expires_in) if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
               and 0 < expires_in < 10 ** 8 else DEFAULT_EXPIRES_IN_S)
    return datetime.fromtimestamp(now, UTC) + timedelta(seconds=seconds)


def oauth_error(response: httpx.Response) -> str | None:
    return _oauth_error(response)


def _oauth_error(response: httpx.Response) -> str | None:
    """The RFC 6749 `error` code of a token endpoint's error body, if it is one of the standard ones."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) and error in OAUTH_ERRORS else None

