"""The audit's monthly partitions (docs/architecture.md §14): created ahead, rolled up once closed, dropped
whole after the retention. Audit rows are never deleted one by one.

`dm_audit.dm_sync_audit` is range-partitioned by UTC month on `finished_at`, with a DEFAULT partition, so an
insert never fails for lack of a partition (a fresh database, a month boundary, a maintenance that did not
run). `maintain` does, each step in its own short transaction:

1. **adopt**: rows the DEFAULT partition holds (their month had no partition yet) move to their month's
   new partition. This is a relocation, not a deletion, and only happens when maintenance fell behind;
2. **ensure**: this month's partition and the next `MONTHS_AHEAD` exist. A partition is created as a plain
   table and ATTACHed, which takes SHARE UPDATE EXCLUSIVE on the parent: page commits go on meanwhile;
3. **roll up**: the counts per account x stream x month in `dm_sync_audit_monthly`, up to the start of the
   current UTC day (less `ROLL_UP_GRACE`, so no transaction still writes before it): each closed month once,
   whole, and the current month to date, recomputed (so an erasure since the last roll-up counts right). The
   latest `through` is the watermark: sync_health and the reconciliation check read the roll-ups before it
   and the audit rows after it, about a day of them whatever the size of the audit;
4. **prune**: with a retention of N months (`DM_PIPELINE_AUDIT_RETENTION_MONTHS`; 0 keeps everything) the
   current month and the N before it are kept; an older month's partition is dropped (DROP TABLE: its files
   are unlinked, whatever its size) once it is rolled up, unless an open walk (first pass or sweep) began
   before its end: the deletions judge reads a walk's pages (db/deletions.py).

Callers: `dm-pipeline audit prune` (all four), the daily `audit_maintenance` Dagster job (all four), and
`db/migrate.upgrade` (adopt and ensure, cheap: `dm-pipeline run`, `make dev`, `dm-pipeline db upgrade`).
DDL needs the table's owner, not the runtime role. Steps that need a lock on the parent give up after
`LOCK_TIMEOUT` (a long analyst query) and are retried at the next maintenance; maintainers serialize on an
advisory lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, Engine, text

PARENT = "dm_audit.dm_sync_audit"
DEFAULT = "dm_audit.dm_sync_audit_default"
MONTHLY = "dm_audit.dm_sync_audit_monthly"
AUDIT_PARTITION = re.compile(r"dm_sync_audit_(?:y(\d{4})m(\d{2})|default)")
MONTHS_AHEAD = 2
ROLL_UP_GRACE = timedelta(hours=1)
LOCK_TIMEOUT = "5s"
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('dm_pipeline:audit_partitions', 0))"


def month_of(ts: datetime) -> date:
    """The UTC month holding `ts`, as its first day."""
    utc = ts.astimezone(UTC) if ts.tzinfo else ts
    return date(utc.year, utc.month, 1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"dm_sync_audit_y{month.year:04d}m{month.month:02d}"


def _bound(month: date) -> str:
    return f"'{month.isoformat()} 00:00:00+00'"


@dataclass
class Report:
    """What `maintain` did (or, dry, would do)."""

    created: list[str] = field(default_factory=list)
    adopted: dict[str, int] = field(default_factory=dict)     # partition -> rows moved out of DEFAULT
    rolled_up: list[date] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)        # partition past the retention -> why it stays


def partitions(conn: Connection) -> dict[date, str]:
    """The monthly partitions that exist: month -> name (the DEFAULT partition is not listed)."""
    names = conn.scalars(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(:parent)"), {"parent": PARENT})
    out: dict[date, str] = {}
    for name in names:
        m = AUDIT_PARTITION.fullmatch(name)
        if m and m.group(1):
            out[date(int(m.group(1)), int(m.group(2)), 1)] = name
    return out


def db_now(conn: Connection) -> datetime:
    now: datetime = conn.scalar(text("SELECT now()"))
    return now


def _begin(conn: Connection) -> None:
    conn.execute(text(_LOCK))
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))


def _attach(conn: Connection, month: date) -> int:
    """Create `month`'s partition detached, move what DEFAULT holds of it, attach it. Returns rows moved."""
    name, lo, hi = partition_name(month), _bound(month), _bound(add_months(month, 1))
    conn.execute(text(f"CREATE TABLE dm_audit.{name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    moved = conn.execute(text(
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE finished_at >= {lo} AND finished_at < {hi} RETURNING *) "
        f"INSERT INTO dm_audit.{name} SELECT * FROM moved")).rowcount
    # The constraint lets ATTACH skip scanning the new table; the DEFAULT partition is scanned (it holds
    # nothing of the month any more). The parent's indexes are built on the new table by ATTACH.
    conn.execute(text(f"ALTER TABLE dm_audit.{name} ADD CONSTRAINT {name}_bound "
                      f"CHECK (finished_at >= {lo} AND finished_at < {hi})"))
    conn.execute(text(f"ALTER TABLE {PARENT} ATTACH PARTITION dm_audit.{name} FOR VALUES FROM ({lo}) TO ({hi})"))
    conn.execute(text(f"ALTER TABLE dm_audit.{name} DROP CONSTRAINT {name}_bound"))
    return int(moved)


