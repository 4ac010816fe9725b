"""The accounts file: valid files load; each mistake names the file, the line and column, the key and the
fix; the example file documents (and validates) every option; required environment variables are known."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dm_pipeline.accounts import (
    TOKEN_KEY_ENV,
    AccountEntry,
    AccountsFileError,
    ConversationsEntry,
    OAuthEntry,
    describe_missing,
    load_accounts,
    missing_env,
    required_env,
    select_accounts,
)
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Provider
from dm_pipeline.settings import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "config" / "accounts.example.yaml"
GOOD = """\
accounts:
  - key: x-ada
    provider: x
    user_id: "1000000000000000001"
    base_url: ${TEST_BASE:-http://127.0.0.1:8765}
    token_env: DM_X_TOKEN_ADA
"""
XQUIK = """\
  - key: xq
    provider: xquik
    user_id: "42"
    base_url: https://xquik.com/api/v1
    token_env: XQ_KEY
    handle: support_team
    partners: [some_user]
"""
GETXAPI = """\
  - key: gx
    provider: getxapi
    user_id: "42"
    base_url: https://api.getxapi.com
    token_env: GX_KEY
    auth_token_env: GX_AUTH
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_accounts(path)
    message = str(info.value)
    assert str(path) in message and "Traceback" not in message
    return message


def test_a_valid_file_loads_with_env_defaults(tmp_path: Path) -> None:
    (account,) = load_accounts(_write(tmp_path, GOOD))
    assert account.key == "x-ada" and account.base_url == "http://127.0.0.1:8765"


def test_env_interpolation_uses_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_BASE", "https://api.x.com/")
    (account,) = load_accounts(_write(tmp_path, GOOD))
    assert account.base_url == "https://api.x.com"


def test_defaults_may_nest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD.replace("${TEST_BASE:-http://127.0.0.1:8765}", "${TEST_BASE:-http://127.0.0.1:${TEST_PORT:-8765}}")
    monkeypatch.delenv("TEST_BASE", raising=False)
    monkeypatch.setenv("TEST_PORT", "8795")
    assert load_accounts(_write(tmp_path, text))[0].base_url == "http://127.0.0.1:8795"
    monkeypatch.setenv("TEST_BASE", "https://api.x.com")
    assert load_accounts(_write(tmp_path, text))[0].base_url == "https://api.x.com"


@pytest.mark.parametrize("text,expect", [
    # wrong values: file:line:column, the key, what it must be, the fix
    (GOOD.replace('"1000000000000000001"', '"@ada"'), [":4:14:", "accounts[0].user_id", "'@ada'", "numeric", "Fix:"]),
    (GOOD.replace('"1000000000000000001"', "1000000000000000001"), [":4:14:", "number, not a string",
                                                                      'quote it: "1000000000000000001"']),
    (GOOD.replace("provider: x", "provider: myspace"), [":3:15:", "'myspace' is not supported", "x, xquik, getxapi"]),
    (GOOD.replace("key: x-ada", "key: X Ada"), [":2:10:", "accounts[0].key", "lower-case", "Fix:"]),
    (GOOD.replace("${TEST_BASE:-http://127.0.0.1:8765}", "ftp://example.com"), [":5:15:", "base_url",
                                                                                  "https://api.x.com"]),
    (GOOD.replace("${TEST_BASE:-http://127.0.0.1:8765}", "http://api.x.com"), [
        ":5:15:", "account 'x-ada': `base_url`", "plain http:// to host api.x.com", "Fix: use https://",
        "`allow_insecure_http: true`"]),
    (GOOD + "    allow_insecure_http: maybe\n", [":7:26:", "allow_insecure_http", "'maybe'", "true or false"]),
    (GOOD + "    page_size: 500\n", [":7:16:", "page_size", "from 1 to 100", "Fix:"]),
    (GOOD + "    page_size: lots\n", [":7:16:", "page_size", "whole number"]),
    (GOOD + '    conversations:\n      ids: ["12-x"]\n', [":8:13:", "conversations.ids[0]", "'12-x'",
                                                          "conversation ID", "Fix:"]),
    (GOOD + '    conversations:\n      participants: ["@bob"]\n', [":8:22:", "participants[0]", "numeric"]),
    (GOOD + "    conversations:\n      discover: maybe\n", [":8:17:", "discover", "true or false"]),
    (GOOD + "    conversations: yes\n", [":7:20:", "conversations", "mapping"]),
    (GOOD + "    oauth:\n      refresh_token_env: R\n", [":8:7:", "oauth.client_id_env", "missing",
                                                                "Fix: write e.g. `client_id_env: X_CLIENT_ID`"]),
    (GOOD.replace("    token_env", "    tokn_env"), [":6:15:", "unknown key `tokn_env`",
                                                    "did you mean `token_env`?", "accounts.example.yaml"]),
    (GOOD.replace("    token_env: DM_X_TOKEN_ADA\n", ""), [":2:5:", "`token_env` is missing", "Fix:"]),
    (GOOD.replace("  - key: x-ada\n", "  - key: x-ada\n   bad: [\n"), [":", "invalid YAML", "Fix:"]),
    (GOOD + GOOD.split("\n", 1)[1], [":7:10:", "'x-ada' appears twice", "Fix: rename"]),
    (GOOD + "    token_env: OTHER\n", [":7:5:", "`token_env` appears twice"]),
    (GOOD.replace("${TEST_BASE:-http://127.0.0.1:8765}", "${DM_UNSET_VAR_FOR_TEST}"),
     [":5:15:", "base_url", "DM_UNSET_VAR_FOR_TEST", "export"]),
    ("accounts:\n  - just-a-string\n", [":2:5:", "must be a mapping"]),
    ("accounts:\n", ["accounts", "list of account entries"]),
    ("acounts: []\n", [":1:10:", "unknown key `acounts`", "did you mean `accounts`?", "1 more problem"]),
    ("", ["must be a mapping with an `accounts:` list"]),
    # provider-specific keys
    ("accounts:\n" + XQUIK.replace("    handle: support_team\n", ""), ["needs `handle`", "Fix:"]),
    ("accounts:\n" + XQUIK.replace("[some_user]", "[way_too_long_username]"), [":8:16:", "partners[0]",
                                                                              "at most 15"]),
    ("accounts:\n" + GETXAPI.replace("    auth_token_env: GX_AUTH\n", ""), ["needs `auth_token_env`"]),
    ("accounts:\n" + GETXAPI + "    ct0_env: GX_CT0\n", ["`ct0_env` and `twid_env` go together"]),
    ("accounts:\n" + GETXAPI + "    tabs: [all, spam]\n", [":8:17:", "tabs[1]", "'spam'", "all, requests or hidden"]),
    ("accounts:\n" + GETXAPI + "    tabs: []\n", ["tabs", "at least one tab"]),
    (GOOD + "    handle: ada\n", ["`handle` applies to provider xquik only", "Fix: remove"]),
    (GOOD + "    tabs: [all]\n", ["`tabs` applies to provider getxapi only"]),
])
def test_mistakes_are_explained(tmp_path: Path, text: str, expect: list[str]) -> None:
    message = _error(tmp_path, text)
    for fragment in expect:
        assert fragment in message, message


def test_a_yaml_error_names_file_line_and_column(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.replace("    provider: x\n", "\tprovider: x\n"))
    assert re.search(r"accounts\.yaml:3:1: invalid YAML: .*Fix: YAML indents with spaces, never tabs", message)


def test_a_secret_pasted_into_an_env_key_is_never_echoed(tmp_path: Path) -> None:
    secret = "AAAAsecretTOKENvalue123"
    message = _error(tmp_path, GOOD.replace("token_env: DM_X_TOKEN_ADA", f'token_env: "{secret}"'))
    assert secret not in message
    assert "NAME of an environment variable" in message and "not shown" in message


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace('"1000000000000000001"', '"@ada"').replace("provider: x", "provider: y"))
    with pytest.raises(AccountsFileError) as info:
        load_accounts(path)
    assert len(info.value.problems) == 2
    assert "1 more problem" in str(info.value) and "accounts validate" in str(info.value)


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DM_PIPELINE_ACCOUNTS"):
        load_accounts(tmp_path / "nope.yaml")


