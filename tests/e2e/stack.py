"""A real Dagster deployment for the end-to-end test and `scripts/screenshot_partitions.py`:
`dagster-webserver` and `dagster-daemon run` as subprocesses (each in its own process group), instance
storage on Postgres through the project's `dagster.yaml` copied into a private DAGSTER_HOME, and a small
GraphQL client that speaks to the webserver the way the UI does.

Nothing here sleeps to synchronise: every wait polls a status (GraphQL, process liveness) until a deadline.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import URL, create_engine, text

from dm_pipeline.db.engine import ensure_database
from dm_pipeline.environment import EVENT_BATCH_SIZE
from dm_pipeline.mainjob import simulator_credentials
from dm_pipeline.models import Account, Provider
from dm_pipeline.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent
LOCATION = "dm_pipeline"
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

# What the UI's "Materialize" dialog sends for a partitioned asset selection (Dagster 1.13 webapp, chunk
# `LaunchPartitionBackfill`): no partition-set selector, so the daemon runs it as an *asset* backfill and
# honours the asset's BackfillPolicy.
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConfigValidationInvalid { pipelineName errors { message path reason } }
    ... on PythonError { message stack }
  }
}"""

BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id status isAssetBackfill numPartitions partitionNames
      runs { runId status tags { key value } }
      error { message }
    }
    ... on BackfillNotFoundError { message }
    ... on PythonError { message stack }
  }
}"""

WORKSPACE_STATUS = """
query WorkspaceStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } }
      }
    }
    ... on PythonError { message }
  }
}"""

DAEMON_HEALTH = """
query DaemonHealth {
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy lastHeartbeatErrors { message } } } }
}"""


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], Any], deadline_s: float, every_s: float = 0.5,
              diagnose: Callable[[], str] | None = None) -> Any:
    """Poll `probe` until it returns something truthy; raise with `diagnose()` after the deadline."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(every_s)  # the poll interval of a status probe, not a synchronisation
    raise StackError(f"timed out after {deadline_s:.0f}s waiting for {what} (last: {last!r})"
                     + (f"\n{diagnose()}" if diagnose else ""))


# ------------------------------------------------------------------------------------ accounts
def accounts_yaml(accounts: Sequence[Account]) -> str:
    """The accounts file for `accounts` (the simulator's base URLs), in the schema of accounts.py."""
    out = ["accounts:"]
    for a in accounts:
        out += [f"  - key: {a.key}", f"    provider: {a.provider.value}", f"    user_id: \"{a.user_id}\"",
                f"    base_url: {a.base_url}", f"    page_size: {a.page_size}"]
        if a.token_env:
            out.append(f"    token_env: {a.token_env}")
        if a.conversation_ids or a.discover_conversations:
            out.append("    conversations:")
            if a.conversation_ids:
                out.append("      ids: [" + ", ".join(f'"{c}"' for c in a.conversation_ids) + "]")
            if a.discover_conversations:
                out.append("      discover: true")
        if a.provider is Provider.XQUIK:
            out += [f"    handle: {a.handle}", "    partners: [" + ", ".join(f'"{p}"' for p in a.partners) + "]"]
        if a.provider is Provider.GETXAPI:
            out += [f"    auth_token_env: {a.auth_token_env}", "    tabs: [" + ", ".join(a.tabs) + "]"]
    return "\n".join(out) + "\n"


def mixed_accounts(sim: Any, n: int, prefix: str = "e2e") -> list[Account]:
    """`n` accounts over the simulator's X, Xquik and GetXAPI APIs, in rotation, each with its own env var
    names (the values come from `simulator_credentials`)."""
    world = sim.world
    uids = world.accounts()
    kinds = [Provider.X, Provider.XQUIK, Provider.GETXAPI]
    accounts: list[Account] = []
    for i in range(n):
        uid, kind = uids[i % len(uids)], kinds[i % len(kinds)]
        key = f"{prefix}-{i:02d}-{kind.value}"
        if kind is Provider.X:
            accounts.append(Account(key=key, provider=kind, user_id=uid, base_url=sim.url,
                                    token_env=f"E2E_X_TOKEN_{i}", page_size=50))
        elif kind is Provider.XQUIK:
            peers = [next(m for m in c.members if m != uid) for c in world.conversations_of(uid) if not c.is_group]
            accounts.append(Account(key=key, provider=kind, user_id=uid, base_url=sim.base_url("xquik"),
                                    token_env="E2E_XQUIK_KEY", handle=world.xquik_handle(uid),
                                    partners=tuple(peers[:2])))
        else:
            accounts.append(Account(key=key, provider=kind, user_id=uid, base_url=sim.base_url("getxapi"),
                                    token_env="E2E_GETXAPI_KEY", auth_token_env=f"E2E_GETXAPI_AUTH_{i}",
                                    page_size=20))
    return accounts


