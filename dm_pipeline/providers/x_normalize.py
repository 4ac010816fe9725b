"""X API v2 Direct Messages: the pure normalizer of a 200 body (docs/architecture.md §11; spec: tests/fixtures/).

`parse_page` reads a page (events, next cursor, users, quarantined events); `normalize_event` turns one
`DmEvent` and the page's `includes` into one dm_history row. A 2.167-shaped answer (`referenced_posts`,
`entities`, Posts in `includes.posts`) is read in 2.159's shape (`canonical_event`, `canonical_post`), so
stored rows do not depend on the spelling the client asked in (providers/x_api.py). No I/O here.
"""

from __future__ import annotations

import re
from typing import Any

from dm_pipeline.errors import MalformedResponse, ProviderError
from dm_pipeline.models import EventRow, QuarantinedEvent, UserRow
from dm_pipeline.providers.base import (
    BadEvent,
    as_list,
    content_hash,
    id_field,
    normalize_all,
    sanitize,
    sanitize_event,
    text_field,
    time_field,
    user_row,
)

_ENTITY_KEYS = ("urls", "hashtags", "mentions", "cashtags")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
MAX_CODE_LEN = 64
PARTIAL_ERROR = "partial_error"  # a 200 `errors` array without data whose first entry has no usable `type`


def problem_slug(ptype: object) -> str:
    """An X problem URI's last segment as an error code ("https://api.twitter.com/2/problems/resource-not-found"
    -> "resource_not_found"), or "" when `ptype` is no problem URI. The code reaches the audit row and the
    logs, so whatever the body holds comes out as [a-z0-9_]{1,64} or not at all."""
    if not isinstance(ptype, str) or "/problems/" not in ptype:
        return ""
    slug = _NOT_SLUG.sub("_", ptype.rsplit("/", 1)[-1][:256].lower()).strip("_")
    return slug[:MAX_CODE_LEN].rstrip("_")


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
    raw, dirty, flags = sanitize_event(event)
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
