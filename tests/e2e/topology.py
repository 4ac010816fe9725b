"""The production topology, for `tests/e2e/test_production_topology.py` and `benchmarks/fleet_tick.py`: the
code location served by `dagster api grpc` in a process of its own (what a Kubernetes user-code deployment
runs), and `dagster-webserver` and `dagster-daemon run` reaching it through `deploy/workspace.grpc.yaml`, all
on the project's dagster.yaml (Postgres storage, QueuedRunCoordinator, run limits, pools).

How a run starts here: a sensor or schedule tick (evaluated *in the code server*, over gRPC) submits runs to
the QueuedRunCoordinator; the daemon's run queue dequeues them within dagster.yaml's limits and hands each to
the DefaultRunLauncher, which, for a gRPC location, asks the code server to start it (`StartRun`); the code
server starts the run in a child process of its own (`multiprocessing`, spawn context). So the code server
alone needs the warehouse URL, the accounts file and the credentials; webserver and daemon are started
without them, and the CPU of every run is the code server's reaped-children CPU (`/proc/<pid>/stat`).

Nothing here sleeps to synchronise: every wait polls a status (GraphQL, gRPC, /proc) until a deadline.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dm_pipeline.settings import PROJECT_ROOT
from tests.e2e.stack import BIN, LOCATION, DagsterStack, Service, StackError, free_port, wait_for

GRPC_WORKSPACE = PROJECT_ROOT / "deploy" / "workspace.grpc.yaml"
REPOSITORY = "__repository__"            # the repository of a `Definitions` object
SCHEDULE = "every_account_schedule"
SENSOR = "accounts_sensor"
CODE_ONLY = ("DATABASE_URL", "DM_PIPELINE_ACCOUNTS")  # what webserver and daemon must not need
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
TERMINAL_TICK = {"SUCCESS", "FAILURE", "SKIPPED"}

TICK = "fragment Tick on InstigationTick { tickId status timestamp endTimestamp runIds skipReason error { message } }"

SCHEDULE_STATE = TICK + """
query Schedule($selector: ScheduleSelector!, $limit: Int) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { name cronSchedule scheduleState { id status ticks(limit: $limit) { ...Tick } } }
    ... on ScheduleNotFoundError { message }
    ... on PythonError { message }
  }
}"""

SENSOR_STATE = TICK + """
query Sensor($selector: SensorSelector!, $limit: Int) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { name sensorState { id status ticks(limit: $limit) { ...Tick } } }
    ... on SensorNotFoundError { message }
    ... on PythonError { message }
  }
}"""

# The UI's schedule toggle: startSchedule / stopRunningSchedule on the schedule's state ID.
SCHEDULE_RESULT = """{ __typename ... on ScheduleStateResult { scheduleState { id status } }
  ... on PythonError { message } ... on UnauthorizedError { message } ... on ScheduleNotFoundError { message } }"""
START_SCHEDULE = ("mutation Start($selector: ScheduleSelector!) { startSchedule(scheduleSelector: $selector) "
                  + SCHEDULE_RESULT + " }")
STOP_SCHEDULE = "mutation Stop($id: String!) { stopRunningSchedule(id: $id) " + SCHEDULE_RESULT + " }"

RUNS = """
query Runs($ids: [String!], $limit: Int) {
  runsOrError(filter: {runIds: $ids}, limit: $limit) {
    __typename
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""

WORKSPACE_ORIGIN = """
query WorkspaceOrigin {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus displayMetadata { key value }
        locationOrLoadError { __typename ... on RepositoryLocation { name serverId } ... on PythonError { message } }
      }
    }
  }
}"""


# ------------------------------------------------------------------------------------------ /proc
def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # fields after "(comm)": state is index 0, ppid index 1


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process itself."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def reaped_children_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the children `pid` has waited for (and of theirs: a run's step process)."""
    f = _stat(pid)
    return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")


def run_processes(pid: int) -> list[int]:
    """Children of the code server that are (or were, not yet reaped) run processes: everything but
    multiprocessing's resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            f = _stat(int(entry.name))
            if int(f[1]) != pid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if "resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


# ------------------------------------------------------------------------------------------ the stack
@dataclass
class ProductionStack(DagsterStack):
    """`dagster api grpc` + dagster-webserver + dagster-daemon over `deploy/workspace.grpc.yaml`.

    `env` reaches every service (the instance: DAGSTER_HOME, DAGSTER_PG_URL, ...); `code_env` only the code
    server and so its runs (credentials, DM_PIPELINE_CRON, DM_PIPELINE_ACCOUNTS_PER_RUN, ...), and
    DATABASE_URL and DM_PIPELINE_ACCOUNTS are taken from `env` to the code server alone. With
    `daemon=False`, `start()` leaves the daemon to `start_daemon()` (e.g. after stopping the schedule)."""

    code_env: Mapping[str, str] = field(default_factory=dict)
    grpc_port: int = 0
    workspace: Path = GRPC_WORKSPACE
    daemon: bool = True
    code_server: Service | None = None

    @property
    def address(self) -> dict[str, str]:
        return {"DM_PIPELINE_CODE_SERVER_HOST": "127.0.0.1", "DM_PIPELINE_CODE_SERVER_PORT": str(self.grpc_port)}

    @property
    def code_keys(self) -> set[str]:
        return {*CODE_ONLY, *self.code_env}

    def start(self, ready_deadline_s: float = 180.0) -> ProductionStack:
        self.port = self.port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        init_instance(self.env, self.log_dir)  # Dagster's schema, once, before three processes race for it
        self.code_server = self._spawn("code-server", [
            str(BIN / "dagster"), "api", "grpc", "-m", "dm_pipeline.definitions", "-a", "defs",
            "-h", "127.0.0.1", "-p", str(self.grpc_port), "--location-name", LOCATION], extra=self.code_env)
        wait_for("the code server to serve", self._code_server_serving, ready_deadline_s, diagnose=self.diagnose)
        self._spawn("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port),
                                  "-w", str(self.workspace)], extra=self.address, drop=self.code_keys)
        if self.daemon:
            self.start_daemon()
        wait_for("the webserver to load the code location", self._location_loaded, ready_deadline_s,
                 diagnose=self.diagnose)
        return self

    def start_daemon(self) -> Service:
        return self._spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)],
                           extra=self.address, drop=self.code_keys)

    def _code_server_serving(self) -> bool:
        from dagster._core.errors import DagsterUserCodeUnreachableError
        from dagster._grpc.client import DagsterGrpcClient

        assert self.code_server is not None
        if not self.code_server.alive():
            raise StackError(f"the code server exited with {self.code_server.proc.returncode}\n{self.diagnose()}")
        try:
            DagsterGrpcClient(port=self.grpc_port, host="127.0.0.1").get_server_id(timeout=5)
        except DagsterUserCodeUnreachableError:
            return False
        return True

    def server_id(self) -> str:
        from dagster._grpc.client import DagsterGrpcClient

        return DagsterGrpcClient(port=self.grpc_port, host="127.0.0.1").get_server_id()

    def location_origin(self) -> dict[str, Any]:
        """The webserver's entry for the location: how it reaches it (displayMetadata) and the server ID."""
        entries = self.graphql(WORKSPACE_ORIGIN)["workspaceOrError"]["locationEntries"]
        entry = next(e for e in entries if e["name"] == LOCATION)
        return {"metadata": {m["key"]: m["value"] for m in entry["displayMetadata"]},
                "server_id": (entry["locationOrLoadError"] or {}).get("serverId"), "load_status": entry["loadStatus"]}

    # --- sensors, schedules, runs --------------------------------------------------------------
    def _selector(self, kind: str, name: str) -> dict[str, str]:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, f"{kind}Name": name}

    def schedule_state(self, name: str = SCHEDULE, limit: int = 5) -> dict[str, Any]:
        found = self.graphql(SCHEDULE_STATE, {"selector": self._selector("schedule", name), "limit": limit})
        result = found["scheduleOrError"]
        if result["__typename"] != "Schedule":
            raise StackError(f"schedule {name}: {result}")
        return dict(result["scheduleState"], cron=result["cronSchedule"])

    def sensor_state(self, name: str = SENSOR, limit: int = 5) -> dict[str, Any]:
        found = self.graphql(SENSOR_STATE, {"selector": self._selector("sensor", name), "limit": limit})
        result = found["sensorOrError"]
        if result["__typename"] != "Sensor":
            raise StackError(f"sensor {name}: {result}")
        return dict(result["sensorState"])

    def one_schedule_tick(self, deadline_s: float, name: str = SCHEDULE, every_minutes: int = 1) -> dict[str, Any]:
        """Switch the schedule on, as the UI's toggle does, and off again, so that exactly one tick runs; return
        that tick, finished, with its runs. `every_minutes` is the schedule's cron period (1 or 2).

        The daemon reads the switch between ticks, and a tick that started finishes submitting its runs. But
        after the first tick since the switch-on, the daemon checkpoints the schedule's state as it read it
        before the tick (RUNNING), unless a tick-less pass did that first (Dagster 1.13, scheduler.py
        `_write_and_get_next_checkpoint_timestamp`), so a switch-off during that tick does not hold, and a tick
        that outlasts the interval is followed by a catch-up tick. Hence: with a 2-minute cron, switch on during
        an even minute (the next minute boundary has no tick, and the daemon's checkpoint happens then) and off
        as soon as the tick starts, which then holds whatever the tick's length. With a 1-minute cron (short
        ticks), switch off once the tick has finished, and again until it holds."""
        if every_minutes == 2:
            wait_for("an even minute (the next boundary has no tick)",
                     lambda: time.gmtime().tm_min % 2 == 0 and time.gmtime().tm_sec < 45, 130, every_s=0.5)
        switched_on = time.time()
        self.set_schedule(True, name)
        try:
            started = self.wait_tick(lambda: self.schedule_state(name), f"a tick of {name}",
                                     lambda t: t["timestamp"] >= switched_on, deadline_s, finished=False)
        finally:
            self.set_schedule(False, name)
        tick = self.wait_tick(lambda: self.schedule_state(name), f"tick {started['tickId']} of {name} to finish",
                              lambda t: t["tickId"] == started["tickId"], deadline_s)
        self._keep_stopped(name)
        return tick

    def _keep_stopped(self, name: str, reads: int = 3) -> None:
        """Switch the schedule off until `reads` reads in a row (a second apart) find it off."""
        seen = [0]

        def stopped() -> bool:
            if self.schedule_state(name, limit=1)["status"] == "STOPPED":
                seen[0] += 1
            else:
                seen[0] = 0
                self.set_schedule(False, name)
            return seen[0] >= reads

        wait_for(f"{name} to stay off", stopped, 60, every_s=1.0, diagnose=self.diagnose)

    def set_schedule(self, running: bool, name: str = SCHEDULE) -> str:
        """What the schedule's toggle in the UI does; returns the new status."""
        if running:
            result = self.graphql(START_SCHEDULE, {"selector": self._selector("schedule", name)})["startSchedule"]
        else:
            result = self.graphql(STOP_SCHEDULE, {"id": self.schedule_state(name)["id"]})["stopRunningSchedule"]
        if result["__typename"] != "ScheduleStateResult":
            raise StackError(f"toggling {name}: {result}")
        return str(result["scheduleState"]["status"])

    def wait_tick(self, state: Callable[[], dict[str, Any]], what: str, accept: Callable[[dict[str, Any]], bool],
                  deadline_s: float, finished: bool = True) -> dict[str, Any]:
        """The newest tick of `state()` that `accept` takes: finished, or (`finished=False`) as soon as it
        has started."""
        def probe() -> dict[str, Any] | None:
            self._check_alive()
            ticks = [t for t in state()["ticks"] if t["status"] in TERMINAL_TICK or not finished]
            return next((t for t in ticks if accept(t)), None)

        return dict(wait_for(what, probe, deadline_s, every_s=1.0, diagnose=self.diagnose))

    def runs(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        found = self.graphql(RUNS, {"ids": list(run_ids), "limit": len(run_ids)}, timeout_s=120)["runsOrError"]
        if found["__typename"] != "Runs":
            raise StackError(f"runs: {found}")
        return [dict(r, tags={t["key"]: t["value"] for t in r["tags"]}) for r in found["results"]]

    def wait_runs(self, run_ids: Sequence[str], deadline_s: float, every_s: float = 1.0,
                  progress: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
        """All of `run_ids`, once every one has finished (succeeded, failed or was canceled)."""
        def probe() -> list[dict[str, Any]] | None:
            self._check_alive()
            runs = self.runs(run_ids)
            if progress:
                progress(runs)
            return runs if len(runs) == len(run_ids) and all(r["status"] in TERMINAL_RUN for r in runs) else None

        return list(wait_for(f"{len(run_ids)} runs to finish", probe, deadline_s, every_s=every_s,
                             diagnose=self.diagnose))

    def wait_runs_reaped(self, deadline_s: float = 120.0) -> None:
        """Until the code server has waited for every run process it started, so that its reaped-children CPU
        counts all of them."""
        assert self.code_server is not None
        pid = self.code_server.proc.pid
        wait_for("the code server to reap its run processes", lambda: not run_processes(pid), deadline_s,
                 every_s=0.2, diagnose=self.diagnose)

    def _check_alive(self) -> None:
        dead = [s for s in self.services if not s.alive()]
        if dead:
            raise StackError(f"{dead[0].name} exited with {dead[0].proc.returncode}\n{self.diagnose()}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each service, and of the run processes the code server has reaped."""
        out = {s.name: cpu_s(s.proc.pid) for s in self.services if s.alive()}
        if self.code_server is not None and self.code_server.alive():
            out["runs"] = reaped_children_cpu_s(self.code_server.proc.pid)
        return out


def init_instance(env: Mapping[str, str], log_dir: Path, timeout_s: float = 180.0) -> None:
    """Create (or migrate) Dagster's schema in the instance storage of `env`, in a process of its own."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "instance-migrate.log"
    with log.open("wb") as out:
        code = subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env={**os.environ, **env},
                              cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout_s).returncode
    if code != 0:
        raise StackError(f"dagster instance migrate exited with {code}: {log.read_text()[-4000:]}")
