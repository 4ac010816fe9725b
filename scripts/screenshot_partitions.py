"""Screenshot of the `dm_history` partitions page in the Dagster UI, for docs/operations.md.

    .venv/bin/python scripts/screenshot_partitions.py                 # private stack, then the screenshot
    .venv/bin/python scripts/screenshot_partitions.py --url http://127.0.0.1:3000   # reuse `make dev`

Without `--url` it starts everything privately (nothing touches `.dm_pipeline/` or port 3000): an embedded
Postgres in a temporary DM_PIPELINE_HOME, the simulator on a free loopback port, `dagster-webserver` and
`dagster-daemon run` on the project's dagster.yaml; registers `--accounts` accounts of the three providers,
backfills all but `--missing` of them through the UI's GraphQL mutation, waits for the backfill, then
points headless Chromium at `/assets/dm_history?view=partitions` and writes `--out`.

Needs Debian's Chromium (`apt-get install -y chromium`); not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))  # `tests.e2e.stack`: the same stack as the end-to-end test

CHROMIUM = "/usr/bin/chromium"
PAGE = "/assets/dm_history?view=partitions"
ALIAS = "dagster-ui.invalid"


def screenshot(url: str, out: Path, budget_ms: int = 25_000, timeout_s: float = 180.0) -> None:
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing. Fix: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    # The UI opens a "Join the Dagster community" dialog over the page when its origin is 127.0.0.1 or
    # localhost. Reach the same loopback server under another name instead of dismissing it (which would
    # write to the instance): Chromium maps the name to the address itself, no DNS involved.
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    url = urlunsplit(parts._replace(netloc=f"{ALIAS}:{parts.port}" if parts.port else ALIAS))
    with tempfile.TemporaryDirectory(prefix="dm-chromium-") as profile:
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--host-resolver-rules=MAP {ALIAS} {host}", f"--user-data-dir={profile}",
                f"--screenshot={out}", "--window-size=1600,1000",
                f"--virtual-time-budget={budget_ms}", url]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its renderer and zygote share the group
            proc.communicate()
            raise SystemExit(f"chromium did not finish within {timeout_s:.0f}s") from None
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed ({proc.returncode}):\n{output.decode(errors='replace')[-3000:]}")


@contextlib.contextmanager
def private_stack(work: Path, n_accounts: int, missing: int) -> Iterator[str]:
    """Everything the UI needs, private to `work`; yields the webserver's URL once the backfill is done."""
    os.environ["DM_PIPELINE_HOME"] = str(work / "state")
    import dagster as dg

    from dm_pipeline.db.engine import ensure_database, start_embedded, stop_embedded
    from dm_pipeline.db.migrate import upgrade
    from dm_pipeline.simulator import Simulator, World
    from tests.e2e.stack import (
        DagsterStack,
        accounts_yaml,
        credentials_env,
        instance_env,
        mixed_accounts,
        write_dagster_home,
    )

    pgdata = work / "state" / "pgdata"
    base = start_embedded(pgdata)
    try:
        app_url = ensure_database(base, "dm_pipeline").render_as_string(hide_password=False)
        upgrade(app_url)
        dagster_url = ensure_database(base, "dagster").set(drivername="postgresql+psycopg2")
        world = World(seed=7, accounts=4, users=12, events_per_account=120)
        with Simulator(world, rate_limit=100_000) as sim:
            accounts = mixed_accounts(sim, n_accounts, prefix="inbox")
            keys = [a.key for a in accounts]
            accounts_file = work / "accounts.yaml"
            accounts_file.write_text(accounts_yaml(accounts))
            env = instance_env(work, dagster_url.render_as_string(hide_password=False), app_url, accounts_file, {
                **credentials_env(world, accounts), "DM_PIPELINE_ACCOUNTS_PER_RUN": "3",
                "DM_SIMULATOR_PORT": sim.url.rsplit(":", 1)[1], "DM_PIPELINE_CRON": "0 0 1 1 *"})
            home = write_dagster_home(env)
            os.environ.update(env)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("accounts", keys)
            with DagsterStack(env=env, log_dir=work / "logs") as stack:
                print(f"UI at {stack.url}; backfilling {len(keys) - missing} of {len(keys)} accounts", flush=True)
                backfill_id = stack.launch_asset_backfill(["dm_history", "dm_sync_audit"], keys[: len(keys) - missing])
                state = stack.wait_backfill(backfill_id, deadline_s=600)
                print(f"backfill {backfill_id}: {state['status']} in {len(state['runs'])} runs", flush=True)
                yield stack.url
    finally:
        stop_embedded(pgdata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running UI (`make dev`: http://127.0.0.1:3000) instead of a private stack")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "img" / "partitions.png")
    parser.add_argument("--accounts", type=int, default=12)
    parser.add_argument("--missing", type=int, default=2, help="accounts left unmaterialized (shown as missing)")
    parser.add_argument("--keep", action="store_true", help="keep the private stack's files")
    args = parser.parse_args()

    if args.url:
        screenshot(args.url.rstrip("/") + PAGE, args.out)
    else:
        work = Path(tempfile.mkdtemp(prefix="dm-screenshot-"))
        try:
            with private_stack(work, args.accounts, args.missing) as url:
                screenshot(url + PAGE + "&partition=inbox-00-x", args.out)  # its metadata in the right pane
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
