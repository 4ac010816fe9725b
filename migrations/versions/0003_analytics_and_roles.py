"""Analytics views without text, the indexes that serve them, the erasure log, and Postgres roles.

Privacy model (docs/architecture.md §6): message text lives only in `dm_private`. Analysts (`dm_analyst`) get
`dm_audit` and `dm_analytics` and nothing else. The views are ordinary (not `security_invoker`) views, so
they run with their owner's privileges: an analyst reads them without any right on `dm_private`, and only
the columns a view selects ever leave it. That is the point of the views; none of them selects `text`,
`raw` or a token.

Role policy: roles are cluster-wide, so creation is idempotent and race-safe (many databases on one
server are migrated or cloned at once), and happens only when the migrating user may create roles;
otherwise a NOTICE says so and the grants are skipped, never failing the migration. A role that already
exists (created by a DBA) gets its grants either way.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ANALYST = "dm_analyst"
LOADER = "dm_loader"

# Statements per role ({role} substituted), run only if the role exists. Default privileges cover the views
# and tables that later migrations (run as the same owner) add.
GRANTS: dict[str, list[str]] = {
    ANALYST: [
        "GRANT USAGE ON SCHEMA dm_audit, dm_analytics TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA dm_audit TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA dm_analytics TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_audit GRANT SELECT ON TABLES TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_analytics GRANT SELECT ON TABLES TO {role}",
    ],
    # The pipeline's runtime role: reads and writes the private tables, appends to (and, on erasure,
    # redacts) the audit. It needs no analytics view.
    LOADER: [
        "GRANT USAGE ON SCHEMA dm_private, dm_audit TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dm_private TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA dm_audit TO {role}",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA dm_audit TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_private GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_audit GRANT SELECT, INSERT, UPDATE ON TABLES TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_audit GRANT USAGE ON SEQUENCES TO {role}",
    ],
}

REVOKES: dict[str, list[str]] = {
    ANALYST: [
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_audit REVOKE SELECT ON TABLES FROM {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_analytics REVOKE SELECT ON TABLES FROM {role}",
        "REVOKE ALL ON ALL TABLES IN SCHEMA dm_audit FROM {role}",
        "REVOKE ALL ON ALL TABLES IN SCHEMA dm_analytics FROM {role}",
        "REVOKE ALL ON SCHEMA dm_audit, dm_analytics FROM {role}",
    ],
    LOADER: [
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_private REVOKE ALL ON TABLES FROM {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_audit REVOKE ALL ON TABLES FROM {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA dm_audit REVOKE ALL ON SEQUENCES FROM {role}",
        "REVOKE ALL ON ALL TABLES IN SCHEMA dm_private FROM {role}",
        "REVOKE ALL ON ALL TABLES IN SCHEMA dm_audit FROM {role}",
        "REVOKE ALL ON ALL SEQUENCES IN SCHEMA dm_audit FROM {role}",
        "REVOKE ALL ON SCHEMA dm_private, dm_audit FROM {role}",
    ],
}


def ensure_role_sql(role: str) -> str:
    """Create NOLOGIN `role` if it is missing and we may; never fail. The EXCEPTION clause covers two
    sessions racing past the existence check (CREATE ROLE has no IF NOT EXISTS)."""
    return f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        RETURN;
    ELSIF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        CREATE ROLE {role} NOLOGIN;
    ELSE
        RAISE NOTICE 'dm_pipeline: % may not create roles; role {role} not created, its grants skipped',
            current_user;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$"""


def if_role_exists_sql(role: str, statements: list[str]) -> str:
    body = "\n".join(f"        EXECUTE {_literal(s.format(role=role))};" for s in statements)
    return f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
{body}
    END IF;
