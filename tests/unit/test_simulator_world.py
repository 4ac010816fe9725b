"""The simulator's world: deterministic, X-shaped, and hard on naive pipelines."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from datetime import timedelta

import pytest

from dm_pipeline.simulator.faults import Faults, Reply
from dm_pipeline.simulator.world import (
    DEFAULT_START,
    MESSAGE_CREATE,
    PARTICIPANTS_JOIN,
    PARTICIPANTS_LEAVE,
    TABS,
    TRUST_CONVERSATION,
    TWEPOCH_MS,
    NotVisible,
    World,
    iso_ms,
    to_ms,
)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def all_events(w: World) -> dict[str, dict]:
    return {e["id"]: e for a in w.accounts() for e in w.truth(a)}


def test_same_seed_same_world_different_seed_different() -> None:
    a, b, c = World(seed=7), World(seed=7), World(seed=8)
    assert a.accounts() == b.accounts()
    assert [a.truth(u) for u in a.accounts()] == [b.truth(u) for u in b.accounts()]
    assert a.advance(a.accounts()[0], 5, deletions=2) == b.advance(b.accounts()[0], 5, deletions=2)
    assert [a.truth(u) for u in a.accounts()] == [b.truth(u) for u in b.accounts()]
    assert a.accounts() != c.accounts()
    assert a.truth(a.accounts()[0]) != c.truth(c.accounts()[0])


def test_users_accounts_and_tokens(world: World) -> None:
    accounts = world.accounts()
    assert len(accounts) == 3
    for u in world.users():
        assert re.fullmatch(r"[1-9][0-9]{14,18}", u.id)
        assert re.fullmatch(r"[A-Za-z0-9_]{1,15}", u.username)
    assert len({u.id for u in world.users()}) == 12
    for a in accounts:
        assert world.token_for(a) == f"sim-x-{a}"
        assert world.account_for_token(world.token_for(a)) == a
    assert world.account_for_token("sim-x-nobody") is None
    with pytest.raises(KeyError):
        world.token_for(world.users()[-1].id)


def test_conversations(world: World) -> None:
    for a in world.accounts():
        convs = world.conversations_of(a)
        one_to_one = [c for c in convs if not c.is_group]
        groups = [c for c in convs if c.is_group]
        assert len(one_to_one) >= 2 and len(groups) >= 1
        for c in one_to_one:
            lo, hi = c.id.split("-")
            assert int(lo) < int(hi) and a in (lo, hi)        # ordered as integers, not strings
        for c in groups:
            assert re.fullmatch(r"[0-9]{19}", c.id)
            assert 3 <= len(c.members) <= 6 and a in c.members
    # Some 1:1 IDs must differ between string and integer ordering, or the test above proves nothing.
    ids = [c.id for a in world.accounts() for c in world.conversations_of(a) if not c.is_group]
    assert any(len(i.split("-")[0]) != len(i.split("-")[1]) for i in ids)


def test_event_ids_are_snowflakes_rising_with_time(world: World) -> None:
    events = sorted(all_events(world).values(), key=lambda e: int(e["id"]))
    nums = [int(e["id"]) for e in events]
    assert len(set(nums)) == len(nums)
    for e in events:
        ms = (int(e["id"]) >> 22) + TWEPOCH_MS
        assert e["created_at"] == iso_ms(ms)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["created_at"])
    times = [e["created_at"] for e in events]
    assert times == sorted(times)
    start = to_ms(DEFAULT_START)
    assert all(start - 20 * 86_400_000 <= (n >> 22) + TWEPOCH_MS < start for n in nums)


def test_event_shapes_and_types(world: World) -> None:
    events = list(all_events(world).values())
    kinds = Counter(e["event_type"] for e in events)
    assert set(kinds) == {MESSAGE_CREATE, PARTICIPANTS_JOIN, PARTICIPANTS_LEAVE}
    assert 0.8 < kinds[MESSAGE_CREATE] / len(events) < 0.97
    for e in events:
        if e["event_type"] == MESSAGE_CREATE:
            assert isinstance(e["text"], str) and e["sender_id"] and "participant_ids" not in e
        else:
            assert "text" not in e and len(e["participant_ids"]) == 1
            assert ("sender_id" in e) == (e["event_type"] == PARTICIPANTS_JOIN)
            assert "-" not in e["dm_conversation_id"]          # join/leave happen in groups only


def test_media_tweets_and_entities(world: World) -> None:
    events = list(all_events(world).values())
    with_media = [e for e in events if "attachments" in e]
    assert 0.08 < len(with_media) / len(events) < 0.25
    types = set()
    for e in with_media:
        for key in e["attachments"]["media_keys"]:
            m = world.media(key).as_dict()
            assert re.fullmatch(r"[0-9]+_[0-9]+", m["media_key"])
            assert m["width"] > 0 and m["height"] > 0
            assert ("url" in m) == (m["type"] == "photo")
            types.add(m["type"])
    assert types == {"photo", "video", "animated_gif"}
    shared = [e for e in events if "referenced_tweets" in e]
    assert shared
    for e in shared:
        tweet = world.tweet(e["referenced_tweets"][0]["id"]).as_dict()
        assert tweet["author_id"] and tweet["text"]
        url = e["urls"][0]
        assert e["text"][url["start"]:url["end"]] == url["url"]
    for kind in ("hashtags", "mentions", "cashtags"):
        tagged = [e for e in events if kind in e]
        assert tagged, kind
        for e in tagged:
            ent = e[kind][0]
            assert e["text"][ent["start"]:ent["end"]].lstrip("#@$") == ent.get("tag", ent.get("username"))


def test_text_is_hostile_unicode(world: World) -> None:
    texts = [e["text"] for e in all_events(world).values() if "text" in e]
    assert any("\u200d" in t for t in texts)                                  # ZWJ emoji sequences
    assert any(ord(c) > 0xFFFF for t in texts for c in t)                     # astral plane
    assert any(unicodedata.bidirectional(c) in ("R", "AL") for t in texts for c in t)   # RTL
    assert any(unicodedata.east_asian_width(c) == "W" and c.isalpha() for t in texts for c in t)  # CJK
    assert any(unicodedata.combining(c) for t in texts for c in t)
    assert any("\n" in t for t in texts)
    assert any(len(t) >= 1000 for t in texts)
    assert not any("\x00" in t for t in texts)                                # only with control_chars
    w = World(control_chars=True)
    assert any("\x00" in e.get("text", "") for a in w.accounts() for e in w.truth(a))


def test_advance_adds_newest_events_and_deletes() -> None:
    w = World()
    a = w.accounts()[0]
    before = w.truth(a)
    newest = int(max(int(e["id"]) for u in w.accounts() for e in w.truth(u)))
    ids = w.advance(a, 5, seconds=120)
    assert w.now == DEFAULT_START + timedelta(seconds=120)
    assert len(ids) == 5 and all(int(i) > newest for i in ids)
    assert ids == sorted(ids, key=int)
    after = w.truth(a)
    assert [e["id"] for e in after[:5]] == ids[::-1]
    assert after[5:] == before
    assert all(e["created_at"] <= iso_ms(to_ms(w.now)) for e in after)
    w.advance(a, 0, deletions=3)
    assert len(w.truth(a)) == len(after) - 3
    victim = after[10]["id"]
    assert w.delete(victim) is True and w.delete(victim) is False
    assert victim not in {e["id"] for e in w.truth(a)}


def test_thirty_day_window_follows_the_virtual_clock() -> None:
    w = World()
    a = w.accounts()[0]
    full = w.truth(a)
    w.advance(seconds=15 * 86_400)           # now - 30d falls inside the initial 20-day history
    cutoff = iso_ms(to_ms(w.now - timedelta(days=30)))
    kept = w.truth(a)
    assert 0 < len(kept) < len(full)
    assert kept == [e for e in full if e["created_at"] >= cutoff]
    w.advance(seconds=30 * 86_400)
    assert w.truth(a) == []


def test_page_walks_by_snowflake() -> None:
    w = World()
    a = w.accounts()[1]
    truth = [e["id"] for e in w.truth(a)]
    seen: list[str] = []
    before = None
    while True:
        page = w.page(a, before=before, limit=9)
        seen += [e.id for e in page.events]
        if not page.more_older:
            break
        before = page.events[-1].num
    assert seen == truth
    joins = w.page(a, limit=100, event_types=[PARTICIPANTS_JOIN]).events
    assert joins and all(e.event_type == PARTICIPANTS_JOIN for e in joins)
    newer = w.page(a, after=int(truth[20]), limit=5)
    assert [e.id for e in newer.events] == truth[15:20] and newer.more_newer and newer.more_older


def test_faults_registry_matching_and_counts() -> None:
    f = Faults()
    f.inject("1", "dm_events", "429", count=2, retry_after=3)
    f.inject(None, "dm_events", "503")
    assert f.take("2", "dm_events").kind == "503"           # type: ignore[union-attr]
    assert f.take("2", "dm_events") is None
    assert f.take("1", "other_route") is None
    first = f.take("1", "dm_events")
    assert first is not None and first.kind == "429" and first.params == {"retry_after": 3}
    assert len(f) == 1
    f.clear()
    assert f.take("1", "dm_events") is None
    with pytest.raises(ValueError):
        f.inject(None, "dm_events", "teapot")


def test_a_million_events_build_and_page() -> None:
    # How fast is the benchmark's business (benchmarks/); here: the size the benchmark uses works.
    w = World(accounts=1, events_per_account=1_000_000)
    a = w.accounts()[0]
    assert w.event_count(a) == 1_000_000
    before, n, last = None, 0, None
    for _ in range(200):
        page = w.page(a, before=before, limit=100)
        n += len(page.events)
        assert last is None or page.events[0].num < last  # strictly older, page after page
        before = last = page.events[-1].num
    assert n == 20_000
    deep = w.page(a, before=w.page(a, limit=1).events[0].num - (1 << 22) * 86_400_000 * 10, limit=100)
    assert len(deep.events) == 100 and deep.more_older


# ------------------------------------------------------------------------ routes, tabs, providers
def test_history_days_and_per_route_windows() -> None:
    w = World(history_days=45)
    a = w.accounts()[0]
    start = to_ms(DEFAULT_START)
    conv_events = [e for c in w.conversations_of(a) for e in w.truth_conversation(a, c.id)]
    oldest = min(int(e["id"]) for e in conv_events)
    assert start - 45 * 86_400_000 <= (oldest >> 22) + TWEPOCH_MS < start - 40 * 86_400_000
    assert len({e["id"] for e in conv_events}) == len(conv_events) == w.event_count(a)
    cutoff = iso_ms(to_ms(w.now - timedelta(days=30)))
    assert w.truth(a) == sorted((e for e in conv_events if e["created_at"] >= cutoff),
                                key=lambda e: int(e["id"]), reverse=True)
    assert w.window_floor("dm_events") > 0
    assert w.window_floor("dm_conversation:1-2") == w.window_floor("getxapi:all") == 0
    with pytest.raises(ValueError):
        World(history_days=0)


def test_route_errors() -> None:
    w = World()
    a, _, c = w.accounts()
    foreign = next(x for x in w.conversations_of(c) if a not in x.accounts)
    with pytest.raises(NotVisible):
        w.truth(a, f"dm_conversation:{foreign.id}")
    with pytest.raises(NotVisible):
        w.page(a, f"xquik:{a}")
    with pytest.raises(ValueError):
        w.truth(a, "dm_events:extra")
    with pytest.raises(ValueError):
        w.truth(a, "getxapi:spam")
    with pytest.raises(KeyError):
        w.truth(w.users()[-1].id)


@pytest.mark.parametrize("route", ["getxapi:all", "getxapi_events:all", "xquik", "dm_events"])
def test_merged_streams_page_both_ways(route: str) -> None:
    w = World()
    a = w.accounts()[0]
    if route == "xquik":
        route = "xquik:" + next(m for c in w.conversations_of(a) if not c.is_group for m in c.members if m != a)
    truth = [e["id"] for e in w.truth(a, route)]
    seen: list[str] = []
    before = None
    while True:
        page = w.page(a, route, before=before, limit=7)
        seen += [e.id for e in page.events]
        if not page.more_older:
            break
        before = page.events[-1].num
    assert seen == truth and truth
    if len(truth) > 10:
        newer = w.page(a, route, after=int(truth[10]), limit=4)
        assert [e.id for e in newer.events] == truth[6:10] and newer.more_newer and newer.more_older
        assert [e.id for e in w.between(a, route, above=int(truth[5]), below=int(truth[1]))] == truth[2:5]


def test_tabs_trust_events_and_replies_are_deterministic() -> None:
    w, same = World(seed=3), World(seed=3)
    for a in w.accounts():
        assert {c.id: w.tab_of(a, c.id) for c in w.conversations_of(a)} == \
            {c.id: same.tab_of(a, c.id) for c in same.conversations_of(a)}
        assert w.truth(a, "getxapi_events:all") == same.truth(a, "getxapi_events:all")
    trusts = [(a, e) for a in w.accounts() for t in TABS for e in w.truth(a, f"getxapi_events:{t}")
              if e["event_type"] == TRUST_CONVERSATION]
    assert trusts
    for a, e in trusts:
        assert w.event(e["id"]) is None and int(e["id"]) & 4095 == 4095
        assert w.tab_of(a, e["dm_conversation_id"]) == "all"
        thread = w.truth_conversation(a, e["dm_conversation_id"])[::-1]
        assert thread[0]["sender_id"] != a
        first_reply = next(x for x in thread if x.get("sender_id") == a)
        assert int(e["id"]) < int(first_reply["id"])
        assert e["id"] not in {x["id"] for x in w.truth(a)}
    replies = [(ev, w.event(ev.reply_to)) for ev in (w.event(e["id"]) for e in w.truth(w.accounts()[0]))
               if ev is not None and ev.reply_to is not None]
    assert replies
    for ev, target in replies:
        assert target is not None and target.dm_conversation_id == ev.dm_conversation_id and target.num < ev.num


def test_provider_credentials() -> None:
    w, other = World(seed=7), World(seed=8)
    a = w.accounts()[0]
    assert w.xquik_key() and w.getxapi_key() and w.xquik_key() != w.getxapi_key()
    token = w.getxapi_auth_token(a)
    assert re.fullmatch(r"[0-9a-f]{40}", token) and token == World(seed=7).getxapi_auth_token(a)
    assert w.account_for_auth_token(token) == a and w.account_for_auth_token("0" * 40) is None
    assert other.getxapi_auth_token(other.accounts()[0]) != token
    handle = w.xquik_handle(a)
    for h in (handle, handle.upper(), "@" + handle, a):
        assert w.account_for_handle(h) == a
    stranger = w.users()[-1]
    assert w.account_for_handle(stranger.username) is None and w.account_for_handle("nobody") is None
    with pytest.raises(KeyError):
        w.getxapi_auth_token(stranger.id)
    with pytest.raises(KeyError):
        w.xquik_handle(stranger.id)


def test_edits_count_and_only_messages_have_text() -> None:
    w = World()
    a = w.accounts()[0]
    msg = next(e for e in w.truth(a) if e["event_type"] == MESSAGE_CREATE)
    w.edit(msg["id"], "one")
    w.edit(msg["id"], "two")
    ev = w.event(msg["id"])
    assert ev is not None and (ev.text, ev.edit_count) == ("two", 2)
    join = next(e for e in w.truth(a) if e["event_type"] == PARTICIPANTS_JOIN)
    with pytest.raises(ValueError):
        w.edit(join["id"], "nope")
    w.advance(a, 0, edits=10)
    assert sum(1 for e in w.truth(a) if (x := w.event(e["id"])) and x.edit_count) >= 5


def test_faults_filter_by_kind_and_validate() -> None:
    calls: list[tuple[str, str]] = []
    f = Faults(lambda route, kind: calls.append((route, kind)))
    f.inject(None, "*", "no_credits")
    f.inject(None, "*", "503")
    assert calls == [("*", "no_credits"), ("*", "503")]
    assert f.take("1", "dm_events", {"503", "429"}).kind == "503"            # type: ignore[union-attr]
    assert f.take("1", "dm_events", {"503"}) is None
    assert f.take("1", "xquik_history").kind == "no_credits"                 # type: ignore[union-attr]

    def reject(route: str, kind: str) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        Faults(reject).inject(None, "x", "503")


def test_replies_escape_lone_surrogates() -> None:
    body = Reply(200, {"text": "a\x00b\ud800", "ok": "é🙂"}).encoded()
    assert body == '{"text":"a\\u0000b\\ud800","ok":"é🙂"}'.encode()
    assert json.loads(body) == {"text": "a\x00b\ud800", "ok": "é🙂"}
