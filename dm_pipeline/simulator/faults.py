"""Fault injection, and the small request/response model that faults act on.

A fault is queued for an account (or any account: None) and a route (or "*"), and is consumed by the next
matching request whose route honours that kind, `count` times. What a kind does depends on its `phase`:

- `status`    the provider answers with its own error body instead of handling the request;
- `body`      a broken body instead of handling (`malformed_json`: the provider's JSON cut short;
              `html`: a proxy's HTML page, param `status`, default 502);
- `mutate`    the request is handled and the provider bends the page (`cursor_loop`, `empty_page`,
              `duplicates`, `nul_text`, `missing_optional`); faults never touch the world;
- `transport` the server misbehaves on the wire (`slow`: param `delay_s`, default 5; `drop`; `truncated`).

Params every status kind takes: `retry_after` (a `Retry-After` header, seconds). X's `429` also takes
`reset_in` (seconds until `x-rate-limit-reset`) and `rate_headers=False` (send no `x-rate-limit-*`); X's
`usage_capped` keeps the window's own rate-limit headers, as X does.
Which route honours which kind is each provider module's `*_FAULTS`; injecting a kind a named route does
not honour is an error.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Phase = Literal["status", "body", "mutate", "transport"]

KINDS: dict[str, Phase] = {
    "429": "status",
    "503": "status",
    "500": "status",
    "403": "status",                  # X: client-forbidden problem
    "unsupported_authentication": "status",  # X: 403 unsupported-authentication (an app-only token's answer)
    "usage_capped": "status",         # X: 429 usage-capped (params `period`, `scope`): not a rate limit
    "401": "status",
    "expired_cursor": "status",       # 400: the provider's invalid-cursor error for the cursor sent
    "invalid_cursor": "status",       # the same (older name)
    "dm_not_permitted": "status",     # Xquik 403 dm_not_permitted; X 403 not-authorized-for-resource
    "no_credits": "status",           # Xquik 402 (param `error`: no_subscription, subscription_inactive, ...)
    "no_subscription": "status",      # Xquik 402
    "insufficient_credits": "status",  # Xquik 402
    "account_restricted": "status",   # Xquik 403
    "account_needs_reauth": "status",  # Xquik 403
    "x_dm_not_allowed": "status",     # Xquik 422
    "malformed_json": "body",
    "html": "body",
    "cursor_loop": "mutate",          # the next cursor is the request's own cursor
    "empty_page": "mutate",           # an empty page whose next cursor is the request's own: loses nothing
    "duplicates": "mutate",           # the next cursor points `overlap` (default 2) events back into this page
    "nul_text": "mutate",             # message texts gain a NUL mid-text and a trailing lone surrogate U+D800
    "missing_optional": "mutate",     # optional fields (created_at, sender, media) left out of every item
    "slow": "transport",
    "drop": "transport",
    "truncated": "transport",         # full Content-Length, half the body, then close
}
TRANSPORT = frozenset(k for k, p in KINDS.items() if p == "transport")
BODY = frozenset(k for k, p in KINDS.items() if p == "body")
COMMON = TRANSPORT | BODY | {"429", "503", "500", "401"}
PAGING = frozenset({"expired_cursor", "invalid_cursor", "cursor_loop", "empty_page", "duplicates", "nul_text",
                    "missing_optional"})

_LONE_SURROGATE = re.compile("[\\ud800-\\udfff]")


@dataclass
class Reply:
    """A response before it is written: `payload` is JSON-encoded at send time unless `body` is set."""

    status: int
    payload: Any = None
    body: bytes | None = None
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is not None:
            return self.body
        try:
            # orjson writes the same compact UTF-8 JSON as json.dumps below, ~10x faster (pages are big).
            return orjson.dumps(self.payload)
        except (orjson.JSONEncodeError, TypeError):
            pass                        # lone surrogates (nul_text), non-str keys: the stdlib path
        text = json.dumps(self.payload, ensure_ascii=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:      # lone surrogates (nul_text) go out as JSON escapes, e.g. \ud800
            return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


@dataclass
class Ctx:
    """One provider request as route handlers see it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]            # names lower-cased
    route: str = ""
    path_params: dict[str, str] = field(default_factory=dict)
    user_id: str | None = None
    seq: int = 0
    body: bytes = b""
    data: Any = None                      # the parsed body, for JSON/form routes
    fault: Fault | None = None            # the mutate-phase fault the handler applies, if any
    log_query: dict[str, str] | None = None   # what the request log records for non-GET routes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class Route:
    name: str                             # route name: faults, the request log and cursors key on it
    handler: Callable[[Ctx], Reply]
    faults: frozenset[str] = frozenset()  # kinds this route honours
    limited: bool = True                  # counts against the account's rate-limit window