END
$$"""


def _literal(sql: str) -> str:
    return "'" + sql.replace("'", "''") + "'"


# ------------------------------------------------------------------------------------------ views
UTC_DAY = "((created_at AT TIME ZONE 'UTC')::date)"

# One row per message ID. The same event is stored once per connected account that can see it; the copy
# shown is the newest version: highest edit_count, then latest last_changed_at, then smallest account_key.
# Written as NOT EXISTS (not DISTINCT ON) so filters on created_at or conversation_id reach the indexes.
MESSAGES = """
CREATE VIEW dm_analytics.messages AS
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
WHERE NOT EXISTS (
    SELECT FROM dm_private.dm_history AS o
    WHERE o.message_id = h.message_id
      AND (o.edit_count, o.last_changed_at, h.account_key) > (h.edit_count, h.last_changed_at, o.account_key)
)"""

# Conversations across accounts: counts are of distinct message IDs, so a conversation two connected
# accounts share is not counted twice. Participants: every sender, recipient and joined/left user seen.
CONVERSATIONS = """
CREATE VIEW dm_analytics.conversations AS
SELECT h.conversation_id,
       min(h.provider) AS provider,
       array_agg(DISTINCT h.account_key ORDER BY h.account_key) AS account_keys,
       ARRAY(SELECT DISTINCT p
             FROM unnest(string_to_array(string_agg(
                 concat_ws(',', h.sender_id, h.recipient_id, array_to_string(h.participant_ids, ',')), ','),
                 ',')) AS p
             WHERE p <> '' ORDER BY p) AS participant_ids,
       min(h.created_at) AS first_event_at,
       max(h.created_at) AS last_event_at,
       count(DISTINCT h.message_id) AS events,
       count(DISTINCT h.message_id) FILTER (WHERE h.event_type = 'MessageCreate') AS messages,
       count(DISTINCT h.message_id) FILTER (WHERE h.media IS NOT NULL) AS with_media,
       count(DISTINCT h.sender_id) AS senders
