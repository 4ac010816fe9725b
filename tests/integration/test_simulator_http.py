"""The simulator over real loopback HTTP, driven with httpx as the provider client will drive it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dm_pipeline.simulator import RequestInfo, Simulator, World
from dm_pipeline.simulator.world import PARTICIPANTS_JOIN, PARTICIPANTS_LEAVE

ALL_FIELDS = {
    "dm_event.fields": "attachments,created_at,dm_conversation_id,entities,event_type,id,participant_ids,"
                       "referenced_tweets,sender_id,text",
}
FULL = {
    **ALL_FIELDS,
    "expansions": "attachments.media_keys,participant_ids,referenced_tweets.id,sender_id",
    "media.fields": "duration_ms,height,media_key,preview_image_url,type,url,width,public_metrics,alt_text,variants",
    "user.fields": "created_at,description,id,location,name,profile_image_url,protected,public_metrics,url,"
                   "username,verified",
    "tweet.fields": "attachments,author_id,created_at,conversation_id,edit_controls,id,lang,public_metrics,"
                    "possibly_sensitive,referenced_tweets,reply_settings,text",
}


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:     # rate limits have their own tests
        yield s


def client(sim: Simulator, user_id: str) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=10,
                        headers={"Authorization": f"Bearer {sim.world.token_for(user_id)}"})


def walk(c: httpx.Client, **params: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow next_token to the end; returns (events, page bodies)."""
    events: list[dict[str, Any]] = []
    bodies: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(10_000):
        r = c.get("/2/dm_events", params={**params, **({"pagination_token": token} if token else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        bodies.append(body)
        events += body.get("data", [])
        token = body["meta"].get("next_token")
        if token is None:
            return events, bodies
    raise AssertionError("pagination did not end")


def error_messages(r: httpx.Response) -> list[str]:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["title"] == "Invalid Request"
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    assert r.headers["content-type"].startswith("application/problem+json")
    return [e["message"] for e in body["errors"]]


# ------------------------------------------------------------------------------------ pagination
@pytest.mark.parametrize("page_size", [1, 7, 100])
def test_walking_all_pages_returns_exactly_the_truth(sim: Simulator, world: World, page_size: int) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        events, bodies = walk(c, max_results=page_size, **ALL_FIELDS)
    assert events == world.truth(a)
    assert len({e["id"] for e in events}) == len(events)
    assert all(b["meta"]["result_count"] == len(b["data"]) <= page_size for b in bodies)
    assert "previous_token" not in bodies[0]["meta"]
    assert all("previous_token" in b["meta"] for b in bodies[1:])


def test_every_account_sees_its_own_stream(sim: Simulator, world: World) -> None:
    for a in world.accounts():
        with client(sim, a) as c:
            events, _ = walk(c, **ALL_FIELDS)
        assert events == world.truth(a)


def test_cursors_are_stable_when_events_arrive_and_new_events_land_on_page_one(
        sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        first = c.get("/2/dm_events", params={"max_results": 7, **ALL_FIELDS}).json()
        token = first["meta"]["next_token"]
        rest = [c.get("/2/dm_events", params={"max_results": 7, "pagination_token": token, **ALL_FIELDS}).json()]
        rest.append(c.get("/2/dm_events", params={"max_results": 7, **ALL_FIELDS,
                                                  "pagination_token": rest[0]["meta"]["next_token"]}).json())
        new_ids = world.advance(a, 5)
        again = c.get("/2/dm_events", params={"max_results": 7, "pagination_token": token, **ALL_FIELDS}).json()
        again2 = c.get("/2/dm_events", params={"max_results": 7, **ALL_FIELDS,
                                               "pagination_token": again["meta"]["next_token"]}).json()
        assert [again["data"], again2["data"]] == [rest[0]["data"], rest[1]["data"]]
        assert again["meta"]["next_token"] == rest[0]["meta"]["next_token"]
        fresh = c.get("/2/dm_events", params={"max_results": 7}).json()
        assert [e["id"] for e in fresh["data"][:5]] == new_ids[::-1]
        assert fresh["data"][5]["id"] == first["data"][0]["id"]


def test_cursor_survives_deletion_of_its_boundary_event(sim: Simulator, world: World) -> None:
    a = world.accounts()[2]
    with client(sim, a) as c:
        first = c.get("/2/dm_events", params={"max_results": 5}).json()
        second = c.get("/2/dm_events", params={"max_results": 5,
                                               "pagination_token": first["meta"]["next_token"]}).json()
        assert world.delete(first["data"][-1]["id"])
        again = c.get("/2/dm_events", params={"max_results": 5,
                                              "pagination_token": first["meta"]["next_token"]}).json()
    assert again["data"] == second["data"]


def test_previous_token_walks_back(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        p1 = c.get("/2/dm_events", params={"max_results": 4}).json()
        p2 = c.get("/2/dm_events", params={"max_results": 4, "pagination_token": p1["meta"]["next_token"]}).json()
        back = c.get("/2/dm_events", params={"max_results": 4,
                                             "pagination_token": p2["meta"]["previous_token"]}).json()
    assert back["data"] == p1["data"]
    assert "previous_token" not in back["meta"]      # nothing newer than page one


# ---------------------------------------------------------------------------- fields & includes
def test_default_fields_per_event_type(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        events, bodies = walk(c)
    assert all("includes" not in b for b in bodies)
    for e in events:
        if e["event_type"] in (PARTICIPANTS_JOIN, PARTICIPANTS_LEAVE):
            assert set(e) == {"id", "event_type", "participant_ids"}
        else:
            assert set(e) == {"id", "event_type", "text"}
    truth = {e["id"]: e for e in world.truth(a)}
    assert all(v == truth[e["id"]][k] for e in events for k, v in e.items())


def test_expansions_fill_includes_and_imply_their_id_fields(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        events, bodies = walk(c, **FULL)
        only_users, _ = walk(c, expansions="sender_id", max_results=100)
    assert events == world.truth(a)
    users = {u["id"]: u for b in bodies for u in b.get("includes", {}).get("users", [])}
    media = {m["media_key"]: m for b in bodies for m in b.get("includes", {}).get("media", [])}
    tweets = {t["id"]: t for b in bodies for t in b.get("includes", {}).get("tweets", [])}
    for b in bodies:                                   # includes are per page, deduplicated
        for kind in ("users", "media", "tweets"):
            objs = b.get("includes", {}).get(kind, [])
            assert len(objs) == len({o.get("id", o.get("media_key")) for o in objs})
    for e in events:
        for uid in [e.get("sender_id"), *e.get("participant_ids", [])]:
            if uid:
                assert users[uid]["username"] == world.user(uid).username
                assert "created_at" in users[uid]
        for key in e.get("attachments", {}).get("media_keys", []):
            assert media[key]["type"] == world.media(key).type
        for ref in e.get("referenced_tweets", []):
            assert tweets[ref["id"]]["author_id"] == world.tweet(ref["id"]).author_id
    assert any("url" in m for m in media.values()) and any("variants" in m for m in media.values())
    senders = [e for e in only_users if e["event_type"] == "MessageCreate"]
    assert all("sender_id" in e and "created_at" not in e for e in senders)


def test_event_types_filter(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        events, _ = walk(c, event_types="ParticipantsJoin,ParticipantsLeave", max_results=3, **ALL_FIELDS)
    assert events == [e for e in world.truth(a) if e["event_type"] != "MessageCreate"]


def test_empty_results_omit_data(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    world.advance(seconds=31 * 86_400)            # the whole history falls out of the 30-day window
    assert world.truth(a) == []
    with client(sim, a) as c:
        r = c.get("/2/dm_events", params=FULL)
        assert r.status_code == 200
        assert r.json() == {"meta": {"result_count": 0}}
        world.advance(a, 1)
        only = c.get("/2/dm_events", params={"max_results": 1}).json()
        assert only["meta"] == {"result_count": 1} and len(only["data"]) == 1


# ----------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("params", "fragment"), [
    ({"max_results": "0"}, "[0] is not between 1 and 100"),
    ({"max_results": "101"}, "[101] is not between 1 and 100"),
    ({"max_results": "ten"}, "[ten] is not a valid integer"),
    ({"pagination_token": "ABCDEFG"}, "The `pagination_token` query parameter value [ABCDEFG] is not a valid token."),
    ({"pagination_token": "A" * 24}, "is not a valid token."),
    ({"since_id": "1"}, "The query parameter [since_id] is not one of ["),
    ({"expansions": "sender_id,bogus"}, "The `expansions` query parameter value [bogus] is not one of ["),
    ({"dm_event.fields": "text,html"}, "The `dm_event.fields` query parameter value [html] is not one of ["),
    ({"event_types": "MessageDelete"}, "value [MessageDelete] is not one of ["),
    ({"media.fields": "colour"}, "[colour] is not one of"),
    ({"user.fields": "email"}, "[email] is not one of"),
    ({"tweet.fields": "views"}, "[views] is not one of"),
    ({"expansions": ""}, "The `expansions` query parameter value [] is not one of"),
    ({"expansions": "sender_id,sender_id"}, "contains duplicate values"),
])
def test_invalid_parameters_are_rejected(sim: Simulator, world: World, params: dict[str, str],
                                         fragment: str) -> None:
    with client(sim, world.accounts()[0]) as c:
        messages = error_messages(c.get("/2/dm_events", params=params))
    assert any(fragment in m for m in messages), messages


def test_foreign_and_tampered_tokens_are_rejected(sim: Simulator, world: World) -> None:
    a, b = world.accounts()[:2]
    with client(sim, b) as cb:
        token_b = cb.get("/2/dm_events", params={"max_results": 1}).json()["meta"]["next_token"]
    tampered = token_b[:-2] + ("AA" if token_b[-2:] != "AA" else "BB")
    with client(sim, a) as ca:
        for bad in (token_b, tampered):
            r = ca.get("/2/dm_events", params={"pagination_token": bad})
            assert r.json()["errors"][0]["parameters"] == {"pagination_token": [bad]}
            assert error_messages(r) == [f"The `pagination_token` query parameter value [{bad}] is not a valid token."]


def test_all_problems_are_reported_at_once(sim: Simulator, world: World) -> None:
    with client(sim, world.accounts()[0]) as c:
        r = c.get("/2/dm_events", params={"max_results": "0", "expansions": "x", "foo": "1"})
    assert {tuple(e["parameters"]) for e in r.json()["errors"]} == {("max_results",), ("expansions",), ("foo",)}


@pytest.mark.parametrize("auth", [None, "Bearer nope", "Bearer", "Basic sim-x-1"])
def test_bad_token_is_401(sim: Simulator, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    r = httpx.get(f"{sim.url}/2/dm_events", headers=headers)
    assert r.status_code == 401
    assert r.json() == {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
    assert r.headers["content-type"].startswith("application/problem+json")


def test_unknown_path_is_404(sim: Simulator, world: World) -> None:
    with client(sim, world.accounts()[0]) as c:
        assert c.get("/2/dm_eventz").status_code == 404
        assert c.post("/2/dm_events").status_code == 404


# ---------------------------------------------------------------------------------------- faults
def test_injected_status_faults_then_normal_service(sim: Simulator, world: World) -> None:
    a, b = world.accounts()[:2]
    sim.faults.inject(a, "dm_events", "429", retry_after=7, reset_in=30)
    sim.faults.inject(a, "dm_events", "503")
    sim.faults.inject(a, "dm_events", "403")
    sim.faults.inject(a, "dm_events", "401")
    with client(sim, b) as cb:
        assert cb.get("/2/dm_events").status_code == 200        # another account's faults stay queued
    with client(sim, a) as c:
        before = int(time.time())
        r429, r503, r403, r401, ok = (c.get("/2/dm_events") for _ in range(5))
        after = int(time.time())
    assert r429.status_code == 429 and r429.headers["Retry-After"] == "7"
    assert r429.headers["x-rate-limit-remaining"] == "0"
    assert before + 30 <= int(r429.headers["x-rate-limit-reset"]) <= after + 30  # reset_in=30 from the answer
    assert r429.json() == {"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank",
                           "status": 429}
    assert r503.status_code == 503 and r503.json()["title"] == "Service Unavailable"
    assert r403.status_code == 403 and r403.json()["reason"] == "client-not-enrolled"
    assert "status" not in r403.json()                         # X's real 403 body has none
    assert r401.status_code == 401
    assert ok.status_code == 200 and ok.json()["data"]
    assert [s for u, _, s, _ in sim.request_log if u == a] == [429, 503, 403, 401, 200]


def test_fault_count_and_any_account(sim: Simulator, world: World) -> None:
    sim.faults.inject(None, "dm_events", "503", count=2)
    statuses = []
    for a in world.accounts():
        with client(sim, a) as c:
            statuses.append(c.get("/2/dm_events").status_code)
    assert statuses == [503, 503, 200]


def test_wire_level_faults(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        sim.faults.inject(a, "dm_events", "drop")
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/2/dm_events")
        sim.faults.inject(a, "dm_events", "truncated")
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/2/dm_events")
        sim.faults.inject(a, "dm_events", "malformed_json")
        r = c.get("/2/dm_events")
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()
        sim.faults.inject(a, "dm_events", "html", status=502)
        r = c.get("/2/dm_events")
        assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
        sim.faults.inject(a, "dm_events", "slow", delay_s=0.3)
        with pytest.raises(httpx.ReadTimeout):
            c.get("/2/dm_events", timeout=0.05)
        assert c.get("/2/dm_events").status_code == 200


def test_pagination_faults_lose_nothing(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        p1 = c.get("/2/dm_events", params={"max_results": 5}).json()
        token = p1["meta"]["next_token"]
        sim.faults.inject(a, "dm_events", "empty_page")
        empty = c.get("/2/dm_events", params={"max_results": 5, "pagination_token": token}).json()
        assert empty == {"meta": {"result_count": 0, "next_token": token}}
        sim.faults.inject(a, "dm_events", "cursor_loop")
        looped = c.get("/2/dm_events", params={"max_results": 5, "pagination_token": token}).json()
        assert looped["meta"]["next_token"] == token and looped["data"]
        sim.faults.inject(a, "dm_events", "invalid_cursor")
        assert error_messages(c.get("/2/dm_events", params={"pagination_token": token}))
        sim.faults.inject(a, "dm_events", "empty_page")
        start = c.get("/2/dm_events", params={"max_results": 5}).json()["meta"]["next_token"]
        assert c.get("/2/dm_events", params={"max_results": 5, "pagination_token": start}).json() == p1


# ----------------------------------------------------------------------------------- rate limits
def test_rate_limit_headers_and_exhaustion() -> None:
    now = [1_800_000_000.0]
    world = World()
    a, b = world.accounts()[:2]
    with Simulator(world, rate_limit=3, rate_window_s=900, clock=lambda: now[0]) as sim, client(sim, a) as c:
        rs = [c.get("/2/dm_events") for _ in range(4)]
        assert [r.status_code for r in rs] == [200, 200, 200, 429]
        assert [r.headers["x-rate-limit-remaining"] for r in rs] == ["2", "1", "0", "0"]
        assert {r.headers["x-rate-limit-limit"] for r in rs} == {"3"}
        assert {r.headers["x-rate-limit-reset"] for r in rs} == {str(1_800_000_000 + 900)}
        assert rs[3].json()["title"] == "Too Many Requests"
        with client(sim, b) as cb:                  # windows are per account
            assert cb.get("/2/dm_events").status_code == 200
        now[0] += 900                               # next window
        r = c.get("/2/dm_events")
        assert r.status_code == 200 and r.headers["x-rate-limit-remaining"] == "2"


def test_default_rate_limit_is_300_per_15_minutes(world: World) -> None:
    with Simulator(world) as sim, client(sim, world.accounts()[0]) as c:
        r1, r2 = c.get("/2/dm_events"), c.get("/2/dm_events", params={"max_results": "0"})
    assert r1.headers["x-rate-limit-limit"] == "300"
    assert int(r1.headers["x-rate-limit-remaining"]) > int(r2.headers["x-rate-limit-remaining"])


# ---------------------------------------------------------------------------- hooks and control
def test_on_request_can_hold_a_request(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    seen: list[RequestInfo] = []
    entered, release = threading.Event(), threading.Event()

    def hook(info: RequestInfo) -> None:
        seen.append(info)
        if info.seq == 2:
            entered.set()
            release.wait(10)

    sim.on_request = hook
    results: list[int] = []
    with client(sim, a) as c:
        c.get("/2/dm_events", params={"max_results": 2})
        t = threading.Thread(target=lambda: results.append(c.get("/2/dm_events").status_code))
        t.start()
        assert entered.wait(10)
        assert results == [] and sim.requests(a) == 1       # held before it was handled
        release.set()
        t.join(10)
    assert results == [200]
    assert [(i.user_id, i.route, i.method, i.path, i.seq) for i in seen] == [
        (a, "dm_events", "GET", "/2/dm_events", 1), (a, "dm_events", "GET", "/2/dm_events", 2)]
    assert seen[0].query == {"max_results": "2"}


def test_request_log_and_counts(sim: Simulator, world: World) -> None:
    a, b = world.accounts()[:2]
    with client(sim, a) as c:
        c.get("/2/dm_events", params={"max_results": 3})
        c.get("/2/dm_events", params={"max_results": 0})
    with client(sim, b) as c:
        c.get("/2/dm_events")
    assert sim.requests() == 3 and sim.requests(a) == 2 and sim.requests(b, "dm_events") == 1
    assert sim.requests(route="other") == 0
    assert sim.request_log[0] == (a, "dm_events", 200, {"max_results": "3"})
    assert sim.request_log[1][2] == 400


def test_control_endpoints(sim: Simulator, world: World) -> None:
    with httpx.Client(base_url=sim.url, timeout=10) as ctl:
        accounts = ctl.get("/_sim/accounts").json()["accounts"]
        assert [x["user_id"] for x in accounts] == world.accounts()
        a, token = accounts[0]["user_id"], accounts[0]["token"]
        assert ctl.get("/_sim/truth", params={"user_id": a}).json() == world.truth(a)
        with_inc = ctl.get("/_sim/truth", params={"user_id": a, "includes": "1"}).json()
        assert with_inc["data"] == world.truth(a) and {"users", "media"} <= set(with_inc["includes"])
        adv = ctl.post("/_sim/advance", json={"user_id": a, "n": 3, "deletions": 1}).json()
        assert len(adv["ids"]) == 3 and world.truth(a)[0]["id"] == adv["ids"][-1]
        assert ctl.post("/_sim/faults", json={"user_id": a, "route": "dm_events", "kind": "429",
                                              "count": 2, "retry_after": 1}).status_code == 200
        assert ctl.get("/_sim/faults").json()["pending"][0]["remaining"] == 2
        r = httpx.get(f"{sim.url}/2/dm_events", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert ctl.delete("/_sim/faults").json() == {"pending": []}
        assert httpx.get(f"{sim.url}/2/dm_events", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        stats = ctl.get("/_sim/stats").json()
        assert stats["requests"] == {a: {"dm_events": 2}} and stats["total"] == 2
        assert ctl.post("/_sim/faults", json={"kind": "nope"}).status_code == 400
        assert ctl.get("/_sim/truth").status_code == 400
        assert ctl.get("/_sim/nothing").status_code == 404
        assert ctl.post("/_sim/rate_limit", json={"limit": 1}).json()["limit"] == 1
        auth = {"Authorization": f"Bearer {token}"}
        assert [httpx.get(f"{sim.url}/2/dm_events", headers=auth).status_code for _ in range(2)] == [200, 429]
