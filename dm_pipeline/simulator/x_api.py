"""X API v2 DM lookup routes: parameter validation per the OpenAPI spec, field selection, includes,
opaque cursors (see `paging`), X's documented error bodies, and the OAuth 2.0 token endpoint.

Routes (names for faults and logs):

- `dm_events`             GET /2/dm_events: every conversation of the account, last 30 days
- `dm_conversation_with`  GET /2/dm_conversations/with/{participant_id}/dm_events: the 1:1 with that user
- `dm_conversation`       GET /2/dm_conversations/{id}/dm_events: any conversation the account is in
- `oauth_token`           POST /2/oauth2/token (see `oauth`)
- `oauth_authorize`, `oauth_consent`, `users_me`: the consent page and GET /2/users/me (see `consent`)

The conversation routes take the same parameters as `/2/dm_events` and have no 30-day window. A bad path
value is reported with the query errors in one 400 invalid-request ("The `id` query parameter value [..]
does not match ^..$", X's wording for path values). A valid conversation the account is not in, or a
participant it has no 1:1 with (including itself and unknown users), is 403 with a
`not-authorized-for-resource` problem (`resource_type` "user": the spec's enum has no DM conversation).
Cursors are bound to the account and the stream (route plus conversation), so a `/2/dm_events` cursor is
rejected by a conversation route and vice versa. The three GET routes share one rate-limit window.

Authentication (user context only, as the spec's `OAuth2UserToken` / `UserToken` schemes say): a bearer
token (`world.token_for`, or an OAuth 2.0 token from `oauth`), or an OAuth 1.0a signature verified with the
simulator's consumer secret (`oauth1`; `XApi.oauth1.credentials(user_id)`). The app-only bearer token
(`XApi.oauth1.app_bearer_token`) gets X's 403 `unsupported-authentication` problem; anything else 401.

Two spellings of the field parameters (`specs`, in order of preference; both by default):
- 2.159 (the live API's, `x-api-v2-dm-openapi.json`): `tweet.fields`, expansion `referenced_tweets.id`,
  `dm_event.fields` with `sender_id` / `participant_ids` / `referenced_tweets`; events carry
  `referenced_tweets` and flattened entities (`urls`, `hashtags`, ...), includes `tweets`.
- 2.167 (xdk's, `x-api-v2-dm-openapi-v2.167.json`): `post.fields`, expansion `referenced_posts`, the
  smaller `dm_event.fields` enum; events carry `referenced_posts` and an `entities` object, includes
  `posts` (`edit_history_post_ids`, `public_metrics.repost_count`), users' `public_metrics.post_count`.
A request is answered in the first accepted spelling its parameters are valid under; valid under none, it
gets the 400 of the first (so with `specs = ("2.167",)` — X dropped the old names — a 2.159 request gets
"The query parameter [tweet.fields] is not one of [...]"). Error bodies keep the api.twitter.com problem

The vocabulary of both spellings and the 2.167 shapes are in `x_fields`, the error bodies in `x_problems`
(both re-exported here).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from dm_pipeline.simulator.consent import consent_routes
from dm_pipeline.simulator.faults import COMMON, PAGING, Ctx, Fault, Reply, Route
from dm_pipeline.simulator.oauth import UNAUTHORIZED_CLIENT, OAuthServer
from dm_pipeline.simulator.oauth1 import OAuth1Verifier
from dm_pipeline.simulator.paging import CursorCodec, bend, bend_items
from dm_pipeline.simulator.world import EVENT_TYPES, MESSAGE_CREATE, SimEvent, World
from dm_pipeline.simulator.x_fields import (
    DM_EVENT_FIELDS,
    DM_EVENT_FIELDS_V2167,
    DM_EVENTS_PARAMS,
    DM_EVENTS_PARAMS_V2167,
    EXPANSIONS,
    EXPANSIONS_V2167,
    LIST_PARAMS,
    LIST_PARAMS_V2167,
    MEDIA_FIELDS,
    POST_FIELDS,
    SPECS,
    TWEET_FIELDS,
    USER_FIELDS,
    USER_FIELDS_V2167,
    V2159,
    V2167,
    as_post,
    as_user_v2167,
    as_v2167,
)
from dm_pipeline.simulator.x_problems import (
    CLIENT_FORBIDDEN,
    INVALID_REQUEST,
    NOT_AUTHORIZED,
    PROBLEM,
    UNAUTHORIZED,
    UNSUPPORTED_AUTHENTICATION,
    bad_token_error,
    invalid_request,
    not_participant,
    path_error,
    problem,
    usage_capped,
)

__all__ = [
    "CLIENT_FORBIDDEN", "CONVERSATION_ID_PATTERN", "DM_EVENTS_PARAMS", "DM_EVENTS_PARAMS_V2167", "DM_EVENT_FIELDS",
    "DM_EVENT_FIELDS_V2167", "EVENT_TYPES", "EXPANSIONS", "EXPANSIONS_V2167", "INVALID_REQUEST", "LIST_PARAMS",
    "LIST_PARAMS_V2167", "MEDIA_FIELDS", "NOT_AUTHORIZED", "OAUTH_FAULTS", "POST_FIELDS", "PROBLEM", "SPECS",
    "TWEET_FIELDS", "UNAUTHORIZED", "UNSUPPORTED_AUTHENTICATION", "USER_FIELDS", "USER_FIELDS_V2167", "USER_ID_PATTERN",
    "V2159", "V2167", "X_FAULTS", "XApi", "as_post", "as_user_v2167", "as_v2167", "bad_token_error", "dm_conversation",
    "dm_conversation_with", "dm_events", "invalid_request", "not_participant", "page_payload", "parse_dm_events_query",
    "path_error", "problem", "render_event", "usage_capped",
]

# A field name maps to the keys it selects in the world's event dict; `entities` is flattened in DmEvent.
_FIELD_KEYS: dict[str, tuple[str, ...]] = {"entities": ("urls", "hashtags", "mentions", "cashtags")}
# Requesting an expansion puts the ID field it expands into the event, as X does.
_EXPANSION_FIELD = {"attachments.media_keys": "attachments", "participant_ids": "participant_ids",
                    "referenced_tweets.id": "referenced_tweets", "sender_id": "sender_id",
                    "referenced_posts": "referenced_tweets"}
# 2.167 names of what the world keys in 2.159 names: expansions (for `includes_for`).
_EXPANSION_V2159 = {"referenced_posts": "referenced_tweets.id"}
_DEFAULT_FIELDS = {MESSAGE_CREATE: ("id", "event_type", "text")}
_DEFAULT_OTHER = ("id", "event_type", "participant_ids")
USER_ID_PATTERN = "^[0-9]{1,19}$"
CONVERSATION_ID_PATTERN = "^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$"
X_FAULTS = COMMON | PAGING | {"403", "dm_not_permitted", "unsupported_authentication", "usage_capped"}
OAUTH_FAULTS = COMMON
_OPTIONAL = ("created_at", "sender_id", "attachments")      # what `missing_optional` leaves out
_INT = re.compile(r"-?[0-9]+")
_USER_ID = re.compile(USER_ID_PATTERN[1:-1])
_CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN[1:-1])
# X's 403 details for a conversation the account may not read (`{}`: the path value).
_NOT_WITH = "Sorry, you are not authorized to see the DM conversation with the user with id: [{}]."
_NOT_IN = "Sorry, you are not authorized to see the DM conversation with id: [{}]."


# ----------------------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class _Query:
    limit: int
    direction: str | None
    boundary: int | None
    event_types: tuple[str, ...] | None
    lists: dict[str, tuple[str, ...]]
    spec: str = V2159            # the spelling the request used: the answer's shape


class XApi:
    """The X provider: auth (static and OAuth tokens), error bodies and the route table."""

    name = "x"
    prefix = ""
    rate_headers = True             # x-rate-limit-* on every answer

    def __init__(self, world: World, oauth: OAuthServer) -> None:
        self.world = world
        self.oauth = oauth
        self.cursors = CursorCodec(world.cursor_secret)
        self.oauth1 = OAuth1Verifier(world.seed, world.accounts())
        self.specs: tuple[str, ...] = (V2159, V2167)     # accepted spellings, preferred first (settable)
        self.routes: Mapping[tuple[str, str], Route] = {
            ("GET", r"/2/dm_events"): Route("dm_events", lambda ctx: dm_events(self, ctx), X_FAULTS),
            ("GET", r"/2/dm_conversations/with/(?P<participant_id>[^/]*)/dm_events"):
                Route("dm_conversation_with", lambda ctx: dm_conversation_with(self, ctx), X_FAULTS),
            ("GET", r"/2/dm_conversations/(?P<id>[^/]*)/dm_events"):
                Route("dm_conversation", lambda ctx: dm_conversation(self, ctx), X_FAULTS),
            ("POST", r"/2/oauth2/token"): Route("oauth_token", oauth.token_endpoint, OAUTH_FAULTS, limited=False),
            **consent_routes(self),
        }

    # --- provider hooks used by the server ----------------------------------------------------
    def identify(self, ctx: Ctx) -> bool:
        if ctx.route.startswith("oauth_"):       # the token endpoint and the consent page: no bearer token
            ctx.user_id = self.oauth.peek(ctx)
            return True
        scheme, _, token = (ctx.headers.get("authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            ctx.user_id = self.world.account_for_token(token) or self.oauth.account_for(token)
        elif scheme.lower() == "oauth":
            ctx.user_id = self.oauth1.verify(ctx.method, ctx.path, ctx.query, ctx.headers, ctx.body)
        return ctx.user_id is not None

    def app_only(self, ctx: Ctx) -> bool:
        scheme, _, token = (ctx.headers.get("authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.oauth1.app_bearer_token

    def unauthorized(self, ctx: Ctx) -> Reply:
        if self.app_only(ctx):
            return Reply(403, dict(UNSUPPORTED_AUTHENTICATION), content_type=PROBLEM)
        return Reply(401, dict(UNAUTHORIZED), content_type=PROBLEM)

    def rate_limited(self, ctx: Ctx) -> Reply:
        return problem(429, "Too Many Requests", "Too Many Requests")

    def not_found(self) -> Reply:
        return Reply(404, {"errors": [{"message": "Sorry, that page does not exist", "code": 34}]})

    def malformed(self) -> bytes:
        return b'{"data":[{"id":"1","event_type":"MessageCreate","text":"unterminated'

    def fault_reply(self, fault: Fault, ctx: Ctx) -> Reply:
        kind = fault.kind
        if kind == "429":
            return self.rate_limited(ctx)
        if kind == "503":
            return problem(503, "Service Unavailable", "Service Unavailable")
        if kind == "500":
            return problem(500, "Internal Server Error", "Internal Server Error")
        if kind == "401" and ctx.route == "oauth_token":
            return Reply(401, dict(UNAUTHORIZED_CLIENT), content_type="application/json;charset=UTF-8")
        if kind == "401":
            return self.unauthorized(ctx)
        if kind == "403":
            return Reply(403, dict(CLIENT_FORBIDDEN), content_type=PROBLEM)
        if kind == "unsupported_authentication":
            return Reply(403, dict(UNSUPPORTED_AUTHENTICATION), content_type=PROBLEM)
        if kind == "usage_capped":
            return usage_capped(fault.params)
        if kind == "dm_not_permitted":
            name, value = next(iter(ctx.path_params.items()), ("id", ctx.user_id or ""))
            return not_participant(name, value, _NOT_IN.format(value))
        if kind in ("expired_cursor", "invalid_cursor"):
            return invalid_request([bad_token_error(ctx.param("pagination_token") or "")])
        raise ValueError(f"X has no status reply for fault {kind!r}")


def parse_dm_events_query(api: XApi, ctx: Ctx, stream: str,
                          errors: list[tuple[str, str, str]] | None = None) -> _Query | Reply:
    """Validate every parameter as the OpenAPI spec declares it, under each spelling the simulator accepts
    (`api.specs`, preferred first): the first the request is valid under wins; valid under none, the first
    one's 400. X reports all problems at once (`errors`: path-value problems found by the caller)."""
    first: Reply | None = None
    for spec in api.specs:
        parsed = _parse_under(api, ctx, spec, stream, errors)
        if isinstance(parsed, _Query):
            return parsed
        first = first or parsed
    return first or invalid_request(list(errors or []))


