"""requests-oauthlib 2.0.0 against the simulator's OAuth endpoints: the OAuth 2.0 refresh-token grant at
`POST /2/oauth2/token` (public and confidential clients, automatic refresh of an expired token, rotation,
single use), and OAuth 1.0a signing verified by the simulator. Errors are oauthlib's `OAuth2Error`s."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from oauthlib.oauth2.rfc6749.errors import OAuth2Error, UnauthorizedClientError
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth1, OAuth2Session

from dm_pipeline.simulator import Simulator, World
from tests.contract.support import statuses

pytestmark = pytest.mark.usefixtures("insecure_oauthlib")


def expired(access: str, refresh: str) -> dict[str, Any]:
    return {"access_token": access, "refresh_token": refresh, "token_type": "bearer", "expires_in": -1,
            "expires_at": time.time() - 1}


def test_a_public_client_refreshes_automatically_and_the_refresh_token_is_single_use(world: World) -> None:
    a = world.accounts()[0]
    with Simulator(world, rate_limit=100_000, oauth_client_id="public-app") as sim:
        access, refresh = sim.oauth.issue(a)
        sim.oauth.expire(a)
        saved: list[dict[str, Any]] = []
        token_url = f"{sim.url}/2/oauth2/token"
        session = OAuth2Session("public-app", token=expired(access, refresh), auto_refresh_url=token_url,
                                auto_refresh_kwargs={"client_id": "public-app"}, token_updater=saved.append)
        r = session.get(f"{sim.url}/2/dm_events", params={"max_results": 100})
        assert r.status_code == 200 and [e["id"] for e in r.json()["data"]] == [e["id"] for e in world.truth(a)][:100]
        assert len(saved) == 1 and saved[0]["access_token"] != access and saved[0]["refresh_token"] != refresh
        assert "dm.read" in saved[0]["scope"]
        assert sim.oauth.account_for(saved[0]["access_token"]) == a and sim.oauth.refreshes_by_user == {a: 1}
        with pytest.raises(OAuth2Error) as spent:
            session.refresh_token(token_url, refresh_token=refresh, client_id="public-app")
        assert (spent.value.error, spent.value.description) == ("invalid_request",
                                                                "Value passed for the token was invalid.")
        rotated = session.refresh_token(token_url, refresh_token=saved[0]["refresh_token"], client_id="public-app")
        assert rotated["refresh_token"] not in (refresh, saved[0]["refresh_token"])
        with pytest.raises(OAuth2Error) as other_client:      # (auto_refresh_kwargs would override client_id)
            OAuth2Session("another-app").refresh_token(token_url, refresh_token=rotated["refresh_token"],
                                                       client_id="another-app")
        assert other_client.value.description == "Value passed for the client id was invalid."
        assert statuses(sim, "oauth_token") == [200, 400, 200, 400]


def test_a_confidential_client_needs_basic_auth(world: World) -> None:
    a = world.accounts()[1]
    with Simulator(world, rate_limit=100_000, oauth_client_id="conf-app", oauth_client_secret="s3cret") as sim:
        access, refresh = sim.oauth.issue(a)
        token_url = f"{sim.url}/2/oauth2/token"
        session = OAuth2Session("conf-app", token=expired(access, refresh))
        with pytest.raises(UnauthorizedClientError) as refused:
            session.refresh_token(token_url, client_id="conf-app")
        assert refused.value.description == "Missing valid authorization header"
        with pytest.raises(UnauthorizedClientError):
            session.refresh_token(token_url, auth=HTTPBasicAuth("conf-app", "wrong"))
        token = session.refresh_token(token_url, auth=HTTPBasicAuth("conf-app", "s3cret"))
        r = requests.get(f"{sim.url}/2/dm_events", headers={"Authorization": f"Bearer {token['access_token']}"},
                         timeout=10)
        assert r.status_code == 200 and token["expires_in"] == 7200 and token["token_type"] == "bearer"


def test_oauth1_signed_requests(sim: Simulator, world: World) -> None:
    a = world.accounts()[2]
    app = sim.x.oauth1
    token, secret = app.credentials(a)
    for params in ({}, {"max_results": "7", "event_types": "MessageCreate", "dm_event.fields": "id,text,created_at"},
                   {"expansions": "sender_id", "user.fields": "id,name,username", "tweet.fields": "author_id"}):
        r = requests.get(f"{sim.url}/2/dm_events", params=params,
                         auth=OAuth1(app.consumer_key, app.consumer_secret, token, secret), timeout=10)
        assert r.status_code == 200, r.text
    peer_conv = world.conversations_of(a)[0].id
    r = requests.get(f"{sim.url}/2/dm_conversations/{peer_conv}/dm_events",
                     auth=OAuth1(app.consumer_key, app.consumer_secret, token, secret, signature_type="query"),
                     timeout=10)
    assert r.status_code == 401          # only the Authorization header carries OAuth 1.0a here, as at X
