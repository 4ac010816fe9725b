"""`export` (redacted JSON Lines) and `erase` (an account's private rows)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from dm_pipeline.cli.common import CONTEXT, _escape, _settings, fail, friendly_errors, out


@click.command(context_settings=CONTEXT, short_help="An account's messages as redacted JSON Lines.")
@click.option("--account", "account_key", required=True, metavar="KEY", help="The account key to export.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The JSON Lines file to write (replaced atomically).")
@friendly_errors
def export(account_key: str, out_path: str) -> None:
    """Write an account's messages as redacted JSON Lines (IDs, timestamps, media URL; never text), the
    handoff format of the Xquik docs (xquik-dm-handoff.jsonl).

    \b
    Example: dm-pipeline export --account x-ada --out x-ada.jsonl
    """
    from dm_pipeline.export import export_account
    from dm_pipeline.preflight import database

    engine = database(_settings())
    count = export_account(engine, account_key, Path(out_path))
    click.echo(f"{account_key}\texported={count}\t{out_path}")


@click.command(context_settings=CONTEXT, short_help="Delete an account's private rows (dry run by default).")
@click.option("--account", "account_key", required=True, metavar="KEY", help="The account key to erase.")
@click.option("--yes", is_flag=True, help="Really erase (default: a dry run that shows the counts).")
@friendly_errors
def erase(account_key: str, yes: bool) -> None:
    """Delete an account's private rows (history, conversations, tokens, sync state) in one transaction;
    its audit rows keep IDs and statuses only. A dry run unless --yes.

    \b
    Example: dm-pipeline erase --account x-ada          (dry run: the counts)
             dm-pipeline erase --account x-ada --yes    (erase)
    """
    from dm_pipeline.erase import SyncInProgress, erase_account, plan
    from dm_pipeline.preflight import database

    engine = database(_settings())
    if yes:
        try:
            result = erase_account(engine, account_key)
        except SyncInProgress as exc:
            fail(_escape(str(exc)), code=1)
    else:
        with engine.connect() as conn:
            result = plan(conn, account_key)
    table = Table(title=f"erase {account_key}" + ("" if yes else " — dry run, nothing changed"))
    table.add_column("what")
    table.add_column("rows", justify="right")
    for label, n in (("dm_history (deleted)", result.history_rows),
                     ("dm_conversations (deleted)", result.conversation_rows),
                     ("dm_conversation_events (deleted)", result.conversation_event_rows),
                     ("dm_quarantine (deleted)", result.quarantine_rows),
                     ("oauth_tokens (deleted)", result.token_rows),
                     ("sync_state (deleted)", result.sync_state_rows),
                     ("dm_sync_audit (cursors, media refs nulled)", result.audit_rows_redacted),
                     ("dm_sync_audit (kept: IDs, counts, statuses)", result.audit_rows)):
        table.add_row(label, str(n))
    out.print(table)
    if result.nothing_to_do:
        out.print(f"nothing to erase for {account_key}"
                  + (f" (erased {result.last_erased_at:%Y-%m-%d %H:%M})" if result.last_erased_at else ""))
    elif yes:
        out.print(f"erased {account_key}; recorded in dm_audit.dm_erasures")
    else:
        out.print("dry run: re-run with --yes to erase. Remove the account from the accounts file first, "
                  "or the next sync fetches it again.")
