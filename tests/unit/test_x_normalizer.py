"""The pure X normalizer: one DmEvent + includes to one row; a page's `errors` (X's partial errors)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import pytest

from dm_pipeline.errors import MalformedResponse, ProviderError
from dm_pipeline.http.policy import Budget, RetryPolicy
from dm_pipeline.models import Account, Provider
from dm_pipeline.providers.base import BadEvent
from dm_pipeline.providers.x_api import INBOX, XClient, normalize_event, parse_page, partial_errors

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


NOT_FOUND = {"value": "42", "detail": "Could not find DM conversation with id: [42].", "title": "Not Found Error",
             "resource_type": "dm_conversation", "parameter": "id", "resource_id": "42",
             "type": "https://api.twitter.com/2/problems/resource-not-found"}


def _failure(body: dict[str, object]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        parse_page(body, ME, "s")
    assert type(info.value) is ProviderError   # a provider failure, not a malformed page
    return info.value


def test_a_200_with_errors_and_no_data_is_a_failure_coded_from_the_problem_type() -> None:
    exc = _failure({"errors": [NOT_FOUND, {**NOT_FOUND, "type": "https://api.twitter.com/2/problems/other"}]})
    assert exc.error_code == "resource_not_found" and exc.http_status == 200
    assert "Could not find" not in str(exc) and "42" not in str(exc)   # detail and value echo the request
    assert str(exc) == "X API 200 with 2 error(s) and no data: resource_not_found"
    # `data` present but empty, or null, is no data either
    assert _failure({"data": [], "errors": [NOT_FOUND], "meta": {"result_count": 0}}).error_code == "resource_not_found"
    assert _failure({"data": None, "errors": [NOT_FOUND]}).error_code == "resource_not_found"


@pytest.mark.parametrize("first", [
    {"title": "Not Found Error"},                                       # no type
    {"type": "about:blank"},                                            # not a problem URI
    {"type": 404}, {"type": None}, {"type": ["https://api.twitter.com/2/problems/x"]},
    {"type": "https://api.twitter.com/2/problems/"},                    # empty slug
    {"type": "https://api.twitter.com/2/problems/\x00\x1b-\u202e\r\n"},  # nothing usable left
    "a string", None, 7,                                                # not an error object
])
def test_an_error_without_a_usable_type_falls_back_to_partial_error(first: object) -> None:
    assert _failure({"errors": [first, NOT_FOUND]}).error_code == "partial_error"


@pytest.mark.parametrize(("ptype", "code"), [
    ("https://api.twitter.com/2/problems/not-authorized-for-resource", "not_authorized_for_resource"),
    ("https://api.twitter.com/2/problems/Resource-Not-Found", "resource_not_found"),
    ("https://api.twitter.com/2/problems/usage-capped?x=1", "usage_capped_x_1"),
    ("https://api.twitter.com/2/problems/bad\x00code\r\nX-Injected: 1", "bad_code_x_injected_1"),
    ("https://api.twitter.com/2/problems/ré-sumé", "r_sum"),
    ("https://api.twitter.com/2/problems/" + "a" * 5000, "a" * 64),
    ("https://api.twitter.com/2/problems/" + "ab-" * 2000, ("ab_" * 22)[:64].rstrip("_")),
])
def test_a_hostile_problem_type_is_sanitized_into_a_short_code(ptype: str, code: str) -> None:
    exc = _failure({"errors": [{"type": ptype}]})
    assert exc.error_code == code
    assert re.fullmatch(r"[a-z0-9_]{1,64}", exc.error_code)
    assert re.fullmatch(r"[ -~]*", str(exc)) and len(str(exc)) < 200   # no control characters, bounded


def test_errors_beside_data_are_counted_and_the_page_is_used() -> None:
    body = {"data": [_event()], "errors": [NOT_FOUND, {"title": "other"}, "junk"],
            "meta": {"result_count": 1, "next_token": "abc" * 6}}
    events, cursor, _, _ = parse_page(body, ME, "s")
    assert len(events) == 1 and cursor == "abc" * 6
    assert partial_errors(body) == 3
    assert partial_errors({"data": [_event()]}) == 0 and partial_errors({"data": [_event()], "errors": []}) == 0
    assert parse_page({"errors": [], "meta": {"result_count": 0}}, ME, "s")[0] == []   # an empty `errors`


@pytest.mark.parametrize("errors", [{"type": "x"}, "oops", 3])
def test_errors_of_the_wrong_type_are_a_malformed_response(errors: object) -> None:
    with pytest.raises(MalformedResponse):
        parse_page({"errors": errors}, ME, "s")
    with pytest.raises(MalformedResponse):
        parse_page({"data": [_event()], "errors": errors}, ME, "s")


def _client(responses: list[httpx.Response]) -> tuple[XClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)

    account = Account(key="x-me", provider=Provider.X, user_id=ME, base_url="https://api.x.com", token_env=None)
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return XClient(account, http, lambda: "t", policy=RetryPolicy(sleep=lambda _: None)), seen


def test_fetch_page_fails_on_errors_without_data_with_every_request_counted() -> None:
    client, seen = _client([httpx.Response(503), httpx.Response(200, json={"errors": [NOT_FOUND]})])
    with pytest.raises(ProviderError) as info:
        client.fetch_page(INBOX, None, Budget.of(60))
    assert (info.value.error_code, info.value.http_status, info.value.requests) == ("resource_not_found", 200, 2)
    assert len(seen) == 2


def test_fetch_page_counts_partial_errors_beside_data() -> None:
    body = {"data": [_event()], "errors": [NOT_FOUND, NOT_FOUND], "meta": {"result_count": 1}}
    client, _ = _client([httpx.Response(200, json=body)])
    page = client.fetch_page(INBOX, None, Budget.of(60))
    assert len(page.events) == 1 and page.partial_errors == 2 and page.requests == 1
    client, _ = _client([httpx.Response(200, json={"data": [_event()]})])
    assert client.fetch_page(INBOX, None, Budget.of(60)).partial_errors == 0
