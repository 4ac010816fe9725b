"""A simulator on a clock the test moves (OAuth expiries, code lifetimes): fixtures `clock`, `world`, `sim`
for the tests that import them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dm_pipeline.simulator import Simulator, World

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world() -> World:
    return World(seed=7)


@pytest.fixture
def sim(world: World, clock: Clock) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000, clock=clock) as s:
        yield s
