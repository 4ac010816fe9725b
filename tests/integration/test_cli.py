"""The command line as a user meets it: `db url` prints a usable URL; configuration mistakes print one
clear line and exit 2, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from dm_pipeline.settings import PROJECT_ROOT


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
    assert f"{path}: line 4" in proc.stderr and "user_id" in proc.stderr


def test_an_unreachable_database_is_explained(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"postgresql://nobody@/nowhere?host={tmp_path}"}
    proc = cli("sync", env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "cannot connect to Postgres" in proc.stderr
