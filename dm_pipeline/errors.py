"""Typed errors. Messages carry codes, IDs and HTTP statuses only: never message text, never tokens."""

from __future__ import annotations

import re
from typing import Any

_CODE = re.compile(r"[a-z0-9_]{1,64}")


def clean_code(code: str) -> str:
    """An error code as the audit stores it: `[a-z0-9_]{1,64}`. Codes are built from what providers send
    (a problem `type`, an `error` field), and a hostile one may be 5 KB of control characters."""
    if _CODE.fullmatch(code):
        return code
    cleaned = re.sub(r"[^a-z0-9_]+", "_", code.lower()).strip("_")[:64]
    return cleaned or "provider_error"


def printable(message: str, limit: int = 300) -> str:
    """A message safe for a terminal and a log line: no control characters, bounded length."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in message[:limit])
    return cleaned + ("…" if len(message) > limit else "")


class DmPipelineError(Exception):
    """Base of every error this package raises on purpose. A subclass states its audit code in its class
    statement (`class CursorLoop(DmPipelineError, code="cursor_loop")`); one without inherits its parent's."""

    error_code = "error"

    def __init_subclass__(cls, code: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if code is not None:
            cls.error_code = code


class ConfigError(DmPipelineError, code="config_error"):
    """Bad configuration: the message names the file, the key and the fix."""


class DatabaseUnavailable(DmPipelineError, code="database_unavailable"):
    """Postgres (the warehouse or Dagster's storage) does not answer."""


class ProviderError(DmPipelineError, code="provider_error"):
    """A provider answered with something we cannot use. `error_code` lands in the audit row."""

    retryable = False

    def __init__(self, message: str, *, http_status: int | None = None, error_code: str | None = None,
                 requests: int = 1) -> None:
        super().__init__(printable(message))
        self.http_status = http_status
        self.requests = requests
        if error_code:
            self.error_code = clean_code(error_code)


class TransientProviderError(ProviderError, code="transient"):
    """429, 503, connection errors and timeouts: the only failures worth retrying."""

    retryable = True

    def __init__(self, message: str, *, wait_hint_s: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.wait_hint_s = wait_hint_s


class RateLimited(ProviderError, code="rate_limited"):
    """The wait the provider asks for does not fit the run's budget: park the pass, retry next run."""

    def __init__(self, message: str, *, wait_s: float, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.wait_s = wait_s


class AuthError(ProviderError, code="unauthorized"):
    """The provider refused the credentials (401)."""


class InvalidCursor(ProviderError, code="invalid_cursor"):
    """The provider no longer accepts the stored cursor: the pass restarts from the top."""


class MalformedResponse(ProviderError, code="malformed_response"):
    """The provider answered something that is not its documented JSON."""


class InvalidIdentifier(DmPipelineError, code="invalid_identifier"):
    """A user or conversation ID that does not match the provider's pattern; never put in a URL."""


class CursorLoop(DmPipelineError, code="cursor_loop"):
    """The provider repeated a pagination cursor: the pass stops rather than loop."""


class PageCommitError(Exception):
    """A page commit failed in Postgres. Its message names the exception class, SQLSTATE and constraint
    only: the driver's message quotes the failing row (`DETAIL: Failing row contains (…)`) and
    SQLAlchemy's appends the bound parameters, and both hold message text.

    Deliberately not a DmPipelineError: it propagates exactly as the driver's error did (nothing that
    handles provider or config errors swallows it, and Dagster's RetryPolicy still retries the step)."""

    def __init__(self, account_key: str, stream_key: str, exc: BaseException) -> None:
        orig = getattr(exc, "orig", None) or exc
        self.account_key, self.stream_key = account_key, stream_key
        self.sqlstate: str | None = getattr(orig, "sqlstate", None)
        constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)
        what = ", ".join(filter(None, [type(orig).__name__, self.sqlstate and f"SQLSTATE {self.sqlstate}",
                                       constraint and f"constraint {constraint}"]))
        super().__init__(f"page commit failed for account={account_key} stream={stream_key}: {what} "
                         "(row values withheld: they hold message text)")


class BudgetExhausted(ProviderError, code="budget_exhausted"):
    """The next request could exceed the account's daily budget: park, no request spent."""


# Codes that describe the account, not one stream: the first stream that meets one ends the account's run
# (its remaining streams are recorded as skipped with this code, without a request). Everything else (a
# conversation the account may not read, a malformed page) stays the stream's own.
ACCOUNT_LEVEL_CODES = frozenset({
    # credentials
    "unauthorized", "token_expired", "refresh_rejected", "refresh_failed", "refresh_unparseable",
    "unauthenticated", "invalid_api_key", "invalid_auth_token", "unsupported_authentication", "config_error",
    # the connected account
    "account_needs_reauth", "account_restricted", "account_not_found", "account_required",
    # the bill or the app
    "no_credits", "no_subscription", "subscription_inactive", "insufficient_credits", "usage_capped",
    "client_forbidden", "client_not_enrolled", "budget_exhausted",
    # the provider's host is unreachable after every retry, or too slow to answer within the deadline:
    # the next stream would spend the same time
    "transport_error", "request_deadline",
})
