"""`/_sim/*` control endpoints: JSON in, JSON out; a bad request is 400 `{"error": ...}`.

GET    /_sim/health                      {"ok": true, "now"}
GET    /_sim/prove?nonce=                {"proof", "seed", "service"}: proof that this is the dm_pipeline
                                         simulator of that seed (HMAC of the nonce, see `proof_for`)
GET    /_sim/accounts                    accounts with X token and OAuth 1.0a token/secret, Xquik handle,
                                         GetXAPI auth_token/twid, both API keys; X's consumer key/secret and
                                         app-only bearer token; and the three base URLs
GET|POST /_sim/x {specs?}                the X field spellings accepted, preferred first ("2.159", "2.167")
GET    /_sim/conversations?user_id=      the account's conversations with members and GetXAPI tab
GET    /_sim/truth?user_id=&route=&shape=&includes=   per-route truth (routes: see `world`; shape
                                         canonical|provider; includes=1 adds X includes, canonical only)
POST   /_sim/advance {user_id?, n, deletions, edits, seconds}     move the clock, add/delete/edit events
POST   /_sim/delete {event_id}           POST /_sim/edit {event_id, text}
GET|POST|DELETE /_sim/faults             list / inject {user_id?, route, kind, count, ...params} / clear
GET    /_sim/stats                       request counts per account and route, pending faults, credits
POST   /_sim/rate_limit {limit?, window_s?, reset?}
GET|POST /_sim/xquik {balance?, page_size?}                  Xquik credits and page size
GET|POST /_sim/oauth {client_id?, client_secret?, auto_approve?, login?, withhold_scopes?, redirect_uris?}
                                         OAuth stats / client and consent-page configuration (`oauth`)
POST   /_sim/oauth/issue {user_id}       a fresh access + refresh token pair
POST   /_sim/oauth/expire {user_id}      expire the user's OAuth access tokens now
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dm_pipeline.simulator.faults import Faults
    from dm_pipeline.simulator.oauth import OAuthServer
    from dm_pipeline.simulator.world import World
    from dm_pipeline.simulator.x_api import XApi
    from dm_pipeline.simulator.xquik import XquikApi


class Limiter(Protocol):
    """The rate limiter's settings (`server.RateLimiter`)."""

    limit: int
    window_s: int

    def reset(self) -> None: ...


class SimHost(Protocol):
    """What the control endpoints drive: `server.Simulator`, which imports this module (never the reverse)."""

    xquik_credits: int
    world: World
    faults: Faults
    x: XApi
    xquik: XquikApi
    oauth: OAuthServer

    # Read-only: a property member accepts the server's own RateLimiter (a settable one would demand Limiter).
    @property
    def limiter(self) -> Limiter: ...
    @property
    def xquik_credits_used(self) -> int: ...
    def base_url(self, provider: str) -> str: ...
    def truth(self, user_id: str, route: str = "dm_events", *, shape: str = "canonical") -> list[dict[str, Any]]: ...
    def stats(self) -> dict[str, Any]: ...


ControlHandler = Callable[[SimHost, dict[str, list[str]], Any], Any]
PROVE_PATH = "/_sim/prove"
SERVICE = "dm_pipeline-simulator"
NONCE = re.compile(r"[0-9a-f]{32,128}")


def proof_for(seed: int, nonce: str) -> str:
    """The simulator's answer to `nonce`: an HMAC-SHA256 of it, keyed by a secret derived from the world's
    seed, which `run`/`sync` know (mainjob.SIM_SEED) and `simulator serve --seed` is given. A listener that
    is not this project's simulator cannot answer a fresh nonce, so it never receives the simulator's
    credentials. The seed is no secret from someone who reads this code: the proof tells this simulator
    from another program on its port, it is not an authentication against an adversary."""
    key = hashlib.sha256(f"dm-sim-identity:{seed}".encode()).digest()
    return hmac.new(key, f"{SERVICE}:{nonce}".encode(), hashlib.sha256).hexdigest()


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _q(query: dict[str, list[str]], name: str, default: str | None = None) -> str:
    values = query.get(name)
    if values:
        return values[0]
    if default is None:
        raise KeyError(name)
    return default


def _truth(sim: SimHost, query: dict[str, list[str]], _: Any) -> Any:
    world, user_id = sim.world, _q(query, "user_id")
    data = sim.truth(user_id, _q(query, "route", "dm_events"), shape=_q(query, "shape", "canonical"))
    if _q(query, "includes", "0") not in ("1", "true"):
        return data
    events = [e for e in (world.event(d["id"]) for d in data) if e is not None]
    inc = world.includes_for(events, ("sender_id", "participant_ids", "attachments.media_keys",
                                      "referenced_tweets.id"))
    return {"data": data, "includes": {k: [o.as_dict() for o in v] for k, v in inc.items()}}


