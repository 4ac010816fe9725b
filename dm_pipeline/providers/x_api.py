"""X API v2 Direct Messages lookup: `GET /2/dm_events` (docs/architecture.md §11; spec: tests/fixtures/).

Endpoints, parameters, error mapping and the client. The pure normalizer of a page (`parse_page`,
`normalize_event`, `partial_errors`, `problem_slug`) is in providers/x_normalize.py and importable from here.

Field names drift: X's newer spec (2.167, the one xdk follows) spells `tweet.fields` as `post.fields` and the
expansion `referenced_tweets.id` as `referenced_posts`, and drops `sender_id`, `participant_ids` and
`referenced_tweets` from the `dm_event.fields` enum. The client asks in the 2.159 names (what the live API
and every public report show); when X answers an invalid-request 400 naming one of its field parameters,
it asks once more in the other spelling, and on success remembers that spelling for the account (the
process-wide `SPELLINGS`). Either answer is normalized to 2.159's shape (`canonical_event`), so stored rows
do not depend on the spelling — except that 2.167's `post.fields` cannot ask for a shared post's
`author_id`. X's usage-capped 429 is final (`usage_capped`), never retried as a rate limit.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx

from dm_pipeline.errors import AuthError, InvalidCursor, MalformedResponse, ProviderError
from dm_pipeline.http.policy import Budget, RetryPolicy, Sent, send
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.models import Account, Page, Stream
from dm_pipeline.providers.base import USER_ID_RE, ClientBase, decode_json, validate_id
from dm_pipeline.providers.x_normalize import (
    MAX_CODE_LEN,
    PARTIAL_ERROR,
    IncludesIndex,
    canonical_event,
    canonical_post,
    normalize_event,
    parse_page,
    partial_errors,
    problem_slug,
)

__all__ = [
    "CONVERSATION_ENDPOINT", "CONVERSATION_ID_RE", "DM_EVENT_FIELDS", "DM_EVENT_FIELDS_V2167", "EXPANSIONS",
    "EXPANSIONS_V2167", "FIELD_PARAMS", "FIELD_QUERIES", "INBOX", "INBOX_ENDPOINT", "INBOX_KEY", "MAX_CODE_LEN",
    "MEDIA_FIELDS", "PARTIAL_ERROR", "POST_FIELDS", "SPELLINGS", "TWEET_FIELDS", "USER_FIELDS", "V2159", "V2167",
    "WITH_ENDPOINT", "FieldSpellingRejected", "IncludesIndex", "SpellingMemory", "Windows", "XClient",
    "canonical_event", "canonical_post", "conversation_stream", "final_error", "inbox_stream", "map_error",
    "normalize_event", "one_to_one_id", "parse_page", "partial_errors", "participant_stream", "problem_slug",
]

# Every field and expansion the lookup endpoints offer (spec v2.159): we keep the full event.
DM_EVENT_FIELDS = ("attachments,created_at,dm_conversation_id,entities,event_type,id,participant_ids,"
                   "referenced_tweets,sender_id,text")
EXPANSIONS = "attachments.media_keys,participant_ids,referenced_tweets.id,sender_id"
MEDIA_FIELDS = "alt_text,duration_ms,height,media_key,preview_image_url,type,url,variants,width"
USER_FIELDS = "created_at,id,name,profile_image_url,protected,username,verified"
TWEET_FIELDS = "author_id,created_at,id,text"
# The same selection in 2.167's names: the expansions still put sender_id, participant_ids and the referenced
# posts' IDs into each event; 2.167's post.fields enum has no author_id.
DM_EVENT_FIELDS_V2167 = "attachments,created_at,dm_conversation_id,entities,event_type,id,text"
EXPANSIONS_V2167 = "attachments.media_keys,participant_ids,referenced_posts,sender_id"
POST_FIELDS = "created_at,id,text"
V2159, V2167 = "2.159", "2.167"
FIELD_QUERIES: dict[str, dict[str, str]] = {
    V2159: {"dm_event.fields": DM_EVENT_FIELDS, "expansions": EXPANSIONS, "media.fields": MEDIA_FIELDS,
            "user.fields": USER_FIELDS, "tweet.fields": TWEET_FIELDS},
    V2167: {"dm_event.fields": DM_EVENT_FIELDS_V2167, "expansions": EXPANSIONS_V2167, "media.fields": MEDIA_FIELDS,
            "user.fields": USER_FIELDS, "post.fields": POST_FIELDS},
}
FIELD_PARAMS = frozenset(name for query in FIELD_QUERIES.values() for name in query)
log = logging.getLogger(__name__)

CONVERSATION_ID_RE = re.compile(r"^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$")
INBOX_KEY = "dm_events"
INBOX_ENDPOINT = "/2/dm_events"
WITH_ENDPOINT = "/2/dm_conversations/with/:participant_id/dm_events"
CONVERSATION_ENDPOINT = "/2/dm_conversations/:id/dm_events"


@dataclass(frozen=True)
class Windows:
    """How many days of events each X endpoint serves (None: the whole history). X documents 30 days for
    /2/dm_events; its newer docs can be read as applying them to the conversation routes too, hence
    settings (DM_PIPELINE_X_INBOX_WINDOW_DAYS, DM_PIPELINE_X_CONVERSATION_WINDOW_DAYS)."""

    inbox_days: int | None = 30
    conversation_days: int | None = None


def inbox_stream(windows: Windows = Windows()) -> Stream:
    return Stream(key=INBOX_KEY, endpoint=INBOX_ENDPOINT, path=INBOX_ENDPOINT,
                  retention_window_days=windows.inbox_days)


def participant_stream(participant_id: str, windows: Windows = Windows()) -> Stream:
    pid = validate_id(participant_id, USER_ID_RE, "participant_id")
    return Stream(key=f"with:{pid}", endpoint=WITH_ENDPOINT, path=f"/2/dm_conversations/with/{pid}/dm_events",
                  retention_window_days=windows.conversation_days, vouched_by=INBOX_KEY,
                  vouching_window_days=windows.inbox_days)


def one_to_one_id(a: str, b: str) -> str:
    """X's 1:1 conversation ID: "{smaller}-{larger}"."""
    lo, hi = sorted((a, b), key=int)
    return f"{lo}-{hi}"


