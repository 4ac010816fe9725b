"""A hostile X endpoint over a real socket, beside a normal account in the same run: a body that trickles
one byte a second, and one that never ends, are cut at the request deadline (never retried), the hostile
account ends typed with a job audit row, and the normal account syncs in full."""

from __future__ import annotations

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


def _serve(listener: socket.socket, mode: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_answer, args=(conn, mode, stop), daemon=True).start()


def _answer(conn: socket.socket, mode: str, stop: threading.Event) -> None:
    with conn:
        try:
            conn.recv(65536)
            if mode == "trickle_headers":
                payload = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                payload = b'{"data": [' + b" " * 99_990
            for byte in payload:  # the behaviour under test: one byte every 0.5 s, forever in practice
                if stop.wait(0.5):
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            return


@pytest.fixture(params=["trickle_body", "trickle_headers"])
def hostile(request: pytest.FixtureRequest) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, request.param, stop), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_trickling_endpoint_is_cut_at_the_deadline_and_the_other_account_syncs(
        engine, sim, hostile, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    normal = sim_account(sim, sim.world.accounts()[0], monkeypatch, key="normal")
    monkeypatch.setenv("DM_TEST_HOSTILE_TOKEN", "t")
    bad = Account(key="hostile", provider=Provider.X, user_id="1000000000000000001", base_url=hostile,
                  token_env="DM_TEST_HOSTILE_TOKEN", conversation_ids=("1000000000000000001-2000000000000000002",))
    results = sync_accounts(engine, [normal, bad], f"hostile-{uuid.uuid4()}", RunLimits(),
                            policy=lambda a: RetryPolicy(request_deadline_s=DEADLINE_S, sleep=lambda s: None))
    by_key = {r.account_key: r for r in results}
    assert by_key["normal"].status is StreamStatus.SUCCEEDED
    assert_equals_truth(engine, "normal", sim.world.truth(normal.user_id))
    inbox, conversation = by_key["hostile"].streams
    assert inbox.status is StreamStatus.FAILED and inbox.error_code == "request_deadline" and inbox.requests == 1
    # request_deadline is account-level: the conversation stream is skipped, not waited on again
    assert conversation.status is StreamStatus.SKIPPED and conversation.error_code == "request_deadline"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT stream_key, job_status, error_code FROM dm_audit.dm_sync_audit "
                                 "WHERE account_key = 'hostile' ORDER BY audit_id")).all()
    assert [tuple(r) for r in rows] == [("dm_events", "failed", "request_deadline"),
                                        ("conversation:1000000000000000001-2000000000000000002", "skipped",
                                         "request_deadline")]
