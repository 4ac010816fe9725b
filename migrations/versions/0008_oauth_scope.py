"""OAuth token lifecycle (issue 13): what `dm-pipeline oauth status` shows about a stored pair.

- `oauth_tokens.scope`: the scopes X granted (space-separated, as the token endpoint returns them).
- `oauth_tokens.authorized_at`: when `dm-pipeline accounts connect` stored the pair of a new authorization.
- `oauth_tokens.last_refreshed_at`: when the stored pair was last rotated by a refresh.

No token is added: the pair stays in the two encrypted columns.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('oauth_tokens', sa.Column('scope', sa.Text(), nullable=True), schema='dm_private')
    op.add_column('oauth_tokens', sa.Column('authorized_at', sa.DateTime(timezone=True), nullable=True),
                  schema='dm_private')
    op.add_column('oauth_tokens', sa.Column('last_refreshed_at', sa.DateTime(timezone=True), nullable=True),
                  schema='dm_private')


def downgrade() -> None:
    op.drop_column('oauth_tokens', 'last_refreshed_at', schema='dm_private')
    op.drop_column('oauth_tokens', 'authorized_at', schema='dm_private')
    op.drop_column('oauth_tokens', 'scope', schema='dm_private')
