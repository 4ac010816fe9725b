"""GetXAPI `POST /twitter/dm/list` (docs/architecture.md §11), mounted at `/getxapi` (the real base is
https://api.getxapi.com). Route name `getxapi_list`.

Auth: `Authorization: Bearer <world.getxapi_key()>`, else 401 `{"error":"Invalid API key"}`. The JSON body's
`auth_token` (`world.getxapi_auth_token(user_id)`) picks the account; unknown → 401 `{"error":"Invalid
auth_token - could not extract userId"}`. `ct0` and `twid` are optional; one without the other is ignored
(the server resolves them). Both given with `twid` other than `u=<user_id>` (`u%3D…` accepted) fails "on
the Twitter action": 401 `{"error":"Twitter rejected the supplied ct0/twid - send current cookies or omit
them"}`. Other 400s: a body that is not a JSON object (`Invalid JSON body`), no `auth_token`
(`auth_token is required`), a bad `tab` (GetXAPI's documented message), `count` not an integer 1-100
(`count must be an integer between 1 and 100`), a bad cursor (`Invalid cursor`; cursors are per tab).
The served `next_cursor` is opaque (base32, bound to the account and tab); a numeric cursor, as in GetXAPI's
documented example (`"1928684596763250690"`: a snowflake), is also accepted and means "older than that ID".

A page holds the next `count` (default 50) messages of the tab, newest first across its conversations
(tabs: see `world`). `events` holds the tab's non-message events whose IDs fall in the page's span
(older than the cursor, newer than the page's last message, or everything older on the last page), so a
full walk yields every event exactly once: `participants_join` (`senderId` = inviter) and
`participants_leave` with `participants: [user IDs]`, and `trust_conversation` (`reason: accept`). Each
event's `id` is its snowflake (an X event's ID for join/leave). `conversations` are those the page's
messages and events belong to, newest activity first, with the other participants (not the account) and
the conversation's current last message; `users` maps every referenced user ID (the account included) to
a profile. `next_cursor` is present iff `has_more`. Messages: `recipientId` is null in groups, `card`
is always null, `links` are the message's URLs, `reactions` and `muted`/`unread` are seeded from IDs,
`edit_count` and `text` follow `world.edit()`.

No rate-limit headers; a 429 carries `Retry-After` (window end; a `429` fault only with `retry_after`).
Bodies: 429 `{"error":"Rate limit exceeded"}`, 503 `{"error":"Service temporarily unavailable"}`, 500
`{"error":"Internal server error"}`, 400 `{"error":"Invalid cursor"}` (`expired_cursor`), unknown path
404 `{"error":"Not found"}`. The `401` fault answers the auth_token error (param `api_key=True`: the key's).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from dm_pipeline.simulator.faults import COMMON, PAGING, Ctx, ErrorFieldHooks, Fault, Reply, Route
from dm_pipeline.simulator.paging import CursorCodec, bend, bend_items
from dm_pipeline.simulator.world import (
    MESSAGE_CREATE,
    PARTICIPANTS_JOIN,
    PARTICIPANTS_LEAVE,
    TABS,
    SimConversation,
    SimEvent,
    SimUser,
    World,
    iso_ms,
)

PREFIX = "/getxapi"
INVALID_API_KEY = "Invalid API key"
INVALID_AUTH_TOKEN = "Invalid auth_token - could not extract userId"
STALE_COOKIES = "Twitter rejected the supplied ct0/twid - send current cookies or omit them"
LIST_FAULTS = COMMON | PAGING
_MESSAGE_OPTIONAL = ("createdAt", "senderId", "media")
_EVENT_TYPES = {PARTICIPANTS_JOIN: "participants_join", PARTICIPANTS_LEAVE: "participants_leave"}
_GROUP_NAMES = ("Weekend plans 🏕️", None, "家族グループ", "Project Zeta", "فريق العمل", None)
_REACTIONS = ("❤️", "😂", "👍", "😮", "😢", "🔥")
_SNOWFLAKE = re.compile(r"[0-9]{1,19}")


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


def invalid_tab(tab: object) -> str:
    return (f'Invalid tab "{tab}". Allowed: all (inbox), requests (message requests), '
            f"hidden (low-quality/spam).")


def _h(*parts: str) -> int:
    """A stable small hash for seeded, per-object flags."""
    return int.from_bytes(hashlib.sha256(":".join(parts).encode()).digest()[:4], "big")


def user_obj(u: SimUser) -> dict[str, Any]:
    return {"id": u.id, "screen_name": u.username, "name": u.name, "description": u.description,
            "profile_image_url": f"https://pbs.twimg.com/profile_images/{u.id}/avatar_normal.jpg",
            "followers_count": u.followers, "friends_count": u.followers // 3 + 7, "verified": u.verified,
            "is_blue_verified": u.verified, "protected": u.protected}


class GetXApi(ErrorFieldHooks):
    name = "getxapi"
    prefix = PREFIX
    unauthorized_error = INVALID_API_KEY
    rate_limited_error = "Rate limit exceeded"
    not_found_error = "Not found"
    malformed_body = b'{"userId":"1","tab":"all","messages":[{"id":"1","text":"unterminated'

    def __init__(self, world: World) -> None:
        self.world = world
        self.cursors = CursorCodec(world.cursor_secret)
        self.routes: Mapping[tuple[str, str], Route] = {
            ("POST", r"/twitter/dm/list"): Route("getxapi_list", self.dm_list, LIST_FAULTS),
        }

    # --- provider hooks -----------------------------------------------------------------------
    def identify(self, ctx: Ctx) -> bool:
        scheme, _, key = (ctx.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.world.getxapi_key():
            return False
        try:
            ctx.data = json.loads(ctx.body) if ctx.body else None
        except ValueError:
            ctx.data = None
        if isinstance(ctx.data, dict):
            token = ctx.data.get("auth_token")
            ctx.user_id = self.world.account_for_auth_token(token) if isinstance(token, str) else None
            ctx.log_query = {k: str(ctx.data[k]) for k in ("tab", "cursor", "count") if k in ctx.data}
        return True

    def fault_reply(self, fault: Fault, ctx: Ctx) -> Reply:
        replies = {"429": (429, "Rate limit exceeded"), "503": (503, "Service temporarily unavailable"),
                   "500": (500, "Internal server error"), "expired_cursor": (400, "Invalid cursor"),
                   "invalid_cursor": (400, "Invalid cursor"),
                   "401": (401, INVALID_API_KEY if fault.params.get("api_key") else INVALID_AUTH_TOKEN)}
        if fault.kind in replies:
            return error(*replies[fault.kind])
        raise ValueError(f"GetXAPI has no status reply for fault {fault.kind!r}")

    # --- the route ----------------------------------------------------------------------------
    def dm_list(self, ctx: Ctx) -> Reply:
        body = ctx.data
        if not isinstance(body, dict):
            return error(400, "Invalid JSON body")
        if not isinstance(body.get("auth_token"), str) or not body["auth_token"]:
            return error(400, "auth_token is required")
        user = ctx.user_id
        if user is None:
            return error(401, INVALID_AUTH_TOKEN)
        ct0, twid = body.get("ct0"), body.get("twid")
        if ct0 and twid and twid not in (f"u={user}", f"u%3D{user}"):
            return error(401, STALE_COOKIES)
        tab = body.get("tab") or "all"              # null / "" mean the default, as omitting does
        if tab not in TABS:
            return error(400, invalid_tab(tab))
        count = 50 if body.get("count") is None else body["count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            return error(400, "count must be an integer between 1 and 100")
        stream = f"getxapi:{tab}"
        cursor = body.get("cursor")
        before: int | None = None
        if isinstance(cursor, str) and _SNOWFLAKE.fullmatch(cursor) and int(cursor) < 1 << 63:
            before = int(cursor)                       # the documented numeric form: older than that ID
        elif cursor is not None and cursor != "":
            decoded = self.cursors.decode(user, stream, cursor) if isinstance(cursor, str) else None
            if decoded is None or decoded[0] != "n":
                return error(400, "Invalid cursor")
            before = decoded[1]
        page = self.world.page(user, stream, before=before, limit=count)
        sent = cursor or self.cursors.start(user, stream)
        messages, next_cursor = bend(ctx.fault, page.events, page.more_older, sent,
                                     lambda num: self.cursors.encode(user, stream, "n", num))
        events: list[SimEvent] = []
        if ctx.fault is None or ctx.fault.kind != "empty_page":
            above = page.events[-1].num if page.more_older else -1
            events = self.world.between(user, f"getxapi_events:{tab}", above=above, below=before)
        return Reply(200, self.payload(ctx, user, tab, messages, events, next_cursor))

    def payload(self, ctx: Ctx, user: str, tab: str, messages: list[SimEvent], events: list[SimEvent],
                next_cursor: str | None) -> dict[str, Any]:
        world = self.world
        users: dict[str, SimUser] = {user: world.user(user)}
        conv_ids = list(dict.fromkeys(e.dm_conversation_id for e in [*messages, *events]))
        convs = [self.conversation(user, world.conversation(c), users) for c in conv_ids]
        convs.sort(key=lambda c: c["sort_timestamp"] or "", reverse=True)
        rendered = [self.message(e, users) for e in messages]
        bend_items(ctx.fault, rendered, "text", _MESSAGE_OPTIONAL)
        rendered_events = [self.event(e, users) for e in events]
        bend_items(ctx.fault, rendered_events, "text", ("createdAt",))
        out: dict[str, Any] = {"userId": user, "tab": tab, "conversation_count": len(convs),
                               "message_count": len(rendered), "has_more": next_cursor is not None}
        if next_cursor is not None:
            out["next_cursor"] = next_cursor
        out.update(conversations=convs, messages=rendered, events=rendered_events,
                   users={u.id: user_obj(u) for u in users.values()})
        return out

    def message(self, ev: SimEvent, users: dict[str, SimUser]) -> dict[str, Any]:
        world = self.world
        conv = world.conversation(ev.dm_conversation_id)
        sender = ev.sender_id or ""
        recipient = None if conv.is_group else next(m for m in conv.members if m != sender)
        for uid in (sender, recipient):
            if uid:
                users.setdefault(uid, world.user(uid))
        return {"id": ev.id, "conversationId": ev.dm_conversation_id, "createdAt": iso_ms(ev.created_ms),
                "senderId": sender, "recipientId": recipient, "text": ev.text or "",
                "media": self.media(ev), "shared_tweet": self.shared_tweet(ev, users), "card": None,
                "links": [{"url": u["url"], "expanded_url": u["expanded_url"], "display_url": u["display_url"]}
                          for u in (ev.entities or {}).get("urls", [])],
                "reactions": self.reactions(ev, conv),
                "reply_to_message_id": str(ev.reply_to) if ev.reply_to is not None else None,
                "edit_count": ev.edit_count}

    def media(self, ev: SimEvent) -> dict[str, Any] | None:
        if not ev.media_keys:
            return None
        m = self.world.media(ev.media_keys[0]).as_dict()
        if m["type"] == "photo":
            return {"type": "photo", "url": m["url"], "width": m["width"], "height": m["height"]}
        out = {"type": m["type"], "url": m["preview_image_url"], "width": m["width"], "height": m["height"],
               "video_url": m["variants"][0]["url"]}
        if m["type"] == "video":
            out["duration_ms"] = m["duration_ms"]
        return out

    def shared_tweet(self, ev: SimEvent, users: dict[str, SimUser]) -> dict[str, Any] | None:
        if not ev.tweet_ids:
            return None
        t = self.world.tweet(ev.tweet_ids[0])
        author = users.setdefault(t.author_id, self.world.user(t.author_id))
        return {"id": t.id, "url": f"https://x.com/{author.username}/status/{t.id}", "text": t.text,
                "author": {"id": author.id, "screen_name": author.username, "name": author.name}}

    def reactions(self, ev: SimEvent, conv: SimConversation) -> list[dict[str, Any]]:
        if ev.num % 7 != 3:
            return []
        others = [m for m in conv.members if m != ev.sender_id] or conv.members
        who = others[ev.num % len(others)]
        return [{"emoji": _REACTIONS[ev.num % len(_REACTIONS)], "senderId": who}]

    def event(self, ev: SimEvent, users: dict[str, SimUser]) -> dict[str, Any]:
        base = {"id": ev.id, "conversationId": ev.dm_conversation_id, "createdAt": iso_ms(ev.created_ms)}
        if ev.event_type not in _EVENT_TYPES:
            return {"type": "trust_conversation", **base, "reason": "accept"}
        out: dict[str, Any] = {"type": _EVENT_TYPES[ev.event_type], **base}
        if ev.sender_id is not None:
            out["senderId"] = ev.sender_id
        out["participants"] = list(ev.participant_ids)
        for uid in [*ev.participant_ids, *([ev.sender_id] if ev.sender_id else [])]:
            users.setdefault(uid, self.world.user(uid))
        return out

    def conversation(self, account: str, conv: SimConversation, users: dict[str, SimUser]) -> dict[str, Any]:
        world = self.world
        tab = world.tab_of(account, conv.id)
        newest = world.recent(conv.id, 2)
        last = next(iter(world.recent(conv.id, 1, MESSAGE_CREATE)), None)
        flags = _h(str(world.seed), account, conv.id)
        unread = flags % 4 == 0 and len(newest) > 1
        read = newest[1] if unread else (newest[0] if newest else None)
        participants = [m for m in conv.members if m != account]
        for uid in participants:
            users.setdefault(uid, world.user(uid))
        name = _GROUP_NAMES[flags % len(_GROUP_NAMES)] if conv.is_group else None
        return {
            "conversation_id": conv.id, "type": "GROUP_DM" if conv.is_group else "ONE_TO_ONE", "name": name,
            "avatar_url": f"https://pbs.twimg.com/dm_group_img/{conv.id}/avatar.jpg" if name else None,
            "trusted": tab == "all", "low_quality": tab == "hidden", "muted": flags % 7 == 0, "nsfw": False,
            "read_only": False, "notifications_disabled": flags % 7 == 0, "unread": unread,
            "last_read_event_id": read.id if read else None,
            "sort_timestamp": iso_ms(newest[0].created_ms) if newest else None,
            "participants": [user_obj(users[u]) for u in participants],
            "last_message": {"id": last.id, "text": last.text or "", "senderId": last.sender_id,
                             "createdAt": iso_ms(last.created_ms)} if last else None,
        }

    def truth(self, user_id: str, tab: str, events: bool = False) -> list[dict[str, Any]]:
        """Every message (or event) a full walk of `tab` serves, in GetXAPI's shape, newest first."""
        users: dict[str, SimUser] = {}
        route = f"getxapi_events:{tab}" if events else f"getxapi:{tab}"
        items = self.world.between(user_id, route, above=-1, below=None)
        return [self.event(e, users) if events else self.message(e, users) for e in items]
