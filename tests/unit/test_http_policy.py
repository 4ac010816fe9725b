"""The retry policy, on synthetic responses (httpx.MockTransport): what is retried, how long we wait."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from dm_pipeline.errors import ProviderError, RateLimited, TransientProviderError
from dm_pipeline.http.policy import Budget, RetryPolicy, send
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.providers.x_api import map_error


def _client(responses: list[httpx.Response | Exception]) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def _run(responses: list[httpx.Response | Exception], budget_s: float = 60.0,
         governor: Governor | None = None) -> tuple[Callable[[], object], list[float], list[httpx.Request]]:
    waits: list[float] = []
    client, seen = _client(responses)
    policy = RetryPolicy(sleep=waits.append, max_attempts=4)
    request = client.build_request("GET", "https://api.x.com/2/dm_events")
    return (lambda: send(client, request, map_error=map_error, policy=policy, budget=Budget.of(budget_s),
                         governor=governor)), waits, seen


def test_429_retry_after_is_honoured_exactly() -> None:
    call, waits, seen = _run([httpx.Response(429, headers={"retry-after": "7"}), httpx.Response(200, json={})])
    sent = call()
    assert waits == [7.0]
    assert sent.requests == 2 and len(seen) == 2


def test_429_without_retry_after_uses_rate_limit_reset() -> None:
    reset = int(time.time()) + 20
    call, waits, _ = _run([httpx.Response(429, headers={"x-rate-limit-reset": str(reset)}),
                           httpx.Response(200, json={})])
    call()
    assert 18 <= waits[0] <= 20


def test_503_and_transport_errors_back_off_with_jitter_then_succeed() -> None:
    call, waits, seen = _run([httpx.Response(503), httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                              httpx.Response(200, json={})])
    assert call().requests == 4 == len(seen)
    assert len(waits) == 3 and all(0 < w <= 8.5 for w in waits)


@pytest.mark.parametrize("status,code", [(400, "invalid_request"), (403, "forbidden"), (404, "not_found"),
                                         (401, "unauthorized"), (500, "http_500"), (502, "http_502")])
def test_other_statuses_fail_fast_with_a_typed_error(status: int, code: str) -> None:
    call, waits, seen = _run([httpx.Response(status, json={"title": "x"}), httpx.Response(200, json={})])
    with pytest.raises(ProviderError) as info:
        call()
    assert info.value.error_code == code and info.value.http_status == status
    assert len(seen) == 1 and waits == []


def test_problem_type_becomes_the_error_code() -> None:
    body = {"title": "Client Forbidden", "type": "https://api.twitter.com/2/problems/client-forbidden",
            "detail": "secret detail that must not leak"}
    call, _, _ = _run([httpx.Response(403, json=body)])
    with pytest.raises(ProviderError) as info:
        call()
    assert info.value.error_code == "client_forbidden"
    assert "secret detail" not in str(info.value)


def test_a_wait_longer_than_the_budget_parks_instead_of_sleeping() -> None:
    call, waits, seen = _run([httpx.Response(429, headers={"retry-after": "3600"})], budget_s=60)
    with pytest.raises(RateLimited) as info:
        call()
    assert waits == [] and info.value.wait_s == 3600 and len(seen) == 1


def test_429_until_attempts_run_out_is_rate_limited_not_failed() -> None:
    call, waits, seen = _run([httpx.Response(429, headers={"retry-after": "1"})] * 4)
    with pytest.raises(RateLimited):
        call()
    assert len(seen) == 4 and waits == [1.0, 1.0, 1.0]


def test_503_until_attempts_run_out_is_a_transient_failure() -> None:
    call, _, _ = _run([httpx.Response(503)] * 4)
    with pytest.raises(TransientProviderError) as info:
        call()
    assert info.value.error_code == "service_unavailable" and info.value.requests == 4


def test_governor_waits_for_the_window_instead_of_earning_a_429() -> None:
    reset = int(time.time()) + 30
    governor = Governor()
    call, waits, _ = _run([
        httpx.Response(200, json={}, headers={"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(reset),
                                              "x-rate-limit-limit": "300"}),
        httpx.Response(200, json={}),
    ], governor=governor)
    call()
    assert waits == []
    call()
    assert len(waits) == 1 and 28 <= waits[0] <= 32


def test_transport_failures_stop_retrying_after_a_request_deadline_in_all() -> None:
    # A host that drops every attempt before the deadline, but whose attempts add up past it: retried while
    # the deadline lasts, then the stream ends. The policy's clock advances 0.4 s at every reading.
    readings = iter(range(1000))

    def clock() -> float:
        return 0.4 * next(readings)

    client, seen = _client([httpx.ReadError("dropped")] * 4)
    request = client.build_request("GET", "https://api.x.com/2/dm_events")
    short = RetryPolicy(sleep=lambda s: None, max_attempts=4, request_deadline_s=1.5, clock=clock)
    with pytest.raises(TransientProviderError) as exc:
        send(client, request, map_error=map_error, policy=short, budget=Budget.of(60))
    assert exc.value.error_code == "transport_error" and len(seen) == 2
    client, seen = _client([httpx.ReadError("dropped")] * 4)
    lasting = RetryPolicy(sleep=lambda s: None, max_attempts=4, request_deadline_s=3600.0)
    with pytest.raises(TransientProviderError):
        send(client, client.build_request("GET", "https://api.x.com/2/dm_events"), map_error=map_error,
             policy=lasting, budget=Budget.of(60))
    assert len(seen) == 4
