"""Synthetic warehouse load for the analytics views, and the documented queries of docs/analyst.md.

Shared by `benchmarks/explain_analytics.py` (1 M events) and the plan tests (a smaller load): the same
generator and the same query parser, so the test checks what the benchmark measures.

The load is shaped like the real thing: snowflake-like IDs rising with time, 1:1 conversations owned by
one account, one conversation in ten shared with a second connected account (so dedupe has copies to
remove), 3 % membership events, 14 % media, page and job audit rows, one state row per account.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

DOCS = Path(__file__).resolve().parent.parent / "docs" / "analyst.md"
END = datetime(2026, 1, 15, tzinfo=UTC)     # the simulator's default clock, so the docs' dates fit both
SPAN_DAYS = 365
BIG_TABLES = frozenset({"dm_history", "dm_sync_audit"})
INDEX_NODES = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})

_SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.S)
_PSQL_VAR = re.compile(r":'(\w+)'")
_JUSTIFIED = re.compile(r"--\s*plan:\s*(.+)")


@dataclass(frozen=True)
class DocQuery:
    sql: str                   # as written in the docs (psql variables :'name')
    justification: str | None  # "-- plan: ..." when the query is meant to read whole tables

    @property
    def title(self) -> str:
        first = next((ln for ln in self.sql.splitlines() if ln.startswith("--") and "plan:" not in ln), "")
        return first.lstrip("- ").strip() or self.sql.splitlines()[0]

    @property
    def params(self) -> list[str]:
        return sorted(set(_PSQL_VAR.findall(self.sql)))

    def bindable(self) -> str:
        """psql's `:'name'` as a SQLAlchemy bind parameter, parenthesised so `::type` casts still parse."""
        return _PSQL_VAR.sub(r"(:\1)", self.sql)


def doc_queries(path: Path = DOCS) -> list[DocQuery]:
    queries = []
    for block in _SQL_BLOCK.findall(path.read_text(encoding="utf-8")):
        m = _JUSTIFIED.search(block)
        queries.append(DocQuery(block.strip(), m.group(1).strip() if m else None))
    return queries


def load(engine: Engine, events: int, accounts: int = 20, per_conversation: int = 500) -> None:
    """Insert `events` base events (plus ~10 % copies in shared conversations), state and audit rows, then
    VACUUM (ANALYZE) as autovacuum would: the visibility map makes the dedupe probe index-only."""
    with engine.begin() as conn:
        _insert(conn, events, accounts, per_conversation)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("dm_private.dm_history", "dm_private.sync_state", "dm_audit.dm_sync_audit"):
            conn.execute(text(f"VACUUM (ANALYZE) {table}"))


