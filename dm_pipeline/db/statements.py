"""The fixed statements of the page commit and their parameter builders (db/writes.py runs them).

Every statement text is built once, at import, and never changes, so each is prepared server-side once per
connection; the parameter builders are what the sync runs per page (`prepare_page` on the fetching thread,
the rest on the writer thread): see docs/performance.md before changing either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.dialects import postgresql

from dm_pipeline.db.tables import dm_history, dm_sync_audit, dm_users, sync_state
from dm_pipeline.models import Account, EventRow, Stream, UserRow

if TYPE_CHECKING:  # writes.py imports this module: its dataclasses are named here for the annotations only
    from dm_pipeline.db.writes import AuditEntry, PageWrite, StreamState


# --- the event upsert: one prepared INSERT ... SELECT FROM json_to_recordset(page) ... ON CONFLICT ---------
# Why (docs/performance.md): a multi-row VALUES statement costs SQLAlchemy ~20 ms of CPU per page of 100 to
# compile (2,100 bind parameters). Here the page travels as ONE json parameter (orjson: ~0.1 ms), Postgres
# expands it in C, and the statement text never changes, so it is prepared once per connection. Measured
# against a binary COPY into an ON COMMIT DELETE ROWS temp table then the same upsert: as fast or faster
# (that table's truncation costs ~0.5 ms at every commit), one round trip instead of three, no session state.

# (column, Postgres type) of the per-event columns, as json_to_recordset reads them from the page's JSON.
# The per-page constants (account, provider, stream, run) are parameters, not repeated 100 times.
_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("message_id", "text"), ("conversation_id", "text"), ("event_type", "text"), ("sender_id", "text"),
    ("recipient_id", "text"), ("participant_ids", "text[]"), ("created_at", "timestamptz"), ("text", "text"),
    ("media", "jsonb"), ("referenced_tweets", "jsonb"), ("reply_to_message_id", "text"), ("edit_count", "int4"),
    ("raw", "jsonb"), ("sanitized", "bool"), ("flags", "text[]"), ("content_hash", "text"),
)
_EVENT_NAMES = ", ".join(c for c, _ in _EVENT_COLUMNS)
_CHANGING = ("conversation_id", "event_type", "sender_id", "recipient_id", "participant_ids", "created_at",
             "text", "media", "referenced_tweets", "reply_to_message_id", "edit_count", "raw", "sanitized",
             "flags", "content_hash", "last_changed_run_id")
# The audit columns of a page or job row that the caller supplies, each cast to its column type (parameters
# in a SELECT list are not typed by the target column the way VALUES parameters are). What a page changed
# (message_ids, media_refs, the counts) comes from its upsert; job rows take message_ids and media_refs from
# their entry (_INSERT_AUDIT).
_AUDIT_PAGE_COLUMNS: tuple[str, ...] = (
    "run_id", "account_key", "provider", "stream_key", "endpoint", "row_kind", "page_seq", "cursor_in",
    "cursor_out", "has_next_page", "http_status", "requests", "events_received", "newest_id", "oldest_id",
    "job_status", "error_code", "gap_suspected", "credits", "events_quarantined", "started_at", "cost",
    "partial_errors", "retry_at", "folded_pages")


def _cast(column: str) -> str:
    return f"%({column})s::{dm_sync_audit.c[column].type.compile(dialect=postgresql.dialect())}"


# One statement per page writes its rows AND its audit row, whose counts come from the upsert itself: one
# round trip instead of two, and the audit can never disagree with what the upsert did. Rows are locked in
# key order within the statement. xmax = 0 only on a freshly inserted tuple; unchanged rows return nothing
# (the WHERE skips them), so the two counts are exact: inserted, and updated in place. (A JSON null reads
# as SQL NULL: `media IS NULL`.)
# The audit row records what the page changed: the IDs written (newest first) and their media, NULL when
# none. What it saw is newest_id, oldest_id and events_received. On a page of a walk (`seen`: every ID it
# returned) the IDs it found unchanged go to unchanged_ids, the deletions judge's evidence. A foldable page
# (`fold`: a one-page pass that closes at the top) that changed nothing writes no audit row at all: its
# figures go to the stream's job row (docs/architecture.md §14).
_UPSERT_PAGE = f"""
WITH written AS (
    INSERT INTO {dm_history.fullname} (account_key, provider, stream_key, first_seen_run_id, last_changed_run_id,
                                       {_EVENT_NAMES})
    SELECT %(account_key)s, %(provider)s, %(stream_key)s, %(run_id)s, %(run_id)s, {_EVENT_NAMES}
    FROM json_to_recordset(%(rows)s::json) AS r({", ".join(f"{c} {t}" for c, t in _EVENT_COLUMNS)})
    ORDER BY message_id
    ON CONFLICT (account_key, message_id) DO UPDATE
    SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _CHANGING)}, last_changed_at = now()
    WHERE {dm_history.name}.content_hash IS DISTINCT FROM EXCLUDED.content_hash
    RETURNING message_id, media, (xmax = 0) AS inserted
), counts AS (
    SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated,
           array_agg(message_id ORDER BY length(message_id) DESC, message_id DESC) AS ids,
           (SELECT array_agg(r.ref) FROM written AS w,
                   jsonb_array_elements(CASE WHEN jsonb_typeof(w.media) = 'array' THEN w.media END) AS m,
                   LATERAL (SELECT coalesce(nullif(m ->> 'url', ''), m ->> 'media_key') AS ref) AS r
            WHERE r.ref IS NOT NULL) AS refs
    FROM written
)
INSERT INTO {dm_sync_audit.fullname} ({", ".join(_AUDIT_PAGE_COLUMNS)}, message_ids, media_refs,
                                       unchanged_ids, events_inserted, events_updated)
