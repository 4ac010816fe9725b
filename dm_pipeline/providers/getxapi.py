"""GetXAPI: `POST /twitter/dm/list` (docs/architecture.md §11). One stream per inbox tab (all, requests, hidden).

A page carries `messages` (the stream), plus `conversations`, `events` and `users`, all stored in the
page's transaction. `edit_count` changes update the row in place (a sweep re-reads old pages).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from dm_pipeline.errors import AuthError, ConfigError, InvalidCursor, MalformedResponse, ProviderError
from dm_pipeline.http.policy import Budget, RetryPolicy, send
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.models import Account, ConversationEventRow, ConversationRow, EventRow, Page, Stream
from dm_pipeline.providers.base import (
    ClientBase,
    as_list,
    content_hash,
    id_field,
    normalize_all,
    parse_timestamp,
    sanitize,
    sanitize_event,
    text_field,
    time_field,
    user_row,
)

LIST = "/twitter/dm/list"


def map_error(response: httpx.Response) -> ProviderError:
    """GetXAPI errors are `{"error": "<sentence>"}`: classified by status and wording, never quoted."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = str(body.get("error") or "").lower() if isinstance(body, dict) else ""
    status = response.status_code
    if status == 401:
        code = "invalid_auth_token" if "auth_token" in message else "invalid_api_key"
        return AuthError(f"GetXAPI 401 {code}", http_status=401, error_code=code)
    if status == 400 and "cursor" in message:
        return InvalidCursor("GetXAPI rejected the stored cursor", http_status=400)
    code = {400: "invalid_tab" if "tab" in message else "invalid_request", 402: "no_credits",
            403: "forbidden", 404: "not_found"}.get(status, f"http_{status}")
    return ProviderError(f"GetXAPI {status} {code}", http_status=status, error_code=code)


def normalize_message(message: dict[str, Any]) -> EventRow:
    raw, dirty, flags = sanitize_event(message)
    mid = id_field(raw, "id", flags, required=True) or ""
    media = raw.get("media")
    shared = raw.get("shared_tweet")
    edit_count = raw.get("edit_count")
    if edit_count is not None and not isinstance(edit_count, int):
        flags.add("coerced_types")
    conversation = raw.get("conversationId")
    return EventRow(
        message_id=mid, conversation_id=conversation if isinstance(conversation, str) else None,
        event_type="MessageCreate", sender_id=id_field(raw, "senderId", flags),
        recipient_id=id_field(raw, "recipientId", flags), participant_ids=(),
        created_at=time_field(raw, "createdAt", flags), text=text_field(raw, "text", flags),
        media=[media] if isinstance(media, dict) else None,
        referenced_tweets=[shared] if isinstance(shared, dict) and shared.get("id") else None,
        reply_to_message_id=id_field(raw, "reply_to_message_id", flags),
        edit_count=edit_count if isinstance(edit_count, int) else 0, raw=raw, sanitized=dirty,
        content_hash=content_hash(raw), flags=tuple(sorted(flags)),
    )


def normalize_conversation(conv: dict[str, Any]) -> ConversationRow | None:
    raw, _ = sanitize(conv)
    cid = raw.get("conversation_id")
    if not isinstance(cid, str):
        return None
    participants = tuple(str(p.get("id")) for p in raw.get("participants") or () if isinstance(p, dict))
    return ConversationRow(conversation_id=cid, conversation_type=raw.get("type"), participant_ids=participants,
                           raw=raw, content_hash=content_hash(raw))


def normalize_event(event: dict[str, Any]) -> ConversationEventRow:
    raw, _ = sanitize(event)
    # Events may lack an ID: a hash of their content is a stable key, so re-reads deduplicate.
    key = str(raw.get("id") or hashlib.sha256(content_hash(raw).encode()).hexdigest()[:32])
    return ConversationEventRow(event_key=key, conversation_id=raw.get("conversationId"),
                                event_type=str(raw.get("type") or "unknown"),
                                created_at=parse_timestamp(raw.get("createdAt")), raw=raw)


def parse_list(body: Any) -> Page:
    if not isinstance(body, dict) or not isinstance(body.get("messages", []), list):
        raise MalformedResponse("GetXAPI response is not an object with a `messages` list")
    messages, quarantined = normalize_all(body.get("messages") or [], normalize_message)
    users = [row for u in as_list(body.get("users"))
             if isinstance(u, dict) and (row := user_row(u, username_key="screen_name"))]
    conversations = [conv for c in as_list(body.get("conversations")) if isinstance(c, dict)
                     and (conv := normalize_conversation(c))]
    events = [normalize_event(e) for e in as_list(body.get("events")) if isinstance(e, dict)]
    more = body.get("has_more") is True
    cursor = body.get("next_cursor")
    if more and not (isinstance(cursor, str) and cursor):
        raise MalformedResponse("GetXAPI says has_more but gives no next_cursor")
    return Page(events=tuple(messages), next_cursor=cursor if more else None,
                http_status=200, requests=1, users=tuple(users), conversations=tuple(conversations),
                conversation_events=tuple(events), quarantined=tuple(quarantined))


class GetXApiClient(ClientBase):
    def __init__(self, account: Account, http: httpx.Client, api_key: Callable[[], str],
                 secret: Callable[[str | None], str | None], policy: RetryPolicy | None = None,
                 governor: Governor | None = None) -> None:
        super().__init__(account, http, policy, governor)
        self._api_key = api_key
        self._secret = secret  # env-var name -> value (auth_token, ct0, twid)

    def streams(self) -> Iterator[Stream]:
        for tab in self.account.tabs:
            key = f"tab:{tab}"  # a tab serves its whole history; a conversation moved to another tab is
            # restored by that tab's sweep in the same run
            yield Stream(key=key, endpoint=LIST, path=tab, sweep_scope=("stream_key", key))

    def _body(self, tab: str, cursor: str | None) -> dict[str, Any]:
        auth_token = self._secret(self.account.auth_token_env)
        if not auth_token:
            raise ConfigError(f"environment variable {self.account.auth_token_env} (GetXAPI auth_token of account "
                              f"{self.account.key!r}) is not set. Fix: export {self.account.auth_token_env}=…")
        body: dict[str, Any] = {"auth_token": auth_token, "tab": tab, "count": self.account.page_size}
        ct0, twid = self._secret(self.account.ct0_env), self._secret(self.account.twid_env)
        if ct0 and twid:
            body.update(ct0=ct0, twid=twid)
        if cursor:
            body["cursor"] = cursor
        return body

    def fetch_page(self, stream: Stream, cursor: str | None, budget: Budget) -> Page:
        request = self._http.build_request(
            "POST", self.account.base_url + LIST, json=self._body(stream.path, cursor),
            headers={"Authorization": f"Bearer {self._api_key()}", "Accept": "application/json"})
        sent = send(self._http, request, map_error=map_error, policy=self._policy, budget=budget,
                    governor=self.governor)
        try:
            body = sent.response.json()
        except ValueError:
            raise MalformedResponse("GetXAPI response is not valid JSON", http_status=sent.response.status_code,
                                    requests=sent.requests) from None
        page = parse_list(body)
        return Page(events=page.events, next_cursor=page.next_cursor, http_status=sent.response.status_code,
                    requests=sent.requests, rate_limit=sent.rate_limit, users=page.users,
                    conversations=page.conversations, conversation_events=page.conversation_events,
                    quarantined=page.quarantined)
