"""Analysts read only what was granted to them by name (issue 17): no default privileges for dm_analyst.

Migration 0003 gave `dm_analyst` default privileges (SELECT on every table or view created later in
`dm_analytics` and `dm_audit`). A view runs with its owner's rights, so any view someone adds there — a
debugging view over `dm_private.dm_history.text`, say — would have been readable by every analyst the
moment it was created, with no review. From this revision on, a relation in either schema is readable by
analysts only after an explicit `GRANT SELECT ON <schema>.<name> TO dm_analyst` (docs/analyst.md).

- The four views of 0003 and the two audit tables are granted by name (they already were, through
  0003's `GRANT … ON ALL TABLES`; naming them here makes the list explicit and reviewable).
- The default privileges that give dm_analyst anything on tables in `dm_analytics` or `dm_audit` are
  revoked, for every role that holds such an entry and that the migrating user may act for (ALTER DEFAULT
  PRIVILEGES is per creating role: the owner who ran 0003 may not be the one running this). An entry we
  may not change is reported with a WARNING, never a failure. `dm_loader`'s default privileges in
  `dm_audit` are untouched: the pipeline must be able to write to audit tables added later, and writing
  is not the disclosure this migration closes.
- `dm_audit` is made explicit too: the audit is analyst-readable as a whole today, but a future audit
  table (cursors, raw provider errors) deserves the same review as a view.

As in 0003, every statement runs only if the role exists, so the migration never fails on a server where
roles could not be created. Views are not in the SQLAlchemy metadata and grants are not compared by
autogenerate: `alembic check` is unaffected.

Downgrade restores 0003's state: the default privileges come back (for the migrating user, as 0003 set
them); the named grants stay, since 0003 had granted those relations too.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ANALYST = "dm_analyst"
SCHEMAS = ("dm_analytics", "dm_audit")

# Everything dm_analyst may read, by name. A new view or audit table is added here (in a new migration)
# only after checking what it exposes.
ANALYST_RELATIONS = (
    "dm_analytics.messages",
    "dm_analytics.conversations",
    "dm_analytics.daily_volume",
    "dm_analytics.sync_health",
    "dm_audit.dm_sync_audit",
    "dm_audit.dm_erasures",
)

GRANTS = [f"GRANT SELECT ON {', '.join(ANALYST_RELATIONS)} TO {{role}}"]

# 0003's default privileges, restored on downgrade.
RESTORE = [f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {{role}}"
           for schema in ("dm_audit", "dm_analytics")]


def if_role_exists_sql(role: str, statements: list[str]) -> str:
    """As in 0003 (copied: a migration must not change when another one is edited)."""
    body = "\n".join(f"        EXECUTE {_literal(s.format(role=role))};" for s in statements)
    return f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
{body}
    END IF;
END
$$"""


def revoke_default_privileges_sql(role: str, schemas: Sequence[str] = SCHEMAS) -> str:
    """Revoke every default privilege on tables that `role` holds in `schemas`, whoever the creating role of
    the entry is, as far as the current user may act for it; a WARNING names any entry left in place."""
    names = ", ".join(_literal(s) for s in schemas)
    return f"""
DO $$
DECLARE
    entry record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        RETURN;
    END IF;
    FOR entry IN
        SELECT d.defaclrole::regrole::text AS creator, n.nspname AS schema
        FROM pg_default_acl AS d
        JOIN pg_namespace AS n ON n.oid = d.defaclnamespace
        WHERE n.nspname IN ({names})
          AND d.defaclobjtype = 'r'
          AND EXISTS (SELECT FROM aclexplode(d.defaclacl) AS a JOIN pg_roles AS g ON g.oid = a.grantee
                      WHERE g.rolname = '{role}')
    LOOP
        IF pg_has_role(current_user, entry.creator::regrole, 'USAGE') THEN
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA %I REVOKE ALL ON TABLES FROM {role}',
                           entry.creator, entry.schema);
        ELSE
            RAISE WARNING 'dm_pipeline: % may not alter the default privileges of %: tables it creates in % are still granted to {role}',
                current_user, entry.creator, entry.schema;
        END IF;
    END LOOP;
END
$$"""


def _literal(sql: str) -> str:
    return "'" + sql.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute(if_role_exists_sql(ANALYST, GRANTS))
    op.execute(revoke_default_privileges_sql(ANALYST))


def downgrade() -> None:
    op.execute(if_role_exists_sql(ANALYST, RESTORE))
