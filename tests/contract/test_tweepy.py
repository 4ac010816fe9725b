"""tweepy 4.17.0 against the simulator's X routes.

tweepy speaks spec 2.159 (`tweet.fields`, `referenced_tweets.id`), hard-codes https://api.twitter.com (its
requests session is routed to the simulator, see `support.ToSimulator`), authenticates with OAuth 1.0a user
context by default (`user_auth=True`) or a bearer token, builds typed `DirectMessageEvent`s, `Tweet`s,
`User`s and `Media`, pages with `tweepy.Paginator`, raises its own `HTTPException` subclasses, and with
`wait_on_rate_limit` sleeps until `x-rate-limit-reset` + 1 s.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

import pytest
import requests
import tweepy

from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator import x_api as sim_x
from tests.contract.support import one_to_one_peers, route_to, statuses

PARAMS: dict[str, Any] = {
    "dm_event_fields": list(sim_x.DM_EVENT_FIELDS), "expansions": list(sim_x.EXPANSIONS),
    "tweet_fields": ["author_id", "conversation_id", "created_at", "lang", "public_metrics", "text"],
    "user_fields": ["created_at", "description", "id", "name", "protected", "public_metrics", "username"],
    "media_fields": list(sim_x.MEDIA_FIELDS),
}


def bearer_client(sim: Simulator, token: str, **kw: Any) -> tweepy.Client:
    client = tweepy.Client(bearer_token=token, **kw)
    route_to(client.session, sim)
    return client


def oauth1_client(sim: Simulator, user_id: str, **overrides: str) -> tweepy.Client:
    app = sim.x.oauth1
    token, secret = app.credentials(user_id)
    creds = {"consumer_key": app.consumer_key, "consumer_secret": app.consumer_secret, "access_token": token,
             "access_token_secret": secret, **overrides}
    client = tweepy.Client(**creds)
    route_to(client.session, sim)
    return client


def pages(client: tweepy.Client, user_auth: bool, **kw: Any) -> list[tweepy.Response]:
    return list(tweepy.Paginator(client.get_direct_message_events, user_auth=user_auth, **PARAMS, **kw))


def check_pages(world: World, responses: list[tweepy.Response], truth: list[dict[str, Any]]) -> None:
    """The typed events equal the truth (their `data` exactly), typed fields parse, and each page's includes
    are tweepy's typed objects holding exactly the world's objects in the fields asked."""
    events = [e for r in responses for e in r.data or []]
    assert all(isinstance(e, tweepy.DirectMessageEvent) for e in events)
    assert [e.data for e in events] == truth
    for e, t in zip(events, truth, strict=True):
        assert e.id == int(t["id"]) and isinstance(e.created_at, datetime)
        assert e.sender_id == (int(t["sender_id"]) if "sender_id" in t else None)
        assert [r.id for r in e.referenced_tweets or []] == [int(r["id"]) for r in t.get("referenced_tweets", [])]
    for r in responses:
        sims = [world.event(str(e.id)) for e in r.data or []]
        inc = world.includes_for([s for s in sims if s is not None], list(sim_x.EXPANSIONS))
        got = r.includes
        assert [m.data for m in got.get("media", [])] == \
            [{k: v for k, v in m.as_dict().items() if k in {"media_key", "type", *PARAMS["media_fields"]}}
             for m in inc.get("media", [])]
        assert all(isinstance(u, tweepy.User) for u in got.get("users", []))
        assert [u.id for u in got.get("users", [])] == [int(u.id) for u in inc.get("users", [])]
        assert all(isinstance(t, tweepy.Tweet) and t.author_id for t in got.get("tweets", []))
        assert [t.id for t in got.get("tweets", [])] == [int(t.id) for t in inc.get("tweets", [])]


def test_tweepy_pages_every_route_with_a_user_bearer_token(sim: Simulator, world: World) -> None:
    for a in world.accounts():
        client = bearer_client(sim, world.token_for(a))
        check_pages(world, pages(client, False, max_results=100), world.truth(a))
        for conv in world.conversations_of(a):
            check_pages(world, pages(client, False, dm_conversation_id=conv.id, max_results=33),
                        world.truth_conversation(a, conv.id))
        for peer in one_to_one_peers(world, a):
            check_pages(world, pages(client, False, participant_id=peer, max_results=45),
                        world.truth(a, f"dm_conversation_with:{peer}"))
    assert set(statuses(sim)) == {200}


def test_tweepy_oauth1_user_context_its_default(sim: Simulator, world: World) -> None:
    """OAuth 1.0a, signed by requests-oauthlib for https://api.twitter.com and verified by the simulator with
    its consumer secret and the account's token secret."""
    a = world.accounts()[1]
    check_pages(world, pages(oauth1_client(sim, a), True, max_results=100), world.truth(a))
    peer = one_to_one_peers(world, a)[0]
    check_pages(world, pages(oauth1_client(sim, a), True, participant_id=peer),
                world.truth(a, f"dm_conversation_with:{peer}"))
    other = world.accounts()[2]
    for wrong in ({"consumer_secret": "nope"}, {"access_token_secret": "nope"},
                  {"access_token": sim.x.oauth1.credentials(other)[0]}, {"consumer_key": "another-app"}):
        with pytest.raises(tweepy.Unauthorized):
            oauth1_client(sim, a, **wrong).get_direct_message_events()


