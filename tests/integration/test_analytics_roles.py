"""Privacy in Postgres itself (migrations 0003 and 0006): a LOGIN member of dm_analyst is refused dm_private
but reads every view (views run with their owner's privileges) and the audit; a relation added later is
readable only once granted by name; no relation an analyst may read depends on a private column outside a
reviewed list, and no function an analyst may run is SECURITY DEFINER over dm_private; role creation never
fails a migration; the downgrades revoke what the upgrades granted and leave the cluster-wide roles alone."""

from __future__ import annotations

import importlib.util
import json
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


# Default-privilege grants (entry x privilege) to dm_analyst in this database, for any creating role.
ANALYST_DEFAULTS = ("SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a "
                    "WHERE a.grantee = 'dm_analyst'::regrole")


def _migration(name: str = "0003_analytics_and_roles") -> ModuleType:
    path = PROJECT_ROOT / "migrations" / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"migration_{name[:4]}", path)
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


def test_views_run_as_their_owner(engine: Engine) -> None:
    with engine.connect() as conn:
        # security_invoker would make views check dm_private against the analyst: refused, by design not.
        options = conn.execute(text("SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n "
                                    "ON n.oid = c.relnamespace WHERE n.nspname = 'dm_analytics'")).all()
    assert {name for name, _ in options} == VIEWS
    assert all(not opts or "security_invoker=true" not in opts for _, opts in options)


# ------------------------------------------------------------------------- what analysts may reach
# The dm_private columns whose values may reach an analyst as they are: IDs (accounts, streams, messages,
# conversations, users; high_water_id is a message ID), timestamps, counts, statuses, the provider's
# endpoint path and whether an event was sanitized. Nothing a person wrote or a provider sent whole.
ALLOWED: dict[str, frozenset[str]] = {
    "dm_history": frozenset({
        "account_key", "message_id", "provider", "stream_key", "conversation_id", "event_type", "sender_id",
        "recipient_id", "participant_ids", "created_at", "reply_to_message_id", "edit_count", "sanitized",
        "first_seen_at", "last_changed_at", "deleted_upstream_at"}),
    "sync_state": frozenset({
        "account_key", "stream_key", "provider", "endpoint", "high_water_id", "pass_started_at", "pass_pages",
        "pass_sweep", "last_success_at", "last_status", "last_error_code", "updated_at"}),
}
# Private columns a reviewed relation may read to derive something from, never to return: the text only
# through char_length (messages.text_length, daily_volume.text_chars), the media only as presence, count and
# the items' URLs (has_media, media_urls, with_media). Any other relation reading them fails the test, and
# test_private_canaries_never_reach_an_analyst proves these three return no text and no media object.
DERIVED_ONLY: dict[tuple[str, str], frozenset[str]] = {
    ("dm_history", "text"): frozenset({"dm_analytics.messages", "dm_analytics.daily_volume"}),
    ("dm_history", "media"): frozenset({"dm_analytics.messages", "dm_analytics.conversations",
                                        "dm_analytics.daily_volume"}),
}
NEVER = {("dm_history", c) for c in ("text", "raw", "media", "referenced_tweets")}  # the brief's minimum
assert not NEVER & {("dm_history", c) for c in ALLOWED["dm_history"]}

