"""Two real processes on one account at once (a schedule tick and a UI backfill): the advisory lock per
account x stream lets one sync and makes the other record `skipped_locked`; nothing is duplicated."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from sqlalchemy import text

from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_crash_resume import _accounts_file


def test_a_second_process_on_a_locked_stream_skips_it(engine, db_url, sim, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=40)
    env = {**os.environ, "DATABASE_URL": db_url, "DM_PIPELINE_ACCOUNTS": str(_accounts_file(tmp_path, account))}
    cmd = [sys.executable, "-m", "dm_pipeline.cli", "sync", "--account", account.key]
    holding, release = threading.Event(), threading.Event()
    first = threading.Lock()

    def hold_the_first_request(info) -> None:  # type: ignore[no-untyped-def]
        if info.user_id == account.user_id and first.acquire(blocking=False):
            holding.set()
            release.wait(60)

    sim.on_request = hold_the_first_request
    a = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holding.wait(90), "process A never fetched"
        # A holds the lock and waits inside its first request; B runs to completion meanwhile.
        b = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert b.returncode == 0, b.stderr
        assert "skipped_locked" in b.stdout
    finally:
        release.set()
        sim.on_request = None
    a_out, a_err = a.communicate(timeout=120)
    assert a.returncode == 0, a_err
    assert "succeeded" in a_out
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
    with engine.connect() as conn:
        statuses = sorted(conn.scalars(text("SELECT job_status FROM dm_audit.dm_sync_audit WHERE row_kind = 'job'")))
    assert statuses == ["skipped_locked", "succeeded"]
