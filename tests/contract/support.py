"""Helpers of the contract tests (fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from dm_pipeline.simulator import Simulator, World

X_HOSTS = ("https://api.twitter.com", "https://api.x.com")


class ToSimulator(HTTPAdapter):
    """A requests transport that sends what a client addressed to X's host (tweepy hard-codes
    https://api.twitter.com) to the simulator, over real loopback HTTP. The request was signed for X's
    URL (OAuth 1.0a), which the simulator accepts as a base URI."""

    def __init__(self, sim_url: str) -> None:
        super().__init__()
        self.sim_url = sim_url

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        url = request.url or ""
        for host in X_HOSTS:
            if url.startswith(host + "/"):
                request.url = self.sim_url + url[len(host):]
                break
        return super().send(request, *args, **kwargs)


def route_to(session: requests.Session, sim: Simulator) -> None:
    for host in X_HOSTS:
        session.mount(host, ToSimulator(sim.url))


def one_to_one_peers(world: World, user_id: str) -> list[str]:
    return [next(m for m in c.members if m != user_id) for c in world.conversations_of(user_id) if not c.is_group]


def statuses(sim: Simulator, route: str | None = None) -> list[int]:
    return [s for _, r, s, _ in sim.request_log if route is None or r == route]