# For every relation dm_analyst may SELECT from (any schema; table-level or column-level), walk the rewrite
# rules of views and materialized views: pg_depend rows of a rule (classid pg_rewrite) name each column it
# reads (refobjid = relation, refobjsubid = attnum; 0 = the relation as a whole, e.g. count(*)). The walk
# goes on through every view the analyst may not read itself, whatever its schema; it stops at a relation
# the analyst may read whole, which is checked as a root of its own (a view over it gets only its output).
# A whole-row reference (`to_jsonb(h)`, `SELECT h`) records no column dependency at all: a rule over
# dm_private whose query tree holds a whole-row Var (varattno 0) is reported as column '*'.
PRIVATE_DEPENDENCIES = """
WITH RECURSIVE walk(root, rel) AS (
    SELECT c.oid, c.oid FROM pg_class c
    WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
      AND (has_table_privilege(:role, c.oid, 'SELECT') OR has_any_column_privilege(:role, c.oid, 'SELECT'))
    UNION
    SELECT w.root, d.refobjid
    FROM walk w
    JOIN pg_rewrite r ON r.ev_class = w.rel
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> w.rel
    WHERE w.rel = w.root OR NOT has_table_privilege(:role, w.rel, 'SELECT')
)
SELECT DISTINCT w.root::regclass::text, t.relname, a.attname, r.ev_action::text ~ '\\:varattno 0 '
FROM walk w
JOIN pg_rewrite r ON r.ev_class = w.rel
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass
JOIN pg_class t ON t.oid = d.refobjid AND t.relnamespace = 'dm_private'::regnamespace
LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid AND d.refobjsubid > 0
WHERE w.rel = w.root OR NOT has_table_privilege(:role, w.rel, 'SELECT')"""

# SECURITY DEFINER functions dm_analyst may execute (directly, or inside a view: a view's functions are
# checked against its caller) and that run as a role with access to dm_private, or that depend on it.
DEFINER_FUNCTIONS = """
SELECT p.oid::regprocedure::text
FROM pg_proc p
WHERE p.prosecdef AND has_function_privilege(:role, p.oid, 'EXECUTE')
  AND (has_schema_privilege(p.proowner, 'dm_private', 'USAGE')
       OR EXISTS (SELECT FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                    AND d.refclassid = 'pg_class'::regclass AND t.relnamespace = 'dm_private'::regnamespace))"""


def _private_dependencies(engine: Engine) -> dict[str, set[tuple[str, str | None]]]:
    """{analyst-readable relation: {(dm_private table, column or None for the whole relation or '*')}}."""
    found: dict[str, set[tuple[str, str | None]]] = {}
    with engine.connect() as conn:
        for root, table, column, whole_row in conn.execute(text(PRIVATE_DEPENDENCIES), {"role": "dm_analyst"}):
            found.setdefault(root, set()).add((table, column))
            if whole_row:
                found[root].add((table, "*"))
    return found


def _violations(found: dict[str, set[tuple[str, str | None]]]) -> set[tuple[str, str, str]]:
    return {(root, table, column) for root, deps in found.items() for table, column in deps
            if column is not None and column not in ALLOWED.get(table, ())
            and root not in DERIVED_ONLY.get((table, column), ())}


def _analyst_relations(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(text(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
            "AND has_any_column_privilege('dm_analyst', c.oid, 'SELECT')")))


def _granted_by_name() -> set[str]:
    """0006's list, and what later migrations granted by name (0009: the audit's monthly roll-ups)."""
    return (set(_migration("0006_explicit_analyst_grants").ANALYST_RELATIONS)
            | set(_migration("0009_audit_partitioned_by_month").ANALYST_RELATIONS))


def test_analysts_read_exactly_the_relations_granted_by_name(engine: Engine) -> None:
    assert _analyst_relations(engine) == _granted_by_name()
    with engine.connect() as conn:
        private_columns = conn.scalar(text(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relnamespace = 'dm_private'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped "
            "AND has_column_privilege('dm_analyst', c.oid, a.attnum, 'SELECT')"))
    assert private_columns == 0  # not one column of dm_private, directly


def test_no_analyst_readable_relation_depends_on_a_private_column_outside_the_reviewed_list(
        engine: Engine) -> None:
    found = _private_dependencies(engine)
    assert _violations(found) == set()
    # The walk sees what the views really read (so the check above is not vacuous) ...
    assert set(found) == {f"dm_analytics.{v}" for v in VIEWS}
    assert ("dm_history", "text") in found["dm_analytics.daily_volume"]
    assert ("sync_state", "pass_started_at") in found["dm_analytics.sync_health"]
    # ... and none of them reads raw, referenced_tweets, a cursor or a token, even to derive something.
    exposed = {dep for deps in found.values() for dep in deps}
    assert not exposed & (NEVER - set(DERIVED_ONLY))
    assert not {t for t, _ in exposed} - {"dm_history", "sync_state"}


