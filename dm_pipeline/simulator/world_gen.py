"""The world's generator: the seeded, random construction of users, conversations, history and the GetXAPI
inbox (tabs, trust events), and of each new event, for `world.World` (rules in its docstring).

Every draw comes from the world's `random.Random(seed)` in a fixed order (the inbox from a generator of its
own), so the same arguments build the same world; reordering any draw here changes every world.
"""

from __future__ import annotations

import random

from dm_pipeline.simulator.model import (
    _ASCII,
    _CASHTAGS,
    _HASHTAGS,
    _UNICODE,
    MESSAGE_CREATE,
    PARTICIPANTS_JOIN,
    PARTICIPANTS_LEAVE,
    TRUST_CONVERSATION,
    SimConversation,
    SimEvent,
    SimMedia,
    SimTweet,
    SimUser,
    snowflake,
    snowflake_ms,
    to_ms,
)
from dm_pipeline.simulator.world_store import WorldStore


class WorldGenerator(WorldStore):
    """Builds the world's contents into the store; `World.__init__` calls the `_make_*` steps in order."""

    # --- construction -------------------------------------------------------------------------
    def _make_users(self, n: int) -> None:
        rng = self._rng
        first = ["ada", "li", "omar", "yael", "kenji", "zoe", "ravi", "mia", "noah", "sara", "ivan", "amara"]
        names = ["Ada Lovelace", "李雷", "عمر الفاروق", "יעל כהן", "山田 健二", "Zoë Brontë", "Ravi Kumar",
                 "Mia 🌸", "Noah O'Brien", "Sara \"Sal\" Díaz", "Иван Петров", "Amara Nwosu"]
        start_ms = to_ms(self.now)
        while len(self._user_order) < n:
            uid = self._fresh_uid(rng)
            i = len(self._user_order)
            self._users[uid] = SimUser(
                id=uid, username=f"{first[i % len(first)]}_{i}{rng.randint(10, 999)}"[:15],
                name=names[i % len(names)], created_ms=start_ms - rng.randint(400, 5000) * 86_400_000,
                description=rng.choice(_UNICODE + _ASCII), location=rng.choice(["Berlin", "東京", "", "القاهرة"]),
                protected=rng.random() < 0.1, verified=rng.random() < 0.2, followers=rng.randint(0, 50_000))
            self._user_order.append(uid)

    def _fresh_uid(self, rng: random.Random) -> str:
        """A user ID of 15-19 digits no user has yet (redrawn on a clash, in the same draw order)."""
        while True:
            digits = rng.randint(15, 19)
            uid = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
            if uid not in self._users:
                return uid

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