def test_tweepy_app_only_bearer_is_forbidden(sim: Simulator) -> None:
    client = bearer_client(sim, sim.x.oauth1.app_bearer_token)
    with pytest.raises(tweepy.Forbidden) as caught:
        client.get_direct_message_events(user_auth=False)
    assert caught.value.response.json()["type"] == "https://api.twitter.com/2/problems/unsupported-authentication"
    assert "Application-Only is forbidden" in str(caught.value)
    with pytest.raises(tweepy.Unauthorized):
        bearer_client(sim, "not-a-token").get_direct_message_events(user_auth=False)


# Every fault kind the X routes honour -> tweepy's exception, or "walks" (deduplicated, equals the truth).
TWEEPY_FAULTS: dict[str, type[BaseException] | str] = {
    "401": tweepy.Unauthorized, "403": tweepy.Forbidden, "unsupported_authentication": tweepy.Forbidden,
    "dm_not_permitted": tweepy.Forbidden, "429": tweepy.TooManyRequests, "usage_capped": tweepy.TooManyRequests,
    "500": tweepy.TwitterServerError, "503": tweepy.TwitterServerError, "html": tweepy.TwitterServerError,
    "expired_cursor": tweepy.BadRequest, "invalid_cursor": tweepy.BadRequest,
    "malformed_json": requests.exceptions.JSONDecodeError, "drop": requests.exceptions.ConnectionError,
    "truncated": requests.exceptions.ChunkedEncodingError,
    "slow": "walks", "cursor_loop": "walks", "empty_page": "walks", "duplicates": "walks", "nul_text": "walks",
    "missing_optional": "walks",
}


def test_the_fault_table_covers_every_x_fault(sim: Simulator) -> None:
    assert set(TWEEPY_FAULTS) == set(sim.route_faults["dm_conversation_with"])


@pytest.mark.parametrize("kind", sorted(TWEEPY_FAULTS))
def test_tweepy_meets_every_fault_with_its_own_exception(sim: Simulator, world: World, kind: str) -> None:
    a = world.accounts()[0]
    peer = one_to_one_peers(world, a)[0]
    client = bearer_client(sim, world.token_for(a))
    first = client.get_direct_message_events(participant_id=peer, user_auth=False, max_results=5, **PARAMS)
    token = first.meta["next_token"]
    params: dict[str, Any] = {"delay_s": 0.2} if kind == "slow" else {}
    sim.faults.inject(a, "dm_conversation_with", kind, **params)
    expected = TWEEPY_FAULTS[kind]
    if expected == "walks":
        rest = pages(client, False, participant_id=peer, max_results=5, pagination_token=token)
        ids = [e.data["id"] for r in [first, *rest] for e in r.data or []]
        assert list(dict.fromkeys(ids)) == [e["id"] for e in world.truth(a, f"dm_conversation_with:{peer}")]
        return
    assert isinstance(expected, type)
    with pytest.raises(expected) as caught:
        client.get_direct_message_events(participant_id=peer, user_auth=False, max_results=5,
                                         pagination_token=token, **PARAMS)
    if kind == "usage_capped":
        assert isinstance(caught.value, tweepy.TooManyRequests)
        assert caught.value.response.json()["title"] == "UsageCapExceeded"
    if kind in ("expired_cursor", "invalid_cursor"):
        assert "is not a valid token" in str(caught.value)


def test_wait_on_rate_limit_against_a_tight_window(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """tweepy sleeps `x-rate-limit-reset - int(now) + 1` on a 429, then asks again. Against a window of 2
    requests per 2 s every wait is bounded by the window (+ tweepy's 1 s + the reset's whole second), the
    walk completes, equals the truth, and meets exactly one 429 per exhausted window."""
    limit, window_s = 2, 2
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(tweepy.client.time, "sleep", sleep)
    a = world.accounts()[0]
    with Simulator(world, rate_limit=limit, rate_window_s=window_s) as sim:
        client = bearer_client(sim, world.token_for(a), wait_on_rate_limit=True)
        responses = pages(client, False, max_results=100)
        check_pages(world, responses, world.truth(a))
        codes = statuses(sim, "dm_events")
    assert codes.count(200) == len(responses) >= 3
    assert codes.count(429) == math.ceil(len(responses) / limit) - 1 == len(slept)
    assert all(codes[i + 1] == 200 for i, c in enumerate(codes) if c == 429)   # one wait always sufficed
    assert all(0 < s <= window_s + 2 for s in slept)
