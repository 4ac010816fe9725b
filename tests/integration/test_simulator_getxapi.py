"""GetXAPI over loopback HTTP: `POST /twitter/dm/list` under /getxapi — tabs partition the inbox, walks
equal the truth (messages and events), GetXAPI's documented shapes and errors, stable cursors, edits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator.world import MESSAGE_CREATE, TABS

INVALID_TAB = ('Invalid tab "foo". Allowed: all (inbox), requests (message requests), '
               "hidden (low-quality/spam).")
MESSAGE_KEYS = {"id", "conversationId", "createdAt", "senderId", "recipientId", "text", "media", "shared_tweet",
                "card", "links", "reactions", "reply_to_message_id", "edit_count"}
CONVERSATION_KEYS = {"conversation_id", "type", "name", "avatar_url", "trusted", "low_quality", "muted", "nsfw",
                     "read_only", "notifications_disabled", "unread", "last_read_event_id", "sort_timestamp",
                     "participants", "last_message"}
USER_KEYS = {"id", "screen_name", "name", "description", "profile_image_url", "followers_count", "friends_count",
             "verified", "is_blue_verified", "protected"}


@pytest.fixture
def world() -> World:
    return World(seed=7, history_days=45)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


def client(sim: Simulator, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=sim.base_url("getxapi"), timeout=10,
                        headers={"Authorization": f"Bearer {key if key is not None else sim.world.getxapi_key()}"})


def page(c: httpx.Client, world: World, user_id: str, **body: Any) -> httpx.Response:
    return c.post("/twitter/dm/list", json={"auth_token": world.getxapi_auth_token(user_id), **body})


def walk(c: httpx.Client, world: World, user_id: str, tab: str, count: int = 50) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        r = page(c, world, user_id, tab=tab, count=count, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        bodies.append(body)
        assert ("next_cursor" in body) == body["has_more"]
        if not body["has_more"]:
            return bodies
        cursor = body["next_cursor"]
    raise AssertionError("pagination did not end")


def test_tabs_partition_every_accounts_conversations(world: World) -> None:
    seen_tabs: set[str] = set()
    for a in world.accounts():
        per_tab = {t: {c.id for c in world.conversations_in_tab(a, t)} for t in TABS}
        ids = [cid for t in TABS for cid in per_tab[t]]
        assert sorted(ids) == sorted(c.id for c in world.conversations_of(a))     # disjoint and complete
        assert len(per_tab["all"]) > len(per_tab["requests"]) + len(per_tab["hidden"])
        for t in ("requests", "hidden"):
            assert all(not world.conversation(cid).is_group for cid in per_tab[t])
        seen_tabs |= {t for t in TABS if per_tab[t]}
        msgs = {e["id"] for t in TABS for e in world.truth(a, f"getxapi:{t}")}
        assert msgs == {e["id"] for c in world.conversations_of(a) for e in world.truth_conversation(a, c.id)
                        if e["event_type"] == MESSAGE_CREATE}
    assert seen_tabs == set(TABS)


@pytest.mark.parametrize("count", [1, 13, 50, 100])
def test_walks_equal_the_truth_and_pages_are_consistent(sim: Simulator, world: World, count: int) -> None:
    a = world.accounts()[0]
    with client(sim) as c:
        for tab in TABS:
            bodies = walk(c, world, a, tab, count)
            messages = [m for b in bodies for m in b["messages"]]
            events = [e for b in bodies for e in b["events"]]
            assert messages == sim.truth(a, f"getxapi:{tab}", shape="provider")
            assert [m["id"] for m in messages] == [e["id"] for e in world.truth(a, f"getxapi:{tab}")]
            assert sorted(events, key=lambda e: int(e["id"]), reverse=True) == \
                sim.truth(a, f"getxapi_events:{tab}", shape="provider")
            assert len({e["id"] for e in events}) == len(events)
            tab_convs = {c.id for c in world.conversations_in_tab(a, tab)}
            for b in bodies:
                assert (b["userId"], b["tab"]) == (a, tab)
                assert len(b["messages"]) <= count and b["message_count"] == len(b["messages"])
                assert b["conversation_count"] == len(b["conversations"])
                ids = [int(m["id"]) for m in b["messages"]]
                assert ids == sorted(ids, reverse=True)
                refs = {x["conversationId"] for x in b["messages"] + b["events"]}
                assert {cv["conversation_id"] for cv in b["conversations"]} == refs and refs <= tab_convs
                for cv in b["conversations"]:
                    assert set(cv) == CONVERSATION_KEYS
                    assert (cv["trusted"], cv["low_quality"]) == (tab == "all", tab == "hidden")
                    assert a not in {p["id"] for p in cv["participants"]}
                users = b["users"]
                assert all(set(u) == USER_KEYS and u["id"] == k for k, u in users.items())
                referenced = {a, *(p["id"] for cv in b["conversations"] for p in cv["participants"])}
                referenced |= {x for m in b["messages"] for x in (m["senderId"], m["recipientId"]) if x}
                referenced |= {p for e in b["events"] for p in e.get("participants", [])}
                assert referenced <= set(users)
            for b in bodies[:-1]:
                assert len(b["messages"]) == count


def test_message_event_and_media_shapes(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    messages = [m for t in TABS for m in sim.truth(a, f"getxapi:{t}", shape="provider")]
    events = [e for t in TABS for e in sim.truth(a, f"getxapi_events:{t}", shape="provider")]
    assert all(set(m) == MESSAGE_KEYS for m in messages)
    media = {m["media"]["type"]: m["media"] for m in messages if m["media"]}
    assert set(media) == {"photo", "video", "animated_gif"}
    assert set(media["photo"]) == {"type", "url", "width", "height"}
    assert set(media["video"]) == {"type", "url", "width", "height", "video_url", "duration_ms"}
    assert media["video"]["video_url"].endswith(".mp4")
    shared = next(m for m in messages if m["shared_tweet"])
    assert set(shared["shared_tweet"]) == {"id", "url", "text", "author"} and shared["links"]
    assert any(m["reactions"] for m in messages) and any(m["reply_to_message_id"] for m in messages)
    replied = next(m for m in messages if m["reply_to_message_id"])
    assert int(replied["reply_to_message_id"]) < int(replied["id"])
    groups = {c.id for c in world.conversations_of(a) if c.is_group}
    assert all((m["recipientId"] is None) == (m["conversationId"] in groups) for m in messages)
    assert {e["type"] for e in events} == {"participants_join", "participants_leave"}
    trusts = [e for u in world.accounts() for t in TABS for e in sim.truth(u, f"getxapi_events:{t}", shape="provider")
              if e["type"] == "trust_conversation"]
    assert trusts
    trust = trusts[0]
    assert set(trust) == {"type", "id", "conversationId", "createdAt", "reason"} and trust["reason"] == "accept"
    assert world.event(trust["id"]) is None                   # not an X event
    join = next(e for e in events if e["type"] == "participants_join")
    assert join["senderId"] and join["participants"] and join["conversationId"] in groups


def test_cursors_are_stable_opaque_and_per_tab(sim: Simulator, world: World) -> None:
    a = world.accounts()[1]
    with client(sim) as c:
        p1 = page(c, world, a, count=10).json()
        p2 = page(c, world, a, count=10, cursor=p1["next_cursor"]).json()
        new = world.advance(a, 30)
        assert page(c, world, a, count=10, cursor=p1["next_cursor"]).json()["messages"] == p2["messages"]
        in_all = {c.id for c in world.conversations_in_tab(a, "all")}
        mine = [i for i in new if (e := world.event(i)) and e.dm_conversation_id in in_all
                and e.event_type == MESSAGE_CREATE]
        fresh = page(c, world, a, count=100).json()["messages"]
        assert [m["id"] for m in fresh[:len(mine)]] == mine[::-1]
        r = page(c, world, a, tab="requests", cursor=p1["next_cursor"])
        assert (r.status_code, r.json()) == (400, {"error": "Invalid cursor"})
        r = page(c, world, world.accounts()[0], cursor=p1["next_cursor"])
        assert (r.status_code, r.json()) == (400, {"error": "Invalid cursor"})


def test_edits_show_text_and_edit_count(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    with client(sim) as c:
        target = page(c, world, a, count=5).json()["messages"][2]
        world.edit(target["id"], "fixed the typo ✅")
        world.edit(target["id"], "fixed the typo again ✅")
        after = page(c, world, a, count=5).json()["messages"][2]
        assert (after["id"], after["text"], after["edit_count"]) == (target["id"], "fixed the typo again ✅", 2)
        world.advance(a, 0, edits=25)
        edited = [m for t in TABS for m in sim.truth(a, f"getxapi:{t}", shape="provider") if m["edit_count"]]
        assert len(edited) > 1 and all(m["text"].startswith(("(edited) ", "fixed")) for m in edited)
        with httpx.Client(base_url=sim.url) as ctl:
            assert ctl.post("/_sim/edit", json={"event_id": target["id"], "text": "third"}).json() == {"edit_count": 3}
        assert page(c, world, a, count=5).json()["messages"][2]["edit_count"] == 3


def test_errors(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    token = world.getxapi_auth_token(a)
    with client(sim) as c:
        cases: list[tuple[Any, int, str]] = [
            ({"auth_token": token, "tab": "foo"}, 400, INVALID_TAB),
            ({"auth_token": "0" * 40}, 401, "Invalid auth_token - could not extract userId"),
            ({"tab": "all"}, 400, "auth_token is required"),
            ({"auth_token": token, "count": 0}, 400, "count must be an integer between 1 and 100"),
            ({"auth_token": token, "count": 101}, 400, "count must be an integer between 1 and 100"),
            ({"auth_token": token, "count": "5"}, 400, "count must be an integer between 1 and 100"),
            ({"auth_token": token, "count": True}, 400, "count must be an integer between 1 and 100"),
            ({"auth_token": token, "cursor": "nope"}, 400, "Invalid cursor"),
            ({"auth_token": token, "ct0": "x", "twid": "u=1"}, 401,
             "Twitter rejected the supplied ct0/twid - send current cookies or omit them"),
            ([1, 2], 400, "Invalid JSON body"),
        ]
        for body, status, message in cases:
            r = c.post("/twitter/dm/list", json=body)
            assert (r.status_code, r.json()) == (status, {"error": message}), body
        r = c.post("/twitter/dm/list", content=b"{not json", headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()) == (400, {"error": "Invalid JSON body"})
        for extra in ({"ct0": "abc"}, {"twid": f"u={a}"}, {"ct0": "abc", "twid": f"u={a}"},
                      {"ct0": "abc", "twid": f"u%3D{a}"}, {"tab": "all", "cursor": ""},
                      {"tab": None, "count": None, "cursor": None}):
            assert page(c, world, a, **extra).status_code == 200, extra
        assert c.get("/twitter/dm/list").json() == {"error": "Not found"}
    with client(sim, "wrong") as bad:
        r = page(bad, world, a)
        assert (r.status_code, r.json()) == (401, {"error": "Invalid API key"})
    r = httpx.post(f"{sim.base_url('getxapi')}/twitter/dm/list", json={"auth_token": token})
    assert (r.status_code, r.json()) == (401, {"error": "Invalid API key"})


def test_request_log_and_rate_limit(world: World) -> None:
    now = [1_800_000_000.0]
    a = world.accounts()[0]
    with Simulator(world, rate_limit=1, clock=lambda: now[0]) as sim, client(sim) as c:
        assert page(c, world, a, tab="hidden", count=3).status_code == 200
        r = page(c, world, a)
        assert (r.status_code, r.json()) == (429, {"error": "Rate limit exceeded"})
        assert r.headers["Retry-After"] == "900" and "x-rate-limit-limit" not in r.headers
        assert page(c, world, world.accounts()[1]).status_code == 200     # per account
        assert sim.request_log[0] == (a, "getxapi_list", 200, {"tab": "hidden", "count": "3"})
        assert all(world.getxapi_auth_token(a) not in str(entry) for entry in sim.request_log)