def _parse_under(api: XApi, ctx: Ctx, spec: str, stream: str,
                 path_errors: list[tuple[str, str, str]] | None) -> _Query | Reply:
    assert ctx.user_id is not None
    allowed, list_params = SPECS[spec]
    errors = list(path_errors or [])
    for name, values in ctx.query.items():
        if name not in allowed:
            errors.append((name, values[0], f"The query parameter [{name}] is not one of [{','.join(allowed)}]"))
        elif len(values) > 1:
            errors.append((name, ",".join(values), f"The `{name}` query parameter can only be given once"))
    limit = 100
    raw_max = ctx.param("max_results")
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
    token = ctx.param("pagination_token")
    if token is not None:
        decoded = api.cursors.decode(ctx.user_id, stream, token) if len(token) >= 16 else None
        if decoded is None:
            errors.append(bad_token_error(token))
        else:
            direction, boundary = decoded
    lists: dict[str, tuple[str, ...]] = {}
    for name, enum in list_params.items():
        raw = ctx.param(name)
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
    return _Query(limit, direction, boundary, lists.get("event_types"), lists, spec)


@functools.lru_cache(maxsize=256)
def _event_keys(event_type: str, fields: frozenset[str]) -> frozenset[str]:
    """The keys a rendered event of `event_type` carries for the requested `fields` (cached: the serving
    hot path asks this once per event, with a handful of distinct arguments)."""
    keys: set[str] = set(_DEFAULT_FIELDS.get(event_type, _DEFAULT_OTHER))
    for f in fields:
        keys.update(_FIELD_KEYS.get(f, (f,)))
    return frozenset(keys)


