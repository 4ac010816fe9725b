"""The event log storage of dagster.yaml: dagster-postgres's, with a run's planned materializations written in
one INSERT instead of one storage call each.

Creating a run over a range of N account partitions logs 2 N `ASSET_MATERIALIZATION_PLANNED` events (one per
partition and asset: the UI's in-progress and failed partitions are read from them). Dagster hands them over
as one batch (DAGSTER_EVENT_BATCH_SIZE), but dagster-postgres batches only materializations and
observations and stores every other event by itself, each on two fresh connections (its engine has no pool):
15-17 ms per account on this machine, in the process that creates the run (the daemon, for schedule,
sensor and backfill runs), 150 s of a 10,000-account tick. Here the planned materializations of a batch go
in one INSERT, with the asset table updated once per asset from the last of them, as dagster-postgres does
for a batch of materializations: the same rows, per partition, and the same asset records. Any other
event, or a Dagster whose storage lacks these internals, takes dagster-postgres's own path.

Every Dagster process that loads dagster.yaml (webserver, daemon, code server, run workers) imports this
module, so it imports nothing of the project beyond Dagster's own packages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dagster import DagsterEventType, EventLogEntry
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

PLANNED = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
# A pooled connection is recycled after this long (a server restart or a dropped connection is caught sooner,
# by the ping at checkout).
POOL_RECYCLE_S = 1800


class BatchedPlansEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage`, configured the same way (`postgres_url`, …)."""

    # dagster-postgres's engine has no pool: every storage call connects anew, and a Postgres connection is a
    # server process forked and authenticated, ~2 ms. The sensor daemon asks `has_dynamic_partition` once
    # per key a sensor adds (10,000 connections, 30-40 s of the first tick at 10,000 accounts) and a run
    # stores its events one connection each. This engine keeps one connection and opens more while calls
    # overlap (unbounded, as without a pool; those are closed when returned), pinged at checkout. An
    # instance's `dispose` (Dagster disposes every instance it builds) closes it.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine = create_pg_engine(self.postgres_url, self._token_provider, isolation_level="AUTOCOMMIT",
                                        pool_size=1, max_overflow=-1, pool_pre_ping=True,
                                        pool_recycle=POOL_RECYCLE_S)

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,
                          config_value: Mapping[str, Any]) -> BatchedPlansEventLogStorage:
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))

    # Dagster asks whether a table (or an asset-table column) exists before every dynamic-partition read and
    # many event writes, each time on a fresh connection with catalog queries: ~40 per run. What exists stays
    # (only positive answers are kept, so a migration run meanwhile is still seen).
    def has_table(self, table_name: str) -> bool:
        known: set[str] = self.__dict__.setdefault("_dm_tables", set())
        if table_name not in known and super().has_table(table_name):
            known.add(table_name)
        return table_name in known

    def has_asset_key_col(self, column_name: str) -> bool:
        known: set[str] = self.__dict__.setdefault("_dm_asset_key_cols", set())
        if column_name not in known and super().has_asset_key_col(column_name):
            known.add(column_name)
        return column_name in known

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        planned = [e for e in events if e.dagster_event is not None and e.dagster_event.event_type == PLANNED
                   and e.dagster_event.asset_key is not None]
        if len(planned) < 2 or not _has_internals(self):
            super().store_event_batch(events)
            return
        with self._connect() as conn:
            result = conn.execute(self.prepare_insert_event_batch(planned).returning(_event_id_column()))
            ids = [int(row[0]) for row in result.fetchall()]
        last: dict[Any, tuple[EventLogEntry, int]] = {}
        for event, event_id in zip(planned, ids, strict=True):  # RETURNING follows the VALUES order
            last[event.get_dagster_event().asset_key] = (event, event_id)
        with self.index_transaction() as conn:
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)
        batched = {id(e) for e in planned}
        rest = [e for e in events if id(e) not in batched]
        if rest:
            super().store_event_batch(rest)


def _event_id_column() -> Any:
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

    return SqlEventLogStorageTable.c.id


def _has_internals(storage: PostgresEventLogStorage) -> bool:
    return all(hasattr(storage, name) for name in ("_connect", "prepare_insert_event_batch", "index_transaction",
                                                   "_store_asset_event"))
