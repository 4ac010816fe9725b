"""The account as the unit of cost, rate limit and failure (issue 12).

- `dm_private.account_state`: one rate-limit state per account, shared by its streams and by concurrent
  processes (the last `x-rate-limit-*` headers, and until when the account is known to be limited).
- `sync_state`: `history_complete` (a pass reached the start of the stream: an X conversation stream may
  then go dormant while the inbox vouches for it), `covered_at` (start of the last successful pass: every
  event created before it was seen), `empty_polls`/`next_poll_at` (billed providers back off when idle).
- `oauth_tokens.refresh_rejected_at`: a refused refresh token is never posted again.
- `dm_sync_audit`: `cost` (X: requests, Xquik: credits, GetXAPI: calls), `partial_errors` (entries of a
  200 response's `errors` array that came with data), `retry_at` (when a parked account is tried again).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('account_state',
    sa.Column('account_key', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('rl_limit', sa.Integer(), nullable=True),
    sa.Column('rl_remaining', sa.Integer(), nullable=True),
    sa.Column('rl_reset_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('limited_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('account_key', name=op.f('pk_account_state')),
    schema='dm_private'
    )
    op.add_column('sync_state', sa.Column('history_complete', sa.Boolean(), server_default=sa.text('false'), nullable=False), schema='dm_private')
    op.add_column('sync_state', sa.Column('covered_at', sa.DateTime(timezone=True), nullable=True), schema='dm_private')
    op.add_column('sync_state', sa.Column('empty_polls', sa.Integer(), server_default=sa.text('0'), nullable=False), schema='dm_private')
    op.add_column('sync_state', sa.Column('next_poll_at', sa.DateTime(timezone=True), nullable=True), schema='dm_private')
    op.add_column('sync_state', sa.Column('pass_stale_runs', sa.Integer(), server_default=sa.text('0'), nullable=False), schema='dm_private')
    # Streams that already closed a pass have walked their whole history once.
    op.execute("UPDATE dm_private.sync_state SET history_complete = true "
               "WHERE high_water_id IS NOT NULL OR last_success_at IS NOT NULL")
    op.add_column('oauth_tokens', sa.Column('refresh_rejected_at', sa.DateTime(timezone=True), nullable=True), schema='dm_private')
    op.add_column('dm_sync_audit', sa.Column('cost', sa.Integer(), server_default=sa.text('0'), nullable=False), schema='dm_audit')
    op.add_column('dm_sync_audit', sa.Column('partial_errors', sa.Integer(), server_default=sa.text('0'), nullable=False), schema='dm_audit')
    op.add_column('dm_sync_audit', sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True), schema='dm_audit')


def downgrade() -> None:
    op.drop_column('dm_sync_audit', 'retry_at', schema='dm_audit')
    op.drop_column('dm_sync_audit', 'partial_errors', schema='dm_audit')
    op.drop_column('dm_sync_audit', 'cost', schema='dm_audit')
    op.drop_column('oauth_tokens', 'refresh_rejected_at', schema='dm_private')
    op.drop_column('sync_state', 'pass_stale_runs', schema='dm_private')
    op.drop_column('sync_state', 'next_poll_at', schema='dm_private')
    op.drop_column('sync_state', 'empty_polls', schema='dm_private')
    op.drop_column('sync_state', 'covered_at', schema='dm_private')
    op.drop_column('sync_state', 'history_complete', schema='dm_private')
    op.drop_table('account_state', schema='dm_private')
