"""X API v2 Direct Messages lookup: `GET /2/dm_events` (docs/architecture.md §11; spec: tests/fixtures/).

Endpoints, parameters, response parsing into `Page`, and the pure normalizer `normalize_event`.

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
from dm_pipeline.models import Account, EventRow, Page, QuarantinedEvent, Stream, UserRow
from dm_pipeline.providers.base import (
    USER_ID_RE,
    BadEvent,
    as_list,
    content_hash,
    decode_json,
    id_field,
    normalize_all,
    sanitize,
    text_field,
    time_field,
    unstorable_flags,
    user_row,
    validate_id,
)

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
_ENTITY_KEYS = ("urls", "hashtags", "mentions", "cashtags")
log = logging.getLogger(__name__)

CONVERSATION_ID_RE = re.compile(r"^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
MAX_CODE_LEN = 64
PARTIAL_ERROR = "partial_error"  # a 200 `errors` array without data whose first entry has no usable `type`
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


def problem_slug(ptype: object) -> str:
    """An X problem URI's last segment as an error code ("https://api.twitter.com/2/problems/resource-not-found"
    -> "resource_not_found"), or "" when `ptype` is no problem URI. The code reaches the audit row and the
    logs, so whatever the body holds comes out as [a-z0-9_]{1,64} or not at all."""
    if not isinstance(ptype, str) or "/problems/" not in ptype:
        return ""
    slug = _NOT_SLUG.sub("_", ptype.rsplit("/", 1)[-1][:256].lower()).strip("_")
    return slug[:MAX_CODE_LEN].rstrip("_")


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


class IncludesIndex:
    """A page's `includes.media` by media_key and `includes.tweets` by ID, each built on first use and
    then shared by the page's events (most pages have several events with media)."""

    def __init__(self, includes: dict[str, Any]) -> None:
        self._includes = includes
        self._media: dict[Any, Any] | None = None
        self._tweets: dict[Any, Any] | None = None

    def media(self) -> dict[Any, Any]:
        if self._media is None:
            self._media = {m.get("media_key"): m for m in as_list(self._includes.get("media")) if isinstance(m, dict)}
        return self._media

    def tweets(self) -> dict[Any, Any]:
        if self._tweets is None:
            posts = [canonical_post(p) for p in as_list(self._includes.get("posts")) if isinstance(p, dict)]
            self._tweets = {t.get("id"): t for t in [*as_list(self._includes.get("tweets")), *posts]
                            if isinstance(t, dict)}
        return self._tweets


def canonical_post(post: dict[str, Any]) -> dict[str, Any]:
    """A 2.167 Post as the 2.159 Tweet it was (`edit_history_post_ids` -> `edit_history_tweet_ids`)."""
    if "edit_history_post_ids" not in post or "edit_history_tweet_ids" in post:
        return post
    return {("edit_history_tweet_ids" if k == "edit_history_post_ids" else k): v for k, v in post.items()}


def canonical_event(event: dict[str, Any]) -> dict[str, Any]:
    """A DmEvent in 2.159's shape: 2.167's `referenced_posts` as `referenced_tweets`, and its `entities`
    object flattened into `urls` / `hashtags` / `mentions` / `cashtags`. A 2.159 event is returned as is."""
    entities = event.get("entities")
    if "referenced_posts" not in event and not isinstance(entities, dict):
        return event
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key == "referenced_posts" and "referenced_tweets" not in event:
            out["referenced_tweets"] = value
        elif key == "entities" and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if k in _ENTITY_KEYS and k not in event and v is not None})
        else:
            out[key] = value
    return out