def ensure(engine: Engine, now: datetime | None = None, *, ahead: int = MONTHS_AHEAD, dry_run: bool = False,
           report: Report | None = None) -> Report:
    """Adopt the DEFAULT partition's rows into partitions of their own, then make sure this month's partition
    and the next `ahead` exist. Cheap when nothing is missing: one catalog query and one probe of DEFAULT."""
    report = report or Report()
    with engine.connect() as conn:
        now = now or db_now(conn)
        have = partitions(conn)
        strays: dict[date, int] = {r[0]: int(r[1]) for r in conn.execute(text(
            f"SELECT date_trunc('month', finished_at AT TIME ZONE 'UTC')::date, count(*) FROM {DEFAULT} "
            "GROUP BY 1 ORDER BY 1"))}
    wanted = {add_months(month_of(now), k) for k in range(ahead + 1)} | set(strays)
    for month in sorted(wanted - set(have)):
        name = partition_name(month)
        if dry_run:
            report.created.append(name)
            if month in strays:
                report.adopted[name] = strays[month]
            continue
        with engine.begin() as conn:
            _begin(conn)
            if month in partitions(conn):  # another maintainer made it meanwhile
                continue
            moved = _attach(conn, month)
        report.created.append(name)
        if moved:
            report.adopted[name] = moved
    return report


# Counts per account x stream for one month up to `through`, as sync_health and the reconciliation check read
# them; recomputed whole each time. events_inserted counts the pages after the account's last erasure (the
# erased rows no longer exist), which the row records.
_ROLL_UP = f"""
INSERT INTO {MONTHLY} AS m (month, account_key, stream_key, provider, audit_rows, pages, runs, errors, gap_rows,
    last_gap_at, last_page_at, requests, cost, credits, events_received, events_inserted, events_updated,
    first_at, last_at, through, last_erasure_at)
SELECT CAST(:month AS date), a.account_key, a.stream_key, min(a.provider), count(*),
       count(*) FILTER (WHERE a.row_kind = 'page') + coalesce(sum(a.folded_pages), 0),
       count(DISTINCT a.run_id),
       count(*) FILTER (WHERE a.row_kind = 'job' AND a.job_status = 'failed'
                              OR a.row_kind = 'page' AND a.error_code IS NOT NULL),
       count(*) FILTER (WHERE a.gap_suspected),
       max(a.finished_at) FILTER (WHERE a.gap_suspected),
       max(a.finished_at) FILTER (WHERE a.row_kind = 'page' OR a.folded_pages > 0),
       coalesce(sum(a.requests) FILTER (WHERE a.row_kind = 'job'), 0),
       coalesce(sum(a.cost) FILTER (WHERE a.row_kind = 'job'), 0),
       coalesce(sum(a.credits), 0),
       coalesce(sum(a.events_received) FILTER (WHERE a.row_kind = 'job'), 0),
       coalesce(sum(a.events_inserted) FILTER (WHERE a.row_kind = 'page'
                                               AND a.finished_at > coalesce(e.erased, '-infinity')), 0),
       coalesce(sum(a.events_updated) FILTER (WHERE a.row_kind = 'page'), 0),
       min(a.finished_at), max(a.finished_at), CAST(:through AS timestamptz), min(e.erased)
FROM {PARENT} AS a
LEFT JOIN (SELECT account_key, max(erased_at) AS erased FROM dm_audit.dm_erasures GROUP BY 1) AS e
       ON e.account_key = a.account_key
WHERE a.finished_at >= CAST(:lo AS timestamptz) AND a.finished_at < CAST(:through AS timestamptz)
GROUP BY a.account_key, a.stream_key
ON CONFLICT (month, account_key, stream_key) DO UPDATE SET
    provider = EXCLUDED.provider, audit_rows = EXCLUDED.audit_rows, pages = EXCLUDED.pages, runs = EXCLUDED.runs,
    errors = EXCLUDED.errors, gap_rows = EXCLUDED.gap_rows, last_gap_at = EXCLUDED.last_gap_at,
    last_page_at = EXCLUDED.last_page_at, requests = EXCLUDED.requests, cost = EXCLUDED.cost,
    credits = EXCLUDED.credits, events_received = EXCLUDED.events_received,
    events_inserted = EXCLUDED.events_inserted, events_updated = EXCLUDED.events_updated,
    first_at = EXCLUDED.first_at, last_at = EXCLUDED.last_at, through = EXCLUDED.through,
    last_erasure_at = EXCLUDED.last_erasure_at, rolled_up_at = now()"""


