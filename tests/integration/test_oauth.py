"""X OAuth 2.0 refresh against the simulator's token endpoint: 2-hour tokens, rotating single-use refresh
tokens, Basic auth for confidential clients, tokens encrypted at rest and never in the audit."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from dm_pipeline.models import OAuthConfig, StreamStatus
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_sync_x import run_sync


@pytest.fixture
def oauth_account(sim, monkeypatch):  # type: ignore[no-untyped-def]
    uid = sim.world.accounts()[0]
    access, refresh = sim.oauth.issue(uid)
    monkeypatch.setenv("DM_PIPELINE_TOKEN_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("T_ACCESS", access)
    monkeypatch.setenv("T_REFRESH", refresh)
    monkeypatch.setenv("T_CLIENT", "sim-client")
    base = sim_account(sim, uid, monkeypatch)
    return replace(base, token_env="T_ACCESS",
                   oauth=OAuthConfig(client_id_env="T_CLIENT", refresh_token_env="T_REFRESH")), refresh


def stored_refresh_token(engine) -> str:  # type: ignore[no-untyped-def]
    import os

    with engine.connect() as conn:
        enc = conn.scalar(text("SELECT refresh_token_enc FROM dm_private.oauth_tokens"))
    return Fernet(os.environ["DM_PIPELINE_TOKEN_KEY"].encode()).decrypt(enc).decode()


def test_an_expired_token_is_refreshed_once_and_the_rotated_pair_is_persisted(engine, sim, oauth_account) -> None:  # type: ignore[no-untyped-def]
    account, first_refresh = oauth_account
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    assert sim.oauth.refreshes == 0
    sim.world.advance(account.user_id, 5)
    sim.oauth.expire(account.user_id)

    result = run_sync(engine, account)
    assert result.status is StreamStatus.SUCCEEDED and result.total("inserted") == 5
    assert sim.oauth.refreshes == 1
    rotated = stored_refresh_token(engine)
    assert rotated != first_refresh
    # X refresh tokens are single-use: the one we spent is dead, the stored one works.
    dead = httpx.post(f"{sim.url}/2/oauth2/token", data={"grant_type": "refresh_token",
                                                         "refresh_token": first_refresh, "client_id": "sim-client"})
    assert dead.status_code == 400
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
    with engine.connect() as conn:
        audit = " ".join(str(tuple(r)) for r in conn.execute(text("SELECT * FROM dm_audit.dm_sync_audit")))
        access_enc, refresh_enc = (bytes(v) for v in conn.execute(text(
            "SELECT access_token_enc, refresh_token_enc FROM dm_private.oauth_tokens")).one())
        whole_row = conn.scalar(text("SELECT row_to_json(t)::text FROM dm_private.oauth_tokens t"))
    import os

    # Encrypted at rest, both columns: each decrypts, with the key, to the pair the refresh issued (the access
    # token is the live one the simulator knows for this account; the refresh token is the rotated one, and
    # the token endpoint still accepts it, below), and no plaintext token, current or spent, is in either.
    fernet = Fernet(os.environ["DM_PIPELINE_TOKEN_KEY"].encode())
    access, refresh = fernet.decrypt(access_enc).decode(), fernet.decrypt(refresh_enc).decode()
    first_access = os.environ[account.token_env]
    assert access != first_access and sim.oauth.account_for(access) == account.user_id
    assert refresh == rotated != first_refresh
    tokens = (access, refresh, first_access, first_refresh)
    for column in (access_enc, refresh_enc):
        for token in tokens:
            assert token.encode() not in column
    assert not [t for t in tokens if t in whole_row or t in audit]
    live = httpx.post(f"{sim.url}/2/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": refresh,
                                                         "client_id": "sim-client"})
    assert live.status_code == 200, "the stored refresh token is not the live one"


def test_a_token_known_to_be_expired_is_refreshed_before_any_request(engine, sim, oauth_account) -> None:  # type: ignore[no-untyped-def]
    account, _ = oauth_account
    run_sync(engine, account)
    with engine.begin() as conn:
        conn.execute(text("UPDATE dm_private.oauth_tokens SET expires_at = now() - interval '1 hour'"))
    sim.oauth.expire(account.user_id)
    before = len(sim.request_log)
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    statuses = [status for _, route, status, _ in sim.request_log[before:] if route != "oauth_token"]
    assert 401 not in statuses and sim.oauth.refreshes == 1


def test_a_confidential_client_sends_basic_auth(engine, sim, oauth_account, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    account, _ = oauth_account
    sim.oauth.client_secret = "s3cret"
    run_sync(engine, account)
    sim.oauth.expire(account.user_id)
    (stream,) = run_sync(engine, account).streams  # no secret configured: the token endpoint refuses
    assert stream.status is StreamStatus.FAILED and stream.error_code == "refresh_rejected"
    monkeypatch.setenv("T_SECRET", "s3cret")
    confidential = replace(account, oauth=replace(account.oauth, client_secret_env="T_SECRET"))
    assert run_sync(engine, confidential).status is StreamStatus.SUCCEEDED
    assert sim.oauth.refreshes == 1


def test_a_wrong_encryption_key_is_a_clear_config_error(engine, sim, oauth_account, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    account, _ = oauth_account
    run_sync(engine, account)
    monkeypatch.setenv("DM_PIPELINE_TOKEN_KEY", Fernet.generate_key().decode())
    (stream,) = run_sync(engine, account).streams
    assert stream.status is StreamStatus.FAILED and stream.error_code == "config_error"


def token_posts(sim) -> int:  # type: ignore[no-untyped-def]
    return int(sim.requests(route="oauth_token"))


def rejected_at(engine):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.scalar(text("SELECT refresh_rejected_at FROM dm_private.oauth_tokens"))


def spend(sim, refresh: str) -> None:  # type: ignore[no-untyped-def]
    """Another client spends the refresh token (X tokens are single-use): ours is refused from now on."""
    r = httpx.post(f"{sim.url}/2/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": refresh,
                                                      "client_id": "sim-client"})
    assert r.status_code == 200


def manager(engine, account, http):  # type: ignore[no-untyped-def]
    import os

    from dm_pipeline.oauth import XOAuth

    return XOAuth(account, engine, http, lambda name: os.environ.get(name) if name else None)


def test_a_refused_refresh_token_is_posted_once_across_runs_and_a_fresh_exported_pair_recovers(  # type: ignore[no-untyped-def]
        engine, sim, oauth_account, monkeypatch) -> None:
    account, first_refresh = oauth_account
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    # a second stream, not synced yet: it would need a request of its own
    account = replace(account, conversation_ids=(sim.world.conversations_of(account.user_id)[0].id,))
    spend(sim, first_refresh)
    sim.oauth.expire(account.user_id)
    posts = token_posts(sim)

    inbox, conversation = run_sync(engine, account).streams
    assert (inbox.status, inbox.error_code, inbox.http_status) == (StreamStatus.FAILED, "refresh_rejected", 400)
    assert inbox.requests == 2                            # the 401 and the refused POST
    assert conversation.status is StreamStatus.SKIPPED and conversation.requests == 0
    assert token_posts(sim) == posts + 1 and rejected_at(engine) is not None

    before = len(sim.request_log)
    inbox, conversation = run_sync(engine, account).streams   # the next run: no request at all
    assert (inbox.status, inbox.error_code, inbox.http_status, inbox.requests) == (
        StreamStatus.FAILED, "refresh_rejected", None, 0)
    assert conversation.status is StreamStatus.SKIPPED
    assert len(sim.request_log) == before and token_posts(sim) == posts + 1
    with engine.connect() as conn:
        job = conn.execute(text("SELECT requests, http_status, error_code FROM dm_audit.dm_sync_audit "
                                "WHERE row_kind = 'job' AND stream_key = 'dm_events' ORDER BY audit_id DESC")).all()
    assert [tuple(r) for r in job[:2]] == [(0, None, "refresh_rejected"), (2, 400, "refresh_rejected")]

    # The operator authorizes again and exports the new pair: stored in place of the refused one, used as is.
    access, refresh = sim.oauth.issue(account.user_id)
    monkeypatch.setenv("T_ACCESS", access)
    monkeypatch.setenv("T_REFRESH", refresh)
    sim.world.advance(account.user_id, 3)
    result = run_sync(engine, account)
    assert result.status is StreamStatus.SUCCEEDED and result.total("inserted") == 3
    assert token_posts(sim) == posts + 1                   # a fresh access token needs no refresh
    assert rejected_at(engine) is None and stored_refresh_token(engine) == refresh
    # and its refresh token rotates as usual when that access token expires
    sim.oauth.expire(account.user_id)
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    assert token_posts(sim) == posts + 2 and stored_refresh_token(engine) not in (refresh, first_refresh)
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))


def test_two_processes_post_a_refused_refresh_token_once(engine, sim, oauth_account) -> None:  # type: ignore[no-untyped-def]
    import os

    from dm_pipeline.errors import AuthError

    account, first_refresh = oauth_account
    with httpx.Client() as http:
        a, b = manager(engine, account, http), manager(engine, account, http)
        assert a.access_token() == b.access_token() == os.environ["T_ACCESS"]
        spend(sim, first_refresh)
        posts = token_posts(sim)
        with pytest.raises(AuthError) as refused:
            a.refresh()                                     # e.g. on a 401
        assert (refused.value.error_code, refused.value.http_status, refused.value.requests) == (
            "refresh_rejected", 400, 1)
        assert rejected_at(engine) is not None             # committed although the refresh raised
        for call in (b.refresh, b.access_token, a.access_token):
            with pytest.raises(AuthError) as again:
                call()
            assert (again.value.error_code, again.value.http_status, again.value.requests) == (
                "refresh_rejected", None, 0)
        assert token_posts(sim) == posts + 1
    message = str(again.value)
    assert "refused" in message and rejected_at(engine).astimezone(UTC).strftime("%Y-%m-%d %H:%M") in message
    assert not message.endswith("…") and not str(refused.value).endswith("…")   # the fix is not cut off
    assert "T_ACCESS" in message and "T_REFRESH" in message and "authorize" in message
    for secret in (first_refresh, os.environ["T_ACCESS"], stored_refresh_token(engine)):
        assert secret not in message and secret not in str(refused.value)


def test_an_exported_refresh_token_alone_is_refreshed_before_use(engine, sim, oauth_account, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    account, first_refresh = oauth_account
    run_sync(engine, account)
    spend(sim, first_refresh)
    sim.oauth.expire(account.user_id)
    assert run_sync(engine, account).streams[0].error_code == "refresh_rejected"
    _, refresh = sim.oauth.issue(account.user_id)
    monkeypatch.setenv("T_REFRESH", refresh)              # T_ACCESS still holds the dead access token
    posts, refreshes = token_posts(sim), sim.oauth.refreshes
    result = run_sync(engine, account)
    assert result.status is StreamStatus.SUCCEEDED and result.total("requests") == 1   # no 401 first
    assert token_posts(sim) == posts + 1 and sim.oauth.refreshes == refreshes + 1
    assert rejected_at(engine) is None and stored_refresh_token(engine) not in (refresh, first_refresh)


def test_a_client_refusal_or_an_outage_of_the_token_endpoint_is_not_remembered(engine, sim, oauth_account) -> None:  # type: ignore[no-untyped-def]
    account, _ = oauth_account
    run_sync(engine, account)
    sim.oauth.expire(account.user_id)
    for kind, code, status in (("503", "refresh_failed", 503), ("401", "refresh_rejected", 401)):
        sim.faults.inject(None, "oauth_token", kind)
        (stream,) = run_sync(engine, account).streams
        assert (stream.status, stream.error_code, stream.http_status, stream.requests) == (
            StreamStatus.FAILED, code, status, 2)
        assert rejected_at(engine) is None                 # X did not refuse the refresh token itself
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED and sim.oauth.refreshes == 1


@pytest.mark.parametrize(("kind", "params"), [("malformed_json", {}), ("html", {"status": 200})])
def test_a_refresh_reply_that_is_no_token_is_a_typed_error(engine, sim, oauth_account, kind, params) -> None:  # type: ignore[no-untyped-def]
    account, _ = oauth_account
    run_sync(engine, account)
    sim.oauth.expire(account.user_id)
    sim.faults.inject(None, "oauth_token", kind, **params)
    (stream,) = run_sync(engine, account).streams
    assert (stream.status, stream.error_code, stream.http_status, stream.requests) == (
        StreamStatus.FAILED, "refresh_unparseable", 200, 2)
    # The simulator's fault left the token unspent: the next run refreshes with it.
    assert run_sync(engine, account).status is StreamStatus.SUCCEEDED and sim.oauth.refreshes == 1


@pytest.mark.parametrize("reply", [
    httpx.Response(200, content=b"not json"), httpx.Response(200, json=["access_token"]),
    httpx.Response(200, json="token"), httpx.Response(200, json={"token_type": "bearer"}),
    httpx.Response(200, json={"access_token": 12345}), httpx.Response(200, json={"access_token": ""}),
    httpx.Response(200, json={"access_token": "new-access", "refresh_token": {"x": 1}}),
])
def test_an_unparseable_refresh_reply_says_the_token_may_be_spent(engine, oauth_account, reply) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.errors import AuthError

    account, refresh = oauth_account
    posts: list[httpx.Request] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return reply

    with httpx.Client(transport=httpx.MockTransport(token_endpoint)) as http:
        oauth = manager(engine, account, http)
        oauth.access_token()
        with pytest.raises(AuthError) as info:
            oauth.refresh()
    exc = info.value
    assert (exc.error_code, exc.http_status, exc.requests, len(posts)) == ("refresh_unparseable", 200, 1, 1)
    assert exc.__cause__ is None
    message = str(exc)
    assert "may have been spent" in message and message.endswith("export the new pair under T_ACCESS and T_REFRESH")
    assert refresh not in message and "new-access" not in message
    assert stored_refresh_token(engine) == refresh and oauth.refreshes == 0


def test_a_lenient_expires_in_keeps_a_token_reply(engine, oauth_account) -> None:  # type: ignore[no-untyped-def]
    account, _ = oauth_account
    reply = {"access_token": "new-access", "refresh_token": "new-refresh", "expires_in": "soon"}
    with httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=reply))) as http:
        oauth = manager(engine, account, http)
        oauth.access_token()
        assert oauth.refresh() == "new-access"
    assert stored_refresh_token(engine) == "new-refresh"
