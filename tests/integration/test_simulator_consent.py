"""The simulator's Authorization Code flow with PKCE: the consent page (Approve / Deny, auto-approve), the
`authorization_code` grant (single-use 30-second codes, redirect_uri and verifier checked), GET /2/users/me,
and a third-party client (requests-oauthlib's OAuth2Session with PKCE) going through it all."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dm_pipeline.oauth_connect import authorization_url, pkce_pair
from dm_pipeline.simulator import Simulator, World
from tests.integration import sim_clock
from tests.integration.sim_clock import Clock

clock, world, sim = sim_clock.clock, sim_clock.world, sim_clock.sim  # the simulator on a test clock

REDIRECT = "http://127.0.0.1:8976/callback"
SCOPE = "dm.read tweet.read users.read offline.access"


def auth_url(sim: Simulator, challenge: str, state: str = "st-1", redirect: str = REDIRECT,
             client_id: str = "my-app") -> str:
    return authorization_url(f"{sim.url}/i/oauth2/authorize", client_id, redirect, state, challenge)


def decide(url: str, decision: str = "approve", user_id: str | None = None) -> httpx.Response:
    """What a person does on the consent page: open it, pick the account, press a button (no redirect followed)."""
    page = httpx.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
    rid = re.search(r'name="request" value="([^"]+)"', page.text)
    selected = re.search(r'<option value="(\d+)" selected>', page.text)
    assert rid and selected
    form = {"request": rid.group(1), "user_id": user_id or selected.group(1), "decision": decision}
    return httpx.post(url.split("?")[0], data=form)


def code_of(reply: httpx.Response, state: str = "st-1") -> str:
    assert reply.status_code == 302, reply.text
    location = reply.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    return query["code"][0]


def exchange(sim: Simulator, code: str, verifier: str, redirect: str = REDIRECT, client_id: str = "my-app",
             **extra: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "code_verifier": verifier,
            "client_id": client_id, **extra}
    return httpx.post(f"{sim.url}/2/oauth2/token", data=form)


def invalid(description: str) -> dict[str, str]:
    return {"error": "invalid_request", "error_description": description}


def test_approve_gives_a_single_use_code_for_the_chosen_account(sim: Simulator, world: World) -> None:
    verifier, challenge = pkce_pair()
    omar = world.accounts()[2]
    page = httpx.get(auth_url(sim, challenge))
    for scope in SCOPE.split():
        assert f"<code>{scope}</code>" in page.text
    assert ">Approve</button>" in page.text and ">Deny</button>" in page.text
    assert page.headers["cache-control"] == "no-store"
    code = code_of(decide(auth_url(sim, challenge), user_id=omar))
    r = exchange(sim, code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token_type", "expires_in", "access_token", "scope", "refresh_token"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("bearer", 7200, SCOPE)
    me = httpx.get(f"{sim.url}/2/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["data"] == {"id": omar, "name": world.user(omar).name, "username": world.user(omar).username}
    assert exchange(sim, code, verifier).json() == invalid("Value passed for the authorization code was invalid.")
    assert sim.oauth.authorizations == 1
    refreshed = httpx.post(f"{sim.url}/2/oauth2/token", data={"grant_type": "refresh_token", "client_id": "my-app",
                                                               "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == SCOPE


def test_deny_redirects_with_access_denied_and_a_page_answers_once(sim: Simulator) -> None:
    _, challenge = pkce_pair()
    url = auth_url(sim, challenge, state="s-deny")
    reply = decide(url, "deny")
    assert reply.status_code == 302
    assert parse_qs(urlsplit(reply.headers["location"]).query) == {"error": ["access_denied"], "state": ["s-deny"]}
    page = httpx.get(url)
    rid = re.search(r'name="request" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert httpx.post(url.split("?")[0], data={"request": rid, "decision": "approve",
                                               "user_id": "1"}).status_code == 400     # not an account
    again = httpx.post(url.split("?")[0], data={"request": rid, "decision": "approve", "user_id": "1"})
    assert again.status_code == 400 and "already answered" in again.text


def test_every_check_of_the_code_grant(sim: Simulator, world: World, clock: Clock) -> None:
    verifier, challenge = pkce_pair()
    sim.oauth.auto_approve = True

    def fresh(**kw: str) -> str:
        return code_of(httpx.get(auth_url(sim, challenge, **kw)))

    wrong_verifier = pkce_pair()[0]
    assert exchange(sim, fresh(), wrong_verifier).json() == invalid("Value passed for the code verifier was invalid.")
    assert exchange(sim, fresh(), verifier[:42]).json() == invalid("Value passed for the code verifier was invalid.")
    assert exchange(sim, fresh(), verifier, redirect="http://127.0.0.1:9/other").json() == invalid(
        "Value passed for the redirect uri was invalid.")
    assert exchange(sim, fresh(), verifier, client_id="another-app").json() == invalid(
        "Value passed for the authorization code was invalid.")
    code = fresh()
    clock.now += 31                                       # codes live 30 seconds
    assert exchange(sim, code, verifier).json() == invalid("Value passed for the authorization code was invalid.")
    # each failure above spent its code (single use, even when the exchange fails); a malformed request does not
    code = fresh()
    for missing in ("code", "redirect_uri", "code_verifier"):
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier,
                "client_id": "my-app", missing: ""}
        r = httpx.post(f"{sim.url}/2/oauth2/token", data=form)
        assert r.json() == invalid(f"Missing required parameter [{missing}].")
    assert sim.oauth.authorizations == 0
    ok = exchange(sim, code, verifier)
    assert ok.status_code == 200 and sim.oauth.authorizations == 1
    assert ok.json()["access_token"] and sim.oauth.account_for(ok.json()["access_token"]) == world.accounts()[0]


def test_plain_challenge_confidential_client_and_withheld_scopes(sim: Simulator, world: World) -> None:
    sim.oauth.auto_approve, sim.oauth.login = True, world.accounts()[1]
    verifier = pkce_pair()[0]
    url = auth_url(sim, verifier).replace("code_challenge_method=S256", "code_challenge_method=plain")
    assert exchange(sim, code_of(httpx.get(url)), verifier).status_code == 200
    sim.oauth.client_secret = "s3cret"
    code = code_of(httpx.get(url))
    assert exchange(sim, code, verifier).status_code == 401              # no Basic auth: refused, code kept
    basic = httpx.post(f"{sim.url}/2/oauth2/token", auth=("my-app", "s3cret"),
                       data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                             "code_verifier": verifier})
    assert basic.status_code == 200
    sim.oauth.client_secret = None
    sim.oauth.withhold_scopes = frozenset({"offline.access"})
    body = exchange(sim, code_of(httpx.get(url)), verifier).json()
    assert body["scope"] == "dm.read tweet.read users.read" and "refresh_token" not in body


@pytest.mark.parametrize(("change", "reason"), [
    (("response_type=code", "response_type=token"), "response type"),
    (("client_id=my-app&", ""), "Missing required parameter [client_id]"),
    (("scope=dm.read", "scope=dm.everything"), "scope"),
    (("redirect_uri=http", "redirect_uri=ftp"), "redirect uri"),
    (("state=st-1", "state="), "state"),
    (("code_challenge_method=S256", "code_challenge_method=S512"), "code challenge"),
    (("code_challenge=", "code_challenge=short"), "code challenge"),
])
def test_a_bad_authorization_request_is_a_page_never_a_redirect(sim: Simulator, change: tuple[str, str],
                                                                  reason: str) -> None:
    url = auth_url(sim, pkce_pair()[1]).replace(*change)
    for auto in (False, True):
        sim.oauth.auto_approve = auto
        r = httpx.get(url)
        assert r.status_code == 400 and "location" not in r.headers and "Something went wrong" in r.text
        assert reason in r.text


def test_registered_callbacks_and_the_control_endpoint(sim: Simulator, world: World) -> None:
    verifier, challenge = pkce_pair()
    with httpx.Client(base_url=sim.url) as ctl:
        stats = ctl.post("/_sim/oauth", json={"auto_approve": True, "login": world.accounts()[2],
                                              "redirect_uris": [REDIRECT], "withhold_scopes": []}).json()
        assert (stats["auto_approve"], stats["login"], stats["redirect_uris"]) == (True, world.accounts()[2],
                                                                                   [REDIRECT])
        assert ctl.post("/_sim/oauth", json={"login": "123"}).status_code == 400
        bad = httpx.get(auth_url(sim, challenge, redirect="http://127.0.0.1:9999/callback"))
        assert bad.status_code == 400 and "callback URLs" in bad.text
        token = exchange(sim, code_of(httpx.get(auth_url(sim, challenge))), verifier).json()["access_token"]
        assert sim.oauth.account_for(token) == world.accounts()[2]
        assert ctl.get("/_sim/oauth").json()["authorizations"] == 1


def test_the_request_log_keeps_no_state_challenge_or_code(sim: Simulator) -> None:
    verifier, challenge = pkce_pair()
    code = code_of(decide(auth_url(sim, challenge, state="secret-state-123")), state="secret-state-123")
    exchange(sim, code, verifier)
    logged = repr(sim.request_log)
    for value in ("secret-state-123", challenge, code, verifier):
        assert value not in logged
    assert {route for _, route, _, _ in sim.request_log} == {"oauth_authorize", "oauth_consent", "oauth_token"}


def test_requests_oauthlib_runs_the_whole_flow_against_the_simulator(sim: Simulator, world: World,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party client (requests-oauthlib's OAuth2Session, PKCE S256) agrees with the simulator."""
    from requests_oauthlib import OAuth2Session

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")         # the simulator is plain http on loopback
    sim.oauth.auto_approve, sim.oauth.login = True, world.accounts()[1]
    session = OAuth2Session("my-app", redirect_uri=REDIRECT, scope=SCOPE.split(), pkce="S256")
    url, state = session.authorization_url(f"{sim.url}/i/oauth2/authorize")
    location = httpx.get(url).headers["location"]
    token = session.fetch_token(f"{sim.url}/2/oauth2/token", authorization_response=location, include_client_id=True)
    assert token["refresh_token"] and token["scope"] == SCOPE.split() and parse_qs(urlsplit(location).query)[
        "state"] == [state]
    assert session.get(f"{sim.url}/2/users/me").json()["data"]["id"] == world.accounts()[1]
    refreshed = session.refresh_token(f"{sim.url}/2/oauth2/token", client_id="my-app")
    assert refreshed["refresh_token"] != token["refresh_token"]
