"""Messages deleted upstream: judged when a full walk of a stream (its first pass, or a sweep) commits its
last page, in that page's transaction.

A complete walk of a full-history stream returns every event the stream still has. So every stored event
of the stream's scope that was stored before the walk began and is not among the IDs the walk's pages
returned (their audit rows, across runs when the walk was resumed: `message_ids`, what a page wrote, and
`unchanged_ids`, the rest it saw, which only a walk's pages record) is gone upstream: it is marked
(`deleted_upstream_at`), or under `erase` its private content is deleted too. A marked event the walk did
return is restored. Nothing is judged before the last page commits, so a crash mid-sweep marks nothing;
events stored after the walk began (the inbox syncing meanwhile) are never judged by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

POLICIES = ("keep", "mark", "erase")

# The walk's start: the pass row's pass_started_at, or, when the pass began in this very transaction (its
# state row is written after the pages), this transaction's now() — the time its pages and rows carry.
_JUDGE_TEMPLATE = """
WITH pass AS (
    SELECT coalesce((SELECT pass_started_at FROM dm_private.sync_state
                     WHERE account_key = %(account_key)s AND stream_key = %(stream_key)s), now()) AS started
), seen AS (
    SELECT DISTINCT unnest(a.message_ids || a.unchanged_ids) AS id
    FROM dm_audit.dm_sync_audit AS a, pass
    WHERE a.account_key = %(account_key)s AND a.stream_key = %(stream_key)s AND a.row_kind = 'page'
      AND a.finished_at >= pass.started
), scope AS (
    SELECT h.message_id, h.deleted_upstream_at IS NOT NULL AS was_marked,
           EXISTS (SELECT FROM seen WHERE seen.id = h.message_id) AS returned
    FROM dm_private.dm_history AS h, pass
    WHERE h.account_key = %(account_key)s AND h.first_seen_at < pass.started
      AND h.{scope} = %(scope)s
), marked AS (
    UPDATE dm_private.dm_history AS h
    SET deleted_upstream_at = now(),
        text = CASE WHEN %(erase)s THEN NULL ELSE h.text END,
        media = CASE WHEN %(erase)s THEN NULL ELSE h.media END,
        referenced_tweets = CASE WHEN %(erase)s THEN NULL ELSE h.referenced_tweets END,
        raw = CASE WHEN %(erase)s THEN jsonb_build_object('erased', 'deleted upstream') ELSE h.raw END,
        -- an erased row's hash no longer describes it: if the event comes back, its content is written again
        content_hash = CASE WHEN %(erase)s THEN 'erased' ELSE h.content_hash END,
        flags = CASE WHEN %(erase)s THEN array_append(array_remove(h.flags, 'erased_upstream_delete'),
                                                      'erased_upstream_delete') ELSE h.flags END
    FROM scope
    WHERE h.account_key = %(account_key)s AND h.message_id = scope.message_id
      AND NOT scope.was_marked AND NOT scope.returned
    RETURNING 1
), restored AS (
    UPDATE dm_private.dm_history AS h SET deleted_upstream_at = NULL
    FROM scope
    WHERE h.account_key = %(account_key)s AND h.message_id = scope.message_id AND scope.was_marked AND scope.returned
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM restored)"""
# One statement per scope column, not a CASE on a parameter: prepared once per connection, each keeps the
# generic plan of its own index (a CASE folds only in a custom plan, re-planned at every walk's end: 2,000
# plans of ~1-2 ms each in the first backfill of 1,000 accounts, benchmarks/fleet_tick.py).
_JUDGE = {column: _JUDGE_TEMPLATE.replace("{scope}", column) for column in ("conversation_id", "stream_key")}

# The walk's last audit row was inserted by this transaction (finished_at = its now()): found through the
# (account, stream, time) index of its partition; the audit has no index on audit_id alone. 0 is NULL there.
_COUNT = """
UPDATE dm_audit.dm_sync_audit SET events_marked_deleted = nullif(%(marked)s, 0),
                                  events_restored = nullif(%(restored)s, 0), events_erased = nullif(%(erased)s, 0)
WHERE account_key = %(account_key)s AND stream_key = %(stream_key)s AND finished_at = now()
  AND audit_id = %(audit_id)s"""


@dataclass
class SweepJudge:
    """Attached to the page that completes a full walk; the writer fills `result` (marked, restored)."""

    scope: tuple[str, str]               # ("conversation_id", id) or ("stream_key", key)
    erase: bool
    result: tuple[int, int] | None = field(default=None, compare=False)


def judge(conn: Connection, account_key: str, stream_key: str, judge: SweepJudge, audit_id: int | None) -> None:
    """Mark, erase and restore, then count them on the walk's last audit row. Runs inside the page commit."""
    pg = conn.connection.driver_connection
    assert pg is not None
    column, value = judge.scope
    params: dict[str, Any] = {"account_key": account_key, "stream_key": stream_key, "scope": value,
                              "erase": judge.erase}
    with pg.cursor() as cur:
        cur.execute(_JUDGE[column], params, prepare=True)
        row = cur.fetchone()
        marked, restored = (int(row[0]), int(row[1])) if row else (0, 0)
        if audit_id is not None and (marked or restored):
            cur.execute(_COUNT, {"marked": marked, "restored": restored, "erased": marked if judge.erase else 0,
                                 "audit_id": audit_id, "account_key": account_key, "stream_key": stream_key})
    judge.result = (marked, restored)
