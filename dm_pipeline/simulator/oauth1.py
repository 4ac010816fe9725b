"""X's OAuth 1.0a user context (the spec's `UserToken` scheme; tweepy's default) and X's app-only bearer token.

OAuth 1.0a: `Authorization: OAuth oauth_consumer_key=…, oauth_token=…, oauth_signature_method="HMAC-SHA1",
oauth_timestamp, oauth_nonce, oauth_version="1.0", oauth_signature` (RFC 5849). The simulator has one
consumer (an X app: `consumer_key` / `consumer_secret`) and, per account, an access token `"{user_id}-…"`
(X's format) and its secret (`credentials(user_id)`); all derive from the world's seed. A request is
authenticated when its HMAC-SHA1 signature, keyed by `consumer_secret&token_secret`, verifies over the
signature base string of RFC 5849 §3.4.1: the method, the base URI, and every query, form-body and
`oauth_*` parameter (`realm` and `oauth_signature` excluded), each percent-encoded, sorted. The simulator
stands in for X, so the base URI may be its own (`http://{Host}{path}`) or X's (`https://api.x.com{path}`,
`https://api.twitter.com{path}`: a client that signs for X and is routed to the simulator). A nonce is
single-use per consumer, token and timestamp (the last `NONCES` are kept); timestamps are not checked
against the clock (the Simulator's clock may be virtual). Anything else — an unknown consumer or token, a
method other than HMAC-SHA1, a version other than 1.0, a bad signature, a replayed nonce — is X's 401.

App-only: `app_bearer_token` is the app's OAuth 2.0 application-only token (what `POST /oauth2/token` with
client credentials gives). X's DM routes need user context, so it gets X's 403 `unsupported-authentication`
problem, not a 401 (see `x_api`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections import deque
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, unquote

NONCES = 100_000
X_HOSTS = ("https://api.x.com", "https://api.twitter.com")
_OAUTH_REQUIRED = ("oauth_consumer_key", "oauth_token", "oauth_signature_method", "oauth_signature",
                   "oauth_timestamp", "oauth_nonce")


def percent(value: str) -> str:
    """RFC 5849 §3.6: every octet but ALPHA, DIGIT, `-`, `.`, `_`, `~` percent-encoded, upper-case hex."""
    return quote(value, safe="~")


def header_params(header: str) -> dict[str, str] | None:
    """The parameters of an `Authorization: OAuth k="v", …` header (values unquoted and percent-decoded),
    or None when the header is not OAuth or is malformed."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "oauth":
        return None
    params: dict[str, str] = {}
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            return None
        name = unquote(name.strip())
        if name in params:
            return None
        params[name] = unquote(value[1:-1])
    return params


def base_string(method: str, base_uri: str, params: list[tuple[str, str]]) -> str:
    pairs = sorted((percent(k), percent(v)) for k, v in params)
    normalized = "&".join(f"{k}={v}" for k, v in pairs)
    return "&".join((method.upper(), percent(base_uri), percent(normalized)))


def sign(consumer_secret: str, token_secret: str, base: str) -> str:
    key = f"{percent(consumer_secret)}&{percent(token_secret)}".encode()
    return base64.b64encode(hmac.new(key, base.encode(), hashlib.sha1).digest()).decode()


def own_base_uri(host_header: str | None, path: str) -> str | None:
    """`http://{host}{path}` as RFC 5849 §3.4.1.2 normalizes it (lower-case host, no default port)."""
    if not host_header:
        return None
    host = host_header.strip().lower()
    if host.endswith(":80"):
        host = host[:-3]
    return f"http://{host}{path}"


class OAuth1Verifier:
    """The simulator's X app: its consumer credentials, per-account access tokens, and the verifier."""

    def __init__(self, seed: int, accounts: list[str]) -> None:
        self._key = hashlib.sha256(f"dm-sim-oauth1-{seed}".encode()).digest()
        self.consumer_key = "sim" + self._derive("consumer-key", 22)
        self.consumer_secret = self._derive("consumer-secret", 50)
        self.app_bearer_token = "A" * 22 + self._derive("app-bearer", 90)
        self._tokens = {self.credentials(a)[0]: a for a in accounts}
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str, str, str]] = set()
        self._order: deque[tuple[str, str, str, str]] = deque()

    def _derive(self, label: str, length: int) -> str:
        digest = hmac.new(self._key, label.encode(), hashlib.sha512).digest()
        return base64.b64encode(digest, altchars=b"xy").decode()[:length]

    def credentials(self, user_id: str) -> tuple[str, str]:
        """(access token, access token secret) of an account."""
        return f"{user_id}-{self._derive(f'token:{user_id}', 40)}", self._derive(f"secret:{user_id}", 45)

    def verify(self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str],
               body: bytes) -> str | None:
        """The account of a correctly signed OAuth 1.0a request (`path` as sent, `query` decoded, header names
        lower-cased), else None."""
        oauth = header_params(headers.get("authorization") or "")
        if oauth is None or any(not oauth.get(p) for p in _OAUTH_REQUIRED):
            return None
        if (oauth["oauth_signature_method"] != "HMAC-SHA1" or oauth.get("oauth_version", "1.0") != "1.0"
                or not hmac.compare_digest(oauth["oauth_consumer_key"], self.consumer_key)):
            return None
        user_id = self._tokens.get(oauth["oauth_token"])
        if user_id is None:
            return None
        params = [(k, v) for k, values in query.items() for v in values]
        if body and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        params += [(k, v) for k, v in oauth.items() if k not in ("realm", "oauth_signature")]
        token_secret = self.credentials(user_id)[1]
        candidates = [own_base_uri(headers.get("host"), path), *(host + path for host in X_HOSTS)]
        if not any(uri is not None and hmac.compare_digest(
                sign(self.consumer_secret, token_secret, base_string(method, uri, params)), oauth["oauth_signature"])
                for uri in candidates):
            return None
        seen = (oauth["oauth_consumer_key"], oauth["oauth_token"], oauth["oauth_timestamp"], oauth["oauth_nonce"])
        with self._lock:
            if seen in self._seen:
                return None                       # a replayed request
            self._seen.add(seen)
            self._order.append(seen)
            if len(self._order) > NONCES:
                self._seen.discard(self._order.popleft())
        return user_id