def test_the_shipped_accounts_file_is_valid() -> None:
    assert len(load_accounts(PROJECT_ROOT / "config" / "accounts.yaml")) >= 3


# ---------------------------------------------------------------- the example file

def test_the_example_file_is_valid_and_needs_only_its_declared_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DM_X_BASE_URL", raising=False)
    accounts = load_accounts(EXAMPLE)
    assert {a.provider for a in accounts} == set(Provider)
    assert {a.base_url for a in accounts} == {"https://api.x.com", "https://xquik.com/api/v1",
                                               "https://api.getxapi.com"}
    needed = {n.name for a in accounts for n in required_env(a)}
    assert missing_env(accounts, lambda name: None)  # nothing set: something is missing
    env = {name: "set" for name in needed}
    assert missing_env(accounts, env.get) == []


def test_the_example_file_shows_every_option() -> None:
    text = EXAMPLE.read_text()
    options = set(AccountEntry.model_fields) | set(OAuthEntry.model_fields) | set(ConversationsEntry.model_fields)
    shown = {o for o in options if re.search(rf"^\s*-?\s*{o}:", text, re.MULTILINE)}
    assert shown == options, f"not in the example: {sorted(options - shown)}"
    commented = [line for line in text.splitlines() if line.strip() and "#" in line]
    assert len(commented) > 40  # it explains, not just lists


