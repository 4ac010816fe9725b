"""Fault injection, and the small request/response model that faults act on.

A fault is queued for an account (or any account) and a route, and is consumed by the next matching
provider request, `count` times. What a kind does is decided in three places, by its `phase`:

- `status`    the provider module answers with its own error body instead of handling the request
              (429/503/403/401/500, `invalid_cursor`);
- `body`      a provider-independent broken body instead of handling (`malformed_json`, `html`);
- `mutate`    the request is handled, then the provider module bends the reply (`cursor_loop`,
              `empty_page`);
- `transport` the server misbehaves on the wire (`slow`, `drop`, `truncated`).

New kinds are one entry in `KINDS` plus, for status/mutate kinds, a branch in the provider module.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Phase = Literal["status", "body", "mutate", "transport"]

KINDS: dict[str, Phase] = {
    "429": "status",
    "503": "status",
    "500": "status",
    "403": "status",
    "401": "status",
    "invalid_cursor": "status",   # 400 "not a valid token" for the cursor the client sent (expiry)
    "malformed_json": "body",     # 200, application/json, not JSON
    "html": "body",               # a proxy's HTML error page (param `status`, default 502)
    "cursor_loop": "mutate",      # next_token repeats the request's own cursor
    "empty_page": "mutate",       # 200 without data but with a next_token that loses nothing
    "slow": "transport",          # wait `delay_s` (default 5) before answering normally
    "drop": "transport",          # close the connection without a response
    "truncated": "transport",     # full Content-Length, half the body, then close
}


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
        return json.dumps(self.payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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


@dataclass(frozen=True)
class Route:
    name: str                             # route name: faults, the request log and cursors key on it
    handler: Callable[[Ctx], Reply]


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
    """Thread-safe FIFO of pending faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Queued] = []

    def inject(self, user_id: str | None, route: str, kind: str, count: int = 1, **params: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(KINDS)}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._queue.append(_Queued(Fault(kind, user_id, route, dict(params)), count))

    def take(self, user_id: str | None, route: str) -> Fault | None:
        """Consume one use of the oldest fault matching this request (route "*" matches any route)."""
        with self._lock:
            for q in self._queue:
                f = q.fault
                if (f.user_id is None or f.user_id == user_id) and f.route in (route, "*"):
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


def body_fault_reply(fault: Fault) -> Reply:
    """Provider-independent broken bodies."""
    if fault.kind == "malformed_json":
        return Reply(200, body=b'{"data":[{"id":"1","event_type":"MessageCreate","text":"unterminated')
    status = int(fault.params.get("status", 502))
    page = (f"<html><head><title>{status} Error</title></head><body><h1>{status}</h1>"
            "<p>The server encountered a temporary error.</p></body></html>")
    return Reply(status, body=page.encode(), content_type="text/html; charset=utf-8")