def _advance(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    ids = sim.world.advance(body.get("user_id"), int(body.get("n", 0)), deletions=int(body.get("deletions", 0)),
                            seconds=float(body.get("seconds", 60.0)), edits=int(body.get("edits", 0)))
    return {"ids": ids, "now": _iso(sim.world.now)}


def _inject(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    params = {k: v for k, v in body.items() if k not in ("user_id", "route", "kind", "count")}
    sim.faults.inject(body.get("user_id"), body.get("route", "dm_events"), str(body["kind"]),
                      int(body.get("count", 1)), **params)
    return {"pending": sim.faults.pending()}


def _clear_faults(sim: SimHost, _: Any, __: Any) -> Any:
    sim.faults.clear()
    return {"pending": []}


def _accounts(sim: SimHost, _: Any, __: Any) -> Any:
    w = sim.world
    keys = {"xquik_api_key": w.xquik_key(), "getxapi_api_key": w.getxapi_key()}
    app = sim.x.oauth1
    x_app = {"x_consumer_key": app.consumer_key, "x_consumer_secret": app.consumer_secret,
             "x_app_bearer_token": app.app_bearer_token}
    return {"accounts": [{"user_id": a, "username": w.user(a).username, "token": w.token_for(a),
                          "oauth1_token": app.credentials(a)[0], "oauth1_token_secret": app.credentials(a)[1],
                          "xquik_handle": w.xquik_handle(a), "getxapi_auth_token": w.getxapi_auth_token(a),
                          "getxapi_twid": f"u={a}", **keys} for a in w.accounts()],
            **keys, **x_app, "base_urls": {p: sim.base_url(p) for p in ("x", "xquik", "getxapi")}}


def _x(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    if "specs" in body:
        from dm_pipeline.simulator.x_api import SPECS

        specs = tuple(str(s) for s in body["specs"])
        if not specs or not set(specs) <= set(SPECS):
            raise ValueError(f"specs must be a non-empty list of {sorted(SPECS)}")
        sim.x.specs = specs
    return {"specs": list(sim.x.specs)}


def _conversations(sim: SimHost, query: dict[str, list[str]], _: Any) -> Any:
    w, user_id = sim.world, _q(query, "user_id")
    return {"conversations": [{"id": c.id, "type": "group" if c.is_group else "one_to_one",
                               "members": list(c.members), "tab": w.tab_of(user_id, c.id)}
                              for c in w.conversations_of(user_id)]}


def _delete(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    return {"deleted": sim.world.delete(str(body["event_id"]))}


def _edit(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    sim.world.edit(str(body["event_id"]), str(body["text"]))
    ev = sim.world.event(str(body["event_id"]))
    return {"edit_count": ev.edit_count if ev else None}


def _rate_limit(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    lim = sim.limiter
    lim.limit = int(body.get("limit", lim.limit))
    lim.window_s = int(body.get("window_s", lim.window_s))
    if body.get("reset", True):
        lim.reset()
    return {"limit": lim.limit, "window_s": lim.window_s}


def _xquik(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    if "balance" in body:
        sim.xquik_credits = int(body["balance"])
    if "page_size" in body:
        size = int(body["page_size"])
        if not 1 <= size <= 100:
            raise ValueError("page_size must be 1-100")
        sim.xquik.page_size = size
    return {"balance": sim.xquik_credits, "credits_used": sim.xquik_credits_used, "page_size": sim.xquik.page_size}


def _oauth(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    for name in ("client_id", "client_secret"):
        if name in body:
            setattr(sim.oauth, name, None if body[name] is None else str(body[name]))
    if "auto_approve" in body:
        sim.oauth.auto_approve = bool(body["auto_approve"])
    if "login" in body:
        if body["login"] is not None and str(body["login"]) not in sim.world.accounts():
            raise KeyError(f"{body['login']} is not an account")
        sim.oauth.login = None if body["login"] is None else str(body["login"])
    if "withhold_scopes" in body:
        sim.oauth.withhold_scopes = frozenset(str(s) for s in body["withhold_scopes"] or ())
    if "redirect_uris" in body:
        uris = body["redirect_uris"]
        sim.oauth.redirect_uris = None if uris is None else tuple(str(u) for u in uris)
    return sim.oauth.stats()


def _oauth_issue(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    user_id = str(body["user_id"])
    if user_id not in sim.world.accounts():
        raise KeyError(f"{user_id} is not an account")
    access, refresh = sim.oauth.issue(user_id)
    return {"access_token": access, "refresh_token": refresh, "expires_in": 7200}


def _oauth_expire(sim: SimHost, _: Any, body: dict[str, Any]) -> Any:
    return {"expired": sim.oauth.expire(str(body["user_id"]))}


def _health(sim: SimHost, _: Any, __: Any) -> Any:
    return {"ok": True, "now": _iso(sim.world.now)}


def _prove(sim: SimHost, query: dict[str, list[str]], _: Any) -> Any:
    nonce = _q(query, "nonce")
    if not NONCE.fullmatch(nonce):
        raise ValueError("nonce must be 32-128 lower-case hex digits")
    return {"proof": proof_for(sim.world.seed, nonce), "seed": sim.world.seed, "service": SERVICE}


def _pending(sim: SimHost, _: Any, __: Any) -> Any:
    return {"pending": sim.faults.pending()}


def _stats(sim: SimHost, _: Any, __: Any) -> Any:
    return sim.stats()


CONTROL: dict[tuple[str, str], ControlHandler] = {
    ("GET", "/_sim/health"): _health,
    ("GET", PROVE_PATH): _prove,
    ("GET", "/_sim/truth"): _truth,
    ("POST", "/_sim/advance"): _advance,
    ("POST", "/_sim/delete"): _delete,
    ("POST", "/_sim/edit"): _edit,
    ("GET", "/_sim/faults"): _pending,
    ("POST", "/_sim/faults"): _inject,
    ("DELETE", "/_sim/faults"): _clear_faults,
    ("GET", "/_sim/stats"): _stats,
    ("GET", "/_sim/accounts"): _accounts,
    ("GET", "/_sim/conversations"): _conversations,
    ("POST", "/_sim/rate_limit"): _rate_limit,
    ("GET", "/_sim/xquik"): _xquik,
    ("GET", "/_sim/x"): _x,
    ("POST", "/_sim/x"): _x,
    ("POST", "/_sim/xquik"): _xquik,
    ("GET", "/_sim/oauth"): _oauth,
    ("POST", "/_sim/oauth"): _oauth,
    ("POST", "/_sim/oauth/issue"): _oauth_issue,
    ("POST", "/_sim/oauth/expire"): _oauth_expire,
}
