"""X's official Python SDK, `xdk` 0.10.6, against the simulator's X routes.

xdk follows spec 2.167 (`post.fields`, expansion `referenced_posts`, an `entities` object): it pages each
route with its own generator, validates every page into its pydantic models, and raises `requests`'
exceptions (`HTTPError` from `raise_for_status`, `ConnectionError`, ...). Its auth: an OAuth 2.0 user token
(refreshed by the SDK itself when expired, confidential clients only), OAuth 1.0a (`xdk.oauth1_auth.OAuth1`),
or an app-only bearer, which it refuses to send to a user-context route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from xdk import Client
from xdk.direct_messages.models import GetEventsResponse
from xdk.oauth1_auth import OAuth1

from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator import x_api as sim_x
from tests.contract.support import one_to_one_peers, statuses

DM_FIELDS = list(sim_x.DM_EVENT_FIELDS_V2167)
EXPANSIONS = list(sim_x.EXPANSIONS_V2167)
POST_FIELDS = ["conversation_id", "created_at", "id", "lang", "public_metrics", "text"]
USER_FIELDS = ["created_at", "description", "id", "name", "protected", "public_metrics", "username", "verified"]
MEDIA_FIELDS = list(sim_x.MEDIA_FIELDS)
EVERYTHING: dict[str, Any] = {"dm_event_fields": DM_FIELDS, "expansions": EXPANSIONS, "post_fields": POST_FIELDS,
                              "user_fields": USER_FIELDS, "media_fields": MEDIA_FIELDS}


def dump(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(exclude_none=True))


def selected(obj: dict[str, Any], always: tuple[str, ...], requested: list[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k in {*always, *requested}}


def check_includes(world: World, pages: list[GetEventsResponse]) -> None:
    """Every page's includes are exactly the world's objects its events reference, in the fields asked."""
    for page in pages:
        events = [world.event(str(e.id)) for e in page.data or []]
        assert all(events)
        inc = world.includes_for([e for e in events if e is not None],
                                 ["sender_id", "participant_ids", "attachments.media_keys", "referenced_tweets.id"])
        got = page.includes
        assert [dump(m) for m in (got.media if got and got.media else [])] == \
            [selected(m.as_dict(), ("media_key", "type"), MEDIA_FIELDS) for m in inc.get("media", [])]
        assert [dump(u) for u in (got.users if got and got.users else [])] == \
            [selected(sim_x.as_user_v2167(u.as_dict()), ("id", "name", "username"), USER_FIELDS)
             for u in inc.get("users", [])]
        assert [dump(p) for p in (got.posts if got and got.posts else [])] == \
            [selected(sim_x.as_post(t.as_dict()), ("id", "text", "edit_history_post_ids"), POST_FIELDS)
             for t in inc.get("tweets", [])]
        assert "tweets" not in (got.model_extra or {} if got else {})          # 2.167 calls them posts


def walk(method: Callable[..., Iterator[GetEventsResponse]], *args: Any, **params: Any) -> list[GetEventsResponse]:
    return list(method(*args, **params))


def events(pages: list[GetEventsResponse]) -> list[dict[str, Any]]:
    return [dump(e) for p in pages for e in p.data or []]


def test_xdk_pages_every_route_to_the_truth(sim: Simulator, world: World) -> None:
    """Each account: the inbox, every conversation and every 1:1 by participant, each paged to its end by
    xdk's generator with every 2.167 field and expansion; the typed events equal the truth in 2.167's shape,
    the includes equal the world's objects."""
    routes = 0
    for a in world.accounts():
        dm = Client(base_url=sim.url, access_token=world.token_for(a)).direct_messages
        pages = walk(dm.get_events, max_results=100, **EVERYTHING)
        assert all(isinstance(p, GetEventsResponse) for p in pages)
        assert events(pages) == [sim_x.as_v2167(e) for e in world.truth(a)]
        assert len(pages) > 1 and pages[-1].meta is not None and pages[-1].meta.next_token is None
        check_includes(world, pages)
        for conv in world.conversations_of(a):
            pages = walk(dm.get_events_by_conversation_id, conv.id, max_results=37, **EVERYTHING)
            assert events(pages) == [sim_x.as_v2167(e) for e in world.truth_conversation(a, conv.id)]
            check_includes(world, pages)
            routes += 1
        for peer in one_to_one_peers(world, a):
            pages = walk(dm.get_events_by_participant_id, peer, max_results=41, **EVERYTHING)
            assert events(pages) == [sim_x.as_v2167(e) for e in world.truth(a, f"dm_conversation_with:{peer}")]
            routes += 1
    assert routes > 10 and set(statuses(sim)) == {200}
    sent = [q for _, r, _, q in sim.request_log if r == "dm_events"]
    assert all("post.fields" in q and "tweet.fields" not in q for q in sent)


