"""X OAuth 2.0 refresh at `POST /2/oauth2/token`: rotation, single use, Basic auth for confidential
clients, and 2-hour access tokens on the Simulator's injectable clock."""

from __future__ import annotations

import base64

import httpx
import pytest

from dm_pipeline.simulator import Simulator, World
from tests.integration import sim_clock
from tests.integration.sim_clock import Clock

clock, world, sim = sim_clock.clock, sim_clock.world, sim_clock.sim  # the simulator on a test clock

INVALID_TOKEN = {"error": "invalid_request", "error_description": "Value passed for the token was invalid."}
UNAUTHORIZED_CLIENT = {"error": "unauthorized_client", "error_description": "Missing valid authorization header"}
X_401 = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}


def refresh(sim: Simulator, token: str, client_id: str | None = "my-app",
            auth: tuple[str, str] | None = None, **extra: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    if client_id is not None:
        form["client_id"] = client_id
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    return httpx.post(f"{sim.url}/2/oauth2/token", data=form, headers=headers, timeout=10)


def dm_events(sim: Simulator, access: str, path: str = "/2/dm_events") -> httpx.Response:
    return httpx.get(f"{sim.url}{path}", headers={"Authorization": f"Bearer {access}"}, timeout=10)


def test_refresh_rotates_and_each_refresh_token_is_single_use(sim: Simulator, world: World) -> None:
    a = world.accounts()[0]
    access, rt1 = sim.oauth.issue(a)
    assert dm_events(sim, access).status_code == 200
    r = refresh(sim, rt1)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"token_type", "expires_in", "access_token", "scope", "refresh_token"}
    assert (body["token_type"], body["expires_in"]) == ("bearer", 7200)
    assert body["scope"] == "dm.read tweet.read users.read offline.access"
    assert body["access_token"] != access and body["refresh_token"] != rt1
    assert dm_events(sim, body["access_token"]).json()["data"]
    reused = refresh(sim, rt1)
    assert reused.status_code == 400 and reused.json() == INVALID_TOKEN
    assert refresh(sim, "never-issued").json() == INVALID_TOKEN
    rt2 = body["refresh_token"]
    third = refresh(sim, rt2).json()
    assert third["refresh_token"] not in (rt1, rt2)
    assert sim.oauth.refreshes == 2 and sim.oauth.refreshes_by_user == {a: 2}
    assert refresh(sim, rt2).status_code == 400
    assert sim.requests(route="oauth_token") == 5


def test_access_tokens_expire_after_two_hours_of_the_clock(sim: Simulator, world: World, clock: Clock) -> None:
    a = world.accounts()[0]
    conv = world.conversations_of(a)[0]
    access, rt = sim.oauth.issue(a)
    clock.now += 7199
    assert dm_events(sim, access).status_code == 200
    clock.now += 1
    for path in ("/2/dm_events", f"/2/dm_conversations/{conv.id}/dm_events"):
        r = dm_events(sim, access, path)
        assert r.status_code == 401 and r.json() == X_401
        assert r.headers["content-type"].startswith("application/problem+json")
    assert dm_events(sim, world.token_for(a)).status_code == 200      # static tokens never expire
    fresh = refresh(sim, rt).json()["access_token"]
    assert dm_events(sim, fresh).status_code == 200
    clock.now += 7200
    assert dm_events(sim, fresh).status_code == 401


def test_expire_now_and_control_endpoints(sim: Simulator, world: World) -> None:
    a, b = world.accounts()[:2]
    access_a, _ = sim.oauth.issue(a)
    access_b, _ = sim.oauth.issue(b)
    assert sim.oauth.expire(a) == 1
    assert dm_events(sim, access_a).status_code == 401
    assert dm_events(sim, access_b).status_code == 200
    with httpx.Client(base_url=sim.url, timeout=10) as ctl:
        pair = ctl.post("/_sim/oauth/issue", json={"user_id": b}).json()
        assert pair["expires_in"] == 7200 and dm_events(sim, pair["access_token"]).status_code == 200
        assert ctl.post("/_sim/oauth/expire", json={"user_id": b}).json() == {"expired": 2}
        assert dm_events(sim, pair["access_token"]).status_code == 401
        assert refresh(sim, pair["refresh_token"]).status_code == 200
        stats = ctl.get("/_sim/oauth").json()
        assert stats["refreshes"] == 1 and stats["secret_required"] is False
        assert ctl.post("/_sim/oauth/issue", json={"user_id": "1"}).status_code == 400
        assert ctl.post("/_sim/oauth", json={"client_secret": "s3cret"}).json()["secret_required"] is True
    assert refresh(sim, sim.oauth.issue(a)[1]).json() == UNAUTHORIZED_CLIENT


