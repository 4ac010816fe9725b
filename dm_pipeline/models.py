"""Frozen value objects passed between the provider clients, the sync engine and the database layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Provider(enum.StrEnum):
    X = "x"
    XQUIK = "xquik"
    GETXAPI = "getxapi"


class StreamStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"          # pass finished: high-water mark advanced
    PARTIAL = "partial"              # page/time budget spent: the pass is parked, next run resumes it
    RATE_LIMITED = "rate_limited"    # the provider's wait exceeds the budget: parked, not failed
    FAILED = "failed"                # typed provider error: committed pages kept, pass kept
    SKIPPED_LOCKED = "skipped_locked"  # another run holds this account x stream
    SKIPPED = "skipped"              # an account-level failure earlier in the run: no request spent
    BUDGET_EXHAUSTED = "budget_exhausted"  # the account's daily budget would be exceeded: parked


@dataclass(frozen=True)
class OAuthConfig:
    """X OAuth 2.0 refresh: names of environment variables, never values."""

    client_id_env: str
    refresh_token_env: str | None = None      # the first refresh token; later ones live encrypted in Postgres
    client_secret_env: str | None = None      # confidential clients: Basic auth on the token endpoint
    token_url: str | None = None              # default: {base_url}/2/oauth2/token
    # `dm-pipeline accounts connect` (oauth_connect.py): where the browser authorizes, and the loopback
    # callback registered on the X app. None: the defaults (oauth_connect.authorize_url_of / redirect_uri_of).
    authorize_url: str | None = None
    redirect_uri: str | None = None


@dataclass(frozen=True)
class Account:
    key: str                  # partition key, e.g. "x-alice"
    provider: Provider
    user_id: str              # numeric ID of the connected account at the provider
    base_url: str
    token_env: str | None     # env var holding the access token (X) or the API key (Xquik, GetXAPI)
    page_size: int = 100
    # X: extra per-conversation streams (no 30-day window), listed and/or discovered from /2/dm_events
    conversation_ids: tuple[str, ...] = ()
    participant_ids: tuple[str, ...] = ()
    discover_conversations: bool = False
    oauth: OAuthConfig | None = None
    # Xquik: the connected account's handle and the conversation partners (usernames or IDs)
    handle: str | None = None
    partners: tuple[str, ...] = ()
    # GetXAPI: the user's auth_token (and optional ct0 + twid cookies), and the inbox tabs to read
    auth_token_env: str | None = None
    ct0_env: str | None = None
    twid_env: str | None = None
    tabs: tuple[str, ...] = ("all", "requests", "hidden")
    # Cost: an optional cap on what the account may spend per rolling 24 hours (X: requests, Xquik: credits,
    # GetXAPI: calls); billed providers' idle streams back off after `poll_backoff_after` empty polls, up to
    # `max_poll_interval_s` between polls (0 disables the backoff).
    daily_budget: int | None = None
    allow_insecure_http: bool = False  # send credentials over plain http:// to a non-loopback host
    # Messages deleted upstream, found by sweeps of full-history streams: keep (record nothing), mark (kept,
    # hidden from analysts), erase (private content deleted, IDs kept). Sweeps every `sweep_interval_s` (0: off).
    on_upstream_delete: str = "mark"
    sweep_interval_s: int = 0
    max_poll_interval_s: int = 3600
    poll_backoff_after: int = 2


@dataclass(frozen=True)
class Stream:
    """One independently-cursored sequence of events of an account (an endpoint + its path values)."""

    key: str                  # stable name in sync_state, e.g. "dm_events"
    endpoint: str             # path template, for the audit, e.g. "/2/dm_events"
    path: str                 # the validated concrete path
    retention_window_days: int | None = None   # /2/dm_events only returns 30 days
    # X conversation streams: the stream that brings their new events too (the inbox), and its window.
    # Once a conversation's history is complete it is dormant while that stream is current.
    vouched_by: str | None = None
    vouching_window_days: int | None = None
    # Full-history streams: which stored rows a complete walk must return, ("conversation_id", id) or
    # ("stream_key", key); a sweep marks those it did not return as deleted upstream. None: not judged (a
    # windowed stream, where absence may only mean age).
    sweep_scope: tuple[str, str] | None = None


@dataclass(slots=True)
class EventRow:
    """One normalized DM event: the columns of dm_private.dm_history that come from the provider.
    Treated as immutable; not `frozen` because a frozen dataclass costs ~7x to build (1.5 vs 0.2 us, and a
    page builds 100)."""

    message_id: str
    conversation_id: str | None
    event_type: str
    sender_id: str | None
    recipient_id: str | None
    participant_ids: tuple[str, ...]
    created_at: datetime | None
    text: str | None
    media: list[dict[str, Any]] | None
    referenced_tweets: list[dict[str, Any]] | None
    reply_to_message_id: str | None
    edit_count: int
    raw: dict[str, Any]
    sanitized: bool           # text or raw had characters Postgres refuses (NUL): replaced, flagged
    content_hash: str         # sha256 over the normalized content: unchanged re-fetches write nothing
    flags: tuple[str, ...] = ()  # what normalizing had to do (see dm_history.flags)

    @property
    def id_int(self) -> int:
        return int(self.message_id)


@dataclass(frozen=True, kw_only=True)
class _Stored:
    """A provider object stored as it came (sanitized) with the hash of that content: a re-read whose hash
    matches writes nothing. Keyword-only, so each subclass's own fields stay first in its constructor."""

    raw: dict[str, Any]
    content_hash: str