# ---------------------------------------------------------------- environment variables

def test_required_env_per_provider(tmp_path: Path) -> None:
    x, xq, gx = load_accounts(_write(tmp_path, GOOD + XQUIK + GETXAPI.replace(
        "    auth_token_env: GX_AUTH\n", "    auth_token_env: GX_AUTH\n    ct0_env: GX_CT0\n    twid_env: GX_TWID\n")))
    assert [n.name for n in required_env(x)] == ["DM_X_TOKEN_ADA"]
    assert [n.name for n in required_env(xq)] == ["XQ_KEY"]
    assert [n.name for n in required_env(gx)] == ["GX_KEY", "GX_AUTH", "GX_CT0", "GX_TWID"]


def test_oauth_needs_client_key_and_first_tokens_until_they_are_stored(tmp_path: Path) -> None:
    (x,) = load_accounts(_write(tmp_path, GOOD + "    oauth:\n      client_id_env: CID\n"
                                             "      refresh_token_env: RT\n"))
    first = {n.name for n in required_env(x)}
    assert first == {"CID", TOKEN_KEY_ENV, "DM_X_TOKEN_ADA"}
    assert {n.name for n in required_env(x, oauth_tokens_stored=True)} == {"CID", TOKEN_KEY_ENV}
    # the refresh token alone is enough for the first run
    assert missing_env([x], {"CID": "c", TOKEN_KEY_ENV: "k", "RT": "r"}.get) == []
    assert [n.name for n in missing_env([x], {"CID": "c", TOKEN_KEY_ENV: "k"}.get)] == ["DM_X_TOKEN_ADA"]


def test_a_missing_variable_message_names_file_line_key_and_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + XQUIK)
    accounts = load_accounts(path)
    missing = missing_env(accounts, lambda name: None)
    message = describe_missing(missing, path)
    assert message.startswith(f"{path}:6:16: environment variable DM_X_TOKEN_ADA is not set")
    assert "`token_env` of account 'x-ada'" in message and "Fix: export DM_X_TOKEN_ADA=" in message
    assert "also not set: XQ_KEY" in message
    # variables the simulator will provide are not missing
    assert missing_env(accounts, lambda name: None, provided={"DM_X_TOKEN_ADA", "XQ_KEY"}) == []


def test_an_unknown_account_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + XQUIK)
    accounts = load_accounts(path)
    assert [a.key for a in select_accounts(accounts, ["xq"], path)] == ["xq"]
    assert [a.key for a in select_accounts(accounts, [], path)] == ["x-ada", "xq"]
    with pytest.raises(ConfigError, match=r"unknown account key 'nope' .*Known keys: x-ada, xq"):
        select_accounts(accounts, ["nope"], path)


