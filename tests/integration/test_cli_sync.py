"""`dm-pipeline sync` through the real CLI against the simulator over loopback and a real Postgres: plain,
append-only output when stdout is not a terminal (one line per stream, a summary, rate-limit waits), a
live progress display on a terminal, exit codes, and never a message text in the output."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.settings import PROJECT_ROOT
from tests.integration.test_cli_errors import SCRUB, cli

ANSI = re.compile(r"\x1b\[")


def write_accounts(path: Path, sim, x_user: str, getxapi_user: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """An X and a GetXAPI account on the simulator; returns the env with their credentials."""
    w = sim.world
    path.write_text(
        "accounts:\n"
        f"  - key: x-one\n    provider: x\n    user_id: \"{x_user}\"\n    base_url: {sim.base_url('x')}\n"
        "    token_env: DX_X_ONE\n    page_size: 50\n"
        f"  - key: gx-two\n    provider: getxapi\n    user_id: \"{getxapi_user}\"\n"
        f"    base_url: {sim.base_url('getxapi')}\n    token_env: DX_GX_KEY\n    auth_token_env: DX_GX_AUTH\n"
        "    tabs: [all, requests]\n    page_size: 40\n")
    return {"DM_PIPELINE_ACCOUNTS": str(path), "DX_X_ONE": w.token_for(x_user), "DX_GX_KEY": w.getxapi_key(),
            "DX_GX_AUTH": w.getxapi_auth_token(getxapi_user)}


@pytest.fixture
def setup(tmp_path: Path, sim, db_url: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    users = sim.world.accounts()
    return {**write_accounts(tmp_path / "accounts.yaml", sim, users[0], users[1]), "DATABASE_URL": db_url}


def stream_lines(stdout: str) -> dict[str, str]:
    """'account  stream  status  pages=…' lines by 'account/stream'."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split("  ")
        if len(parts) >= 4 and parts[3].startswith("pages="):
            out[f"{parts[0]}/{parts[1]}"] = line
    return out


def audit_pages(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT account_key || '/' || stream_key, count(*) FROM dm_audit.dm_sync_audit "
                                 "WHERE row_kind = 'page' GROUP BY 1")).all()
    return {k: int(n) for k, n in rows}


def test_non_tty_sync_prints_one_plain_line_per_stream_and_a_summary(setup: dict[str, str], engine: Engine) -> None:
    proc = cli("sync", env=setup)
    assert proc.returncode == 0, proc.stderr
    assert not ANSI.search(proc.stdout) and "\r" not in proc.stdout  # clean for CI logs
    lines = stream_lines(proc.stdout)
    assert set(lines) == {"x-one/dm_events", "gx-two/tab:all", "gx-two/tab:requests"}
    pages = audit_pages(engine)
    for ident, line in lines.items():
        assert " succeeded " in line and f"pages={pages[ident]} " in line and "waits=0" in line
    with engine.connect() as conn:
        stored = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history"))
        texts = conn.scalars(text("SELECT text FROM dm_private.dm_history WHERE length(text) >= 12 LIMIT 200")).all()
    new = sum(int(re.search(r"new=(\d+)", line).group(1)) for line in lines.values())  # type: ignore[union-attr]
    assert new == stored > 0
    assert re.search(rf"^done: 3 stream\(s\): 3 succeeded; \d+ pages, \d+ events \({stored} new, 0 updated\); "
                     r"0 rate-limit/retry waits", proc.stdout, re.MULTILINE)
    assert texts and not any(t in proc.stdout + proc.stderr for t in texts)  # never message text

    again = cli("sync", env=setup)
    assert again.returncode == 0
    assert all("new=0 updated=0" in line for line in stream_lines(again.stdout).values())


def test_rate_limit_waits_are_counted_per_stream(setup: dict[str, str], sim) -> None:  # type: ignore[no-untyped-def]
    x_user = sim.world.accounts()[0]
    sim.faults.inject(x_user, "dm_events", "429", count=2, retry_after=0)
    proc = cli("sync", "--account", "x-one", env=setup)
    assert proc.returncode == 0, proc.stderr
    (line,) = stream_lines(proc.stdout).values()
    assert " succeeded " in line and "waits=2 (0s)" in line
    assert "2 rate-limit/retry waits" in proc.stdout


def test_a_failed_stream_exits_1_and_says_what_to_do(setup: dict[str, str], sim) -> None:  # type: ignore[no-untyped-def]
    sim.faults.inject(sim.world.accounts()[0], "dm_events", "403", count=5)
    proc = cli("sync", env=setup)
    assert proc.returncode == 1, proc.stdout
    lines = stream_lines(proc.stdout)
    assert " failed " in lines["x-one/dm_events"] and "error=client_forbidden http=403" in lines["x-one/dm_events"]
    assert " succeeded " in lines["gx-two/tab:all"]  # one account's failure does not stop the others
    assert re.search(r"client_forbidden: X: the app is not enrolled .*Fix: attach the X app", proc.stdout)


def test_max_pages_parks_the_pass(setup: dict[str, str]) -> None:
    proc = cli("sync", "--account", "x-one", "--max-pages", "1", env=setup)
    assert proc.returncode == 0
    (line,) = stream_lines(proc.stdout).values()
    assert " partial " in line and "pages=1 " in line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_accounts_on_the_simulator_address_need_no_credentials(tmp_path: Path, db_url: str) -> None:
    """The fresh-machine path: base_url is the simulator's address, nothing exported; `sync` serves the
    simulator and gives it its credentials."""
    port = _free_port()
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n  - key: x-ada\n    provider: x\n    user_id: \"9593355274884443\"\n"
                    f"    base_url: http://127.0.0.1:{port}\n    token_env: DX_UNSET_TOKEN\n")
    proc = cli("sync", env={"DM_PIPELINE_ACCOUNTS": str(path), "DATABASE_URL": db_url,
                            "DM_SIMULATOR_PORT": str(port)})
    assert proc.returncode == 0, proc.stderr
    assert " succeeded " in stream_lines(proc.stdout)["x-ada/dm_events"]


def test_on_a_terminal_sync_shows_live_progress(setup: dict[str, str]) -> None:
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "sync"], cwd=PROJECT_ROOT, stdin=slave,
                            stdout=slave, stderr=slave, env={**env, **setup, "TERM": "xterm", "COLUMNS": "120"})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert ANSI.search(screen)  # a live display, not plain lines
    plain = ANSI.sub("", screen)
    assert "x-one › dm_events" in plain and "gx-two › tab:requests" in plain
    assert re.search(r"\d+ pages +\d+ events", plain) and "✓ done" in plain
    assert "done: 3 stream(s): 3 succeeded" in plain
