"""Every fault kind on every provider, over loopback HTTP, each with its documented response; and faults
never change the world's truth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dm_pipeline.simulator import FAULT_KINDS, Simulator, World


class Driver:
    """Pages one stream of one account through a provider, as a client would."""

    route = ""
    text_key = "text"
    optional: tuple[str, ...] = ()

    def __init__(self, sim: Simulator, user_id: str) -> None:
        self.sim, self.world, self.user = sim, sim.world, user_id
        self.http = httpx.Client(timeout=10)         # keep-alive, as clients do

    def get(self, cursor: str | None = None, timeout: float = 10) -> httpx.Response:
        raise NotImplementedError

    def items(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def next(self, body: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def truth_ids(self) -> list[str]:
        raise NotImplementedError

    def walk(self, first: str | None = None) -> list[dict[str, Any]]:
        out, cursor = [], first
        for _ in range(1000):
            r = self.get(cursor)
            assert r.status_code == 200, r.text
            out += self.items(r.json())
            cursor = self.next(r.json())
            if cursor is None:
                return out
        raise AssertionError("no end")


class XDriver(Driver):
    route = "dm_events"
    optional = ("created_at", "sender_id", "attachments")
    path = "/2/dm_events"

    def get(self, cursor: str | None = None, timeout: float = 10) -> httpx.Response:
        params: dict[str, Any] = {"max_results": 5,
                                  "dm_event.fields": "attachments,created_at,sender_id,text,dm_conversation_id",
                                  **({"pagination_token": cursor} if cursor else {})}
        return self.http.get(self.sim.url + self.path, params=params, timeout=timeout,
                             headers={"Authorization": f"Bearer {self.world.token_for(self.user)}"})

    def items(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(body.get("data", []))

    def next(self, body: dict[str, Any]) -> str | None:
        return body["meta"].get("next_token")

    def truth_ids(self) -> list[str]:
        return [e["id"] for e in self.world.truth(self.user)]


class XConversationDriver(XDriver):
    route = "dm_conversation"

    def __init__(self, sim: Simulator, user_id: str) -> None:
        super().__init__(sim, user_id)
        self.conv = next(c for c in self.world.conversations_of(user_id) if c.is_group).id
        self.path = f"/2/dm_conversations/{self.conv}/dm_events"

    def truth_ids(self) -> list[str]:
        return [e["id"] for e in self.world.truth_conversation(self.user, self.conv)]


class XquikDriver(Driver):
    route = "xquik_history"
    optional = ("createdAt", "senderId", "mediaUrl")

    def __init__(self, sim: Simulator, user_id: str) -> None:
        super().__init__(sim, user_id)
        sim.xquik.page_size = 5
        conv = next(c for c in self.world.conversations_of(user_id) if not c.is_group)
        self.peer = next(m for m in conv.members if m != user_id)

    def get(self, cursor: str | None = None, timeout: float = 10) -> httpx.Response:
        params = {"account": self.world.xquik_handle(self.user), **({"cursor": cursor} if cursor else {})}
        return self.http.get(f"{self.sim.base_url('xquik')}/x/dm/{self.peer}/history", timeout=timeout,
                             params=params, headers={"x-api-key": self.world.xquik_key()})

    def items(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(body["messages"])

    def next(self, body: dict[str, Any]) -> str | None:
        return body["next_cursor"] if body["has_next_page"] else None

    def truth_ids(self) -> list[str]:
        return [e["id"] for e in self.world.truth(self.user, f"xquik:{self.peer}")]


class GetXDriver(Driver):
    route = "getxapi_list"
    optional = ("createdAt", "senderId", "media")

    def get(self, cursor: str | None = None, timeout: float = 10) -> httpx.Response:
        body = {"auth_token": self.world.getxapi_auth_token(self.user), "count": 5,
                **({"cursor": cursor} if cursor else {})}
        return self.http.post(f"{self.sim.base_url('getxapi')}/twitter/dm/list", json=body, timeout=timeout,
                          headers={"Authorization": f"Bearer {self.world.getxapi_key()}"})

    def items(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(body["messages"])

    def next(self, body: dict[str, Any]) -> str | None:
        return body["next_cursor"] if body["has_more"] else None

    def truth_ids(self) -> list[str]:
        return [e["id"] for e in self.world.truth(self.user, "getxapi:all")]


DRIVERS = [XDriver, XConversationDriver, XquikDriver, GetXDriver]
IDS = ["x", "x-conversation", "xquik", "getxapi"]
RATE_LIMITED = {"x": {"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank",
                      "status": 429},
                "xquik": {"error": "rate_limited"}, "getxapi": {"error": "Rate limit exceeded"}}
UNAVAILABLE = {"x": {"title": "Service Unavailable", "detail": "Service Unavailable", "type": "about:blank",
                     "status": 503},
               "xquik": {"error": "service_unavailable"}, "getxapi": {"error": "Service temporarily unavailable"}}
UNAUTHORIZED = {"x": {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"},
                "xquik": {"error": "unauthenticated"},
                "getxapi": {"error": "Invalid auth_token - could not extract userId"}}


def provider(driver: Driver) -> str:
    return "x" if isinstance(driver, XDriver) else "xquik" if isinstance(driver, XquikDriver) else "getxapi"


@pytest.fixture
def world() -> World:
    return World(seed=7)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


@pytest.fixture(params=DRIVERS, ids=IDS)
def driver(request: pytest.FixtureRequest, sim: Simulator, world: World) -> Iterator[Driver]:
    cls: type[Driver] = request.param
    d = cls(sim, world.accounts()[0])
    yield d
    d.http.close()


def test_status_faults(driver: Driver) -> None:
    sim, a, name = driver.sim, driver.user, provider(driver)
    sim.faults.inject(a, driver.route, "429", retry_after=7)
    sim.faults.inject(a, driver.route, "429")
    sim.faults.inject(a, driver.route, "503", count=2, retry_after=1)
    sim.faults.inject(a, driver.route, "401")
    rs = [driver.get() for _ in range(5)]
    assert [r.status_code for r in rs] == [429, 429, 503, 503, 401]
    assert rs[0].json() == rs[1].json() == RATE_LIMITED[name]
    assert rs[0].headers["Retry-After"] == "7" and "Retry-After" not in rs[1].headers
    assert rs[2].json() == UNAVAILABLE[name] and rs[2].headers["Retry-After"] == "1"
    assert rs[4].json() == UNAUTHORIZED[name]
    has_x_headers = [any(k.startswith("x-rate-limit-") for k in r.headers) for r in rs]
    assert has_x_headers == [name == "x"] * 5
    ok = driver.get()
    assert ok.status_code == 200 and driver.items(ok.json())


def test_x_429_without_rate_limit_headers(sim: Simulator, world: World) -> None:
    d = XDriver(sim, world.accounts()[0])
    sim.faults.inject(d.user, "dm_events", "429", rate_headers=False)
    sim.faults.inject(d.user, "dm_events", "429", reset_in=30)
    bare, full = d.get(), d.get()
    assert bare.status_code == full.status_code == 429
    assert not any(k.startswith("x-rate-limit-") for k in bare.headers) and "Retry-After" not in bare.headers
    assert full.headers["x-rate-limit-remaining"] == "0" and int(full.headers["x-rate-limit-reset"]) > 1e9


def test_wire_and_body_faults(driver: Driver) -> None:
    sim, a = driver.sim, driver.user
    sim.faults.inject(a, driver.route, "drop")
    with pytest.raises(httpx.RemoteProtocolError):
        driver.get()
    sim.faults.inject(a, driver.route, "truncated")
    with pytest.raises(httpx.RemoteProtocolError):
        driver.get()
    sim.faults.inject(a, driver.route, "slow", delay_s=0.5)
    with pytest.raises(httpx.ReadTimeout):
        driver.get(timeout=0.05)
    sim.faults.inject(a, driver.route, "malformed_json")
    r = driver.get()
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        r.json()
    sim.faults.inject(a, driver.route, "html", status=504)
    r = driver.get()
    assert r.status_code == 504 and r.headers["content-type"].startswith("text/html") and b"<html>" in r.content
    statuses = [s for u, rt, s, _ in sim.request_log if rt == driver.route]
    assert statuses[0] == 0 and statuses.count(504) == 1       # the slow one logs when it finally answers
    assert driver.walk() and len(sim.faults) == 0


def test_cursor_faults_lose_nothing(driver: Driver) -> None:
    sim, a = driver.sim, driver.user
    first = driver.get().json()
    cursor = driver.next(first)
    assert cursor is not None
    second = driver.get(cursor).json()
    sim.faults.inject(a, driver.route, "cursor_loop")
    looped = driver.get(cursor).json()
    assert driver.next(looped) == cursor and driver.items(looped) == driver.items(second)
    sim.faults.inject(a, driver.route, "empty_page")
    empty = driver.get(cursor).json()
    assert driver.items(empty) == [] and driver.next(empty) == cursor
    sim.faults.inject(a, driver.route, "empty_page")
    start = driver.next(driver.get().json())             # an empty first page names the start
    assert start is not None and driver.items(driver.get(start).json()) == driver.items(first)
    sim.faults.inject(a, driver.route, "cursor_loop")
    again = driver.get().json()
    assert driver.items(driver.get(driver.next(again)).json()) == driver.items(first)


def test_duplicates_repeat_the_tail_of_a_page(driver: Driver) -> None:
    truth = driver.truth_ids()
    driver.sim.faults.inject(driver.user, driver.route, "duplicates", count=2, overlap=2)
    ids = [i["id"] for i in driver.walk()]
    assert len(ids) == len(truth) + 4
    assert list(dict.fromkeys(ids)) == truth
    assert ids[5:7] == ids[3:5] and ids[10:12] == ids[8:10]
    assert driver.truth_ids() == truth


def test_expired_cursor(driver: Driver) -> None:
    cursor = driver.next(driver.get().json())
    driver.sim.faults.inject(driver.user, driver.route, "expired_cursor")
    r = driver.get(cursor)
    assert r.status_code == 400
    body = r.json()
    if isinstance(driver, XDriver):
        assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
        assert body["errors"] == [{"parameters": {"pagination_token": [cursor]},
                                   "message": f"The `pagination_token` query parameter value [{cursor}] is not "
                                              "a valid token."}]
    elif isinstance(driver, XquikDriver):
        assert body == {"error": "invalid_input", "message": "Invalid cursor"}
    else:
        assert body == {"error": "Invalid cursor"}
    assert driver.get(cursor).status_code == 200                      # the cursor itself was fine


def test_nul_text_is_escaped_and_leaves_the_world_alone(driver: Driver) -> None:
    before = [dict(e) for e in driver.sim.world.truth(driver.user, "dm_events")]
    driver.sim.faults.inject(driver.user, driver.route, "nul_text")
    r = driver.get()
    assert b"\\u0000" in r.content and b"\\ud800" in r.content
    r.content.decode("utf-8")                                          # still valid UTF-8 on the wire
    texts = [i[driver.text_key] for i in driver.items(json.loads(r.content)) if driver.text_key in i]
    assert texts and all("\x00" in t and t.endswith("\ud800") for t in texts)
    clean = driver.get().json()
    assert not any("\ud800" in i.get(driver.text_key, "") for i in driver.items(clean))
    assert driver.sim.world.truth(driver.user, "dm_events") == before


def test_missing_optional(driver: Driver) -> None:
    driver.sim.faults.inject(driver.user, driver.route, "missing_optional")
    items = driver.items(driver.get().json())
    assert items and all(k not in i for i in items for k in driver.optional)
    assert all("id" in i for i in items)
    full = driver.items(driver.get().json())
    assert any(k in i for i in full for k in driver.optional)


def test_dm_not_permitted(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    for cls in (XDriver, XConversationDriver, XquikDriver):
        d = cls(sim, a)
        sim.faults.inject(a, d.route, "dm_not_permitted")
        r = d.get()
        assert r.status_code == 403
        if cls is XquikDriver:
            assert r.json()["error"] == "dm_not_permitted" and "not a participant" in r.json()["message"]
        else:
            assert r.json()["type"] == "https://api.twitter.com/2/problems/not-authorized-for-resource"
    with pytest.raises(ValueError, match="does not honour"):
        sim.faults.inject(a, "getxapi_list", "dm_not_permitted")


@pytest.mark.parametrize(("kind", "params", "status", "body"), [
    ("no_credits", {}, 402, {"error": "no_credits"}),
    ("no_credits", {"error": "subscription_inactive"}, 402, {"error": "subscription_inactive"}),
    ("no_subscription", {}, 402, {"error": "no_subscription"}),
    ("insufficient_credits", {}, 402, {"error": "insufficient_credits"}),
    ("account_restricted", {}, 403, {"error": "account_restricted"}),
    ("account_needs_reauth", {}, 403, {"error": "account_needs_reauth"}),
    ("x_dm_not_allowed", {}, 422, {"error": "x_dm_not_allowed",
                                   "message": "The recipient may not accept DMs from this connected account."}),
    ("500", {}, 500, {"error": "internal_error"}),
])
def test_xquik_only_faults(sim: Simulator, world: World, kind: str, params: dict[str, Any], status: int,
                           body: dict[str, Any]) -> None:
    d = XquikDriver(sim, world.accounts()[0])
    sim.faults.inject(None, "xquik_history", kind, **params)
    r = d.get()
    assert (r.status_code, r.json()) == (status, body)
    assert sim.xquik_credits_used == 0
    if kind in ("no_credits", "no_subscription"):
        sim.faults.inject(None, "xquik_user", kind)
        r = httpx.get(f"{sim.base_url('xquik')}/x/users/{d.peer}", headers={"x-api-key": world.xquik_key()})
        assert r.status_code == 402


def test_xquik_user_missing_optional(sim: Simulator, world: World) -> None:
    sim.faults.inject(None, "xquik_user", "missing_optional")
    u = world.users()[4]
    r = httpx.get(f"{sim.base_url('xquik')}/x/users/{u.id}", headers={"x-api-key": world.xquik_key()})
    assert r.json() == {"id": u.id, "username": u.username, "name": u.name}


def test_faults_target_accounts_routes_and_kinds(sim: Simulator, world: World) -> None:
    a, b = world.accounts()[:2]
    sim.faults.inject(b, "*", "503")
    sim.faults.inject(None, "*", "no_credits")             # only Xquik routes honour it
    assert XDriver(sim, a).get().status_code == 200
    assert GetXDriver(sim, a).get().status_code == 200
    assert XquikDriver(sim, a).get().status_code == 402
    assert XquikDriver(sim, a).get().status_code == 200
    assert GetXDriver(sim, b).get().status_code == 503
    with pytest.raises(ValueError, match="unknown route"):
        sim.faults.inject(a, "dm_eventz", "503")
    with pytest.raises(ValueError, match="does not honour"):
        sim.faults.inject(a, "dm_events", "no_credits")
    assert set(sim.route_faults) == {"dm_events", "dm_conversation_with", "dm_conversation", "oauth_token",
                                     "oauth_authorize", "oauth_consent", "users_me",
                                     "xquik_history", "xquik_user", "getxapi_list"}
    assert set().union(*sim.route_faults.values()) == set(FAULT_KINDS)
    with httpx.Client(base_url=sim.url) as ctl:
        r = ctl.post("/_sim/faults", json={"route": "getxapi_list", "kind": "no_credits"})
        assert r.status_code == 400 and "does not honour" in r.json()["error"]
        assert ctl.post("/_sim/faults", json={"route": "xquik_history", "kind": "duplicates",
                                              "overlap": 1}).json()["pending"][-1]["overlap"] == 1
