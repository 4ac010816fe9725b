"""Shared plumbing for the benchmark scripts: a fresh database on the embedded server, a simulator in
its own process (so it does not share our GIL), and an accounts file for it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from dm_pipeline.db.engine import ensure_database, start_embedded
from dm_pipeline.db.migrate import upgrade
from dm_pipeline.environment import EVENT_BATCH_SIZE
from dm_pipeline.settings import PROJECT_ROOT, load_settings

SIM_SNIPPET = """
import sys, threading
from dm_pipeline.simulator import Simulator, World
world = World(seed=int(sys.argv[1]), accounts=int(sys.argv[2]), users=max(12, int(sys.argv[2]) + 4),
              events_per_account=int(sys.argv[3]))
sim = Simulator(world, port=int(sys.argv[4]), rate_limit=10**9)
sim.start()
print(sim.url, flush=True)
threading.Event().wait()
"""


@contextlib.contextmanager
def fresh_database(prefix: str, pgdata: Path | None = None) -> Iterator[str]:
    """A migrated database of its own on the embedded server of `pgdata` (default: the benchmarks' one)."""
    base = start_embedded(pgdata or bench_pgdata())
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    url = ensure_database(base, name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        _drop_database(base, name)


def _drop_database(base: Any, name: str) -> None:
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def child_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark child takes: where to load into, and which simulator account."""
    parser = argparse.ArgumentParser(description=description)
    for name in ("--db", "--sim", "--user-id", "--token"):
        parser.add_argument(name, required=True)
    return parser


@contextlib.contextmanager
def project_instance(tmp: Path) -> Iterator[Any]:
    """A DagsterInstance as deployed: the project's dagster.yaml (Postgres storage, QueuedRunCoordinator,
    local compute logs) in a temporary DAGSTER_HOME, its storage a fresh database on the bench server."""
    import dagster as dg

    base = start_embedded(bench_pgdata())
    name = f"bench_dagster_{uuid.uuid4().hex[:8]}"
    url = ensure_database(base, name).set(drivername="postgresql+psycopg2")  # docs/architecture.md §13
    home = tmp / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    os.environ.update(DAGSTER_PG_URL=url.render_as_string(hide_password=False),
                      DM_PIPELINE_DAGSTER_ARTIFACTS=str(home / "storage"),
                      DM_PIPELINE_DAGSTER_COMPUTE_LOGS=str(home / "logs"))
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)  # as `dm-pipeline db env` exports it
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        _drop_database(base, name)


SIM_PIDS: dict[str, int] = {}  # simulator URL -> its process, for CPU accounting


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # the fields after "(comm)": field 3 of proc(5) is index 0


def process_cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process (and of its reaped children), from /proc."""
    f = _stat(pid)
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s(pgdata: Path) -> float:
    """CPU seconds used so far by the server of `pgdata`: the postmaster, its live children and the
    children it has reaped (backends that exited)."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    total = process_cpu_s(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                f = _stat(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            if int(f[1]) == postmaster:
                total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total


def bench_pgdata() -> Path:
    return load_settings().home / "bench-pgdata"


@contextlib.contextmanager
def simulator_process(accounts: int, events_per_account: int, seed: int = 7, port: int = 0) -> Iterator[str]:
    import socket

    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SIM_SNIPPET, str(seed), str(accounts), str(events_per_account),
                             str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url:
            raise RuntimeError("the simulator did not start")
        SIM_PIDS[url] = proc.pid
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def sim_accounts(url: str) -> list[dict[str, str]]:
    return list(httpx.get(f"{url}/_sim/accounts", timeout=60).json()["accounts"])


def sim_conversations(url: str, user_ids: list[str], per_account: int) -> dict[str, list[str]]:
    """The first `per_account` conversation IDs of each account, as the simulator lists them (a thread pool:
    10,000 accounts are 10,000 requests)."""
    from concurrent.futures import ThreadPoolExecutor

    with httpx.Client(base_url=url, timeout=60) as client:
        def one(user_id: str) -> list[str]:
            convs = client.get("/_sim/conversations", params={"user_id": user_id}).json()["conversations"]
            return [str(c["id"]) for c in convs][:per_account]

        with ThreadPoolExecutor(8) as pool:
            return dict(zip(user_ids, pool.map(one, user_ids), strict=True))


def write_accounts_file(path: Path, url: str, accounts: list[dict[str, str]], page_size: int = 100,
                        conversations: dict[str, list[str]] | None = None) -> None:
    """X accounts `acct-00000`…; with `conversations` (user ID -> conversation IDs), each also gets a
    full-history stream per listed conversation."""
    lines = ["accounts:"]
    for i, a in enumerate(accounts):
        lines += [f"  - key: acct-{i:05d}", "    provider: x", f"    user_id: \"{a['user_id']}\"",
                  f"    base_url: {url}", f"    token_env: BENCH_TOKEN_{i}", f"    page_size: {page_size}"]
        ids = (conversations or {}).get(a["user_id"])
        if ids:
            lines += ["    conversations:", f"      ids: [{', '.join(f'{c!r}' for c in ids)}]"]
        os.environ[f"BENCH_TOKEN_{i}"] = a["token"]
    path.write_text("\n".join(lines) + "\n")


def emit(results: dict[str, object], out: Path | None = None) -> None:
    blob = json.dumps(results, indent=2, default=str)
    print(blob)
    if out:
        out.write_text(blob + "\n")


def stopwatch() -> float:
    return time.perf_counter()
