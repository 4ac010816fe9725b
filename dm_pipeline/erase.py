"""`dm-pipeline erase`: delete one account's private copy, in one transaction.

What goes: the account's rows in dm_history, dm_conversations, dm_conversation_events, dm_quarantine,
oauth_tokens and sync_state (text, raw payloads, participants, tokens, cursor state).

What the audit keeps: its rows of the account stay, with IDs (run, message, newest/oldest), counts, HTTP
statuses, job statuses and error codes, as Xquik's storage rules allow in shared logs (docs/architecture.md
§11); their cursors and media references are nulled (a cursor plus a token re-reads the conversation; a
media URL points at content).
Message IDs survive on purpose: they carry no content, they let the audit show what was loaded and then
erased, and the same message may still be held, legitimately, by another connected account. A row in
dm_audit.dm_erasures records the erasure: who, when, and how many rows of each kind.

Not erased: dm_users (public profiles keyed by user, shared by every account, not linked to one).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, func, select, text

from dm_pipeline.db.tables import (
    dm_conversation_events,
    dm_conversations,
    dm_erasures,
    dm_history,
    dm_quarantine,
    dm_sync_audit,
    oauth_tokens,
    sync_state,
)
from dm_pipeline.errors import ConfigError, DmPipelineError

PRIVATE = {
    "history_rows": dm_history,
    "conversation_rows": dm_conversations,
    "conversation_event_rows": dm_conversation_events,
    "quarantine_rows": dm_quarantine,
    "token_rows": oauth_tokens,
    "sync_state_rows": sync_state,
}
_REDACTABLE = (dm_sync_audit.c.cursor_in.is_not(None) | dm_sync_audit.c.cursor_out.is_not(None)
               | (func.cardinality(dm_sync_audit.c.media_refs) > 0))


class SyncInProgress(DmPipelineError):
    """A sync holds a stream lock of the account: erasing now would race its next page commit."""

    error_code = "sync_in_progress"


@dataclass(frozen=True)
class Erasure:
    account_key: str
    history_rows: int
    conversation_rows: int
    conversation_event_rows: int
    quarantine_rows: int
    token_rows: int
    sync_state_rows: int
    audit_rows_redacted: int
    audit_rows: int                   # all audit rows of the account, kept (redacted where needed)
    last_erased_at: datetime | None   # an earlier erasure of this account, if any

    @property
    def private_rows(self) -> int:
        return (self.history_rows + self.conversation_rows + self.conversation_event_rows + self.quarantine_rows
                + self.token_rows + self.sync_state_rows)

    @property
    def nothing_to_do(self) -> bool:
        return self.private_rows == 0 and self.audit_rows_redacted == 0


def plan(conn: Connection, account_key: str) -> Erasure:
    """What an erasure would delete and redact now (the dry run)."""
    counts = {name: int(conn.scalar(select(func.count()).select_from(t).where(t.c.account_key == account_key))
                        or 0) for name, t in PRIVATE.items()}
    audit = dm_sync_audit.c.account_key == account_key
    redactable = conn.scalar(select(func.count()).select_from(dm_sync_audit).where(audit, _REDACTABLE)) or 0
    audit_rows = conn.scalar(select(func.count()).select_from(dm_sync_audit).where(audit)) or 0
    last = conn.scalar(select(func.max(dm_erasures.c.erased_at)).where(dm_erasures.c.account_key == account_key))
    erasure = Erasure(account_key=account_key, audit_rows_redacted=int(redactable), audit_rows=int(audit_rows),
                      last_erased_at=last, **counts)
    if erasure.private_rows == 0 and audit_rows == 0 and last is None:
        raise ConfigError(f"account {account_key!r} is unknown to the warehouse: no rows, no audit, never erased. "
                          "Check the key: `dm-pipeline accounts list`")
    return erasure


def _lock_streams(conn: Connection, account_key: str) -> None:
    # Same keys as db.writes.stream_session, taken for this transaction only: a running sync holds its
    # stream's lock for the whole pass, and must not commit a page into an account being erased.
    streams = conn.scalars(select(sync_state.c.stream_key).where(sync_state.c.account_key == account_key)).all()
    for stream_key in streams:
        key = f"dm_pipeline:{account_key}:{stream_key}"
        if not conn.scalar(text("SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key}):
            raise SyncInProgress(f"a sync of account {account_key!r} (stream {stream_key}) is running; "
                                 "retry when it ends, after removing the account from the accounts file")


def erase_account(engine: Engine, account_key: str) -> Erasure:
    """Delete the account's private rows, redact its audit rows and record the erasure, all or nothing."""
    with engine.begin() as conn:
        before = plan(conn, account_key)
        if before.nothing_to_do:
            return before
        _lock_streams(conn, account_key)
        provider = conn.scalar(select(sync_state.c.provider).where(sync_state.c.account_key == account_key)
                               .limit(1)) or conn.scalar(
            select(dm_history.c.provider).where(dm_history.c.account_key == account_key).limit(1))
        deleted = {name: conn.execute(t.delete().where(t.c.account_key == account_key)).rowcount
                   for name, t in PRIVATE.items()}
        redacted = conn.execute(
            dm_sync_audit.update()
            .where(dm_sync_audit.c.account_key == account_key, _REDACTABLE)
            .values(cursor_in=None, cursor_out=None, media_refs=[])).rowcount
        done = Erasure(account_key=account_key, audit_rows_redacted=redacted, audit_rows=before.audit_rows,
                       last_erased_at=before.last_erased_at, **deleted)
        record = {k: v for k, v in asdict(done).items() if k in {c.name for c in dm_erasures.columns}}
        conn.execute(dm_erasures.insert().values(run_id=f"erase-{uuid.uuid4()}", provider=provider, **record))
    return done
