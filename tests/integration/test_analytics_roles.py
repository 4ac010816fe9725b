"""Privacy in Postgres itself (migration 0003): a LOGIN member of dm_analyst is refused dm_private but
reads every view (views run with their owner's privileges) and the audit; role creation never fails a
migration; the downgrade revokes what the upgrade granted and leaves the cluster-wide roles alone."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from types import ModuleType

import psycopg
import pytest
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from dm_pipeline.db.migrate import downgrade, upgrade
from dm_pipeline.settings import PROJECT_ROOT

VIEWS = {"messages", "conversations", "daily_volume", "sync_health"}
ROW = ("INSERT INTO dm_private.dm_history (account_key, message_id, provider, stream_key, conversation_id, "
       "event_type, sender_id, created_at, text, raw, content_hash, first_seen_run_id, last_changed_run_id) "
       "VALUES ('a', '1', 'x', 'dm_events', '1-2', 'MessageCreate', '1', now(), 'private words', '{}', 'h', "
       "'r', 'r')")


def _migration() -> ModuleType:
    path = PROJECT_ROOT / "migrations" / "versions" / "0003_analytics_and_roles.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _admin(pg_server: URL) -> Engine:
    return create_engine(pg_server.set(database="postgres"), isolation_level="AUTOCOMMIT")


@pytest.fixture
def login_role(pg_server: URL) -> Iterator[str]:
    """A unique LOGIN role (roles are cluster-wide: never reuse a name), dropped afterwards."""
    name = f"dm_test_login_{uuid.uuid4().hex[:10]}"
    admin = _admin(pg_server)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {name} LOGIN NOCREATEROLE NOSUPERUSER"))
    yield name
    with admin.connect() as conn:
        conn.execute(text(f"DROP ROLE IF EXISTS {name}"))
    admin.dispose()


@pytest.fixture
def analyst(pg_server: URL, login_role: str) -> str:
    with _admin(pg_server).connect() as conn:
        conn.execute(text(f"GRANT dm_analyst TO {login_role}"))
    return login_role


def _as(db_url: str, role: str) -> Engine:
    return create_engine(make_url(db_url).set(username=role), poolclass=NullPool)


def _refused(engine: Engine, sql: str) -> str:
    with engine.connect() as conn, pytest.raises(ProgrammingError) as info:
        conn.execute(text(sql))
    assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), sql
    return str(info.value.orig)


def test_an_analyst_is_refused_dm_private_but_reads_every_view_and_the_audit(engine: Engine, db_url: str,
                                                                               analyst: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(ROW))
        conn.execute(text("INSERT INTO dm_private.sync_state (account_key, stream_key, provider, endpoint, "
                          "last_status) VALUES ('a', 'dm_events', 'x', '/2/dm_events', 'succeeded')"))
        conn.execute(text("INSERT INTO dm_audit.dm_sync_audit (run_id, account_key, provider, stream_key, row_kind, "
                          "job_status, started_at) VALUES ('r', 'a', 'x', 'dm_events', 'job', 'succeeded', now())"))
    as_analyst = _as(db_url, analyst)
    assert "permission denied" in _refused(as_analyst, "SELECT text FROM dm_private.dm_history")
    for sql in ("SELECT * FROM dm_private.sync_state", "SELECT * FROM dm_private.oauth_tokens",
                "SELECT raw FROM dm_private.dm_users", "INSERT INTO dm_audit.dm_erasures (run_id, account_key, "
                "history_rows, conversation_rows, conversation_event_rows, token_rows, sync_state_rows, "
                "audit_rows_redacted) VALUES ('r', 'a', 0, 0, 0, 0, 0, 0)", "DELETE FROM dm_audit.dm_sync_audit",
                "CREATE VIEW dm_analytics.mine AS SELECT 1"):
        _refused(as_analyst, sql)
    with as_analyst.connect() as conn:
        # sync_health reads dm_private.sync_state, refused just above: the view runs as its owner.
        counts = {v: conn.scalar(text(f"SELECT count(*) FROM dm_analytics.{v}")) for v in VIEWS}
        assert counts == dict.fromkeys(VIEWS, 1)
        assert conn.scalar(text("SELECT text_length FROM dm_analytics.messages")) == len("private words")
        assert conn.scalar(text("SELECT count(*) FROM dm_audit.dm_sync_audit")) == 1
        assert conn.scalar(text("SELECT count(*) FROM dm_audit.dm_erasures")) == 0
    as_analyst.dispose()


def test_views_run_as_their_owner_and_expose_no_private_column(engine: Engine) -> None:
    with engine.connect() as conn:
        # security_invoker would make views check dm_private against the analyst: refused, by design not.
        options = conn.execute(text("SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n "
                                    "ON n.oid = c.relnamespace WHERE n.nspname = 'dm_analytics'")).all()
        columns = set(conn.scalars(text("SELECT column_name FROM information_schema.columns "
                                        "WHERE table_schema = 'dm_analytics'")))
    assert {name for name, _ in options} == VIEWS
    assert all(not opts or "security_invoker=true" not in opts for _, opts in options)
    assert {"message_id", "text_length", "lag", "gap_suspected"} <= columns
    assert not {"text", "raw", "pass_cursor", "access_token_enc", "refresh_token_enc", "referenced_tweets"} & columns


def test_a_view_added_later_is_readable_by_analysts(engine: Engine, db_url: str, analyst: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW dm_analytics.later AS SELECT count(*) AS n FROM dm_private.dm_history"))
    as_analyst = _as(db_url, analyst)
    with as_analyst.connect() as conn:
        assert conn.scalar(text("SELECT n FROM dm_analytics.later")) == 0  # default privileges at work
    as_analyst.dispose()


def test_the_loader_role_may_write_private_tables_and_the_audit(engine: Engine) -> None:
    checks = {("dm_private.dm_history", "INSERT"), ("dm_private.dm_history", "DELETE"),
              ("dm_private.oauth_tokens", "UPDATE"), ("dm_audit.dm_sync_audit", "INSERT"),
              ("dm_audit.dm_erasures", "INSERT")}
    with engine.connect() as conn:
        granted = {(t, p) for t, p in checks
                   if conn.scalar(text("SELECT has_table_privilege('dm_loader', :t, :p)"), {"t": t, "p": p})}
        audit_delete = conn.scalar(text("SELECT has_table_privilege('dm_loader', 'dm_audit.dm_sync_audit', 'DELETE')"))
        analyst_private = conn.scalar(text("SELECT has_schema_privilege('dm_analyst', 'dm_private', 'USAGE')"))
    assert granted == checks
    assert not audit_delete and not analyst_private  # the audit is append-and-redact; analysts never private


def test_role_creation_is_skipped_without_createrole_and_is_idempotent_with_it(pg_server: URL,
                                                                               login_role: str) -> None:
    m = _migration()
    missing = f"dm_test_missing_{uuid.uuid4().hex[:10]}"
    plain = create_engine(pg_server.set(database="postgres", username=login_role), poolclass=NullPool)
    with plain.connect() as conn:
        conn.execute(text(m.ensure_role_sql(missing)))  # no CREATEROLE: a notice, no error
        conn.execute(text(m.if_role_exists_sql(missing, ["GRANT USAGE ON SCHEMA public TO {role}"])))
        conn.commit()
    plain.dispose()
    admin = _admin(pg_server)
    with admin.connect() as conn:
        assert not conn.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": missing})
        conn.execute(text(m.ensure_role_sql(missing)))
        conn.execute(text(m.ensure_role_sql(missing)))  # again: already there, nothing to do
        row = conn.execute(text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": missing}).all()
        conn.execute(text(f"DROP ROLE {missing}"))
    admin.dispose()
    assert row == [(False,)]  # created once, NOLOGIN


def test_a_user_without_createrole_can_migrate_its_own_database(pg_server: URL, login_role: str) -> None:
    name = f"dm_test_owned_{uuid.uuid4().hex[:10]}"
    admin = _admin(pg_server)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER {login_role}'))
    try:
        url = pg_server.set(database=name, username=login_role)
        upgrade(url.render_as_string(hide_password=False))
        eng = create_engine(url, poolclass=NullPool)
        with eng.connect() as conn:
            # The roles exist (the cluster has them): the grants were made, by the database's owner.
            assert conn.scalar(text("SELECT has_table_privilege('dm_analyst', 'dm_analytics.messages', 'SELECT')"))
            assert not conn.scalar(text("SELECT has_table_privilege('dm_analyst', 'dm_private.dm_history', "
                                        "'SELECT')"))
        eng.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_downgrade_revokes_its_grants_and_keeps_the_roles(engine: Engine, db_url: str) -> None:
    privileges = text("""
        SELECT has_schema_privilege('dm_analyst', 'dm_audit', 'USAGE'),
               has_table_privilege('dm_analyst', 'dm_audit.dm_sync_audit', 'SELECT'),
               has_table_privilege('dm_loader', 'dm_private.dm_history', 'INSERT'),
               (SELECT count(*) FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
                 WHERE n.nspname IN ('dm_audit', 'dm_private', 'dm_analytics'))""")
    with engine.connect() as conn:
        assert tuple(conn.execute(privileges).one()) == (True, True, True, 4)
    engine.dispose()
    downgrade(db_url, "0002")
    with engine.connect() as conn:
        assert tuple(conn.execute(privileges).one()) == (False, False, False, 0)
        assert conn.scalar(text("SELECT count(*) FROM pg_namespace WHERE nspname = 'dm_analytics'")) == 0
        assert conn.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname IN ('dm_analyst', 'dm_loader')")) == 2
    engine.dispose()
    upgrade(db_url)
    with engine.connect() as conn:
        assert tuple(conn.execute(privileges).one()) == (True, True, True, 4)