def test_the_dependency_walk_catches_leaks_through_views_and_whole_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        for sql in (
            # A helper the analyst cannot read, in a schema it cannot use: reached through the view over it.
            "CREATE SCHEMA dm_scratch",
            "CREATE VIEW dm_scratch.helper AS SELECT message_id, referenced_tweets FROM dm_private.dm_history",
            "CREATE VIEW dm_analytics.leak_nested AS SELECT message_id, referenced_tweets::text AS r "
            "FROM dm_scratch.helper",
            "CREATE VIEW dm_analytics.leak_row AS SELECT h.message_id, to_jsonb(h) AS j FROM dm_private.dm_history h",
            "CREATE VIEW dm_analytics.snippet AS SELECT message_id, left(text, 20) AS s FROM dm_private.dm_history",
            "CREATE MATERIALIZED VIEW dm_analytics.raw_copy AS SELECT raw FROM dm_private.dm_history",
            "CREATE VIEW dm_analytics.ungranted AS SELECT raw FROM dm_private.dm_history",
            # Fine: only what messages returns, and a count.
            "CREATE VIEW dm_analytics.over_messages AS SELECT message_id, text_length FROM dm_analytics.messages",
            "CREATE VIEW dm_analytics.row_count AS SELECT count(*) AS n FROM dm_private.oauth_tokens",
            "GRANT SELECT ON dm_analytics.leak_nested, dm_analytics.leak_row, dm_analytics.snippet, "
            "dm_analytics.raw_copy, dm_analytics.over_messages, dm_analytics.row_count TO dm_analyst",
        ):
            conn.execute(text(sql))
    found = _private_dependencies(engine)
    assert _violations(found) == {
        ("dm_analytics.leak_nested", "dm_history", "referenced_tweets"),
        ("dm_analytics.leak_row", "dm_history", "*"),
        ("dm_analytics.snippet", "dm_history", "text"),
        ("dm_analytics.raw_copy", "dm_history", "raw"),
    }
    assert "dm_analytics.ungranted" not in found and "dm_analytics.over_messages" not in found
    assert found["dm_analytics.row_count"] == {("oauth_tokens", None)}


