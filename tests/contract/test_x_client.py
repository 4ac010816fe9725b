"""What the SDKs found, checked on the project's own X client and on the simulator directly: the field
spelling fallback (tested both ways), the typed errors of X's 403 unsupported-authentication and
usage-capped 429, the rate-limit reset second, and OAuth 1.0a verification over plain HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from requests_oauthlib import OAuth1

from dm_pipeline.errors import InvalidCursor, ProviderError, RateLimited, TransientProviderError
from dm_pipeline.http.policy import Budget, RetryPolicy
from dm_pipeline.models import Account, EventRow, Provider
from dm_pipeline.providers import x_api as x_client
from dm_pipeline.providers.x_api import INBOX, FieldSpellingRejected, SpellingMemory, XClient, participant_stream
from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator import x_api as sim_x
from tests.contract.support import one_to_one_peers, statuses


def account(sim: Simulator, user_id: str, page_size: int = 100) -> Account:
    return Account(key=f"x-{user_id[-6:]}", provider=Provider.X, user_id=user_id, base_url=sim.url, token_env=None,
                   page_size=page_size)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def client(sim: Simulator, http: httpx.Client, user_id: str, memory: SpellingMemory, *, token: str | None = None,
           sleeps: list[float] | None = None) -> XClient:
    policy = RetryPolicy(sleep=(sleeps.append if sleeps is not None else lambda _: None))
    return XClient(account(sim, user_id), http, lambda: token or sim.world.token_for(user_id), policy=policy,
                   spellings=memory)


def walk(c: XClient, stream: Any = INBOX) -> tuple[list[EventRow], list[int]]:
    rows: list[EventRow] = []
    requests: list[int] = []
    cursor: str | None = None
    for _ in range(1000):
        page = c.fetch_page(stream, cursor, Budget.of(60))
        rows += page.events
        requests.append(page.requests)
        cursor = page.next_cursor
        if cursor is None:
            return rows, requests
    raise AssertionError("no end")


def sent_spellings(sim: Simulator) -> list[tuple[int, str]]:
    return [(s, "2.167" if "post.fields" in q else "2.159") for _, r, s, q in sim.request_log
            if r.startswith("dm_")]


# ---------------------------------------------------------------------------------- spelling fallback
def test_x_dropped_the_old_names_the_client_switches_once_and_remembers(sim: Simulator, world: World,
                                                                      http: httpx.Client) -> None:
    sim.x.specs = (sim_x.V2167,)                       # X answers only the 2.167 names
    a = world.accounts()[0]
    memory = SpellingMemory()
    rows, requests = walk(client(sim, http, a, memory))
    assert requests[0] == 2 and set(requests[1:]) == {1}            # one refused request, on the first page
    assert sent_spellings(sim) == [(400, "2.159"), *[(200, "2.167")] * len(requests)]
    assert memory.get(account(sim, a)) == sim_x.V2167
    # Rows are stored in 2.159's shape whatever X answered in: the raw events equal the truth.
    assert [r.raw for r in rows] == world.truth(a)
    shared = [t for r in rows for t in r.referenced_tweets or []]
    assert shared and all(set(t) == {"id", "text", "created_at", "edit_history_tweet_ids"} for t in shared)
    # Another client of the same account (the next run) asks in 2.167 at once.
    sim.request_log.clear()
    peer = one_to_one_peers(world, a)[0]
    rows, requests = walk(client(sim, http, a, memory), participant_stream(peer))
    assert set(requests) == {1} and {s for s, _ in sent_spellings(sim)} == {200}
    assert [r.raw for r in rows] == world.truth(a, f"dm_conversation_with:{peer}")


def test_x_went_back_to_the_old_names_the_client_switches_back(sim: Simulator, world: World,
                                                             http: httpx.Client) -> None:
    a = world.accounts()[1]
    memory = SpellingMemory()
    memory.remember(account(sim, a), sim_x.V2167)      # learned while X took only 2.167
    sim.x.specs = (sim_x.V2159,)                       # ... and now X takes only 2.159
    rows, requests = walk(client(sim, http, a, memory))
    assert requests[0] == 2 and set(requests[1:]) == {1}
    assert sent_spellings(sim) == [(400, "2.167"), *[(200, "2.159")] * len(requests)]
    assert memory.get(account(sim, a)) == sim_x.V2159
    assert [r.raw for r in rows] == world.truth(a)
    assert all(set(t) == {"id", "text", "created_at", "author_id", "edit_history_tweet_ids"}
               for r in rows for t in r.referenced_tweets or [])


def test_both_spellings_accepted_nothing_changes(sim: Simulator, world: World, http: httpx.Client) -> None:
    a = world.accounts()[2]
    memory = SpellingMemory()
    rows, requests = walk(client(sim, http, a, memory))
    assert set(requests) == {1} and {sp for _, sp in sent_spellings(sim)} == {"2.159"}
    assert memory.get(account(sim, a)) == sim_x.V2159 and [r.raw for r in rows] == world.truth(a)
    memory.remember(account(sim, a), sim_x.V2167)
    again, _ = walk(client(sim, http, a, memory))
    # The same rows from a 2.167 answer, but for the shared posts' author_id, which 2.167 cannot ask for.
    strip = [{k: v for k, v in t.items() if k != "author_id"} for r in rows for t in r.referenced_tweets or []]
    assert [r.raw for r in again] == [r.raw for r in rows]
    assert [t for r in again for t in r.referenced_tweets or []] == strip


def mock_client(responses: list[httpx.Response], memory: SpellingMemory) -> tuple[XClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)

    acct = Account(key="x-mock", provider=Provider.X, user_id="1000000000000000001", base_url="https://api.x.com",
                   token_env=None)
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return XClient(acct, http, lambda: "t", policy=RetryPolicy(sleep=lambda _: None), spellings=memory), seen


def invalid(parameter: str, value: str) -> httpx.Response:
    return httpx.Response(400, json={
        "errors": [{"parameters": {parameter: [value]}, "message": f"The query parameter [{parameter}] ..."}],
        "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
        "type": "https://api.twitter.com/2/problems/invalid-request"})


def test_the_other_spelling_is_tried_once_and_only_for_field_parameters() -> None:
    memory = SpellingMemory()
    refused_twice = [invalid("tweet.fields", "author_id"), invalid("post.fields", "created_at")]
    c, seen = mock_client(refused_twice, memory)
    with pytest.raises(FieldSpellingRejected) as caught:
        c.fetch_page(INBOX, None, Budget.of(60))
    assert (caught.value.error_code, caught.value.http_status, caught.value.requests) == ("invalid_request", 400, 2)
    assert ["tweet.fields" in r.url.params for r in seen] == [True, False]
    assert memory.get(c.account) == x_client.V2159                   # nothing learned from a double refusal
    for response, error in ((invalid("max_results", "500"), ProviderError),
                            (invalid("pagination_token", "x" * 16), InvalidCursor)):
        c, seen = mock_client([response], memory)
        with pytest.raises(error) as other:
            c.fetch_page(INBOX, "x" * 16, Budget.of(60))
        assert not isinstance(other.value, FieldSpellingRejected) and len(seen) == 1


# ---------------------------------------------------------------------------------------- typed errors
def test_usage_capped_is_a_typed_final_error_not_a_rate_limit(sim: Simulator, world: World,
                                                              http: httpx.Client) -> None:
    a = world.accounts()[0]
    sleeps: list[float] = []
    sim.faults.inject(a, "dm_events", "usage_capped", count=3, period="Daily", scope="Account")
    c = client(sim, http, a, SpellingMemory(), sleeps=sleeps)
    with pytest.raises(ProviderError) as caught:
        c.fetch_page(INBOX, None, Budget.of(3600))
    error = caught.value
    assert not isinstance(error, TransientProviderError | RateLimited)
    assert (error.error_code, error.http_status, error.requests) == ("usage_capped", 429, 1)
    assert sleeps == [] and statuses(sim) == [429]                    # never retried, never waited
    assert c.governor.wait_before_next(0) == 0                        # the rate window is not touched
    sim.faults.clear()
    sim.faults.inject(a, "dm_events", "429", retry_after=1)           # an ordinary 429 is still retried
    assert c.fetch_page(INBOX, None, Budget.of(60)).requests == 2 and sleeps == [1.0]


def test_app_only_bearer_is_a_typed_unsupported_authentication(sim: Simulator, world: World,
                                                               http: httpx.Client) -> None:
    a = world.accounts()[0]
    c = client(sim, http, a, SpellingMemory(), token=sim.x.oauth1.app_bearer_token)
    with pytest.raises(ProviderError) as caught:
        c.fetch_page(INBOX, None, Budget.of(60))
    assert (caught.value.error_code, caught.value.http_status, caught.value.requests) == \
        ("unsupported_authentication", 403, 1)
    sim.faults.inject(a, "dm_events", "unsupported_authentication")
    with pytest.raises(ProviderError) as faulted:
        client(sim, http, a, SpellingMemory()).fetch_page(INBOX, None, Budget.of(60))
    assert faulted.value.error_code == "unsupported_authentication"


# -------------------------------------------------------------------------------------------- the wire
def test_a_request_in_the_advertised_reset_second_is_served(world: World) -> None:
    """The reset header is the window's end rounded up: waiting until that second always suffices."""
    now = [1_800_000_000.25]
    a = world.accounts()[0]
    with Simulator(world, rate_limit=1, rate_window_s=60, clock=lambda: now[0]) as sim, \
            httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {world.token_for(a)}"}) as c:
        first = c.get("/2/dm_events")
        reset = int(first.headers["x-rate-limit-reset"])
        assert first.status_code == 200 and reset == 1_800_000_061 and reset >= now[0] + 60
        now[0] = 1_800_000_060.2                                         # the window's last moment
        refused = c.get("/2/dm_events")
        assert refused.status_code == 429 and refused.headers["x-rate-limit-reset"] == str(reset)
        now[0] = reset                                                   # the advertised second itself
        assert c.get("/2/dm_events").status_code == 200