# ---------------------------------------------------------------- cost settings

def test_cost_settings_default(tmp_path: Path) -> None:
    (account,) = load_accounts(_write(tmp_path, GOOD))
    assert (account.daily_budget, account.max_poll_interval_s, account.poll_backoff_after) == (None, 3600, 2)


@pytest.mark.parametrize("budget", ["500", "{daily: 500}", '"500"', "${DM_UNSET_BUDGET_FOR_TEST:-500}"])
def test_budget_is_a_number_or_a_daily_mapping(tmp_path: Path, budget: str) -> None:
    (account,) = load_accounts(_write(tmp_path, GOOD + f"    budget: {budget}\n"))
    assert account.daily_budget == 500


def test_cost_settings_apply_to_every_provider(tmp_path: Path) -> None:
    extra = "    budget: 7\n    max_poll_interval: 90s\n    poll_backoff_after: 4\n"
    accounts = load_accounts(_write(tmp_path, GOOD + extra + XQUIK + extra + GETXAPI + extra))
    assert [(a.daily_budget, a.max_poll_interval_s, a.poll_backoff_after) for a in accounts] == [(7, 90, 4)] * 3


@pytest.mark.parametrize("value,seconds", [("30m", 1800), ("0", 0), ('"0"', 0), ("1h", 3600), ("120", 120),
                                           ('"90s"', 90), ("2d", 172800), ("7d", 604800), ("1H", 3600)])
def test_max_poll_interval_is_a_duration(tmp_path: Path, value: str, seconds: int) -> None:
    (account,) = load_accounts(_write(tmp_path, GOOD + f"    max_poll_interval: {value}\n"))
    assert account.max_poll_interval_s == seconds


@pytest.mark.parametrize("text,expect", [
    (GOOD + "    budget: 0\n", [":7:13:", "accounts[0].budget", "`budget` 0 is not a daily cost cap",
                                "Fix: e.g. `budget: 500` or `budget: {daily: 500}`", "(account 'x-ada')"]),
    (GOOD + "    budget: abc\n", [":7:13:", "`budget` 'abc' is not", ">= 1", "Fix:"]),
    (GOOD + "    budget: {weekly: 3}\n", [":7:13:", "{'weekly': 3}", "`{daily: N}`", "Fix:"]),
    (GOOD + "    budget: {daily: 0}\n", ["`budget`", "Fix:"]),
    (GOOD + "    budget: {daily: 5, weekly: 3}\n", ["`budget`", "Fix:"]),
    (GOOD + "    budget: true\n", ["`budget` True is not"]),
    (GOOD + "    budget: 2.5\n", ["`budget` 2.5 is not"]),
    (GOOD + "    max_poll_interval: 5x\n", [":7:24:", "accounts[0].max_poll_interval", "'5x'",
                                           "duration from 0 to 7 days", "Fix: e.g. `max_poll_interval: 30m`"]),
    (GOOD + "    max_poll_interval: -5\n", ["'-5'", "duration from 0 to 7 days"]),
    (GOOD + "    max_poll_interval: -5m\n", ["'-5m'", "duration"]),
    (GOOD + "    max_poll_interval: 8d\n", ["'8d'", "duration from 0 to 7 days"]),
    (GOOD + "    max_poll_interval: 604801\n", ["'604801'", "7 days"]),
    (GOOD + "    max_poll_interval: 1.5h\n", ["'1.5h'", "Fix:"]),
    (GOOD + "    poll_backoff_after: 0\n", [":7:25:", "accounts[0].poll_backoff_after", " 0 is not",
                                           "at least 1", "Fix: e.g. `poll_backoff_after: 2`"]),
    (GOOD + "    poll_backoff_after: often\n", ["poll_backoff_after", "'often'", "whole number"]),
    (GOOD + "    budjet: 5\n", ["unknown key `budjet`", "did you mean `budget`?"]),
])
def test_cost_setting_mistakes_are_explained(tmp_path: Path, text: str, expect: list[str]) -> None:
    message = _error(tmp_path, text)
    for fragment in expect:
        assert fragment in message, message
