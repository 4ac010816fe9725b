"""The one HTTP policy for every provider: what is retried, how long to wait, when to park.

Retried: 429, 503, connection errors and timeouts, nothing else. Waits honour `Retry-After` and
`x-rate-limit-reset`, else exponential backoff with jitter (tenacity). A wait that does not fit the
run's remaining budget raises `RateLimited`, so the pass is parked and the run ends `rate_limited`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from dm_pipeline.errors import ProviderError, RateLimited, TransientProviderError
from dm_pipeline.http import bounds
from dm_pipeline.http.ratelimit import Governor, parse_rate_limit, wait_hint
from dm_pipeline.models import RateLimitInfo

if TYPE_CHECKING:
    from dm_pipeline.settings import Settings

RETRYABLE_STATUS = frozenset({429, 503})


def _settings() -> Settings:
    from dm_pipeline.settings import load_settings

    return load_settings()
ErrorMapper = Callable[[httpx.Response], ProviderError]


@dataclass
class Budget:
    """How much wall time this run may still spend on an account (rate-limit waits included)."""

    deadline: float  # time.monotonic() value

    @classmethod
    def of(cls, seconds: float) -> Budget:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_hinted_wait_s: float = 900.0   # a provider-requested wait longer than this is never slept
    sleep: Callable[[float], None] = field(default=time.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)  # the request deadlines' clock
    # One request, connect to last byte (DM_PIPELINE_REQUEST_DEADLINE_S), and its largest body
    # (DM_PIPELINE_MAX_BODY_MB): a real page is well under 1 MB.
    request_deadline_s: float = field(default_factory=lambda: _settings().request_deadline_s)
    max_body_bytes: int = field(default_factory=lambda: _settings().max_body_bytes)

    def backoff(self) -> wait_exponential_jitter:
        return wait_exponential_jitter(initial=self.initial_backoff_s, max=self.max_backoff_s, jitter=0.5)


@dataclass(frozen=True)
class Sent:
    response: httpx.Response
    requests: int
    rate_limit: RateLimitInfo | None


def send(client: httpx.Client, request: httpx.Request, *, map_error: ErrorMapper, policy: RetryPolicy,
         budget: Budget, governor: Governor | None = None,
         final: Callable[[httpx.Response], ProviderError | None] | None = None) -> Sent:
    """Send `request` under the policy. Returns the 2xx response or raises a typed ProviderError.
    `final` may claim a 429 or 503 the provider means as final (X's usage-capped 429, which no wait within
    the rate-limit window cures): the error it returns is raised at once, never retried or parked."""
    attempts = 0
    backoff = policy.backoff()

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = exc.wait_hint_s if isinstance(exc, TransientProviderError) else None
        delay = hinted if hinted is not None else backoff(state)
        if delay > min(policy.max_hinted_wait_s, budget.remaining()):
            status = exc.http_status if isinstance(exc, ProviderError) else None
            if governor is not None and status == 429:
                # Parked: the account's one state learns the wait, so its other streams (and the next
                # run, and other processes) know it is limited without asking again.
                governor.hold_until(time.time() + delay)
            raise RateLimited(f"provider asks to wait {delay:.0f}s, more than the run's budget",
                              wait_s=delay, http_status=status, requests=attempts)
        return delay

    def attempt() -> Sent:
        nonlocal attempts
        if governor is not None:
            pause = governor.wait_before_next(time.time())
            if pause > 0:
                if pause > min(policy.max_hinted_wait_s, budget.remaining()):
                    raise RateLimited(f"rate-limit window exhausted for {pause:.0f}s", wait_s=pause,
                                      requests=attempts)
                policy.sleep(pause)
        attempts += 1
        until = policy.clock() + policy.request_deadline_s
        try:
            with bounds.deadline(policy.request_deadline_s):
                response = client.send(request, stream=True)
                try:
                    bounds.read_bounded(response, policy.max_body_bytes)
                finally:
                    response.close()
        except bounds.BodyTooLarge as exc:
            raise ProviderError(str(exc), error_code="response_too_large", requests=attempts) from None
        except httpx.TransportError as exc:
            if policy.clock() >= until:
                # Not retried: a host that trickles its answer would hold the stream for every attempt.
                raise ProviderError(f"{request.url.host} did not answer completely within "
                                    f"{policy.request_deadline_s:g}s", error_code="request_deadline",
                                    requests=attempts) from None
            raise TransientProviderError(f"{type(exc).__name__} talking to {request.url.host}",
                                         error_code="transport_error", requests=attempts) from None
        info = parse_rate_limit(response.headers)
        if response.is_success:
            if governor is not None:
                governor.observe(info)
            return Sent(response, attempts, info)
        claimed = final(response) if final is not None and response.status_code in RETRYABLE_STATUS else None
        if claimed is not None:
            claimed.requests = attempts
            raise claimed
        if response.status_code in RETRYABLE_STATUS:
            code = "rate_limited" if response.status_code == 429 else "service_unavailable"
            hint = wait_hint(response.headers, time.time(), use_reset=response.status_code == 429)
            raise TransientProviderError(f"HTTP {response.status_code} from {request.url.host}",
                                         wait_hint_s=hint, http_status=response.status_code, error_code=code,
                                         requests=attempts)
        error = map_error(response)
        error.requests = attempts
        raise error

    started = policy.clock()

    def stop(state: RetryCallState) -> bool:
        # Transport failures stop retrying once they have taken a request deadline in all: a host that
        # trickles each answer for most of the deadline and then drops it must not hold the stream for
        # every attempt. Rate-limit waits are bounded by the budget instead (see `wait`).
        exc = state.outcome.exception() if state.outcome else None
        transport = isinstance(exc, TransientProviderError) and exc.error_code == "transport_error"
        return state.attempt_number >= policy.max_attempts or (
            transport and policy.clock() - started >= policy.request_deadline_s)

    retrying = Retrying(retry=retry_if_exception_type(TransientProviderError), stop=stop, wait=wait,
                        sleep=policy.sleep, reraise=True)
    try:
        return retrying(attempt)
    except TransientProviderError as exc:
        exc.requests = attempts
        if exc.http_status == 429:  # still limited after every retry: park, do not fail
            if governor is not None and exc.wait_hint_s:
                governor.hold_until(time.time() + exc.wait_hint_s)
            raise RateLimited(str(exc), wait_s=exc.wait_hint_s or 0.0, http_status=429,
                              requests=attempts) from None
        raise