def conversation_stream(conversation_id: str, windows: Windows = Windows()) -> Stream:
    cid = validate_id(conversation_id, CONVERSATION_ID_RE, "dm_conversation_id")
    return Stream(key=f"conversation:{cid}", endpoint=CONVERSATION_ENDPOINT,
                  path=f"/2/dm_conversations/{cid}/dm_events", retention_window_days=windows.conversation_days,
                  vouched_by=INBOX_KEY, vouching_window_days=windows.inbox_days,
                  sweep_scope=("conversation_id", cid) if windows.conversation_days is None else None)


INBOX = inbox_stream()


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class FieldSpellingRejected(ProviderError):
    """X's invalid-request 400 naming a field parameter (`parameters`): the spelling may have changed."""

    def __init__(self, message: str, parameters: frozenset[str], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.parameters = parameters


def _named_parameters(body: dict[str, Any]) -> set[str]:
    """The parameter names an invalid-request body's `errors[].parameters` name."""
    errors = body.get("errors")
    names: set[str] = set()
    for e in errors if isinstance(errors, list) else ():
        params = e.get("parameters") if isinstance(e, dict) else None
        if isinstance(params, dict):
            names.update(str(k) for k in params)
    return names


def map_error(response: httpx.Response) -> ProviderError:
    """A non-retryable X error to a typed error. Only the problem's fixed `type`/`title` are quoted:
    `detail` and bodies can echo request values, so they never reach a message."""
    status = response.status_code
    body = _problem(response)
    title = str(body.get("title") or "")[:80]
    slug = problem_slug(body.get("type"))
    named = _named_parameters(body) if status == 400 else set()
    if "pagination_token" in named:
        return InvalidCursor("X rejected the stored pagination_token", http_status=400)
    if named & FIELD_PARAMS:
        fields = frozenset(named & FIELD_PARAMS)
        return FieldSpellingRejected(f"X API 400 {title or 'Invalid Request'}: {', '.join(sorted(fields))}",
                                     fields, http_status=400, error_code=slug or "invalid_request")
    if status == 401:
        return AuthError(f"X API 401 {title or 'Unauthorized'}", http_status=401, error_code="unauthorized")
    code = slug or {400: "invalid_request", 403: "forbidden", 404: "not_found"}.get(status, f"http_{status}")
    return ProviderError(f"X API {status} {title}".strip(), http_status=status, error_code=code)


def final_error(response: httpx.Response) -> ProviderError | None:
    """A 429 that is no rate limit: X's usage-capped problem (the app's daily or monthly cap is spent; the
    rate-limit headers beside it still show requests left). Waiting out the window does not cure it."""
    if response.status_code != 429:
        return None
    body = _problem(response)
    if problem_slug(body.get("type")) != "usage_capped":
        return None
    return ProviderError("X API 429 UsageCapExceeded", http_status=429, error_code="usage_capped")

class SpellingMemory:
    """The spelling of the field parameters X last accepted, per account (its base URL and key); 2.159 until
    X refuses it. Thread-safe; `SPELLINGS` is the process's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_account: dict[tuple[str, str], str] = {}

    def get(self, account: Account) -> str:
        with self._lock:
            return self._by_account.get((account.base_url, account.key), V2159)

    def remember(self, account: Account, spelling: str) -> None:
        with self._lock:
            self._by_account[(account.base_url, account.key)] = spelling


SPELLINGS = SpellingMemory()


class XClient(ClientBase):
    """Talks to one account's X API (or the simulator) with its OAuth 2.0 user token."""

    def __init__(self, account: Account, http: httpx.Client, token: Callable[[], str],
                 policy: RetryPolicy | None = None, governor: Governor | None = None,
                 known_conversations: Callable[[], list[str]] | None = None,
                 refresh: Callable[[], str] | None = None, windows: Windows = Windows(),
                 spellings: SpellingMemory | None = None) -> None:
        super().__init__(account, http, policy, governor)  # one governor: X shares one window across its DM routes
        self._token = token
        self._refresh = refresh  # OAuth 2.0: on a 401, refresh once and retry
        self._known_conversations = known_conversations
        self._windows = windows
        self.spellings = spellings if spellings is not None else SPELLINGS
        self._queries: dict[str, str] = {}

    def streams(self) -> Iterator[Stream]:
        """The inbox first; then listed participants and conversations, then (with `discover`) every
        conversation the inbox has stored so far — read only after the inbox synced in this run."""
        yield inbox_stream(self._windows)
        for pid in self.account.participant_ids:
            stream = participant_stream(pid, self._windows)
            full = self._windows.conversation_days is None
            yield replace(stream, sweep_scope=("conversation_id", one_to_one_id(self.account.user_id, pid))
                          if full else None)
        ids = list(self.account.conversation_ids)
        if self.account.discover_conversations and self._known_conversations:
            ids += self._known_conversations()
        for cid in dict.fromkeys(ids):
            if CONVERSATION_ID_RE.fullmatch(cid):
                yield conversation_stream(cid, self._windows)

    def _fixed_query(self, spelling: str) -> str:
        """The query parameters every request repeats, encoded once per spelling (httpx re-validates a query
        string character by character each time it merges a params dict: ~15 % of the fetch's CPU)."""
        query = self._queries.get(spelling)
        if query is None:
            query = self._queries[spelling] = str(httpx.QueryParams({
                **FIELD_QUERIES[spelling], "max_results": str(self.account.page_size)}))
        return query

    def _url(self, stream: Stream, cursor: str | None, spelling: str = V2159) -> str:
        query = self._fixed_query(spelling)
        if cursor:
            query += "&" + str(httpx.QueryParams({"pagination_token": cursor}))
        return f"{self.account.base_url}{stream.path}?{query}"

    def _send(self, stream: Stream, cursor: str | None, budget: Budget, token: str, spelling: str = V2159) -> Sent:
        request = self._http.build_request(
            "GET", self._url(stream, cursor, spelling),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        return send(self._http, request, map_error=map_error, policy=self._policy, budget=budget,
                    governor=self.governor, final=final_error)

    def _authorized(self, stream: Stream, cursor: str | None, budget: Budget, spelling: str) -> Sent:
        try:
            return self._send(stream, cursor, budget, self._token(), spelling)
        except AuthError as exc:
            if self._refresh is None:
                raise
            try:
                token = self._refresh()
            except ProviderError as failed:  # the refused, failed or unparseable refresh: count the 401 too
                failed.requests += exc.requests
                raise failed from None
            sent = self._send(stream, cursor, budget, token, spelling)
            return Sent(sent.response, sent.requests + exc.requests, sent.rate_limit)

    def _spelled(self, stream: Stream, cursor: str | None, budget: Budget) -> Sent:
        """The page in the account's spelling; on a 400 naming a field parameter, once more in the other
        spelling, which is remembered for the account when X accepts it."""
        spelling = self.spellings.get(self.account)
        try:
            return self._authorized(stream, cursor, budget, spelling)
        except FieldSpellingRejected as refused:
            other = V2167 if spelling == V2159 else V2159
            try:
                sent = self._authorized(stream, cursor, budget, other)
            except ProviderError as failed:
                failed.requests += refused.requests
                raise
            log.warning("X refused the %s field parameters (%s) of account %s; the %s spelling worked and is "
                        "used from now on", spelling, ", ".join(sorted(refused.parameters)), self.account.key,
                        other)
            self.spellings.remember(self.account, other)
            return Sent(sent.response, sent.requests + refused.requests, sent.rate_limit)

    def fetch_page(self, stream: Stream, cursor: str | None, budget: Budget) -> Page:
        sent = self._spelled(stream, cursor, budget)
        try:
            body = decode_json(sent.response.content)
        except ValueError:
            raise MalformedResponse("X response is not valid JSON", http_status=sent.response.status_code,
                                    requests=sent.requests) from None
        try:
            events, next_cursor, users, quarantined = parse_page(body, self.account.user_id, stream.key)
        except ProviderError as exc:  # malformed, or a 200 holding only `errors`
            exc.http_status, exc.requests = sent.response.status_code, sent.requests
            raise
        return Page(events=tuple(events), next_cursor=next_cursor, http_status=sent.response.status_code,
                    requests=sent.requests, rate_limit=sent.rate_limit, users=tuple(users),
                    quarantined=tuple(quarantined), partial_errors=partial_errors(body))