@dataclass(frozen=True)
class Fault:
    kind: str
    user_id: str | None
    route: str
    params: dict[str, Any]

    @property
    def phase(self) -> Phase:
        return KINDS[self.kind]


@dataclass
class _Queued:
    fault: Fault
    remaining: int


class Faults:
    """Thread-safe FIFO of pending faults. `validate(route, kind)` (set by the Simulator) may reject an
    injection, e.g. a kind the named route does not honour."""

    def __init__(self, validate: Callable[[str, str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Queued] = []
        self.validate = validate

    def inject(self, user_id: str | None, route: str, kind: str, count: int = 1, **params: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(KINDS)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        if self.validate is not None:
            self.validate(route, kind)
        with self._lock:
            self._queue.append(_Queued(Fault(kind, user_id, route, dict(params)), count))

    def take(self, user_id: str | None, route: str, kinds: Collection[str] | None = None) -> Fault | None:
        """Consume one use of the oldest fault matching this request (route "*" matches any route;
        `kinds` limits the match to what the route honours)."""
        with self._lock:
            for q in self._queue:
                f = q.fault
                if ((f.user_id is None or f.user_id == user_id) and f.route in (route, "*")
                        and (kinds is None or f.kind in kinds)):
                    q.remaining -= 1
                    if q.remaining == 0:
                        self._queue.remove(q)
                    return f
        return None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"kind": q.fault.kind, "user_id": q.fault.user_id, "route": q.fault.route,
                     "remaining": q.remaining, **q.fault.params} for q in self._queue]

    def __len__(self) -> int:
        with self._lock:
            return sum(q.remaining for q in self._queue)


def body_fault_reply(fault: Fault, malformed: bytes) -> Reply:
    """`malformed_json`: 200 with the provider's JSON cut short; `html`: a proxy's error page."""
    if fault.kind == "malformed_json":
        return Reply(200, body=malformed)
    status = int(fault.params.get("status", 502))
    page = (f"<html><head><title>{status} Error</title></head><body><h1>{status}</h1>"
            "<p>The server encountered a temporary error.</p></body></html>")
    return Reply(status, body=page.encode(), content_type="text/html; charset=utf-8")


class ErrorFieldHooks:
    """The server's hooks (`server.ProviderApi`) for a provider whose every error body is `{"error": <text>}`
    and that sends no rate-limit headers (GetXAPI, Xquik): only the texts differ, so they are class data."""

    rate_headers = False
    unauthorized_error: str     # 401
    rate_limited_error: str     # 429
    not_found_error: str        # 404, a path no route serves
    malformed_body: bytes       # the `malformed_json` fault: the provider's JSON cut short

    def unauthorized(self, ctx: Ctx) -> Reply:
        return Reply(401, {"error": self.unauthorized_error})

    def rate_limited(self, ctx: Ctx) -> Reply:
        return Reply(429, {"error": self.rate_limited_error})

    def not_found(self) -> Reply:
        return Reply(404, {"error": self.not_found_error})

    def malformed(self) -> bytes:
        return self.malformed_body
