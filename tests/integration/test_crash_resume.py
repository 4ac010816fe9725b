"""Crash safety: a real `dm-pipeline sync` subprocess is SIGKILLed while the simulator holds its request
for page k+1 — after exactly k committed pages in the serial order (write-ahead 0), after at most k with
pages still queued for the writer (the default) — then the next run must end equal to the truth with no
duplicate and no gap, and must resume where the crash left off rather than start over.

"Resumed" is checked on its own, not inferred from the end state (the upsert would absorb a restart from the
top just as well): the kill must have landed (exit status -SIGKILL); the resume's first request carries the
cursor the killed run committed last; and the resume makes at most `P - committed + 1` requests, where P is
what an uninterrupted run from the same starting state makes (measured on a copy of the database) and the
+1 is the fresh pass that follows a resumed one. The killed run's uncommitted work is at most 2 * write-ahead + 1
pages: what a crash may cost in refetching."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from dm_pipeline.models import Account, StreamStatus, SyncResult
from dm_pipeline.settings import PROJECT_ROOT
from dm_pipeline.sync import RunLimits
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_sync_x import run_sync

PAGE = 40
# What `dm-pipeline sync` runs with (it polls billed streams even when their backoff says not yet).
CLI_LIMITS = RunLimits(honour_backoff=False)


def _accounts_file(tmp_path: Path, account: Account) -> Path:
    path = tmp_path / "accounts.yaml"
    path.write_text(
        "accounts:\n"
        f"  - key: {account.key}\n    provider: x\n    user_id: \"{account.user_id}\"\n"
        f"    base_url: {account.base_url}\n    token_env: {account.token_env}\n    page_size: {PAGE}\n")
    return path


# --- shared with the crash trials (tests/reliability/test_crash_trials.py) --------------------------------

@contextlib.contextmanager
def counting_requests(sim, user_id: str) -> Iterator[list[int]]:  # type: ignore[no-untyped-def]
    """Counts the requests of `user_id` the simulator receives meanwhile (at arrival: a request held or
    answered late by an earlier, killed process is never counted here)."""
    count, lock = [0], threading.Lock()

    def hook(info) -> None:  # type: ignore[no-untyped-def]
        if info.user_id == user_id:
            with lock:
                count[0] += 1

    sim.on_request = hook
    try:
        yield count
    finally:
        sim.on_request = None


def uninterrupted_requests(engine: Engine, sim, account: Account,  # type: ignore[no-untyped-def]
                           limits: RunLimits = CLI_LIMITS) -> int:
    """How many requests an uninterrupted run from the database's current state makes: the same run on a
    copy of the database (CREATE DATABASE ... TEMPLATE), dropped afterwards. The simulator's world is only
    read, so the run about to be killed sees the same pages."""
    url = engine.url
    engine.dispose()  # a template may have no other session
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    twin = f"{url.database}_twin"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{twin}" TEMPLATE "{url.database}"'))
        twin_engine = create_engine(url.set(database=twin))
        try:
            with counting_requests(sim, account.user_id) as count:
                result = run_sync(twin_engine, account, limits=limits)
        finally:
            twin_engine.dispose()
        assert result.status is StreamStatus.SUCCEEDED, "the uninterrupted twin run failed"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{twin}" WITH (FORCE)'))
        admin.dispose()
    return count[0]


@dataclass(frozen=True)
class KillState:
    """What a killed run left behind: its committed pages (all streams of the account) and the open
    passes' stored cursors."""

    committed: int
    open_cursors: dict[str, str]      # stream key -> pass cursor, for each pass left open with one
    rows: int                         # the account's stored rows


def page_rows(engine: Engine, account_key: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit "
                                    "WHERE account_key = :a AND row_kind = 'page'"), {"a": account_key}) or 0)


def kill_state(engine: Engine, account_key: str, pages_before: int) -> KillState:
    with engine.connect() as conn:
        cursors = conn.execute(text("SELECT stream_key, pass_cursor FROM dm_private.sync_state WHERE "
                                    "account_key = :a AND pass_started_at IS NOT NULL AND pass_cursor IS NOT NULL"),
                               {"a": account_key}).all()
        rows = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history WHERE account_key = :a"),
                           {"a": account_key})
    return KillState(page_rows(engine, account_key) - pages_before, {s: c for s, c in cursors}, int(rows or 0))