def test_oauth1_signatures_are_checked_over_the_whole_request(sim: Simulator, world: World) -> None:
    """requests-oauthlib signing for the simulator's own address; tampering with any signed part fails."""
    import requests

    a = world.accounts()[0]
    app = sim.x.oauth1
    token, secret = app.credentials(a)
    auth = OAuth1(app.consumer_key, app.consumer_secret, token, secret)
    params = {"max_results": "3", "dm_event.fields": "id,text,sender_id"}
    ok = requests.get(f"{sim.url}/2/dm_events", params=params, auth=auth, timeout=10)
    assert ok.status_code == 200
    assert [(e["id"], e.get("text"), e.get("sender_id")) for e in ok.json()["data"]] == \
        [(e["id"], e.get("text"), e.get("sender_id")) for e in world.truth(a)[:3]]
    prepared = requests.Request("GET", f"{sim.url}/2/dm_events", params=params, auth=auth).prepare()
    with requests.Session() as s:
        assert s.send(prepared, timeout=10).status_code == 200
        assert s.send(prepared, timeout=10).status_code == 401               # a replayed nonce
        tampered = requests.Request("GET", f"{sim.url}/2/dm_events", params=params, auth=auth).prepare()
        tampered.url = (tampered.url or "").replace("max_results=3", "max_results=4")
        assert s.send(tampered, timeout=10).status_code == 401
        for header in ('OAuth oauth_consumer_key="x"', "OAuth garbage", 'OAuth oauth_signature_method="PLAINTEXT"'):
            r = s.get(f"{sim.url}/2/dm_events", headers={"Authorization": header}, timeout=10)
            assert (r.status_code, r.json()["title"]) == (401, "Unauthorized")