def test_xdk_defaults_and_event_type_filters(sim: Simulator, world: World) -> None:
    a = world.accounts()[1]
    dm = Client(base_url=sim.url, access_token=world.token_for(a)).direct_messages
    defaults = events(walk(dm.get_events))
    truth = world.truth(a)
    assert [e["id"] for e in defaults] == [e["id"] for e in truth]
    assert all(set(e) == ({"id", "event_type", "text"} if e["event_type"] == "MessageCreate"
                          else {"id", "event_type", "participant_ids"}) for e in defaults)
    joins = events(walk(dm.get_events, max_results=5, event_types=["ParticipantsJoin"], **EVERYTHING))
    assert joins == [sim_x.as_v2167(e) for e in truth if e["event_type"] == "ParticipantsJoin"]


# --------------------------------------------------------------------------------------------- faults
HTTP_ERROR = requests.exceptions.HTTPError
# Every fault kind the X routes honour -> what xdk does: (exception type, HTTP status) or "walks" (the
# walk ends and, deduplicated, equals the truth).
XDK_FAULTS: dict[str, tuple[type[BaseException], int | None] | str] = {
    "401": (HTTP_ERROR, 401), "403": (HTTP_ERROR, 403), "unsupported_authentication": (HTTP_ERROR, 403),
    "dm_not_permitted": (HTTP_ERROR, 403), "429": (HTTP_ERROR, 429), "usage_capped": (HTTP_ERROR, 429),
    "500": (HTTP_ERROR, 500), "503": (HTTP_ERROR, 503), "html": (HTTP_ERROR, 502),
    "expired_cursor": (HTTP_ERROR, 400), "invalid_cursor": (HTTP_ERROR, 400),
    "malformed_json": (requests.exceptions.JSONDecodeError, None),
    "drop": (requests.exceptions.ConnectionError, None), "truncated": (requests.exceptions.ChunkedEncodingError, None),
    "slow": "walks", "cursor_loop": "walks", "empty_page": "walks", "duplicates": "walks", "nul_text": "walks",
    "missing_optional": "walks",
}


def test_the_fault_table_covers_every_x_fault(sim: Simulator) -> None:
    for route in ("dm_events", "dm_conversation", "dm_conversation_with"):
        assert set(XDK_FAULTS) == set(sim.route_faults[route])


@pytest.mark.parametrize("kind", sorted(XDK_FAULTS))
def test_xdk_meets_every_fault_with_its_own_exception(sim: Simulator, world: World, kind: str) -> None:
    a = world.accounts()[0]
    conv = next(c for c in world.conversations_of(a) if c.is_group)
    dm = Client(base_url=sim.url, access_token=world.token_for(a)).direct_messages
    truth = world.truth_conversation(a, conv.id)
    params: dict[str, Any] = {"delay_s": 0.2} if kind == "slow" else {}
    # The second page is faulted (a cursor in the request, so the cursor faults apply).
    first = next(iter(dm.get_events_by_conversation_id(conv.id, max_results=5, **EVERYTHING)))
    assert first.meta is not None and first.meta.next_token
    sim.faults.inject(a, "dm_conversation", kind, **params)
    expected = XDK_FAULTS[kind]
    pages = dm.get_events_by_conversation_id(conv.id, max_results=5, pagination_token=first.meta.next_token,
                                             **EVERYTHING)
    if expected == "walks":
        got = [first, *pages]
        ids = [e.id for p in got for e in p.data or []]
        assert list(dict.fromkeys(ids)) == [e["id"] for e in truth]
        if kind == "nul_text":
            assert any("\x00" in (e.text or "") for e in got[1].data or [])
        if kind == "missing_optional":
            assert all(e.created_at is None and e.sender_id is None for e in got[1].data or [])
        return
    assert isinstance(expected, tuple)
    error_type, status = expected
    with pytest.raises(error_type) as caught:
        next(iter(pages))
    response = getattr(caught.value, "response", None)
    if status is not None:
        assert isinstance(response, requests.Response) and response.status_code == status
    if kind == "unsupported_authentication":
        assert isinstance(response, requests.Response)
        assert response.json()["type"] == "https://api.twitter.com/2/problems/unsupported-authentication"
    if kind == "usage_capped":
        assert isinstance(response, requests.Response)
        assert response.json()["type"] == "https://api.twitter.com/2/problems/usage-capped"
        assert int(response.headers["x-rate-limit-remaining"]) > 0       # a cap, not the rate window
    assert len(sim.faults) == 0


