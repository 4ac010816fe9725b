"""The world's store: its state and event indexes, the lookups, and the streams routes read (`page`,
`between`, `truth`, keys in `world`'s docstring).

`WorldStore` holds and reads what `world_gen.WorldGenerator` builds and `world.World` changes. Event lists
are ascending snowflakes (per account, per conversation), so a page is a bisect plus a merge and a cursor
keyed by snowflake never shifts when events arrive or go.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import dm_pipeline.simulator.model as model

XQUIK_KEY = "sim-xquik-key"
GETXAPI_KEY = "sim-getxapi-key"


_STREAMS = ("dm_events", "dm_conversation", "dm_conversation_with", "xquik", "getxapi", "getxapi_events")
_GETXAPI_EVENT_TYPES = frozenset({model.PARTICIPANTS_JOIN, model.PARTICIPANTS_LEAVE, model.TRUST_CONVERSATION})
_MESSAGES_ONLY = frozenset({model.MESSAGE_CREATE})


class NotVisible(LookupError):
    """The account is not a participant of the conversation a route names."""


def _down(nums: list[int], i: int, lo: int) -> Iterator[int]:
    while i >= lo:
        yield nums[i]
        i -= 1


def _up(nums: list[int], i: int) -> Iterator[int]:
    while i < len(nums):
        yield nums[i]
        i += 1


class WorldStore:
    """The world's state (set up by `World.__init__`), its lookups and its stream reads."""

    seed: int
    history_days: float
    now: datetime
    lock: threading.RLock
    _rng: random.Random
    _last_ms: int
    _seq: int
    _users: dict[str, model.SimUser]
    _user_order: list[str]
    _accounts: list[str]
    _tokens: dict[str, str]
    _convs: dict[str, model.SimConversation]
    _convs_of: dict[str, list[model.SimConversation]]
    _conv_picks: dict[str, list[model.SimConversation]]  # weighted pick lists per account
    _events: dict[int, model.SimEvent]
    _by_account: dict[str, list[int]]               # ascending snowflakes
    _by_conv: dict[str, list[int]]                  # ascending snowflakes per conversation
    _tabs: dict[str, dict[str, str]]                # account -> conversation -> GetXAPI tab
    _trust: dict[int, model.SimEvent]               # GetXAPI trust events (not X events)
    _trust_of: dict[tuple[str, str], int]           # (account, conversation) -> trust event
    _media: dict[str, model.SimMedia]
    _tweets: dict[str, model.SimTweet]
    _texts: list[str]

    # --- lookups ------------------------------------------------------------------------------
    def accounts(self) -> list[str]:
        return list(self._accounts)

    def users(self) -> list[model.SimUser]:
        return [self._users[u] for u in self._user_order]

    def user(self, user_id: str) -> model.SimUser:
        return self._users[user_id]

    def token_for(self, user_id: str) -> str:
        if user_id not in self._accounts:
            raise KeyError(user_id)
        return f"sim-x-{user_id}"

    def account_for_token(self, token: str) -> str | None:
        return self._tokens.get(token)

    def user_by_username(self, username: str) -> model.SimUser | None:
        """Case-insensitive, as X handles are."""
        name = username.lower()
        return next((u for u in self._users.values() if u.username.lower() == name), None)

    def xquik_key(self) -> str:
        """The one Xquik API key (`x-api-key`)."""
        return XQUIK_KEY

    def xquik_handle(self, user_id: str) -> str:
        """The handle an account is connected under at Xquik: its username, without `@`."""
        if user_id not in self._accounts:
            raise KeyError(user_id)
        return self._users[user_id].username

    def account_for_handle(self, handle: str) -> str | None:
        """A connected account by handle (case-insensitive, optional `@`) or numeric ID."""
        h = handle.removeprefix("@")
        if h in self._accounts:
            return h
        u = self.user_by_username(h)
        return u.id if u is not None and u.id in self._accounts else None

    def getxapi_key(self) -> str:
        """The one GetXAPI API key (`Authorization: Bearer`)."""
        return GETXAPI_KEY

    def getxapi_auth_token(self, user_id: str) -> str:
        """The account's X `auth_token` cookie as GetXAPI takes it: 40 hex digits, derived from the seed."""
        if user_id not in self._accounts:
            raise KeyError(user_id)
        return hashlib.sha1(f"getxapi-auth:{self.seed}:{user_id}".encode()).hexdigest()

    def account_for_auth_token(self, auth_token: str) -> str | None:
        return next((a for a in self._accounts if self.getxapi_auth_token(a) == auth_token), None)

    def one_to_one(self, user_id: str, peer_id: str) -> model.SimConversation | None:
        """The account's 1:1 conversation with `peer_id`, if they have one."""
        lo, hi = sorted((user_id, peer_id), key=lambda u: (len(u), u))
        conv = self._convs.get(f"{lo}-{hi}")
        return conv if conv is not None and user_id in conv.accounts else None

    def can_read(self, user_id: str, conversation_id: str) -> bool:
        conv = self._convs.get(conversation_id)
        return conv is not None and user_id in conv.accounts

    def tab_of(self, user_id: str, conversation_id: str) -> str:
        return self._tabs[user_id][conversation_id]

    def conversations_in_tab(self, user_id: str, tab: str) -> list[model.SimConversation]:
        if tab not in model.TABS:
            raise ValueError(f"unknown tab {tab!r}")
        return [c for c in self._convs_of[user_id] if self._tabs[user_id][c.id] == tab]

    def recent(self, conversation_id: str, limit: int, event_type: str | None = None) -> list[model.SimEvent]:
        """A conversation's newest `limit` events (of `event_type`), newest first."""
        with self.lock:
            found = (self._events[n] for n in reversed(self._by_conv[conversation_id]))
            return list(islice((e for e in found if event_type in (None, e.event_type)), limit))

    def conversations_of(self, user_id: str) -> list[model.SimConversation]:
        return list(self._convs_of.get(user_id, []))

    def conversation(self, conversation_id: str) -> model.SimConversation:
        return self._convs[conversation_id]

    def event(self, event_id: str | int) -> model.SimEvent | None:
        """An X event (trust events are GetXAPI's and not returned)."""
        return self._events.get(int(event_id))

    def media(self, media_key: str) -> model.SimMedia:
        return self._media[media_key]

    def tweet(self, tweet_id: str) -> model.SimTweet:
        return self._tweets[tweet_id]

    def event_count(self, user_id: str) -> int:
        return len(self._by_account[user_id])

    @property
    def cursor_secret(self) -> bytes:
        """Key for cursor MACs: deterministic, so a restarted simulator still accepts old cursors."""
        return f"dm-sim-cursor-{self.seed}".encode()

    # --- reading streams ----------------------------------------------------------------------
    def window_floor(self, route: str) -> int:
        """Smallest snowflake visible on `route` now (0 when the route has no retention window)."""
        base = route.partition(":")[0]
        if base not in model.ROUTE_WINDOW_DAYS and base not in _STREAMS:
            raise ValueError(f"unknown route {route!r}")
        days = model.ROUTE_WINDOW_DAYS.get(base)
        return 0 if days is None else model.snowflake(model.to_ms(self.now - timedelta(days=days)))

    def _stream(self, user_id: str, route: str) -> tuple[list[list[int]], frozenset[str] | None]:
        """The ascending snowflake lists a route merges, and the event types it shows (None: all)."""
        if user_id not in self._by_account:
            raise KeyError(f"{user_id} is not an account")
        base, _, arg = route.partition(":")
        if base == "dm_events" and not arg:
            return [self._by_account[user_id]], None
        if base == "dm_conversation":
            if not self.can_read(user_id, arg):
                raise NotVisible(f"{user_id} is not in conversation {arg}")
            return [self._by_conv[arg]], None
        if base in ("dm_conversation_with", "xquik"):
            one = self.one_to_one(user_id, arg)
            if one is None:
                raise NotVisible(f"{user_id} has no 1:1 conversation with {arg}")
            return [self._by_conv[one.id]], (_MESSAGES_ONLY if base == "xquik" else None)
        if base == "getxapi":
            return [self._by_conv[c.id] for c in self.conversations_in_tab(user_id, arg)], _MESSAGES_ONLY
        if base == "getxapi_events":
            convs = self.conversations_in_tab(user_id, arg)
            trust = [[self._trust_of[(user_id, c.id)]] for c in convs if (user_id, c.id) in self._trust_of]
            return [self._by_conv[c.id] for c in convs] + trust, _GETXAPI_EVENT_TYPES
        raise ValueError(f"unknown route {route!r}")

    def _get(self, num: int) -> model.SimEvent:
        ev = self._events.get(num)
        return ev if ev is not None else self._trust[num]

    def _desc(self, lists: list[list[int]], floor: int, below: int | None) -> Iterator[int]:
        """Snowflakes >= floor and < below, newest first, merged across lists."""
        its = [_down(n, (bisect_left(n, below) if below is not None else len(n)) - 1, bisect_left(n, floor))
               for n in lists]
        return its[0] if len(its) == 1 else heapq.merge(*its, reverse=True)

    def _asc(self, lists: list[list[int]], floor: int, above: int) -> Iterator[int]:
        its = [_up(n, max(bisect_right(n, above), bisect_left(n, floor))) for n in lists]
        return its[0] if len(its) == 1 else heapq.merge(*its)

    def _matcher(self, route_types: frozenset[str] | None,
                 event_types: Iterable[str] | None) -> Callable[[int], bool] | None:
        types = route_types if event_types is None else frozenset(event_types) & (route_types or frozenset(
            event_types))
        if types is None:
            return None
        return lambda n: self._get(n).event_type in types

    def page(self, user_id: str, route: str = "dm_events", *, before: int | None = None,
             after: int | None = None, limit: int = 100, event_types: Iterable[str] | None = None) -> model.WindowPage:
        """Up to `limit` events newest first: older than `before`, or (for previous pages) the oldest
        ones newer than `after`. Keyed by snowflake, so arrivals and deletions never shift a cursor."""
        with self.lock:
            lists, route_types = self._stream(user_id, route)
            floor = self.window_floor(route)
            match = self._matcher(route_types, event_types)
            if after is None:
                picked = list(islice(filter(match, self._desc(lists, floor, before)), limit))
            else:
                picked = list(islice(filter(match, self._asc(lists, floor, after)), limit))
                picked.reverse()
            if not picked:
                return model.WindowPage([], False, False)
            more_older = next(filter(match, self._desc(lists, floor, picked[-1])), None) is not None
            more_newer = next(filter(match, self._asc(lists, floor, picked[0])), None) is not None
            return model.WindowPage([self._get(n) for n in picked], more_older, more_newer)

    def between(self, user_id: str, route: str, *, above: int, below: int | None,
                event_types: Iterable[str] | None = None) -> list[model.SimEvent]:
        """Every event of `route` with above < snowflake < below (None: no upper bound), newest first."""
        with self.lock:
            lists, route_types = self._stream(user_id, route)
            floor = max(self.window_floor(route), above + 1)
            match = self._matcher(route_types, event_types)
            return [self._get(n) for n in filter(match, self._desc(lists, floor, below))]

    def truth(self, user_id: str, route: str = "dm_events") -> list[dict[str, Any]]:
        """Every event `user_id` would receive from `route` (keys in the module docstring), all fields in
        X v2 names, newest first. Trust events appear as `event_type: TrustConversation`."""
        with self.lock:
            return [e.as_dict() for e in self.between(user_id, route, above=-1, below=None)]

    def truth_conversation(self, user_id: str, conversation_id: str) -> list[dict[str, Any]]:
        """Every event of one conversation the account is in, no window."""
        return self.truth(user_id, f"dm_conversation:{conversation_id}")

    def includes_for(self, events: Iterable[model.SimEvent], expansions: Iterable[str]) -> dict[str, list[Any]]:
        """Objects referenced by `events` for X's expansion names, deduplicated, in first-seen order."""
        exp = set(expansions)
        users: dict[str, model.SimUser] = {}
        media: dict[str, model.SimMedia] = {}
        tweets: dict[str, model.SimTweet] = {}
        with self.lock:
            for e in events:
                if "sender_id" in exp and e.sender_id is not None:
                    users.setdefault(e.sender_id, self._users[e.sender_id])
                if "participant_ids" in exp:
                    for p in e.participant_ids:
                        users.setdefault(p, self._users[p])
                if "attachments.media_keys" in exp:
                    for k in e.media_keys:
                        media.setdefault(k, self._media[k])
                if "referenced_tweets.id" in exp:
                    for t in e.tweet_ids:
                        tweets.setdefault(t, self._tweets[t])
        out: dict[str, list[Any]] = {}
        if media:
            out["media"] = list(media.values())
        if users:
            out["users"] = list(users.values())
        if tweets:
            out["tweets"] = list(tweets.values())
        return out
