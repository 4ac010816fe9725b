"""Xquik: `GET /x/dm/{userId}/history` (docs/architecture.md §11). One stream per conversation partner.

`account` is the connected account's handle; `userId` the partner's numeric ID (`GET /x/users/{id}`
resolves a username). Pages: `messages`, `has_next_page`, `next_cursor` (opaque). Each history call costs
1 credit per message returned; the audit records it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from dm_pipeline.errors import AuthError, InvalidCursor, MalformedResponse, ProviderError
from dm_pipeline.http.policy import Budget, RetryPolicy, Sent, send
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.models import Account, EventRow, Page, QuarantinedEvent, Stream, UserRow
from dm_pipeline.providers.base import (
    USER_ID_RE,
    ClientBase,
    content_hash,
    id_field,
    normalize_all,
    sanitize_event,
    text_field,
    time_field,
    user_row,
    validate_id,
)

HISTORY = "/x/dm/{userId}/history"
USERNAME_RE = re.compile(r"^[A-Za-z0-9_]{1,15}$")


def map_error(response: httpx.Response) -> ProviderError:
    """Xquik answers `{"error": code, "message"?}`; the code is the audit's error_code. The message is
    not quoted: it is fixed text today, but nothing guarantees it never echoes a request value."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
    code = re.sub(r"[^a-z0-9_]", "_", code.lower())[:64] if code else f"http_{response.status_code}"
    if response.status_code == 401:
        return AuthError(f"Xquik 401 {code}", http_status=401, error_code=code)
    return ProviderError(f"Xquik {response.status_code} {code}", http_status=response.status_code, error_code=code)


def conversation_id(a: str, b: str) -> str:
    """The X 1:1 conversation ID ("{smaller}-{larger}"), so Xquik rows join X rows of the same chat."""
    lo, hi = sorted((a, b), key=int)
    return f"{lo}-{hi}"


def normalize_message(message: dict[str, Any], account_user_id: str, partner_id: str) -> EventRow:
    raw, dirty, flags = sanitize_event(message)
    mid = id_field(raw, "id", flags, required=True) or ""
    media_url = raw.get("mediaUrl")
    media = [{"url": media_url}] if isinstance(media_url, str) and media_url else None
    return EventRow(
        message_id=mid, conversation_id=conversation_id(account_user_id, partner_id), event_type="MessageCreate",
        sender_id=id_field(raw, "senderId", flags), recipient_id=id_field(raw, "receiverId", flags),
        participant_ids=(), created_at=time_field(raw, "createdAt", flags), text=text_field(raw, "text", flags),
        media=media, referenced_tweets=None, reply_to_message_id=None, edit_count=0, raw=raw, sanitized=dirty,
        content_hash=content_hash(raw), flags=tuple(sorted(flags)),
    )


def parse_history(body: Any, account_user_id: str, partner_id: str
                  ) -> tuple[list[EventRow], str | None, list[QuarantinedEvent]]:
    if not isinstance(body, dict) or not isinstance(body.get("messages", []), list):
        raise MalformedResponse("Xquik history is not an object with a `messages` list")
    events, quarantined = normalize_all(body.get("messages") or [],
                                        lambda m: normalize_message(m, account_user_id, partner_id))
    more = body.get("has_next_page") is True
    cursor = body.get("next_cursor")
    if more and not (isinstance(cursor, str) and cursor):
        raise MalformedResponse("Xquik says has_next_page but gives no next_cursor")
    return events, cursor if more else None, quarantined


class XquikClient(ClientBase):
    def __init__(self, account: Account, http: httpx.Client, api_key: Callable[[], str],
                 policy: RetryPolicy | None = None, governor: Governor | None = None,
                 stored_user_id: Callable[[str], str | None] | None = None) -> None:
        super().__init__(account, http, policy, governor)
        self._api_key = api_key
        self._partner_ids: dict[str, str] = {}
        self._stored_user_id = stored_user_id  # username -> ID from earlier lookups (dm_users)
        self._looked_up: list[UserRow] = []

    def streams(self) -> Iterator[Stream]:
        for partner in self.account.partners:
            key = f"with:{partner}"  # Xquik serves a partner's whole history: rows of this stream are judged
            yield Stream(key=key, endpoint=HISTORY, path=partner, sweep_scope=("stream_key", key))

    def _get(self, path: str, params: dict[str, str], budget: Budget) -> Sent:
        request = self._http.build_request("GET", self.account.base_url + path, params=params,
                                           headers={"x-api-key": self._api_key(), "Accept": "application/json"})
        return send(self._http, request, map_error=map_error, policy=self._policy, budget=budget,
                    governor=self.governor)

    def _partner_id(self, partner: str, budget: Budget) -> tuple[str, int]:
        """(numeric ID, requests spent). A username costs one `GET /x/users/{id}` (and a credit) the first
        time only: the profile is stored in dm_users with the page, and later runs read it from there."""
        if partner.isascii() and partner.isdigit():
            return validate_id(partner, USER_ID_RE, "partner"), 0
        if partner in self._partner_ids:
            return self._partner_ids[partner], 0
        validate_id(partner, USERNAME_RE, "partner username")
        stored = self._stored_user_id(partner) if self._stored_user_id else None
        if stored:
            self._partner_ids[partner] = stored
            return stored, 0
        sent = self._get(f"/x/users/{partner}", {}, budget)
        try:
            profile = sent.response.json()
        except ValueError:
            raise MalformedResponse("Xquik user lookup is not valid JSON", requests=sent.requests) from None
        row = user_row(profile) if isinstance(profile, dict) else None
        if row is None:
            raise MalformedResponse("Xquik user lookup without a numeric `id`", requests=sent.requests)
        self._partner_ids[partner] = row.user_id
        self._looked_up.append(row)
        return row.user_id, sent.requests

    def fetch_page(self, stream: Stream, cursor: str | None, budget: Budget) -> Page:
        partner_id, lookups = self._partner_id(stream.path, budget)
        params = {"account": self.account.handle or ""}
        if cursor:
            params["cursor"] = cursor
        try:
            sent = self._get(HISTORY.format(userId=partner_id), params, budget)
        except ProviderError as exc:
            if cursor and exc.http_status == 400 and exc.error_code == "invalid_input":
                raise InvalidCursor("Xquik rejected the stored cursor", http_status=400,
                                    requests=exc.requests + lookups) from None
            exc.requests += lookups
            raise
        try:
            events, next_cursor, quarantined = parse_history(sent.response.json(), self.account.user_id,
                                                             partner_id)
        except ValueError:
            raise MalformedResponse("Xquik response is not valid JSON", http_status=sent.response.status_code,
                                    requests=sent.requests + lookups) from None
        users, self._looked_up = tuple(self._looked_up), []
        return Page(events=tuple(events), next_cursor=next_cursor, http_status=sent.response.status_code,
                    requests=sent.requests + lookups, rate_limit=sent.rate_limit, users=users,
                    credits=len(events) + len(quarantined) + lookups, quarantined=tuple(quarantined))
