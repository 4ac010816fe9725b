"""X API v2 DM lookup routes: parameter validation per the OpenAPI spec, field selection, includes,
opaque cursors and X's documented error bodies.

Cursors are `base32(direction + snowflake + MAC(account, route, direction, snowflake))`: "events older
(or newer) than this ID". They name a position, not an offset, so new events never shift later pages and
a deleted boundary event still works; the MAC makes a cursor useless for another account or route.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dm_pipeline.simulator.faults import Ctx, Fault, Reply, Route
from dm_pipeline.simulator.world import EVENT_TYPES, MESSAGE_CREATE, SimEvent, World

PROBLEM = "application/problem+json"
INVALID_REQUEST = "https://api.twitter.com/2/problems/invalid-request"

# Enums exactly as in x-api-v2-dm-openapi.json (the OpenAPI test checks they still match).
DM_EVENT_FIELDS = ("attachments", "created_at", "dm_conversation_id", "entities", "event_type", "id",
                   "participant_ids", "referenced_tweets", "sender_id", "text")
EXPANSIONS = ("attachments.media_keys", "participant_ids", "referenced_tweets.id", "sender_id")
MEDIA_FIELDS = ("alt_text", "duration_ms", "height", "media_key", "non_public_metrics", "organic_metrics",
                "preview_image_url", "promoted_metrics", "public_metrics", "type", "url", "variants", "width")
USER_FIELDS = ("affiliation", "confirmed_email", "connection_status", "created_at", "description", "entities",
               "id", "is_identity_verified", "location", "most_recent_tweet_id", "name", "parody",
               "pinned_tweet_id", "profile_banner_url", "profile_image_url", "protected", "public_metrics",
               "receives_your_dm", "subscription", "subscription_type", "url", "username", "verified",
               "verified_followers_count", "verified_type", "withheld")
TWEET_FIELDS = ("article", "attachments", "author_id", "card_uri", "community_id", "context_annotations",
                "conversation_id", "created_at", "display_text_range", "edit_controls", "edit_history_tweet_ids",
                "entities", "geo", "id", "in_reply_to_user_id", "lang", "media_metadata", "non_public_metrics",
                "note_tweet", "organic_metrics", "possibly_sensitive", "promoted_metrics", "public_metrics",
                "referenced_tweets", "reply_settings", "scopes", "source", "suggested_source_links",
                "suggested_source_links_with_counts", "text", "withheld")
LIST_PARAMS: dict[str, tuple[str, ...]] = {
    "event_types": EVENT_TYPES, "dm_event.fields": DM_EVENT_FIELDS, "expansions": EXPANSIONS,
    "media.fields": MEDIA_FIELDS, "user.fields": USER_FIELDS, "tweet.fields": TWEET_FIELDS,
}
DM_EVENTS_PARAMS = ("dm_event.fields", "event_types", "expansions", "max_results", "media.fields",
                    "pagination_token", "tweet.fields", "user.fields")

# A field name maps to the keys it selects in the world's event dict; `entities` is flattened in DmEvent.
_FIELD_KEYS: dict[str, tuple[str, ...]] = {"entities": ("urls", "hashtags", "mentions", "cashtags")}
# Requesting an expansion puts the ID field it expands into the event, as X does.
_EXPANSION_FIELD = {"attachments.media_keys": "attachments", "participant_ids": "participant_ids",
                    "referenced_tweets.id": "referenced_tweets", "sender_id": "sender_id"}
_DEFAULT_FIELDS = {MESSAGE_CREATE: ("id", "event_type", "text")}
_DEFAULT_OTHER = ("id", "event_type", "participant_ids")
_INT = re.compile(r"-?[0-9]+")


# ------------------------------------------------------------------------------------ error bodies
def problem(status: int, title: str, detail: str, type_: str = "about:blank") -> Reply:
    return Reply(status, {"title": title, "detail": detail, "type": type_, "status": status},
                 content_type=PROBLEM)


def invalid_request(errors: list[tuple[str, str, str]]) -> Reply:
    """X's 400 body; `errors` are (parameter, value, message)."""
    return Reply(400, {
        "errors": [{"parameters": {p: [v]}, "message": m} for p, v, m in errors],
        "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
        "type": INVALID_REQUEST}, content_type=PROBLEM)


def bad_token_error(value: str) -> tuple[str, str, str]:
    return ("pagination_token", value,
            f"The `pagination_token` query parameter value [{value}] is not a valid token.")


