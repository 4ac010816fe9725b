"""The pure X normalizer: one DmEvent + includes to one row."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dm_pipeline.providers.base import BadEvent
from dm_pipeline.providers.x_api import normalize_event, parse_page

ME = "1000000000000000001"
OTHER = "2000000000000000002"


def _event(**over: object) -> dict[str, object]:
    event: dict[str, object] = {
        "id": "1580000000000000001", "event_type": "MessageCreate", "text": "hello 👩‍👩‍👧 שלום",
        "sender_id": OTHER, "dm_conversation_id": f"{ME}-{OTHER}", "created_at": "2026-01-10T08:00:00.123Z",
    }
    event.update(over)
    return event


def test_message_create_is_normalized() -> None:
    row = normalize_event(_event(attachments={"media_keys": ["3_1"]}),
                          {"media": [{"media_key": "3_1", "type": "photo", "url": "https://pbs/x.jpg"}]},
                          ME, "dm_events")
    assert row.message_id == "1580000000000000001" and row.event_type == "MessageCreate"
    assert row.recipient_id == ME and row.sender_id == OTHER
    assert row.created_at == datetime(2026, 1, 10, 8, 0, 0, 123000, tzinfo=UTC)
    assert row.media == [{"media_key": "3_1", "type": "photo", "url": "https://pbs/x.jpg"}]
    assert row.text == "hello 👩‍👩‍👧 שלום" and not row.sanitized


def test_shared_tweets_are_joined_from_includes() -> None:
    row = normalize_event(_event(referenced_tweets=[{"id": "42"}]),
                          {"tweets": [{"id": "42", "text": "a tweet", "author_id": "7"}]}, ME, "s")
    assert row.referenced_tweets == [{"id": "42", "text": "a tweet", "author_id": "7"}]


def test_participants_join_has_participants_and_no_text() -> None:
    row = normalize_event({"id": "15", "event_type": "ParticipantsJoin", "participant_ids": ["7", "8"],
                           "dm_conversation_id": "1234567890123456789", "sender_id": "9"}, {}, ME, "s")
    assert row.participant_ids == ("7", "8") and row.text is None and row.recipient_id is None


def test_nul_and_lone_surrogates_are_replaced_and_flagged() -> None:
    row = normalize_event(_event(text="a\x00b\ud800c"), {}, ME, "s")
    assert row.text == "a\ufffdb\ufffdc" and row.sanitized
    assert row.flags == ("nul_replaced", "surrogate_replaced")
    assert "\x00" not in str(row.raw)


def test_content_hash_changes_with_content_only() -> None:
    a = normalize_event(_event(), {}, ME, "s")
    b = normalize_event(_event(), {}, ME, "s")
    c = normalize_event(_event(text="edited"), {}, ME, "s")
    assert a.content_hash == b.content_hash != c.content_hash


@pytest.mark.parametrize("bad", [{"id": None}, {"id": "abc"}, {"event_type": None}])
def test_an_event_without_numeric_id_or_type_is_a_bad_event(bad: dict[str, object]) -> None:
    with pytest.raises(BadEvent):
        normalize_event(_event(**bad), {}, ME, "s")


def test_an_empty_page_omits_data() -> None:
    events, cursor, users, quarantined = parse_page({"meta": {"result_count": 0}}, ME, "s")
    assert events == [] and cursor is None and users == [] and quarantined == []


def test_a_page_with_a_next_token() -> None:
    events, cursor, _, _ = parse_page({"data": [_event()], "meta": {"result_count": 1, "next_token": "abc" * 6}},
                                   ME, "s")
    assert len(events) == 1 and cursor == "abc" * 6
