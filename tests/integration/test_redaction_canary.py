"""Redaction, proved with canaries: every message text and an access token carry unique markers, the
accounts are backfilled through Dagster (a persistent instance: event log + compute logs on disk), the CLI
and the engine in-process, with provider faults (503, 429, 403, 401) and a Postgres failure on a page
commit, and then every sink outside `dm_private` is scanned. The markers must be found in
dm_private.dm_history (the scan works) and nowhere else. A sink that yields nothing fails the test."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import traceback
import uuid
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, text

from dm_pipeline.settings import PROJECT_ROOT
from dm_pipeline.simulator.world import MESSAGE_CREATE

CANARY = f"CNRY{uuid.uuid4().hex[:16]}"       # in every message text
TOKEN_CANARY = f"TKCN{uuid.uuid4().hex[:16]}"  # in the access tokens
TRAP = "TRAPWORD"                              # in one text: a CHECK constraint refuses it once per reset


def dm_sync_job() -> dg.JobDefinition:
    """The job as the Dagster child processes rebuild it (`dg.reconstructable`)."""
    from dm_pipeline.definitions import defs

    return defs.resolve_job_def("dm_sync_job")


# ------------------------------------------------------------------------------------------- set-up
def _seed_canaries(world) -> str:  # type: ignore[no-untyped-def]
    """Prefix every MessageCreate text with the canary; put TRAP into one message only account 2 sees."""
    seen: set[str] = set()
    trap_owner = world.accounts()[2]
    trap_id = None
    for uid in world.accounts():
        for ev in world.truth(uid):
            if ev["event_type"] != MESSAGE_CREATE or ev["id"] in seen:
                continue
            seen.add(ev["id"])
            only_owner = world.conversation(ev["dm_conversation_id"]).accounts == (trap_owner,)
            trap = trap_id is None and uid == trap_owner and only_owner
            trap_id = ev["id"] if trap else trap_id
            world.edit(ev["id"], f"{CANARY}:{ev['id']}{' ' + TRAP if trap else ''} {ev.get('text') or ''}")
    assert trap_id is not None
    return trap_id


def _arm_trap(engine: Engine) -> None:
    """A CHECK that refuses a row whose text holds TRAP the first time after each reset (a sequence is not
    rolled back), so the page commit fails with Postgres quoting the failing row, then a retry passes."""
    with engine.begin() as conn:
        conn.execute(text("CREATE SEQUENCE dm_private.canary_trap"))
        conn.execute(text(f"""
            ALTER TABLE dm_private.dm_history ADD CONSTRAINT canary_trap CHECK (
                CASE WHEN position('{TRAP}' IN coalesce(text, '')) = 0 THEN true
                     ELSE nextval('dm_private.canary_trap') > 1 END)"""))


def _reset_trap(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("SELECT setval('dm_private.canary_trap', 1, false)"))


def _accounts_yaml(path: Path, accounts: list[tuple[str, str, str]], base_url: str) -> None:
    path.write_text("accounts:\n" + "".join(
        f"  - key: {key}\n    provider: x\n    user_id: \"{uid}\"\n    base_url: {base_url}\n"
        f"    token_env: {env}\n    page_size: 100\n" for key, uid, env in accounts))


def _dagster_home(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(textwrap.dedent(f"""\
        storage:
          sqlite:
            base_dir: {home}/storage
        compute_logs:
          module: dagster._core.storage.local_compute_log_manager
          class: LocalComputeLogManager
          config:
            base_dir: {home}/compute_logs
        local_artifact_storage:
          module: dagster._core.storage.root
          class: LocalArtifactStorage
          config:
            base_dir: {home}/artifacts
        telemetry:
          enabled: false
        """))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dm_pipeline.cli", *args], cwd=PROJECT_ROOT, text=True,
                          capture_output=True, timeout=180, env=dict(os.environ))


# ------------------------------------------------------------------------------------------ scanning
Corpus = dict[str, str]   # sink name -> everything it holds, as text


def _rows(engine: Engine, relation: str) -> str:
    with engine.connect() as conn:
        return "\n".join(conn.scalars(text(f"SELECT t::text FROM {relation} AS t")))


def _files(root: Path, pattern: str = "*") -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(root.rglob(pattern)) if p.is_file())


def _leaks(corpus: Corpus) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for sink, blob in corpus.items():
        hits = [m for m in (CANARY, TOKEN_CANARY, TRAP) if m in blob]
        if hits:
            at = blob.find(hits[0])
            found[sink] = [*hits, blob[max(0, at - 120): at + 80]]
    return found


def test_the_scanner_finds_a_planted_canary() -> None:
    assert _leaks({"x": f"... {CANARY} ..."}) and _leaks({"y": TOKEN_CANARY}) and not _leaks({"z": "clean"})


# ------------------------------------------------------------------------------------------ the test
@pytest.mark.slow
def test_no_canary_outside_dm_private(engine: Engine, db_url: str, world, sim, tmp_path: Path,  # type: ignore[no-untyped-def]
                                      monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
                                      caplog: pytest.LogCaptureFixture) -> None:
    a0, a1, a2 = world.accounts()
    trap_id = _seed_canaries(world)
    _arm_trap(engine)

    # Tokens carrying a canary: one the simulator accepts for a0, one it refuses (401) for a1.
    good_token, bad_token = f"sim-x-{a0}-{TOKEN_CANARY}", f"expired-{TOKEN_CANARY}"
    known = world.account_for_token
    monkeypatch.setattr(world, "account_for_token", lambda t: a0 if t == good_token else known(t))
    for env, value in {"DM_CANARY_TOKEN_0": good_token, "DM_CANARY_TOKEN_1": world.token_for(a1),
                       "DM_CANARY_TOKEN_2": world.token_for(a2), "DM_CANARY_TOKEN_BAD": bad_token}.items():
        monkeypatch.setenv(env, value)
    accounts = [("acct-0", a0, "DM_CANARY_TOKEN_0"), ("acct-1", a1, "DM_CANARY_TOKEN_1"),
                ("acct-2", a2, "DM_CANARY_TOKEN_2"), ("acct-403", a0, "DM_CANARY_TOKEN_0"),
                ("acct-401", a1, "DM_CANARY_TOKEN_BAD"), ("cli-2", a2, "DM_CANARY_TOKEN_2"),
                ("inproc-2", a2, "DM_CANARY_TOKEN_2")]
    accounts_file = tmp_path / "accounts.yaml"
    _accounts_yaml(accounts_file, accounts, sim.url)
    home = tmp_path / "dagster_home"
    _dagster_home(home)
    monkeypatch.setenv("DM_PIPELINE_ACCOUNTS", str(accounts_file))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(PROJECT_ROOT)  # the step processes import this module from here

    # ---- Dagster: a backfill run over three accounts (retried 503s and a 429 inside; the trapped page
    # fails the step once, the RetryPolicy re-runs it), then a run whose accounts fail fast (403, 401).
    sim.faults.inject(a1, "dm_events", "503", count=2)
    sim.faults.inject(a1, "dm_events", "429", count=1, retry_after=1)
    job = dg.reconstructable(dm_sync_job)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("accounts", [k for k, _, _ in accounts])

        def run(first: str, last: str) -> dg.JobExecutionResult:
            return dg.execute_job(job, instance, tags={"dagster/asset_partition_range_start": first,
                                                       "dagster/asset_partition_range_end": last})

        backfill = run("acct-0", "acct-2")
        sim.faults.inject(a0, "dm_events", "403", count=1)
        failing = run("acct-403", "acct-401")
        run_ids = [backfill.run_id, failing.run_id]
        events = {rid: instance.all_logs(rid) for rid in run_ids}
        dagster_corpus = "\n".join(
            [dg.serialize_value(r) for r in instance.get_runs()]
            + [dg.serialize_value(e) for rid in run_ids for e in events[rid]])
    run_output = capfd.readouterr()

    types = {rid: [e.dagster_event.event_type_value for e in evs if e.dagster_event] for rid, evs in events.items()}
    assert backfill.success, types[backfill.run_id]
    assert {"STEP_UP_FOR_RETRY", "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"} <= set(types[backfill.run_id])
    assert not failing.success and "STEP_FAILURE" in types[failing.run_id]
    assert "canary_trap" in dagster_corpus  # the trapped commit's failure is in the event log
    assert "client_forbidden" in dagster_corpus and "unauthorized" in dagster_corpus

    # ---- The CLI: a fresh backfill that hits the trap (the process dies on it), then one that passes;
    # the handoff export; an erasure, dry run then for real.
    _reset_trap(engine)
    cli_runs = [_cli("-v", "sync", "--account", "cli-2"), _cli("-v", "sync", "--account", "cli-2")]
    assert cli_runs[0].returncode != 0 and "canary_trap" in cli_runs[0].stderr, cli_runs[0].stderr[-2000:]
    assert cli_runs[1].returncode == 0, cli_runs[1].stderr[-2000:]
    export_file = tmp_path / "handoff.jsonl"
    cli_runs += [_cli("export", "--account", "acct-0", "--out", str(export_file)),
                 _cli("erase", "--account", "cli-2"), _cli("erase", "--account", "cli-2", "--yes")]
    assert all(p.returncode == 0 for p in cli_runs[2:]), [p.stderr[-1000:] for p in cli_runs[2:]]
    assert "exported=" in cli_runs[2].stdout and "erased cli-2" in cli_runs[4].stdout

    # ---- In-process: the engine's own exception and log records when the trapped commit fails.
    _reset_trap(engine)
    caplog.set_level(logging.DEBUG)
    raised = _sync_in_process(engine, sim.url, a2, "inproc-2", "DM_CANARY_TOKEN_2")
    assert "PageCommitError" in raised and "canary_trap" in raised

    # ---- Positive control: the texts, canaries and trap included, are where they belong.
    with engine.connect() as conn:
        private = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history WHERE position(:c IN text) > 0"),
                              {"c": CANARY})
        trapped = conn.scalar(text("SELECT count(*) FROM dm_private.dm_history WHERE message_id = :m"),
                              {"m": trap_id})
        views = list(conn.scalars(text("SELECT table_name FROM information_schema.views "
                                       "WHERE table_schema = 'dm_analytics' ORDER BY 1")))
        first_page_requests = conn.scalar(text(
            "SELECT requests FROM dm_audit.dm_sync_audit WHERE account_key = 'acct-1' AND row_kind = 'page' "
            "ORDER BY audit_id LIMIT 1"))
    assert private and private >= len(world.truth(a0)) // 2 and trapped
    assert first_page_requests == 4  # two 503s and a 429 were retried before the page came
    assert set(views) >= {"messages", "conversations", "daily_volume", "sync_health"}

    corpus: Corpus = {
        "dm_audit.dm_sync_audit": _rows(engine, "dm_audit.dm_sync_audit"),
        "dm_audit.dm_erasures": _rows(engine, "dm_audit.dm_erasures"),
        **{f"dm_analytics.{v}": _rows(engine, f"dm_analytics.{v}") for v in views},
        "dagster event log and runs": dagster_corpus,
        "dagster compute logs": _files(home / "compute_logs"),
        "DAGSTER_HOME files (sqlite storage, logs)": _files(home),
        "run stdout + stderr": run_output.out + run_output.err,
        **{f"cli {i} ({' '.join(p.args[3:])}): stdout + stderr": p.stdout + p.stderr for i, p in enumerate(cli_runs)},
        "export file": export_file.read_text(encoding="utf-8"),
        "in-process exception": raised,
        "in-process log records": caplog.text,  # formatted, tracebacks included
    }
    empty = sorted(sink for sink, blob in corpus.items() if not blob.strip())
    assert not empty, f"sinks that yielded nothing to scan: {empty}"
    leaks = _leaks(corpus)
    assert not leaks, "canaries outside dm_private:\n" + "\n".join(f"- {k}: {v}" for k, v in leaks.items())


def _sync_in_process(engine: Engine, base_url: str, user_id: str, key: str, token_env: str) -> str:
    from dm_pipeline.clients import build_client, http_client
    from dm_pipeline.models import Account, Provider
    from dm_pipeline.sync import RunLimits, sync_account

    account = Account(key=key, provider=Provider.X, user_id=user_id, base_url=base_url, token_env=token_env,
                      page_size=100)
    with http_client() as http, pytest.raises(Exception) as info:
        sync_account(engine, build_client(account, http, engine=engine), f"test-{uuid.uuid4()}", RunLimits())
    exc = info.value
    logging.getLogger("dm_pipeline.test").error("sync failed", exc_info=exc)
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])

