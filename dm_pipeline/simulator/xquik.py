"""Xquik (docs/architecture.md §11), mounted at `/xquik/api/v1` (the real base is https://xquik.com/api/v1).

Auth: header `x-api-key: <world.xquik_key()>`; missing or wrong → 401 `{"error":"unauthenticated"}`.

Routes (names for faults and logs):

- `xquik_history`  GET /x/dm/{userId}/history?account=<handle>&cursor=<opaque> — the 1:1 between the
  connected account (`account`: its username, case-insensitive, `@` tolerated, or its numeric ID) and
  `userId`; MessageCreate only, newest first, `page_size` messages a page (default 20: Xquik has no size
  parameter). `{"messages":[{"id","text","senderId","receiverId","createdAt","mediaUrl"?}],
  "has_next_page", "next_cursor"}`; `next_cursor` is `""` on the last page (the official SDK types it as a
  required string). `createdAt` is ISO 8601 UTC with milliseconds and `Z`. `mediaUrl`: the photo URL, or a
  video/GIF's MP4 variant. Cursors are opaque and stable under new messages (see `paging`); the cursor is
  read from `cursor`, else from the aliases the SDK documents, in this order: `next_cursor`, `next_token`,
  `pagination_token`, `continuation_token`. Legacy `maxId=<id>` gives messages with id < maxId; a cursor
  wins over it. An empty cursor is no cursor. Unknown parameters are ignored.
  Checks in order: 401 → 400 account_required (missing/empty `account`) → 400 invalid_input (userId not
  numeric) → 404 account_not_found (no connected account by that handle/ID) → 403 dm_not_permitted (no
  1:1 between them, e.g. userId is the account itself or a stranger) → 400 invalid_input (bad cursor or
  maxId) → 402 no_credits → 200.
- `xquik_user`     GET /x/users/{id} — numeric ID or username (`@` tolerated) →
  `{"id","username","name","canDm":true,"description","location","followers","following","verified",
  "profilePicture","createdAt"}`; unknown → 404 `{"error":"user_not_found"}`; neither an ID nor a handle →
  400 invalid_input. No `account` needed, so its faults match only `user_id=None`.

Credits: one balance for the key (`credits`, default 1,000,000). History costs 1 credit per message
returned (duplicates included), a user lookup 1 credit per 200. A call the balance cannot cover (balance
<= 0 or cost > balance) is 402 `{"error":"no_credits"}` and costs nothing; faulted answers cost nothing.

Rate limits: the Simulator's window applies per connected account; Xquik sends no rate-limit headers,
only `Retry-After` on a 429 (seconds to the window's end; a `429` fault sends it only with
`retry_after`). Other bodies: 429 `{"error":"rate_limited"}`, 503 `{"error":"service_unavailable"}`,
500 `{"error":"internal_error"}`, unknown path 404 `{"error":"not_found"}`, and the fault-only 403
`account_restricted` / `account_needs_reauth`, 422 `x_dm_not_allowed`, 402 `no_subscription` /
`insufficient_credits` (or any code via the `no_credits` fault's `error` param).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from dm_pipeline.simulator.faults import COMMON, PAGING, Ctx, ErrorFieldHooks, Fault, Reply, Route
from dm_pipeline.simulator.paging import CursorCodec, bend, bend_items
from dm_pipeline.simulator.world import SimEvent, SimUser, World, iso_ms

PREFIX = "/xquik/api/v1"
ACCOUNT_REQUIRED = {"error": "account_required",
                    "message": "Provide ?account=<x_handle> for a connected X account. DM history requires a "
                               "connected participant account."}
DM_NOT_PERMITTED = {"error": "dm_not_permitted",
                    "message": "X rejected the DM read. The connected account is not a participant in this "
                               "conversation, or it needs reauthentication. Reconnect the account on the "
                               "dashboard and try again."}
X_DM_NOT_ALLOWED = {"error": "x_dm_not_allowed",
                    "message": "The recipient may not accept DMs from this connected account."}
BILLING = ("no_credits", "no_subscription", "insufficient_credits")
HISTORY_FAULTS = COMMON | PAGING | {"dm_not_permitted", "account_restricted", "account_needs_reauth",
                                    "x_dm_not_allowed", *BILLING}
USER_FAULTS = COMMON | {"missing_optional", *BILLING}
_OPTIONAL = ("createdAt", "senderId", "mediaUrl")
_PROFILE = ("canDm", "description", "location", "followers", "following", "verified", "profilePicture",
            "createdAt")
CURSOR_PARAMS = ("cursor", "next_cursor", "next_token", "pagination_token", "continuation_token")
_NUMERIC = re.compile(r"[0-9]{1,19}")
_HANDLE = re.compile(r"@?[A-Za-z0-9_]{1,15}")


def error(status: int, code: str, message: str | None = None) -> Reply:
    return Reply(status, {"error": code, **({"message": message} if message else {})})


class XquikApi(ErrorFieldHooks):
    name = "xquik"
    prefix = PREFIX
    unauthorized_error = "unauthenticated"
    rate_limited_error = "rate_limited"
    not_found_error = "not_found"
    malformed_body = b'{"messages":[{"id":"1","text":"unterminated'

    def __init__(self, world: World, *, page_size: int = 20, credits: int = 1_000_000) -> None:
        if not 1 <= page_size <= 100:
            raise ValueError("page_size must be 1-100")
        self.world = world
        self.page_size = page_size
        self.credits = credits
        self.credits_used = 0
        self.cursors = CursorCodec(world.cursor_secret)
        self._lock = threading.Lock()
        self.routes: Mapping[tuple[str, str], Route] = {
            ("GET", r"/x/dm/(?P<user_id>[^/]*)/history"): Route("xquik_history", self.history, HISTORY_FAULTS),
            ("GET", r"/x/users/(?P<id>[^/]*)"): Route("xquik_user", self.user, USER_FAULTS),
        }

    # --- provider hooks -----------------------------------------------------------------------
    def identify(self, ctx: Ctx) -> bool:
        if ctx.headers.get("x-api-key") != self.world.xquik_key():
            return False
        account = (ctx.param("account") or "").strip()
        if ctx.route == "xquik_history" and account:
            ctx.user_id = self.world.account_for_handle(account)
        return True

    def fault_reply(self, fault: Fault, ctx: Ctx) -> Reply:
        kind = fault.kind
        simple = {"429": (429, "rate_limited"), "503": (503, "service_unavailable"), "500": (500, "internal_error"),
                  "401": (401, "unauthenticated"), "no_subscription": (402, "no_subscription"),
                  "insufficient_credits": (402, "insufficient_credits"),
                  "account_restricted": (403, "account_restricted"),
                  "account_needs_reauth": (403, "account_needs_reauth")}
        if kind in simple:
            return error(*simple[kind])
        if kind == "no_credits":
            return error(402, str(fault.params.get("error", "no_credits")))
        if kind in ("expired_cursor", "invalid_cursor"):
            return error(400, "invalid_input", "Invalid cursor")
        if kind == "dm_not_permitted":
            return Reply(403, dict(DM_NOT_PERMITTED))
        if kind == "x_dm_not_allowed":
            return Reply(422, dict(X_DM_NOT_ALLOWED))
        raise ValueError(f"Xquik has no status reply for fault {kind!r}")

    # --- credits ------------------------------------------------------------------------------
    def charge(self, cost: int) -> bool:
        with self._lock:
            if self.credits <= 0 or cost > self.credits:
                return False
            self.credits -= cost
            self.credits_used += cost
            return True

    # --- routes -------------------------------------------------------------------------------
    def history(self, ctx: Ctx) -> Reply:
        if not (ctx.param("account") or "").strip():
            return Reply(400, dict(ACCOUNT_REQUIRED))
        peer = unquote(ctx.path_params["user_id"])
        if not _NUMERIC.fullmatch(peer):
            return error(400, "invalid_input", "userId must be a numeric X user ID")
        user = ctx.user_id
        if user is None:
            return error(404, "account_not_found")
        if self.world.one_to_one(user, peer) is None:
            return Reply(403, dict(DM_NOT_PERMITTED))
        stream = f"xquik:{peer}"
        cursor = next((c for c in map(ctx.param, CURSOR_PARAMS) if c), None)
        max_id = ctx.param("maxId")
        before: int | None = None
        if cursor:
            decoded = self.cursors.decode(user, stream, cursor)
            if decoded is None or decoded[0] != "n":
                return error(400, "invalid_input", "Invalid cursor")
            before = decoded[1]
        elif max_id:
            if not _NUMERIC.fullmatch(max_id):
                return error(400, "invalid_input", "maxId must be a numeric message ID")
            before = int(max_id)
        page = self.world.page(user, stream, before=before, limit=self.page_size)
        sent = cursor or (self.cursors.encode(user, stream, "n", before) if before is not None
                          else self.cursors.start(user, stream))
        events, next_cursor = bend(ctx.fault, page.events, page.more_older, sent,
                                   lambda num: self.cursors.encode(user, stream, "n", num))
        if not self.charge(len(events)):
            return error(402, "no_credits")
        messages = [self.render(e) for e in events]
        bend_items(ctx.fault, messages, "text", _OPTIONAL)
        return Reply(200, {"messages": messages, "has_next_page": next_cursor is not None,
                           "next_cursor": next_cursor or ""})

    def render(self, ev: SimEvent) -> dict[str, Any]:
        members = self.world.conversation(ev.dm_conversation_id).members
        receiver = next(m for m in members if m != ev.sender_id)
        d: dict[str, Any] = {"id": ev.id, "text": ev.text or "", "senderId": ev.sender_id, "receiverId": receiver,
                             "createdAt": iso_ms(ev.created_ms)}
        if ev.media_keys:
            m = self.world.media(ev.media_keys[0]).as_dict()
            d["mediaUrl"] = m["url"] if "url" in m else m["variants"][0]["url"]
        return d

    def user(self, ctx: Ctx) -> Reply:
        ident = unquote(ctx.path_params["id"])
        found: SimUser | None = None
        if _NUMERIC.fullmatch(ident):
            found = next((u for u in self.world.users() if u.id == ident), None)
        if found is None and _HANDLE.fullmatch(ident):
            found = self.world.user_by_username(ident.removeprefix("@"))
        elif found is None and not _NUMERIC.fullmatch(ident):
            return error(400, "invalid_input", "id must be a numeric X user ID or a username")
        if found is None:
            return error(404, "user_not_found")
        if not self.charge(1):
            return error(402, "no_credits")
        body = {"id": found.id, "username": found.username, "name": found.name, "canDm": True,
                "description": found.description, "location": found.location, "followers": found.followers,
                "following": found.followers // 3 + 7, "verified": found.verified,
                "profilePicture": f"https://pbs.twimg.com/profile_images/{found.id}/avatar_normal.jpg",
                "createdAt": iso_ms(found.created_ms)}
        bend_items(ctx.fault, [body], "name", _PROFILE)
        return Reply(200, body)

    def truth(self, user_id: str, peer_id: str) -> list[dict[str, Any]]:
        """Every message the history of `peer_id` serves, in Xquik's shape, newest first."""
        return [self.render(e) for e in self.world.between(user_id, f"xquik:{peer_id}", above=-1, below=None)]
