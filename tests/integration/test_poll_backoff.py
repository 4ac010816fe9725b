"""A simulated day of 15-minute polling of a billed provider (Xquik: 1 credit per message returned, so every
poll of a conversation costs a full top page even when nothing is new), with and without the billed-stream
backoff of dm_pipeline/gate.py, against real Postgres and the simulator over loopback.

The day: one Xquik account with 20 conversation partners, each conversation with 25 messages of history
(more than Xquik's page of 20, so an idle poll costs 20 credits). Two partners are active, the rest silent:

- "friend": bursts of 3 messages at about 08:00, 12:30, 18:00 and 21:15 (ticks 32, 50, 72, 85);
- "colleague": one message an hour during working hours, 09:00 to 17:00 (ticks 36, 40, ..., 68).

96 ticks of 15 minutes on a virtual clock (the world's `now`, also `RunLimits.clock`), then one catch-up
run an hour after the last tick, when every stream is due whatever its backoff. The same seed builds both
worlds; each mode runs on a fresh database. The initial backfill happens before the day and is reported
apart: it costs the same in both modes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, create_engine, text

from dm_pipeline.clients import build_client, http_client
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, StreamStatus
from dm_pipeline.simulator import Simulator, World
from dm_pipeline.sync import RunLimits, sync_account
from tests.conftest import scratch_database, xquik_account

SEED = 23
PARTNERS = 20
HISTORY_EACH = 25
TICK_S = 900
TICKS = 96
DAY_START = datetime(2026, 1, 15, tzinfo=UTC)            # tick t ends at DAY_START + t * 15 min
FRIEND_BURSTS = {32: 3, 50: 3, 72: 3, 85: 3}          # tick -> messages
COLLEAGUE_HOURLY = {t: 1 for t in range(36, 69, 4)}    # 09:00 .. 17:00


@dataclass
class Day:
    backfill_credits: int = 0
    day_credits: int = 0                # the 96 ticks and the catch-up run
    audit_cost: int = 0                 # sum of the audit's job-row cost over the day
    requests: int = 0
    polls_per_tick: list[int] = field(default_factory=list)
    polls_by_partner: dict[str, int] = field(default_factory=dict)   # over the day
    active: tuple[str, ...] = ()
    not_due_ticks: int = 0
    max_delay_s: float = 0.0            # from a message's creation to the end of the run that stored it
    missing: set[str] = field(default_factory=set)
    active_messages: int = 0


@pytest.fixture
def two_more_engines(pg_server) -> Iterator[tuple[Engine, Engine]]:  # type: ignore[no-untyped-def]
    with scratch_database(pg_server) as first, scratch_database(pg_server) as second:
        engines = (create_engine(first), create_engine(second))
        yield engines
        for eng in engines:
            eng.dispose()


def build_world() -> tuple[World, list[str]]:
    """The account and its 20 partners, 25 messages each, written in the hour before the day starts."""
    world = World(seed=SEED, accounts=1, users=6, start=DAY_START - timedelta(hours=1))
    partners = world.add_partners(world.accounts()[0], PARTNERS, events_each=HISTORY_EACH, seconds=3600)
    assert world.now == DAY_START
    return world, partners


def simulate_day(engine: Engine, sim: Simulator, account: Account, partners: list[str]) -> Day:
    world = sim.world
    uid = account.user_id
    friend, colleague = partners[3], partners[11]
    convs = {p: world.one_to_one(uid, p) for p in (friend, colleague)}
    day = Day()
    run_at: dict[str, datetime] = {}
    posted_ids: list[str] = []
    limits = RunLimits(clock=lambda: world.now, poll_interval_s=TICK_S)

    def tick() -> int:
        run_id = f"day-{uuid.uuid4()}"
        with http_client() as http:
            res = sync_account(engine, build_client(account, http, policy=RetryPolicy(sleep=lambda s: None),
                                                    engine=engine), run_id, limits)
        assert {s.status for s in res.streams} <= {StreamStatus.SUCCEEDED}, res.streams
        run_at[run_id] = world.now
        day.not_due_ticks += bool(res.not_due)
        assert len(res.streams) + len(res.not_due) == PARTNERS
        return len(res.streams)

    tick()                                  # the backfill, before the day
    day.backfill_credits = sim.xquik_credits_used
    requests_before = len(sim.request_log)
    for t in range(1, TICKS + 1):
        posted = 0
        for who, schedule in ((friend, FRIEND_BURSTS), (colleague, COLLEAGUE_HOURLY)):
            if t in schedule:
                conv = convs[who]
                assert conv is not None
                posted_ids += world.post(conv.id, schedule[t], seconds=300, sender=who)
                posted += 300
        world.advance(None, 0, seconds=TICK_S - posted)
        day.polls_per_tick.append(tick())
    world.advance(None, 0, seconds=3600)   # the catch-up run: every stream is due
    day.polls_per_tick.append(tick())
    day.day_credits = sim.xquik_credits_used - day.backfill_credits
    day.requests = len(sim.request_log) - requests_before

    truth = {e["id"]: e for p in partners for e in sim.truth(uid, f"xquik:{p}", shape="provider")}
    with engine.connect() as conn:
        stored: dict[str, str] = dict(conn.execute(text(
            "SELECT message_id, first_seen_run_id FROM dm_private.dm_history "
            "WHERE account_key = :k"), {"k": account.key}).all())
        day.audit_cost = int(conn.scalar(text(
            "SELECT coalesce(sum(cost), 0) FROM dm_audit.dm_sync_audit WHERE row_kind = 'job' "
            "AND account_key = :k AND run_id <> ALL(:first)"),
            {"k": account.key, "first": [next(iter(run_at))]}))
        day.polls_by_partner = dict(conn.execute(text(
            "SELECT substr(stream_key, 6), sum(requests) FROM dm_audit.dm_sync_audit WHERE row_kind = 'job' "
            "AND account_key = :k AND run_id <> ALL(:first) GROUP BY 1"),
            {"k": account.key, "first": [next(iter(run_at))]}).all())
    day.active = (friend, colleague)
    assert set(stored) <= set(truth)
    day.missing = set(truth) - set(stored)
    for mid in posted_ids:
        if mid in stored:
            created = datetime.fromisoformat(truth[mid]["createdAt"].replace("Z", "+00:00"))
            day.max_delay_s = max(day.max_delay_s, (run_at[stored[mid]] - created).total_seconds())
    day.active_messages = len(posted_ids)
    return day


# With an idle partner polled at least once per max_poll_interval, a day costs at least ticks / (interval in
# ticks) polls of a full page: 96 / 4 = 24 of 97 at the default hour (0.247 of fixed polling from the idle
# partners alone, before the active ones), so the goal of a quarter needs a longer interval; a
# 2-hour interval is what an account sets for it (`max_poll_interval: 2h`).
GOAL_RATIO = 0.25
TWO_HOURS_S = 7200


def test_a_day_of_polling_twenty_partners_costs_less_with_the_backoff(
        engine, two_more_engines, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Three worlds from one seed, three databases; the days run side by side (each on its own thread):
    # fixed 15-minute polling, the backoff at the default max_poll_interval (1 h), and at 2 h.
    with ExitStack() as stack:
        runs = []
        for eng, max_poll in zip((engine, *two_more_engines), (0, None, TWO_HOURS_S), strict=True):
            world, partners = build_world()
            sim = stack.enter_context(Simulator(world, rate_limit=100_000))
            account = xquik_account(sim, world.accounts()[0], partners, monkeypatch)
            if max_poll is not None:    # 0: today's fixed 15-minute polling
                account = replace(account, max_poll_interval_s=max_poll)
            runs.append((eng, sim, account, partners))
        assert runs[0][3] == runs[1][3] == runs[2][3]
        assert runs[1][2].max_poll_interval_s == 3600     # the default
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="day") as pool:
            fixed, backed, two_hours = pool.map(lambda r: simulate_day(*r), runs)

    ratio = backed.day_credits / fixed.day_credits
    ratio_2h = two_hours.day_credits / fixed.day_credits
    total_ratio = (backed.backfill_credits + backed.day_credits) / (fixed.backfill_credits + fixed.day_credits)
    report = (f"credits over the day (96 ticks + catch-up): fixed={fixed.day_credits} backoff={backed.day_credits} "
              f"ratio={ratio:.3f}; with the backfill ({fixed.backfill_credits}): {total_ratio:.3f}; "
              f"max_poll_interval 2h: {two_hours.day_credits} ratio={ratio_2h:.3f}; "
              f"requests fixed={fixed.requests} backoff={backed.requests} 2h={two_hours.requests}; "
              f"polls per partner with backoff: "
              f"idle={sorted({n for p, n in backed.polls_by_partner.items() if p not in backed.active})} "
              f"active={[backed.polls_by_partner.get(p) for p in backed.active]}; "
              f"max delay fixed={fixed.max_delay_s / 60:.0f} min backoff={backed.max_delay_s / 60:.0f} min "
              f"2h={two_hours.max_delay_s / 60:.0f} min")
    print("\n" + report)

    # Same world, same backfill; the simulator's bill and the audit agree.
    assert fixed.backfill_credits == backed.backfill_credits == two_hours.backfill_credits \
        == PARTNERS * HISTORY_EACH, report
    for d in (fixed, backed, two_hours):
        assert d.audit_cost == d.day_credits, report
        assert d.missing == set(), f"{len(d.missing)} messages never stored; {report}"
    # Fixed polling asks every partner every tick, and each idle poll costs a full page.
    assert fixed.polls_per_tick == [PARTNERS] * (TICKS + 1) and fixed.not_due_ticks == 0, report
    assert fixed.day_credits == PARTNERS * 20 * (TICKS + 1), report
    assert fixed.active_messages == backed.active_messages == two_hours.active_messages == 21, report
    assert backed.not_due_ticks > 0 and min(backed.polls_per_tick) < PARTNERS, report
    # Idle partners back off alike (every tick for two empty polls, then every 30 min, then hourly); new
    # messages reset an active partner's interval, so it is polled more often.
    idle = {n for p, n in backed.polls_by_partner.items() if p not in backed.active}
    assert len(backed.polls_by_partner) == PARTNERS and len(idle) == 1, backed.polls_by_partner
    assert all(backed.polls_by_partner[p] > max(idle) for p in backed.active), backed.polls_by_partner
    assert set(fixed.polls_by_partner.values()) == {TICKS + 1}, fixed.polls_by_partner
    # The default hour: within a few polls of its floor (an idle partner hourly), and no message waits
    # longer than the interval plus a tick.
    floor = (PARTNERS - 2) * (TICKS // 4) * 20 / fixed.day_credits
    assert floor < ratio <= 0.30, report
    assert backed.max_delay_s <= 3600 + TICK_S, report
    # Two hours meets the goal of a quarter, and still misses nothing; a message waits at most 2 h + a tick.
    assert ratio_2h <= GOAL_RATIO < ratio, report
    assert two_hours.max_delay_s <= TWO_HOURS_S + TICK_S, report
    assert fixed.max_delay_s <= TICK_S, report
