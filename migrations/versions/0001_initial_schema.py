"""Initial schema: private history, sync state, OAuth tokens, redacted audit (docs/architecture.md §6).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


SCHEMAS = ("dm_private", "dm_audit")


def upgrade() -> None:
    for schema in SCHEMAS:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    op.create_table('dm_sync_audit',
    sa.Column('audit_id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('stream_key', sa.Text(), nullable=False),
    sa.Column('endpoint', sa.Text(), nullable=True),
    sa.Column('row_kind', sa.Text(), nullable=False),
    sa.Column('page_seq', sa.Integer(), nullable=True),
    sa.Column('cursor_in', sa.Text(), nullable=True),
    sa.Column('cursor_out', sa.Text(), nullable=True),
    sa.Column('has_next_page', sa.Boolean(), nullable=True),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('requests', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('events_received', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('events_inserted', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('events_updated', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('message_ids', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('media_refs', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('newest_id', sa.Text(), nullable=True),
    sa.Column('oldest_id', sa.Text(), nullable=True),
    sa.Column('job_status', sa.Text(), nullable=False),
    sa.Column('error_code', sa.Text(), nullable=True),
    sa.Column('gap_suspected', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("row_kind IN ('page', 'job')", name=op.f('ck_dm_sync_audit_row_kind')),
    sa.PrimaryKeyConstraint('audit_id', name=op.f('pk_dm_sync_audit')),
    schema='dm_audit'
    )
    op.create_index(op.f('ix_dm_sync_audit_account_key_stream_key_finished_at'), 'dm_sync_audit', ['account_key', 'stream_key', 'finished_at'], unique=False, schema='dm_audit')
    op.create_index(op.f('ix_dm_sync_audit_run_id'), 'dm_sync_audit', ['run_id'], unique=False, schema='dm_audit')
    op.create_table('dm_history',
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('stream_key', sa.Text(), nullable=False),
    sa.Column('conversation_id', sa.Text(), nullable=True),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('sender_id', sa.Text(), nullable=True),
    sa.Column('recipient_id', sa.Text(), nullable=True),
    sa.Column('participant_ids', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('media', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('referenced_tweets', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('reply_to_message_id', sa.Text(), nullable=True),
    sa.Column('edit_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('sanitized', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('content_hash', sa.Text(), nullable=False),
    sa.Column('first_seen_run_id', sa.Text(), nullable=False),
    sa.Column('last_changed_run_id', sa.Text(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_changed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('account_key', 'message_id', name=op.f('pk_dm_history')),
    schema='dm_private'
    )
    op.create_index(op.f('ix_dm_history_account_key_conversation_id_created_at'), 'dm_history', ['account_key', 'conversation_id', 'created_at'], unique=False, schema='dm_private')
    op.create_index(op.f('ix_dm_history_created_at'), 'dm_history', ['created_at'], unique=False, schema='dm_private')
    op.create_table('oauth_tokens',
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('access_token_enc', sa.LargeBinary(), nullable=False),
    sa.Column('refresh_token_enc', sa.LargeBinary(), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('account_key', name=op.f('pk_oauth_tokens')),
    schema='dm_private'
    )
    op.create_table('sync_state',
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('stream_key', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('endpoint', sa.Text(), nullable=False),
    sa.Column('high_water_id', sa.Text(), nullable=True),
    sa.Column('pass_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pass_cursor', sa.Text(), nullable=True),
    sa.Column('pass_stop_id', sa.Text(), nullable=True),
    sa.Column('pass_newest_id', sa.Text(), nullable=True),
    sa.Column('pass_pages', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('pass_sweep', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Text(), nullable=True),
    sa.Column('last_error_code', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('account_key', 'stream_key', name=op.f('pk_sync_state')),
    schema='dm_private'
    )


def downgrade() -> None:
    op.drop_table('sync_state', schema='dm_private')
    op.drop_table('oauth_tokens', schema='dm_private')
    op.drop_index(op.f('ix_dm_history_created_at'), table_name='dm_history', schema='dm_private')
    op.drop_index(op.f('ix_dm_history_account_key_conversation_id_created_at'), table_name='dm_history', schema='dm_private')
    op.drop_table('dm_history', schema='dm_private')
    op.drop_index(op.f('ix_dm_sync_audit_run_id'), table_name='dm_sync_audit', schema='dm_audit')
    op.drop_index(op.f('ix_dm_sync_audit_account_key_stream_key_finished_at'), table_name='dm_sync_audit', schema='dm_audit')
    op.drop_table('dm_sync_audit', schema='dm_audit')
    for schema in reversed(SCHEMAS):
        op.execute(f"DROP SCHEMA IF EXISTS {schema}")
