"""The UI backfill as a person does it, in a real browser, on `make dev`'s own stack, over 20 account
partitions (the shipped accounts file and 16 more connections of the simulator's accounts): `dm-pipeline dev` (what
`make dev` execs) starts dagster dev and the simulator with its credentials; headless Chromium (Debian's
package, driven by Playwright) opens the dm_history asset, Materialize… → All partitions → Launch backfill,
follows the toast to the backfill, and opens each partition. Asserted: the accounts sensor's first runs and
the backfill succeed with no credential in the test's environment, every account's partition shows its *own*
figures (those of its rows in the audit of the backfill's run), and the warehouse equals the simulator's
truth account by account.

Nothing sleeps: the browser waits on selectors, the stack on GraphQL polls bounded by deadlines, and the
whole test by pytest-timeout. `DM_UI_SCREENSHOTS=docs/img` also writes the screenshots used in
docs/operations.md."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dm_pipeline.accounts import load_accounts, required_env
from dm_pipeline.mainjob import SIM_SEED
from dm_pipeline.models import Account, Provider
from dm_pipeline.settings import PROJECT_ROOT
from tests.e2e.stack import (
    TERMINAL_BACKFILL,
    DevStack,
    free_port,
    instance_env,
    wait_for,
    write_dagster_home,
)
from tests.integration.helpers import audit_inserted_total, truth_rows, warehouse_rows

DEFAULT_ACCOUNTS = PROJECT_ROOT / "config" / "accounts.yaml"
BASE_URL_VARS = ("DM_X_BASE_URL", "DM_XQUIK_BASE_URL", "DM_GETXAPI_BASE_URL")
UI_TIMEOUT_MS = 60_000

RUNS = """
query Runs {
  runsOrError { __typename ... on Runs { results { runId status tags { key value } } } }
}"""


def twenty_accounts(path: Path) -> Path:
    """The shipped accounts file plus 16 more entries, written as a person adds them: 20 partitions, as the
    issue asks of the UI backfill. `make dev`'s simulator serves three accounts, so the extra entries are
    further X and GetXAPI connections of those three (page sizes 20, 50 and 100), each with a credential
    variable of its own; `dm-pipeline dev` exports the simulator's credentials for all of them."""
    from dm_pipeline.simulator import World

    world = World(seed=SIM_SEED)
    users = [world.user(uid) for uid in world.accounts()]
    extra: list[str] = []
    for n in range(2, 6):
        for user in users:
            name = f"{user.username.split('_')[0]}-{n}"
            var = name.upper().replace("-", "_")
            size = (20, 50, 100)[n % 3]
            extra.append(f"""
  - key: x-{name}
    provider: x
    user_id: "{user.id}"
    base_url: ${{DM_X_BASE_URL:-http://127.0.0.1:${{DM_SIMULATOR_PORT:-8765}}}}
    token_env: DM_X_TOKEN_{var}
    page_size: {size}
""")
            extra.append(f"""
  - key: getxapi-{name}
    provider: getxapi
    user_id: "{user.id}"
    base_url: ${{DM_GETXAPI_BASE_URL:-http://127.0.0.1:${{DM_SIMULATOR_PORT:-8765}}/getxapi}}
    token_env: DM_GETXAPI_API_KEY
    auth_token_env: DM_GETXAPI_AUTH_{var}
    page_size: {size}
""")
    shipped = DEFAULT_ACCOUNTS.read_text(encoding="utf-8").rstrip("\n")
    path.write_text(shipped + "\n" + "".join(extra[:16]), encoding="utf-8")
    return path


def credential_names(accounts: list[Account]) -> list[str]:
    return sorted({n for a in accounts for need in required_env(a)
                   for n in (need.name, *(alt for _, alt in need.alternatives))})


