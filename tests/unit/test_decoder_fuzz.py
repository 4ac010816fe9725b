"""Hypothesis over JSON shapes: whatever a provider sends, each decoder returns a page (its events with
ASCII numeric IDs, its cursor a string or None) or raises a typed error — never anything else, which
would escape the engine as a traceback."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dm_pipeline.errors import DmPipelineError
from dm_pipeline.providers import getxapi, x_api, xquik
from dm_pipeline.providers.base import decode_json

ME, PEER = "1000000000000000001", "2000000000000000002"
ASCII_ID = re.compile(r"[0-9]{1,19}", re.ASCII)

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=30),
                    st.sampled_from(["²³", "١٢٣٤", "123", "1" * 20, "", "\x00", "2026-01-01T00:00:00Z"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=20)
KEYS = ["id", "event_type", "text", "created_at", "createdAt", "sender_id", "senderId", "receiverId",
        "recipientId", "dm_conversation_id", "conversationId", "participant_ids", "attachments",
        "referenced_tweets", "media", "mediaUrl", "shared_tweet", "edit_count", "reply_to_message_id"]
events = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8)
envelope_keys = ["data", "includes", "meta", "errors", "messages", "has_next_page", "next_cursor", "has_more",
                 "conversations", "events", "users"]
side_values = st.one_of(json_values, st.lists(st.one_of(events, json_values), max_size=5),
                        st.fixed_dictionaries({"next_token": json_values, "result_count": json_values,
                                               "users": json_values, "media": json_values,
                                               "tweets": json_values}))
# A valid page of each provider with some of its keys replaced by anything: the decoders' real surface.
VALID = [{"data": [], "includes": {}, "meta": {}}, {"messages": [], "has_next_page": False},
         {"messages": [], "has_more": False, "conversations": [], "events": [], "users": {}}]
bodies = st.one_of(
    json_values,
    st.builds(lambda base, over: {**base, **over}, st.sampled_from(VALID),
              st.dictionaries(st.sampled_from(envelope_keys), side_values, min_size=1, max_size=4)))


def _decoders() -> list[Any]:
    return [lambda b: x_api.parse_page(b, ME, "dm_events"), lambda b: xquik.parse_history(b, ME, PEER),
            getxapi.parse_list]


def _check(body: Any) -> None:
    for decode in _decoders():
        try:
            out = decode(body)
        except DmPipelineError:
            continue
        page_events = out[0] if isinstance(out, tuple) else out.events
        cursor = out[1] if isinstance(out, tuple) else out.next_cursor
        assert all(ASCII_ID.fullmatch(e.message_id) for e in page_events)
        assert cursor is None or isinstance(cursor, str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
@example({"messages": [], "events": 5})
@example({"messages": [], "conversations": 3, "users": 7})
@example({"data": [], "includes": {"users": 5, "media": "x", "tweets": 1}})
def test_any_json_shape_is_a_page_or_a_typed_error(body: Any) -> None:
    _check(body)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, min_size=1, max_size=5))
def test_any_event_shape_inside_a_valid_page_is_stored_or_quarantined(items: list[dict[str, Any]]) -> None:
    for body in ({"data": items, "meta": {}}, {"messages": items, "has_next_page": False},
                 {"messages": items, "has_more": False}):
        _check(body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_json_or_a_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_json(raw)


def test_nesting_beyond_any_recursion_limit_is_a_value_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    try:
        decode_json(deep)
    except ValueError:
        return
    raise AssertionError("a 100,000-level document decoded")