@dataclass(frozen=True)
class QuarantinedEvent(_Stored):
    """An event that could not become a row: kept in dm_private.dm_quarantine with a typed error code."""

    provider_event_id: str | None
    error_code: str           # missing_required_field, invalid_id, wrong_type, not_an_object
    reason: str               # fixed wording naming the field, never a value


@dataclass(frozen=True)
class UserRow(_Stored):
    user_id: str
    username: str | None
    name: str | None


@dataclass(frozen=True)
class ConversationRow(_Stored):
    conversation_id: str
    conversation_type: str | None
    participant_ids: tuple[str, ...]


@dataclass(frozen=True)
class ConversationEventRow:
    """A non-message conversation event (GetXAPI `events`): stored beside, not in, the message stream."""

    event_key: str
    conversation_id: str | None
    event_type: str
    created_at: datetime | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class RateLimitInfo:
    limit: int | None
    remaining: int | None
    reset_at: float | None    # Unix epoch seconds


@dataclass(frozen=True)
class Page:
    events: tuple[EventRow, ...]
    next_cursor: str | None
    http_status: int
    requests: int             # HTTP requests spent on this page, retries included
    rate_limit: RateLimitInfo | None = None
    users: tuple[UserRow, ...] = ()
    conversations: tuple[ConversationRow, ...] = ()
    conversation_events: tuple[ConversationEventRow, ...] = ()
    credits: int = 0          # provider credits this page cost (Xquik: 1 per message returned)
    quarantined: tuple[QuarantinedEvent, ...] = ()
    partial_errors: int = 0   # entries of a 200 response's `errors` array that came with data


@dataclass
class StreamResult:
    account_key: str
    stream_key: str
    status: StreamStatus = StreamStatus.SUCCEEDED
    pages: int = 0
    requests: int = 0
    received: int = 0
    inserted: int = 0
    updated: int = 0
    commits: int = 0                     # transactions that committed pages (several pages may share one)
    high_water_id: str | None = None
    pass_cursor: str | None = None
    error_code: str | None = None
    http_status: int | None = None
    gap_suspected: bool = False
    cost: int = 0                        # what the provider bills (X requests, Xquik credits, GetXAPI calls)
    marked_deleted: int = 0              # a full walk found these stored events missing upstream
    restored: int = 0                    # … and these, marked before, back
    retry_at: datetime | None = None     # parked (rate limit, budget): when the account is tried again
    detail: str | None = None            # a failure's redacted description (a commit error's constraint)

    @property
    def unchanged(self) -> int:
        return self.received - self.inserted - self.updated


@dataclass
class SyncResult:
    account_key: str
    provider: str
    run_id: str
    streams: list[StreamResult] = field(default_factory=list)
    dormant: list[str] = field(default_factory=list)   # X conversation streams the inbox vouched for
    not_due: list[str] = field(default_factory=list)   # billed streams backing off: not polled this run

    @property
    def status(self) -> StreamStatus:
        order = [StreamStatus.FAILED, StreamStatus.RATE_LIMITED, StreamStatus.BUDGET_EXHAUSTED,
                 StreamStatus.PARTIAL, StreamStatus.SKIPPED_LOCKED, StreamStatus.SKIPPED, StreamStatus.SUCCEEDED]
        statuses = {s.status for s in self.streams}
        return next((s for s in order if s in statuses), StreamStatus.SUCCEEDED)

    def total(self, attr: str) -> int:
        return sum(int(getattr(s, attr)) for s in self.streams)
