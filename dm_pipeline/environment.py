"""Prepare the process environment for Dagster and the engine: the database URLs and DAGSTER_HOME.

With no `DATABASE_URL`, the embedded server is started and its URLs exported, so every Dagster run
process (and `dagster dev`) sees the same warehouse.
"""

from __future__ import annotations

import os

from dm_pipeline.db.engine import app_url, dagster_url
from dm_pipeline.settings import PROJECT_ROOT, Settings, load_settings

# Dagster writes the per-partition events of a run over a partition range (a materialization per account
# per asset) in one INSERT per batch instead of one storage round trip (several connections) each; that
# halves the wall time of a tick over 1,000 accounts (docs/operations.md). Opt-in in Dagster OSS; every
# Dagster process (webserver, daemon, run workers) must see it, so it is exported with the rest.
EVENT_BATCH_SIZE = "1000"


def dagster_env(settings: Settings | None = None) -> dict[str, str]:
    settings = settings or load_settings()
    home = settings.home / "dagster"
    env = {
        "DATABASE_URL": os.environ.get("DATABASE_URL") or app_url(settings).render_as_string(hide_password=False),
        "DAGSTER_PG_URL": os.environ.get("DAGSTER_PG_URL")
        or dagster_url(settings).render_as_string(hide_password=False),
        "DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or str(PROJECT_ROOT),
        "DM_PIPELINE_DAGSTER_ARTIFACTS": os.environ.get("DM_PIPELINE_DAGSTER_ARTIFACTS") or str(home / "storage"),
        "DM_PIPELINE_DAGSTER_COMPUTE_LOGS": os.environ.get("DM_PIPELINE_DAGSTER_COMPUTE_LOGS")
        or str(home / "logs"),
        "DAGSTER_EVENT_BATCH_SIZE": os.environ.get("DAGSTER_EVENT_BATCH_SIZE") or EVENT_BATCH_SIZE,
    }
    return env


def prepare(settings: Settings | None = None) -> dict[str, str]:
    env = dagster_env(settings)
    os.environ.update(env)
    return env