def test_control_endpoints_expose_the_x_app_and_the_spellings(sim: Simulator, world: World) -> None:
    """Out of process (the CLI's simulator), the same switches: X's app credentials in /_sim/accounts and the
    accepted spellings at /_sim/x."""
    with httpx.Client(base_url=sim.url, timeout=10) as ctl:
        body = ctl.get("/_sim/accounts").json()
        app = sim.x.oauth1
        assert (body["x_consumer_key"], body["x_consumer_secret"], body["x_app_bearer_token"]) == \
            (app.consumer_key, app.consumer_secret, app.app_bearer_token)
        for acc in body["accounts"]:
            assert (acc["oauth1_token"], acc["oauth1_token_secret"]) == app.credentials(acc["user_id"])
            assert acc["oauth1_token"].startswith(f"{acc['user_id']}-")
        assert ctl.get("/_sim/x").json() == {"specs": ["2.159", "2.167"]}
        assert ctl.post("/_sim/x", json={"specs": ["2.167"]}).json() == {"specs": ["2.167"]}
        assert ctl.post("/_sim/x", json={"specs": ["3.0"]}).status_code == 400
        assert ctl.post("/_sim/x", json={"specs": []}).status_code == 400
    a = world.accounts()[0]
    r = httpx.get(f"{sim.url}/2/dm_events", params={"tweet.fields": "author_id"},
                  headers={"Authorization": f"Bearer {world.token_for(a)}"})
    assert r.status_code == 400 and r.json()["errors"][0]["parameters"] == {"tweet.fields": ["author_id"]}


def test_a_2167_event_normalizes_to_the_same_row_as_its_2159_twin() -> None:
    old = {"id": "1580000000000000001", "event_type": "MessageCreate", "text": "see #café x.com/a https://t.co/x",
           "sender_id": "7", "dm_conversation_id": "7-1000000000000000001", "created_at": "2026-01-10T08:00:00.123Z",
           "referenced_tweets": [{"id": "42"}], "hashtags": [{"start": 4, "end": 9, "tag": "café"}],
           "urls": [{"start": 18, "end": 31, "url": "https://t.co/x"}]}
    tweet = {"id": "42", "text": "a post", "created_at": "2026-01-01T00:00:00.000Z", "edit_history_tweet_ids": ["42"]}
    new = sim_x.as_v2167(old)
    assert new["entities"] == {"hashtags": old["hashtags"], "urls": old["urls"]} and "referenced_posts" in new
    a = x_client.normalize_event(old, {"tweets": [tweet]}, "1000000000000000001", "dm_events")
    b = x_client.normalize_event(new, {"posts": [sim_x.as_post(tweet)]}, "1000000000000000001", "dm_events")
    assert a == b and b.raw == old and b.referenced_tweets == [tweet]