FROM dm_private.dm_history AS h
WHERE h.conversation_id IS NOT NULL
GROUP BY h.conversation_id"""

# Per account (each account's own copy, not deduplicated), conversation and UTC day.
DAILY_VOLUME = """
CREATE VIEW dm_analytics.daily_volume AS
SELECT h.account_key,
       h.provider,
       h.conversation_id,
       (h.created_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS events,
       count(*) FILTER (WHERE h.event_type = 'MessageCreate') AS messages,
       count(*) FILTER (WHERE h.media IS NOT NULL) AS with_media,
       count(DISTINCT h.sender_id) AS senders,
       coalesce(sum(char_length(h.text)), 0) AS text_chars
FROM dm_private.dm_history AS h
WHERE h.created_at IS NOT NULL
GROUP BY h.account_key, h.provider, h.conversation_id, (h.created_at AT TIME ZONE 'UTC')::date"""

# One row per account x stream: the state row's non-secret columns plus audit aggregates (one index
# range scan per stream). The open pass's cursor is left out: it is in the audit if anyone needs it.
SYNC_HEALTH = """
CREATE VIEW dm_analytics.sync_health AS
SELECT s.account_key,
       s.stream_key,
       s.provider,
       s.endpoint,
       s.last_status,
       s.last_error_code,
       s.last_success_at,
       now() - s.last_success_at AS lag,
       s.pass_started_at IS NOT NULL AS pass_in_progress,
       s.pass_started_at,
       s.pass_pages,
       s.pass_sweep,
       s.high_water_id,
       s.updated_at,
       coalesce(a.pages, 0) AS pages,
       coalesce(a.runs, 0) AS runs,
       coalesce(a.errors, 0) AS errors,
       coalesce(a.errors_24h, 0) AS errors_24h,
       coalesce(a.gap_suspected, false) AS gap_suspected,
       a.last_gap_at,
       a.last_page_at,
       coalesce(a.credits, 0) AS credits
FROM dm_private.sync_state AS s
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.row_kind = 'page') AS pages,
           count(DISTINCT x.run_id) AS runs,
           count(*) FILTER (WHERE x.row_kind = 'job' AND x.job_status = 'failed'
                                  OR x.row_kind = 'page' AND x.error_code IS NOT NULL) AS errors,
           count(*) FILTER (WHERE (x.row_kind = 'job' AND x.job_status = 'failed'
                                   OR x.row_kind = 'page' AND x.error_code IS NOT NULL)
                                  AND x.finished_at > now() - interval '24 hours') AS errors_24h,
           bool_or(x.gap_suspected) AS gap_suspected,
           max(x.finished_at) FILTER (WHERE x.gap_suspected) AS last_gap_at,
           max(x.finished_at) FILTER (WHERE x.row_kind = 'page') AS last_page_at,
           sum(x.credits) AS credits
    FROM dm_audit.dm_sync_audit AS x
    WHERE x.account_key = s.account_key AND x.stream_key = s.stream_key
) AS a ON true"""

VIEWS = {"messages": MESSAGES, "conversations": CONVERSATIONS, "daily_volume": DAILY_VOLUME,
         "sync_health": SYNC_HEALTH}


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS dm_analytics")
    op.execute("REVOKE ALL ON SCHEMA dm_private FROM PUBLIC")  # explicit: nobody but the owner and grants
    op.create_table('dm_erasures',
    sa.Column('erasure_id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=True),
    sa.Column('requested_by', sa.Text(), server_default=sa.text('CURRENT_USER'), nullable=False),
    sa.Column('history_rows', sa.Integer(), nullable=False),
    sa.Column('conversation_rows', sa.Integer(), nullable=False),
    sa.Column('conversation_event_rows', sa.Integer(), nullable=False),
    sa.Column('token_rows', sa.Integer(), nullable=False),
    sa.Column('sync_state_rows', sa.Integer(), nullable=False),
    sa.Column('audit_rows_redacted', sa.Integer(), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('erasure_id', name=op.f('pk_dm_erasures')),
    schema='dm_audit'
    )
    # The dedupe probe of dm_analytics.messages (covering: an index-only probe per row); conversation
    # timelines across accounts; per-account UTC days (daily_volume's `day` is this very expression, so a
    # filter on it is an index range).
    op.create_index(op.f('ix_dm_history_message_id'), 'dm_history', ['message_id'], unique=False, schema='dm_private', postgresql_include=['edit_count', 'last_changed_at', 'account_key'])
    op.create_index(op.f('ix_dm_history_conversation_id_created_at'), 'dm_history', ['conversation_id', 'created_at'], unique=False, schema='dm_private')
    op.create_index('ix_dm_history_account_key_utc_day', 'dm_history', ['account_key', sa.text(UTC_DAY)], unique=False, schema='dm_private')
    for sql in VIEWS.values():
        op.execute(sql)
    for role, statements in GRANTS.items():
        op.execute(ensure_role_sql(role))
        op.execute(if_role_exists_sql(role, statements))


def downgrade() -> None:
    # Roles are NOT dropped: they are cluster-wide and shared by every database on the server (the test
    # server clones many databases from one template; production may host several warehouses), so a
    # DROP ROLE here would fail or break the others. Only this database's grants are revoked, which leaves
    # the roles without dependencies here; a DBA drops them once no database uses them. No DROP OWNED:
    # it would also drop objects a DBA gave these roles.
    for role, statements in REVOKES.items():
        op.execute(if_role_exists_sql(role, statements))
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS dm_analytics.{name}")
    op.drop_index('ix_dm_history_account_key_utc_day', table_name='dm_history', schema='dm_private')
    op.drop_index(op.f('ix_dm_history_conversation_id_created_at'), table_name='dm_history', schema='dm_private')
    op.drop_index(op.f('ix_dm_history_message_id'), table_name='dm_history', schema='dm_private')
    op.drop_table('dm_erasures', schema='dm_audit')
    op.execute("DROP SCHEMA IF EXISTS dm_analytics")
