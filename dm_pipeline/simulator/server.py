"""The simulator's loopback HTTP server: three providers on one port (X at the root, Xquik under
`/xquik/api/v1`, GetXAPI under `/getxapi`), table-driven routes, faults, rate limits, a request log, and
`/_sim/*` control endpoints (see `control`) so tests in other processes (and the CLI) can drive it.

Per request: the provider identifies the account (X: bearer token; Xquik: API key, then `account`;
GetXAPI: API key, then the body's `auth_token`), a queued fault for that account and route may take
over, then the route's rate-limit window (per provider and account, shared by a provider's routes) is
charged and the route answers. It never logs request lines or bodies: responses carry message text.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from dm_pipeline.simulator.control import CONTROL
from dm_pipeline.simulator.faults import Ctx, Fault, Faults, Reply, Route, body_fault_reply
from dm_pipeline.simulator.getxapi import GetXApi
from dm_pipeline.simulator.oauth import OAuthServer
from dm_pipeline.simulator.world import World
from dm_pipeline.simulator.x_api import XApi
from dm_pipeline.simulator.xquik import XquikApi


class ProviderApi(Protocol):
    """What the server needs from a provider module."""

    name: str
    prefix: str                          # mount point, "" for the root
    rate_headers: bool                   # send x-rate-limit-* (X); else only Retry-After on 429s
    routes: Mapping[tuple[str, str], Route]

    def identify(self, ctx: Ctx) -> bool: ...      # sets ctx.user_id; False: answer unauthorized()
    def unauthorized(self, ctx: Ctx) -> Reply: ...
    def rate_limited(self, ctx: Ctx) -> Reply: ...
    def not_found(self) -> Reply: ...
    def malformed(self) -> bytes: ...
    def fault_reply(self, fault: Fault, ctx: Ctx) -> Reply: ...


@dataclass(frozen=True)
class RequestInfo:
    user_id: str | None
    route: str
    method: str
    path: str
    query: dict[str, str]
    seq: int                  # 1-based request number of this account (None: unauthenticated ones)


class RateLimiter:
    """Fixed windows per key that start at a key's first request, like X's 15-minute user windows."""

    def __init__(self, limit: int, window_s: int, clock: Callable[[], float]) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._lock = threading.Lock()
        self._windows: dict[Any, list[float]] = {}     # key -> [window start, used]

    def _window(self, key: Any) -> list[float]:
        now = self._clock()
        w = self._windows.get(key)
        if w is None or now >= w[0] + self.window_s:
            w = self._windows[key] = [now, 0]
        return w

    def consume(self, key: Any) -> bool:
        with self._lock:
            w = self._window(key)
            if w[1] >= self.limit:
                return False
            w[1] += 1
            return True

    def headers(self, key: Any) -> dict[str, str]:
        """X's headers. The reset is the epoch second the window has ended by (rounded up): a client that
        waits until the advertised second is never refused for being a fraction of a second early."""
        with self._lock:
            start, used = self._window(key)
            return {"x-rate-limit-limit": str(self.limit),
                    "x-rate-limit-remaining": str(max(0, self.limit - int(used))),
                    "x-rate-limit-reset": str(math.ceil(start + self.window_s))}

    def retry_after(self, key: Any) -> int:
        """Whole seconds until the key's window ends (at least 1)."""
        with self._lock:
            start = self._window(key)[0]
            return max(1, math.ceil(start + self.window_s - self._clock()))

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sim: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback whose exception message could quote message text.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError):
            print(f"dm-simulator: request failed: {type(exc).__name__}", file=sys.stderr)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as real clients expect
    disable_nagle_algorithm = True     # headers and body are separate writes: avoid 40 ms delayed ACKs
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass                           # request lines can carry cursors; responses carry text

    def _dispatch(self) -> None:
        self.server.sim._dispatch(self)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch


