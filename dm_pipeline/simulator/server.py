"""The simulator's loopback HTTP server: provider routes (table-driven), faults, rate limits, a request
log, and `/_sim/*` control endpoints so tests in other processes (and the CLI) can drive the world.

It never logs request lines or bodies: responses carry message text.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from dm_pipeline.simulator.faults import Ctx, Fault, Faults, Reply, Route, body_fault_reply
from dm_pipeline.simulator.world import World
from dm_pipeline.simulator.x_api import XApi


class ProviderApi(Protocol):
    """What the server needs from a provider module (X now; Xquik and GetXAPI later)."""

    name: str
    routes: Mapping[tuple[str, str], Route]

    def authenticate(self, headers: Mapping[str, str]) -> str | None: ...
    def unauthorized(self) -> Reply: ...
    def rate_limited(self) -> Reply: ...
    def fault_reply(self, fault: Fault, ctx: Ctx) -> Reply: ...
    def mutate(self, fault: Fault, reply: Reply, ctx: Ctx) -> Reply: ...


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
        with self._lock:
            start, used = self._window(key)
            return {"x-rate-limit-limit": str(self.limit),
                    "x-rate-limit-remaining": str(max(0, self.limit - int(used))),
                    "x-rate-limit-reset": str(int(start + self.window_s))}

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


ControlHandler = Callable[["Simulator", dict[str, list[str]], Any], Any]


class Simulator:
    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0, rate_limit: int = 300,
                 rate_window_s: int = 900, *, clock: Callable[[], float] = time.time) -> None:
        self.world = world
        self.faults = Faults()
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
        self.providers: list[ProviderApi] = [XApi(world)]
        self._routes = [(method, re.compile(pattern), api, route)
                        for api in self.providers for (method, pattern), route in api.routes.items()]

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

    # --- request log --------------------------------------------------------------------------
    def requests(self, user_id: str | None = None, route: str | None = None) -> int:
        with self._lock:
            return sum(1 for u, r, _, _ in self.request_log
                       if (user_id is None or u == user_id) and (route is None or r == route))

    def _log(self, ctx: Ctx, status: int) -> None:
        with self._lock:
            self.request_log.append((ctx.user_id, ctx.route, status, {k: v[0] for k, v in ctx.query.items()}))

    # --- dispatch -----------------------------------------------------------------------------
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
                    ctx = Ctx(h.command, url.path, query, headers, route.name, m.groupdict())
                    self._provider_request(h, api, route, ctx)
                    return
            self._send(h, Reply(404, {"errors": [{"message": "Sorry, that page does not exist", "code": 34}]}))
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True       # the client went away (tests kill clients mid-request)
        except Exception as exc:            # a simulator bug must surface as a 500, not a hang
            self._send(h, Reply(500, {"title": "Simulator Error", "detail": type(exc).__name__,
                                      "type": "about:blank", "status": 500},
                                content_type="application/problem+json"))

    def _provider_request(self, h: _Handler, api: ProviderApi, route: Route, ctx: Ctx) -> None:
        ctx.user_id = api.authenticate(ctx.headers)
        with self._lock:
            ctx.seq = self._seq[ctx.user_id] = self._seq.get(ctx.user_id, 0) + 1
        if self.on_request is not None:
            self.on_request(RequestInfo(ctx.user_id, ctx.route, ctx.method, ctx.path,
                                        {k: v[0] for k, v in ctx.query.items()}, ctx.seq))
        key = (api.name, ctx.user_id or "anonymous")    # one window per account, shared by its routes
        if ctx.user_id is None:
            reply = api.unauthorized()
            reply.headers.update(self.limiter.headers(key))
            self._finish(h, ctx, reply)
            return
        fault = self.faults.take(ctx.user_id, ctx.route)
        if fault is not None and fault.kind == "drop":
            self._log(ctx, 0)
            h.close_connection = True
            return
        if fault is not None and fault.kind == "slow":
            self._stopping.wait(float(fault.params.get("delay_s", 5.0)))
        if fault is not None and fault.phase == "status":
            reply = api.fault_reply(fault, ctx)
            reply.headers.update(self.limiter.headers(key))
            if fault.kind == "429":
                self._rate_limited_headers(reply, fault.params)
        elif fault is not None and fault.phase == "body":
            reply = body_fault_reply(fault)
        elif not self.limiter.consume(key):
            reply = api.rate_limited()
            reply.headers.update(self.limiter.headers(key))
        else:
            reply = route.handler(ctx)
            reply.headers.update(self.limiter.headers(key))
            if fault is not None and fault.phase == "mutate":
                reply = api.mutate(fault, reply, ctx)
        self._finish(h, ctx, reply, truncate=fault is not None and fault.kind == "truncated")

    def _rate_limited_headers(self, reply: Reply, params: Mapping[str, Any]) -> None:
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
        except (KeyError, ValueError, TypeError) as exc:
            return Reply(400, {"error": f"{type(exc).__name__}: {exc}"})

    def stats(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            for user, route, _, _ in self.request_log:
                per = counts.setdefault(user or "anonymous", {})
                per[route] = per.get(route, 0) + 1
            total = len(self.request_log)
        return {"requests": counts, "total": total, "now": _iso(self.world.now),
                "pending_faults": self.faults.pending()}


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _q(query: dict[str, list[str]], name: str, default: str | None = None) -> str:
    values = query.get(name)
    if values:
        return values[0]
    if default is None:
        raise KeyError(name)
    return default


def _truth(sim: Simulator, query: dict[str, list[str]], _: Any) -> Any:
    world, user_id = sim.world, _q(query, "user_id")
    data = world.truth(user_id, _q(query, "route", "dm_events"))
    if _q(query, "includes", "0") not in ("1", "true"):
        return data
    events = [e for e in (world.event(d["id"]) for d in data) if e is not None]
    inc = world.includes_for(events, ("sender_id", "participant_ids", "attachments.media_keys",
                                      "referenced_tweets.id"))
    return {"data": data, "includes": {k: [o.as_dict() for o in v] for k, v in inc.items()}}


def _advance(sim: Simulator, _: Any, body: dict[str, Any]) -> Any:
    ids = sim.world.advance(body.get("user_id"), int(body.get("n", 0)), deletions=int(body.get("deletions", 0)),
                            seconds=float(body.get("seconds", 60.0)), edits=int(body.get("edits", 0)))
    return {"ids": ids, "now": _iso(sim.world.now)}


def _inject(sim: Simulator, _: Any, body: dict[str, Any]) -> Any:
    params = {k: v for k, v in body.items() if k not in ("user_id", "route", "kind", "count")}
    sim.faults.inject(body.get("user_id"), body.get("route", "dm_events"), str(body["kind"]),
                      int(body.get("count", 1)), **params)
    return {"pending": sim.faults.pending()}


def _clear_faults(sim: Simulator, _: Any, __: Any) -> Any:
    sim.faults.clear()
    return {"pending": []}


def _accounts(sim: Simulator, _: Any, __: Any) -> Any:
    w = sim.world
    return {"accounts": [{"user_id": a, "username": w.user(a).username, "token": w.token_for(a)}
                         for a in w.accounts()]}


def _delete(sim: Simulator, _: Any, body: dict[str, Any]) -> Any:
    return {"deleted": sim.world.delete(str(body["event_id"]))}


def _rate_limit(sim: Simulator, _: Any, body: dict[str, Any]) -> Any:
    lim = sim.limiter
    lim.limit = int(body.get("limit", lim.limit))
    lim.window_s = int(body.get("window_s", lim.window_s))
    if body.get("reset", True):
        lim.reset()
    return {"limit": lim.limit, "window_s": lim.window_s}


CONTROL: dict[tuple[str, str], ControlHandler] = {
    ("GET", "/_sim/health"): lambda sim, _, __: {"ok": True, "now": _iso(sim.world.now)},
    ("GET", "/_sim/truth"): _truth,
    ("POST", "/_sim/advance"): _advance,
    ("POST", "/_sim/delete"): _delete,
    ("GET", "/_sim/faults"): lambda sim, _, __: {"pending": sim.faults.pending()},
    ("POST", "/_sim/faults"): _inject,
    ("DELETE", "/_sim/faults"): _clear_faults,
    ("GET", "/_sim/stats"): lambda sim, _, __: sim.stats(),
    ("GET", "/_sim/accounts"): _accounts,
    ("POST", "/_sim/rate_limit"): _rate_limit,
}
