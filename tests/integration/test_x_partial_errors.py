"""X's partial errors: a 200 response with a top-level `errors` array. Beside data the page is stored and
the errors counted in the audit; without data it is a typed failure of the stream, never an empty page
that would close the pass. The simulator serves no such body, so X is an httpx.MockTransport here;
Postgres is real."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, Provider, StreamStatus, SyncResult
from dm_pipeline.providers.x_api import XClient
from dm_pipeline.sync import RunLimits, sync_account

ME = "1000000000000000001"
OTHER = "2000000000000000002"
CONVERSATION = f"{ME}-{OTHER}"
NOT_FOUND = {"value": "1234567890123456789", "detail": "Could not find DM conversation with id: "
             "[1234567890123456789].", "title": "Not Found Error", "resource_type": "dm_conversation",
             "parameter": "id", "resource_id": "1234567890123456789",
             "type": "https://api.twitter.com/2/problems/resource-not-found"}


def _event(n: int) -> dict[str, Any]:
    return {"id": str(1580000000000000000 + n), "event_type": "MessageCreate", "text": f"secret text {n}",
            "sender_id": OTHER, "dm_conversation_id": CONVERSATION, "created_at": "2026-01-10T08:00:00.000Z"}


class FakeX:
    """Answers each route with the next body queued for it (path -> bodies), counting requests."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.path)
        return httpx.Response(200, json=self.bodies[request.url.path].pop(0))


@pytest.fixture
def fake() -> FakeX:
    return FakeX()


def run(engine: Engine, fake: FakeX, account: Account) -> SyncResult:
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        client = XClient(account, http, lambda: "token", policy=RetryPolicy(sleep=lambda _: None))
        return sync_account(engine, client, f"test-{uuid.uuid4()}", RunLimits())


def audit(engine: Engine, stream_key: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT row_kind, job_status, http_status, requests, error_code, coalesce(partial_errors, 0), "
            "events_inserted "  # partial_errors: NULL means none (migration 0009)
            "FROM dm_audit.dm_sync_audit WHERE stream_key = :s ORDER BY audit_id"), {"s": stream_key})]


def test_errors_beside_data_are_audited_and_errors_alone_fail_the_stream(engine: Engine, fake: FakeX) -> None:
    account = Account(key="x-partial", provider=Provider.X, user_id=ME, base_url="https://api.x.test",
                      token_env=None, conversation_ids=("1234567890123456789",))
    inbox, conversation = "/2/dm_events", "/2/dm_conversations/1234567890123456789/dm_events"
    fake.bodies = {inbox: [{"data": [_event(2), _event(1)], "errors": [NOT_FOUND, NOT_FOUND],
                            "meta": {"result_count": 2}}],
                   conversation: [{"errors": [NOT_FOUND]}]}

    result = run(engine, fake, account)
    by_key = {s.stream_key: s for s in result.streams}
    assert by_key["dm_events"].status is StreamStatus.SUCCEEDED and by_key["dm_events"].inserted == 2
    assert audit(engine, "dm_events")[0] == ("page", "page_committed", 200, 1, None, 2, 2)
    failed = by_key["conversation:1234567890123456789"]
    assert (failed.status, failed.error_code, failed.http_status, failed.requests) == (
        StreamStatus.FAILED, "resource_not_found", 200, 1)
    # No page was committed for it: the failure is the stream's only audit row, and its pass never closed.
    assert audit(engine, "conversation:1234567890123456789") == [
        ("job", "failed", 200, 1, "resource_not_found", 0, 0)]
    with engine.connect() as conn:
        state = conn.execute(text("SELECT high_water_id, last_success_at FROM dm_private.sync_state "
                                  "WHERE stream_key = 'conversation:1234567890123456789'")).first()
        audit_text = " ".join(str(tuple(r)) for r in conn.execute(text("SELECT * FROM dm_audit.dm_sync_audit")))
    assert state is None or (state.high_water_id, state.last_success_at) == (None, None)
    assert "Could not find" not in audit_text and "secret text" not in audit_text
    assert fake.seen == [inbox, conversation]


def test_an_inbox_answering_only_errors_fails_without_closing_the_pass(engine: Engine, fake: FakeX) -> None:
    account = Account(key="x-partial", provider=Provider.X, user_id=ME, base_url="https://api.x.test",
                      token_env=None)
    fake.bodies = {"/2/dm_events": [{"data": [_event(1)], "meta": {"result_count": 1}},
                                    {"errors": [{"type": "https://api.twitter.com/2/problems/" + "\x00x" * 3000}]}]}
    code = ("x_" * 32).rstrip("_")   # NULs become separators, the 6 KB type a code of at most 64 characters
    assert run(engine, fake, account).status is StreamStatus.SUCCEEDED
    (stream,) = run(engine, fake, account).streams
    assert (stream.status, stream.error_code, stream.requests) == (StreamStatus.FAILED, code, 1)
    with engine.connect() as conn:
        high_water = conn.scalar(text("SELECT high_water_id FROM dm_private.sync_state"))
    assert high_water == _event(1)["id"]
    assert audit(engine, "dm_events")[-1] == ("job", "failed", 200, 1, code, 0, 0)