def truth_of(world: Any, account: Account) -> dict[str, tuple[object, ...]]:
    """What a full sync of a default account stores: its streams' events, in the warehouse's columns."""
    routes: list[str]
    if account.provider is Provider.X:
        routes = ["dm_events"]
        if account.discover_conversations:
            routes += sorted({f"dm_conversation:{e['dm_conversation_id']}" for e in world.truth(account.user_id)})
    elif account.provider is Provider.XQUIK:
        routes = [f"xquik:{p if p.isdigit() else world.user_by_username(p).id}" for p in account.partners
                  if p.isdigit() or world.user_by_username(p) is not None]
        assert len(routes) == len(account.partners), account.partners
    else:
        routes = [f"getxapi:{t}" for t in account.tabs]
    expected: dict[str, tuple[object, ...]] = {}
    for route in routes:
        expected.update(truth_rows(world.truth(account.user_id, route)))
    return expected


def audited(engine: Engine, run_ids: list[str]) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            # a no-op page writes no row of its own: its job row counts it in folded_pages
            "SELECT account_key, "
            "count(*) FILTER (WHERE row_kind = 'page') + coalesce(sum(folded_pages), 0) AS pages, "
            "coalesce(sum(requests) FILTER (WHERE row_kind = 'job'), 0) AS requests, "
            "coalesce(sum(events_inserted), 0) AS events_inserted "
            "FROM dm_audit.dm_sync_audit WHERE run_id = ANY(:r) GROUP BY account_key"), {"r": run_ids}).mappings()
        return {r["account_key"]: {k: int(r[k]) for k in ("pages", "requests", "events_inserted")} for r in rows}


