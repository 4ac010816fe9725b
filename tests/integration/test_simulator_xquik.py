"""Xquik over loopback HTTP: `GET /x/dm/{userId}/history` and `GET /x/users/{id}` under /xquik/api/v1 —
walks equal the truth, opaque stable cursors, legacy maxId, every documented error, credits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dm_pipeline.simulator import Simulator, World

# The error bodies as Xquik's DM-history page documents them, word for word (restated here, not imported
# from the simulator, so a drift in the simulator fails this test).
DOCUMENTED_MESSAGES = {
    "account_required": "Provide ?account=<x_handle> for a connected X account. DM history requires a connected "
                        "participant account.",
    "dm_not_permitted": "X rejected the DM read. The connected account is not a participant in this conversation, "
                        "or it needs reauthentication. Reconnect the account on the dashboard and try again.",
}
ACCOUNT_REQUIRED, DM_NOT_PERMITTED = ({"error": code, "message": text} for code, text in DOCUMENTED_MESSAGES.items())


@pytest.fixture
def world() -> World:
    return World(seed=7, history_days=45)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


def client(sim: Simulator, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=sim.base_url("xquik"), timeout=10,
                        headers={"x-api-key": key if key is not None else sim.world.xquik_key()})


def peers(world: World, user_id: str) -> list[str]:
    """Everyone the account has a 1:1 with."""
    return [next(m for m in c.members if m != user_id) for c in world.conversations_of(user_id) if not c.is_group]


def walk(c: httpx.Client, peer: str, account: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    messages: list[dict[str, Any]] = []
    bodies: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        r = c.get(f"/x/dm/{peer}/history", params={"account": account, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        bodies.append(body)
        messages += body["messages"]
        assert bool(body["next_cursor"]) == body["has_next_page"]     # "" on the last page, as the SDK types it
        if not body["has_next_page"]:
            return messages, bodies
        cursor = body["next_cursor"]
        assert isinstance(cursor, str) and cursor
    raise AssertionError("pagination did not end")


def test_walks_equal_the_truth_for_every_one_to_one(sim: Simulator, world: World) -> None:
    with client(sim) as c:
        for a in world.accounts():
            for peer in peers(world, a):
                messages, bodies = walk(c, peer, world.xquik_handle(a))
                assert messages == sim.truth(a, f"xquik:{peer}", shape="provider")
                canonical = world.truth(a, f"xquik:{peer}")
                assert [m["id"] for m in messages] == [e["id"] for e in canonical]
                assert len({m["id"] for m in messages}) == len(messages)
                assert [int(m["id"]) for m in messages] == sorted((int(m["id"]) for m in messages), reverse=True)
                assert all(len(b["messages"]) == 20 for b in bodies[:-1]) and len(bodies[-1]["messages"]) <= 20
                for m, e in zip(messages, canonical, strict=True):
                    assert (m["text"], m["senderId"], m["createdAt"]) == (e["text"], e["sender_id"], e["created_at"])
                    assert {m["senderId"], m["receiverId"]} == {a, peer}
                    assert m["createdAt"].endswith("Z")
                    assert ("mediaUrl" in m) == ("attachments" in e)


def test_media_urls(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    urls = [m["mediaUrl"] for p in peers(world, a) for m in sim.truth(a, f"xquik:{p}", shape="provider")
            if "mediaUrl" in m]
    assert any(u.endswith("/img.jpg") for u in urls) and any(u.endswith(".mp4") for u in urls)


def test_account_by_id_or_any_case_and_a_bigger_page(sim: Simulator, world: World) -> None:
    a = world.accounts()[1]
    peer = peers(world, a)[0]
    handle = world.xquik_handle(a)
    with client(sim) as c:
        expected = walk(c, peer, handle)[0]
        assert walk(c, peer, a)[0] == expected
        assert walk(c, peer, "@" + handle.upper())[0] == expected
        sim.xquik.page_size = 7
        messages, bodies = walk(c, peer, handle)
    assert messages == expected and len(bodies[0]["messages"]) == 7


def test_cursors_survive_arrivals_and_maxid_still_works(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    peer = peers(world, a)[0]
    handle = world.xquik_handle(a)
    with client(sim) as c:
        p1 = c.get(f"/x/dm/{peer}/history", params={"account": handle}).json()
        p2 = c.get(f"/x/dm/{peer}/history", params={"account": handle, "cursor": p1["next_cursor"]}).json()
        new = [i for i in world.advance(a, 60) if world.one_to_one(a, peer).id  # type: ignore[union-attr]
               == world.event(i).dm_conversation_id]                          # type: ignore[union-attr]
        assert new
        assert c.get(f"/x/dm/{peer}/history", params={"account": handle, "cursor": p1["next_cursor"]}).json() == p2
        fresh = c.get(f"/x/dm/{peer}/history", params={"account": handle}).json()["messages"]
        assert [m["id"] for m in fresh[:len(new)]] == new[::-1]
        max_id = p1["messages"][-1]["id"]
        legacy = c.get(f"/x/dm/{peer}/history", params={"account": handle, "maxId": max_id}).json()
        assert legacy["messages"] == p2["messages"]
        both = c.get(f"/x/dm/{peer}/history", params={"account": handle, "maxId": "1",
                                                      "cursor": p1["next_cursor"]}).json()
        assert both == p2                                                      # the cursor wins


def test_history_errors(sim: Simulator, world: World) -> None:
    a, b, _ = world.accounts()
    peer = peers(world, a)[0]
    handle = world.xquik_handle(a)
    stranger = next(u.id for u in world.users() if u.id != a and world.one_to_one(a, u.id) is None)
    not_connected = next(u for u in world.users() if u.id not in world.accounts())
    with client(sim) as c:
        foreign_cursor = c.get(f"/x/dm/{peer}/history", params={"account": handle}).json()["next_cursor"]
        other_peer = peers(world, a)[1]
        cases: list[tuple[str, dict[str, str], int, dict[str, Any]]] = [
            (f"/x/dm/{peer}/history", {}, 400, ACCOUNT_REQUIRED),
            (f"/x/dm/{peer}/history", {"account": ""}, 400, ACCOUNT_REQUIRED),
            (f"/x/dm/{peer}/history", {"account": "  "}, 400, ACCOUNT_REQUIRED),
            ("/x/dm/abc/history", {"account": handle}, 400,
             {"error": "invalid_input", "message": "userId must be a numeric X user ID"}),
            (f"/x/dm/{peer}/history", {"account": "nobody_here"}, 404, {"error": "account_not_found"}),
            (f"/x/dm/{peer}/history", {"account": not_connected.username}, 404, {"error": "account_not_found"}),
            (f"/x/dm/{stranger}/history", {"account": handle}, 403, DM_NOT_PERMITTED),
            (f"/x/dm/{a}/history", {"account": handle}, 403, DM_NOT_PERMITTED),
            (f"/x/dm/{peer}/history", {"account": world.xquik_handle(b)}, 403, DM_NOT_PERMITTED),
            (f"/x/dm/{peer}/history", {"account": handle, "cursor": "garbage"}, 400,
             {"error": "invalid_input", "message": "Invalid cursor"}),
            (f"/x/dm/{other_peer}/history", {"account": handle, "cursor": foreign_cursor}, 400,
             {"error": "invalid_input", "message": "Invalid cursor"}),
            (f"/x/dm/{peer}/history", {"account": handle, "maxId": "x"}, 400,
             {"error": "invalid_input", "message": "maxId must be a numeric message ID"}),
            ("/x/dm/1/nope", {}, 404, {"error": "not_found"}),
        ]
        if world.one_to_one(b, peer) is not None:
            cases.pop(8)
        for path, params, status, body in cases:
            r = c.get(path, params=params)
            assert (r.status_code, r.json()) == (status, body), (path, params)
    for key in ("wrong", ""):
        with client(sim, key) as bad:
            r = bad.get(f"/x/dm/{peer}/history", params={"account": handle})
            assert (r.status_code, r.json()) == (401, {"error": "unauthenticated"})
    r = httpx.get(f"{sim.base_url('xquik')}/x/users/{peer}")
    assert (r.status_code, r.json()) == (401, {"error": "unauthenticated"})


def test_user_lookup(sim: Simulator, world: World) -> None:
    u = world.users()[5]
    with client(sim) as c:
        by_id = c.get(f"/x/users/{u.id}").json()
        assert by_id == c.get(f"/x/users/{u.username}").json() == c.get(f"/x/users/@{u.username.upper()}").json()
        assert (by_id["id"], by_id["username"], by_id["name"], by_id["canDm"]) == (u.id, u.username, u.name, True)
        assert c.get("/x/users/nobody_at_all").json() == {"error": "user_not_found"}
        assert c.get("/x/users/123456789").status_code == 404
        r = c.get("/x/users/not a handle!")
        assert (r.status_code, r.json()["error"]) == (400, "invalid_input")
    assert sim.xquik_credits_used == 3                       # only the three 200s cost a credit each
    assert sim.requests(route="xquik_user") == 6


def test_credits_pay_per_message_and_402_when_they_run_out(world: World) -> None:
    a = world.accounts()[0]
    peer = peers(world, a)[0]
    handle = world.xquik_handle(a)
    total = len(world.truth(a, f"xquik:{peer}"))
    with Simulator(world, xquik_credits=45) as sim, client(sim) as c:
        p1 = c.get(f"/x/dm/{peer}/history", params={"account": handle}).json()
        assert len(p1["messages"]) == 20 and sim.xquik_credits == 25 and sim.xquik_credits_used == 20
        p2 = c.get(f"/x/dm/{peer}/history", params={"account": handle, "cursor": p1["next_cursor"]})
        assert p2.status_code == 200 and sim.xquik_credits == 5
        r = c.get(f"/x/dm/{peer}/history", params={"account": handle, "cursor": p2.json()["next_cursor"]})
        assert (r.status_code, r.json()) == (402, {"error": "no_credits"})      # 5 cannot pay for 20
        assert sim.xquik_credits == 5 and sim.xquik_credits_used == 40
        assert c.get(f"/x/users/{peer}").status_code == 200 and sim.xquik_credits == 4
        with httpx.Client(base_url=sim.url) as ctl:
            assert ctl.post("/_sim/xquik", json={"balance": 0}).json() == {"balance": 0, "credits_used": 41,
                                                                           "page_size": 20}
            assert c.get(f"/x/users/{peer}").json() == {"error": "no_credits"}
            assert c.get(f"/x/dm/{peer}/history", params={"account": handle}).status_code == 402
            ctl.post("/_sim/xquik", json={"balance": 10_000, "page_size": 100})
            assert ctl.get("/_sim/xquik").json()["page_size"] == 100
            assert ctl.post("/_sim/xquik", json={"page_size": 0}).status_code == 400
        assert walk(c, peer, handle)[0] == sim.truth(a, f"xquik:{peer}", shape="provider")
        assert sim.xquik_credits == 10_000 - total


def test_rate_limit_sends_retry_after_only(world: World) -> None:
    now = [1_800_000_000.0]
    a = world.accounts()[0]
    peer = peers(world, a)[0]
    with Simulator(world, rate_limit=2, rate_window_s=900, clock=lambda: now[0]) as sim, client(sim) as c:
        params = {"account": world.xquik_handle(a)}
        rs = [c.get(f"/x/dm/{peer}/history", params=params) for _ in range(3)]
        assert [r.status_code for r in rs] == [200, 200, 429]
        assert rs[2].json() == {"error": "rate_limited"} and rs[2].headers["Retry-After"] == "900"
        assert not any(k.startswith("x-rate-limit") for r in rs for k in r.headers)
        now[0] += 600
        assert c.get(f"/x/dm/{peer}/history", params=params).headers["Retry-After"] == "300"
        now[0] += 300
        assert c.get(f"/x/dm/{peer}/history", params=params).status_code == 200


def test_edits_and_deletions_show(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    peer = peers(world, a)[0]
    with client(sim) as c:
        first = walk(c, peer, world.xquik_handle(a))[0]
        world.edit(first[3]["id"], "edited ✏️")
        assert world.delete(first[4]["id"])
        again = walk(c, peer, world.xquik_handle(a))[0]
    assert again[3]["text"] == "edited ✏️" and first[4]["id"] not in {m["id"] for m in again}
    assert len(again) == len(first) - 1