# Every key SimEvent.as_dict() can hold: when a request selects all of them (the engine does), no filtering.
_ALL_EVENT_KEYS = frozenset({"id", "event_type", "text", "sender_id", "participant_ids", "dm_conversation_id",
                             "created_at", "attachments", "referenced_tweets", *_FIELD_KEYS["entities"]})


def render_event(ev: SimEvent, fields: set[str] | frozenset[str]) -> dict[str, Any]:
    keys = _event_keys(ev.event_type, fields if isinstance(fields, frozenset) else frozenset(fields))
    if keys >= _ALL_EVENT_KEYS:
        return ev.as_dict()
    return {k: v for k, v in ev.as_dict().items() if k in keys}


def _select(obj: dict[str, Any], always: tuple[str, ...], requested: tuple[str, ...]) -> dict[str, Any]:
    keys = set(always) | set(requested)
    return {k: v for k, v in obj.items() if k in keys}


def page_payload(api: XApi, ctx: Ctx, q: _Query, stream: str) -> dict[str, Any]:
    """The 200 body for one page of a stream: data, includes and meta, bent by a mutate fault."""
    user = ctx.user_id
    assert user is not None
    world = api.world
    before = q.boundary if q.direction == "n" else None
    after = q.boundary if q.direction == "p" else None
    page = world.page(user, stream, before=before, after=after, limit=q.limit, event_types=q.event_types)
    sent = ctx.param("pagination_token") or api.cursors.start(user, stream)
    events, next_token = bend(ctx.fault, page.events, page.more_older, sent,
                              lambda num: api.cursors.encode(user, stream, "n", num))
    if not events:
        meta: dict[str, Any] = {"result_count": 0}
        if next_token:
            meta["next_token"] = next_token
        return {"meta": meta}
    expansions = q.lists.get("expansions", ())
    fields = frozenset(q.lists.get("dm_event.fields", ())) | {_EXPANSION_FIELD[e] for e in expansions}
    data = [render_event(e, fields) for e in events]
    if q.spec == V2167:
        data = [as_v2167(e) for e in data]
    bend_items(ctx.fault, data, "text", _OPTIONAL)
    body: dict[str, Any] = {"data": data}
    inc = world.includes_for(events, [_EXPANSION_V2159.get(e, e) for e in expansions])
    includes: dict[str, Any] = {}
    if "media" in inc:
        includes["media"] = [_select(m.as_dict(), ("media_key", "type"), q.lists.get("media.fields", ()))
                             for m in inc["media"]]
    if "users" in inc:
        shaped = as_user_v2167 if q.spec == V2167 else dict
        includes["users"] = [_select(shaped(u.as_dict()), ("id", "name", "username"), q.lists.get("user.fields", ()))
                             for u in inc["users"]]
    if "tweets" in inc and q.spec == V2167:
        includes["posts"] = [_select(as_post(t.as_dict()), ("id", "text", "edit_history_post_ids"),
                                     q.lists.get("post.fields", ())) for t in inc["tweets"]]
    elif "tweets" in inc:
        includes["tweets"] = [_select(t.as_dict(), ("id", "text", "edit_history_tweet_ids"),
                                      q.lists.get("tweet.fields", ())) for t in inc["tweets"]]
    if includes:
        body["includes"] = includes
    meta = {"result_count": len(events)}
    if next_token:
        meta["next_token"] = next_token
    if q.direction is not None and page.more_newer:
        meta["previous_token"] = api.cursors.encode(user, stream, "p", events[0].num)
    body["meta"] = meta
    return body


