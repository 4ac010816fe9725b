"""`accounts connect` against the simulator, in process: the flow runs in a thread, a person is played by
httpx (consent page, Approve / Deny, then the redirect to the loopback callback). Approve stores a pair a
sync uses and refreshes; deny, a wrong state, no offline.access, another account, a spent code, a timeout
store nothing. Waits are on events and HTTP answers, never on sleeps."""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import replace
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, text

from dm_pipeline.models import Account, OAuthConfig, Provider, StreamStatus
from dm_pipeline.oauth_connect import Connected, ConnectError, connect
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_sync_x import run_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def account(sim, monkeypatch) -> Account:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DM_PIPELINE_TOKEN_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("T_CLIENT", "my-app")
    return Account(key="x-ada", provider=Provider.X, user_id=sim.world.accounts()[0], base_url=sim.url,
                   token_env=None, page_size=50,
                   oauth=OAuthConfig(client_id_env="T_CLIENT", redirect_uri=f"http://127.0.0.1:{free_port()}/callback"))


def env(name: str | None) -> str | None:
    return (os.environ.get(name) or None) if name else None


class Flow:
    """connect() in a thread: what it says, the URL it prints (an event), how it ended."""

    def __init__(self, account: Account, engine: Engine, *, paste: IO[str] | None = None,
                 timeout_s: float = 60) -> None:
        self.account, self.lines, self.url = account, [], ""
        self.printed = threading.Event()
        self.result: Connected | None = None
        self.error: Exception | None = None
        kwargs: dict[str, Any] = {"secret": env, "say": self._say, "paste": paste, "timeout_s": timeout_s}
        self.thread = threading.Thread(target=self._run, args=(engine, kwargs), daemon=True)
        self.thread.start()

    def _say(self, line: str) -> None:
        self.lines.append(line)
        if "/oauth2/authorize?" in line:
            self.url = line
            self.printed.set()

    def _run(self, engine: Engine, kwargs: dict[str, Any]) -> None:
        try:
            self.result = connect(self.account, engine, **kwargs)
        except Exception as exc:
            self.error = exc
        finally:
            self.printed.set()

    def authorize_url(self) -> str:
        assert self.printed.wait(30) and self.url, (self.lines, self.error)
        return self.url

    def end(self) -> Connected:
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def decide(url: str, decision: str = "approve", user_id: str | None = None) -> str:
    """The consent page, as a person answers it: returns where X sends the browser."""
    page = httpx.get(url)
    rid = re.search(r'name="request" value="([^"]+)"', page.text)
    selected = re.search(r'<option value="(\d+)" selected>', page.text)
    assert rid and selected, page.text
    reply = httpx.post(url.split("?")[0], data={"request": rid.group(1), "user_id": user_id or selected.group(1),
                                                "decision": decision})
    assert reply.status_code == 302, reply.text
    return str(reply.headers["location"])


def land(location: str) -> httpx.Response:
    """The browser follows the redirect to the loopback callback; the page answers once the flow decided."""
    return httpx.get(location, timeout=90)


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM dm_private.oauth_tokens")).mappings())


def decrypt(value: bytes) -> str:
    return Fernet(os.environ["DM_PIPELINE_TOKEN_KEY"].encode()).decrypt(bytes(value)).decode()


def no_secret_in(flow: Flow, *texts: str) -> None:
    """No token, code or verifier in anything the flow said, raised or showed."""
    corpus = "\n".join([*flow.lines, str(flow.error or ""), *texts])
    assert not re.search(r"[?&]code=", corpus)
    assert "code_verifier" not in corpus


