"""A deterministic, provider-agnostic DM world: users, conversations, events, media and shared tweets.

Everything derives from `random.Random(seed)` and a virtual clock (`World.now`) that only `advance()`
moves, so two worlds built with the same arguments are identical and tests can compare a warehouse with
`truth()` exactly. Event dicts use X API v2 field names, the richest shape of the three providers; the
provider route modules select and rename fields from them.
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

TWEPOCH_MS = 1288834974657          # X snowflake epoch
DEFAULT_START = datetime(2026, 1, 15, tzinfo=UTC)
HISTORY_DAYS = 20                   # initial history spread; inside the 30-day window of /2/dm_events
ROUTE_WINDOW_DAYS: dict[str, int | None] = {"dm_events": 30}

MESSAGE_CREATE = "MessageCreate"
PARTICIPANTS_JOIN = "ParticipantsJoin"
PARTICIPANTS_LEAVE = "ParticipantsLeave"
EVENT_TYPES = (MESSAGE_CREATE, PARTICIPANTS_JOIN, PARTICIPANTS_LEAVE)


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    """`2026-01-14T08:03:11.123Z`: the format X uses for `created_at`."""
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def snowflake(ms: int, seq: int = 0) -> int:
    return ((ms - TWEPOCH_MS) << 22) | seq


def snowflake_ms(num: int) -> int:
    return (num >> 22) + TWEPOCH_MS


# ---------------------------------------------------------------------------------------------- text
# Fragments chosen to break naive pipelines: grapheme clusters (ZWJ, skin tones, flags), RTL and mixed
# bidi, CJK, combining marks, invisible characters, quotes/backslashes/newlines, SQL and HTML look-alikes.
_ASCII = [
    "hey, are you around later?", "sounds good, see you at 7", "can you send me the slides?",
    "lol no way", "ok", "Thanks!!", "running 10 min late, sorry", "did you see the game last night?",
    "let's move the call to Thursday", "ping me when you land", "k", "100% agree", "brb",
    "The quick brown fox jumps over the lazy dog.", "what's the wifi password?",
]
_UNICODE = [
    "family dinner 👩‍👩‍👧 tonight", "🏳️‍🌈🏳️‍⚧️ parade photos soon", "nice 👍🏽👍🏿", "🇯🇵 trip booked ✈️",
    "🧑🏻‍💻 still debugging", "😀😃😄😁", "❤️‍🔥", "mood: 🫠", "👨‍👩‍👧‍👦 all here",
    "مرحبا، كيف حالك؟", "أراك غدًا إن شاء الله", "שלום! מה שלומך?", "נתראה מחר בבוקר",
    "Meeting at 10 — موعدنا الساعة ١٠", "the word is שלום (shalom)",
    "明日の会議は10時からです", "你好，周末一起吃饭吗？", "안녕하세요, 잘 지내요?", "東京タワー🗼で会おう",
    "Cafe\u0301 au lait", "man\u0303ana", "Z\u0351a\u0352l\u0353g\u0354o\u0355 text", "नमस्ते दोस्त",
    "สวัสดีครับ", "Ελληνικά και кириллица", "zero\u200bwidth\u200bspaces", "\ufeffleading BOM",
    "math 𝔸𝕓𝕔 and 𝟙𝟚𝟛", "ﷺ ligature", "e\u0301\u0302\u0303 stacked marks",
]
_TRICKY = [
    'He said "hi" and left \\o/', "line one\nline two\r\nline three\ttabbed", "<b>not html</b> & 'quotes'",
    "'; DROP TABLE dm_history; --", "100% sure, $5 or €5 or ¥500", "back\\slash and /slash/",
    "{\"json\": \"inside\"}", "   leading and trailing spaces   ", "%s %d {0} ${var}",
]
_CONTROL = ["nul\u0000inside", "bell\u0007 and escape \u001b[31mred\u001b[0m", "\u0000"]
_HASHTAGS = ["weekend", "DataEngineering", "東京", "café", "dm_test"]
_CASHTAGS = ["TSLA", "AAPL", "BTC"]


def _build_text_pool(rng: random.Random, size: int, control_chars: bool) -> list[str]:
    pool: list[str] = []
    sources = [_ASCII, _ASCII, _UNICODE, _UNICODE, _TRICKY]
    for i in range(size):
        if i % 97 == 0:
            # ~1 kB messages; one in ~1000 is at the 10,000-character DM maximum.
            target = 10_000 if i % 970 == 0 else 1_000
            parts: list[str] = []
            while sum(len(p) + 1 for p in parts) < target:
                parts.append(rng.choice(rng.choice(sources)))
            pool.append(" ".join(parts)[:target])
        else:
            pool.append(" ".join(rng.choice(rng.choice(sources)) for _ in range(rng.randint(1, 3))))
    if control_chars:
        pool[1::50] = [_CONTROL[j % len(_CONTROL)] for j in range(len(pool[1::50]))]
    return pool


# ---------------------------------------------------------------------------------------- objects
@dataclass(slots=True)
class SimUser:
    id: str
    username: str
    name: str
    created_ms: int
    description: str
    location: str
    protected: bool
    verified: bool
    followers: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "username": self.username,
            "created_at": iso_ms(self.created_ms), "description": self.description,
            "location": self.location, "protected": self.protected, "verified": self.verified,
            "verified_type": "blue" if self.verified else "none",
            "profile_image_url": f"https://pbs.twimg.com/profile_images/{self.id}/avatar_normal.jpg",
            "url": "", "public_metrics": {
                "followers_count": self.followers, "following_count": self.followers // 3 + 7,
                "tweet_count": self.followers * 2 + 11, "listed_count": self.followers // 50,
                "like_count": self.followers + 3,
            },
        }


@dataclass(slots=True)
class SimMedia:
    media_key: str
    type: str               # photo | video | animated_gif
    width: int
    height: int
    event_num: int
    alt_text: str | None = None
    duration_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        mid = self.media_key.split("_", 1)[1]
        d: dict[str, Any] = {"media_key": self.media_key, "type": self.type,
                             "width": self.width, "height": self.height}
        if self.type == "photo":
            # Only photos carry `url` in X v2; videos and GIFs expose preview + variants.
            d["url"] = f"https://ton.twitter.com/1.1/ton/data/dm/{self.event_num}/{mid}/img.jpg"
            if self.alt_text is not None:
                d["alt_text"] = self.alt_text
            return d
        kind = "dm_video" if self.type == "video" else "dm_gif"
        d["preview_image_url"] = f"https://pbs.twimg.com/{kind}_preview/{mid}/img/preview.jpg"
        d["variants"] = [{"bit_rate": 0 if self.type == "animated_gif" else 832000,
                          "content_type": "video/mp4",
                          "url": f"https://video.twimg.com/{kind}/{mid}/vid/{self.width}x{self.height}/v.mp4"}]
        if self.type == "video":
            d["duration_ms"] = self.duration_ms
            d["public_metrics"] = {"view_count": 0}
        return d


@dataclass(slots=True)
class SimTweet:
    id: str
    author_id: str
    text: str
    created_ms: int

    def as_dict(self) -> dict[str, Any]:
        n = int(self.id)
        return {
            "id": self.id, "text": self.text, "edit_history_tweet_ids": [self.id],
            "author_id": self.author_id, "created_at": iso_ms(self.created_ms),
            "conversation_id": self.id, "lang": "en", "possibly_sensitive": False,
            "reply_settings": "everyone",
            "public_metrics": {"retweet_count": n % 13, "reply_count": n % 7, "like_count": n % 101,
                               "quote_count": n % 3, "bookmark_count": n % 5, "impression_count": n % 9973},
            "edit_controls": {"is_edit_eligible": False, "edits_remaining": 0,
                              "editable_until": iso_ms(self.created_ms + 3_600_000)},
        }


@dataclass
class SimConversation:
    id: str
    is_group: bool
    members: list[str]                   # current participants, in join order
    accounts: tuple[str, ...]            # connected accounts in it; they never leave, so visibility is fixed
    joiners: list[str] = field(default_factory=list)   # non-members who may join later (groups)


@dataclass(slots=True)
class SimEvent:
    """One DM event. `text` is mutable so edits can be simulated; `num` is the snowflake as an int."""

    num: int
    event_type: str
    dm_conversation_id: str
    sender_id: str | None = None
    text: str | None = None
    participant_ids: tuple[str, ...] = ()
    media_keys: tuple[str, ...] = ()
    tweet_ids: tuple[str, ...] = ()
    entities: dict[str, list[dict[str, Any]]] | None = None
    edit_count: int = 0

    @property
    def id(self) -> str:
        return str(self.num)

    @property
    def created_ms(self) -> int:
        return snowflake_ms(self.num)

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created_ms / 1000, UTC)

    def as_dict(self) -> dict[str, Any]:
        """All fields, X v2 names (entities flattened to top-level `urls`/`hashtags`/... as in DmEvent)."""
        d: dict[str, Any] = {"id": self.id, "event_type": self.event_type}
        if self.text is not None:
            d["text"] = self.text
        if self.sender_id is not None:
            d["sender_id"] = self.sender_id
        if self.participant_ids:
            d["participant_ids"] = list(self.participant_ids)
        d["dm_conversation_id"] = self.dm_conversation_id
        d["created_at"] = iso_ms(self.created_ms)
        if self.media_keys:
            d["attachments"] = {"media_keys": list(self.media_keys)}
        if self.tweet_ids:
            d["referenced_tweets"] = [{"id": t} for t in self.tweet_ids]
        if self.entities:
            d.update({k: [dict(e) for e in v] for k, v in self.entities.items()})
        return d


@dataclass(frozen=True)
class WindowPage:
    """A slice of an account's stream, newest first, and whether matching events lie beyond each end."""

    events: list[SimEvent]
    more_older: bool
    more_newer: bool