UNAUTHORIZED = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
CLIENT_FORBIDDEN = {
    "client_id": "29427710",
    "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use keys and tokens "
              "from a Twitter developer App that is attached to a Project. You can create a project via "
              "the developer portal.",
    "registration_url": "https://developer.x.com/en/portal/product",
    "title": "Client Forbidden",
    "required_enrollment": "Appropriate Level of API Access",
    "reason": "client-not-enrolled",
    "type": "https://api.twitter.com/2/problems/client-forbidden",
}


# ------------------------------------------------------------------------------------------ cursors
class CursorCodec:
    _MAX = (1 << 63) - 1     # "older than everything": the first page, as a cursor

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, user_id: str, route: str, raw: bytes) -> bytes:
        return hmac.new(self._secret, f"{user_id}:{route}:".encode() + raw, hashlib.sha256).digest()[:6]

    def encode(self, user_id: str, route: str, direction: str, num: int) -> str:
        raw = direction.encode() + struct.pack(">Q", num)
        return base64.b32encode(raw + self._mac(user_id, route, raw)).decode().rstrip("=")

    def start(self, user_id: str, route: str) -> str:
        return self.encode(user_id, route, "n", self._MAX)

    def decode(self, user_id: str, route: str, token: str) -> tuple[str, int] | None:
        """(direction, snowflake), or None if the token was not issued for this account and route."""
        try:
            blob = base64.b32decode(token + "=" * (-len(token) % 8))
        except ValueError:
            return None
        if len(blob) != 15 or blob[:1] not in (b"n", b"p"):
            return None
        raw, mac = blob[:9], blob[9:]
        if not hmac.compare_digest(mac, self._mac(user_id, route, raw)):
            return None
        return raw[:1].decode(), struct.unpack(">Q", raw[1:])[0]


# ----------------------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class _Query:
    limit: int
    direction: str | None
    boundary: int | None
    event_types: tuple[str, ...] | None
    lists: dict[str, tuple[str, ...]]