def dm_events(api: XApi, ctx: Ctx) -> Reply:
    """GET /2/dm_events: the account's events across all conversations, last 30 days, newest first."""
    q = parse_dm_events_query(api, ctx, "dm_events")
    if isinstance(q, Reply):
        return q
    return Reply(200, page_payload(api, ctx, q, "dm_events"))


def _conversation_events(api: XApi, ctx: Ctx, param: str, valid: re.Pattern[str], pattern: str, stream: str,
                         readable: Callable[[str, str], bool], refusal: str) -> Reply:
    """One conversation's events, no window. The two routes differ only in data: the path parameter, X's
    `pattern` for it (`valid`, compiled), whether the account may read it, and X's 403 `refusal` detail."""
    assert ctx.user_id is not None
    value = unquote(ctx.path_params[param])
    bad = [] if valid.fullmatch(value) else [path_error(param, value, pattern)]
    stream = f"{stream}:{value}"
    q = parse_dm_events_query(api, ctx, stream, bad)
    if isinstance(q, Reply):
        return q
    if not readable(ctx.user_id, value):
        return not_participant(param, value, refusal.format(value))
    return Reply(200, page_payload(api, ctx, q, stream))


def dm_conversation_with(api: XApi, ctx: Ctx) -> Reply:
    """GET /2/dm_conversations/with/{participant_id}/dm_events: the 1:1 with that user, no window."""
    return _conversation_events(api, ctx, "participant_id", _USER_ID, USER_ID_PATTERN, "dm_conversation_with",
                                lambda user, pid: api.world.one_to_one(user, pid) is not None, _NOT_WITH)


def dm_conversation(api: XApi, ctx: Ctx) -> Reply:
    """GET /2/dm_conversations/{id}/dm_events: a conversation the account is in, no window."""
    return _conversation_events(api, ctx, "id", _CONVERSATION_ID, CONVERSATION_ID_PATTERN, "dm_conversation",
                                api.world.can_read, _NOT_IN)
