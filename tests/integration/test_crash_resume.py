"""Crash safety: a real `dm-pipeline sync` subprocess is SIGKILLed while the simulator holds its request
for page k+1 — after exactly k committed pages in the serial order (write-ahead 0), after at most k with
pages still queued for the writer (the default) — then the next run must end equal to the truth with no
duplicate and no gap, and must resume where the crash left off rather than start over."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.models import Account, StreamStatus
from dm_pipeline.settings import PROJECT_ROOT
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_sync_x import run_sync

PAGE = 40


def _accounts_file(tmp_path: Path, account: Account) -> Path:
    path = tmp_path / "accounts.yaml"
    path.write_text(
        "accounts:\n"
        f"  - key: {account.key}\n    provider: x\n    user_id: \"{account.user_id}\"\n"
        f"    base_url: {account.base_url}\n    token_env: {account.token_env}\n    page_size: {PAGE}\n")
    return path


def sync_and_kill_after(sim, account: Account, k: int, db_url: str, accounts_file: Path,  # type: ignore[no-untyped-def]
                        write_ahead: int = 0) -> None:
    reached, release = threading.Event(), threading.Event()
    seen = itertools.count(1)

    def hold_request_k_plus_1(info) -> None:  # type: ignore[no-untyped-def]
        if info.user_id == account.user_id and next(seen) == k + 1:
            reached.set()
            release.wait(60)

    env = {**os.environ, "DATABASE_URL": db_url, "DM_PIPELINE_ACCOUNTS": str(accounts_file),
           "DM_PIPELINE_WRITE_AHEAD": str(write_ahead)}
    sim.on_request = hold_request_k_plus_1
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "sync", "--account", account.key],
                            env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if not reached.wait(90):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the sync never asked for page {k + 1}: rc={proc.returncode} {err.decode()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        release.set()
        sim.on_request = None
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _killed_run_pages(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit "
                                    "WHERE run_id LIKE 'cli-%' AND row_kind = 'page'")) or 0)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 5])
def test_crash_during_first_backfill_resumes_without_gap_or_duplicate(engine, db_url, sim, monkeypatch,  # type: ignore[no-untyped-def]
                                                                      tmp_path, k) -> None:
    """Serial order (write-ahead 0): page k is committed before request k+1 leaves, so exactly k are."""
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    assert len(truth) > (k + 1) * PAGE
    sync_and_kill_after(sim, account, k, db_url, _accounts_file(tmp_path, account))
    assert _killed_run_pages(engine) == k

    resumed = run_sync(engine, account)
    assert resumed.status is StreamStatus.SUCCEEDED
    assert resumed.total("inserted") == len(truth) - k * PAGE  # resumed from the cursor, not from the top
    assert_equals_truth(engine, account.key, truth)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 5])
def test_crash_with_pages_queued_for_the_writer_resumes_without_gap(engine, db_url, sim, monkeypatch,  # type: ignore[no-untyped-def]
                                                                    tmp_path, k) -> None:
    """The default write-ahead: request k+1 leaves while pages up to k may still be queued or mid-commit,
    so the kill lands anywhere in the writer's work. Whatever was committed is a prefix with its cursor:
    the resume inserts exactly the rest."""
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    sync_and_kill_after(sim, account, k, db_url, _accounts_file(tmp_path, account), write_ahead=8)
    committed = _killed_run_pages(engine)
    assert 0 <= committed <= k
    with engine.connect() as conn:
        stored = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history WHERE account_key = :a"),
                             {"a": account.key})
    assert stored == committed * PAGE  # no page is half there

    resumed = run_sync(engine, account)
    assert resumed.status is StreamStatus.SUCCEEDED
    assert resumed.total("inserted") == len(truth) - committed * PAGE
    assert_equals_truth(engine, account.key, truth)


@pytest.mark.slow
@pytest.mark.parametrize(("k", "write_ahead"), [(1, 0), (3, 0), (3, 8)])
def test_crash_during_an_incremental_pass_resumes_without_gap(engine, db_url, sim, monkeypatch, tmp_path,  # type: ignore[no-untyped-def]
                                                              k, write_ahead) -> None:
    account = sim_account(sim, sim.world.accounts()[1], monkeypatch, page_size=PAGE)
    run_sync(engine, account)
    sim.world.advance(account.user_id, 5 * PAGE + 7)
    sync_and_kill_after(sim, account, k, db_url, _accounts_file(tmp_path, account), write_ahead=write_ahead)
    if write_ahead == 0:
        assert _killed_run_pages(engine) == k
    else:
        assert _killed_run_pages(engine) <= k
    # The world keeps moving between the crash and the resume.
    sim.world.advance(account.user_id, 11)

    resumed = run_sync(engine, account)
    assert resumed.status is StreamStatus.SUCCEEDED
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
