"""The audit partitioned by month, narrow rows, what a page changed, monthly roll-ups (issue 18, item 5).

A no-op tick wrote, per stream, a page row listing every message ID it received (~2 KB for a page of 100)
and a job row: ~2 GB a day at 10,000 accounts every 15 minutes, recording nothing new. From here on:

- `dm_audit.dm_sync_audit` is range-partitioned by month on `finished_at` (UTC months, a DEFAULT
  partition so that no row is ever refused for lack of a partition); old months are dropped whole by
  `db/audit_partitions.py` after `DM_PIPELINE_AUDIT_RETENTION_MONTHS`, never deleted row by row. The
  existing rows are copied into the partitioned table (the one slow step of this revision: minutes per
  10 M rows); `audit_id` keeps its sequence.
- `message_ids` / `media_refs` hold what the page inserted or updated (NULL: nothing); what it saw is a
  range and a count (`newest_id`, `oldest_id`, `events_received`). The pages of a full walk also keep the
  IDs they returned unchanged (`unchanged_ids`), the deletions judge's evidence (docs/architecture.md §4).
- A one-page pass that changed nothing writes no page row: its figures fold into the stream's job row
  (`folded_pages`, its `credits`, `newest_id`, `oldest_id`).
- Narrower rows (measured in docs/architecture.md §14): columns ordered so that nothing is padded, NULL
  instead of 0 in the rare counters (`credits`, `events_quarantined`, `partial_errors`, the three sweep
  counts), `http_status` a smallint, and no primary-key index: a partitioned table's key must include
  `finished_at`, and `(audit_id, finished_at)` would be 31 bytes a row that no query reads. Indexes: per
  stream and UTC day, and per run (both deduplicated by the B-tree: ~10 bytes a row each), a BRIN on
  `finished_at`, and
  four partial ones a no-op row never enters (errors, suspected gaps, page rows, parked jobs' cursors).
- `dm_audit.dm_sync_audit_monthly`: counts per account x stream x month, rolled up daily (closed months
  whole, the current one to date) and before a month may be dropped. `dm_analytics.sync_health` and the
  reconciliation check read the roll-ups up to their watermark (`through`) and the audit rows after it
  (about a day), so they stay fast at 100 M rows, and stay right after old months are dropped.

Analysts get SELECT on the roll-up table (counts only), and again on the new table and view.

Downgrade restores 0008's table (its column order, NOT NULL counters, `'{}'` arrays; a page's
`unchanged_ids` go back into its `message_ids`, where 0008's judge reads them) and 0003's view. The
roll-ups, and the page count folded into job rows, are lost.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from alembic import op
from sqlalchemy import text

revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT = "dm_audit.dm_sync_audit"
SEQUENCE = "dm_audit.dm_sync_audit_audit_id_seq"
MONTHS_AHEAD = 2  # as db/audit_partitions.py: this month and the next two exist before rows arrive

# Fixed-width columns first (8-byte, then 4, 2, 1), then the variable ones (1-byte aligned): no padding.
COLUMNS = f"""
    audit_id bigint NOT NULL DEFAULT nextval('{SEQUENCE}'::regclass),
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    retry_at timestamptz,
    requests integer NOT NULL DEFAULT 0,
    cost integer NOT NULL DEFAULT 0,
    events_received integer NOT NULL DEFAULT 0,
    events_inserted integer NOT NULL DEFAULT 0,
    events_updated integer NOT NULL DEFAULT 0,
    page_seq integer,
    credits integer,
    events_quarantined integer,
    partial_errors integer,
    events_marked_deleted integer,
    events_restored integer,
    events_erased integer,
    http_status smallint,
    folded_pages smallint,
    gap_suspected boolean NOT NULL DEFAULT false,
    has_next_page boolean,
    run_id text NOT NULL,
    account_key text NOT NULL,
    provider text NOT NULL,
    stream_key text NOT NULL,
    row_kind text NOT NULL,
    job_status text NOT NULL,
    endpoint text,
    error_code text,
    newest_id text,
    oldest_id text,
    cursor_in text,
    cursor_out text,
    message_ids text[],
    media_refs text[],
    unchanged_ids text[],
    CONSTRAINT ck_dm_sync_audit_row_kind CHECK (row_kind IN ('page', 'job'))"""

# 0008's table, column for column (downgrade).
COLUMNS_0008 = f"""
    audit_id bigint NOT NULL DEFAULT nextval('{SEQUENCE}'::regclass),
    run_id text NOT NULL,
    account_key text NOT NULL,
    provider text NOT NULL,
    stream_key text NOT NULL,
    endpoint text,
    row_kind text NOT NULL,
    page_seq integer,
    cursor_in text,
    cursor_out text,
    has_next_page boolean,
    http_status integer,
    requests integer NOT NULL DEFAULT 0,
    events_received integer NOT NULL DEFAULT 0,
    events_inserted integer NOT NULL DEFAULT 0,
    events_updated integer NOT NULL DEFAULT 0,
    message_ids text[] NOT NULL DEFAULT '{{}}',
    media_refs text[] NOT NULL DEFAULT '{{}}',
    newest_id text,
    oldest_id text,
    job_status text NOT NULL,
    error_code text,
    gap_suspected boolean NOT NULL DEFAULT false,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    credits integer NOT NULL DEFAULT 0,
    events_quarantined integer NOT NULL DEFAULT 0,
    cost integer NOT NULL DEFAULT 0,
    partial_errors integer NOT NULL DEFAULT 0,
    retry_at timestamptz,
    events_marked_deleted integer NOT NULL DEFAULT 0,
    events_restored integer NOT NULL DEFAULT 0,
    events_erased integer NOT NULL DEFAULT 0,
    CONSTRAINT pk_dm_sync_audit PRIMARY KEY (audit_id),
    CONSTRAINT ck_dm_sync_audit_row_kind CHECK (row_kind IN ('page', 'job'))"""

SHARED = ("audit_id, started_at, finished_at, retry_at, requests, cost, events_received, events_inserted, "
          "events_updated, page_seq, has_next_page, gap_suspected, run_id, account_key, provider, stream_key, "
          "row_kind, job_status, endpoint, error_code, newest_id, oldest_id, cursor_in, cursor_out")
RARE = ("credits", "events_quarantined", "partial_errors", "events_marked_deleted", "events_restored",
        "events_erased")

UTC_DAY = "((finished_at AT TIME ZONE 'UTC')::date)"
INDEXES = [
    # Per stream and UTC day: B-tree deduplication stores a stream's rows of a day as one key and a list of
    # row pointers (~10 bytes a row instead of ~60 with finished_at in the key). A reader that wants a
    # stream's last day says so with the day (sync_health, status's costs): the index reads that day alone.
    f"CREATE INDEX ix_dm_sync_audit_account_key_stream_key_utc_day ON {AUDIT} (account_key, stream_key, {UTC_DAY})",
    f"CREATE INDEX ix_dm_sync_audit_run_id ON {AUDIT} (run_id)",   # deduplicated too: a run covers many streams
    # The rows are appended in time order: a BRIN index (one entry per 128 pages) finds the last day's pages.
    f"CREATE INDEX ix_dm_sync_audit_finished_at ON {AUDIT} USING brin (finished_at) WITH (autosummarize = on)",
    # status (the last error of every stream, index-only), sync_health (errors): only rows with an error.
    f"CREATE INDEX ix_dm_sync_audit_errors ON {AUDIT} (account_key, stream_key, finished_at) "
    "INCLUDE (error_code, http_status) WHERE error_code IS NOT NULL",
    # status, sync_health and the gap_suspected check: only the rows that suspect a gap.
    f"CREATE INDEX ix_dm_sync_audit_gaps ON {AUDIT} (account_key, stream_key, finished_at) WHERE gap_suspected",
    # Page rows only (a no-op tick writes none): the deletions judge (a walk's pages) and the reconciliation
    # check (what they inserted, read from the index alone).
    f"CREATE INDEX ix_dm_sync_audit_pages ON {AUDIT} (account_key, stream_key, finished_at) "
    "INCLUDE (events_inserted) WHERE row_kind = 'page'",
    # A parked pass's job row keeps its cursor: with the two above, the rows the redaction check reads.
    f"CREATE INDEX ix_dm_sync_audit_parked ON {AUDIT} (account_key, stream_key, finished_at) "
    "WHERE row_kind = 'job' AND cursor_out IS NOT NULL",
]

MONTHLY = """
CREATE TABLE dm_audit.dm_sync_audit_monthly (
    month date NOT NULL,
    account_key text NOT NULL,
    stream_key text NOT NULL,
    provider text NOT NULL,
    audit_rows integer NOT NULL,
    pages integer NOT NULL,
    runs integer NOT NULL,
    errors integer NOT NULL,
    gap_rows integer NOT NULL,
    last_gap_at timestamptz,
    last_page_at timestamptz,
    requests bigint NOT NULL,
    cost bigint NOT NULL,
    credits bigint NOT NULL,
    events_received bigint NOT NULL,
    events_inserted bigint NOT NULL,
    events_updated bigint NOT NULL,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    through timestamptz NOT NULL,
    last_erasure_at timestamptz,
    rolled_up_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_dm_sync_audit_monthly PRIMARY KEY (month, account_key, stream_key)
)"""
MONTHLY_INDEXES = [
    # What sync_health and the reconciliation read per stream, in the index: no table page per month.
    "CREATE INDEX ix_dm_sync_audit_monthly_account_key_stream_key_month "
    "ON dm_audit.dm_sync_audit_monthly (account_key, stream_key, month) INCLUDE (pages, runs, errors, "
    "gap_rows, last_gap_at, last_page_at, credits, events_inserted, last_erasure_at)",
    "CREATE INDEX ix_dm_sync_audit_monthly_through ON dm_audit.dm_sync_audit_monthly (through)",
]

# The first instant not rolled up (the roll-ups hold every audit row before it), or -infinity.
WATERMARK = "(SELECT coalesce(max(r.through), '-infinity') FROM dm_audit.dm_sync_audit_monthly r)"

# The view's head, the stream's own state: the same in 0003's view and in this one.
SYNC_HEALTH_STATE = """
CREATE VIEW dm_analytics.sync_health AS
SELECT s.account_key,
       s.stream_key,
       s.provider,
       s.endpoint,
       s.last_status,
       s.last_error_code,
       s.last_success_at,
       now() - s.last_success_at AS lag,
       s.pass_started_at IS NOT NULL AS pass_in_progress,
       s.pass_started_at,
       s.pass_pages,
       s.pass_sweep,
       s.high_water_id,
       s.updated_at,
