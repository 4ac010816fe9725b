"""`dm-pipeline status` through the real CLI: one row per account x stream from sync_state and the audit
(last run, lag, high-water event time, pass in progress, last error and what to do), accounts never
synced, and the README's troubleshooting table in step with the codes `status` explains."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, text

from dm_pipeline.settings import PROJECT_ROOT
from dm_pipeline.status import ERROR_HELP, age, explain
from tests.integration.test_cli_errors import cli
from tests.integration.test_cli_sync import write_accounts


def rows(stdout: str) -> dict[str, list[str]]:
    """Table rows by 'account/stream' (rich's box characters split the cells)."""
    out = {}
    for line in stdout.split("cost per account")[0].splitlines():  # the stream table, not the cost table
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 8 and cells[0] not in {"account", ""}:
            out[f"{cells[0]}/{cells[1]}"] = cells
    return out


def test_status_after_syncs(tmp_path: Path, sim, db_url: str, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    users = sim.world.accounts()
    env = {**write_accounts(tmp_path / "accounts.yaml", sim, users[0], users[1]), "DATABASE_URL": db_url}
    # a third account in the file that never syncs
    with (tmp_path / "accounts.yaml").open("a") as fh:
        fh.write(f"  - key: x-later\n    provider: x\n    user_id: \"{users[2]}\"\n    base_url: {sim.base_url('x')}\n"
                 "    token_env: DX_LATER\n")
    assert cli("sync", "--account", "x-one", "--account", "gx-two", env=env).returncode == 0
    sim.faults.inject(users[1], "getxapi_list", "401", count=1)
    sim.world.advance(users[0], 120)
    assert cli("sync", "--account", "x-one", "--account", "gx-two", "--max-pages", "1", env=env).returncode == 1

    proc = cli("status", env=env)
    assert proc.returncode == 0, proc.stderr
    table = rows(proc.stdout)
    assert set(table) == {"x-one/dm_events", "gx-two/tab:all", "gx-two/tab:requests", "x-later/—"}

    _, _, last_run, lag, high_water, pass_, sweep, error = table["x-one/dm_events"]
    assert last_run.startswith("partial ") and last_run.endswith(" ago")   # parked by --max-pages 1
    assert re.fullmatch(r"\d+s", lag)                                        # the first sync succeeded
    with engine.connect() as conn:
        hw_at = conn.scalar(text(
            "SELECT h.created_at FROM dm_private.sync_state s JOIN dm_private.dm_history h "
            "ON h.account_key = s.account_key AND h.message_id = s.high_water_id "
            "WHERE s.account_key = 'x-one' AND s.stream_key = 'dm_events'"))
    assert high_water == f"{hw_at:%Y-%m-%d %H:%M}"
    assert re.fullmatch(r"1 pages since \d\d-\d\d \d\d:\d\d", pass_)
    assert error == "—"
    assert sweep.endswith(" ago")  # the first pass walked the whole inbox window: a complete walk

    failed = table["gx-two/tab:all"]
    assert failed[2].startswith("failed ") and failed[7].startswith("invalid_auth_token (HTTP 401) ")
    assert table["x-later/—"][2] == "never synced"
    assert ("invalid_auth_token: GetXAPI: the account's auth_token cookie is invalid or expired (401). Fix:"
            in proc.stdout)

    only = cli("status", "--account", "x-one", env=env)
    assert set(rows(only.stdout)) == {"x-one/dm_events"}


def test_status_on_an_empty_warehouse_lists_the_configured_accounts(tmp_path: Path, sim, db_url: str) -> None:  # type: ignore[no-untyped-def]
    users = sim.world.accounts()
    env = {**write_accounts(tmp_path / "accounts.yaml", sim, users[0], users[1]), "DATABASE_URL": db_url}
    proc = cli("status", env=env)
    assert proc.returncode == 0, proc.stderr
    assert {k: v[2] for k, v in rows(proc.stdout).items()} == {"x-one/—": "never synced", "gx-two/—": "never synced"}


def test_a_broken_accounts_file_does_not_hide_the_status(tmp_path: Path, db_url: str) -> None:
    bad = tmp_path / "accounts.yaml"
    bad.write_text("accounts: [\n")
    proc = cli("status", env={"DM_PIPELINE_ACCOUNTS": str(bad), "DATABASE_URL": db_url})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("warning: ") and "invalid YAML" in proc.stderr


def test_age_is_short_and_human() -> None:
    assert [age(s) for s in (None, 5, 125, 3 * 3600 + 5 * 60, 2 * 86400 + 3 * 3600)] == \
        ["—", "5s", "2m", "3h 05m", "2d 3h"]


def test_the_readme_troubleshooting_table_explains_every_error_code() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)`", section, re.MULTILINE))
    assert documented == set(ERROR_HELP), (sorted(set(ERROR_HELP) - documented), sorted(documented - set(ERROR_HELP)))
    assert explain("http_418") and explain("nonsense") is None


def test_status_shows_dormant_streams_and_cost_per_account(tmp_path: Path, sim, db_url: str) -> None:  # type: ignore[no-untyped-def]
    user = sim.world.accounts()[0]
    (tmp_path / "accounts.yaml").write_text(
        f"accounts:\n  - key: x-disc\n    provider: x\n    user_id: \"{user}\"\n    base_url: {sim.base_url('x')}\n"
        "    token_env: DX_DISC\n    page_size: 50\n    budget: 500\n    conversations: {discover: true}\n")
    env = {"DM_PIPELINE_ACCOUNTS": str(tmp_path / "accounts.yaml"), "DX_DISC": sim.world.token_for(user),
           "DATABASE_URL": db_url}
    assert cli("sync", env=env).returncode == 0          # backfill: the inbox, then each conversation
    noop = cli("sync", env=env)
    assert noop.returncode == 0, noop.stderr
    dormant = len(sim.world.conversations_of(user))
    assert f"x-disc  {dormant} dormant (the inbox keeps them current): 0 requests" in noop.stdout, noop.stdout
    assert f"done: {dormant + 1} stream(s): {dormant} dormant, 1 succeeded" in noop.stdout, noop.stdout

    proc = cli("status", env=env)
    assert proc.returncode == 0, proc.stderr
    table = rows(proc.stdout)
    conversations = [k for k in table if k.startswith("x-disc/conversation:")]
    assert len(conversations) == dormant
    assert all(table[k][2].startswith("dormant ") and "(the inbox keeps it current)" in table[k][2]
               for k in conversations)
    assert "no stream is failing right now." in proc.stdout
    cost = next(line for line in proc.stdout.splitlines() if line.startswith("│ x-disc") and "requests" in line)
    cells = [c.strip() for c in cost.split("│")[1:-1]]
    account, unit, requests_24h, cost_24h, forecast, budget, streams = cells[:7]
    assert (account, unit, budget) == ("x-disc", "requests", "500")
    assert int(requests_24h) == int(cost_24h) > dormant             # the backfill's pages and the no-op's one
    assert streams == f"{dormant + 1} ({dormant} dormant)"
    assert int(forecast.replace(",", "")) == 96                    # one request per tick, 96 ticks a day
