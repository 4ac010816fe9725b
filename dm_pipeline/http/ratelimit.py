"""Rate-limit headers, and a per-account governor that waits for the window instead of earning a 429."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from dm_pipeline.models import RateLimitInfo


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    limit = _int(headers, "x-rate-limit-limit")
    remaining = _int(headers, "x-rate-limit-remaining")
    reset = _int(headers, "x-rate-limit-reset")
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimitInfo(limit=limit, remaining=remaining, reset_at=float(reset) if reset is not None else None)


def wait_hint(headers: Mapping[str, str], now: float, *, use_reset: bool = True) -> float | None:
    """Seconds the provider asks us to wait: `Retry-After` (seconds) first, else (for a 429 only)
    `x-rate-limit-reset`, which describes the rate window and says nothing about a 503."""
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass  # an HTTP-date: fall through to the reset header
    reset = _int(headers, "x-rate-limit-reset")
    if use_reset and reset is not None:
        return max(0.0, reset - now)
    return None


class Governor:
    """Remembers the last rate-limit headers of one account (X shares one window across its DM routes) and
    any `Retry-After` it was given, and says how long to wait before the next request so that a sync
    within budget gets zero 429s. Shared by every stream of the account (see db/account_state.AccountGovernor
    for the copy in Postgres that concurrent processes share)."""

    def __init__(self, reserve: int = 0) -> None:
        self._lock = threading.Lock()
        self._info: RateLimitInfo | None = None
        self._until: float | None = None  # epoch seconds: no request before (Retry-After)
        self._reserve = reserve  # requests to leave for other clients of the same account

    def observe(self, info: RateLimitInfo | None) -> None:
        if info is not None:
            with self._lock:
                self._info = info

    def hold_until(self, epoch: float) -> None:
        """The provider asked for no request before `epoch` (a 429's Retry-After)."""
        with self._lock:
            self._until = max(self._until or 0.0, epoch)

    def wait_before_next(self, now: float) -> float:
        with self._lock:
            info, until = self._info, self._until
        wait = max(0.0, until - now) if until is not None else 0.0
        if info is None or info.remaining is None or info.reset_at is None or info.remaining > self._reserve:
            return wait
        return max(wait, info.reset_at - now + 1.0)  # +1 s: the reset header has 1-second resolution

    def snapshot(self) -> tuple[RateLimitInfo | None, float | None]:
        with self._lock:
            return self._info, self._until

    def restore(self, info: RateLimitInfo | None, until: float | None) -> None:
        with self._lock:
            self._info, self._until = info, until
