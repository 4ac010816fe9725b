"""X OAuth 2.0 user tokens: refresh on expiry or 401, rotating single-use refresh tokens safely.

X refresh tokens are single-use: the pair a refresh returns is written, encrypted, and committed as the
very next thing after the response arrives, under an advisory lock per account so two processes never
spend the same refresh token. Hand-written rather than authlib's session: the order "receive, persist,
then use" inside our own transaction is the whole point, and a session's auto-refresh hides it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dm_pipeline.db.tables import oauth_tokens
from dm_pipeline.errors import AuthError, ConfigError
from dm_pipeline.models import Account

KEY_ENV = "DM_PIPELINE_TOKEN_KEY"
EXPIRY_MARGIN_S = 10.0  # refresh slightly early, as X's own SDK does
Secret = Callable[[str | None], str | None]


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str | None
    expires_at: datetime | None


def fernet_from(secret: Secret) -> Fernet:
    key = secret(KEY_ENV)
    if not key:
        raise ConfigError(f"{KEY_ENV} is not set; it encrypts stored OAuth tokens. Fix: export {KEY_ENV}=$(python "
                          "-c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')")
    try:
        return Fernet(key.encode())
    except ValueError:
        raise ConfigError(f"{KEY_ENV} is not a valid Fernet key (32 url-safe base64 bytes)") from None


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
                              f"{KEY_ENV}. Fix: restore the key it was written with, or delete the row "
                              "from dm_private.oauth_tokens and export fresh tokens") from None
        return TokenPair(access, refresh, row.expires_at)

    def _store(self, conn: Connection, pair: TokenPair) -> None:
        values = {
            "provider": self.account.provider.value,
            "access_token_enc": self._fernet.encrypt(pair.access.encode()),
            "refresh_token_enc": self._fernet.encrypt(pair.refresh.encode()) if pair.refresh else None,
            "expires_at": pair.expires_at,
        }
        stmt = pg_insert(oauth_tokens).values(account_key=self.account.key, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=[oauth_tokens.c.account_key],
                                                set_={**values, "updated_at": text("now()")}))

    def _expired(self, pair: TokenPair) -> bool:
        if pair.expires_at is None:
            return False
        return pair.expires_at.timestamp() - EXPIRY_MARGIN_S <= self._clock()

    # ----------------------------------------------------------------- API
    def access_token(self) -> str:
        with self._engine.begin() as conn:
            pair = self._load(conn)
            if pair is None:  # first use: the tokens exported by the operator, stored encrypted from now on
                access = self._secret(self.account.token_env)
                refresh = self._secret(self._oauth.refresh_token_env)
                if not access and not refresh:
                    raise ConfigError(f"account {self.account.key!r} has no stored OAuth tokens and neither "
                                      f"{self.account.token_env} nor {self._oauth.refresh_token_env} is set. "
                                      "Fix: export the access and refresh tokens of the first authorization")
                pair = TokenPair(access or "", refresh, None if access else datetime.fromtimestamp(0, UTC))
                self._store(conn, pair)
        if not pair.access or self._expired(pair):
            return self.refresh()
        self._in_use = pair.access
        return pair.access

    def refresh(self) -> str:
        """Exchange the refresh token; persist the new pair before returning it."""
        client_id = self._secret(self._oauth.client_id_env)
        if not client_id:
            raise ConfigError(f"{self._oauth.client_id_env} (OAuth client ID of {self.account.key!r}) is not set")
        client_secret = self._secret(self._oauth.client_secret_env)
        url = self._oauth.token_url or f"{self.account.base_url}/2/oauth2/token"
        with self._engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                         {"k": f"dm_pipeline:oauth:{self.account.key}"})
            pair = self._load(conn)
            if pair and pair.access and pair.access != self._in_use and not self._expired(pair):
                self._in_use = pair.access  # another process refreshed while we waited for the lock
                return pair.access
            refresh = (pair.refresh if pair else None) or self._secret(self._oauth.refresh_token_env)
            if not refresh:
                raise AuthError("the X access token expired and no refresh token is stored",
                                http_status=401, error_code="token_expired")
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if client_secret:
                basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            try:
                response = self._http.post(url, data={"grant_type": "refresh_token", "refresh_token": refresh,
                                                      "client_id": client_id}, headers=headers)
            except httpx.TransportError as exc:
                raise AuthError(f"token refresh failed: {type(exc).__name__}", error_code="refresh_failed") from None
            if response.status_code != 200:
                raise AuthError(f"X refused the token refresh (HTTP {response.status_code})",
                                http_status=response.status_code, error_code="refresh_rejected")
            body = response.json()
            new = TokenPair(access=str(body["access_token"]), refresh=body.get("refresh_token") or refresh,
                            expires_at=datetime.fromtimestamp(self._clock(), UTC)
                            + timedelta(seconds=float(body.get("expires_in") or 7200)))
            self._store(conn, new)  # committed on leaving this block: before the new token is used
        self.refreshes += 1
        self._in_use = new.access
        return new.access
