"""The bad-input corpus: each hostile input, in each provider's shape, is either stored (sanitized and
flagged) or quarantined with a typed error — never silently dropped — and a bad event never loses the
good events of its page. Page-level garbage (HTML, truncated JSON) is a typed failure that writes nothing.

The provider answers through httpx.MockTransport (the HTTP layer under test is the real client); the engine
and Postgres are real."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from dm_pipeline.models import Account, Provider, StreamStatus
from dm_pipeline.providers.getxapi import GetXApiClient
from dm_pipeline.providers.x_api import XClient
from dm_pipeline.providers.xquik import XquikClient
from dm_pipeline.sync import RunLimits, sync_account
from tests.reliability import results

ME, PEER = "1000000000000000001", "2000000000000000002"
GOOD_IDS = ("1900000000000000003", "1900000000000000001")
BAD_ID = "1900000000000000002"
FIELDS = {  # provider -> logical field -> wire name
    "x": {"id": "id", "text": "text", "created": "created_at", "sender": "sender_id", "type": "event_type"},
    "xquik": {"id": "id", "text": "text", "created": "createdAt", "sender": "senderId"},
    "getxapi": {"id": "id", "text": "text", "created": "createdAt", "sender": "senderId"},
}


def event(provider: str, mid: str, **over: Any) -> dict[str, Any]:
    f = FIELDS[provider]
    e: dict[str, Any] = {f["id"]: mid, f["text"]: f"hello {mid[-1]}", f["created"]: "2026-01-10T08:00:00.000Z",
                         f["sender"]: PEER}
    if provider == "x":
        e.update(event_type="MessageCreate", dm_conversation_id=f"{ME}-{PEER}")
    elif provider == "xquik":
        e["receiverId"] = ME
    else:
        e.update(conversationId=f"{ME}-{PEER}", recipientId=ME, edit_count=0)
    for logical, value in over.items():
        key = f.get(logical, logical)
        if value is DROP:
            e.pop(key, None)
        else:
            e[key] = value
    return e


DROP = object()


def body(provider: str, events: list[Any]) -> dict[str, Any]:
    if provider == "x":
        return {"data": events, "meta": {"result_count": len(events)}}
    if provider == "xquik":
        return {"messages": events, "has_next_page": False}
    return {"messages": events, "has_more": False, "conversations": [], "events": [], "users": {}}


@dataclass(frozen=True)
class Case:
    name: str
    bad: Callable[[str], Any] | None            # the bad event in the provider's shape; None: page-level
    expect: str                                  # stored:<flag>|stored_exact|quarantined:<code>|failed:<code>
    raw_body: Callable[[str], bytes] | None = None
    providers: tuple[str, ...] = ("x", "xquik", "getxapi")
    status: int = 200
    streamed_mb: int = 0                         # a body of this many MB, streamed (never held whole)


RTL_ZWJ = "مرحبا بك 👩‍👩‍👧‍👦 שלום 🏳️‍🌈 ‏עברית‏"
CASES = [
    Case("nul_bytes", lambda p: event(p, BAD_ID, text="a\x00b\x00c"), "stored:nul_replaced"),
    Case("lone_surrogate", lambda p: event(p, BAD_ID, text="x\ud800y"), "stored:surrogate_replaced"),
    Case("one_mb_text", lambda p: event(p, BAD_ID, text="é" * 1_000_000), "stored:large_text"),
    Case("rtl_zwj_emoji", lambda p: event(p, BAD_ID, text=RTL_ZWJ), "stored_exact"),
    Case("invalid_timestamp", lambda p: event(p, BAD_ID, created="2026-13-45T99:99:99Z"),
         "stored:invalid_created_at"),
    Case("missing_timestamp", lambda p: event(p, BAD_ID, created=DROP), "stored:missing_created_at"),
    Case("id_as_integer", lambda p: event(p, BAD_ID, id=int(BAD_ID)), "stored:coerced_types"),
    Case("sender_wrong_type", lambda p: event(p, BAD_ID, sender={"id": PEER}), "stored:coerced_types"),
    Case("non_numeric_id", lambda p: event(p, "abc123"), "quarantined:invalid_id"),
    Case("twenty_digit_id", lambda p: event(p, "1" * 20), "quarantined:invalid_id"),
    Case("missing_id", lambda p: event(p, BAD_ID, id=DROP), "quarantined:missing_required_field"),
    Case("missing_event_type", lambda p: event(p, BAD_ID, type=DROP), "quarantined:missing_required_field",
         providers=("x",)),
    Case("text_wrong_type", lambda p: event(p, BAD_ID, text=12345), "quarantined:wrong_type"),
    Case("not_an_object", lambda p: "just a string", "quarantined:not_an_object"),
    Case("html_page", None, "failed:malformed_response",
         raw_body=lambda p: b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    Case("truncated_json", None, "failed:malformed_response",
         raw_body=lambda p: json.dumps(body(p, [event(p, GOOD_IDS[0])])).encode()[:40]),
    Case("json_of_wrong_shape", None, "failed:malformed_response", raw_body=lambda p: b"[1, 2, 3]"),
    # A hostile endpoint (issue 17): each ends typed and audited, never a traceback or a stored bad ID.
    Case("superscript_digit_id", lambda p: event(p, "²³"), "quarantined:invalid_id"),
    Case("arabic_indic_digit_id", lambda p: event(p, "١٢٣٤"), "quarantined:invalid_id"),
    Case("nested_5000_levels", None, "failed:malformed_response",
         raw_body=lambda p: json.dumps(body(p, [event(p, GOOD_IDS[0])]))[:-1].encode()
         + b', "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    Case("cursor_with_nul_and_surrogate", None, "failed:malformed_response",
         raw_body=lambda p: json.dumps(with_cursor(p, "abc\x00def\ud800")).encode()),
    Case("cursor_of_200_kb", None, "failed:malformed_response",
         raw_body=lambda p: json.dumps(with_cursor(p, "c" * 200_000)).encode()),
    Case("problem_with_control_chars", None, "failed_typed", status=403,
         raw_body=lambda p: json.dumps({"type": "https://api.twitter.com/2/problems/\x01\x07" + "a" * 5000,
                                        "title": "\x1b[31m" + "t" * 5000, "error": "\x01" + "b" * 5000,
                                        "status": 403}).encode()),
    Case("body_of_120_mb", None, "failed:response_too_large", streamed_mb=120),
]


def with_cursor(provider: str, cursor: str) -> dict[str, Any]:
    """A good page whose next cursor is `cursor`."""
    page = body(provider, [event(provider, GOOD_IDS[0])])
    if provider == "x":
        page["meta"]["next_token"] = cursor
    elif provider == "xquik":
        page.update(has_next_page=True, next_cursor=cursor)
    else:
        page.update(has_more=True, next_cursor=cursor)
    return page
PARAMS = [(c, p) for c in CASES for p in c.providers]
# What a stored-and-flagged case must have stored, not only its flag.
STORED_VALUE: dict[str, Callable[[Any], bool]] = {
    "nul_bytes": lambda r: r.text == "a\ufffdb\ufffdc" and r.sanitized,
    "lone_surrogate": lambda r: r.text == "x\ufffdy" and r.sanitized,
    "one_mb_text": lambda r: r.text == "é" * 1_000_000,
    "invalid_timestamp": lambda r: r.created_at is None,
    "missing_timestamp": lambda r: r.created_at is None,
    "id_as_integer": lambda r: r.message_id == BAD_ID,
    "sender_wrong_type": lambda r: r.sender_id is None,
}


def client_for(provider: str, transport: httpx.MockTransport) -> Any:
    http = httpx.Client(transport=transport)
    account = Account(key=f"bad-{provider}", provider=Provider(provider), user_id=ME, base_url="http://provider.test",
                      token_env="T", handle="me_handle", partners=(PEER,), auth_token_env="A", tabs=("all",))
    if provider == "x":
        return XClient(account, http, lambda: "token")
    if provider == "xquik":
        return XquikClient(account, http, lambda: "key")
    return GetXApiClient(account, http, lambda: "key", lambda name: "auth")


@pytest.mark.parametrize(("case", "provider"), PARAMS, ids=[f"{p}:{c.name}" for c, p in PARAMS])
def test_bad_input(engine, case: Case, provider: str) -> None:  # type: ignore[no-untyped-def]
    if case.streamed_mb:
        payload = b""
    elif case.raw_body is not None:
        payload = case.raw_body(provider)
    else:
        payload = json.dumps(body(provider, [event(provider, GOOD_IDS[0]), case.bad(provider),  # type: ignore[misc]
                                             event(provider, GOOD_IDS[1])])).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        if case.streamed_mb:
            chunks = (b'{"data": [' if i == 0 else b" " * (1 << 20) for i in range(case.streamed_mb))
            return httpx.Response(200, content=chunks, headers={"content-type": "application/json"})
        return httpx.Response(case.status, content=payload, headers={
            "content-type": "text/html" if payload.startswith(b"<") else "application/json"})

    transport = httpx.MockTransport(answer)
    client = client_for(provider, transport)
    result = sync_account(engine, client, f"bad-{uuid.uuid4()}", RunLimits())
    (stream,) = result.streams
    with engine.connect() as conn:
        rows = {r.message_id: r for r in conn.execute(text(
            "SELECT message_id, flags, text, created_at, sanitized, sender_id FROM dm_private.dm_history"))}
        quarantine = conn.execute(text("SELECT error_code, reason FROM dm_private.dm_quarantine")).all()
        audit = conn.execute(text("SELECT row_kind, events_quarantined, error_code FROM dm_audit.dm_sync_audit "
                                  "ORDER BY audit_id")).all()
    kind, _, detail = case.expect.partition(":")
    if kind == "failed_typed":  # any code, but a clean one, on a job row, nothing stored
        ok = (stream.status is StreamStatus.FAILED and bool(re.fullmatch(r"[a-z0-9_]{1,64}", stream.error_code or ""))
              and not rows and [a.row_kind for a in audit] == ["job"] and audit[0].error_code == stream.error_code)
        observed = f"{stream.status.value}/{stream.error_code!r:.80}, {len(rows)} rows"
    elif kind == "failed":
        ok = (stream.status is StreamStatus.FAILED and stream.error_code == detail and not rows
              and [a.row_kind for a in audit] == ["job"] and audit[0].error_code == detail)
        observed = f"{stream.status.value}/{stream.error_code}, {len(rows)} rows"
    else:
        good_kept = all(g in rows for g in GOOD_IDS) and stream.status is StreamStatus.SUCCEEDED
        if kind == "quarantined":
            ok = good_kept and len(rows) == 2 and [q.error_code for q in quarantine] == [detail] \
                and audit[0].events_quarantined == 1
            observed = f"{len(rows)} rows, quarantine {[q.error_code for q in quarantine]}"
        else:
            bad = rows.get(BAD_ID)
            ok = good_kept and bad is not None and not quarantine
            if ok and kind == "stored_exact":
                ok = bad.text == RTL_ZWJ and not bad.flags
            elif ok:
                ok = detail in bad.flags and STORED_VALUE.get(case.name, lambda r: True)(bad)
            observed = (f"{len(rows)} rows, flags {list(bad.flags) if bad else None}, text "
                        f"{(bad.text or '')[:12]!r}…({len(bad.text or '')}), sender {bad.sender_id if bad else None}")
    results.record("bad_input", f"{provider}:{case.name}", ok, f"expected {case.expect}, got {observed}")
    assert ok, f"expected {case.expect}, got {observed}"
