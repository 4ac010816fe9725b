"""`dm-pipeline`: the command line.

Configuration problems (the accounts file, an environment variable, the database) print one line that
names the file, the line or the key, and the fix, then exit 2, before anything syncs. Output holds IDs,
counts, codes and statuses: never message text, and never a secret except the simulator's own tokens
(`simulator serve`) and the password of your own DATABASE_URL (`db url`, meant for your client).

One module per concern: common.py (consoles, error handling), pipeline.py (run, dev, sync),
database.py (db), accounts_file.py (accounts list | validate), status_report.py (status), privacy.py
(export, erase), simulation.py (simulator), oauth_tokens.py (accounts connect, oauth), audit.py (audit prune,
audit redaction).
This module holds the `main` group and registers them, in the order `--help` has always listed them.
"""

from __future__ import annotations

import logging

import click

from dm_pipeline.cli.accounts_file import accounts
from dm_pipeline.cli.audit import audit
from dm_pipeline.cli.common import CONTEXT, _escape, _settings, err, fail, friendly_errors, out
from dm_pipeline.cli.database import db
from dm_pipeline.cli.oauth_tokens import connect, oauth
from dm_pipeline.cli.pipeline import dev, run, sync
from dm_pipeline.cli.privacy import erase, export
from dm_pipeline.cli.simulation import simulator
from dm_pipeline.cli.status_report import status

__all__ = ["CONTEXT", "_escape", "_settings", "accounts", "audit", "connect", "db", "dev", "erase", "err", "export",
           "fail", "friendly_errors", "main", "oauth", "out", "run", "simulator", "status", "sync"]


@click.group(context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log progress (IDs, counts and statuses only; never text).")
def main(verbose: bool) -> None:
    """dm_pipeline: keep a private, queryable, incremental copy of the DMs of every connected X account
    (X API v2, Xquik, GetXAPI) in Postgres, driven by Dagster.

    \b
    First steps:
      make run                    the main job on the embedded Postgres + the provider simulator
      make dev                    the Dagster UI on the same (dm-pipeline dev), simulator included
      dm-pipeline status          where every account x stream stands
      dm-pipeline sync            sync now, outside Dagster, with a progress bar per stream
      psql "$(dm-pipeline db url --libpq)"   query the warehouse (see docs/analyst.md)

    Configuration: the accounts file (DM_PIPELINE_ACCOUNTS, default config/accounts.yaml; every option
    in config/accounts.example.yaml), DATABASE_URL (default: an embedded Postgres), tokens in the
    environment variables the accounts file names. Exit codes: 0 ok, 1 a sync failed, 2 configuration.
    """
    # Quiet by default: the commands report every stream themselves; -v adds the engine's log lines.
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


for _command in (run, dev, db, accounts, sync, status, export, erase, simulator, oauth, audit):
    main.add_command(_command)
accounts.add_command(connect)
