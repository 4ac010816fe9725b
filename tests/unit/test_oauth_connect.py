"""`accounts connect` without a network: the PKCE pair (RFC 7636, and oauthlib agrees), the authorization
URL, the state, the defaults of the accounts file's `oauth` block, and reading X's redirect."""

from __future__ import annotations

import re
import string
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from dm_pipeline.accounts import AccountsFileError, load_accounts
from dm_pipeline.models import Account, OAuthConfig, Provider
from dm_pipeline.oauth import TokenPair
from dm_pipeline.oauth_callback import Callback, parse_redirect
from dm_pipeline.oauth_connect import (
    DEFAULT_AUTHORIZE_URL,
    DEFAULT_REDIRECT_URI,
    SCOPES,
    authorization_url,
    authorize_url_of,
    challenge_of,
    new_state,
    pkce_pair,
    redirect_uri_of,
    token_url_of,
)

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


def account(base_url: str = "https://api.x.com", **oauth: str) -> Account:
    return Account(key="x-ada", provider=Provider.X, user_id="42", base_url=base_url, token_env=None,
                   oauth=OAuthConfig(client_id_env="X_CLIENT_ID", **oauth))


def test_the_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636, Appendix B
    assert challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_pkce_pairs_are_fresh_well_formed_and_oauthlib_agrees() -> None:
    from oauthlib.oauth2.rfc6749.clients.base import Client

    pairs = [pkce_pair() for _ in range(50)]
    assert len({v for v, _ in pairs}) == 50
    for verifier, challenge in pairs:
        assert 43 <= len(verifier) <= 128 and set(verifier) <= UNRESERVED
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge)
        assert Client("c").create_code_challenge(verifier, "S256") == challenge


def test_states_are_unguessable_and_url_safe() -> None:
    states = {new_state() for _ in range(50)}
    assert len(states) == 50 and all(len(s) >= 43 and set(s) <= UNRESERVED for s in states)


def test_the_authorization_url_carries_every_parameter_x_needs() -> None:
    verifier, challenge = pkce_pair()
    url = authorization_url(DEFAULT_AUTHORIZE_URL, "my-app", DEFAULT_REDIRECT_URI, "st", challenge)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "x.com", "/i/oauth2/authorize")
    assert parse_qs(parts.query, strict_parsing=True) == {
        "response_type": ["code"], "client_id": ["my-app"], "redirect_uri": [DEFAULT_REDIRECT_URI],
        "scope": ["dm.read tweet.read users.read offline.access"], "state": ["st"], "code_challenge": [challenge],
        "code_challenge_method": ["S256"]}
    assert "scope=dm.read%20tweet.read%20users.read%20offline.access" in url      # as X documents it
    assert verifier not in url and " " not in url
    # an authorize URL that has a query already keeps it
    extended = authorization_url("https://proxy.example/authorize?tenant=a", "c", DEFAULT_REDIRECT_URI, "s", challenge)
    assert extended.startswith("https://proxy.example/authorize?tenant=a&response_type=code&")
    assert SCOPES == ("dm.read", "tweet.read", "users.read", "offline.access")


def test_defaults_of_the_oauth_block() -> None:
    real = account()
    assert authorize_url_of(real) == "https://x.com/i/oauth2/authorize"
    assert redirect_uri_of(real) == "http://127.0.0.1:8976/callback"
    assert token_url_of(real) == "https://api.x.com/2/oauth2/token"
    simulator = account("http://127.0.0.1:8765")
    assert authorize_url_of(simulator) == "http://127.0.0.1:8765/i/oauth2/authorize"
    custom = account(authorize_url="https://twitter.com/i/oauth2/authorize", redirect_uri="http://[::1]:9000/cb")
    assert (authorize_url_of(custom), redirect_uri_of(custom)) == ("https://twitter.com/i/oauth2/authorize",
                                                                   "http://[::1]:9000/cb")


@pytest.mark.parametrize(("url", "expected"), [
    (f"{DEFAULT_REDIRECT_URI}?state=s1&code=c1", Callback("c1", "s1")),
    (f"  '{DEFAULT_REDIRECT_URI}/?code=c1&state=s1'\n", Callback("c1", "s1")),      # pasted with quotes, slash
    (f"{DEFAULT_REDIRECT_URI}?error=access_denied&state=s1", Callback(None, "s1", "access_denied")),
    (f"{DEFAULT_REDIRECT_URI}?code=c1", Callback("c1", None)),
    (f"{DEFAULT_REDIRECT_URI}?state=s1", None),                                     # neither code nor error
    ("http://127.0.0.1:8977/callback?code=c1&state=s1", None),                      # another port
    ("http://localhost:8976/callback?code=c1&state=s1", None),                      # another host
    ("http://127.0.0.1:8976/other?code=c1&state=s1", None),                         # another path
    ("https://127.0.0.1:8976/callback?code=c1&state=s1", None),                     # another scheme
    ("c1", None), ("http://127.0.0.1:99999/callback?code=c1", None),
])
def test_reading_the_redirect(url: str, expected: Callback | None) -> None:
    got = parse_redirect(url, DEFAULT_REDIRECT_URI)
    assert got == expected
    if got is not None:
        assert (got.code, got.state) == (expected.code, expected.state)  # type: ignore[union-attr]


def test_no_repr_shows_a_code_or_a_token() -> None:
    assert "c0de" not in repr(Callback("c0de", "st4te")) and "st4te" not in repr(Callback("c0de", "st4te"))
    pair = TokenPair("acc3ss", "r3fresh", None, scope="dm.read")
    assert "acc3ss" not in repr(pair) and "r3fresh" not in repr(pair) and "dm.read" in repr(pair)


def test_the_accounts_file_takes_connect_settings_and_needs_no_token_variable(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n  - key: x-ada\n    provider: x\n    user_id: \"42\"\n    base_url: https://api.x.com\n"
                    "    oauth:\n      client_id_env: X_CLIENT_ID\n      authorize_url: https://x.com/i/oauth2/authorize\n"
                    "      redirect_uri: http://127.0.0.1:9000/callback\n")
    (a,) = load_accounts(path)
    assert a.token_env is None and a.oauth is not None and a.oauth.redirect_uri == "http://127.0.0.1:9000/callback"
    path.write_text(path.read_text().replace("http://127.0.0.1:9000/callback", "http://example.com/callback"))
    with pytest.raises(AccountsFileError) as caught:
        load_accounts(path)
    assert "`oauth.redirect_uri` sends its credentials over plain http:// to host example.com" in str(caught.value)
    path.write_text(path.read_text().replace("    oauth:\n      client_id_env: X_CLIENT_ID\n", "").split(
        "      authorize_url")[0])
    with pytest.raises(AccountsFileError) as missing:
        load_accounts(path)                        # without `oauth`, an X account still needs token_env
    assert "`token_env` is missing" in str(missing.value) and "accounts connect" in str(missing.value)