def credentials_env(world: Any, accounts: Sequence[Account]) -> dict[str, str]:
    env: dict[str, str] = {}
    for account in accounts:
        env.update(simulator_credentials(world, account))
    return env


def truth_routes(world: Any, account: Account) -> list[str]:
    """The simulator routes whose union is what `account` should hold after a full sync (X: the inbox and
    each listed conversation's full history)."""
    if account.provider is Provider.XQUIK:
        return [f"xquik:{p}" for p in account.partners]
    if account.provider is Provider.GETXAPI:
        return [f"getxapi:{t}" for t in account.tabs]
    return ["dm_events", *(f"dm_conversation:{c}" for c in account.conversation_ids)]


# ---------------------------------------------------------------------------------- instance
@contextlib.contextmanager
def fresh_dagster_database(server: URL) -> Iterator[str]:
    """Dagster's instance storage: a fresh database of its own on `server`, with the psycopg2 driver
    (dagster-postgres breaks on psycopg 3 with SQLAlchemy 2.1, docs/architecture.md §13). Dropped after."""
    name = f"dagster_e2e_{uuid.uuid4().hex[:10]}"
    url = ensure_database(server, name)
    try:
        yield url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    finally:
        admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def instance_env(home: Path, dagster_pg_url: str, database_url: str, accounts_file: Path,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the project's dagster.yaml and definitions read, all pointing into `home`."""
    return {
        "DAGSTER_HOME": str(home / "dagster"),
        "DAGSTER_PG_URL": dagster_pg_url,
        "DM_PIPELINE_DAGSTER_ARTIFACTS": str(home / "dagster" / "storage"),
        "DM_PIPELINE_DAGSTER_COMPUTE_LOGS": str(home / "dagster" / "logs"),
        "DATABASE_URL": database_url,
        "DM_PIPELINE_ACCOUNTS": str(accounts_file),
        "DM_PIPELINE_HOME": str(home / "state"),   # nothing may touch the project's .dm_pipeline
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DAGSTER_EVENT_BATCH_SIZE": EVENT_BATCH_SIZE,   # as dm_pipeline.environment exports it
        **(extra or {}),
    }


def write_dagster_home(env: Mapping[str, str]) -> Path:
    """DAGSTER_HOME with the project's own dagster.yaml (it reads everything else from `env`)."""
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


# ------------------------------------------------------------------------------------ processes
@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to the whole process group (the webserver's and daemon's code servers and run workers
        are in it), wait, then SIGKILL what is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # children that outlived their leader (a run worker) share the group: end them too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


@dataclass
class DagsterStack:
    """dagster-webserver + dagster-daemon over the workspace file, with `env` added to the environment."""

    env: Mapping[str, str]
    log_dir: Path
    port: int = 0
    workspace: Path = PROJECT_ROOT / "workspace.yaml"
    services: list[Service] = field(default_factory=list)
    unset: Sequence[str] = ()   # variables of this process the services must not inherit (e.g. credentials)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, argv: list[str], extra: Mapping[str, str] | None = None,
               drop: Collection[str] = ()) -> Service:
        """`argv` in its own process group, on this process's environment plus `env` and `extra`, without
        `unset` and `drop`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        hidden = {*self.unset, *drop}
        with log.open("wb") as out:
            env = {k: v for k, v in {**os.environ, **self.env, **(extra or {}), "PYTHONUNBUFFERED": "1"}.items()
                   if k not in hidden}
            proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # own process group: SIGTERM reaches all of it
        service = Service(name, proc, log)
        self.services.append(service)
        return service

    def start(self, ready_deadline_s: float = 180.0) -> DagsterStack:
        self.port = self.port or free_port()
        self._spawn("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port),
                                  "-w", str(self.workspace)])
        self._spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)])
        wait_for("the webserver to load the code location", self._location_loaded, ready_deadline_s,
                 diagnose=self.diagnose)
        return self

    def stop(self) -> dict[str, int | None]:
        codes = {s.name: s.stop() for s in reversed(self.services)}
        self.services.clear()
        return codes

    def __enter__(self) -> DagsterStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def diagnose(self) -> str:
        parts = []
        for s in self.services:
            parts.append(f"--- {s.name} (pid {s.proc.pid}, {'running' if s.alive() else f'exited {s.proc.returncode}'})"
                         f" tail of {s.log}:\n{s.tail()}")
        with contextlib.suppress(Exception):
            parts.append(f"--- daemon health: {self.graphql(DAEMON_HEALTH)}")
        return "\n".join(parts)

    # --- GraphQL ------------------------------------------------------------------------------
    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout_s: float = 60.0) -> Any:
        reply = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})},
                           timeout=timeout_s)
        reply.raise_for_status()
        body = reply.json()
        if body.get("errors"):
            raise StackError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def _location_loaded(self) -> bool:
        dead = [s for s in self.services if not s.alive()]
        if dead:
            raise StackError(f"{dead[0].name} exited with {dead[0].proc.returncode}\n{self.diagnose()}")
        try:
            data = self.graphql(WORKSPACE_STATUS, timeout_s=10)
        except (httpx.HTTPError, StackError):
            return False  # not listening yet
        entries = (data.get("workspaceOrError") or {}).get("locationEntries") or []
        for entry in entries:
            if entry["name"] != LOCATION or entry["loadStatus"] != "LOADED":
                continue
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise StackError(f"code location failed to load: {loaded.get('message')}\n{loaded.get('stack')}")
            return loaded.get("__typename") == "RepositoryLocation"
        return False

    def launch_asset_backfill(self, asset_keys: Sequence[str], partitions: Sequence[str],
                              tags: Mapping[str, str] | None = None) -> str:
        """The UI's asset backfill: `assetSelection` + `partitionNames`, no partition-set selector."""
        params = {
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
            "assetSelection": [{"path": key.split("/")} for key in asset_keys],
            "partitionNames": list(partitions),
            "fromFailure": False,
        }
        result = self.graphql(LAUNCH_PARTITION_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise StackError(f"launchPartitionBackfill refused: {result}")
        return str(result["backfillId"])

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        result = self.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise StackError(f"backfill {backfill_id}: {result}")
        return dict(result)

    def wait_backfill(self, backfill_id: str, deadline_s: float = 300.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            dead = [s for s in self.services if not s.alive()]
            if dead:
                raise StackError(f"{dead[0].name} exited with {dead[0].proc.returncode}\n{self.diagnose()}")
            state = self.backfill(backfill_id)
            return state if state["status"] in TERMINAL_BACKFILL else None

        return dict(wait_for(f"backfill {backfill_id} to finish", done, deadline_s, every_s=1.0,
                             diagnose=lambda: f"{self.backfill(backfill_id)}\n{self.diagnose()}"))


@dataclass
class DevStack(DagsterStack):
    """`dm-pipeline dev`, which `make dev` execs: `dagster dev` (webserver and daemon) on the environment that
    command prepares, the simulator and its credentials included. Stopped by SIGTERM to its process group,
    which `dm-pipeline dev` passes on to dagster dev's."""

    def start(self, ready_deadline_s: float = 180.0) -> DevStack:
        self.port = self.port or free_port()
        self._spawn("dev", [str(BIN / "dm-pipeline"), "dev", "-h", "127.0.0.1", "-p", str(self.port)])
        wait_for("dagster dev to load the code location", self._location_loaded, ready_deadline_s,
                 diagnose=self.diagnose)
        return self


def runs_bound(n_accounts: int, per_run: int) -> int:
    return math.ceil(n_accounts / per_run)


@contextlib.contextmanager
def stack(env: Mapping[str, str], log_dir: Path, port: int = 0) -> Iterator[DagsterStack]:
    with DagsterStack(env=env, log_dir=log_dir, port=port) as s:
        yield s