"""

# The same columns as 0003's view: the roll-ups up to the watermark (closed months, and the current one up to
# the start of the day), the audit rows after it (at most about a day), and errors_24h from the errors index.
SYNC_HEALTH = SYNC_HEALTH_STATE + f"""       coalesce(m.pages, 0) + coalesce(a.pages, 0) AS pages,
       coalesce(m.runs, 0) + coalesce(a.runs, 0) AS runs,
       coalesce(m.errors, 0) + coalesce(a.errors, 0) AS errors,
       coalesce(d.errors_24h, 0) AS errors_24h,
       coalesce(m.gap_rows, 0) + coalesce(a.gap_rows, 0) > 0 AS gap_suspected,
       greatest(m.last_gap_at, a.last_gap_at) AS last_gap_at,
       greatest(m.last_page_at, a.last_page_at) AS last_page_at,
       coalesce(m.credits, 0) + coalesce(a.credits, 0) AS credits
FROM dm_private.sync_state AS s
LEFT JOIN LATERAL (
    SELECT sum(r.pages)::bigint AS pages, sum(r.runs)::bigint AS runs, sum(r.errors)::bigint AS errors,
           sum(r.gap_rows)::bigint AS gap_rows, max(r.last_gap_at) AS last_gap_at,
           max(r.last_page_at) AS last_page_at, sum(r.credits)::bigint AS credits
    FROM dm_audit.dm_sync_audit_monthly AS r
    WHERE r.account_key = s.account_key AND r.stream_key = s.stream_key
) AS m ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.row_kind = 'page') + coalesce(sum(x.folded_pages), 0) AS pages,
           count(DISTINCT x.run_id) AS runs,
           count(*) FILTER (WHERE x.row_kind = 'job' AND x.job_status = 'failed'
                                  OR x.row_kind = 'page' AND x.error_code IS NOT NULL) AS errors,
           count(*) FILTER (WHERE x.gap_suspected) AS gap_rows,
           max(x.finished_at) FILTER (WHERE x.gap_suspected) AS last_gap_at,
           max(x.finished_at) FILTER (WHERE x.row_kind = 'page' OR x.folded_pages > 0) AS last_page_at,
           sum(x.credits) AS credits
    FROM dm_audit.dm_sync_audit AS x
    WHERE x.account_key = s.account_key AND x.stream_key = s.stream_key AND x.finished_at >= {WATERMARK}
      AND {UTC_DAY.replace("finished_at", "x.finished_at")} >= ({WATERMARK} AT TIME ZONE 'UTC')::date
) AS a ON true
LEFT JOIN LATERAL (
    -- a failed job always has an error code: the rows with one are in their own small index
    SELECT count(*) AS errors_24h
    FROM dm_audit.dm_sync_audit AS y
    WHERE y.account_key = s.account_key AND y.stream_key = s.stream_key AND y.error_code IS NOT NULL
      AND (y.row_kind = 'job' AND y.job_status = 'failed' OR y.row_kind = 'page')
      AND y.finished_at > now() - interval '24 hours'
) AS d ON true"""

# 0003's view, as it was (downgrade).
SYNC_HEALTH_0003 = SYNC_HEALTH_STATE + """       coalesce(a.pages, 0) AS pages,
       coalesce(a.runs, 0) AS runs,
       coalesce(a.errors, 0) AS errors,
       coalesce(a.errors_24h, 0) AS errors_24h,
       coalesce(a.gap_suspected, false) AS gap_suspected,
       a.last_gap_at,
       a.last_page_at,
       coalesce(a.credits, 0) AS credits
