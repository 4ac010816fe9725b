"""The fast paths of docs/performance.md return exactly what the slow ones did."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from dm_pipeline.db import writes
from dm_pipeline.db.tables import dm_history
from dm_pipeline.providers.base import _sanitize, content_hash, decode_json, sanitize
from dm_pipeline.providers.x_api import parse_page
from dm_pipeline.simulator import World


def _stdlib_hash(content: object) -> str:
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_content_hash_is_the_canonical_stdlib_json_for_every_simulated_event() -> None:
    world = World(seed=5, accounts=2, events_per_account=400, control_chars=True)
    for account in world.accounts():
        for event in world.truth(account):
            content = {"event": event, "media": [{"é": 1, "a": [None, True]}], "tweets": None}
            assert content_hash(content) == _stdlib_hash(content)


def test_sanitize_fast_path_agrees_with_the_recursive_walk() -> None:
    cases = [
        {"text": "clean 👍🏽 \u2028 text", "n": [1, {"k": "v"}]},
        {"text": "a\x00b", "list": ["ok", "x\ud800"]},
        {"text": "a literal \\u0000 is not a NUL"},
        {"\x00key": "v"},
        ["plain", "\udfff"],
        {"big": 2**70},                       # orjson refuses: the walk decides
    ]
    for value in cases:
        assert sanitize(value) == _sanitize(value)
    assert sanitize({"text": "a\x00b\ud800"}) == ({"text": "a\ufffdb\ufffd"}, True)


def test_decode_json_takes_what_orjson_refuses() -> None:
    assert decode_json(b'{"t":"a\\ud800"}') == {"t": "a\ud800"}
    assert decode_json(b'{"t":"\\u00e9"}') == {"t": "é"}


def test_the_page_json_carries_every_column_the_upsert_must_write() -> None:
    read = {c for c, _ in writes._EVENT_COLUMNS}
    per_page = {"account_key", "provider", "stream_key", "first_seen_run_id", "last_changed_run_id"}
    server_defaults = {"first_seen_at", "last_changed_at"}
    judged = {"deleted_upstream_at"}  # written by a completed walk's judgement (db/deletions.py), not the upsert
    assert read | per_page | server_defaults | judged == set(dm_history.c.keys())
    assert set(writes._CHANGING) <= read | {"last_changed_run_id"}
    world = World(seed=5, accounts=1, events_per_account=20)
    events, _, _, _ = parse_page({"data": world.truth(world.accounts()[0])}, world.accounts()[0], "dm_events")
    rows = json.loads(writes.page_json(events))
    assert all(set(r) == read for r in rows) and len(rows) == len(events)


def test_page_json_falls_back_to_the_stdlib_for_what_orjson_refuses() -> None:
    world = World(seed=5, accounts=1, events_per_account=3)
    events, _, _, _ = parse_page({"data": world.truth(world.accounts()[0])}, world.accounts()[0], "dm_events")
    huge = replace(events[0], raw={**events[0].raw, "n": 2**70})
    row = json.loads(writes.page_json([huge]))[0]
    assert row["raw"]["n"] == 2**70
    assert row["created_at"] == huge.created_at.isoformat()  # type: ignore[union-attr]
