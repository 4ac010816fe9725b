"""Contract tests: the simulator walked by the providers' own client libraries (X's `xdk`, `tweepy`,
Xquik's `x-twitter-scraper`, `requests-oauthlib`), over real loopback HTTP, compared with the simulator's
truth; and the checks of the project's own X client that those libraries' findings led to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dm_pipeline.simulator import Simulator, World


@pytest.fixture
def world() -> World:
    return World(seed=11)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


@pytest.fixture
def insecure_oauthlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """oauthlib refuses token URLs that are not https; the simulator is plain http on loopback."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