def resumed_from(engine: Engine, result: SyncResult) -> dict[str, str | None]:
    """stream key -> cursor_in of the first page the run committed on it."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT DISTINCT ON (stream_key) stream_key, cursor_in FROM dm_audit.dm_sync_audit "
                                 "WHERE run_id = :r AND row_kind = 'page' ORDER BY stream_key, audit_id"),
                            {"r": result.run_id}).all()
    return {s: c for s, c in rows}


def resume_problems(engine: Engine, state: KillState, resumed: SyncResult, requests: int,
                    uninterrupted: int) -> list[str]:
    """Why the run after a kill did not RESUME (empty: it did)."""
    problems = []
    if requests > uninterrupted - state.committed + 1:
        problems.append(f"the resume made {requests} requests; an uninterrupted run makes {uninterrupted} and "
                        f"{state.committed} pages were committed: at most {uninterrupted - state.committed + 1}")
    first = resumed_from(engine, resumed)
    for stream, cursor in state.open_cursors.items():
        if first.get(stream) != cursor:
            problems.append(f"{stream}: the resume started at cursor {first.get(stream)!r}, "
                            f"not at the committed {cursor!r}")
    return problems


# --- the tests ---------------------------------------------------------------------------------------------

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
        assert proc.wait(30) == -signal.SIGKILL, "the SIGKILL did not land: the process ended on its own"
    finally:
        release.set()
        sim.on_request = None
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def crash_and_resume(engine: Engine, db_url: str, sim, account: Account, tmp_path: Path, k: int,  # type: ignore[no-untyped-def]
                     write_ahead: int, world_moves: int = 0) -> tuple[KillState, SyncResult]:
    """Kill a sync while it holds request k+1 (k requests answered), then resume it in-process; checks that
    the kill landed, that at most 2 * write-ahead + 1 answered pages were lost, and that the resume resumed."""
    pages_before = page_rows(engine, account.key)
    uninterrupted = uninterrupted_requests(engine, sim, account)
    sync_and_kill_after(sim, account, k, db_url, _accounts_file(tmp_path, account), write_ahead=write_ahead)
    state = kill_state(engine, account.key, pages_before)
    assert 0 <= k - state.committed <= 2 * write_ahead + 1, (k, state)
    # The world may keep moving between the crash and the resume: fewer than PAGE new events fit in the
    # fresh pass's top page, so the bound on the resume's requests stands.
    assert world_moves < PAGE
    sim.world.advance(account.user_id, world_moves)
    with counting_requests(sim, account.user_id) as requests:
        resumed = run_sync(engine, account)
    assert resumed.status is StreamStatus.SUCCEEDED
    problems = resume_problems(engine, state, resumed, requests[0], uninterrupted)
    assert not problems, problems
    return state, resumed


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 5])
def test_crash_during_first_backfill_resumes_without_gap_or_duplicate(engine, db_url, sim, monkeypatch,  # type: ignore[no-untyped-def]
                                                                      tmp_path, k) -> None:
    """Serial order (write-ahead 0): page k is committed before request k+1 leaves, so exactly k are."""
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    assert len(truth) > (k + 1) * PAGE
    state, resumed = crash_and_resume(engine, db_url, sim, account, tmp_path, k, write_ahead=0)
    assert state.committed == k and state.open_cursors and state.rows == k * PAGE
    assert resumed.total("inserted") == len(truth) - k * PAGE
    assert_equals_truth(engine, account.key, truth)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 5])
def test_crash_with_pages_queued_for_the_writer_resumes_without_gap(engine, db_url, sim, monkeypatch,  # type: ignore[no-untyped-def]
                                                                    tmp_path, k) -> None:
    """The default write-ahead: request k+1 leaves while pages up to k may still be queued or mid-commit,
    so the kill lands anywhere in the writer's work. Whatever was committed is a prefix with its cursor:
    the resume inserts exactly the rest, from that cursor."""
    account = sim_account(sim, sim.world.accounts()[0], monkeypatch, page_size=PAGE)
    truth = sim.world.truth(account.user_id)
    state, resumed = crash_and_resume(engine, db_url, sim, account, tmp_path, k, write_ahead=8)
    assert 0 <= state.committed <= k
    assert state.rows == state.committed * PAGE  # no page is half there
    assert resumed.total("inserted") == len(truth) - state.committed * PAGE
    assert_equals_truth(engine, account.key, truth)


@pytest.mark.slow
@pytest.mark.parametrize(("k", "write_ahead"), [(1, 0), (3, 0), (3, 8)])
def test_crash_during_an_incremental_pass_resumes_without_gap(engine, db_url, sim, monkeypatch, tmp_path,  # type: ignore[no-untyped-def]
                                                              k, write_ahead) -> None:
    account = sim_account(sim, sim.world.accounts()[1], monkeypatch, page_size=PAGE)
    run_sync(engine, account)
    sim.world.advance(account.user_id, 5 * PAGE + 7)
    # The world keeps moving between the crash and the resume (11 events).
    state, _ = crash_and_resume(engine, db_url, sim, account, tmp_path, k, write_ahead, world_moves=11)
    if write_ahead == 0:
        assert state.committed == k and state.open_cursors
    else:
        assert state.committed <= k
    assert_equals_truth(engine, account.key, sim.world.truth(account.user_id))
