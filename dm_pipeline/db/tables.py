"""SQLAlchemy Core metadata. Alembic owns the schema (migrations/); this mirrors it and `alembic check`
guards that the two never drift."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.schema import SchemaItem

PRIVATE = "dm_private"
AUDIT = "dm_audit"

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
})

_now = func.now()


def _table(name: str, *items: SchemaItem, schema: str = PRIVATE) -> Table:
    return Table(name, metadata, *items, schema=schema)


# The column kinds the tables share, each spelled once (the dm_sync_audit tables still spell theirs out).
def _key(name: str) -> Column[Any]:
    return Column(name, Text, primary_key=True)


def _serial(name: str) -> Column[Any]:
    return Column(name, BigInteger, primary_key=True, autoincrement=True)


def _required(name: str, type_: Any = Text, **kw: Any) -> Column[Any]:
    return Column(name, type_, nullable=False, **kw)


def _time(name: str) -> Column[Any]:
    """Every time the schema stores is an instant (timestamptz)."""
    return Column(name, DateTime(timezone=True))


def _stamp(name: str) -> Column[Any]:
    """When Postgres wrote the row, by its own clock."""
    return Column(name, DateTime(timezone=True), nullable=False, server_default=_now)


def _count(name: str) -> Column[Any]:
    return Column(name, Integer, nullable=False, server_default=text("0"))


def _flag(name: str) -> Column[Any]:
    return Column(name, Boolean, nullable=False, server_default=text("false"))


def _text_list(name: str) -> Column[Any]:
    """Empty, never NULL: `= ANY(...)` and array_length need no NULL case."""
    return Column(name, ARRAY(Text), nullable=False, server_default=text("'{}'"))


dm_history = _table(
    "dm_history",
    _key("account_key"),
    _key("message_id"),
    _required("provider"),
    _required("stream_key"),
    Column("conversation_id", Text),
    _required("event_type"),
    Column("sender_id", Text),
    Column("recipient_id", Text),
    _text_list("participant_ids"),
    _time("created_at"),
    Column("text", Text),
    Column("media", JSONB(none_as_null=True)),  # SQL NULL, not JSON null: `media IS NULL` works
    Column("referenced_tweets", JSONB(none_as_null=True)),
    Column("reply_to_message_id", Text),
    _count("edit_count"),
    _required("raw", JSONB),
    _flag("sanitized"),
    # What the normalizer had to do to store the event: nul_replaced, surrogate_replaced,
    # invalid_created_at, missing_created_at, coerced_types, large_text. Empty for clean events.
    _text_list("flags"),
    _required("content_hash"),
    _required("first_seen_run_id"),
    _required("last_changed_run_id"),
    _stamp("first_seen_at"),
    _stamp("last_changed_at"),
    # A sweep of a full-history stream found the event missing upstream (first seen missing); NULL: live.
    _time("deleted_upstream_at"),
)

sync_state = _table(
    "sync_state",
    _key("account_key"),
    _key("stream_key"),
    _required("provider"),
    _required("endpoint"),
    Column("high_water_id", Text),
    # An in-progress pass (docs/architecture.md §2): started_at IS NOT NULL means one is open.
    _time("pass_started_at"),
    Column("pass_cursor", Text),
    Column("pass_stop_id", Text),
    Column("pass_newest_id", Text),
    _count("pass_pages"),
    _flag("pass_sweep"),
    _time("last_success_at"),
    Column("last_status", Text),
    Column("last_error_code", Text),
    _stamp("updated_at"),
    # A pass reached the start of the stream once (an X conversation stream may then go dormant).
    _flag("history_complete"),
    # Start of the last successful pass: every event created before it (within the window) was seen.
    _time("covered_at"),
    # Billed providers: consecutive passes that found nothing new, and when the stream is due again.
    _count("empty_polls"),
    _time("next_poll_at"),
    # Runs in a row that parked the open pass without storing anything (endless distinct cursors).
    _count("pass_stale_runs"),
    _time("last_sweep_at"),  # the last completed sweep pass
)

account_state = _table(
    "account_state",
    # One rate-limit state per account, shared by its streams and by concurrent processes.
    _key("account_key"),
    _required("provider"),
    Column("rl_limit", Integer),
    Column("rl_remaining", Integer),
    _time("rl_reset_at"),
    _time("limited_until"),   # no request before this (429 Retry-After or window)
    _stamp("updated_at"),
)

oauth_tokens = _table(
    "oauth_tokens",
    _key("account_key"),
    _required("provider"),
    _required("access_token_enc", LargeBinary),
    Column("refresh_token_enc", LargeBinary),
    _time("expires_at"),
    _stamp("updated_at"),
    _time("refresh_rejected_at"),  # the stored refresh token is never posted again
    Column("scope", Text),         # as X granted it (space-separated)
    _time("authorized_at"),        # stored by `accounts connect`
    _time("last_refreshed_at"),    # last rotated by a refresh
)

dm_sync_audit = Table(
    "dm_sync_audit", metadata,
    # Range-partitioned by UTC month on finished_at, with a DEFAULT partition (migration 0009,
    # db/audit_partitions.py). No primary key: on a partitioned table it must include finished_at, and
    # (audit_id, finished_at) would cost 31 bytes a row that no query reads; audit_id is unique by its
    # sequence. Fixed-width columns first (8, 4, 2, 1 bytes), then variable ones: no alignment padding. The
    # rare counters are NULL rather than 0. A no-op tick's row: docs/architecture.md §14.
    Column("audit_id", BigInteger, nullable=False,
           server_default=text("nextval('dm_audit.dm_sync_audit_audit_id_seq'::regclass)")),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("retry_at", DateTime(timezone=True)),  # a parked stream: when the account is tried again
    # A job row's requests, cost and events_received are its stream run's totals; a page row's, the page's.
    Column("requests", Integer, nullable=False, server_default=text("0")),
    # What the provider bills: X requests, Xquik credits, GetXAPI calls.
    Column("cost", Integer, nullable=False, server_default=text("0")),
    Column("events_received", Integer, nullable=False, server_default=text("0")),
    Column("events_inserted", Integer, nullable=False, server_default=text("0")),
    Column("events_updated", Integer, nullable=False, server_default=text("0")),
    Column("page_seq", Integer),
    # NULL means 0. Xquik: 1 credit per message returned; a job row holds those of the pages folded into it.
    Column("credits", Integer),
    Column("events_quarantined", Integer),
    Column("partial_errors", Integer),  # 200 `errors` beside data
    # Sweeps: events found missing upstream (marked), seen again (restored), content erased by policy.
    Column("events_marked_deleted", Integer),
    Column("events_restored", Integer),
    Column("events_erased", Integer),
    Column("http_status", SmallInteger),
    # A job row: the pages folded into it (a one-page pass that changed nothing writes no page row).
    Column("folded_pages", SmallInteger),
    Column("gap_suspected", Boolean, nullable=False, server_default=text("false")),
    Column("has_next_page", Boolean),
    Column("run_id", Text, nullable=False),
    Column("account_key", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("stream_key", Text, nullable=False),
    Column("row_kind", Text, nullable=False),      # 'page' or 'job' (one per stream run: its terminal status)
    Column("job_status", Text, nullable=False),
    Column("endpoint", Text),                      # page rows (a job row's stream has it in sync_state)
    Column("error_code", Text),
    Column("newest_id", Text),                     # what was seen: the newest and oldest IDs received
    Column("oldest_id", Text),
    Column("cursor_in", Text),
    Column("cursor_out", Text),
    Column("message_ids", ARRAY(Text)),            # the IDs the page inserted or updated (NULL: none)
    Column("media_refs", ARRAY(Text)),             # the media of those events
    # A page of a full walk (first pass, sweep): the IDs it returned that were stored unchanged, so that with
    # message_ids the walk's pages name every ID it saw: the deletions judge's evidence (§4).
    Column("unchanged_ids", ARRAY(Text)),
    CheckConstraint("row_kind IN ('page', 'job')", name="row_kind"),
    schema=AUDIT,
    postgresql_partition_by="RANGE (finished_at)",
)

dm_sync_audit_monthly = Table(
    "dm_sync_audit_monthly", metadata,
    # One row per account x stream x UTC month of the audit, rolled up daily (db/audit_partitions.py: closed
    # months whole, the current one to date) and before the month's partition may be dropped: counts only.
    # sync_health and the reconciliation check read these up to the watermark, the audit rows after it.
    Column("month", Date, primary_key=True),       # the month's first day (UTC)
    Column("account_key", Text, primary_key=True),
    Column("stream_key", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("audit_rows", Integer, nullable=False),
    Column("pages", Integer, nullable=False),      # page rows + pages folded into job rows
    Column("runs", Integer, nullable=False),       # distinct runs within the month
    Column("errors", Integer, nullable=False),     # failed jobs + pages with an error code (as sync_health)
    Column("gap_rows", Integer, nullable=False),
    Column("last_gap_at", DateTime(timezone=True)),
    Column("last_page_at", DateTime(timezone=True)),
    Column("requests", BigInteger, nullable=False),        # job rows' totals
    Column("cost", BigInteger, nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("events_received", BigInteger, nullable=False),
    # Rows inserted by the month's pages after last_erasure_at: what the reconciliation check counts (while
    # no later erasure made them moot).
    Column("events_inserted", BigInteger, nullable=False),
    Column("events_updated", BigInteger, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
    # The row counts the month's audit rows before this instant (its end, or the start of a day of the current
    # month); the latest `through` is the watermark after which readers take the audit rows themselves.
    Column("through", DateTime(timezone=True), nullable=False),
    Column("last_erasure_at", DateTime(timezone=True)),  # the account's last erasure when rolled up (or none)
    Column("rolled_up_at", DateTime(timezone=True), nullable=False, server_default=_now),
    schema=AUDIT,
)

dm_quarantine = _table(
    "dm_quarantine",
    # Events that could not be normalized (no numeric ID, no type, a field of the wrong type): kept here,
    # private (they may hold text), with a typed error code, instead of being dropped or failing the page.
    _serial("quarantine_id"),
    _required("account_key"),
    _required("provider"),
    _required("stream_key"),
    Column("provider_event_id", Text),
    _required("error_code"),
    _required("reason"),
    _required("raw", JSONB),
    _required("content_hash"),
    _required("first_seen_run_id"),
    _stamp("first_seen_at"),
    UniqueConstraint("account_key", "stream_key", "content_hash"),
)

dm_users = _table(
    "dm_users",
    # Profiles from X `includes.users`, GetXAPI `users` and Xquik lookups, upserted: last seen wins.
    _key("provider"),
    _key("user_id"),
    Column("username", Text),
    Column("name", Text),
    _required("raw", JSONB),
    _required("content_hash"),
    _stamp("updated_at"),
)

dm_conversations = _table(
    "dm_conversations",
    # GetXAPI conversation metadata per account (type, tab, trust flags, participants).
    _key("account_key"),
    _key("conversation_id"),
    _required("provider"),
    _required("stream_key"),
    Column("conversation_type", Text),
    _text_list("participant_ids"),
    _required("raw", JSONB),
    _required("content_hash"),
    _stamp("updated_at"),
)

dm_conversation_events = _table(
    "dm_conversation_events",
    # Non-message conversation events (GetXAPI `events`: trust changes, joins/leaves), deduplicated.
    _key("account_key"),
    _key("event_key"),
    _required("provider"),
    Column("conversation_id", Text),
    _required("event_type"),
    _time("created_at"),
    _required("raw", JSONB),
    _required("first_seen_run_id"),
)

dm_erasures = _table(
    "dm_erasures",
    # One row per `dm-pipeline erase`: what was deleted, counts only (the erased rows are gone).
    _serial("erasure_id"),
    _required("run_id"),
    _required("account_key"),
    Column("provider", Text),
    _required("requested_by", server_default=text("CURRENT_USER")),
    _required("history_rows", Integer),
    _required("conversation_rows", Integer),
    _required("conversation_event_rows", Integer),
    _count("quarantine_rows"),
    _required("token_rows", Integer),
    _required("sync_state_rows", Integer),
    _required("audit_rows_redacted", Integer),
    _stamp("erased_at"),
    schema=AUDIT,
)

Index(None, dm_history.c.account_key, dm_history.c.conversation_id, dm_history.c.created_at)
Index(None, dm_history.c.created_at)
# Migration 0003, for the dm_analytics views: the dedupe probe, conversation timelines, per-account UTC days
# (the expression of daily_volume.day).
Index(None, dm_history.c.message_id,
      postgresql_include=["edit_count", "last_changed_at", "account_key", "deleted_upstream_at"])
Index(None, dm_history.c.conversation_id, dm_history.c.created_at)
Index("ix_dm_history_account_key_utc_day", dm_history.c.account_key, text("((created_at AT TIME ZONE 'UTC')::date)"))
# Migration 0009 (docs/architecture.md §14). Per stream and UTC day, so that B-tree deduplication stores a
# stream's rows of a day as one key and its row pointers (~10 bytes a row; ~60 with finished_at in the key);
# readers of a stream's last day give the day. Per run (deduplicated too); a BRIN index on the time.
Index("ix_dm_sync_audit_account_key_stream_key_utc_day", dm_sync_audit.c.account_key, dm_sync_audit.c.stream_key,
      text("((finished_at AT TIME ZONE 'UTC')::date)"))
Index(None, dm_sync_audit.c.run_id)
Index(None, dm_sync_audit.c.finished_at, postgresql_using="brin", postgresql_with={"autosummarize": "on"})
# Partial indexes a no-op row never enters: a stream's last error (status, sync_health), the suspected gaps
# (status, sync_health, the gap_suspected check), the page rows (the deletions judge, the reconciliation), the
# parked jobs' cursors (with errors and pages: the rows the redaction check reads).
Index("ix_dm_sync_audit_errors", dm_sync_audit.c.account_key, dm_sync_audit.c.stream_key,
      dm_sync_audit.c.finished_at, postgresql_include=["error_code", "http_status"],
      postgresql_where=dm_sync_audit.c.error_code.is_not(None))
Index("ix_dm_sync_audit_gaps", dm_sync_audit.c.account_key, dm_sync_audit.c.stream_key,
      dm_sync_audit.c.finished_at, postgresql_where=dm_sync_audit.c.gap_suspected)
Index("ix_dm_sync_audit_pages", dm_sync_audit.c.account_key, dm_sync_audit.c.stream_key,
      dm_sync_audit.c.finished_at, postgresql_include=["events_inserted"],
      postgresql_where=text("row_kind = 'page'"))
Index("ix_dm_sync_audit_parked", dm_sync_audit.c.account_key, dm_sync_audit.c.stream_key,
      dm_sync_audit.c.finished_at, postgresql_where=text("row_kind = 'job' AND cursor_out IS NOT NULL"))
# What sync_health and the reconciliation read per stream, in the index (index-only scans).
Index(None, dm_sync_audit_monthly.c.account_key, dm_sync_audit_monthly.c.stream_key, dm_sync_audit_monthly.c.month,
      postgresql_include=["pages", "runs", "errors", "gap_rows", "last_gap_at", "last_page_at", "credits",
                          "events_inserted", "last_erasure_at"])
Index(None, dm_sync_audit_monthly.c.through)