def test_no_function_an_analyst_may_execute_is_security_definer_over_dm_private(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.scalars(text(DEFINER_FUNCTIONS), {"role": "dm_analyst"}).all() == []
    with engine.begin() as conn:  # the check finds one (EXECUTE is PUBLIC's by default) ...
        conn.execute(text("CREATE FUNCTION public.peek() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
                          "AS 'SELECT count(*) FROM dm_private.dm_history'"))
    with engine.connect() as conn:
        assert conn.scalars(text(DEFINER_FUNCTIONS), {"role": "dm_analyst"}).all() == ["peek()"]
    with engine.begin() as conn:  # ... and not once analysts may not run it
        conn.execute(text("REVOKE EXECUTE ON FUNCTION public.peek() FROM PUBLIC"))
    with engine.connect() as conn:
        assert conn.scalars(text(DEFINER_FUNCTIONS), {"role": "dm_analyst"}).all() == []


def test_private_canaries_never_reach_an_analyst(engine: Engine, db_url: str, analyst: str) -> None:
    """The reviewed relations that read the text or the media return neither: every row of every relation an
    analyst may read, as text, holds none of the markers put into private columns."""
    marks = {c: f"{c.upper()}{uuid.uuid4().hex[:12]}" for c in ("text", "raw", "media", "refs", "cursor")}
    media = [{"url": "https://media.example/1.jpg", "alt_text": marks["media"], "media_key": marks["media"]}]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO dm_private.dm_history (account_key, message_id, provider, stream_key, conversation_id, "
            "event_type, sender_id, created_at, text, media, referenced_tweets, raw, content_hash, "
            "first_seen_run_id, last_changed_run_id) VALUES ('a', '1', 'x', 'dm_events', '1-2', 'MessageCreate', "
            "'1', now(), :t, CAST(:m AS jsonb), CAST(:rt AS jsonb), CAST(:raw AS jsonb), 'h', 'r', 'r')"),
            {"t": f"hello {marks['text']}", "m": json.dumps(media), "rt": json.dumps([{"id": marks["refs"]}]),
             "raw": json.dumps({"text": marks["raw"]})})
        conn.execute(text("INSERT INTO dm_private.sync_state (account_key, stream_key, provider, endpoint, "
                          "last_status, pass_started_at, pass_cursor) VALUES ('a', 'dm_events', 'x', "
                          "'/2/dm_events', 'running', now(), :c)"), {"c": marks["cursor"]})
    as_analyst = _as(db_url, analyst)
    with as_analyst.connect() as conn:
        seen = {rel: conn.scalar(text(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {rel} AS t"))
                for rel in _analyst_relations(engine)}
        media_urls, text_length = conn.execute(text(
            "SELECT media_urls, text_length FROM dm_analytics.messages")).one()
    as_analyst.dispose()
    assert all(seen[f"dm_analytics.{v}"] for v in VIEWS)  # every view returned its row
    assert {(rel, c) for rel, blob in seen.items() for c, mark in marks.items() if mark in blob} == set()
    assert (media_urls, text_length) == (["https://media.example/1.jpg"], len(f"hello {marks['text']}"))


def test_a_view_or_audit_table_added_later_is_refused_until_granted_by_name(engine: Engine, db_url: str,
                                                                             analyst: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW dm_analytics.later AS SELECT count(*) AS n FROM dm_private.dm_history"))
        conn.execute(text("CREATE TABLE dm_audit.later (n int)"))
        defaults = conn.scalar(text(ANALYST_DEFAULTS))
    assert defaults == 0  # no default privilege for analysts anywhere
    as_analyst = _as(db_url, analyst)
    assert "permission denied" in _refused(as_analyst, "SELECT n FROM dm_analytics.later")
    _refused(as_analyst, "SELECT n FROM dm_audit.later")
    with engine.begin() as conn:
        conn.execute(text("GRANT SELECT ON dm_analytics.later, dm_audit.later TO dm_analyst"))
    with as_analyst.connect() as conn:
        assert conn.scalar(text("SELECT n FROM dm_analytics.later")) == 0
        assert conn.scalar(text("SELECT count(*) FROM dm_audit.later")) == 0
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
        m6 = _migration("0006_explicit_analyst_grants")  # 0006's statements skip a missing role too
        conn.execute(text(m6.if_role_exists_sql(missing, m6.GRANTS + m6.RESTORE)))
        conn.execute(text(m6.revoke_default_privileges_sql(missing)))
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
            # 0003 set default privileges for the owner, 0006 (run by the same owner) took them back.
            assert conn.scalar(text(ANALYST_DEFAULTS)) == 0
            assert conn.scalar(text("SELECT count(*) FROM pg_default_acl")) == 3  # dm_loader's
        eng.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


PRIVILEGES = """
    SELECT has_schema_privilege('dm_analyst', 'dm_audit', 'USAGE'),
           has_table_privilege('dm_analyst', 'dm_audit.dm_sync_audit', 'SELECT'),
           has_table_privilege('dm_loader', 'dm_private.dm_history', 'INSERT'),
           (SELECT count(*) FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
             WHERE n.nspname IN ('dm_audit', 'dm_private', 'dm_analytics')),
           (""" + ANALYST_DEFAULTS + ")"


def test_downgrade_revokes_its_grants_and_keeps_the_roles(engine: Engine, db_url: str) -> None:
    # At head: dm_loader's three default-privilege entries; none for dm_analyst (0006).
    with engine.connect() as conn:
        assert tuple(conn.execute(text(PRIVILEGES)).one()) == (True, True, True, 3, 0)
    engine.dispose()
    downgrade(db_url, "0002")
    with engine.connect() as conn:
        assert tuple(conn.execute(text(PRIVILEGES)).one()) == (False, False, False, 0, 0)
        assert conn.scalar(text("SELECT count(*) FROM pg_namespace WHERE nspname = 'dm_analytics'")) == 0
        assert conn.scalar(text("SELECT count(*) FROM pg_roles WHERE rolname IN ('dm_analyst', 'dm_loader')")) == 2
    engine.dispose()
    upgrade(db_url)
    with engine.connect() as conn:
        assert tuple(conn.execute(text(PRIVILEGES)).one()) == (True, True, True, 3, 0)


def test_downgrading_0006_restores_the_default_privileges_of_0003(engine: Engine, db_url: str) -> None:
    later = "CREATE VIEW dm_analytics.later AS SELECT 1 AS n"
    readable = text("SELECT has_table_privilege('dm_analyst', 'dm_analytics.later', 'SELECT')")
    downgrade(db_url, "0005")
    with engine.begin() as conn:
        assert tuple(conn.execute(text(PRIVILEGES)).one()) == (True, True, True, 4, 2)
        assert conn.scalar(text("SELECT has_table_privilege('dm_analyst', 'dm_analytics.messages', 'SELECT')"))
        conn.execute(text(later))
        assert conn.scalar(readable)  # 0003's behaviour: granted on creation
        conn.execute(text("DROP VIEW dm_analytics.later"))
    engine.dispose()
    upgrade(db_url)
    with engine.begin() as conn:
        assert tuple(conn.execute(text(PRIVILEGES)).one()) == (True, True, True, 3, 0)
        conn.execute(text(later))
        assert not conn.scalar(readable)
    assert _analyst_relations(engine) == _granted_by_name()


def test_0006_revokes_analyst_default_privileges_of_every_creator_it_may_act_for(
        login_role: str, engine: Engine, db_url: str) -> None:  # login_role first: dropped after the database
    """ALTER DEFAULT PRIVILEGES is per creating role: the entries of another owner go too; an entry the
    migrating user may not change is left with a WARNING, never an error."""
    m6 = _migration("0006_explicit_analyst_grants")
    with engine.begin() as conn:
        conn.execute(text("ALTER DEFAULT PRIVILEGES IN SCHEMA dm_analytics GRANT SELECT ON TABLES TO dm_analyst"))
        conn.execute(text(f"ALTER DEFAULT PRIVILEGES FOR ROLE {login_role} IN SCHEMA dm_audit "
                          "GRANT SELECT, INSERT ON TABLES TO dm_analyst"))
        assert conn.scalar(text(ANALYST_DEFAULTS)) == 3  # SELECT; SELECT and INSERT
    plain = _as(db_url, login_role)  # acts for itself only
    warnings: list[str] = []
    with plain.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        raw.add_notice_handler(lambda d: warnings.append(f"{d.severity_nonlocalized}: {d.message_primary}"))
        conn.execute(text(m6.revoke_default_privileges_sql("dm_analyst")))
        conn.commit()
    plain.dispose()
    with engine.begin() as conn:
        assert conn.scalar(text(ANALYST_DEFAULTS)) == 1  # its own went; the superuser's stayed
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: dm_pipeline:") and "dm_analytics" in warnings[0]
    with engine.begin() as conn:
        conn.execute(text(f"ALTER DEFAULT PRIVILEGES FOR ROLE {login_role} IN SCHEMA dm_audit "
                          "GRANT SELECT ON TABLES TO dm_analyst"))
        conn.execute(text(m6.revoke_default_privileges_sql("dm_analyst")))  # a superuser acts for anyone
        assert conn.scalar(text(ANALYST_DEFAULTS)) == 0
