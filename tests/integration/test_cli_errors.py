"""Every configuration mistake a new user can make, through the real CLI in a subprocess: one line on
stderr naming the file (and line:column) or the key, and the fix; exit code 2; no traceback; and nothing
synced (no audit row) when the check fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, create_engine, text

from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import scratch_database

SIM_USER = "9593355274884443"  # an account of the simulator's seed-7 world
# For checks that must fail before the database is touched: were one to reach it, it would say
# "cannot connect" instead of the expected message.
NO_DB = "postgresql://nobody@/nowhere?host=/nonexistent-dm-pipeline-socket-dir"
# Variables a developer's shell may carry, which would change what the CLI sees.
SCRUB = ("DM_X_BASE_URL", "DM_XQUIK_BASE_URL", "DM_GETXAPI_BASE_URL", "DM_PIPELINE_TOKEN_KEY", "DATABASE_URL",
         "DAGSTER_PG_URL", "DM_PIPELINE_PAGE_BUDGET", "DM_PIPELINE_TIME_BUDGET_S")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SCRUB and not k.startswith("DX_")}
    return subprocess.run([sys.executable, "-m", "dm_pipeline.cli", *args], cwd=PROJECT_ROOT, text=True,
                          capture_output=True, timeout=120, env={**base, **(env or {})})


def one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run failed as a configuration error should: exit 2, one `error:` line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def x_entry(key: str = "x-ada", user_id: str = f'"{SIM_USER}"', base_url: str = "https://api.x.com",
            token_env: str = "DX_TOKEN_ADA", extra: str = "") -> str:
    return (f"  - key: {key}\n    provider: x\n    user_id: {user_id}\n    base_url: {base_url}\n"
            f"    token_env: {token_env}\n{extra}")


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    return tmp_path / "accounts.yaml"


def audit_rows(db_url: str) -> int:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        n = int(conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit")) or 0)
    engine.dispose()
    return n


# ---------------------------------------------------------------- the accounts file

def test_a_yaml_error_gives_file_line_and_column(accounts_file: Path) -> None:
    accounts_file.write_text("accounts:\n" + x_entry().replace("    provider: x\n", "    provider: x\n   oops: [\n"))
    line = one_clear_line(cli("sync", env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": NO_DB}))
    assert re.search(rf"{re.escape(str(accounts_file))}:4:\d+: invalid YAML: .*Fix: ", line), line


def test_an_unknown_provider_is_named_with_the_supported_ones(accounts_file: Path) -> None:
    accounts_file.write_text("accounts:\n" + x_entry().replace("provider: x", "provider: twitter"))
    line = one_clear_line(cli("run", env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": NO_DB}))
    assert f"{accounts_file}:3:15: accounts[0].provider: 'twitter' is not supported" in line
    assert "x, xquik, getxapi" in line and "Fix:" in line


@pytest.mark.parametrize("entry,where,fragment", [
    (x_entry(user_id='"@ada"'), ":4:14:", "accounts[0].user_id: '@ada' is not the connected account's numeric"),
    (x_entry(user_id=SIM_USER), ":4:14:", f"accounts[0].user_id: {SIM_USER} is a number, not a string"),
    (x_entry(extra='    conversations:\n      ids: ["12-abc"]\n'), ":8:13:",
     "accounts[0].conversations.ids[0]: '12-abc' is not an X DM conversation ID"),
    (x_entry(extra='    conversations:\n      participants: ["someone"]\n'), ":8:22:",
     "accounts[0].conversations.participants[0]: 'someone' is not a numeric X user ID"),
])
def test_an_invalid_user_or_conversation_id(accounts_file: Path, entry: str, where: str, fragment: str) -> None:
    accounts_file.write_text("accounts:\n" + entry)
    for command in ("sync", "run", "accounts validate"):
        line = one_clear_line(cli(*command.split(), env={"DM_PIPELINE_ACCOUNTS": str(accounts_file),
                                                         "DATABASE_URL": NO_DB}))
        assert f"{accounts_file}{where} {fragment}" in line and "Fix:" in line, line


def test_a_secret_pasted_into_the_file_is_not_printed(accounts_file: Path) -> None:
    secret = "sk_live_0123456789abcdefSECRET"
    accounts_file.write_text("accounts:\n" + x_entry(token_env=f'"{secret}"'))
    proc = cli("accounts", "validate", str(accounts_file))
    line = one_clear_line(proc)
    assert secret not in proc.stdout + proc.stderr
    assert "token_env" in line and "NAME of an environment variable" in line


def test_validate_lists_every_problem_with_its_line(accounts_file: Path) -> None:
    accounts_file.write_text("accounts:\n" + x_entry(user_id='"@ada"').replace("provider: x", "provider: y"))
    proc = cli("accounts", "validate", str(accounts_file))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert [e.split(" ")[1] for e in errors] == [f"{accounts_file}:3:15:", f"{accounts_file}:4:14:"]


def test_a_missing_accounts_file(tmp_path: Path) -> None:
    line = one_clear_line(cli("sync", env={"DM_PIPELINE_ACCOUNTS": str(tmp_path / "nope.yaml")}))
    assert "nope.yaml does not exist" in line and "DM_PIPELINE_ACCOUNTS" in line


# ---------------------------------------------------------------- the environment

@pytest.mark.parametrize("command", ["sync", "run"])
def test_a_missing_token_variable_stops_before_anything_runs(accounts_file: Path, db_url: str, command: str) -> None:
    accounts_file.write_text("accounts:\n" + x_entry())
    line = one_clear_line(cli(command, env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": db_url}))
    assert line.startswith(f"error: {accounts_file}:6:16: environment variable DX_TOKEN_ADA is not set")
    assert "`token_env` of account 'x-ada'" in line and "Fix: export DX_TOKEN_ADA=" in line
    assert audit_rows(db_url) == 0  # not a failed stream deep in the engine: nothing ran


def test_every_missing_variable_is_named_once(accounts_file: Path, db_url: str) -> None:
    accounts_file.write_text(
        "accounts:\n" + x_entry() + "  - key: gx\n    provider: getxapi\n    user_id: \"42\"\n"
        "    base_url: https://api.getxapi.com\n    token_env: DX_GX_KEY\n    auth_token_env: DX_GX_AUTH\n"
        "    ct0_env: DX_GX_CT0\n    twid_env: DX_GX_TWID\n")
    line = one_clear_line(cli("sync", env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": db_url,
                                           "DX_GX_CT0": "abc"}))
    assert "DX_TOKEN_ADA is not set" in line
    assert "also not set: DX_GX_KEY, DX_GX_AUTH, DX_GX_TWID" in line


def test_a_loopback_base_url_that_is_not_the_simulator_says_so(accounts_file: Path, db_url: str) -> None:
    accounts_file.write_text("accounts:\n" + x_entry(base_url="http://127.0.0.1:1"))
    line = one_clear_line(cli("sync", env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": db_url,
                                           "DM_SIMULATOR_PORT": "8765"}))
    assert "is not the simulator's address http://127.0.0.1:8765" in line


def test_oauth_needs_its_client_id_and_the_encryption_key(accounts_file: Path, db_url: str) -> None:
    accounts_file.write_text("accounts:\n" + x_entry(extra="    oauth:\n      client_id_env: DX_CLIENT_ID\n"
                                                            "      refresh_token_env: DX_REFRESH\n"))
    env = {"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": db_url, "DX_REFRESH": "r"}
    line = one_clear_line(cli("sync", env=env))
    assert f"{accounts_file}:8:22: environment variable DX_CLIENT_ID is not set" in line
    assert "also not set: DM_PIPELINE_TOKEN_KEY" in line
    line = one_clear_line(cli("sync", env={**env, "DX_CLIENT_ID": "c"}))
    assert "DM_PIPELINE_TOKEN_KEY is not set" in line and "Fernet.generate_key()" in line
    line = one_clear_line(cli("run", env={**env, "DX_CLIENT_ID": "c", "DM_PIPELINE_TOKEN_KEY": "not-a-key"}))
    assert "DM_PIPELINE_TOKEN_KEY is not a valid Fernet key" in line and "not-a-key" not in line
    assert audit_rows(db_url) == 0


def test_an_unknown_account_key_lists_the_known_ones(accounts_file: Path, db_url: str) -> None:
    accounts_file.write_text("accounts:\n" + x_entry() + x_entry(key="x-bob"))
    for command in ("sync", "run"):
        line = one_clear_line(cli(command, "--account", "x-ada", "--account", "nobody",
                                  env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": NO_DB}))
        assert "nobody" in line and "x-ada, x-bob" in line, line
    for command in ("status",):  # status also knows the accounts that are only in the database
        line = one_clear_line(cli(command, "--account", "x-ada", "--account", "nobody",
                                  env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": db_url}))
        assert "nobody" in line and "x-ada, x-bob" in line, line


@pytest.mark.parametrize("name,value,fragment", [
    ("DM_PIPELINE_PAGE_BUDGET", "lots", "DM_PIPELINE_PAGE_BUDGET='lots' is not a number"),
    ("DM_SIMULATOR_PORT", "99999", "DM_SIMULATOR_PORT='99999' is out of range"),
    ("DATABASE_URL", "not a url:pw", "DATABASE_URL is not a valid URL"),
    ("DATABASE_URL", "mysql://u:pw@host/db", "DATABASE_URL must be a PostgreSQL URL"),
])
def test_a_malformed_setting(name: str, value: str, fragment: str) -> None:
    line = one_clear_line(cli("sync", env={name: value}))
    assert fragment in line and "Fix:" in line
    assert ":pw" not in line  # a password in a URL is never shown


# ---------------------------------------------------------------- the database

@pytest.mark.parametrize("command", ["sync", "run", "status", "export --account a --out /dev/null",
                                     "erase --account a", "db upgrade", "db start"])
def test_an_unreachable_database(tmp_path: Path, accounts_file: Path, command: str) -> None:
    accounts_file.write_text("accounts:\n" + x_entry())
    env = {"DATABASE_URL": f"postgresql://nobody:s3cret@/nowhere?host={tmp_path}",
           "DM_PIPELINE_ACCOUNTS": str(accounts_file), "DX_TOKEN_ADA": "t"}
    line = one_clear_line(cli(*command.split(), env=env))
    assert "cannot connect to Postgres at postgresql+psycopg://nobody:***@/nowhere" in line
    assert "s3cret" not in line and "DATABASE_URL" in line


@pytest.fixture
def empty_database(pg_server: URL) -> Iterator[str]:
    with scratch_database(pg_server, template=None) as url:
        yield url


def test_an_unmigrated_external_database_says_which_command_migrates_it(accounts_file: Path,
                                                                      empty_database: str) -> None:
    accounts_file.write_text("accounts:\n" + x_entry())
    env = {"DATABASE_URL": empty_database, "DM_PIPELINE_ACCOUNTS": str(accounts_file), "DX_TOKEN_ADA": "t"}
    for command in ("sync", "status"):
        line = one_clear_line(cli(command, env=env))
        assert "is not migrated" in line and "Fix: dm-pipeline db upgrade" in line
    proc = cli("db", "upgrade", env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("migrated: "), proc.stderr
    assert cli("status", env=env).returncode == 0


def test_run_checks_dagster_storage_before_starting_dagster(accounts_file: Path, db_url: str, tmp_path: Path) -> None:
    accounts_file.write_text("accounts:\n" + x_entry())
    env = {"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DATABASE_URL": db_url, "DX_TOKEN_ADA": "t",
           "DAGSTER_PG_URL": f"postgresql+psycopg2://dagster:pw@/dagster?host={tmp_path}"}
    line = one_clear_line(cli("run", env=env))
    assert line.startswith("error: Dagster's instance storage: cannot connect to Postgres") and "pw@" not in line
    assert "Fix: check DAGSTER_PG_URL" in line


def test_accounts_list_names_variables_but_never_their_values(accounts_file: Path) -> None:
    accounts_file.write_text("accounts:\n" + x_entry() + x_entry(key="x-bob", token_env="DX_TOKEN_BOB"))
    proc = cli("accounts", "list", env={"DM_PIPELINE_ACCOUNTS": str(accounts_file), "DX_TOKEN_ADA": "tok-SECRET-1"})
    assert proc.returncode == 0, proc.stderr
    assert "tok-SECRET-1" not in proc.stdout
    assert re.search(r"x-ada .*DX_TOKEN_ADA set", proc.stdout) and re.search(r"x-bob .*DX_TOKEN_BOB MISSING",
                                                                             proc.stdout)
