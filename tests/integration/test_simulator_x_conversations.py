"""X's conversation routes over loopback HTTP: `/2/dm_conversations/with/{participant_id}/dm_events` and
`/2/dm_conversations/{id}/dm_events` — same paging as `/2/dm_events`, no 30-day window, 403 for
conversations the account is not in, one rate-limit window for all three routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator.world import MESSAGE_CREATE, iso_ms, to_ms

ALL_FIELDS = {"dm_event.fields": "attachments,created_at,dm_conversation_id,entities,event_type,id,"
                                 "participant_ids,referenced_tweets,sender_id,text"}
NOT_AUTHORIZED = "https://api.twitter.com/2/problems/not-authorized-for-resource"


@pytest.fixture
def world() -> World:
    return World(seed=7, history_days=45)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


def client(sim: Simulator, user_id: str) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=10,
                        headers={"Authorization": f"Bearer {sim.world.token_for(user_id)}"})


def walk(c: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(10_000):
        r = c.get(path, params={**params, **({"pagination_token": token} if token else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["meta"]["result_count"] == len(body.get("data", []))
        events += body.get("data", [])
        token = body["meta"].get("next_token")
        if token is None:
            return events
    raise AssertionError("pagination did not end")


def peer_of(world: World, user_id: str, conversation_id: str) -> str:
    return next(m for m in world.conversation(conversation_id).members if m != user_id)


def test_history_days_puts_events_outside_the_window(world: World) -> None:
    a = world.accounts()[0]
    cutoff = iso_ms(to_ms(world.now) - 30 * 86_400_000)
    everything = sorted((e for c in world.conversations_of(a) for e in world.truth_conversation(a, c.id)),
                        key=lambda e: int(e["id"]), reverse=True)
    window = world.truth(a, "dm_events")
    assert any(e["created_at"] < cutoff for e in everything)
    assert window == [e for e in everything if e["created_at"] >= cutoff]
    assert World(seed=7).truth(World(seed=7).accounts()[0]) == World(seed=7, history_days=20).truth(a)


@pytest.mark.parametrize("page_size", [1, 9, 100])
def test_conversation_walks_equal_the_truth_without_a_window(sim: Simulator, world: World, page_size: int) -> None:
    cutoff = iso_ms(to_ms(world.now) - 30 * 86_400_000)
    old_seen = False
    for a in world.accounts():
        with client(sim, a) as c:
            for conv in world.conversations_of(a):
                events = walk(c, f"/2/dm_conversations/{conv.id}/dm_events", max_results=page_size, **ALL_FIELDS)
                assert events == world.truth(a, f"dm_conversation:{conv.id}") == world.truth_conversation(a, conv.id)
                assert [int(e["id"]) for e in events] == sorted((int(e["id"]) for e in events), reverse=True)
                assert {e["dm_conversation_id"] for e in events} <= {conv.id}
                old_seen |= any(e["created_at"] < cutoff for e in events)
                if not conv.is_group:
                    peer = peer_of(world, a, conv.id)
                    with_events = walk(c, f"/2/dm_conversations/with/{peer}/dm_events", max_results=page_size,
                                       **ALL_FIELDS)
                    assert with_events == events == world.truth(a, f"dm_conversation_with:{peer}")
    assert old_seen


def test_groups_carry_membership_events_and_accounts_share_conversations(sim: Simulator, world: World) -> None:
    a, b = world.accounts()[:2]
    shared = next(c for c in world.conversations_of(a) if b in c.accounts)
    with client(sim, a) as ca, client(sim, b) as cb:
        assert walk(ca, f"/2/dm_conversations/{shared.id}/dm_events") == \
            walk(cb, f"/2/dm_conversations/{shared.id}/dm_events")
        group = next(c for c in world.conversations_of(a) if c.is_group)
        joins = walk(ca, f"/2/dm_conversations/{group.id}/dm_events", event_types="ParticipantsJoin,ParticipantsLeave",
                     max_results=2, **ALL_FIELDS)
    assert joins == [e for e in world.truth_conversation(a, group.id) if e["event_type"] != MESSAGE_CREATE]


def test_cursors_are_stable_and_bound_to_their_stream(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    conv = next(c for c in world.conversations_of(a) if not c.is_group)
    other = next(c for c in world.conversations_of(a) if c.id != conv.id)
    path = f"/2/dm_conversations/{conv.id}/dm_events"
    with client(sim, a) as c:
        p1 = c.get(path, params={"max_results": 5}).json()
        token = p1["meta"]["next_token"]
        p2 = c.get(path, params={"max_results": 5, "pagination_token": token}).json()
        new = world.advance(a, 40)
        assert c.get(path, params={"max_results": 5, "pagination_token": token}).json() == p2
        mine = [i for i in new if world.event(i).dm_conversation_id == conv.id]     # type: ignore[union-attr]
        assert mine
        fresh = c.get(path, params={"max_results": 100}).json()["data"]
        assert [e["id"] for e in fresh[:len(mine)]] == mine[::-1]
        for wrong in (f"/2/dm_conversations/{other.id}/dm_events", "/2/dm_events",
                      f"/2/dm_conversations/with/{peer_of(world, a, conv.id)}/dm_events"):
            r = c.get(wrong, params={"pagination_token": token})
            assert r.status_code == 400
            assert r.json()["errors"][0]["parameters"] == {"pagination_token": [token]}


def test_non_participants_get_a_403_problem(sim: Simulator, world: World) -> None:
    a, _, c3 = world.accounts()
    foreign = next(c for c in world.conversations_of(c3) if a not in c.accounts)
    stranger = next(u.id for u in world.users() if u.id != a and world.one_to_one(a, u.id) is None)
    cases = [
        (f"/2/dm_conversations/{foreign.id}/dm_events", "id", foreign.id),
        ("/2/dm_conversations/1234567890123456789/dm_events", "id", "1234567890123456789"),   # unknown but valid
        (f"/2/dm_conversations/with/{stranger}/dm_events", "participant_id", stranger),
        (f"/2/dm_conversations/with/{a}/dm_events", "participant_id", a),                    # oneself
    ]
    with client(sim, a) as c:
        for path, parameter, value in cases:
            r = c.get(path)
            assert r.status_code == 403, path
            assert r.headers["content-type"].startswith("application/problem+json")
            body = r.json()
            assert body["type"] == NOT_AUTHORIZED and body["title"] == "Authorization Error"
            assert (body["parameter"], body["value"], body["resource_id"]) == (parameter, value, value)
            assert body["status"] == 403 and body["section"] == "data" and body["resource_type"] == "user"
            assert value in body["detail"]


@pytest.mark.parametrize(("path", "parameter", "value"), [
    ("/2/dm_conversations/abc/dm_events", "id", "abc"),
    ("/2/dm_conversations/123-/dm_events", "id", "123-"),
    ("/2/dm_conversations/12345/dm_events", "id", "12345"),                   # groups need 15-19 digits
    ("/2/dm_conversations/12345678901234567890-1/dm_events", "id", "12345678901234567890-1"),
    ("/2/dm_conversations/with/x1/dm_events", "participant_id", "x1"),
    ("/2/dm_conversations/with/12345678901234567890/dm_events", "participant_id", "12345678901234567890"),
])
def test_bad_path_values_are_invalid_requests(sim: Simulator, world: World, path: str, parameter: str,
                                              value: str) -> None:
    with client(sim, world.accounts()[0]) as c:
        r = c.get(path, params={"max_results": 0})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    params = [e["parameters"] for e in body["errors"]]
    assert {parameter: [value]} in params and {"max_results": ["0"]} in params      # reported together
    assert any(f"The `{parameter}` query parameter value [{value}] does not match ^" in e["message"]
               for e in body["errors"])


def test_the_three_routes_share_one_rate_limit_window(world: World) -> None:
    now = [1_800_000_000.0]
    a = world.accounts()[0]
    conv = world.conversations_of(a)[0]
    with Simulator(world, rate_limit=3, clock=lambda: now[0]) as sim, client(sim, a) as c:
        statuses = [c.get("/2/dm_events").status_code,
                    c.get(f"/2/dm_conversations/{conv.id}/dm_events").status_code,
                    c.get(f"/2/dm_conversations/with/{peer_of(world, a, world.conversations_of(a)[1].id)}"
                          "/dm_events").status_code]
        r = c.get(f"/2/dm_conversations/{conv.id}/dm_events")
        assert statuses == [200, 200, 200] and r.status_code == 429
        assert r.headers["x-rate-limit-remaining"] == "0" and r.json()["title"] == "Too Many Requests"
        with client(sim, world.accounts()[1]) as other:
            assert other.get("/2/dm_events").status_code == 200
        assert sim.requests(a, "dm_conversation") == 2 and sim.requests(a, "dm_conversation_with") == 1
