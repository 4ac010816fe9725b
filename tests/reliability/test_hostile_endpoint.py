"""Every row of issue 17's table, as a new user met it: a hostile X endpoint over a real socket, beside a
normal account in the same run. Each hostile answer ends the hostile account typed, with a job audit row
(or a quarantined event and no malformed ID stored), no traceback, and the normal account synced in full.
A body that trickles is cut at the request deadline (never retried; the account's other stream skipped)."""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, Provider, StreamStatus
from dm_pipeline.runner import sync_accounts
from dm_pipeline.sync import RunLimits
from tests.conftest import sim_account
from tests.integration.helpers import assert_equals_truth

DEADLINE_S = 2.0
ME, PEER = "1000000000000000001", "2000000000000000002"
CONVERSATION = f"{ME}-{PEER}"


def _event(mid: str) -> dict[str, object]:
    return {"id": mid, "event_type": "MessageCreate", "text": "hi", "sender_id": PEER,
            "dm_conversation_id": CONVERSATION, "created_at": "2026-11-01T00:00:00.000Z"}


def _page(events: list[object], next_token: str | None = None) -> bytes:
    meta: dict[str, object] = {"result_count": len(events)}
    if next_token is not None:
        meta["next_token"] = next_token
    return json.dumps({"data": events, "meta": meta}).encode()


GOOD = "1900000000000000001"
# row of the table -> (status line, body or None for the streamed/trickled ones)
BODIES: dict[str, tuple[bytes, bytes | None]] = {
    "nested_5000_levels": (b"200 OK", _page([_event(GOOD)])[:-1] + b', "deep": ' + b"[" * 5000 + b"]" * 5000
                           + b"}"),
    "superscript_digit_id": (b"200 OK", _page([_event(GOOD), _event("²³")])),
    "arabic_indic_digit_id": (b"200 OK", _page([_event(GOOD), _event("١٢٣٤")])),
    "cursor_nul_and_surrogate": (b"200 OK", _page([_event(GOOD)], "abc\x00def\ud800")),
    "cursor_of_200_kb": (b"200 OK", _page([_event(GOOD)], "c" * 200_000)),
    "problem_with_control_chars": (b"403 Forbidden", json.dumps({
        "type": "https://api.twitter.com/2/problems/\x01\x07" + "a" * 5000, "title": "\x1b[31m" + "t" * 5000,
        "status": 403}).encode()),
    "body_of_120_mb": (b"200 OK", None),
    "trickle_body": (b"200 OK", None),
    "trickle_headers": (b"200 OK", None),
}
# What the hostile account's inbox ends as: a typed failure code, or "quarantined" (stored without the bad ID).
EXPECT = {"nested_5000_levels": "malformed_response", "superscript_digit_id": "quarantined",
          "arabic_indic_digit_id": "quarantined", "cursor_nul_and_surrogate": "malformed_response",
          "cursor_of_200_kb": "malformed_response", "problem_with_control_chars": "typed",
          "body_of_120_mb": "response_too_large", "trickle_body": "request_deadline",
          "trickle_headers": "request_deadline"}


def _answer(conn: socket.socket, mode: str, stop: threading.Event) -> None:
    status, body = BODIES[mode]
    with conn:
        try:
            conn.recv(65536)
            if mode == "trickle_headers":
                payload = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
            elif mode == "trickle_body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                payload = b'{"data": [' + b" " * 99_990
            elif mode == "body_of_120_mb":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(120 << 20).encode() + b"\r\n\r\n" + b'{"data": [')
                chunk = b" " * (1 << 20)
                for _ in range(120):
                    if stop.is_set():
                        return
                    conn.sendall(chunk)
                return
            else:
                assert body is not None
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                return
            for byte in payload:  # the behaviour under test: one byte every 0.5 s, forever in practice
                if stop.wait(0.5):
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            return


def _serve(listener: socket.socket, mode: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_answer, args=(conn, mode, stop), daemon=True).start()


@pytest.fixture(params=list(BODIES))
def hostile(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    threading.Thread(target=_serve, args=(listener, request.param, stop), daemon=True).start()
    yield request.param, f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_hostile_endpoint_ends_typed_and_the_other_account_syncs(
        engine, sim, hostile, monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    mode, url = hostile
    normal = sim_account(sim, sim.world.accounts()[0], monkeypatch, key="normal")
    monkeypatch.setenv("DM_TEST_HOSTILE_TOKEN", "t")
    bad = Account(key="hostile", provider=Provider.X, user_id=ME, base_url=url,
                  token_env="DM_TEST_HOSTILE_TOKEN", conversation_ids=(CONVERSATION,))
    results = sync_accounts(engine, [normal, bad], f"hostile-{uuid.uuid4()}", RunLimits(),
                            policy=lambda a: RetryPolicy(request_deadline_s=DEADLINE_S, sleep=lambda s: None))
    by_key = {r.account_key: r for r in results}
    assert by_key["normal"].status is StreamStatus.SUCCEEDED
    assert_equals_truth(engine, "normal", sim.world.truth(normal.user_id))
    assert "Traceback" not in capfd.readouterr().err
    inbox = by_key["hostile"].streams[0]
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT stream_key, job_status, error_code FROM dm_audit.dm_sync_audit "
                                 "WHERE account_key = 'hostile' AND row_kind = 'job' ORDER BY audit_id")).all()
        stored = set(conn.scalars(text("SELECT message_id FROM dm_private.dm_history WHERE account_key = 'hostile'")))
        quarantined = set(conn.execute(text("SELECT stream_key, error_code FROM dm_private.dm_quarantine "
                                            "WHERE account_key = 'hostile'")).all())
    assert jobs and jobs[0].stream_key == "dm_events"
    assert all(re.fullmatch(r"[0-9]{1,19}", m) for m in stored)          # no malformed ID is ever stored
    expected = EXPECT[mode]
    if expected == "quarantined":
        # the endpoint answers the conversation route with the same page: quarantined once per stream
        assert inbox.status is StreamStatus.SUCCEEDED and stored == {GOOD}
        assert quarantined == {("dm_events", "invalid_id"), (f"conversation:{CONVERSATION}", "invalid_id")}
    else:
        code = inbox.error_code or ""
        assert inbox.status is StreamStatus.FAILED and re.fullmatch(r"[a-z0-9_]{1,64}", code)
        assert expected == "typed" or code == expected, code
        assert (jobs[0].job_status, jobs[0].error_code) == ("failed", code)
    if expected == "request_deadline":
        # account-level: the conversation stream is skipped, not waited on again; one request in all
        assert inbox.requests == 1 and by_key["hostile"].streams[1].status is StreamStatus.SKIPPED
