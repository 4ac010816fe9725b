"""X OAuth 2.0 user tokens: `POST /2/oauth2/token` with the refresh-token grant (X-API-DM-REPORT §4).

- Request: form-encoded `grant_type=refresh_token&refresh_token=…&client_id=…`. With a client secret
  configured (a confidential client), `Authorization: Basic base64(client_id:secret)` is required, else
  401 `{"error":"unauthorized_client","error_description":"Missing valid authorization header"}`.
- Success: `{"token_type":"bearer","expires_in":7200,"access_token","scope","refresh_token"}`.
- Access tokens expire 7200 s after issue on the Simulator's clock; X routes then answer 401 (X's 401
  problem). Refresh tokens never expire but are single-use: each refresh rotates the pair, and a spent or
  unknown one gets 400 `{"error":"invalid_request","error_description":"Value passed for the token was
  invalid."}`. A refresh leaves the old access token valid until it expires (X does not document
  revoking it).
- Other 400s (`invalid_request`): missing `grant_type`, `refresh_token` or (public clients) `client_id`;
  a grant type other than `refresh_token`; a client_id other than the configured one (when configured).
  Tokens are not bound to a client_id.

Static `world.token_for()` tokens stay valid forever; tokens from here live alongside them. Tokens derive
from the world's seed and a counter, so a replayed test mints the same strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
from collections.abc import Callable
from urllib.parse import parse_qs

from dm_pipeline.simulator.faults import Ctx, Reply

ACCESS_TTL_S = 7200
SCOPE = "dm.read tweet.read users.read offline.access"
TOKEN_CONTENT_TYPE = "application/json;charset=UTF-8"
UNAUTHORIZED_CLIENT = {"error": "unauthorized_client", "error_description": "Missing valid authorization header"}
INVALID_TOKEN = "Value passed for the token was invalid."


def oauth_error(status: int, error: str, description: str) -> Reply:
    return Reply(status, {"error": error, "error_description": description}, content_type=TOKEN_CONTENT_TYPE)


def _basic(header: str | None) -> tuple[str, str] | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, secret) if sep else None


class OAuthServer:
    def __init__(self, secret: bytes, clock: Callable[[], float], client_id: str | None = None,
                 client_secret: str | None = None) -> None:
        self.client_id = client_id            # None: any client_id is accepted
        self.client_secret = client_secret    # None: a public client, no Basic auth
        self.refreshes = 0
        self.refreshes_by_user: dict[str, int] = {}
        self._secret, self._clock = secret, clock
        self._lock = threading.Lock()
        self._n = 0
        self._access: dict[str, tuple[str, float]] = {}    # token -> (user, expires at)
        self._refresh: dict[str, str] = {}                 # live refresh token -> user

    def _mint(self, kind: str, user_id: str) -> str:
        self._n += 1
        mac = hmac.new(self._secret, f"{kind}:{user_id}:{self._n}".encode(), hashlib.sha256).hexdigest()[:40]
        raw = f"{mac}:{int(self._clock() * 1000)}:1:0:{kind}:1".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def issue(self, user_id: str) -> tuple[str, str]:
        """A fresh (access token, refresh token) pair, as the authorization-code flow would give."""
        with self._lock:
            access, refresh = self._mint("at", user_id), self._mint("rt", user_id)
            self._access[access] = (user_id, self._clock() + ACCESS_TTL_S)
            self._refresh[refresh] = user_id
            return access, refresh

    def expire(self, user_id: str) -> int:
        """Expire every access token of `user_id` now; returns how many were live."""
        with self._lock:
            now, n = self._clock(), 0
            for token, (user, expires) in self._access.items():
                if user == user_id and expires > now:
                    self._access[token] = (user, float("-inf"))
                    n += 1
            return n

    def account_for(self, token: str) -> str | None:
        """The user of a live, unexpired access token."""
        with self._lock:
            entry = self._access.get(token)
        return entry[0] if entry is not None and self._clock() < entry[1] else None

    def peek(self, ctx: Ctx) -> str | None:
        """Parse the form into `ctx.data`; the user of its refresh token, if live (for logs and faults)."""
        form: dict[str, list[str]] = {}
        if ctx.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = parse_qs(ctx.body.decode("utf-8", "replace"), keep_blank_values=True)
        ctx.data = form
        ctx.log_query = {"grant_type": form["grant_type"][0]} if form.get("grant_type") else {}
        with self._lock:
            return self._refresh.get((form.get("refresh_token") or [""])[0])

    def token_endpoint(self, ctx: Ctx) -> Reply:
        form: dict[str, list[str]] = ctx.data or {}

        def one(name: str) -> str:
            return (form.get(name) or [""])[0]

        basic = _basic(ctx.headers.get("authorization"))
        client = one("client_id")
        if self.client_secret is not None:
            if (basic is None or not hmac.compare_digest(basic[1], self.client_secret)
                    or (self.client_id is not None and basic[0] != self.client_id) or client not in ("", basic[0])):
                return Reply(401, dict(UNAUTHORIZED_CLIENT), content_type=TOKEN_CONTENT_TYPE)
            client = basic[0]
        client = client or (basic[0] if basic else "")
        if not client:
            return oauth_error(400, "invalid_request", "Missing required parameter [client_id].")
        if self.client_id is not None and client != self.client_id:
            return oauth_error(400, "invalid_request", "Value passed for the client id was invalid.")
        if not one("grant_type"):
            return oauth_error(400, "invalid_request", "Missing required parameter [grant_type].")
        if one("grant_type") != "refresh_token":
            return oauth_error(400, "invalid_request", "Value passed for the grant type was invalid.")
        if not one("refresh_token"):
            return oauth_error(400, "invalid_request", "Missing required parameter [refresh_token].")
        with self._lock:
            user = self._refresh.pop(one("refresh_token"), None)     # single use: gone even if we fail later
        if user is None:
            return oauth_error(400, "invalid_request", INVALID_TOKEN)
        access, refresh = self.issue(user)
        with self._lock:
            self.refreshes += 1
            self.refreshes_by_user[user] = self.refreshes_by_user.get(user, 0) + 1
        return Reply(200, {"token_type": "bearer", "expires_in": ACCESS_TTL_S, "access_token": access,
                           "scope": SCOPE, "refresh_token": refresh},
                     content_type=TOKEN_CONTENT_TYPE, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {"refreshes": self.refreshes, "refreshes_by_user": dict(self.refreshes_by_user),
                    "client_id": self.client_id, "secret_required": self.client_secret is not None}