# ------------------------------------------------------------------------------------------- world
class World:
    def __init__(self, seed: int = 7, accounts: int = 3, users: int = 12, events_per_account: int = 260,
                 start: datetime = DEFAULT_START, *, control_chars: bool = False) -> None:
        if accounts < 1 or users < accounts + 4:
            raise ValueError("need accounts >= 1 and users >= accounts + 4")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
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
        self._media: dict[str, SimMedia] = {}
        self._tweets: dict[str, SimTweet] = {}
        self._texts = _build_text_pool(self._rng, 1024, control_chars)
        self._make_users(users)
        self._accounts = self._user_order[:accounts]
        self._tokens = {f"sim-x-{uid}": uid for uid in self._accounts}
        self._make_conversations()
        self._make_history(events_per_account)

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
                created = to_ms(self.now) - rng.randint(40, 400) * 86_400_000
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
        span = HISTORY_DAYS * 86_400_000
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
        self._events[num] = ev
        for a in conv.accounts:
            self._by_account[a].append(num)
        return ev

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

    def conversations_of(self, user_id: str) -> list[SimConversation]:
        return list(self._convs_of.get(user_id, []))

    def conversation(self, conversation_id: str) -> SimConversation:
        return self._convs[conversation_id]

    def event(self, event_id: str | int) -> SimEvent | None:
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
            for acct in self._convs[ev.dm_conversation_id].accounts:
                nums = self._by_account[acct]
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

    # --- reading streams ----------------------------------------------------------------------
    def window_floor(self, route: str) -> int:
        """Smallest snowflake visible on `route` now (0 when the route has no retention window)."""
        if route not in ROUTE_WINDOW_DAYS:
            raise ValueError(f"unknown route {route!r}")
        days = ROUTE_WINDOW_DAYS[route]
        return 0 if days is None else snowflake(to_ms(self.now - timedelta(days=days)))

    def page(self, user_id: str, route: str = "dm_events", *, before: int | None = None,
             after: int | None = None, limit: int = 100, event_types: Iterable[str] | None = None) -> WindowPage:
        """Up to `limit` events newest first: older than `before`, or (for previous pages) the oldest
        ones newer than `after`. Keyed by snowflake, so arrivals and deletions never shift a cursor."""
        with self.lock:
            nums = self._by_account[user_id]
            types = frozenset(event_types) if event_types is not None else None
            lo = bisect_left(nums, self.window_floor(route))
            ev = self._events

            def match(i: int) -> bool:
                return types is None or ev[nums[i]].event_type in types

            picked: list[int] = []
            if after is None:
                i = (bisect_left(nums, before) if before is not None else len(nums)) - 1
                while i >= lo and len(picked) < limit:
                    if match(i):
                        picked.append(i)
                    i -= 1
            else:
                i = max(bisect_right(nums, after), lo)
                while i < len(nums) and len(picked) < limit:
                    if match(i):
                        picked.append(i)
                    i += 1
                picked.reverse()
            if not picked:
                return WindowPage([], False, False)
            more_older = any(match(j) for j in range(picked[-1] - 1, lo - 1, -1))
            more_newer = any(match(j) for j in range(picked[0] + 1, len(nums)))
            return WindowPage([ev[nums[i]] for i in picked], more_older, more_newer)

    def truth(self, user_id: str, route: str = "dm_events") -> list[dict[str, Any]]:
        """Every event `user_id` would receive from `route`, all fields, newest first."""
        with self.lock:
            nums = self._by_account[user_id]
            lo = bisect_left(nums, self.window_floor(route))
            return [self._events[nums[i]].as_dict() for i in range(len(nums) - 1, lo - 1, -1)]

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