def _insert(conn: Connection, events: int, accounts: int, per_conversation: int) -> None:
    conversations = max(accounts * 2, events // per_conversation)
    p = {"n": events, "a": accounts, "c": conversations, "end": END, "span": SPAN_DAYS * 86400.0}
    conn.execute(text("""
        INSERT INTO dm_private.dm_history
            (account_key, message_id, provider, stream_key, conversation_id, event_type, sender_id,
             recipient_id, participant_ids, created_at, text, media, edit_count, raw, content_hash,
             first_seen_run_id, last_changed_run_id)
        SELECT 'acct-' || lpad((c % :a)::text, 2, '0'),
               (1600000000000000000 + g * 4096)::text,
               'x', 'dm_events',
               (100000000 + c)::text || '-' || (200000000 + c)::text,
               CASE WHEN g % 33 = 0 THEN 'ParticipantsJoin' ELSE 'MessageCreate' END,
               CASE WHEN g / :c % 2 = 0 THEN (100000000 + c)::text ELSE (200000000 + c)::text END,
               CASE WHEN g / :c % 2 = 0 THEN (200000000 + c)::text ELSE (100000000 + c)::text END,
               CASE WHEN g % 33 = 0 THEN ARRAY[(300000000 + g % 1000)::text] ELSE '{}' END,
               CAST(:end AS timestamptz) - make_interval(secs => (:n - g) * (:span / :n)),
               CASE WHEN g % 33 = 0 THEN NULL ELSE 'synthetic private text ' || repeat('x', (g % 120)::int) END,
               CASE WHEN g % 7 = 3 THEN jsonb_build_array(jsonb_build_object(
                   'media_key', '3_' || g, 'type', 'photo',
                   'url', 'https://ton.twitter.com/1.1/ton/data/dm/' || g || '/img.jpg')) END,
               0, jsonb_build_object('id', g::text), md5(g::text), 'bench-load', 'bench-load'
        FROM generate_series(1::bigint, :n) AS g, LATERAL (SELECT (g * 7919) % :c AS c) AS pick"""), p)
    # One conversation in ten is between two connected accounts: both hold a copy of every event.
    conn.execute(text("""
        INSERT INTO dm_private.dm_history
            (account_key, message_id, provider, stream_key, conversation_id, event_type, sender_id,
             recipient_id, participant_ids, created_at, text, media, edit_count, raw, content_hash,
             first_seen_run_id, last_changed_run_id)
        SELECT 'acct-' || lpad(((split_part(conversation_id, '-', 1)::bigint - 100000000 + 1) % :a)::text, 2, '0'),
               message_id, provider, stream_key, conversation_id, event_type, sender_id, recipient_id,
               participant_ids, created_at, text, media, edit_count, raw, content_hash,
               first_seen_run_id, last_changed_run_id
        FROM dm_private.dm_history
        WHERE (split_part(conversation_id, '-', 1)::bigint - 100000000) % 10 = 0"""), p)
    conn.execute(text("""
        INSERT INTO dm_private.sync_state (account_key, stream_key, provider, endpoint, high_water_id,
                                           pass_started_at, pass_cursor, pass_stop_id, pass_pages,
                                           last_success_at, last_status, last_error_code)
        SELECT 'acct-' || lpad(a::text, 2, '0'), 'dm_events', 'x', '/2/dm_events',
               (1600000000000000000 + CAST(:n AS bigint) * 4096)::text,
               CASE WHEN a % 5 = 1 THEN now() - interval '10 minutes' END,
               CASE WHEN a % 5 = 1 THEN 'cursor-' || a END,
               CASE WHEN a % 5 = 1 THEN (1600000000000000000 + CAST(:n AS bigint) * 4000)::text END,
               CASE WHEN a % 5 = 1 THEN 3 ELSE 0 END,
               now() - make_interval(mins => 15 * (a + 1)),
               CASE WHEN a % 7 = 2 THEN 'failed' ELSE 'succeeded' END,
               CASE WHEN a % 7 = 2 THEN 'service_unavailable' END
        FROM generate_series(0, :a - 1) AS a"""), p)
    # One page row per 100 events of an account, and a job row closing every fifth page (one run).
    conn.execute(text("""
        INSERT INTO dm_audit.dm_sync_audit
            (run_id, account_key, provider, stream_key, endpoint, row_kind, page_seq, cursor_in, cursor_out,
             has_next_page, http_status, requests, events_received, events_inserted, message_ids,
             media_refs, newest_id, oldest_id, job_status, error_code, gap_suspected, started_at, finished_at)
        SELECT 'bench-run-' || a || '-' || (p / 5),
               'acct-' || lpad(a::text, 2, '0'), 'x', 'dm_events', '/2/dm_events',
               CASE WHEN p % 5 = 4 THEN 'job' ELSE 'page' END,
               CASE WHEN p % 5 = 4 THEN NULL ELSE p % 5 + 1 END,
               'cursor-' || p, 'cursor-' || (p + 1), true,
               CASE WHEN p % 97 = 5 THEN 503 ELSE 200 END, 1, 100, 100,
               ARRAY[(1600000000000000000 + p)::text], '{}',
               (1600000000000000000 + p)::text, (1600000000000000000 + p)::text,
               CASE WHEN p % 5 <> 4 THEN 'page_committed' WHEN p % 97 = 9 THEN 'failed' ELSE 'succeeded' END,
               CASE WHEN p % 97 = 9 THEN 'service_unavailable' END,
               p % 997 = 0,
               CAST(:end AS timestamptz) - make_interval(secs => (:n / 100 - p) * 60.0),
               CAST(:end AS timestamptz) - make_interval(secs => (:n / 100 - p) * 60.0 - 1)
        FROM generate_series(0, :a - 1) AS a, generate_series(0, :n / 100 / :a) AS p"""), p)


def sample_params(conn: Connection) -> dict[str, Any]:
    """Values for the docs' psql variables, taken from what is loaded: the busiest account, its busiest
    conversation, a recent run, and the last week of data."""
    account = conn.scalar(text("SELECT account_key FROM dm_private.dm_history GROUP BY 1 "
                               "ORDER BY count(*) DESC, 1 LIMIT 1"))
    conversation = conn.scalar(text("SELECT conversation_id FROM dm_private.dm_history WHERE account_key = :k "
                                    "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"), {"k": account})
    run_id = conn.scalar(text("SELECT run_id FROM dm_audit.dm_sync_audit WHERE account_key = :k "
                              "AND row_kind = 'page' ORDER BY audit_id DESC LIMIT 1"), {"k": account})
    last = conn.scalar(text("SELECT max(created_at) FROM dm_private.dm_history"))
    until = (last.date() if last else date.today()).toordinal() + 1
    return {"account_key": account, "conversation_id": conversation, "run_id": run_id,
            "since": date.fromordinal(until - 7), "until": date.fromordinal(until)}


@dataclass(frozen=True)
class PlanReport:
    plan: dict[str, Any]
    indexes: list[str]           # "index name (node type)" for every index read anywhere in the plan
    seq_scanned: list[str]       # relations read by a sequential scan
    execution_ms: float | None
    rows: int

    @property
    def seq_scans_big_table(self) -> bool:
        return bool(BIG_TABLES & set(self.seq_scanned))


def explain(conn: Connection, query: DocQuery, params: dict[str, Any], analyze: bool = True) -> PlanReport:
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    raw = conn.execute(text(f"EXPLAIN ({options}) {query.bindable()}"), params).scalar_one()
    doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    indexes: list[str] = []
    seqs: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") in INDEX_NODES and node.get("Index Name"):
            indexes.append(f"{node['Index Name']} ({node['Node Type']})")
        if node.get("Node Type") == "Seq Scan":
            seqs.append(node.get("Relation Name", "?"))
        for child in node.get("Plans", ()):
            walk(child)

    walk(doc["Plan"])
    return PlanReport(doc["Plan"], indexes, seqs, doc.get("Execution Time"), int(doc["Plan"].get("Actual Rows", 0)))


def plan_text(conn: Connection, query: DocQuery, params: dict[str, Any]) -> str:
    rows = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {query.bindable()}"), params).scalars().all()
    return "\n".join(rows)
