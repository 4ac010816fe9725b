"""Alembic owns the schema: upgrade, no drift, downgrade, upgrade again."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from dm_pipeline.db.audit_partitions import AUDIT_PARTITION, month_of, partition_name
from dm_pipeline.db.migrate import check, downgrade, upgrade
from dm_pipeline.db.writes import utcnow


def test_upgrade_check_downgrade_roundtrip(db_url: str) -> None:
    check(db_url)  # the test database was cloned from a template at head: no drift
    downgrade(db_url, "base")
    engine = create_engine(db_url)
    assert not {"dm_private", "dm_audit", "dm_analytics"} & set(inspect(engine).get_schema_names())
    upgrade(db_url)
    check(db_url)
    tables = {(s, t) for s in ("dm_private", "dm_audit") for t in inspect(engine).get_table_names(schema=s)}
    # The audit's monthly partitions (and its DEFAULT one) are created and dropped at run time, not modelled.
    partitions = {t for s, t in tables if AUDIT_PARTITION.fullmatch(t)}
    assert {"dm_sync_audit_default", partition_name(month_of(utcnow()))} <= partitions
    modelled = tables - {("dm_audit", t) for t in partitions}
    assert modelled == {("dm_private", "dm_history"), ("dm_private", "sync_state"),
                      ("dm_private", "oauth_tokens"), ("dm_private", "dm_users"), ("dm_private", "dm_quarantine"),
                      ("dm_private", "dm_conversations"), ("dm_private", "dm_conversation_events"),
                      ("dm_private", "account_state"),
                      ("dm_audit", "dm_sync_audit"), ("dm_audit", "dm_sync_audit_monthly"),
                      ("dm_audit", "dm_erasures")}
    assert set(inspect(engine).get_view_names(schema="dm_analytics")) == {
        "messages", "conversations", "daily_volume", "sync_health"}
    engine.dispose()