# ----------------------------------------------------------------------------------------------- auth
def test_xdk_oauth1_user_context_is_verified_with_the_consumer_secret(sim: Simulator, world: World) -> None:
    a = world.accounts()[2]
    app = sim.x.oauth1
    token, secret = app.credentials(a)
    signed = OAuth1(api_key=app.consumer_key, api_secret=app.consumer_secret, callback="oob",
                    access_token=token, access_token_secret=secret)
    dm = Client(base_url=sim.url, auth=signed).direct_messages
    assert events(walk(dm.get_events, max_results=100, **EVERYTHING)) == [sim_x.as_v2167(e) for e in world.truth(a)]
    for wrong in (OAuth1(api_key=app.consumer_key, api_secret="not-the-secret", callback="oob", access_token=token,
                         access_token_secret=secret),
                  OAuth1(api_key=app.consumer_key, api_secret=app.consumer_secret, callback="oob",
                         access_token=token, access_token_secret="not-the-token-secret"),
                  OAuth1(api_key="another-app", api_secret=app.consumer_secret, callback="oob", access_token=token,
                         access_token_secret=secret)):
        with pytest.raises(HTTP_ERROR) as caught:
            next(iter(Client(base_url=sim.url, auth=wrong).direct_messages.get_events()))
        assert caught.value.response is not None and caught.value.response.status_code == 401


def test_xdk_app_only_bearer(sim: Simulator, world: World) -> None:
    """xdk itself refuses to send an app-only bearer to a user-context route; sent anyway (as a user token),
    X answers 403 unsupported-authentication."""
    app_token = sim.x.oauth1.app_bearer_token
    with pytest.raises(ValueError, match="Authentication required"):
        next(iter(Client(base_url=sim.url, bearer_token=app_token).direct_messages.get_events()))
    with pytest.raises(HTTP_ERROR) as caught:
        next(iter(Client(base_url=sim.url, access_token=app_token).direct_messages.get_events()))
    response = caught.value.response
    assert response is not None and response.status_code == 403
    assert response.json()["title"] == "Unsupported Authentication"


def test_xdk_refreshes_an_expired_oauth2_token_itself(world: World, insecure_oauthlib: None) -> None:
    """A confidential client: xdk sees the token's expires_at has passed, refreshes at POST /2/oauth2/token
    (Basic auth, through requests-oauthlib), and pages with the new token; the pair rotated."""
    a = world.accounts()[0]
    with Simulator(world, rate_limit=100_000, oauth_client_id="xdk-client", oauth_client_secret="s3cret") as sim:
        access, refresh = sim.oauth.issue(a)
        sim.oauth.expire(a)                     # the old access token is refused from now on
        token = {"access_token": access, "refresh_token": refresh, "token_type": "bearer", "expires_in": 7200,
                 "expires_at": time.time() - 1}
        client = Client(base_url=sim.url, client_id="xdk-client", client_secret="s3cret", token=token)
        pages = walk(client.direct_messages.get_events, max_results=100, **EVERYTHING)
        assert events(pages) == [sim_x.as_v2167(e) for e in world.truth(a)]
        assert sim.oauth.refreshes_by_user == {a: 1}
        assert client.access_token not in (None, access) and client.token["refresh_token"] != refresh
        assert set(statuses(sim, "dm_events")) == {200} and statuses(sim, "oauth_token") == [200]
        public = Client(base_url=sim.url, client_id="xdk-client", token={**token, "refresh_token": "x"})
        with pytest.raises(ValueError, match="client_secret is required"):
            public.refresh_token()              # xdk refreshes for confidential clients only
