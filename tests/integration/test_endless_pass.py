"""A pass that cannot finish (endless distinct cursors over the same events) is abandoned after
`max_stale_pass_runs` runs that stored nothing, flagged as a suspected gap, and newer messages get through;
a legitimately long backfill, which stores something every run, is never abandoned."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from sqlalchemy import Engine, text

from dm_pipeline.models import Account, Provider, StreamStatus
from dm_pipeline.providers.x_api import XClient
from dm_pipeline.sync import RunLimits, sync_account

ME, PEER = "1000000000000000001", "2000000000000000002"
LIMITS = RunLimits(max_pages=3, max_stale_pass_runs=2, write_ahead=0)


def _event(mid: int) -> dict[str, Any]:
    return {"id": str(mid), "event_type": "MessageCreate", "text": f"m{mid}", "sender_id": PEER,
            "dm_conversation_id": f"{ME}-{PEER}", "created_at": "2026-11-01T00:00:00.000Z"}


class EndlessX:
    """Page 1 is the newest events; every page after it repeats the same old events with a new cursor."""

    def __init__(self) -> None:
        self.newest = 1900000000000000100
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        token = request.url.params.get("pagination_token")
        if token is None:
            data = [_event(self.newest - i) for i in range(3)]
        else:
            data = [_event(1800000000000000002), _event(1800000000000000001)]
        body = {"data": data, "meta": {"result_count": len(data), "next_token": f"c{self.requests}"}}
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def _run(engine: Engine, provider: EndlessX) -> Any:
    account = Account(key="endless", provider=Provider.X, user_id=ME, base_url="http://provider.test",
                      token_env="T", page_size=3)
    client = XClient(account, httpx.Client(transport=httpx.MockTransport(provider)), lambda: "token")
    return sync_account(engine, client, f"endless-{uuid.uuid4()}", LIMITS).streams[0]


def test_an_endless_pass_is_abandoned_flagged_and_newer_messages_get_through(engine: Engine) -> None:
    provider = EndlessX()
    first = _run(engine, provider)  # the first pass stores the five events, then parks in the endless tail
    assert first.status is StreamStatus.PARTIAL and first.inserted == 5
    stale = [_run(engine, provider) for _ in range(LIMITS.max_stale_pass_runs)]
    assert all(s.status is StreamStatus.PARTIAL and s.inserted == 0 and not s.gap_suspected for s in stale)
    provider.newest += 10  # new messages arrive at the top
    abandoned = _run(engine, provider)
    assert abandoned.error_code == "pass_abandoned" and abandoned.gap_suspected
    assert abandoned.inserted == 3  # the fresh pass from the top stores what is new
    with engine.connect() as conn:
        stored = set(conn.scalars(text("SELECT message_id FROM dm_private.dm_history")))
        audit = conn.execute(text("SELECT error_code, gap_suspected FROM dm_audit.dm_sync_audit "
                                  "WHERE row_kind = 'job' ORDER BY audit_id DESC LIMIT 1")).one()
    assert {str(provider.newest - i) for i in range(3)} <= stored
    assert tuple(audit) == ("pass_abandoned", True)


def test_a_long_backfill_that_stores_every_run_is_never_abandoned(engine: Engine) -> None:
    class LongX(EndlessX):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            self.requests += 1
            token = request.url.params.get("pagination_token")
            page = int(token[1:]) if token else 0
            data = [_event(1900000000000000000 - 3 * page - i) for i in range(3)]
            more = page < 20
            body = {"data": data, "meta": {"result_count": 3, **({"next_token": f"p{page + 1}"} if more else {})}}
            return httpx.Response(200, content=json.dumps(body).encode(),
                                  headers={"content-type": "application/json"})

    provider = LongX()
    results = [_run(engine, provider) for _ in range(8)]
    assert all(r.error_code is None for r in results)
    assert results[-1].status is StreamStatus.SUCCEEDED
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM dm_private.dm_history")) == 63