def normalize_event(event: dict[str, Any], includes: dict[str, Any] | IncludesIndex, account_user_id: str,
                    stream_key: str) -> EventRow:
    """Pure: one `DmEvent` plus the page's `includes` to one dm_history row. Raises BadEvent (the event is
    quarantined) when it has no numeric `id`, no `event_type`, or a field of an unusable type. A 2.167-shaped
    event is stored in 2.159's shape (`canonical_event`)."""
    event = canonical_event(event)
    raw, dirty = sanitize(event)
    flags = unstorable_flags(event) if dirty else set()
    message_id = id_field(raw, "id", flags, required=True)
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise BadEvent("missing_required_field" if event_type is None else "wrong_type", "`event_type` is unusable")
    conversation_id = raw.get("dm_conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        flags.add("coerced_types")
        conversation_id = str(conversation_id)
    sender_id = id_field(raw, "sender_id", flags)
    listed = raw.get("participant_ids") or ()
    if not isinstance(listed, list | tuple):
        raise BadEvent("wrong_type", "`participant_ids` is not a list")
    participants = tuple(str(p) for p in listed)
    recipient_id = None
    if isinstance(conversation_id, str) and "-" in conversation_id and sender_id:
        # A 1:1 conversation ID is "{smaller}-{larger}": the recipient is the other one.
        a, _, b = conversation_id.partition("-")
        recipient_id = b if sender_id == a else a if sender_id == b else None
    index = includes if isinstance(includes, IncludesIndex) else IncludesIndex(includes)
    keys = (raw.get("attachments") or {}).get("media_keys") or []
    media = None
    if keys:  # most events have none: `includes` is indexed only when one does
        media_by_key = index.media()
        media = [sanitize(media_by_key.get(k, {"media_key": k}))[0] for k in keys] or None
    # Shared tweets: the event holds their IDs, `includes.tweets` their content; keep both together.
    refs = raw.get("referenced_tweets") or ()
    referenced = None
    if refs:
        tweets_by_id = index.tweets()
        referenced = [sanitize({**tweets_by_id.get(r.get("id"), {}), **r})[0]
                      for r in refs if isinstance(r, dict)] or None
    text = text_field(raw, "text", flags)
    created_at = time_field(raw, "created_at", flags)
    content = {"event": raw, "media": media, "tweets": referenced}
    return EventRow(
        message_id=message_id or "", conversation_id=conversation_id, event_type=event_type,
        sender_id=sender_id, recipient_id=recipient_id, participant_ids=participants,
        created_at=created_at, text=text, media=media,
        referenced_tweets=referenced, reply_to_message_id=None, edit_count=0, raw=raw, sanitized=dirty,
        content_hash=content_hash(content), flags=tuple(sorted(flags)),
    )


def partial_errors(body: dict[str, Any]) -> int:
    """How many entries a 200 response's top-level `errors` array has (X's "partial errors"). With data
    beside them the page is used and the count audited; without data the response is a failure, not an
    empty page: raises ProviderError coded from the first error's problem `type` (never its `detail` or
    `value`, which echo request values)."""
    errors = body.get("errors")
    if errors is None:
        return 0
    if not isinstance(errors, list):
        raise MalformedResponse("X response has `errors` of the wrong type")
    if errors and not body.get("data"):
        first = errors[0]
        code = (problem_slug(first.get("type")) if isinstance(first, dict) else "") or PARTIAL_ERROR
        raise ProviderError(f"X API 200 with {len(errors)} error(s) and no data: {code}", http_status=200,
                            error_code=code)
    return len(errors)


def parse_page(body: Any, account_user_id: str, stream_key: str
               ) -> tuple[list[EventRow], str | None, list[UserRow], list[QuarantinedEvent]]:
    """A 200 body's events, next cursor, users and quarantined events. Raises ProviderError when the body
    is only `errors` (see `partial_errors`), MalformedResponse when it is not X's page shape."""
    if not isinstance(body, dict):
        raise MalformedResponse("X response is not a JSON object")
    partial_errors(body)
    data = body.get("data") or []  # an empty page omits `data` (spec: minItems 1)
    includes = body.get("includes") or {}
    meta = body.get("meta") or {}
    if not isinstance(data, list) or not isinstance(includes, dict) or not isinstance(meta, dict):
        raise MalformedResponse("X response has `data`, `includes` or `meta` of the wrong type")
    index = IncludesIndex(includes)
    events, quarantined = normalize_all(data, lambda e: normalize_event(e, index, account_user_id, stream_key))
    next_token = meta.get("next_token")
    users = [row for u in as_list(includes.get("users")) if isinstance(u, dict) and (row := user_row(u))]
    return events, (next_token if isinstance(next_token, str) and next_token else None), users, quarantined


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


class XClient:
    """Talks to one account's X API (or the simulator) with its OAuth 2.0 user token."""

    def __init__(self, account: Account, http: httpx.Client, token: Callable[[], str],
                 policy: RetryPolicy | None = None, governor: Governor | None = None,
                 known_conversations: Callable[[], list[str]] | None = None,
                 refresh: Callable[[], str] | None = None, windows: Windows = Windows(),
                 spellings: SpellingMemory | None = None) -> None:
        validate_id(account.user_id, USER_ID_RE, "user_id")
        self.account = account
        self._http = http
        self._token = token
        self._refresh = refresh  # OAuth 2.0: on a 401, refresh once and retry
        self._policy = policy or RetryPolicy()
        self.governor = governor or Governor()  # X shares one window across its three DM routes
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
