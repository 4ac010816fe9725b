"""Crash trials: real `dm-pipeline sync` processes SIGKILLed at random moments — between pages or while a
page is being parsed and committed — during backfills and incremental passes, across all three providers,
with the world advancing between runs. After each kill the next run resumes; the end state must equal the
simulator's truth exactly, with zero duplicates and an audit trail that accounts for every committed page.

A trial counts as exact only if, besides that end state: the SIGKILL landed (exit status -SIGKILL; a kill
that came too late is retried as a held one, which cannot miss); the killed run lost at most 2 * write-ahead + 1
answered pages; and the next run RESUMED — its first request carried the cursor the killed run committed
last, and it made at most `P - committed + 1` requests, P being what an uninterrupted run from the same
state makes (measured on a copy of the database before the kill; see test_crash_resume.py).

Size: 12 trials by default (CI), 60 with DM_RELIABILITY=full (`make reliability`)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from dm_pipeline.models import StreamStatus
from dm_pipeline.settings import PROJECT_ROOT
from dm_pipeline.sync import RunLimits
from tests.integration.helpers import truth_rows, warehouse_rows
from tests.integration.test_crash_resume import (
    counting_requests,
    kill_state,
    page_rows,
    resume_problems,
    uninterrupted_requests,
)
from tests.integration.test_sync_x import run_sync
from tests.reliability import results
from tests.reliability.fault_matrix import account_for

# The resume is what `dm-pipeline sync` does (the killed process was one): it polls a billed stream that is
# backing off, where the schedule would skip it until it is due.
RESUME = RunLimits(honour_backoff=False)
TRIALS = 60 if os.environ.get("DM_RELIABILITY") == "full" else 12
PROVIDERS = ["x", "xquik", "getxapi"]
WRITE_AHEAD = 8  # the CLI's default (DM_PIPELINE_WRITE_AHEAD unset): pages fetched ahead of their commit


def trial_name(trial: int) -> str:
    return f"trial {trial:02d}"


PLANNED_CASES = [trial_name(t) for t in range(TRIALS)]  # the conftest registers them: the figure's denominator


def write_accounts(path: Path, accounts: list) -> None:  # type: ignore[type-arg]
    lines = ["accounts:"]
    for a in accounts:
        lines += [f"  - key: {a.key}", f"    provider: {a.provider.value}", f"    user_id: \"{a.user_id}\"",
                  f"    base_url: {a.base_url}", f"    token_env: {a.token_env}", f"    page_size: {a.page_size}"]
        if a.handle:
            lines += [f"    handle: {a.handle}", f"    partners: [\"{a.partners[0]}\"]"]
        if a.auth_token_env:
            lines += [f"    auth_token_env: {a.auth_token_env}", "    tabs: [all]"]
    path.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Kill:
    where: str | None      # where it died; None: the process ended on its own (finished, or the kill came late)
    returncode: int | None
    answered: int          # requests of the killed run the simulator let through before the kill


def kill_at_random(sim, account, db_url: str, accounts_file: Path, env: dict[str, str],  # type: ignore[no-untyped-def]
                   rng: random.Random, max_k: int, mid_page: bool | None = None) -> Kill:
    """Start a sync; on its k-th request either hold it and kill (between pages), or let it through and
    kill a few milliseconds later (mid-parse or mid-commit). `where` is None if it finished before reaching
    request k, or before a mid-page kill was sent (the exit status says whether the SIGKILL landed)."""
    k = rng.randint(1, max_k)
    if mid_page is None:
        mid_page = rng.random() < 0.5
    reached, release = threading.Event(), threading.Event()
    count = [0]
    lock = threading.Lock()

    def hook(info) -> None:  # type: ignore[no-untyped-def]
        if info.user_id != account.user_id:
            return
        with lock:
            count[0] += 1
            hit = count[0] == k
        if hit:
            reached.set()
            if not mid_page:
                release.wait(60)

    proc_env = {**os.environ, **env, "DATABASE_URL": db_url, "DM_PIPELINE_ACCOUNTS": str(accounts_file),
                "DM_PIPELINE_WRITE_AHEAD": str(WRITE_AHEAD)}
    sim.on_request = hook
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "sync", "--account", account.key],
                            env=proc_env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Whichever comes first: the crash point, or the process finishing (e.g. a no-op pass of one request).
    threading.Thread(target=lambda: (proc.wait(), reached.set()), daemon=True).start()
    sent = False
    try:
        if reached.wait(90) and proc.poll() is None:
            if mid_page:
                time.sleep(rng.uniform(0, 0.03))  # the crash moment itself is the random variable, not a wait
            proc.send_signal(signal.SIGKILL)
            sent = True
        proc.wait(30)
    finally:
        with lock:
            seen = count[0]
        release.set()
        sim.on_request = None
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    landed = sent and proc.returncode == -signal.SIGKILL
    where = f"request {k}, {'mid-page' if mid_page else 'between pages'}" if landed else None
    # Held: request k never got its answer. Let through: it may have been answered before the kill.
    return Kill(where, proc.returncode, seen if mid_page else seen - 1)


@pytest.mark.slow
def test_crash_trials(engine, db_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dm_pipeline.simulator import Simulator, World

    rng = random.Random(20261123)
    world = World(seed=13, events_per_account=150)
    with Simulator(world, rate_limit=10**6) as sim:
        env: dict[str, str] = {}
        accounts = {p: account_for(p, sim, env)[0] for p in PROVIDERS}
        truth_routes = {p: list(account_for(p, sim, env)[2].values()) for p in PROVIDERS}
        os.environ.update(env)
        accounts_file = tmp_path / "accounts.yaml"
        write_accounts(accounts_file, list(accounts.values()))
        failures = []
        for trial in range(TRIALS):  # each trial is one real SIGKILL
            provider = PROVIDERS[trial % len(PROVIDERS)]
            account = accounts[provider]
            if trial >= len(PROVIDERS):  # after the first backfills: incremental passes over a moving world
                world.advance(account.user_id, rng.randint(0, 70))
            before = page_rows(engine, account.key)
            uninterrupted = uninterrupted_requests(engine, sim, account)
            kill = kill_at_random(sim, account, db_url, accounts_file, env, rng, max_k=4)
            if kill.where is None:  # it finished first (fewer requests than k, or a late mid-page kill):
                # the next pass is held at its first request, which is always there and cannot be missed
                world.advance(account.user_id, rng.randint(1, 30))
                before = page_rows(engine, account.key)
                uninterrupted = uninterrupted_requests(engine, sim, account)
                kill = kill_at_random(sim, account, db_url, accounts_file, env, rng, max_k=1, mid_page=False)
            state = kill_state(engine, account.key, before)
            with counting_requests(sim, account.user_id) as requests:
                resumed = run_sync(engine, account, limits=RESUME)
            verify = run_sync(engine, account, limits=RESUME)  # after a resume, a re-run finds nothing to do
            truth = {k: v for r in truth_routes[provider]
                     for k, v in truth_rows(world.truth(account.user_id, r)).items()}
            stored = warehouse_rows(engine, account.key)
            with engine.connect() as conn:
                inserted = conn.scalar(text("SELECT coalesce(sum(events_inserted), 0) FROM dm_audit.dm_sync_audit "
                                            "WHERE row_kind = 'page' AND account_key = :k"), {"k": account.key})
            problems = []
            if kill.returncode != -signal.SIGKILL:
                problems.append(f"the SIGKILL did not land (rc {kill.returncode})")
            if kill.answered - state.committed > 2 * WRITE_AHEAD + 1:
                problems.append(f"{kill.answered - state.committed} answered pages lost (write-ahead {WRITE_AHEAD})")
            problems += resume_problems(engine, state, resumed, requests[0], uninterrupted)
            exact = (not problems and resumed.status is StreamStatus.SUCCEEDED and stored == truth
                     and inserted == len(stored) and verify.total("inserted") == 0 and verify.total("updated") == 0)
            detail = (f"{provider}, killed at {kill.where} (rc {kill.returncode}), {kill.answered} answered, "
                      f"{state.committed} committed; "
                      f"resume {requests[0]} requests (uninterrupted {uninterrupted}); {len(stored)} stored / "
                      f"{len(truth)} truth, audit inserts {inserted}") + "".join(f"; {p}" for p in problems)
            results.record("crash", trial_name(trial), exact, detail)
            if not exact:
                failures.append(detail)
    assert not failures, failures