def _instant(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def rolled_up(conn: Connection) -> dict[date, datetime]:
    """Per month rolled up, the instant its roll-up reaches (its end once the month is closed)."""
    return {m: t for m, t in conn.execute(text(f"SELECT month, max(through) FROM {MONTHLY} GROUP BY 1"))}


def roll_up(engine: Engine, now: datetime | None = None, *, dry_run: bool = False, report: Report | None = None,
            max_months: int | None = None) -> Report:
    """Roll the audit up to the start of the current UTC day (less ROLL_UP_GRACE): every month not yet rolled
    up to its end or to that day, oldest first, at most `max_months`, one transaction each. Stops at a month
    the DEFAULT partition still holds rows of (adopt them first: they would be skipped)."""
    report = report or Report()
    with engine.connect() as conn:
        now = now or db_now(conn)
        done = rolled_up(conn)
        months = sorted(partitions(conn))
    day = (now - ROLL_UP_GRACE).astimezone(UTC)
    until = _instant(date(day.year, day.month, day.day))
    watermark = max(done.values(), default=None)
    todo = []
    for month in months:
        start, end = _instant(month), _instant(add_months(month, 1))
        through = min(end, until)
        if start >= until:
            break
        if (watermark is not None and end <= watermark and month not in done) or done.get(month, start) >= through:
            continue  # empty before the watermark, or rolled up that far already
        todo.append((month, through))
    for month, through in todo[:max_months]:
        if dry_run:
            report.rolled_up.append(month)
            continue
        with engine.begin() as conn:
            _begin(conn)
            if rolled_up(conn).get(month, _instant(month)) >= through:
                continue
            if conn.scalar(text(f"SELECT EXISTS (SELECT FROM {DEFAULT} WHERE finished_at < :t)"), {"t": through}):
                break
            conn.execute(text(_ROLL_UP), {"month": month, "lo": _instant(month), "through": through})
        report.rolled_up.append(month)
    return report


def prune(engine: Engine, retention_months: int, now: datetime | None = None, *, dry_run: bool = False,
          report: Report | None = None) -> Report:
    """Drop the partitions older than the retention (the current month and the `retention_months` before it
    are kept) that are rolled up and that no open walk needs. 0 keeps everything."""
    report = report or Report()
    if retention_months <= 0:
        return report
    with engine.connect() as conn:
        now = now or db_now(conn)
        have = partitions(conn)
        done = rolled_up(conn)
        walk = conn.scalar(text("SELECT min(pass_started_at) FROM dm_private.sync_state "
                                "WHERE pass_started_at IS NOT NULL AND pass_stop_id IS NULL"))
    horizon = add_months(month_of(now), -retention_months)
    for month, name in sorted(have.items()):
        end = add_months(month, 1)
        if end > horizon:
            break
        if done.get(month) != _instant(end) and month not in report.rolled_up and not _empty(engine, name):
            report.kept[name] = "not rolled up to its end yet"  # (a dry run counts what it would roll up)
            continue
        if walk is not None and walk < datetime(end.year, end.month, 1, tzinfo=UTC):
            report.kept[name] = "an open walk (first pass or sweep) began before its end: its judge reads it"
            continue
        if not dry_run:
            with engine.begin() as conn:
                _begin(conn)
                conn.execute(text(f"DROP TABLE IF EXISTS dm_audit.{name}"))
        report.dropped.append(name)
    return report


def _empty(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return not conn.scalar(text(f"SELECT EXISTS (SELECT FROM dm_audit.{name})"))


def maintain(engine: Engine, retention_months: int, now: datetime | None = None, *,
             dry_run: bool = False) -> Report:
    """Adopt, ensure, roll up, prune (see the module docstring), in that order."""
    report = ensure(engine, now, dry_run=dry_run)
    roll_up(engine, now, dry_run=dry_run, report=report)
    prune(engine, retention_months, now, dry_run=dry_run, report=report)
    return report

