"""The peer benchmark: dlt (`dlt[postgres]`, merge on the event ID) loading the same simulator events into
Postgres, in its own process so its peak RSS is its own. Needs the `bench` extra (`pip install -e '.[bench]'`).

    python -m benchmarks.dlt_child --db URL --sim URL --user-id ID --token TOKEN

Rows are the same normalized rows dm_pipeline stores (the same pure normalizer), paged from the same
simulator over loopback HTTP, 100 per page; dlt extracts, normalizes and merges them (`write_disposition=
"merge"`, `primary_key="message_id"`). Prints one JSON line: elapsed_s, rows, peak_rss_mb.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
from sqlalchemy import make_url

from benchmarks.common import child_arguments
from benchmarks.pipeline_child import peak_rss_mb
from dm_pipeline.providers import x_api

JSON_COLUMNS = ("participant_ids", "media", "referenced_tweets", "raw", "flags")


def events(sim: str, user_id: str, token: str) -> Iterator[list[dict[str, Any]]]:
    params = {"dm_event.fields": x_api.DM_EVENT_FIELDS, "expansions": x_api.EXPANSIONS,
              "media.fields": x_api.MEDIA_FIELDS, "user.fields": x_api.USER_FIELDS,
              "tweet.fields": x_api.TWEET_FIELDS, "max_results": "100"}
    cursor: str | None = None
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        while True:
            query = {**params, **({"pagination_token": cursor} if cursor else {})}
            body = http.get(f"{sim}/2/dm_events", params=query).json()
            rows, cursor, _, _ = x_api.parse_page(body, user_id, "dm_events")
            yield [{"account_key": "bench-dlt", "message_id": e.message_id, "provider": "x",
                    "stream_key": "dm_events", "conversation_id": e.conversation_id, "event_type": e.event_type,
                    "sender_id": e.sender_id, "recipient_id": e.recipient_id,
                    "participant_ids": list(e.participant_ids), "created_at": e.created_at, "text": e.text,
                    "media": e.media, "referenced_tweets": e.referenced_tweets, "edit_count": e.edit_count,
                    "raw": e.raw, "sanitized": e.sanitized, "flags": list(e.flags),
                    "content_hash": e.content_hash} for e in rows]
            if not cursor:
                return


def main() -> None:
    parser = child_arguments(__doc__.splitlines()[0] if __doc__ else "")
    args = parser.parse_args()
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt

    url = make_url(args.db)
    # dlt wants a password even under trust auth (docs/architecture.md §13); the socket directory goes in `host`.
    credentials = (f"postgresql://{url.username or 'postgres'}:unused@localhost/{url.database}"
                   f"?host={url.query.get('host', '')}")
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = dlt.pipeline(pipeline_name="bench_dlt", pipelines_dir=tmp, dataset_name="dlt_dm",
                                destination=dlt.destinations.postgres(credentials=credentials))
        resource = dlt.resource(events(args.sim, args.user_id, args.token), name="dm_history",
                                write_disposition="merge", primary_key="message_id",
                                columns={c: {"data_type": "json"} for c in JSON_COLUMNS})
        t0 = time.perf_counter()
        info = pipeline.run(resource)
        elapsed = time.perf_counter() - t0
        info.raise_on_failed_jobs()
        rows = int(pipeline.last_trace.last_normalize_info.row_counts.get("dm_history", 0))
    print(json.dumps({"elapsed_s": elapsed, "rows": rows, "peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


if __name__ == "__main__":
    main()