class XApi:
    """The X provider: auth, error bodies and the route table the server dispatches on."""

    name = "x"

    def __init__(self, world: World) -> None:
        self.world = world
        self.cursors = CursorCodec(world.cursor_secret)
        self.routes: Mapping[tuple[str, str], Route] = {
            ("GET", r"/2/dm_events"): Route("dm_events", lambda ctx: dm_events(self, ctx)),
        }

    # --- provider hooks used by the server ----------------------------------------------------
    def authenticate(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        return self.world.account_for_token(token.strip()) if scheme.lower() == "bearer" else None

    def unauthorized(self) -> Reply:
        return Reply(401, dict(UNAUTHORIZED), content_type=PROBLEM)

    def rate_limited(self) -> Reply:
        return problem(429, "Too Many Requests", "Too Many Requests")

    def fault_reply(self, fault: Fault, ctx: Ctx) -> Reply:
        kind = fault.kind
        if kind == "429":
            return self.rate_limited()
        if kind == "503":
            return problem(503, "Service Unavailable", "Service Unavailable")
        if kind == "500":
            return problem(500, "Internal Server Error", "Internal Server Error")
        if kind == "403":
            return Reply(403, dict(CLIENT_FORBIDDEN), content_type=PROBLEM)
        if kind == "401":
            return self.unauthorized()
        if kind == "invalid_cursor":
            return invalid_request([bad_token_error(_one(ctx.query, "pagination_token") or "")])
        raise ValueError(f"X has no status reply for fault {kind!r}")

    def mutate(self, fault: Fault, reply: Reply, ctx: Ctx) -> Reply:
        """Bend a successful page: the replacement cursor always points at unserved events, so
        `empty_page` loses nothing and `cursor_loop` only repeats."""
        if reply.status != 200 or not isinstance(reply.payload, dict) or ctx.user_id is None:
            return reply
        sent = _one(ctx.query, "pagination_token") or self.cursors.start(ctx.user_id, ctx.route)
        meta = reply.payload.setdefault("meta", {})
        if fault.kind == "empty_page":
            reply.payload = {"meta": {"result_count": 0, "next_token": sent}}
        elif fault.kind == "cursor_loop":
            meta["next_token"] = sent
        return reply


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def parse_dm_events_query(api: XApi, ctx: Ctx, allowed: tuple[str, ...]) -> _Query | Reply:
    """Validate every parameter as the OpenAPI spec declares it; X reports all problems at once."""
    assert ctx.user_id is not None
    errors: list[tuple[str, str, str]] = []
    for name, values in ctx.query.items():
        if name not in allowed:
            errors.append((name, values[0], f"The query parameter [{name}] is not one of [{','.join(allowed)}]"))
        elif len(values) > 1:
            errors.append((name, ",".join(values), f"The `{name}` query parameter can only be given once"))
    limit = 100
    raw_max = _one(ctx.query, "max_results")
    if raw_max is not None:
        if not _INT.fullmatch(raw_max):
            errors.append(("max_results", raw_max,
                           f"The `max_results` query parameter value [{raw_max}] is not a valid integer"))
        elif not 1 <= int(raw_max) <= 100:
            errors.append(("max_results", raw_max,
                           f"The `max_results` query parameter value [{raw_max}] is not between 1 and 100"))
        else:
            limit = int(raw_max)
    direction: str | None = None
    boundary: int | None = None
    token = _one(ctx.query, "pagination_token")
    if token is not None:
        decoded = api.cursors.decode(ctx.user_id, ctx.route, token) if len(token) >= 16 else None
        if decoded is None:
            errors.append(bad_token_error(token))
        else:
            direction, boundary = decoded
    lists: dict[str, tuple[str, ...]] = {}
    for name, enum in LIST_PARAMS.items():
        raw = _one(ctx.query, name)
        if raw is None or name not in allowed:
            continue
        items = tuple(raw.split(","))
        bad = [i for i in items if i not in enum]
        if bad or not raw:
            errors.append((name, raw, f"The `{name}` query parameter value [{bad[0] if bad else raw}] "
                                      f"is not one of [{','.join(enum)}]"))
        elif len(set(items)) != len(items):
            errors.append((name, raw, f"The `{name}` query parameter value [{raw}] contains duplicate values"))
        else:
            lists[name] = items
    if errors:
        return invalid_request(errors)
    return _Query(limit, direction, boundary, lists.get("event_types"), lists)


def render_event(ev: SimEvent, fields: set[str]) -> dict[str, Any]:
    keys: set[str] = set(_DEFAULT_FIELDS.get(ev.event_type, _DEFAULT_OTHER))
    for f in fields:
        keys.update(_FIELD_KEYS.get(f, (f,)))
    return {k: v for k, v in ev.as_dict().items() if k in keys}


def _select(obj: dict[str, Any], always: tuple[str, ...], requested: tuple[str, ...]) -> dict[str, Any]:
    keys = set(always) | set(requested)
    return {k: v for k, v in obj.items() if k in keys}


def page_payload(api: XApi, ctx: Ctx, q: _Query, route_key: str) -> dict[str, Any]:
    """The 200 body for one page of a stream: data, includes and meta."""
    assert ctx.user_id is not None
    world = api.world
    before = q.boundary if q.direction == "n" else None
    after = q.boundary if q.direction == "p" else None
    page = world.page(ctx.user_id, route_key, before=before, after=after, limit=q.limit,
                      event_types=q.event_types)
    expansions = q.lists.get("expansions", ())
    fields = set(q.lists.get("dm_event.fields", ())) | {_EXPANSION_FIELD[e] for e in expansions}
    body: dict[str, Any] = {}
    if page.events:
        body["data"] = [render_event(e, fields) for e in page.events]
        inc = world.includes_for(page.events, expansions)
        includes: dict[str, Any] = {}
        if "media" in inc:
            includes["media"] = [_select(m.as_dict(), ("media_key", "type"), q.lists.get("media.fields", ()))
                                 for m in inc["media"]]
        if "users" in inc:
            includes["users"] = [_select(u.as_dict(), ("id", "name", "username"), q.lists.get("user.fields", ()))
                                 for u in inc["users"]]
        if "tweets" in inc:
            includes["tweets"] = [_select(t.as_dict(), ("id", "text", "edit_history_tweet_ids"),
                                          q.lists.get("tweet.fields", ())) for t in inc["tweets"]]
        if includes:
            body["includes"] = includes
    meta: dict[str, Any] = {"result_count": len(page.events)}
    if page.more_older:
        meta["next_token"] = api.cursors.encode(ctx.user_id, ctx.route, "n", page.events[-1].num)
    if q.direction is not None and page.more_newer:
        meta["previous_token"] = api.cursors.encode(ctx.user_id, ctx.route, "p", page.events[0].num)
    body["meta"] = meta
    return body


def dm_events(api: XApi, ctx: Ctx) -> Reply:
    """GET /2/dm_events: the account's events across all conversations, last 30 days, newest first."""
    q = parse_dm_events_query(api, ctx, DM_EVENTS_PARAMS)
    if isinstance(q, Reply):
        return q
    return Reply(200, page_payload(api, ctx, q, "dm_events"))
