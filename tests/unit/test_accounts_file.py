"""The accounts file: valid files load; each mistake names the file, the line, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from dm_pipeline.accounts import load_accounts
from dm_pipeline.errors import ConfigError
from dm_pipeline.settings import PROJECT_ROOT

GOOD = """\
accounts:
  - key: x-ada
    provider: x
    user_id: "1000000000000000001"
    base_url: ${TEST_BASE:-http://127.0.0.1:8765}
    token_env: DM_X_TOKEN_ADA
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.yaml"
    path.write_text(text)
    return path


def test_a_valid_file_loads_with_env_defaults(tmp_path: Path) -> None:
    (account,) = load_accounts(_write(tmp_path, GOOD))
    assert account.key == "x-ada" and account.base_url == "http://127.0.0.1:8765"


def test_env_interpolation_uses_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_BASE", "https://api.x.com/")
    (account,) = load_accounts(_write(tmp_path, GOOD))
    assert account.base_url == "https://api.x.com"


@pytest.mark.parametrize("text,expect", [
    (GOOD.replace('"1000000000000000001"', '"@ada"'), ["line 4", "user_id", "numeric"]),
    (GOOD.replace("provider: x", "provider: myspace"), ["line 3", "provider", "x, xquik, getxapi"]),
    (GOOD.replace("    token_env", "    tokn_env"), ["line 6", "tokn_env", "unknown key"]),
    (GOOD.replace("  - key: x-ada\n", "  - key: x-ada\n   bad: [\n"), ["line", "YAML"]),
    (GOOD + GOOD.split("\n", 1)[1], ["appears twice"]),
    (GOOD.replace("${TEST_BASE:-http://127.0.0.1:8765}", "${DM_UNSET_VAR_FOR_TEST}"),
     ["DM_UNSET_VAR_FOR_TEST", "export"]),
])
def test_mistakes_are_explained(tmp_path: Path, text: str, expect: list[str]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_accounts(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expect:
        assert fragment in message


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DM_PIPELINE_ACCOUNTS"):
        load_accounts(tmp_path / "nope.yaml")


def test_the_shipped_accounts_file_is_valid() -> None:
    assert len(load_accounts(PROJECT_ROOT / "config" / "accounts.yaml")) >= 3
