"""`make dev` (`dm-pipeline dev`): the environment it gives `dagster dev`, its webserver, daemon and run
processes. On the shipped accounts file it serves the simulator and exports its credentials (what `make run`
does), so a UI backfill of the default accounts can succeed; real base URLs, real tokens and a real
DATABASE_URL switch it to production without code changes. The UI itself, through `dm-pipeline dev`, is
tested in a browser by tests/e2e/test_ui_backfill_browser.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dm_pipeline.accounts import load_accounts, required_env
from dm_pipeline.defs.resources import env_var_token
from dm_pipeline.dev import dev_environment, serve
from dm_pipeline.mainjob import SIM_SEED, prove_simulator, simulator_credentials
from dm_pipeline.models import StreamStatus
from dm_pipeline.runner import sync_accounts
from dm_pipeline.settings import PROJECT_ROOT
from dm_pipeline.sync import RunLimits

DEFAULT_ACCOUNTS = PROJECT_ROOT / "config" / "accounts.yaml"
BASE_URL_VARS = ("DM_X_BASE_URL", "DM_XQUIK_BASE_URL", "DM_GETXAPI_BASE_URL")
EXPORTED = ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME", "DM_PIPELINE_DAGSTER_ARTIFACTS",
            "DM_PIPELINE_DAGSTER_COMPUTE_LOGS", "DAGSTER_EVENT_BATCH_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def credential_names() -> list[str]:
    return sorted({n for a in load_accounts(DEFAULT_ACCOUNTS) for need in required_env(a)
                   for n in (need.name, *(alt for _, alt in need.alternatives))})


@pytest.fixture
def dev_env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A clean environment as on a fresh machine with the shipped accounts file: no credentials, no base
    URL overrides, the simulator port free; the warehouse is a scratch database (a DATABASE_URL, so the
    test's own embedded server is used). Everything dev_environment exports is restored afterwards."""
    port = free_port()
    for name in (*credential_names(), *BASE_URL_VARS, "DM_PIPELINE_ACCOUNTS", *EXPORTED):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("DM_SIMULATOR_PORT", str(port))
    monkeypatch.setenv("DM_PIPELINE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    yield port


def test_dev_serves_the_simulator_and_exports_its_credentials(dev_env: int, engine: Engine, db_url: str,
                                                              tmp_path: Path) -> None:
    port = dev_env
    accounts = load_accounts(DEFAULT_ACCOUNTS)
    from dm_pipeline.simulator import World

    world = World(seed=SIM_SEED)
    expected = {n: v for a in accounts for n, v in simulator_credentials(world, a).items()}
    assert set(expected) == set(credential_names())
    assert not listening(port)

    with dev_environment() as dev:
        assert dev.simulator_url == f"http://127.0.0.1:{port}"
        assert dev.simulator_accounts == [a.key for a in accounts]
        assert dev.credentials == sorted(expected) and not dev.warnings
        assert dev.env["DATABASE_URL"] == db_url and os.environ["DATABASE_URL"] == db_url
        prove_simulator(port)  # it is the simulator of the world the credentials belong to (HMAC challenge)
        for name, value in expected.items():
            assert os.environ[name] == value, name

        # A process started the way `serve` starts dagster dev (and so the webserver, the daemon and the
        # run workers, which inherit it) sees the warehouse and every credential.
        probe = tmp_path / "seen.json"
        code = serve([sys.executable, "-c", "import json, os, sys; json.dump({n: os.environ.get(n) for n in "
                      f"sys.argv[1:]}}, open({str(probe)!r}, 'w'))", *EXPORTED, *expected])
        seen = json.loads(probe.read_text())
        assert code == 0
        assert {n: seen[n] for n in expected} == expected
        assert all(seen[n] for n in EXPORTED), seen

        # The simulator answers those credentials, account by account, through the engine a run uses
        # (tokens looked up through dagster.EnvVar, as in dm_history_assets).
        results = sync_accounts(engine, accounts, "dev-test", RunLimits(max_pages=50), lookup=env_var_token)
        assert [(r.account_key, r.status) for r in results] == [(a.key, StreamStatus.SUCCEEDED) for a in accounts]
        assert all(r.total("inserted") > 0 for r in results)
    assert not listening(port)  # stopped with the block


def test_real_base_urls_tokens_and_database_switch_to_production(dev_env: int, db_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    port = dev_env
    monkeypatch.setenv("DM_X_BASE_URL", "https://api.x.com")
    monkeypatch.setenv("DM_XQUIK_BASE_URL", "https://xquik.com/api/v1")
    monkeypatch.setenv("DM_GETXAPI_BASE_URL", "https://api.getxapi.com")
    monkeypatch.setenv("DM_X_TOKEN_ADA", "a-real-token")
    with dev_environment() as dev:
        assert dev.simulator_url is None and dev.simulator_accounts == [] and dev.credentials == []
        assert not listening(port)  # no simulator
        assert os.environ["DM_X_TOKEN_ADA"] == "a-real-token"
        assert "DM_X_TOKEN_OMAR" not in os.environ
        assert os.environ["DATABASE_URL"] == db_url
        # A missing real token is a warning that names it (its account's runs fail until it is set).
        assert any("DM_X_TOKEN_OMAR" in w for w in dev.warnings), dev.warnings


def test_accounts_on_the_simulator_get_it_and_real_ones_keep_their_tokens(dev_env: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    port = dev_env
    monkeypatch.setenv("DM_X_BASE_URL", "https://api.x.com")
    monkeypatch.setenv("DM_X_TOKEN_ADA", "real-ada")
    monkeypatch.setenv("DM_X_TOKEN_OMAR", "real-omar")
    with dev_environment() as dev:
        assert dev.simulator_accounts == ["xquik-li", "getxapi-omar"]
        assert dev.credentials == ["DM_GETXAPI_API_KEY", "DM_GETXAPI_AUTH_OMAR", "DM_XQUIK_API_KEY"]
        prove_simulator(port)
        assert (os.environ["DM_X_TOKEN_ADA"], os.environ["DM_X_TOKEN_OMAR"]) == ("real-ada", "real-omar")
        assert not dev.warnings


@pytest.mark.timeout(60)
def test_serve_stops_the_whole_group_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM to `dm-pipeline dev` reaches dagster dev's process group (webserver, daemon, run workers)."""
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    child = f"import os, signal; open({str(fifo)!r}, 'w').write(str(os.getpid())); signal.pause()"
    pids: list[int] = []

    def terminate_when_ready() -> None:
        with fifo.open() as ready:  # opens once the child opened it for writing: no polling
            pids.append(int(ready.read()))
        os.kill(os.getpid(), signal.SIGTERM)  # to this process, which runs serve(): as `kill <pid>` would

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_when_ready, daemon=True).start()
    code = serve([sys.executable, "-c", child], stop_timeout_s=20)
    assert code == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are restored


def test_make_dev_execs_dm_pipeline_dev() -> None:
    """`make dev` is `dm-pipeline dev` (so it gets this preparation), with DEV_ARGS passed to dagster dev."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "dev", "DEV_ARGS=-h 127.0.0.1 -p 3999"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "exec .venv/bin/dm-pipeline dev -h 127.0.0.1 -p 3999" in dry.stdout.splitlines(), dry.stdout
