"""Quarantine for events that cannot be normalized; quality flags on stored rows; audit count.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dm_quarantine',
    sa.Column('quarantine_id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('stream_key', sa.Text(), nullable=False),
    sa.Column('provider_event_id', sa.Text(), nullable=True),
    sa.Column('error_code', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sa.Text(), nullable=False),
    sa.Column('first_seen_run_id', sa.Text(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('quarantine_id', name=op.f('pk_dm_quarantine')),
    sa.UniqueConstraint('account_key', 'stream_key', 'content_hash', name=op.f('uq_dm_quarantine_account_key_stream_key_content_hash')),
    schema='dm_private'
    )
    op.add_column('dm_sync_audit', sa.Column('events_quarantined', sa.Integer(), server_default=sa.text('0'), nullable=False), schema='dm_audit')
    op.add_column('dm_erasures', sa.Column('quarantine_rows', sa.Integer(), server_default=sa.text('0'), nullable=False), schema='dm_audit')
    op.add_column('dm_history', sa.Column('flags', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False), schema='dm_private')


def downgrade() -> None:
    op.drop_column('dm_history', 'flags', schema='dm_private')
    op.drop_column('dm_erasures', 'quarantine_rows', schema='dm_audit')
    op.drop_column('dm_sync_audit', 'events_quarantined', schema='dm_audit')
    op.drop_table('dm_quarantine', schema='dm_private')
