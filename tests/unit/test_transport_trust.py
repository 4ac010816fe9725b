"""Transport and trust, the rules: credentials go over plain http:// only to a loopback host unless the
account sets `allow_insecure_http: true` (checked when the accounts file loads and again when a client is
built); the simulator's address is matched on the parsed scheme, host and port; the simulator's identity
proof depends on the seed and the nonce."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dm_pipeline.accounts import (
    AccountsFileError,
    check_transport,
    endpoint,
    is_loopback_host,
    is_simulator_url,
    load_accounts,
)
from dm_pipeline.clients import build_client
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account, OAuthConfig, Provider
from dm_pipeline.preflight import simulator_provided
from dm_pipeline.settings import load_settings
from dm_pipeline.simulator.control import proof_for

SIM_USER = "9593355274884443"  # an account of the seed-7 world


def entry(base_url: str, extra: str = "") -> str:
    return (f"accounts:\n  - key: x-ada\n    provider: x\n    user_id: \"{SIM_USER}\"\n    base_url: {base_url}\n"
            f"    token_env: DM_X_TOKEN_ADA\n{extra}")


def load(tmp_path: Path, text: str) -> list[Account]:
    path = tmp_path / "accounts.yaml"
    path.write_text(text)
    return load_accounts(path)


def refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "accounts.yaml"
    path.write_text(text)
    with pytest.raises(AccountsFileError) as info:
        load_accounts(path)
    return str(info.value)


# ---------------------------------------------------------------- which hosts are loopback

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "localhost",
                                  "LOCALHOST", "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["127.0.0.1.evil.com", "localhost.evil.com", "evil-localhost", "128.0.0.1",
                                  "10.0.0.1", "0.0.0.0", "::", "::2", "api.x.com", "127.1", "2130706433", ""])
def test_lookalike_and_remote_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


# ---------------------------------------------------------------- the accounts file

@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8765", "http://127.0.0.1", "http://127.9.8.7:1/x",
                                      "http://localhost:8765", "http://[::1]:8765", "https://api.x.com",
                                      "https://127.0.0.1.evil.com", "https://10.0.0.5:8443/api"])
def test_https_anywhere_and_http_to_loopback_load(tmp_path: Path, base_url: str) -> None:
    (account,) = load(tmp_path, entry(base_url))
    assert account.base_url == base_url and account.allow_insecure_http is False


@pytest.mark.parametrize("base_url,host", [
    ("http://api.x.com", "api.x.com"), ("http://127.0.0.1.evil.com:8765", "127.0.0.1.evil.com"),
    ("http://localhost.evil.com", "localhost.evil.com"), ("http://10.0.0.5:8080/api", "10.0.0.5"),
    ("http://evil.com#@127.0.0.1", "evil.com"), ("http://127.0.0.1:80@evil.com", "evil.com"),
    ("http://[::2]:8765", "::2"),
])
def test_http_to_a_remote_host_is_refused_naming_account_host_and_fix(tmp_path: Path, base_url: str,
                                                                     host: str) -> None:
    message = refused(tmp_path, entry(base_url))
    assert message.startswith(f"{tmp_path / 'accounts.yaml'}:5:15: account 'x-ada': `base_url`"), message
    assert f"plain http:// to host {host} " in message and "not a loopback address" in message
    assert "Fix: use https://" in message and "`allow_insecure_http: true`" in message


def test_allow_insecure_http_lets_the_account_use_plain_http(tmp_path: Path) -> None:
    (account,) = load(tmp_path, entry("http://api.x.com", "    allow_insecure_http: true\n"))
    assert account.allow_insecure_http is True and account.base_url == "http://api.x.com"
    check_transport(account)


def test_allow_insecure_http_must_be_a_boolean(tmp_path: Path) -> None:
    message = refused(tmp_path, entry("http://api.x.com", "    allow_insecure_http: sometimes\n"))
    assert ":7:26:" in message and "allow_insecure_http" in message and "true or false" in message


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:87650", "http://127.0.0.1:8765.evil.com",
                                      "http://127.0.0.1:0", "https://api.x.com:99999"])
def test_a_port_that_is_not_a_port_is_refused(tmp_path: Path, base_url: str) -> None:
    message = refused(tmp_path, entry(base_url))
    assert "`base_url` is not a usable URL: its port is not a number from 1 to 65535" in message


def test_an_http_token_url_on_a_remote_host_is_refused(tmp_path: Path) -> None:
    oauth = ("    oauth:\n      client_id_env: X_CLIENT_ID\n      client_secret_env: X_CLIENT_SECRET\n"
             "      token_url: {}\n")
    message = refused(tmp_path, entry("https://api.x.com", oauth.format("http://auth.example.com/2/oauth2/token")))
    assert ":10:18: account 'x-ada': `oauth.token_url`" in message and "host auth.example.com" in message
    load(tmp_path, entry("https://api.x.com", oauth.format("http://127.0.0.1:9/token")))
    load(tmp_path, entry("https://api.x.com", oauth.format("http://auth.example.com/token")
                         + "    allow_insecure_http: true\n"))


def test_every_refused_url_is_listed(tmp_path: Path) -> None:
    text = entry("http://one.example.com") + entry("http://two.example.com").split("\n", 1)[1].replace(
        "key: x-ada", "key: x-bob")
    with pytest.raises(AccountsFileError) as info:
        load(tmp_path, text)
    assert len(info.value.problems) == 2 and "'x-bob'" in info.value.problems[1]


def test_a_url_from_the_environment_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_TEST_X_BASE", "http://api.x.com")
    message = refused(tmp_path, entry("${DM_TEST_X_BASE:-https://api.x.com}"))
    assert "host api.x.com" in message


# ---------------------------------------------------------------- build_client: the second check

def account(base_url: str, *, allow: bool = False, oauth: OAuthConfig | None = None) -> Account:
    return Account(key="acct", provider=Provider.X, user_id=SIM_USER, base_url=base_url, token_env="T",
                   allow_insecure_http=allow, oauth=oauth)


@pytest.mark.parametrize("acct", [
    account("http://api.x.com"), account("http://127.0.0.1.evil.com:8765"), account("http://127.0.0.1:87650"),
    account("https://api.x.com", oauth=OAuthConfig(client_id_env="C", token_url="http://auth.example.com/t")),
    Account(key="acct", provider=Provider.XQUIK, user_id="1", base_url="http://xquik.example.com", token_env="T",
            handle="h", partners=("p",)),
    Account(key="acct", provider=Provider.GETXAPI, user_id="1", base_url="http://getxapi.example.com",
            token_env="T", auth_token_env="A"),
], ids=["x", "lookalike", "bad-port", "token-url", "xquik", "getxapi"])
def test_build_client_refuses_an_account_that_would_send_credentials_in_clear(acct: Account) -> None:
    with httpx.Client() as http, pytest.raises(ConfigError, match=r"account 'acct': `(base_url|oauth\.token_url)`"):
        build_client(acct, http, lookup=lambda name: "secret")


@pytest.mark.parametrize("acct", [account("https://api.x.com"), account("http://127.0.0.1:8765"),
                                  account("http://[::1]:8765"), account("http://api.x.com", allow=True)])
def test_build_client_accepts_https_loopback_and_allowed_http(acct: Account) -> None:
    with httpx.Client() as http:
        assert build_client(acct, http, lookup=lambda name: "secret").account is acct


# ---------------------------------------------------------------- the simulator's address

@pytest.mark.parametrize("url,port,expected", [
    ("http://127.0.0.1:8765", 8765, True),
    ("http://127.0.0.1:8765/xquik/api/v1", 8765, True),
    ("http://127.0.0.1:08765/getxapi", 8765, True),
    ("http://127.0.0.1", 80, True),
    ("http://127.0.0.1:87650", 8765, False),
    ("http://127.0.0.1:8765.evil.com", 8765, False),
    ("http://127.0.0.1.evil.com:8765", 8765, False),
    ("http://127.0.0.1:8766", 8765, False),
    ("https://127.0.0.1:8765", 8765, False),
    ("http://127.0.0.2:8765", 8765, False),
    ("http://localhost:8765", 8765, False),   # may resolve to ::1 first, where the simulator does not listen
    ("http://[::1]:8765", 8765, False),
    ("http://evil.com#@127.0.0.1:8765", 8765, False),
])
def test_the_simulator_address_is_matched_parsed(url: str, port: int, expected: bool) -> None:
    assert is_simulator_url(url, port) is expected


def test_simulator_credentials_go_only_to_accounts_on_its_exact_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_SIMULATOR_PORT", "8765")
    settings = load_settings()
    on = Account(key="on", provider=Provider.X, user_id=SIM_USER, base_url="http://127.0.0.1:8765", token_env="ON")
    lookalikes = [Account(key=f"k{i}", provider=Provider.X, user_id=SIM_USER, base_url=url, token_env=f"OFF{i}")
                  for i, url in enumerate(["http://127.0.0.1:87650", "http://127.0.0.1:8765.evil.com",
                                           "https://127.0.0.1:8765", "http://127.0.0.1.evil.com:8765"])]
    provided = simulator_provided(settings, [on, *lookalikes], Path("accounts.yaml"))
    assert set(provided) == {"ON"}


def test_endpoint_reads_scheme_host_and_default_port() -> None:
    assert (endpoint("https://API.x.com/2").host, endpoint("https://api.x.com").port) == ("api.x.com", 443)
    assert str(endpoint("http://[::1]:8765/x")) == "[::1]:8765"
    with pytest.raises(ValueError):
        endpoint("ftp://example.com")


# ---------------------------------------------------------------- the simulator's identity proof

def test_the_proof_depends_on_seed_and_nonce() -> None:
    nonce = "0" * 32
    assert proof_for(7, nonce) == proof_for(7, nonce)
    assert proof_for(7, nonce) != proof_for(8, nonce)
    assert proof_for(7, nonce) != proof_for(7, "1" * 32)
    assert nonce not in proof_for(7, nonce)
