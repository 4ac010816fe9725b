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

from dm_pipeline.simulator.model import (
    _ASCII,
    _CASHTAGS,
    _HASHTAGS,
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

__all__ = [
    "DEFAULT_START", "EVENT_TYPES", "HISTORY_DAYS", "MESSAGE_CREATE", "PARTICIPANTS_JOIN", "PARTICIPANTS_LEAVE",
    "TABS", "TRUST_CONVERSATION", "TWEPOCH_MS", "NotVisible", "SimConversation", "SimEvent", "SimMedia",
    "SimTweet", "SimUser", "WindowPage", "World", "iso_ms", "snowflake", "snowflake_ms", "to_ms",
]

XQUIK_KEY = "sim-xquik-key"
GETXAPI_KEY = "sim-getxapi-key"


_STREAMS = ("dm_events", "dm_conversation", "dm_conversation_with", "xquik", "getxapi", "getxapi_events")
_GETXAPI_EVENT_TYPES = frozenset({PARTICIPANTS_JOIN, PARTICIPANTS_LEAVE, TRUST_CONVERSATION})


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


# ------------------------------------------------------------------------------------------- world
class World:
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
        self.now: datetime = start
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        self._last_ms = 0
        self._seq = 0
        self._users: dict[str, SimUser] = {}
        self._user_order: list[str] = []
        self._convs: dict[str, SimConversation] = {}
        self._convs_of: dict[str, list[SimConversation]] = {}
        self._conv_picks: dict[str, list[SimConversation]] = {}   # weighted pick lists per account
        self._events: dict[int, SimEvent] = {}
        self._by_account: dict[str, list[int]] = {}               # ascending snowflakes
        self._by_conv: dict[str, list[int]] = {}                  # ascending snowflakes per conversation
        self._tabs: dict[str, dict[str, str]] = {}                # account -> conversation -> GetXAPI tab
        self._trust: dict[int, SimEvent] = {}                     # GetXAPI trust events (not X events)
        self._trust_of: dict[tuple[str, str], int] = {}           # (account, conversation) -> trust event
        self._media: dict[str, SimMedia] = {}
        self._tweets: dict[str, SimTweet] = {}
        self._texts = _build_text_pool(self._rng, 1024, control_chars)
        self._make_users(users)
        self._accounts = self._user_order[:accounts]
        self._tokens = {f"sim-x-{uid}": uid for uid in self._accounts}
        self._make_conversations()
        self._make_history(events_per_account)
        self._make_inbox()

    # --- construction -------------------------------------------------------------------------
    def _make_users(self, n: int) -> None:
        rng = self._rng
        first = ["ada", "li", "omar", "yael", "kenji", "zoe", "ravi", "mia", "noah", "sara", "ivan", "amara"]
        names = ["Ada Lovelace", "李雷", "عمر الفاروق", "יעל כהן", "山田 健二", "Zoë Brontë", "Ravi Kumar",
                 "Mia 🌸", "Noah O'Brien", "Sara \"Sal\" Díaz", "Иван Петров", "Amara Nwosu"]
        start_ms = to_ms(self.now)
        while len(self._user_order) < n:
            digits = rng.randint(15, 19)
            uid = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
            if uid in self._users:
                continue
            i = len(self._user_order)
            self._users[uid] = SimUser(
                id=uid, username=f"{first[i % len(first)]}_{i}{rng.randint(10, 999)}"[:15],
                name=names[i % len(names)], created_ms=start_ms - rng.randint(400, 5000) * 86_400_000,
                description=rng.choice(_UNICODE + _ASCII), location=rng.choice(["Berlin", "東京", "", "القاهرة"]),
                protected=rng.random() < 0.1, verified=rng.random() < 0.2, followers=rng.randint(0, 50_000))
            self._user_order.append(uid)

    def _add_conv(self, conv: SimConversation) -> None:
        self._convs[conv.id] = conv
        self._by_conv[conv.id] = []
        for acct in conv.accounts:
            self._convs_of[acct].append(conv)

    def _make_conversations(self) -> None:
        rng = self._rng
        others = self._user_order[len(self._accounts):]
        is_account = set(self._accounts).__contains__
        for acct in self._accounts:
            self._convs_of[acct] = []
            self._by_account[acct] = []
        for i, acct in enumerate(self._accounts):
            peers = rng.sample(others, k=min(len(others), rng.randint(2, 4)))
            if i + 1 < len(self._accounts) and i % 2 == 0:
                peers.append(self._accounts[i + 1])   # account-to-account 1:1: both see the same events
            for peer in peers:
                lo, hi = sorted((acct, peer), key=int)
                cid = f"{lo}-{hi}"
                if cid not in self._convs:
                    self._add_conv(SimConversation(cid, False, [lo, hi], tuple(filter(is_account, (lo, hi)))))
            for _ in range(rng.randint(1, 2)):
                size = rng.randint(3, 6)
                accts = [acct, *[a for a in self._accounts if a != acct and rng.random() < 0.3]][: size - 1]
                members = accts + rng.sample(others, k=size - len(accts))
                days = max(rng.randint(40, 400), int(self.history_days) + 1)   # groups predate their history
                created = to_ms(self.now) - days * 86_400_000
                cid = str(snowflake(created, rng.randrange(4096)))   # group IDs are 19-digit snowflakes
                self._add_conv(SimConversation(cid, True, members, tuple(accts),
                                               [u for u in others if u not in members]))
        for acct, convs in self._convs_of.items():
            # 1:1 chats are busier than groups, as in real inboxes.
            self._conv_picks[acct] = [c for c in convs for _ in range(2 if c.is_group else 3)]

    def _next_num(self, ms: int) -> int:
        if ms <= self._last_ms:
            self._seq += 1
            if self._seq >= 4096:
                self._last_ms, self._seq = self._last_ms + 1, 0
            ms = self._last_ms
        else:
            self._last_ms, self._seq = ms, 0
        return snowflake(ms, self._seq)

    def _make_history(self, per_account: int) -> None:
        n_acc = len(self._accounts)
        total = per_account * n_acc
        end_ms = to_ms(self.now)
        span = int(self.history_days * 86_400_000)
        r = self._rng.random
        offsets = sorted(int(r() * span) for _ in range(total))
        base = end_ms - span
        for i, off in enumerate(offsets):
            self._add_event(self._accounts[i % n_acc], base + off)

    def _add_event(self, acct: str, ms: int) -> SimEvent:
        rng = self._rng
        r = rng.random
        picks = self._conv_picks[acct]
        conv = picks[int(r() * len(picks))]
        num = self._next_num(ms)
        ev: SimEvent | None = None
        if conv.is_group and r() < 0.25:
            ev = self._membership_event(conv, num)
        if ev is None:
            sender = acct if r() < 0.5 else conv.members[int(r() * len(conv.members))]
            ev = SimEvent(num, MESSAGE_CREATE, conv.id, sender_id=sender,
                          text=self._texts[int(r() * len(self._texts))])
            x = r()
            if x < 0.15:
                ev.media_keys = (self._new_media(num),)
            elif x < 0.20:
                self._share_tweet(ev)
            elif x < 0.27:
                self._add_tag(ev)
        thread = self._by_conv[conv.id]
        if ev.event_type == MESSAGE_CREATE and thread and num % 9 == 4:
            prev = self._events[thread[-1]]     # every 9th-ish message replies to the one before it
            ev.reply_to = prev.num if prev.event_type == MESSAGE_CREATE else None
        self._events[num] = ev
        thread.append(num)
        for a in conv.accounts:
            self._by_account[a].append(num)
        return ev

    def _make_inbox(self) -> None:
        """GetXAPI tabs and trust events (see the module docstring); a separate generator keeps X intact."""
        rng = random.Random(f"{self.seed}:inbox")
        accounts = set(self._accounts)
        for acct in self._accounts:
            tabs = self._tabs[acct] = {}
            strangers = []
            for c in self._convs_of[acct]:
                tabs[c.id] = "all"
                if not c.is_group and not accounts.issuperset(c.members):
                    strangers.append(c.id)
            rng.shuffle(strangers)
            if len(strangers) >= 3:
                tabs[strangers.pop(0)] = "hidden"
            if len(strangers) >= 2:
                tabs[strangers.pop(0)] = "requests"
            for c in self._convs_of[acct]:
                if not c.is_group and tabs[c.id] == "all":
                    self._add_trust(acct, c.id)

    def _add_trust(self, acct: str, cid: str) -> None:
        thread = self._by_conv[cid]
        if not thread or self._events[thread[0]].sender_id == acct:
            return
        reply = next((n for n in thread if self._events[n].sender_id == acct), None)
        if reply is None:
            return
        ms = snowflake_ms(reply) - 1
        num = snowflake(ms, 4095)
        while num in self._events or num in self._trust:
            ms -= 1
            num = snowflake(ms, 4095)
        self._trust[num] = SimEvent(num, TRUST_CONVERSATION, cid)
        self._trust_of[(acct, cid)] = num

    def _membership_event(self, conv: SimConversation, num: int) -> SimEvent | None:
        """A join or leave that keeps the group at 3-6 members; accounts never leave (fixed visibility)."""
        rng = self._rng
        leavers = [m for m in conv.members if m not in conv.accounts] if len(conv.members) > 3 else []
        can_join = bool(conv.joiners) and len(conv.members) < 6
        if not (can_join or leavers):
            return None
        if can_join and (not leavers or rng.random() < 0.5):
            who = conv.joiners.pop(rng.randrange(len(conv.joiners)))
            inviter = rng.choice(conv.members)
            conv.members.append(who)
            return SimEvent(num, PARTICIPANTS_JOIN, conv.id, sender_id=inviter, participant_ids=(who,))
        who = rng.choice(leavers)
        conv.members.remove(who)
        conv.joiners.append(who)
        return SimEvent(num, PARTICIPANTS_LEAVE, conv.id, participant_ids=(who,))

    def _new_media(self, num: int) -> str:
        rng = self._rng
        x = rng.random()
        kind, prefix = ("photo", "3") if x < 0.7 else ("video", "7") if x < 0.9 else ("animated_gif", "16")
        key = f"{prefix}_{num + 1}"     # media IDs are snowflakes minted just after the message's
        w, h = rng.choice([(1200, 900), (1080, 1920), (640, 480), (498, 280)])
        alt = rng.choice([None, "a cat", "диаграмма", "🌅"]) if kind == "photo" else None
        duration = rng.randint(1_000, 140_000) if kind == "video" else None
        self._media[key] = SimMedia(key, kind, w, h, num, alt_text=alt, duration_ms=duration)
        return key

    def _share_tweet(self, ev: SimEvent) -> None:
        rng = self._rng
        author = self._users[rng.choice(self._user_order)]
        tid = str(snowflake(ev.created_ms - rng.randint(1, 10 ** 9), rng.randrange(4096)))
        self._tweets.setdefault(tid, SimTweet(tid, author.id, rng.choice(_ASCII + _UNICODE),
                                              snowflake_ms(int(tid))))
        link = "https://t.co/" + "".join(rng.choices("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789", k=10))
        text = f"{ev.text or ''} {link}"
        ev.text = text
        ev.tweet_ids = (tid,)
        ev.entities = {"urls": [{"start": len(text) - len(link), "end": len(text), "url": link,
                                 "expanded_url": f"https://x.com/{author.username}/status/{tid}",
                                 "display_url": f"x.com/{author.username}/st…"}]}

    def _add_tag(self, ev: SimEvent) -> None:
        rng = self._rng
        kind = rng.choice(["hashtags", "mentions", "cashtags"])
        if kind == "mentions":
            u = self._users[rng.choice(self._user_order)]
            token, entity = f"@{u.username}", {"username": u.username, "id": u.id}
        elif kind == "hashtags":
            tag = rng.choice(_HASHTAGS)
            token, entity = f"#{tag}", {"tag": tag}
        else:
            tag = rng.choice(_CASHTAGS)
            token, entity = f"${tag}", {"tag": tag}
        text = f"{ev.text or ''} {token}"
        ev.text = text
        ev.entities = {kind: [{"start": len(text) - len(token), "end": len(text), **entity}]}

    # --- lookups ------------------------------------------------------------------------------
    def accounts(self) -> list[str]:
        return list(self._accounts)

    def users(self) -> list[SimUser]:
        return [self._users[u] for u in self._user_order]

    def user(self, user_id: str) -> SimUser:
        return self._users[user_id]

    def token_for(self, user_id: str) -> str:
        if user_id not in self._accounts:
            raise KeyError(user_id)
        return f"sim-x-{user_id}"

    def account_for_token(self, token: str) -> str | None:
        return self._tokens.get(token)

    def user_by_username(self, username: str) -> SimUser | None:
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

    def one_to_one(self, user_id: str, peer_id: str) -> SimConversation | None:
        """The account's 1:1 conversation with `peer_id`, if they have one."""
        lo, hi = sorted((user_id, peer_id), key=lambda u: (len(u), u))
        conv = self._convs.get(f"{lo}-{hi}")
        return conv if conv is not None and user_id in conv.accounts else None

    def can_read(self, user_id: str, conversation_id: str) -> bool:
        conv = self._convs.get(conversation_id)
        return conv is not None and user_id in conv.accounts

    def tab_of(self, user_id: str, conversation_id: str) -> str:
        return self._tabs[user_id][conversation_id]

    def conversations_in_tab(self, user_id: str, tab: str) -> list[SimConversation]:
        if tab not in TABS:
            raise ValueError(f"unknown tab {tab!r}")
        return [c for c in self._convs_of[user_id] if self._tabs[user_id][c.id] == tab]

    def recent(self, conversation_id: str, limit: int, event_type: str | None = None) -> list[SimEvent]:
        """A conversation's newest `limit` events (of `event_type`), newest first."""
        with self.lock:
            found = (self._events[n] for n in reversed(self._by_conv[conversation_id]))
            return list(islice((e for e in found if event_type in (None, e.event_type)), limit))

    def conversations_of(self, user_id: str) -> list[SimConversation]:
        return list(self._convs_of.get(user_id, []))

    def conversation(self, conversation_id: str) -> SimConversation:
        return self._convs[conversation_id]

    def event(self, event_id: str | int) -> SimEvent | None:
        """An X event (trust events are GetXAPI's and not returned)."""
        return self._events.get(int(event_id))

    def media(self, media_key: str) -> SimMedia:
        return self._media[media_key]

    def tweet(self, tweet_id: str) -> SimTweet:
        return self._tweets[tweet_id]

    def event_count(self, user_id: str) -> int:
        return len(self._by_account[user_id])

    @property
    def cursor_secret(self) -> bytes:
        """Key for cursor MACs: deterministic, so a restarted simulator still accepts old cursors."""
        return f"dm-sim-cursor-{self.seed}".encode()

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
                digits = rng.randint(15, 19)
                uid = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
                if uid in self._users:
                    continue
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

    def _post(self, conv: SimConversation, ms: int, sender: str | None) -> SimEvent:
        """One MessageCreate in `conv` (text from the pool, one in seven with a photo or video)."""
        r = self._rng.random
        num = self._next_num(ms)
        who = sender if sender is not None else conv.members[int(r() * len(conv.members))]
        ev = SimEvent(num, MESSAGE_CREATE, conv.id, sender_id=who, text=self._texts[int(r() * len(self._texts))])
        if r() < 0.15:
            ev.media_keys = (self._new_media(num),)
        thread = self._by_conv[conv.id]
        if thread and num % 9 == 4 and self._events[thread[-1]].event_type == MESSAGE_CREATE:
            ev.reply_to = thread[-1]
        self._events[num] = ev
        thread.append(num)
        for a in conv.accounts:
            self._by_account[a].append(num)
        return ev

    # --- reading streams ----------------------------------------------------------------------
    def window_floor(self, route: str) -> int:
        """Smallest snowflake visible on `route` now (0 when the route has no retention window)."""
        base = route.partition(":")[0]
        if base not in ROUTE_WINDOW_DAYS and base not in _STREAMS:
            raise ValueError(f"unknown route {route!r}")
        days = ROUTE_WINDOW_DAYS.get(base)
        return 0 if days is None else snowflake(to_ms(self.now - timedelta(days=days)))

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
            return [self._by_conv[one.id]], (frozenset({MESSAGE_CREATE}) if base == "xquik" else None)
        if base == "getxapi":
            return [self._by_conv[c.id] for c in self.conversations_in_tab(user_id, arg)], frozenset({MESSAGE_CREATE})
        if base == "getxapi_events":
            convs = self.conversations_in_tab(user_id, arg)
            trust = [[self._trust_of[(user_id, c.id)]] for c in convs if (user_id, c.id) in self._trust_of]
            return [self._by_conv[c.id] for c in convs] + trust, _GETXAPI_EVENT_TYPES
        raise ValueError(f"unknown route {route!r}")

    def _get(self, num: int) -> SimEvent:
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
             after: int | None = None, limit: int = 100, event_types: Iterable[str] | None = None) -> WindowPage:
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
                return WindowPage([], False, False)
            more_older = next(filter(match, self._desc(lists, floor, picked[-1])), None) is not None
            more_newer = next(filter(match, self._asc(lists, floor, picked[0])), None) is not None
            return WindowPage([self._get(n) for n in picked], more_older, more_newer)

    def between(self, user_id: str, route: str, *, above: int, below: int | None,
                event_types: Iterable[str] | None = None) -> list[SimEvent]:
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

    def includes_for(self, events: Iterable[SimEvent], expansions: Iterable[str]) -> dict[str, list[Any]]:
        """Objects referenced by `events` for X's expansion names, deduplicated, in first-seen order."""
        exp = set(expansions)
        users: dict[str, SimUser] = {}
        media: dict[str, SimMedia] = {}
        tweets: dict[str, SimTweet] = {}
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