class Simulator:
    """One world served by X, Xquik and GetXAPI. `clock` drives rate-limit windows and OAuth expiry."""

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0, rate_limit: int = 300,
                 rate_window_s: int = 900, *, clock: Callable[[], float] = time.time,
                 xquik_credits: int = 1_000_000, xquik_page_size: int = 20, oauth_client_id: str | None = None,
                 oauth_client_secret: str | None = None) -> None:
        self.world = world
        self.on_request: Callable[[RequestInfo], None] | None = None
        self.request_log: list[tuple[str | None, str, int, dict[str, str]]] = []
        self.limiter = RateLimiter(rate_limit, rate_window_s, clock)
        self._clock = clock
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._seq: dict[str | None, int] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.oauth = OAuthServer(f"dm-sim-oauth-{world.seed}".encode(), clock, oauth_client_id, oauth_client_secret)
        self.x = XApi(world, self.oauth)
        self.xquik = XquikApi(world, page_size=xquik_page_size, credits=xquik_credits)
        self.getxapi = GetXApi(world)
        self.providers: list[ProviderApi] = [self.x, self.xquik, self.getxapi]
        self._routes = [(method, re.compile(api.prefix + pattern), api, route)
                        for api in self.providers for (method, pattern), route in api.routes.items()]
        self.route_faults: dict[str, frozenset[str]] = {r.name: r.faults for _, _, _, r in self._routes}
        self.faults = Faults(self._validate_fault)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Simulator:
        if self._server is None:
            self._server = _Server((self._host, self._port), _Handler)
            self._server.sim = self
            self._stopping.clear()
            # A short poll interval keeps stop() fast; serving itself is event-driven.
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                            name="dm-simulator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def base_url(self, provider: str) -> str:
        """An account's `base_url` for provider "x", "xquik" or "getxapi"."""
        return self.url + {"x": self.x.prefix, "xquik": self.xquik.prefix, "getxapi": self.getxapi.prefix}[provider]

    # --- provider state -----------------------------------------------------------------------
    @property
    def xquik_credits(self) -> int:
        """The Xquik key's credit balance (settable)."""
        return self.xquik.credits

    @xquik_credits.setter
    def xquik_credits(self, balance: int) -> None:
        self.xquik.credits = balance

    @property
    def xquik_credits_used(self) -> int:
        return self.xquik.credits_used

    def truth(self, user_id: str, route: str = "dm_events", *, shape: str = "canonical") -> list[dict[str, Any]]:
        """`world.truth()` (shape "canonical": X v2 field names), or exactly what a full walk of the
        route serves (shape "provider": Xquik messages, GetXAPI messages or events; X is canonical)."""
        if shape == "canonical":
            return self.world.truth(user_id, route)
        if shape != "provider":
            raise ValueError(f"unknown shape {shape!r}; use canonical or provider")
        base, _, arg = route.partition(":")
        if base == "xquik":
            return self.xquik.truth(user_id, arg)
        if base in ("getxapi", "getxapi_events"):
            return self.getxapi.truth(user_id, arg, events=base == "getxapi_events")
        return self.world.truth(user_id, route)

    def _validate_fault(self, route: str, kind: str) -> None:
        if route == "*":
            return
        honoured = self.route_faults.get(route)
        if honoured is None:
            raise ValueError(f"unknown route {route!r}; known: {sorted(self.route_faults)}")
        if kind not in honoured:
            raise ValueError(f"route {route!r} does not honour fault {kind!r}; it honours {sorted(honoured)}")

    # --- request log --------------------------------------------------------------------------
    def requests(self, user_id: str | None = None, route: str | None = None) -> int:
        with self._lock:
            return sum(1 for u, r, _, _ in self.request_log
                       if (user_id is None or u == user_id) and (route is None or r == route))

    @staticmethod
    def _logged_query(ctx: Ctx) -> dict[str, str]:
        return ctx.log_query if ctx.log_query is not None else {k: v[0] for k, v in ctx.query.items()}

    def _log(self, ctx: Ctx, status: int) -> None:
        with self._lock:
            self.request_log.append((ctx.user_id, ctx.route, status, self._logged_query(ctx)))

    # --- dispatch -----------------------------------------------------------------------------
    def _provider_for(self, path: str) -> ProviderApi:
        return next((p for p in self.providers if p.prefix and (path + "/").startswith(p.prefix + "/")), self.x)

    def _dispatch(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(h.headers.get("Content-Length") or 0)
        raw_body = h.rfile.read(length) if length else b""
        try:
            if url.path.startswith("/_sim/"):
                self._send(h, self._control(h.command, url.path, query, raw_body))
                return
            for method, rx, api, route in self._routes:
                m = rx.fullmatch(url.path)
                if m and method == h.command:
                    headers = {k.lower(): v for k, v in h.headers.items()}
                    ctx = Ctx(h.command, url.path, query, headers, route.name, m.groupdict(), body=raw_body)
                    self._provider_request(h, api, route, ctx)
                    return
            self._send(h, self._provider_for(url.path).not_found())
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True       # the client went away (tests kill clients mid-request)
        except Exception as exc:            # a simulator bug must surface as a 500, not a hang
            self._send(h, Reply(500, {"title": "Simulator Error", "detail": type(exc).__name__,
                                      "type": "about:blank", "status": 500},
                                content_type="application/problem+json"))

    def _provider_request(self, h: _Handler, api: ProviderApi, route: Route, ctx: Ctx) -> None:
        authenticated = api.identify(ctx)
        with self._lock:
            ctx.seq = self._seq[ctx.user_id] = self._seq.get(ctx.user_id, 0) + 1
        if self.on_request is not None:
            self.on_request(RequestInfo(ctx.user_id, ctx.route, ctx.method, ctx.path, self._logged_query(ctx),
                                        ctx.seq))
        key = (api.name, ctx.user_id or "anonymous")    # one window per account, shared by its routes
        if not authenticated:
            reply = api.unauthorized(ctx)
            self._limit_headers(api, reply, key)
            self._finish(h, ctx, reply)
            return
        fault = self.faults.take(ctx.user_id, ctx.route, route.faults)
        if fault is not None and fault.kind == "drop":
            self._log(ctx, 0)
            h.close_connection = True
            return
        if fault is not None and fault.kind == "slow":
            self._stopping.wait(float(fault.params.get("delay_s", 5.0)))
        if fault is not None and fault.phase == "status":
            reply = api.fault_reply(fault, ctx)
            if route.limited:
                self._limit_headers(api, reply, key)
            self._fault_headers(api, reply, fault)
        elif fault is not None and fault.phase == "body":
            reply = body_fault_reply(fault, api.malformed())
        elif route.limited and not self.limiter.consume(key):
            reply = api.rate_limited(ctx)
            self._limit_headers(api, reply, key)
            if not api.rate_headers:
                reply.headers["Retry-After"] = str(self.limiter.retry_after(key))
        else:
            ctx.fault = fault if fault is not None and fault.phase == "mutate" else None
            reply = route.handler(ctx)
            if route.limited:
                self._limit_headers(api, reply, key)
        self._finish(h, ctx, reply, truncate=fault is not None and fault.kind == "truncated")

    def _limit_headers(self, api: ProviderApi, reply: Reply, key: Any) -> None:
        if api.rate_headers:
            reply.headers.update(self.limiter.headers(key))

    def _fault_headers(self, api: ProviderApi, reply: Reply, fault: Fault) -> None:
        params = fault.params
        if fault.kind == "429" and api.rate_headers:
            if params.get("rate_headers", True) is False:
                for name in [k for k in reply.headers if k.startswith("x-rate-limit-")]:
                    del reply.headers[name]
            else:
                reply.headers["x-rate-limit-remaining"] = "0"
                if params.get("reset_in") is not None:
                    reply.headers["x-rate-limit-reset"] = str(int(self._clock()) + int(params["reset_in"]))
        if params.get("retry_after") is not None:
            reply.headers["Retry-After"] = str(int(params["retry_after"]))

    def _finish(self, h: _Handler, ctx: Ctx, reply: Reply, *, truncate: bool = False) -> None:
        self._log(ctx, reply.status)
        self._send(h, reply, truncate=truncate)

    @staticmethod
    def _send(h: _Handler, reply: Reply, *, truncate: bool = False) -> None:
        data = reply.encoded()
        h.send_response(reply.status)
        h.send_header("Content-Type", reply.content_type)
        h.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            h.send_header(k, v)
        if truncate:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(data[: len(data) // 2] if truncate else data)
        h.wfile.flush()

    # --- control endpoints --------------------------------------------------------------------
    def _control(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> Reply:
        handler = CONTROL.get((method, path))
        if handler is None:
            return Reply(404, {"error": f"no control endpoint {method} {path}"})
        try:
            body = json.loads(raw) if raw else {}
            return Reply(200, handler(self, query, body))
        except (LookupError, ValueError, TypeError) as exc:
            return Reply(400, {"error": f"{type(exc).__name__}: {exc}"})

    def stats(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            for user, route, _, _ in self.request_log:
                per = counts.setdefault(user or "anonymous", {})
                per[route] = per.get(route, 0) + 1
            total = len(self.request_log)
        return {"requests": counts, "total": total, "now": self.world.now.isoformat().replace("+00:00", "Z"),
                "pending_faults": self.faults.pending(), "oauth": self.oauth.stats(),
                "xquik": {"balance": self.xquik.credits, "credits_used": self.xquik.credits_used}}
