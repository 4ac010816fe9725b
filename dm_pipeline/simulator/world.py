"""A deterministic, provider-agnostic DM world: users, conversations, events, media and shared tweets.

Everything derives from `random.Random(seed)` and a virtual clock (`World.now`) that only `advance()`
moves, so two worlds built with the same arguments are identical and tests can compare a warehouse with
`truth()` exactly. Provider-specific facts (GetXAPI tabs and trust events, API keys, auth_tokens) derive
from the seed through separate generators, so they never change the X-visible world.

Streams ("routes") an account can read, newest first, as `page()` / `truth()` keys:

- `dm_events`                     every conversation of the account, last 30 days of `now`
- `dm_conversation:{id}`          one conversation the account is in, no window
- `dm_conversation_with:{user}`   the account's 1:1 with `user`, no window
- `xquik:{user}`                  the same 1:1, MessageCreate only (Xquik history)
- `getxapi:{tab}`                 MessageCreate events of the tab's conversations, no window (`messages`)
- `getxapi_events:{tab}`          their join/leave events plus the tab's trust events (GetXAPI `events`)

`truth()` renders every key in X v2 field names (trust events as `event_type: TrustConversation`);
`Simulator.truth(..., shape="provider")` renders them as the provider serves them.

GetXAPI tabs: per account, groups and account-to-account 1:1s are in `all`; of its other 1:1s (ordered by
a seeded shuffle) the first goes to `hidden` when it has three or more, the next to `requests` when it has
two or more, the rest to `all`. Tabs never change. A 1:1 in `all` whose first message came from the peer
(a message request) and that the account answered later has one trust event (`reason: accept`) 1 ms
before the account's first reply; its ID is a snowflake of that instant with sequence 4095, never an X
event's ID. Trust events are fixed at construction (later deletions do not move them).

Modules: `world_gen` builds the world (the seeded random construction), `world_store` holds its indexes
and serves lookups and stream reads; `World` here composes them and owns the clock and the changes
(`advance`, `delete`, `edit`, `add_partners`, `post`).
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_left
from datetime import datetime, timedelta

from dm_pipeline.simulator.model import (
    _ASCII,
    _UNICODE,
    DEFAULT_START,
    EVENT_TYPES,
    HISTORY_DAYS,
    MESSAGE_CREATE,
    PARTICIPANTS_JOIN,
    PARTICIPANTS_LEAVE,
    ROUTE_WINDOW_DAYS,
    TABS,
    TRUST_CONVERSATION,
    TWEPOCH_MS,
    SimConversation,
    SimEvent,
    SimMedia,
    SimTweet,
    SimUser,
    WindowPage,
    _build_text_pool,
    iso_ms,
    snowflake,
    snowflake_ms,
    to_ms,
)
from dm_pipeline.simulator.world_gen import WorldGenerator
from dm_pipeline.simulator.world_store import GETXAPI_KEY, XQUIK_KEY, NotVisible, WorldStore

__all__ = [
    "DEFAULT_START", "EVENT_TYPES", "GETXAPI_KEY", "HISTORY_DAYS", "MESSAGE_CREATE", "PARTICIPANTS_JOIN",
    "PARTICIPANTS_LEAVE", "ROUTE_WINDOW_DAYS", "TABS", "TRUST_CONVERSATION", "TWEPOCH_MS", "XQUIK_KEY",
    "NotVisible", "SimConversation", "SimEvent", "SimMedia", "SimTweet", "SimUser", "WindowPage", "World",
    "WorldGenerator", "WorldStore", "iso_ms", "snowflake", "snowflake_ms", "to_ms",
]


# ------------------------------------------------------------------------------------------- world
class World(WorldGenerator):
    def __init__(self, seed: int = 7, accounts: int = 3, users: int = 12, events_per_account: int = 260,
                 start: datetime = DEFAULT_START, *, control_chars: bool = False,
                 history_days: float = HISTORY_DAYS) -> None:
        """`history_days` spreads the initial history; above 30, `/2/dm_events` cannot see all of it."""
        if accounts < 1 or users < accounts + 4:
            raise ValueError("need accounts >= 1 and users >= accounts + 4")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if history_days <= 0:
            raise ValueError("history_days must be > 0")
        self.history_days = history_days
        self.seed = seed
        self.now = start
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        self._last_ms = 0
        self._seq = 0
        self._users = {}
        self._user_order = []
        self._convs = {}
        self._convs_of = {}
        self._conv_picks = {}
        self._events = {}
        self._by_account = {}
        self._by_conv = {}
        self._tabs = {}
        self._trust = {}
        self._trust_of = {}
        self._media = {}
        self._tweets = {}
        self._texts = _build_text_pool(self._rng, 1024, control_chars)
        self._make_users(users)
        self._accounts = self._user_order[:accounts]
        self._tokens = {f"sim-x-{uid}": uid for uid in self._accounts}
        self._make_conversations()
        self._make_history(events_per_account)
        self._make_inbox()

    # --- the clock and changes ----------------------------------------------------------------
    def advance(self, user_id: str | None = None, n: int = 0, *, deletions: int = 0, seconds: float = 60.0,
                edits: int = 0) -> list[str]:
        """Move `now` by `seconds`, add `n` events newer than everything, delete and edit some.

        New events are spread over the interval just elapsed, so they all have created_at <= now.
        """
        with self.lock:
            rng = self._rng
            old_ms = to_ms(self.now)
            self.now += timedelta(seconds=seconds)
            new_ms = to_ms(self.now)
            times = sorted(rng.randint(old_ms + 1 if new_ms > old_ms else new_ms, new_ms) for _ in range(n))
            ids = []
            for ms in times:
                acct = user_id if user_id is not None else rng.choice(self._accounts)
                ids.append(self._add_event(acct, ms).id)
            for _ in range(deletions):
                victim = self._random_event(user_id)
                if victim is not None:
                    self.delete(victim)
            for _ in range(edits):
                target = self._random_event(user_id, MESSAGE_CREATE)
                if target is not None:
                    self.edit(target, f"(edited) {self._texts[rng.randrange(len(self._texts))]}")
            return ids

    def _random_event(self, user_id: str | None, event_type: str | None = None) -> str | None:
        rng = self._rng
        acct = user_id if user_id is not None else rng.choice(self._accounts)
        nums = self._by_account[acct]
        for _ in range(50):
            if not nums:
                return None
            ev = self._events[nums[rng.randrange(len(nums))]]
            if event_type is None or ev.event_type == event_type:
                return ev.id
        return None

    def delete(self, event_id: str | int) -> bool:
        """Delete an event for everyone who could see it. Returns False if it did not exist."""
        with self.lock:
            ev = self._events.pop(int(event_id), None)
            if ev is None:
                return False
            conv = self._convs[ev.dm_conversation_id]
            for nums in [self._by_conv[conv.id], *(self._by_account[a] for a in conv.accounts)]:
                i = bisect_left(nums, ev.num)
                if i < len(nums) and nums[i] == ev.num:
                    del nums[i]
            return True

    def edit(self, event_id: str | int, text: str) -> None:
        with self.lock:
            ev = self._events[int(event_id)]
            if ev.event_type != MESSAGE_CREATE:
                raise ValueError("only MessageCreate events have text")
            ev.text = text
            ev.entities = None          # indices would no longer match the new text
            ev.edit_count += 1

    # --- growing the world (after construction; a world never grown is unchanged) ---------------
    def add_partners(self, user_id: str, n: int, events_each: int = 1, *, seconds: float = 60.0) -> list[str]:
        """Move `now` by `seconds` and add `n` new users, each in a new 1:1 with account `user_id` holding
        `events_each` messages spread over that interval (the first from the account: no message request,
        so no GetXAPI trust event is due). Returns the new users' IDs, in creation order.

        The users come from a generator of their own (derived from the seed and the world's size), the
        messages from the world's, as `advance` draws: worlds built and grown by the same calls are
        identical. The conversations are in the account's GetXAPI `all` tab and among its random picks
        (a later `advance(user_id, ...)` may post in them); X, Xquik and GetXAPI all serve them."""
        if user_id not in self._accounts:
            raise KeyError(f"{user_id} is not an account")
        if n < 0 or events_each < 1:
            raise ValueError("need n >= 0 and events_each >= 1")
        with self.lock:
            rng = random.Random(f"{self.seed}:partners:{len(self._user_order)}")
            start_ms = to_ms(self.now)
            added: list[str] = []
            while len(added) < n:
                uid = self._fresh_uid(rng)
                i = len(self._user_order)
                self._users[uid] = SimUser(
                    id=uid, username=f"partner_{i}", name=f"Partner {i} {rng.choice(_UNICODE)[:12]}",
                    created_ms=start_ms - rng.randint(400, 5000) * 86_400_000,
                    description=rng.choice(_UNICODE + _ASCII), location=rng.choice(["Lagos", "Lima", "", "Oslo"]),
                    protected=False, verified=rng.random() < 0.2, followers=rng.randint(0, 5_000))
                self._user_order.append(uid)
                lo, hi = sorted((user_id, uid), key=int)
                conv = SimConversation(f"{lo}-{hi}", False, [lo, hi], (user_id,))
                self._add_conv(conv)
                self._tabs[user_id][conv.id] = "all"
                self._conv_picks[user_id].extend([conv] * 3)
                added.append(uid)
            convs = [self._convs[f"{lo}-{hi}"] for lo, hi in (sorted((user_id, u), key=int) for u in added)]
            slots = [conv for conv in convs for _ in range(events_each)]
            self._rng.shuffle(slots)
            for ms, conv in zip(self._interval_times(seconds, len(slots)), slots, strict=True):
                first = not self._by_conv[conv.id]
                self._post(conv, ms, user_id if first else None)
            return added

    def post(self, conversation_id: str, k: int = 1, *, seconds: float = 60.0,
             sender: str | None = None) -> list[str]:
        """Move `now` by `seconds` and add `k` messages to one conversation, spread over that interval and
        newer than every event so far (from `sender`, else each from a random member). Returns their IDs."""
        if k < 0:
            raise ValueError("k must be >= 0")
        with self.lock:
            conv = self._convs[conversation_id]
            if sender is not None and sender not in conv.members:
                raise ValueError(f"{sender} is not a member of {conversation_id}")
            return [self._post(conv, ms, sender).id for ms in self._interval_times(seconds, k)]

    def _interval_times(self, seconds: float, k: int) -> list[int]:
        """Move `now` by `seconds`; `k` sorted instants (ms) in the interval just elapsed, as `advance`."""
        old_ms = to_ms(self.now)
        self.now += timedelta(seconds=seconds)
        new_ms = to_ms(self.now)
        return sorted(self._rng.randint(old_ms + 1 if new_ms > old_ms else new_ms, new_ms) for _ in range(k))

