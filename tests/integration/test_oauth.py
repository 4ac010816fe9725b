"""X OAuth 2.0 refresh against the simulator's token endpoint: 2-hour tokens, rotating single-use refresh
tokens, Basic auth for confidential clients, tokens encrypted at rest and never in the audit."""

from __future__ import annotations

from dataclasses import replace

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
        raw_tokens = conn.scalar(text("SELECT access_token_enc::text FROM dm_private.oauth_tokens"))
    assert rotated not in audit and first_refresh not in audit
    assert rotated not in (raw_tokens or "")  # encrypted at rest


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