SELECT {", ".join(_cast(c) for c in _AUDIT_PAGE_COLUMNS)}, counts.ids, counts.refs,
       nullif(ARRAY(SELECT id FROM unnest(%(seen)s::text[]) AS id
                    WHERE NOT EXISTS (SELECT FROM written AS w WHERE w.message_id = id)), '{{}}'),
       counts.inserted, counts.updated
FROM counts
WHERE NOT %(fold)s::boolean OR counts.inserted + counts.updated > 0
RETURNING events_inserted, events_updated, audit_id"""


def _event_json(e: EventRow) -> dict[str, Any]:
    """One event as json_to_recordset reads it (keys: _EVENT_COLUMNS)."""
    return {"message_id": e.message_id, "conversation_id": e.conversation_id, "event_type": e.event_type,
            "sender_id": e.sender_id, "recipient_id": e.recipient_id, "participant_ids": e.participant_ids,
            "created_at": e.created_at, "text": e.text, "media": e.media, "referenced_tweets": e.referenced_tweets,
            "reply_to_message_id": e.reply_to_message_id, "edit_count": e.edit_count, "raw": e.raw,
            "sanitized": e.sanitized, "flags": e.flags, "content_hash": e.content_hash}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_text(value: Any) -> str:
    """JSON text for a parameter: orjson, or the stdlib for what orjson refuses (ints beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def page_json(events: Iterable[EventRow]) -> str:
    """The page's rows as one JSON array, for json_to_recordset."""
    return _json_text([_event_json(e) for e in events])


# sync_state upsert: one fixed, server-side prepared statement (the optional parts are CASEs on flags), run
# on the transaction's own psycopg connection. Every page commit runs it; building it with SQLAlchemy Core
# cost ~0.5 ms of CPU per call, more than the rest of the page commit's client work.
_UPSERT_STATE = f"""
INSERT INTO {sync_state.fullname} AS s (account_key, stream_key, provider, endpoint, high_water_id, pass_started_at,
    pass_cursor, pass_stop_id, pass_newest_id, pass_pages, pass_sweep, last_status, last_error_code,
    last_success_at, updated_at, history_complete, covered_at, empty_polls, next_poll_at, pass_stale_runs,
    last_sweep_at)
VALUES (%(account_key)s, %(stream_key)s, %(provider)s, %(endpoint)s, %(high_water_id)s,
        CASE WHEN %(pass_open)s THEN now() END, %(pass_cursor)s, %(pass_stop_id)s, %(pass_newest_id)s,
        %(pass_pages)s, %(pass_sweep)s, %(status)s, %(error_code)s, CASE WHEN %(succeeded)s THEN now() END, now(),
        %(history_complete)s, CASE WHEN %(closing)s THEN now() END, %(empty_polls)s, %(next_poll_at)s,
        %(pass_stale_runs)s, CASE WHEN %(swept)s THEN now() END)
ON CONFLICT (account_key, stream_key) DO UPDATE SET
    provider = EXCLUDED.provider, endpoint = EXCLUDED.endpoint, high_water_id = EXCLUDED.high_water_id,
    pass_started_at = CASE WHEN %(pass_open)s THEN coalesce(s.pass_started_at, now()) END,
    pass_cursor = EXCLUDED.pass_cursor, pass_stop_id = EXCLUDED.pass_stop_id,
    pass_newest_id = EXCLUDED.pass_newest_id, pass_pages = EXCLUDED.pass_pages, pass_sweep = EXCLUDED.pass_sweep,
    last_status = CASE WHEN %(set_status)s THEN EXCLUDED.last_status ELSE s.last_status END,
    last_error_code = CASE WHEN %(set_status)s THEN EXCLUDED.last_error_code ELSE s.last_error_code END,
    last_success_at = coalesce(EXCLUDED.last_success_at, s.last_success_at),
    updated_at = now(), history_complete = EXCLUDED.history_complete,
    -- the pass this page closes started at pass_started_at: every event created before then was seen
    covered_at = CASE WHEN %(closing)s THEN coalesce(s.pass_started_at, now()) ELSE s.covered_at END,
    empty_polls = EXCLUDED.empty_polls, next_poll_at = EXCLUDED.next_poll_at,
    pass_stale_runs = EXCLUDED.pass_stale_runs,
    last_sweep_at = CASE WHEN %(swept)s THEN now() ELSE s.last_sweep_at END"""


def _audit_values(account: Account, stream: Stream, entry: AuditEntry) -> dict[str, Any]:
    """The audit row's columns (_AUDIT_PAGE_COLUMNS) for `entry`: page rows and job rows alike. A job row
    leaves the endpoint to sync_state; the rare counters are NULL rather than 0 (narrow rows: §14)."""
    return {
        "run_id": entry.run_id, "account_key": account.key, "provider": account.provider.value,
        "stream_key": stream.key, "endpoint": stream.endpoint if entry.row_kind == "page" else None,
        "row_kind": entry.row_kind, "page_seq": entry.page_seq, "cursor_in": entry.cursor_in,
        "cursor_out": entry.cursor_out, "has_next_page": entry.has_next_page, "http_status": entry.http_status,
        "requests": entry.requests, "events_received": entry.events_received, "newest_id": entry.newest_id,
        "oldest_id": entry.oldest_id, "job_status": entry.job_status, "error_code": entry.error_code,
        "gap_suspected": entry.gap_suspected, "credits": entry.credits or None,
        "events_quarantined": entry.events_quarantined or None, "started_at": entry.started_at,
        "cost": entry.cost, "partial_errors": entry.partial_errors or None, "retry_at": entry.retry_at,
        "folded_pages": entry.folded_pages or None,
    }


_INSERT_AUDIT = (f"INSERT INTO {dm_sync_audit.fullname} ({', '.join(_AUDIT_PAGE_COLUMNS)}, message_ids, "
                 f"media_refs, events_inserted, events_updated) VALUES "
                 f"({', '.join(_cast(c) for c in _AUDIT_PAGE_COLUMNS)}, %(message_ids)s::text[], "
                 "%(media_refs)s::text[], %(events_inserted)s, %(events_updated)s)")


def _nonempty_array(values: Sequence[str]) -> str | None:
    return _text_array(values) if values else None


# Every X page carries the profiles of its senders: the same few users, page after page. Unchanged ones are
# filtered out before the upsert (NOT EXISTS with the same hash), so they are neither written nor even
# row-locked (ON CONFLICT locks a conflicting row even when its WHERE then skips it). Like the events, the
# profiles travel as one json parameter of one prepared statement (SQLAlchemy's multi-row VALUES: ~3 ms).
_UPSERT_USERS = f"""
INSERT INTO {dm_users.fullname} AS u (provider, user_id, username, name, raw, content_hash)
SELECT %(provider)s, n.user_id, n.username, n.name, n.raw, n.content_hash
FROM json_to_recordset(%(users)s::json) AS n(user_id text, username text, name text, raw jsonb, content_hash text)
WHERE NOT EXISTS (SELECT 1 FROM {dm_users.fullname} o WHERE o.provider = %(provider)s AND o.user_id = n.user_id
                  AND o.content_hash = n.content_hash)
ORDER BY n.user_id
ON CONFLICT (provider, user_id) DO UPDATE
SET username = EXCLUDED.username, name = EXCLUDED.name, raw = EXCLUDED.raw, content_hash = EXCLUDED.content_hash,
    updated_at = now()
WHERE u.content_hash IS DISTINCT FROM EXCLUDED.content_hash"""


def _users_param(provider: str, users: Iterable[UserRow]) -> dict[str, Any] | None:
    """The parameters of _UPSERT_USERS, or None when there is nobody. dm_users rows are shared by every
    account of a provider: concurrent commits upsert the same users, and ON CONFLICT locks rows in input
    order, so every writer sorts by user_id or two commits can deadlock (40P01)."""
    latest = {u.user_id: u for u in users}
    if not latest:
        return None
    rows = [{"user_id": u.user_id, "username": u.username, "name": u.name, "raw": u.raw,
             "content_hash": u.content_hash} for u in (latest[k] for k in sorted(latest))]
    return {"provider": provider, "users": _json_text(rows)}


def _page_params(account: Account, stream: Stream, run_id: str, write: PageWrite) -> dict[str, Any]:
    unique = {e.message_id: e for e in write.events}  # a page may repeat an event; ON CONFLICT needs it once
    seen = _text_array(dict.fromkeys(write.audit.message_ids)) if write.evidence else None
    return {**_audit_values(account, stream, write.audit), "run_id": run_id, "rows": page_json(unique.values()),
            "seen": seen, "fold": write.fold}


def _text_array(values: Iterable[str]) -> str:
    """A text[] literal (cast by the statement). psycopg adapts a list of 100 IDs in Python, element by
    element, on the writer thread; this join costs a tenth of that and runs on the fetching thread."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def prepare_page(account: Account, stream: Stream, run_id: str, write: PageWrite) -> PageWrite:
    """`write` with its statement parameters built now. The sync builds them on the fetching thread, which
    waits for the writer anyway, so the writer thread needs the GIL only for the driver: measured with a
    fetching thread beside it, the writer commits a page in 3.8 ms instead of 4.2-4.4."""
    return replace(write, params=_page_params(account, stream, run_id, write))


def _state_params(account: Account, stream: Stream, state: StreamState) -> dict[str, Any]:
    return {"account_key": account.key, "stream_key": stream.key, "provider": account.provider.value,
            "endpoint": stream.endpoint, "high_water_id": state.high_water_id, "pass_open": state.pass_open,
            "pass_cursor": state.pass_cursor, "pass_stop_id": state.pass_stop_id,
            "pass_newest_id": state.pass_newest_id, "pass_pages": state.pass_pages,
            "pass_sweep": state.pass_sweep, "set_status": False, "status": None, "error_code": None,
            "succeeded": False, "history_complete": state.history_complete, "closing": False,
            "empty_polls": state.empty_polls, "next_poll_at": state.next_poll_at,
            "pass_stale_runs": state.pass_stale_runs, "swept": False}
