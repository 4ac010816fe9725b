"""Users, GetXAPI conversations and conversation events; Xquik credits in the audit.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dm_conversation_events',
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('event_key', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('conversation_id', sa.Text(), nullable=True),
    sa.Column('event_type', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('first_seen_run_id', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('account_key', 'event_key', name=op.f('pk_dm_conversation_events')),
    schema='dm_private'
    )
    op.create_table('dm_conversations',
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('conversation_id', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('stream_key', sa.Text(), nullable=False),
    sa.Column('conversation_type', sa.Text(), nullable=True),
    sa.Column('participant_ids', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('account_key', 'conversation_id', name=op.f('pk_dm_conversations')),
    schema='dm_private'
    )
    op.create_table('dm_users',
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('username', sa.Text(), nullable=True),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'user_id', name=op.f('pk_dm_users')),
    schema='dm_private'
    )
    op.add_column('dm_sync_audit', sa.Column('credits', sa.Integer(), server_default=sa.text('0'), nullable=False), schema='dm_audit')


def downgrade() -> None:
    op.drop_column('dm_sync_audit', 'credits', schema='dm_audit')
    op.drop_table('dm_users', schema='dm_private')
    op.drop_table('dm_conversations', schema='dm_private')
    op.drop_table('dm_conversation_events', schema='dm_private')
