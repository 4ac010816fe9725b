"""X OAuth 2.0 user tokens: `POST /2/oauth2/token` with the refresh-token and authorization-code grants
(docs/architecture.md §11); the consent page that issues the codes is `consent`.

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

Authorization code grant (Authorization Code with PKCE, as `dm-pipeline accounts connect` runs it):
`grant_type=authorization_code&code=…&redirect_uri=…&code_verifier=…&client_id=…` (client rules as above).
Codes live 30 s on the Simulator's clock and are single-use (gone on the first exchange, even a failed one);
the client_id and redirect_uri must be those of the authorization request, and the verifier must match its
`code_challenge` (S256: base64url(sha256(verifier)) without padding; or plain). Any failure is 400
`invalid_request` ("Value passed for the authorization code was invalid.", or the redirect uri / code
verifier). The reply is the refresh grant's, with the granted `scope`; without `offline.access` in it there
is no `refresh_token`. Settings (`/_sim/oauth`): `withhold_scopes` (granted less than asked, e.g.
offline.access), `auto_approve` and `login` (see `consent`), `redirect_uris` (the app's registered callbacks;
None: any).

Static `world.token_for()` tokens stay valid forever; tokens from here live alongside them. Tokens derive
from the world's seed and a counter, so a replayed test mints the same strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from dm_pipeline.simulator.faults import Ctx, Reply

ACCESS_TTL_S = 7200
SCOPE = "dm.read tweet.read users.read offline.access"
TOKEN_CONTENT_TYPE = "application/json;charset=UTF-8"
UNAUTHORIZED_CLIENT = {"error": "unauthorized_client", "error_description": "Missing valid authorization header"}
INVALID_TOKEN = "Value passed for the token was invalid."
INVALID_CODE = "Value passed for the authorization code was invalid."
CODE_TTL_S = 30          # X: "the authorization code is valid for 30 seconds"
CONSENT_TTL_S = 600      # a consent page not answered within 10 minutes is gone
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")     # RFC 7636 §4.1


@dataclass(frozen=True)
class AuthRequest:
    """A checked authorization request (the consent page's query)."""

    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    state: str
    challenge: str
    method: str              # S256 | plain

    def redirect(self, **params: str) -> str:
        """The redirect_uri with `params` and the request's state added to its query."""
        sep = "&" if "?" in self.redirect_uri else "?"
        return f"{self.redirect_uri}{sep}{urlencode({**params, 'state': self.state})}"

    def verifies(self, verifier: str) -> bool:
        if not VERIFIER.fullmatch(verifier):
            return False
        if self.method == "plain":
            return hmac.compare_digest(verifier, self.challenge)
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        return hmac.compare_digest(digest, self.challenge)


@dataclass(frozen=True)
class _Grant:
    user_id: str
    request: AuthRequest
    expires_at: float


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
        self.authorizations = 0                # codes exchanged for a pair
        self.auto_approve = False              # the consent page approves at once, as `login`
        self.login: str | None = None          # the account signed in on the consent page (None: the first)
        self.withhold_scopes: frozenset[str] = frozenset()
        self.redirect_uris: tuple[str, ...] | None = None    # the app's registered callbacks (None: any)
        self._secret, self._clock = secret, clock
        self._lock = threading.Lock()
        self._n = 0
        self._access: dict[str, tuple[str, float]] = {}    # token -> (user, expires at)
        self._refresh: dict[str, str] = {}                 # live refresh token -> user
        self._scopes: dict[str, str] = {}                  # live refresh token -> its grant's scope
        self._pending: dict[str, tuple[AuthRequest, float]] = {}   # consent page id -> (request, expires at)
        self._codes: dict[str, _Grant] = {}

    def _mint(self, kind: str, user_id: str) -> str:
        self._n += 1
        mac = hmac.new(self._secret, f"{kind}:{user_id}:{self._n}".encode(), hashlib.sha256).hexdigest()[:40]
        raw = f"{mac}:{int(self._clock() * 1000)}:1:0:{kind}:1".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def issue(self, user_id: str) -> tuple[str, str]:
        """A fresh (access token, refresh token) pair, as the authorization-code flow would give."""
        access, refresh = self._issue(user_id, SCOPE)
        assert refresh is not None
        return access, refresh

    def _issue(self, user_id: str, scope: str) -> tuple[str, str | None]:
        """An access token, and a refresh token when `scope` has offline.access."""
        with self._lock:
            access = self._mint("at", user_id)
            self._access[access] = (user_id, self._clock() + ACCESS_TTL_S)
            if "offline.access" not in scope.split():
                return access, None
            refresh = self._mint("rt", user_id)
            self._refresh[refresh] = user_id
            self._scopes[refresh] = scope
            return access, refresh

    # --- authorization requests and codes (the consent page, `consent`) ------------------------
    def pend(self, request: AuthRequest) -> str:
        """Remember a request the consent page shows; the id its form posts back."""
        with self._lock:
            now = self._clock()
            for rid in [r for r, (_, t) in self._pending.items() if t <= now]:
                del self._pending[rid]
            rid = secrets.token_urlsafe(16)
            self._pending[rid] = (request, now + CONSENT_TTL_S)
            return rid

    def answer(self, rid: str) -> AuthRequest | None:
        """The pending request `rid` (single use), if it has not expired."""
        with self._lock:
            entry = self._pending.pop(rid, None)
        return entry[0] if entry is not None and self._clock() < entry[1] else None

    def code_for(self, user_id: str, request: AuthRequest) -> str:
        with self._lock:
            code = self._mint("ac", user_id)
            self._codes[code] = _Grant(user_id, request, self._clock() + CODE_TTL_S)
            return code

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
        if ctx.route != "oauth_token":           # the consent page: no state or challenge in the log
            ctx.log_query = {}
            return None
        ctx.log_query = {"grant_type": form["grant_type"][0]} if form.get("grant_type") else {}
        with self._lock:
            grant = self._codes.get((form.get("code") or [""])[0])
            if (form.get("grant_type") or [""])[0] == "authorization_code":
                return grant.user_id if grant is not None else None
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
        if one("grant_type") == "authorization_code":
            return self._code_grant(one, client)
        if one("grant_type") != "refresh_token":
            return oauth_error(400, "invalid_request", "Value passed for the grant type was invalid.")
        if not one("refresh_token"):
            return oauth_error(400, "invalid_request", "Missing required parameter [refresh_token].")
        with self._lock:
            user = self._refresh.pop(one("refresh_token"), None)     # single use: gone even if we fail later
            scope = self._scopes.pop(one("refresh_token"), SCOPE)
        if user is None:
            return oauth_error(400, "invalid_request", INVALID_TOKEN)
        access, refresh = self._issue(user, scope)
        with self._lock:
            self.refreshes += 1
            self.refreshes_by_user[user] = self.refreshes_by_user.get(user, 0) + 1
        return self._pair(access, refresh, scope)

    def _code_grant(self, one: Callable[[str], str], client: str) -> Reply:
        for name in ("code", "redirect_uri", "code_verifier"):
            if not one(name):
                return oauth_error(400, "invalid_request", f"Missing required parameter [{name}].")
        with self._lock:
            grant = self._codes.pop(one("code"), None)               # single use: gone even if we fail later
        if grant is None or grant.expires_at <= self._clock() or grant.request.client_id != client:
            return oauth_error(400, "invalid_request", INVALID_CODE)
        if one("redirect_uri") != grant.request.redirect_uri:
            return oauth_error(400, "invalid_request", "Value passed for the redirect uri was invalid.")
        if not grant.request.verifies(one("code_verifier")):
            return oauth_error(400, "invalid_request", "Value passed for the code verifier was invalid.")
        scope = " ".join(s for s in grant.request.scope if s not in self.withhold_scopes)
        access, refresh = self._issue(grant.user_id, scope)
        with self._lock:
            self.authorizations += 1
        return self._pair(access, refresh, scope)

    @staticmethod
    def _pair(access: str, refresh: str | None, scope: str) -> Reply:
        body: dict[str, object] = {"token_type": "bearer", "expires_in": ACCESS_TTL_S, "access_token": access,
                                   "scope": scope}
        if refresh is not None:
            body["refresh_token"] = refresh
        return Reply(200, body, content_type=TOKEN_CONTENT_TYPE,
                     headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {"refreshes": self.refreshes, "refreshes_by_user": dict(self.refreshes_by_user),
                    "client_id": self.client_id, "secret_required": self.client_secret is not None,
                    "authorizations": self.authorizations, "auto_approve": self.auto_approve, "login": self.login,
                    "withhold_scopes": sorted(self.withhold_scopes),
                    "redirect_uris": list(self.redirect_uris) if self.redirect_uris is not None else None}
