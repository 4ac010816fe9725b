"""SQLAlchemy Core metadata. Alembic owns the schema (migrations/); this mirrors it and `alembic check`
guards that the two never drift."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

PRIVATE = "dm_private"
AUDIT = "dm_audit"

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
})

_now = func.now()

dm_history = Table(
    "dm_history", metadata,
    Column("account_key", Text, primary_key=True),
    Column("message_id", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("stream_key", Text, nullable=False),
    Column("conversation_id", Text),
    Column("event_type", Text, nullable=False),
    Column("sender_id", Text),
    Column("recipient_id", Text),
    Column("participant_ids", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("created_at", DateTime(timezone=True)),
    Column("text", Text),
    Column("media", JSONB(none_as_null=True)),  # SQL NULL, not JSON null: `media IS NULL` works
    Column("referenced_tweets", JSONB(none_as_null=True)),
    Column("reply_to_message_id", Text),
    Column("edit_count", Integer, nullable=False, server_default=text("0")),
    Column("raw", JSONB, nullable=False),
    Column("sanitized", Boolean, nullable=False, server_default=text("false")),
    # What the normalizer had to do to store the event: nul_replaced, surrogate_replaced,
    # invalid_created_at, missing_created_at, coerced_types, large_text. Empty for clean events.
    Column("flags", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("content_hash", Text, nullable=False),
    Column("first_seen_run_id", Text, nullable=False),
    Column("last_changed_run_id", Text, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("last_changed_at", DateTime(timezone=True), nullable=False, server_default=_now),
    # A sweep of a full-history stream found the event missing upstream (first seen missing); NULL: live.
    Column("deleted_upstream_at", DateTime(timezone=True)),
    schema=PRIVATE,
)

sync_state = Table(
    "sync_state", metadata,
    Column("account_key", Text, primary_key=True),
    Column("stream_key", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("high_water_id", Text),
    # An in-progress pass (docs/architecture.md §2): started_at IS NOT NULL means one is open.
    Column("pass_started_at", DateTime(timezone=True)),
    Column("pass_cursor", Text),
    Column("pass_stop_id", Text),
    Column("pass_newest_id", Text),
    Column("pass_pages", Integer, nullable=False, server_default=text("0")),
    Column("pass_sweep", Boolean, nullable=False, server_default=text("false")),
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_status", Text),
    Column("last_error_code", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
    # A pass reached the start of the stream once (an X conversation stream may then go dormant).
    Column("history_complete", Boolean, nullable=False, server_default=text("false")),
    # Start of the last successful pass: every event created before it (within the window) was seen.
    Column("covered_at", DateTime(timezone=True)),
    # Billed providers: consecutive passes that found nothing new, and when the stream is due again.
    Column("empty_polls", Integer, nullable=False, server_default=text("0")),
    Column("next_poll_at", DateTime(timezone=True)),
    # Runs in a row that parked the open pass without storing anything (endless distinct cursors).
    Column("pass_stale_runs", Integer, nullable=False, server_default=text("0")),
    Column("last_sweep_at", DateTime(timezone=True)),  # the last completed sweep pass
    schema=PRIVATE,
)

account_state = Table(
    "account_state", metadata,
    # One rate-limit state per account, shared by its streams and by concurrent processes.
    Column("account_key", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("rl_limit", Integer),
    Column("rl_remaining", Integer),
    Column("rl_reset_at", DateTime(timezone=True)),
    Column("limited_until", DateTime(timezone=True)),   # no request before this (429 Retry-After or window)
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
    schema=PRIVATE,
)

oauth_tokens = Table(
    "oauth_tokens", metadata,
    Column("account_key", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("access_token_enc", LargeBinary, nullable=False),
    Column("refresh_token_enc", LargeBinary),
    Column("expires_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("refresh_rejected_at", DateTime(timezone=True)),  # the stored refresh token is never posted again
    Column("scope", Text),                                   # as X granted it (space-separated)
    Column("authorized_at", DateTime(timezone=True)),        # stored by `accounts connect`
    Column("last_refreshed_at", DateTime(timezone=True)),    # last rotated by a refresh
    schema=PRIVATE,
)

dm_sync_audit = Table(
    "dm_sync_audit", metadata,
    Column("audit_id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("account_key", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("stream_key", Text, nullable=False),
    Column("endpoint", Text),
    Column("row_kind", Text, nullable=False),      # 'page' (one per page fetched) or 'job' (terminal status)
    Column("page_seq", Integer),
    Column("cursor_in", Text),
    Column("cursor_out", Text),
    Column("has_next_page", Boolean),
    Column("http_status", Integer),
    Column("requests", Integer, nullable=False, server_default=text("0")),
    Column("events_received", Integer, nullable=False, server_default=text("0")),
    Column("events_inserted", Integer, nullable=False, server_default=text("0")),
    Column("events_updated", Integer, nullable=False, server_default=text("0")),
    Column("events_quarantined", Integer, nullable=False, server_default=text("0")),
    Column("message_ids", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("media_refs", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("newest_id", Text),
    Column("oldest_id", Text),
    Column("job_status", Text, nullable=False),
    Column("error_code", Text),
    Column("gap_suspected", Boolean, nullable=False, server_default=text("false")),
    Column("credits", Integer, nullable=False, server_default=text("0")),  # Xquik: 1 per message returned
    # What the provider bills: X requests, Xquik credits, GetXAPI calls.
    Column("cost", Integer, nullable=False, server_default=text("0")),
    Column("partial_errors", Integer, nullable=False, server_default=text("0")),  # 200 `errors` beside data
    Column("retry_at", DateTime(timezone=True)),  # a parked stream: when the account is tried again
    # Sweeps: events found missing upstream (marked), seen again (restored), content erased by policy.
    Column("events_marked_deleted", Integer, nullable=False, server_default=text("0")),
    Column("events_restored", Integer, nullable=False, server_default=text("0")),
    Column("events_erased", Integer, nullable=False, server_default=text("0")),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False, server_default=_now),
    CheckConstraint("row_kind IN ('page', 'job')", name="row_kind"),
    schema=AUDIT,
)

dm_quarantine = Table(
    "dm_quarantine", metadata,
    # Events that could not be normalized (no numeric ID, no type, a field of the wrong type): kept here,
    # private (they may hold text), with a typed error code, instead of being dropped or failing the page.
    Column("quarantine_id", BigInteger, primary_key=True, autoincrement=True),
    Column("account_key", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("stream_key", Text, nullable=False),
    Column("provider_event_id", Text),
    Column("error_code", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", JSONB, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("first_seen_run_id", Text, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=_now),
    UniqueConstraint("account_key", "stream_key", "content_hash"),
    schema=PRIVATE,
)

dm_users = Table(
    "dm_users", metadata,
    # Profiles from X `includes.users`, GetXAPI `users` and Xquik lookups, upserted: last seen wins.
    Column("provider", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("username", Text),
    Column("name", Text),
    Column("raw", JSONB, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
    schema=PRIVATE,
)

dm_conversations = Table(
    "dm_conversations", metadata,
    # GetXAPI conversation metadata per account (type, tab, trust flags, participants).
    Column("account_key", Text, primary_key=True),
    Column("conversation_id", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("stream_key", Text, nullable=False),
    Column("conversation_type", Text),
    Column("participant_ids", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("raw", JSONB, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now),
    schema=PRIVATE,
)

dm_conversation_events = Table(
    "dm_conversation_events", metadata,
    # Non-message conversation events (GetXAPI `events`: trust changes, joins/leaves), deduplicated.
    Column("account_key", Text, primary_key=True),
    Column("event_key", Text, primary_key=True),
    Column("provider", Text, nullable=False),
    Column("conversation_id", Text),
    Column("event_type", Text, nullable=False),
    Column("created_at", DateTime(timezone=True)),
    Column("raw", JSONB, nullable=False),
    Column("first_seen_run_id", Text, nullable=False),
    schema=PRIVATE,
)

dm_erasures = Table(
    "dm_erasures", metadata,
    # One row per `dm-pipeline erase`: what was deleted, counts only (the erased rows are gone).
    Column("erasure_id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("account_key", Text, nullable=False),
    Column("provider", Text),
    Column("requested_by", Text, nullable=False, server_default=text("CURRENT_USER")),
    Column("history_rows", Integer, nullable=False),
    Column("conversation_rows", Integer, nullable=False),
    Column("conversation_event_rows", Integer, nullable=False),
    Column("quarantine_rows", Integer, nullable=False, server_default=text("0")),
    Column("token_rows", Integer, nullable=False),
    Column("sync_state_rows", Integer, nullable=False),
    Column("audit_rows_redacted", Integer, nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False, server_default=_now),
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
Index(None, dm_sync_audit.c.account_key, dm_sync_audit.c.stream_key, dm_sync_audit.c.finished_at)
Index(None, dm_sync_audit.c.run_id)
