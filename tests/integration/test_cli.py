"""The command line as a user meets it: `db url` prints a usable URL; configuration mistakes print one
clear line and exit 2, without a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from dm_pipeline.settings import PROJECT_ROOT
from tests.integration.helpers import simulator_serve_process


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dm_pipeline.cli", *args], cwd=PROJECT_ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})})


def test_db_url_prints_a_url_any_client_can_use(db_url: str) -> None:
    proc = cli("db", "url", env={"DATABASE_URL": db_url})
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM dm_private.dm_history")) == 0
    engine.dispose()


def test_db_url_starts_the_embedded_server_when_no_database_url(tmp_path: Path) -> None:
    env = {"DM_PIPELINE_HOME": str(tmp_path / "home"), "DATABASE_URL": ""}
    proc = cli("db", "url", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "host=" in proc.stdout and str(tmp_path) in proc.stdout.replace("%2F", "/")
    engine = create_engine(proc.stdout.strip())
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT 1")) == 1
    engine.dispose()
    assert cli("db", "stop", env=env).stdout.strip() == "stopped"


def test_a_bad_accounts_file_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text('accounts:\n  - key: a\n    provider: x\n    user_id: "@someone"\n'
                    '    base_url: http://127.0.0.1:1\n    token_env: T\n')
    proc = cli("accounts", "validate", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path}:4:14: accounts[0].user_id: '@someone'" in proc.stderr and "Fix:" in proc.stderr


def test_an_unreachable_database_is_explained(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"postgresql://nobody@/nowhere?host={tmp_path}"}
    proc = cli("sync", env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "cannot connect to Postgres" in proc.stderr


# ---------------------------------------------------------------- help, psql, the simulator

COMMANDS = ["run", "sync", "status", "export", "erase", "accounts list", "accounts validate", "db url", "db env",
            "db start", "db stop", "db status", "db upgrade", "db psql", "simulator serve", "dev"]


def test_help_lists_every_command_and_each_has_an_example() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for name in ("run", "sync", "status", "export", "erase", "accounts", "db", "simulator", "dev"):
        assert re.search(rf"^  {name}\s", top.stdout, re.MULTILINE), name
    assert "make run" in top.stdout and "Exit codes" in top.stdout
    for command in COMMANDS:
        proc = cli(*command.split(), "--help")
        assert proc.returncode == 0, command
        assert re.search(rf"Example: .*dm-pipeline {command.split()[0]}", proc.stdout), (command, proc.stdout)
        assert proc.stdout.startswith(f"Usage: dm-pipeline {command}")


def test_db_url_libpq_is_a_uri_psql_accepts(db_url: str) -> None:
    proc = cli("db", "url", "--libpq", env={"DATABASE_URL": db_url})
    assert proc.returncode == 0 and proc.stdout.startswith("postgresql://") and "+psycopg" not in proc.stdout
    psql = cli("db", "psql", "-X", "-At", "-c", "SELECT 6 * 7", env={"DATABASE_URL": db_url})
    assert psql.returncode == 0 and psql.stdout.strip() == "42", psql.stderr


def test_db_psql_as_analyst_cannot_read_message_text(db_url: str) -> None:
    env = {"DATABASE_URL": db_url}
    ok = cli("db", "psql", "--analyst", "-X", "-At", "-c", "SELECT current_user, session_user", env=env)
    assert ok.returncode == 0 and ok.stdout.strip() == "dm_analyst_login|dm_analyst_login", ok.stderr
    # No statement of the session widens it: the login never held more than the analyst's rights.
    for escape in ("", "SET ROLE NONE;", "RESET ROLE;", "SET ROLE postgres;", "SET SESSION AUTHORIZATION postgres;"):
        denied = cli("db", "psql", "--analyst", "-X", "-c", f"{escape} SELECT text FROM dm_private.dm_history",
                     env=env)
        assert denied.returncode != 0 and ("permission denied" in denied.stderr), (escape, denied.stderr)
    views = cli("db", "psql", "--analyst", "-X", "-At", "-c", "SELECT count(*) FROM dm_analytics.messages", env=env)
    assert views.returncode == 0, views.stderr
    leaked = cli("db", "psql", "--analyst", "-X", "-At", "-c", "SHOW dm.whatever", env={
        **env, "DM_PIPELINE_TOKEN_KEY": "k", "X_TOKEN_SECRET": "t", "PGOPTIONS": "-c dm.whatever=leak"})
    assert "leak" not in leaked.stdout  # psql gets a minimal environment


def test_simulator_serve_prints_what_a_sync_against_it_needs(tmp_path: Path, db_url: str) -> None:
    """Follow the printed instructions: export the printed lines, then `sync` against the served simulator."""
    env = dict(os.environ)
    for name in ("DM_X_BASE_URL", "DM_XQUIK_BASE_URL", "DM_GETXAPI_BASE_URL"):
        env.pop(name, None)
    proc = simulator_serve_process(env)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the process flushes its instructions, then serves
            lines.append(line.rstrip())
            if line.strip() == "dm-pipeline sync":
                break
        printed = "\n".join(lines)
        url = re.search(r"on (http://127\.0\.0\.1:\d+);", printed).group(1)  # type: ignore[union-attr]
        for provider, path in (("x", ""), ("xquik", "/xquik/api/v1"), ("getxapi", "/getxapi")):
            assert re.search(rf"^ {provider}\s+{re.escape(url + path)}\s", printed, re.MULTILINE), provider
        assert "sim-x-9593355274884443" in printed and "sim-xquik-key" in printed
        exports = next(line for line in lines if line.strip().startswith("export "))
        sync_env = dict(pair.split("=", 1) for pair in exports.split()[1:])
        assert {"DM_X_BASE_URL", "DM_X_TOKEN_ADA", "DM_XQUIK_API_KEY", "DM_GETXAPI_AUTH_OMAR"} <= set(sync_env)
        synced = cli("sync", env={**sync_env, "DATABASE_URL": db_url, "DM_SIMULATOR_PORT": "1"})
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert re.search(r"^done: \d+ stream\(s\): \d+ succeeded;", synced.stdout, re.MULTILINE)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
