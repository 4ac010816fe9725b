"""`make dev` (`dm-pipeline dev`): `dagster dev` on the environment `make run` prepares.

`dev_environment` is that preparation: the database URLs and DAGSTER_HOME exported (the embedded server
unless DATABASE_URL is set), the embedded warehouse migrated, the accounts file validated, and, for the
accounts whose base_url is the simulator's address, the simulator served (or an already running one reused,
once it proves to be the simulator) with its credentials exported under the variables those accounts name.
`serve` then runs `dagster dev` as a child process, so the webserver, the daemon and every run process they
start inherit that environment, and stops the simulator when `dagster dev` ends.

Accounts on real providers get nothing from here: their tokens come from the environment, as always, and a
real DATABASE_URL is used as it is (not migrated: `dm-pipeline db upgrade`). Tokens only ever travel as
environment variables (read through `dagster.EnvVar` in the run), never as run config.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

from dm_pipeline import preflight
from dm_pipeline.environment import prepare
from dm_pipeline.errors import ConfigError
from dm_pipeline.mainjob import SIM_HOST, simulator_accounts, simulator_if_needed
from dm_pipeline.settings import PROJECT_ROOT, Settings, load_settings

# After SIGTERM, how long `dagster dev` gets to stop its webserver, daemon and code servers before SIGKILL.
STOP_TIMEOUT_S = 25.0


@dataclass(frozen=True)
class DevEnvironment:
    """What `dev_environment` set up. Names only for credentials: their values stay in os.environ."""

    env: dict[str, str]                        # the Dagster variables exported (database URLs, DAGSTER_HOME, …)
    simulator_url: str | None = None           # where the simulator answers, when accounts point at it
    simulator_accounts: list[str] = field(default_factory=list)   # their keys
    credentials: list[str] = field(default_factory=list)          # their variables now holding its values
    warnings: list[str] = field(default_factory=list)             # e.g. a real account's token is not set


@contextlib.contextmanager
def dev_environment(settings: Settings | None = None) -> Iterator[DevEnvironment]:
    """Prepare os.environ for `dagster dev` exactly as `dm-pipeline run` prepares its own runs, and keep the
    simulator served (when accounts point at it) until the block ends. Configuration errors (the accounts
    file, the database, a simulator port held by something else) raise ConfigError / DatabaseUnavailable
    before anything is exported to a listener; a variable missing for a real account is only a warning (the
    UI still starts; that account's runs fail with config_error until it is set)."""
    settings = settings or preflight.checked_settings()
    selection = preflight.select((), settings)
    env = prepare(settings)
    engine = preflight.database(settings)
    warnings: list[str] = []
    try:
        preflight.ensure_schema(engine, settings, migrate=settings.database_url is None)
        try:
            selection.check_environment(stored_oauth=preflight.stored_oauth_tokens(engine))
        except ConfigError as exc:
            warnings.append(str(exc))
    finally:
        engine.dispose()
    on_sim = simulator_accounts(settings, selection.accounts)
    with simulator_if_needed(settings, selection.accounts):
        # simulator_if_needed uses setdefault: a variable already set (a real token) is left as it is.
        yield DevEnvironment(
            env=env,
            simulator_url=f"http://{SIM_HOST}:{settings.simulator_port}" if on_sim else None,
            simulator_accounts=[a.key for a in on_sim],
            credentials=sorted(n for n, v in selection.simulator_credentials.items() if os.environ.get(n) == v),
            warnings=warnings)


def dagster_dev_command(args: Sequence[str] = ()) -> list[str]:
    """`dagster dev` on the project's workspace file, with this interpreter (the venv's Dagster)."""
    return [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), *args]


def serve(command: Sequence[str], stop_timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Run `command` (dagster dev) in its own process group with this process's environment, until it exits.
    SIGINT, SIGTERM or SIGHUP here stop the whole group (webserver, daemon, code servers, run workers) with
    SIGTERM, then SIGKILL after `stop_timeout_s`. Returns its exit code (128 + signal when killed)."""
    stop_requested: list[float] = []
    proc: subprocess.Popen[bytes] | None = None

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if not stop_requested:
            stop_requested.append(time.monotonic())
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, request_stop) for s in handled}
    try:
        # Its own session: a terminal's Ctrl-C reaches this process, which stops the group once; and
        # `kill -TERM -- -<pgid>` of this process's group (docs/operations.md) reaches it too.
        proc = subprocess.Popen(list(command), cwd=PROJECT_ROOT, env=dict(os.environ), start_new_session=True)
        while True:
            try:
                code = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if stop_requested and time.monotonic() - stop_requested[0] > stop_timeout_s:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc is not None:
            if proc.poll() is None:  # an exception here: do not leave the group behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # what outlived dagster dev in its group (a run worker): it would lose the simulator anyway
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code


def describe(dev: DevEnvironment) -> list[str]:
    """Lines for the terminal: where the simulator is and which variables it provides (names, no values)."""
    lines: list[str] = []
    if dev.simulator_url:
        lines.append(f"simulator on {dev.simulator_url} for {', '.join(dev.simulator_accounts)}; exported to "
                     f"dagster dev: {', '.join(dev.credentials) or 'no variables'}")
    else:
        lines.append("no account points at the simulator: the accounts' own variables are used")
    lines.append(f"warehouse: {_safe(dev.env['DATABASE_URL'])}; DAGSTER_HOME={dev.env['DAGSTER_HOME']}")
    lines += [f"warning: {w}" for w in dev.warnings]
    return lines


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    from dm_pipeline.db.engine import render

    return render(make_url(url))


def run_dev(args: Sequence[str] = (), settings: Settings | None = None,
            echo: Callable[[str], None] = print) -> int:
    """`dm-pipeline dev`: prepare, say what was prepared, serve `dagster dev` until it stops."""
    with dev_environment(settings or load_settings()) as dev:
        for line in describe(dev):
            echo(line)
        sys.stdout.flush()
        return serve(dagster_dev_command(args))
