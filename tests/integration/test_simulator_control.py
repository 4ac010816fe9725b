"""The `/_sim/*` control endpoints for the three providers: accounts and keys, per-route truth, mounts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dm_pipeline.simulator import Simulator, World


@pytest.fixture
def world() -> World:
    return World(seed=11)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


@pytest.fixture
def ctl(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


def test_accounts_carry_every_providers_credentials(sim: Simulator, world: World, ctl: httpx.Client) -> None:
    body = ctl.get("/_sim/accounts").json()
    assert body["base_urls"] == {"x": sim.url, "xquik": f"{sim.url}/xquik/api/v1", "getxapi": f"{sim.url}/getxapi"}
    assert (body["xquik_api_key"], body["getxapi_api_key"]) == (world.xquik_key(), world.getxapi_key())
    for acc, a in zip(body["accounts"], world.accounts(), strict=True):
        assert acc["user_id"] == a and acc["token"] == world.token_for(a)
        assert acc["xquik_handle"] == world.user(a).username == world.xquik_handle(a)
        assert acc["getxapi_auth_token"] == world.getxapi_auth_token(a) and acc["getxapi_twid"] == f"u={a}"
        assert (acc["xquik_api_key"], acc["getxapi_api_key"]) == (world.xquik_key(), world.getxapi_key())
        r = httpx.get(f"{body['base_urls']['xquik']}/x/users/{acc['xquik_handle']}",
                      headers={"x-api-key": acc["xquik_api_key"]})
        assert r.json()["id"] == a


def test_truth_per_route_and_shape(sim: Simulator, world: World, ctl: httpx.Client) -> None:
    a = world.accounts()[0]
    conv = next(c for c in world.conversations_of(a) if not c.is_group)
    peer = next(m for m in conv.members if m != a)
    for route in ("dm_events", f"dm_conversation:{conv.id}", f"dm_conversation_with:{peer}", f"xquik:{peer}",
                  "getxapi:all", "getxapi:requests", "getxapi_events:all"):
        assert ctl.get("/_sim/truth", params={"user_id": a, "route": route}).json() == world.truth(a, route)
        provider = ctl.get("/_sim/truth", params={"user_id": a, "route": route, "shape": "provider"}).json()
        assert provider == sim.truth(a, route, shape="provider")
    assert "senderId" in sim.truth(a, f"xquik:{peer}", shape="provider")[0]
    assert "conversationId" in sim.truth(a, "getxapi:all", shape="provider")[0]
    foreign = next(c for u in world.accounts() for c in world.conversations_of(u) if a not in c.accounts)
    for bad in ({"user_id": a, "route": "nope"}, {"user_id": a, "route": "getxapi:spam"},
                {"user_id": a, "route": f"dm_conversation:{foreign.id}"}, {"user_id": a, "shape": "odd"},
                {"user_id": "1"}):
        assert ctl.get("/_sim/truth", params=bad).status_code == 400, bad


def test_conversations_edit_and_stats(sim: Simulator, world: World, ctl: httpx.Client) -> None:
    a = world.accounts()[0]
    convs = ctl.get("/_sim/conversations", params={"user_id": a}).json()["conversations"]
    assert [c["id"] for c in convs] == [c.id for c in world.conversations_of(a)]
    assert {c["tab"] for c in convs} == {"all", "requests", "hidden"}
    assert all(c["tab"] == world.tab_of(a, c["id"]) and a in c["members"] for c in convs)
    msg = next(e for e in world.truth(a) if e["event_type"] == "MessageCreate")
    assert ctl.post("/_sim/edit", json={"event_id": msg["id"], "text": "new"}).json() == {"edit_count": 1}
    assert world.event(msg["id"]).text == "new"                           # type: ignore[union-attr]
    assert ctl.post("/_sim/edit", json={"event_id": "1", "text": "x"}).status_code == 400
    stats = ctl.get("/_sim/stats").json()
    assert stats["xquik"] == {"balance": 1_000_000, "credits_used": 0} and stats["oauth"]["refreshes"] == 0


def test_unknown_paths_answer_in_each_providers_style(sim: Simulator) -> None:
    assert httpx.get(f"{sim.url}/2/nothing").json()["errors"][0]["code"] == 34
    assert httpx.get(f"{sim.url}/xquik/api/v1/nothing").json() == {"error": "not_found"}
    assert httpx.get(f"{sim.url}/getxapi/nothing").json() == {"error": "Not found"}
    assert httpx.get(f"{sim.url}/getxapi").json() == {"error": "Not found"}
