"""The one place that reads the environment.

Everything has a default that makes the project run on a fresh machine: an embedded Postgres under
`.dm_pipeline/` and the provider simulator. Production sets `DATABASE_URL` and a real accounts file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dm_pipeline.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path                   # local state: embedded Postgres data, Dagster artefacts
    database_url: str | None     # None means: use the embedded server
    accounts_file: Path
    simulator_port: int
    page_budget: int             # pages per stream per run; a spent budget parks the pass
    time_budget_s: float         # wall time per account per run, incl. rate-limit waits
    write_ahead: int             # pages fetched ahead of their commit (0: each committed before the next fetch)
    poll_interval_s: float = 900.0          # the schedule's interval: billed streams back off from it
    x_inbox_window_days: int | None = 30    # days of events /2/dm_events serves
    x_conversation_window_days: int | None = None  # days the conversation routes serve (None: all history)
    request_deadline_s: float = 60.0        # one HTTP request, connect to last byte
    max_body_bytes: int = 16 << 20          # the largest response body read
    run_timeout_s: float = 3600.0           # a Dagster sync run is stopped after this (dagster/max_runtime)
    # The audit keeps the current month and this many before it; older monthly partitions are dropped whole
    # (db/audit_partitions.py) once rolled up. 0 keeps everything.
    audit_retention_months: int = 13

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"


def load_settings() -> Settings:
    home = Path(os.environ.get("DM_PIPELINE_HOME", PROJECT_ROOT / ".dm_pipeline")).resolve()
    return Settings(
        home=home,
        database_url=os.environ.get("DATABASE_URL") or None,
        accounts_file=Path(os.environ.get("DM_PIPELINE_ACCOUNTS", PROJECT_ROOT / "config" / "accounts.yaml")),
        simulator_port=int(_number("DM_SIMULATOR_PORT", "8765", int, minimum=0)),
        page_budget=int(_number("DM_PIPELINE_PAGE_BUDGET", "10000", int, minimum=1)),
        time_budget_s=_number("DM_PIPELINE_TIME_BUDGET_S", "600", float, minimum=0),
        write_ahead=int(_number("DM_PIPELINE_WRITE_AHEAD", "8", int, minimum=0)),
        poll_interval_s=_number("DM_PIPELINE_POLL_INTERVAL_S", "900", float, minimum=1),
        x_inbox_window_days=_days("DM_PIPELINE_X_INBOX_WINDOW_DAYS", "30"),
        x_conversation_window_days=_days("DM_PIPELINE_X_CONVERSATION_WINDOW_DAYS", ""),
        request_deadline_s=_number("DM_PIPELINE_REQUEST_DEADLINE_S", "60", float, minimum=1),
        max_body_bytes=int(_number("DM_PIPELINE_MAX_BODY_MB", "16", float, minimum=1) * (1 << 20)),
        run_timeout_s=_number("DM_PIPELINE_RUN_TIMEOUT_S", "3600", float, minimum=60),
        audit_retention_months=int(_number("DM_PIPELINE_AUDIT_RETENTION_MONTHS", "13", int, minimum=0)),
    )


def _days(name: str, default: str) -> int | None:
    """A retention window in days; empty or `none` means the endpoint serves the whole history."""
    raw = os.environ.get(name, default).strip()
    if raw.lower() in {"", "none"}:
        return None
    return int(_number(name, raw, int, minimum=1))


def _number(name: str, default: str, kind: type[int] | type[float], *, minimum: float) -> float:
    raw = os.environ.get(name, default).strip() or default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {what} >= {minimum:g}. Fix: set it to one, or unset it for "
                          f"the default ({default})")
    return value
