"""`dm-pipeline export`: an account's messages as Xquik's redacted JSON Lines handoff (docs/architecture.md §11).

One record per message (`MessageCreate`; joins and leaves are not messages): message_id, conversation_id,
sender_id, receiver_id, created_at and, only when the message has media, media_url. Never text. Ordered by
(created_at, message_id as an integer) so two exports of the same data are byte-identical. Rows stream
through a server-side cursor (constant memory) into a temporary file that is renamed over the target only
when complete, so a reader never sees half an export and a failed one leaves the old file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from dm_pipeline.errors import ConfigError

BATCH = 1000

# The first media item's URL: photos (and Xquik, GetXAPI) carry `url`; X videos and GIFs their first variant.
_SELECT = text("""
    SELECT message_id, conversation_id, sender_id, recipient_id, created_at,
           coalesce(media -> 0 ->> 'url', media -> 0 -> 'variants' -> 0 ->> 'url',
                    media -> 0 ->> 'preview_image_url') AS media_url
    FROM dm_private.dm_history
    WHERE account_key = :account AND event_type = 'MessageCreate'
      AND deleted_upstream_at IS NULL  -- deleted upstream (mark, erase): not handed off, like the analyst views
    ORDER BY created_at NULLS LAST, message_id::numeric""")

Progress = Callable[[int], None]


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(row: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "message_id": row.message_id, "conversation_id": row.conversation_id, "sender_id": row.sender_id,
        "receiver_id": row.recipient_id, "created_at": _iso(row.created_at),
    }
    if row.media_url:
        rec["media_url"] = row.media_url
    return rec


def iter_records(conn: Connection, account_key: str) -> Iterator[dict[str, Any]]:
    streaming = conn.execution_options(stream_results=True, yield_per=BATCH)
    for row in streaming.execute(_SELECT, {"account": account_key}):
        yield record(row)


def account_known(conn: Connection, account_key: str) -> bool:
    return bool(conn.scalar(text(
        "SELECT EXISTS (SELECT FROM dm_private.sync_state WHERE account_key = :k) "
        "OR EXISTS (SELECT FROM dm_private.dm_history WHERE account_key = :k)"), {"k": account_key}))


def export_account(engine: Engine, account_key: str, out: Path, progress: Progress | None = None) -> int:
    """Write the handoff of `account_key` to `out` atomically; returns the number of records.
    `progress(n)` is called after every BATCH records (and may raise to abort: `out` is then untouched)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh, engine.connect() as conn:
            if not account_known(conn, account_key):
                raise ConfigError(f"account {account_key!r} has nothing in the warehouse (never synced, or "
                                  "erased). Check the key: `dm-pipeline accounts list`")
            for rec in iter_records(conn, account_key):
                fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
                if progress is not None and count % BATCH == 0:
                    progress(count)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)  # atomic on one filesystem: the temp file sits beside the target
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