def test_approve_stores_a_pair_that_syncs_and_refreshes(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(account, engine)
    location = decide(flow.authorize_url())
    code = parse_qs(urlsplit(location).query)["code"][0]
    page = land(location)
    done = flow.end()
    assert page.status_code == 200 and "<h1>Connected</h1>" in page.text and "@ada_" in page.text
    assert (done.user_id, done.scope) == (account.user_id, "dm.read tweet.read users.read offline.access")
    (row,) = stored(engine)
    access, refresh = decrypt(row["access_token_enc"]), decrypt(row["refresh_token_enc"])
    assert sim.oauth.account_for(access) == account.user_id and sim.oauth.authorizations == 1
    assert (row["scope"], row["refresh_rejected_at"], row["last_refreshed_at"]) == (done.scope, None, None)
    assert row["authorized_at"] is not None and row["expires_at"] == done.expires_at
    no_secret_in(flow, page.text)
    for secret in (access, refresh, code):
        assert secret not in "\n".join(flow.lines) and secret not in page.text

    result = run_sync(engine, account)                      # the stored pair, no variable at all
    assert result.status is StreamStatus.SUCCEEDED and sim.oauth.refreshes == 0
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
    sim.world.advance(account.user_id, 3)
    sim.oauth.expire(account.user_id)
    assert run_sync(engine, account).total("inserted") == 3 and sim.oauth.refreshes == 1
    (row,) = stored(engine)
    assert decrypt(row["refresh_token_enc"]) != refresh and row["last_refreshed_at"] is not None
    assert row["scope"] == done.scope                      # the refresh reply's scope, the same


@pytest.mark.parametrize(("case", "fragment"), [
    ("deny", "the authorization was denied on X"),
    ("wrong_state", "the redirect's state does not match"),
    ("no_offline_access", "X granted no offline.access"),
    ("another_account", "the X account that approved is @"),
    ("spent_code", "X refused the authorization code (HTTP 400 invalid_request)"),
])
def test_what_stores_nothing(engine, sim, account, case: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    if case == "no_offline_access":
        sim.oauth.withhold_scopes = frozenset({"offline.access"})
    flow = Flow(account, engine)
    location = decide(flow.authorize_url(), decision="deny" if case == "deny" else "approve",
                      user_id=sim.world.accounts()[2] if case == "another_account" else None)
    if case == "wrong_state":
        location = re.sub(r"state=[^&]+", "state=forged", location)
    if case == "spent_code":                               # someone else exchanged it first (codes are single-use)
        code = parse_qs(urlsplit(location).query)["code"][0]
        assert httpx.post(f"{sim.url}/2/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": "my-app", "code_verifier": "x" * 43,
            "redirect_uri": account.oauth.redirect_uri}).status_code == 400
    page = land(location)
    with pytest.raises(ConnectError) as caught:
        flow.end()
    message = str(caught.value)
    assert fragment in message and "nothing stored" in message and "Fix: " in message
    assert caught.value.exit_code == (2 if case == "another_account" else 1)
    assert "<h1>Not connected</h1>" in page.text and fragment.split(" (")[0] in page.text.replace("&#x27;", "'")
    assert stored(engine) == []
    no_secret_in(flow, page.text)


def test_a_pasted_url_works_and_a_busy_port_leaves_pasting(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    read_fd, write_fd = os.pipe()
    with socket.socket() as busy, os.fdopen(read_fd) as stdin, os.fdopen(write_fd, "w") as typed:
        busy.bind(("127.0.0.1", urlsplit(account.oauth.redirect_uri).port))
        busy.listen()
        flow = Flow(account, engine, paste=stdin)
        location = decide(flow.authorize_url())
        typed.write("not the URL\n")
        typed.write(f"  {location}  \n")
        typed.flush()
        done = flow.end()
    assert done.user_id == account.user_id and len(stored(engine)) == 1
    assert any(line.startswith("note: cannot listen on") for line in flow.lines)
    assert any(line.startswith("that is not the URL the browser was redirected to") for line in flow.lines)
    no_secret_in(flow)


def test_without_a_listener_a_closed_stdin_ends_it(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    remote = replace(account, oauth=replace(account.oauth, redirect_uri="https://app.example/callback"))
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    with os.fdopen(read_fd) as stdin:
        flow = Flow(remote, engine, paste=stdin)
        with pytest.raises(ConnectError, match="standard input closed before a redirected URL was pasted"):
            flow.end()
    with pytest.raises(Exception, match="is not an http:// address on this machine"):
        Flow(remote, engine).end()                          # and without --no-browser it cannot listen at all


def test_a_timeout_stores_nothing(engine, sim, account) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(account, engine, timeout_s=1)
    flow.authorize_url()
    with pytest.raises(ConnectError, match=r"no answer from X within 1 second: nothing stored\. Fix: .*--timeout"):
        flow.end()
    assert stored(engine) == []
    with socket.socket() as probe:                          # the callback server is gone
        assert probe.connect_ex(("127.0.0.1", urlsplit(account.oauth.redirect_uri).port)) != 0


def test_connect_replaces_a_refused_pair_and_a_confidential_client_needs_its_secret(  # type: ignore[no-untyped-def]
        engine, sim, account, monkeypatch) -> None:
    flow = Flow(account, engine)
    land(decide(flow.authorize_url()))
    flow.end()
    with engine.begin() as conn:
        conn.execute(text("UPDATE dm_private.oauth_tokens SET refresh_rejected_at = now()"))
    sim.oauth.expire(account.user_id)
    assert run_sync(engine, account).streams[0].error_code == "refresh_rejected"

    sim.oauth.client_secret = "s3cret"
    flow = Flow(account, engine)
    land(decide(flow.authorize_url()))
    with pytest.raises(ConnectError, match="X refused the OAuth client") as refused:
        flow.end()
    assert refused.value.exit_code == 2
    monkeypatch.setenv("T_SECRET", "s3cret")
    confidential = replace(account, oauth=replace(account.oauth, client_secret_env="T_SECRET"))
    flow = Flow(confidential, engine)
    land(decide(flow.authorize_url()))
    flow.end()
    (row,) = stored(engine)
    assert row["refresh_rejected_at"] is None and row["authorized_at"] is not None
    assert run_sync(engine, confidential).status is StreamStatus.SUCCEEDED
