"""Messages deleted upstream (issue 16): detected by sweeps, marked, handled by policy.

- `dm_history.deleted_upstream_at`: when a sweep of a full-history stream first found the event missing
  (NULL: live; cleared if it comes back).
- `dm_sync_audit.events_marked_deleted`, `events_restored`, `events_erased`: per sweep page.
- `sync_state.last_sweep_at`: when the stream's last sweep pass completed (status, the sweep check).
- The analyst views leave marked events out (`CREATE OR REPLACE` keeps their grants); `conversations` and
  `daily_volume` say how many they left out in a new last column, `deleted_upstream`.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MESSAGES = """
CREATE OR REPLACE VIEW dm_analytics.messages AS
SELECT h.message_id,
       h.account_key,
       h.provider,
       h.stream_key,
       h.conversation_id,
       h.event_type,
       h.sender_id,
       h.recipient_id,
       h.participant_ids,
       h.created_at,
       h.reply_to_message_id,
       coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(h.media) = 'array' THEN h.media END), 0) > 0
           AS has_media,
       ARRAY(SELECT coalesce(m ->> 'url', m -> 'variants' -> 0 ->> 'url', m ->> 'preview_image_url')
             FROM jsonb_array_elements(CASE WHEN jsonb_typeof(h.media) = 'array' THEN h.media
                                            ELSE '[]'::jsonb END) AS m) AS media_urls,
       char_length(h.text) AS text_length,
       h.edit_count,
       h.sanitized,
       h.first_seen_at,
       h.last_changed_at
FROM dm_private.dm_history AS h
WHERE h.deleted_upstream_at IS NULL{live_only}
  AND NOT EXISTS (
    SELECT FROM dm_private.dm_history AS o
    WHERE o.message_id = h.message_id{o_live_only}
      AND (o.edit_count, o.last_changed_at, h.account_key) > (h.edit_count, h.last_changed_at, o.account_key)
)"""

_CONVERSATIONS = """
CREATE OR REPLACE VIEW dm_analytics.conversations AS
SELECT h.conversation_id,
       min(h.provider) AS provider,
       array_agg(DISTINCT h.account_key ORDER BY h.account_key) AS account_keys,
       ARRAY(SELECT DISTINCT p
             FROM unnest(string_to_array(string_agg(
                 concat_ws(',', h.sender_id, h.recipient_id, array_to_string(h.participant_ids, ',')), ','),
                 ',')) AS p
             WHERE p <> '' ORDER BY p) AS participant_ids,
       min(h.created_at) {live} AS first_event_at,
       max(h.created_at) {live} AS last_event_at,
       count(DISTINCT h.message_id) {live} AS events,
       count(DISTINCT h.message_id) FILTER (WHERE h.event_type = 'MessageCreate'{and_live}) AS messages,
       count(DISTINCT h.message_id) FILTER (WHERE h.media IS NOT NULL{and_live}) AS with_media,
       count(DISTINCT h.sender_id) {live} AS senders{extra}
FROM dm_private.dm_history AS h
WHERE h.conversation_id IS NOT NULL
GROUP BY h.conversation_id"""

_DAILY_VOLUME = """
CREATE OR REPLACE VIEW dm_analytics.daily_volume AS
SELECT h.account_key,
       h.provider,
       h.conversation_id,
       (h.created_at AT TIME ZONE 'UTC')::date AS day,
       count(*) {live} AS events,
       count(*) FILTER (WHERE h.event_type = 'MessageCreate'{and_live}) AS messages,
       count(*) FILTER (WHERE h.media IS NOT NULL{and_live}) AS with_media,
       count(DISTINCT h.sender_id) {live} AS senders,
       coalesce(sum(char_length(h.text)) {live}, 0) AS text_chars{extra}
FROM dm_private.dm_history AS h
WHERE h.created_at IS NOT NULL
GROUP BY h.account_key, h.provider, h.conversation_id, (h.created_at AT TIME ZONE 'UTC')::date"""

_LIVE = "FILTER (WHERE h.deleted_upstream_at IS NULL)"
_EXTRA = ",\n       count(*) FILTER (WHERE h.deleted_upstream_at IS NOT NULL) AS deleted_upstream"


def upgrade() -> None:
    op.add_column('dm_history', sa.Column('deleted_upstream_at', sa.DateTime(timezone=True), nullable=True),
                  schema='dm_private')
    op.add_column('sync_state', sa.Column('last_sweep_at', sa.DateTime(timezone=True), nullable=True),
                  schema='dm_private')
    # A stream that has walked its whole history was, in effect, swept then: not due at once on upgrade.
    op.execute("UPDATE dm_private.sync_state SET last_sweep_at = last_success_at WHERE history_complete")
    for column in ('events_marked_deleted', 'events_restored', 'events_erased'):
        op.add_column('dm_sync_audit', sa.Column(column, sa.Integer(), server_default=sa.text('0'),
                                                 nullable=False), schema='dm_audit')
    # The dedupe probe of `messages` reads deleted_upstream_at too: kept in the index, still index-only.
    op.drop_index('ix_dm_history_message_id', table_name='dm_history', schema='dm_private')
    op.create_index('ix_dm_history_message_id', 'dm_history', ['message_id'], unique=False, schema='dm_private',
                    postgresql_include=['edit_count', 'last_changed_at', 'account_key', 'deleted_upstream_at'])
    op.execute(_MESSAGES.format(live_only="", o_live_only="\n      AND o.deleted_upstream_at IS NULL"))
    op.execute(_CONVERSATIONS.format(live=_LIVE, and_live=" AND h.deleted_upstream_at IS NULL", extra=_EXTRA))
    op.execute(_DAILY_VOLUME.format(live=_LIVE, and_live=" AND h.deleted_upstream_at IS NULL", extra=_EXTRA))


def downgrade() -> None:
    # A view loses columns only by being dropped; recreated as 0003 wrote them, grants restored by name.
    for view in ('daily_volume', 'conversations'):
        op.execute(f"DROP VIEW dm_analytics.{view}")
    op.execute(_CONVERSATIONS.replace("CREATE OR REPLACE", "CREATE").format(live="", and_live="", extra=""))
    op.execute(_DAILY_VOLUME.replace("CREATE OR REPLACE", "CREATE").format(live="", and_live="", extra=""))
    op.execute("""DO $$ BEGIN
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'dm_analyst') THEN
            GRANT SELECT ON dm_analytics.conversations, dm_analytics.daily_volume TO dm_analyst;
        END IF; END $$""")
    op.execute(_MESSAGES.format(live_only="", o_live_only="").replace(
        "WHERE h.deleted_upstream_at IS NULL\n  AND NOT EXISTS", "WHERE NOT EXISTS"))
    op.drop_index('ix_dm_history_message_id', table_name='dm_history', schema='dm_private')
    op.create_index('ix_dm_history_message_id', 'dm_history', ['message_id'], unique=False, schema='dm_private',
                    postgresql_include=['edit_count', 'last_changed_at', 'account_key'])
    for column in ('events_erased', 'events_restored', 'events_marked_deleted'):
        op.drop_column('dm_sync_audit', column, schema='dm_audit')
    op.drop_column('sync_state', 'last_sweep_at', schema='dm_private')
    op.drop_column('dm_history', 'deleted_upstream_at', schema='dm_private')