FROM dm_private.sync_state AS s
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.row_kind = 'page') AS pages,
           count(DISTINCT x.run_id) AS runs,
           count(*) FILTER (WHERE x.row_kind = 'job' AND x.job_status = 'failed'
                                  OR x.row_kind = 'page' AND x.error_code IS NOT NULL) AS errors,
           count(*) FILTER (WHERE (x.row_kind = 'job' AND x.job_status = 'failed'
                                   OR x.row_kind = 'page' AND x.error_code IS NOT NULL)
                                  AND x.finished_at > now() - interval '24 hours') AS errors_24h,
           bool_or(x.gap_suspected) AS gap_suspected,
           max(x.finished_at) FILTER (WHERE x.gap_suspected) AS last_gap_at,
           max(x.finished_at) FILTER (WHERE x.row_kind = 'page') AS last_page_at,
           sum(x.credits) AS credits
    FROM dm_audit.dm_sync_audit AS x
    WHERE x.account_key = s.account_key AND x.stream_key = s.stream_key
) AS a ON true"""

ANALYST_RELATIONS = ("dm_audit.dm_sync_audit", "dm_audit.dm_sync_audit_monthly", "dm_analytics.sync_health")
LOADER_TABLES = ("dm_audit.dm_sync_audit", "dm_audit.dm_sync_audit_monthly")


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


def _literal(sql: str) -> str:
    return "'" + sql.replace("'", "''") + "'"


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_sql(month: date) -> str:
    """As db/audit_partitions.py names and bounds them (copied: a migration never changes afterwards)."""
    return (f"CREATE TABLE dm_audit.dm_sync_audit_y{month.year:04d}m{month.month:02d} PARTITION OF {AUDIT} "
            f"FOR VALUES FROM ('{month.isoformat()} 00:00:00+00') TO ('{_next_month(month).isoformat()} 00:00:00+00')")


def _grants() -> None:
    op.execute(if_role_exists_sql("dm_analyst", [f"GRANT SELECT ON {', '.join(ANALYST_RELATIONS)} TO {{role}}"]))
    op.execute(if_role_exists_sql("dm_loader", [f"GRANT SELECT, INSERT, UPDATE ON {', '.join(LOADER_TABLES)} "
                                                "TO {role}"]))


def upgrade() -> None:
    conn = op.get_bind()
    op.execute("DROP VIEW dm_analytics.sync_health")
    op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY NONE")
    op.execute(f"ALTER TABLE {AUDIT} RENAME TO dm_sync_audit_0008")
    for name in ("ix_dm_sync_audit_account_key_stream_key_finished_at", "ix_dm_sync_audit_run_id"):
        op.execute(f"DROP INDEX dm_audit.{name}")
    for name in ("pk_dm_sync_audit", "ck_dm_sync_audit_row_kind"):
        op.execute(f"ALTER TABLE dm_audit.dm_sync_audit_0008 DROP CONSTRAINT {name}")
    op.execute(f"CREATE TABLE {AUDIT} ({COLUMNS}\n) PARTITION BY RANGE (finished_at)")
    # A partition for every month that has rows, and for this month and the next ones; the DEFAULT
    # partition takes any row whose month has none (db/audit_partitions.py moves them out).
    months = set(conn.scalars(text("SELECT DISTINCT date_trunc('month', finished_at AT TIME ZONE 'UTC')::date "
                                   "FROM dm_audit.dm_sync_audit_0008")))
    month = conn.scalar(text("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date"))
    for _ in range(MONTHS_AHEAD + 1):
        months.add(month)
        month = _next_month(month)
    for m in sorted(months):
        op.execute(partition_sql(m))
    op.execute(f"CREATE TABLE dm_audit.dm_sync_audit_default PARTITION OF {AUDIT} DEFAULT")
    # Empty arrays and zero rare counters become NULL (what the writers now store for "none").
    rare = ", ".join(f"nullif({c}, 0)" for c in RARE)
    op.execute(f"""
        INSERT INTO {AUDIT} ({SHARED}, {", ".join(RARE)}, http_status, message_ids, media_refs)
        SELECT {SHARED}, {rare}, http_status::smallint, nullif(message_ids, '{{}}'), nullif(media_refs, '{{}}')
        FROM dm_audit.dm_sync_audit_0008""")
    op.execute("DROP TABLE dm_audit.dm_sync_audit_0008")
    op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY {AUDIT}.audit_id")
    for sql in INDEXES:
        op.execute(sql)
    op.execute(MONTHLY)
    for sql in MONTHLY_INDEXES:
        op.execute(sql)
    op.execute(SYNC_HEALTH)
    op.execute(f"ANALYZE {AUDIT}")  # autovacuum analyzes the partitions, never the partitioned parent
    _grants()


def downgrade() -> None:
    op.execute("DROP VIEW dm_analytics.sync_health")
    op.execute("DROP TABLE dm_audit.dm_sync_audit_monthly")
    op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY NONE")
    op.execute(f"ALTER TABLE {AUDIT} RENAME TO dm_sync_audit_0009")
    for name in ("ix_dm_sync_audit_account_key_stream_key_utc_day", "ix_dm_sync_audit_run_id",
                 "ix_dm_sync_audit_finished_at", "ix_dm_sync_audit_errors", "ix_dm_sync_audit_gaps",
                 "ix_dm_sync_audit_pages", "ix_dm_sync_audit_parked"):
        op.execute(f"DROP INDEX dm_audit.{name}")
    op.execute("ALTER TABLE dm_audit.dm_sync_audit_0009 DROP CONSTRAINT ck_dm_sync_audit_row_kind")
    op.execute(f"CREATE TABLE {AUDIT} ({COLUMNS_0008}\n)")
    rare = ", ".join(f"coalesce({c}, 0)" for c in RARE)
    op.execute(f"""
        INSERT INTO {AUDIT} ({SHARED}, {", ".join(RARE)}, http_status, message_ids, media_refs)
        SELECT {SHARED}, {rare}, http_status, coalesce(message_ids, '{{}}') || coalesce(unchanged_ids, '{{}}'),
               coalesce(media_refs, '{{}}')
        FROM dm_audit.dm_sync_audit_0009""")
    op.execute("DROP TABLE dm_audit.dm_sync_audit_0009")  # and its partitions
    op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY {AUDIT}.audit_id")
    op.execute(f"CREATE INDEX ix_dm_sync_audit_account_key_stream_key_finished_at ON {AUDIT} "
               "(account_key, stream_key, finished_at)")
    op.execute(f"CREATE INDEX ix_dm_sync_audit_run_id ON {AUDIT} (run_id)")
    op.execute(SYNC_HEALTH_0003)
    op.execute(if_role_exists_sql("dm_analyst", [f"GRANT SELECT ON {AUDIT}, dm_analytics.sync_health TO {{role}}"]))
    op.execute(if_role_exists_sql("dm_loader", [f"GRANT SELECT, INSERT, UPDATE ON {AUDIT} TO {{role}}"]))