def test_confidential_clients_need_basic_auth(world: World, clock: Clock) -> None:
    a = world.accounts()[0]
    with Simulator(world, clock=clock, oauth_client_id="my-app", oauth_client_secret="s3cret") as sim:
        _, rt = sim.oauth.issue(a)
        for auth, client_id in [(None, "my-app"), (("my-app", "wrong"), "my-app"), (("other", "s3cret"), "other"),
                                (("my-app", "s3cret"), "other")]:
            r = refresh(sim, rt, client_id=client_id, auth=auth)
            assert r.status_code == 401 and r.json() == UNAUTHORIZED_CLIENT, (auth, client_id)
        ok = refresh(sim, rt, client_id=None, auth=("my-app", "s3cret"))     # client_id in the body is optional
        assert ok.status_code == 200
        r = refresh(sim, ok.json()["refresh_token"], auth=("my-app", "s3cret"))
        assert r.status_code == 200 and sim.oauth.refreshes == 2
        assert sim.stats()["oauth"]["secret_required"] is True


def test_malformed_token_requests(sim: Simulator, world: World) -> None:
    _, rt = sim.oauth.issue(world.accounts()[0])
    url = f"{sim.url}/2/oauth2/token"
    cases = [
        (refresh(sim, rt, client_id=None), "Missing required parameter [client_id]."),
        (httpx.post(url, data={"refresh_token": rt, "client_id": "c"}), "Missing required parameter [grant_type]."),
        (httpx.post(url, data={"grant_type": "password", "refresh_token": rt, "client_id": "c"}),
         "Value passed for the grant type was invalid."),
        (httpx.post(url, data={"grant_type": "authorization_code", "refresh_token": rt, "client_id": "c"}),
         "Missing required parameter [code]."),                          # the code grant (test_simulator_consent)
        (httpx.post(url, data={"grant_type": "refresh_token", "client_id": "c"}),
         "Missing required parameter [refresh_token]."),
        (httpx.post(url, json={"grant_type": "refresh_token", "refresh_token": rt, "client_id": "c"}),
         "Missing required parameter [client_id]."),                     # JSON is not a form: nothing is read
    ]
    for r, description in cases:
        assert r.status_code == 400 and r.json() == {"error": "invalid_request", "error_description": description}
    assert refresh(sim, rt).status_code == 200                           # none of those spent the token
    assert httpx.get(url).status_code == 404


def test_token_route_faults_and_no_rate_limit(world: World, clock: Clock) -> None:
    a = world.accounts()[0]
    with Simulator(world, rate_limit=1, clock=clock) as sim:
        _, rt = sim.oauth.issue(a)
        sim.faults.inject(a, "oauth_token", "503", retry_after=2)
        r = refresh(sim, rt)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2" and "x-rate-limit-limit" not in r.headers
        sim.faults.inject(None, "oauth_token", "drop")
        with pytest.raises(httpx.RemoteProtocolError):
            refresh(sim, rt)
        sim.faults.inject(a, "oauth_token", "401")
        assert refresh(sim, rt).json() == UNAUTHORIZED_CLIENT
        tokens = [refresh(sim, rt).json()]
        for _ in range(3):                                              # never rate limited
            tokens.append(refresh(sim, tokens[-1]["refresh_token"]).json())
        assert sim.oauth.refreshes == 4
        with pytest.raises(ValueError):
            sim.faults.inject(a, "oauth_token", "empty_page")