def shot(page: Any, name: str, tmp_path: Path) -> None:
    """A screenshot into the test's folder, and into $DM_UI_SCREENSHOTS (docs/img) when set."""
    page.screenshot(path=str(tmp_path / name))
    if os.environ.get("DM_UI_SCREENSHOTS"):
        target = Path(os.environ["DM_UI_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / name))


def metadata_value(page: Any, key: str) -> str:
    """The value cell of a row of the partition's metadata table."""
    row = page.locator("tr").filter(has=page.locator("td", has_text=re.compile(rf"^\s*{re.escape(key)}\s*$")))
    return str(row.first.locator("td").nth(1).inner_text()).strip()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_ui_backfill_in_a_browser_on_make_dev(browser_page: Any, tmp_path: Path, db_url: str,
                                                engine: Engine, dagster_pg_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    page = browser_page
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    for name in BASE_URL_VARS:  # the shipped file's base URLs: the simulator's
        monkeypatch.delenv(name, raising=False)
    sim_port = free_port()
    monkeypatch.setenv("DM_SIMULATOR_PORT", str(sim_port))
    accounts_file = twenty_accounts(tmp_path / "accounts.yaml")
    accounts = load_accounts(accounts_file)
    keys = [a.key for a in accounts]
    assert len(keys) == 20 and len({a.provider for a in accounts}) == 3, keys
    names = credential_names(accounts)
    env = instance_env(tmp_path / "home", dagster_pg_url, db_url, accounts_file, {
        "DM_SIMULATOR_PORT": str(sim_port),
        "DM_PIPELINE_CRON": "0 0 1 1 *",   # the schedule must not tick into the test
    })
    write_dagster_home(env)
    timings: dict[str, float] = {}

    # No credential and no base-URL override reaches `dm-pipeline dev`: it must provide them itself.
    t0 = time.monotonic()
    stack = DevStack(env=env, log_dir=tmp_path / "logs", unset=(*names, *BASE_URL_VARS))
    with stack:
        timings["stack_ready_s"] = time.monotonic() - t0

        # The accounts sensor registers the 20 partitions and launches their first runs; they succeed.
        def sensor_runs_done() -> list[dict[str, Any]] | None:
            runs = stack.graphql(RUNS)["runsOrError"]["results"]
            done = runs and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs)
            return runs if done else None

        t = time.monotonic()
        sensor_runs = wait_for("the accounts sensor's runs", sensor_runs_done, 300, every_s=1.0,
                               diagnose=stack.diagnose)
        timings["sensor_runs_s"] = time.monotonic() - t
        assert {r["status"] for r in sensor_runs} == {"SUCCESS"}, (sensor_runs, stack.diagnose())

        # --- the person: open the asset, Materialize… → All → Launch backfill
        t = time.monotonic()
        page.goto(f"{stack.url}/assets/dm_history")
        materialize = page.get_by_role("button", name="Materialize…")
        materialize.wait_for()
        timings["asset_page_s"] = time.monotonic() - t
        # On a loopback origin, the UI asks the instance's first visitor to join the community (a dialog
        # 1 s after the page loads; this instance is new): they click Skip, and it never shows again.
        page.get_by_role("dialog").filter(has_text="Join the Dagster community").get_by_role(
            "button", name="Skip").click()
        page.get_by_text("Join the Dagster community").wait_for(state="hidden")
        materialize.click()
        # dm_history and dm_sync_audit are one multi-asset: the UI says both will be materialized.
        page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
        dialog = page.get_by_role("dialog").filter(has_text="Partition selection")
        dialog.get_by_role("button", name="All", exact=True).click()
        dialog.get_by_text(f"{len(keys)} partitions", exact=True).wait_for()
        shot(page, "ui-backfill-dialog.png", tmp_path)
        dialog.get_by_role("button", name="Launch backfill").click()
        launched = time.monotonic()
        toast = page.get_by_text(re.compile(r"^Created backfill [a-z0-9]+$"))
        toast.wait_for()
        backfill_id = str(toast.inner_text()).split()[-1]
        page.get_by_role("link", name="View", exact=True).click()
        page.wait_for_url(f"**/runs/b/{backfill_id}**")

        # The daemon takes it from here: poll its state (bounded), then read the outcome in the UI.
        state = stack.wait_backfill(backfill_id, deadline_s=600)
        timings["backfill_s"] = time.monotonic() - launched
        assert state["status"] == "COMPLETED_SUCCESS" and state["status"] in TERMINAL_BACKFILL, (
            f"{state}\n{stack.diagnose()}")
        assert state["isAssetBackfill"] and sorted(state["partitionNames"]) == sorted(keys)
        page.reload()
        page.get_by_text("100% completed").nth(1).wait_for()  # dm_history and dm_sync_audit
        assert page.get_by_text("Succeeded", exact=True).count() >= 1
        shot(page, "ui-backfill.png", tmp_path)

        backfill_runs = [r["runId"] for r in state["runs"]]
        assert backfill_runs and {r["status"] for r in state["runs"]} == {"SUCCESS"}, state["runs"]
        figures = audited(engine, backfill_runs)
        assert set(figures) == set(keys), figures

        # --- each partition, opened from the Partitions tab, shows its own account's figures
        t = time.monotonic()
        page.goto(f"{stack.url}/assets/dm_history?view=partitions")
        for key in keys:
            page.get_by_text(key, exact=True).first.wait_for()
        timings["partitions_view_s"] = time.monotonic() - t
        for key in keys:
            page.get_by_text(key, exact=True).first.click()
            page.locator("td").filter(has_text=re.compile(rf"^{re.escape(key)}$")).first.wait_for()
            shown = {k: metadata_value(page, k) for k in ("account", "status", *figures[key])}
            assert shown == {"account": key, "status": "succeeded",
                             **{k: str(v) for k, v in figures[key].items()}}, (key, shown)
            # every per-stream entry is one of its own streams
            stream_keys = page.locator("td").filter(has_text=re.compile(r"^[a-z0-9._-]+/\S+$")).all_inner_texts()
            assert stream_keys and all(s.strip().startswith(f"{key}/") for s in stream_keys), (key, stream_keys)
            if key == "x-ada":
                shot(page, "ui-partition.png", tmp_path)
        codes = stack.stop()
    assert all(code is not None for code in codes.values()), codes
    with pytest.raises(OSError):  # the simulator stopped with `dm-pipeline dev`
        import socket

        socket.create_connection(("127.0.0.1", sim_port), timeout=2).close()

    # The warehouse: every account equals the simulator's truth, each row audited once.
    from dm_pipeline.simulator import World

    world = World(seed=SIM_SEED)
    for account in accounts:
        expected = truth_of(world, account)
        stored = warehouse_rows(engine, account.key)
        assert stored and stored == expected, (account.key, len(stored), len(expected))
        assert audit_inserted_total(engine, account.key) == len(stored)
    print("\nUI backfill in Chromium on `dm-pipeline dev`: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
