"""GetXAPI has no SDK: its contract is the documented example page of `POST /twitter/dm/list` (vendored as
tests/fixtures/getxapi-dm-list-example.json). Every page of every tab of every account is checked against
it field by field: each key the example shows, at every depth, is present in every served object of the
same kind (events: of the same `type`) with the example's JSON type (or null where GetXAPI documents the
field as optional), and each example key is seen non-null somewhere in the walk. The example's numeric
cursor form is accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator.world import TABS

EXAMPLE = json.loads((Path(__file__).parents[1] / "fixtures" / "getxapi-dm-list-example.json").read_text())
# Fields GetXAPI's field reference documents as absent or null at times (group-only, no media, ...).
NULLABLE = {"name", "avatar_url", "media", "shared_tweet", "card", "reply_to_message_id", "recipientId",
            "last_read_event_id", "sort_timestamp", "last_message"}


def kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}[type(value)]


class Shape:
    """Walks served bodies against the example, collecting mismatches and the (path, type)s seen non-null."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.seen: set[str] = set()

    def check(self, example: Any, served: Any, path: str) -> None:
        if served is None and example is not None and path.rsplit(".", 1)[-1] in NULLABLE:
            return
        if kind(example) != "null" and kind(served) != kind(example):
            self.problems.append(f"{path}: {kind(served)}, the example has {kind(example)}")
            return
        if served is not None:
            self.seen.add(path)
        if isinstance(example, dict):
            # `users` is a map keyed by user ID: its values are checked against the example's values.
            keyed = path == "users"
            for key, sub in example.items():
                if keyed:
                    for uid, obj in served.items():
                        self.check(sub, obj, f"{path}.*")
                        if obj.get("id") != uid:
                            self.problems.append(f"{path}.{uid}: keyed by another ID")
                    break
                child = f"{path}.{key}" if path else key
                if child == "next_cursor" and served.get("has_more") is False:
                    continue                      # the last page has no next cursor (`has_more` false)
                if key not in served:
                    self.problems.append(f"{child}: missing")
                else:
                    self.check(sub, served[key], child)
        elif isinstance(example, list) and example:
            model = example[0]
            for item in served:
                if path == "events" and item.get("type") != model.get("type"):
                    continue                      # the example shows a trust_conversation event only
                self.check(model, item, f"{path}[]")


def example_paths(example: Any, path: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(example, dict):
        for key, sub in example.items():
            p = f"{path}.*" if path == "users" else f"{path}.{key}" if path else key
            out |= {p} if sub is not None else set()
            out |= example_paths(sub, p)
            if path == "users":
                break
    elif isinstance(example, list) and example:
        out |= {f"{path}[]"} | example_paths(example[0], f"{path}[]")
    return out


def client(sim: Simulator) -> httpx.Client:
    return httpx.Client(base_url=sim.base_url("getxapi"), timeout=10,
                        headers={"Authorization": f"Bearer {sim.world.getxapi_key()}"})


def post(c: httpx.Client, world: World, user_id: str, **body: Any) -> dict[str, Any]:
    r = c.post("/twitter/dm/list", json={"auth_token": world.getxapi_auth_token(user_id), **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


@pytest.mark.parametrize("seed", [7, 11])
def test_every_page_matches_the_seed_example_field_by_field(seed: int) -> None:
    world = World(seed=seed)
    shape = Shape()
    with Simulator(world, rate_limit=100_000) as sim, client(sim) as c:
        for a in world.accounts():
            for tab in TABS:
                cursor = None
                while True:
                    body = post(c, world, a, tab=tab, count=17, **({"cursor": cursor} if cursor else {}))
                    shape.check(EXAMPLE, body, "")
                    assert set(body) == set(EXAMPLE) - ({"next_cursor"} if not body["has_more"] else set())
                    assert body["tab"] == tab and body["userId"] == a
                    assert body["message_count"] == len(body["messages"])
                    assert body["conversation_count"] == len(body["conversations"])
                    if not body["has_more"]:
                        break
                    cursor = body["next_cursor"]
    assert shape.problems == []
    # Every field of the example, trust events' `reason` included, is served non-null somewhere.
    assert example_paths(EXAMPLE) - shape.seen == set()


def test_the_seed_examples_numeric_cursor_is_accepted(sim: Simulator, world: World) -> None:
    """`"cursor": "1928684596763250690"` (a snowflake, as in GetXAPI's example) reads the tab older than that ID; it
    pages exactly like the served opaque cursor."""
    a = world.accounts()[1]
    with client(sim) as c:
        first = post(c, world, a, count=10)
        opaque = post(c, world, a, count=10, cursor=first["next_cursor"])
        numeric = post(c, world, a, count=10, cursor=first["messages"][-1]["id"])
        assert numeric["messages"] == opaque["messages"] and numeric["events"] == opaque["events"]
        assert post(c, world, a, cursor=EXAMPLE["next_cursor"])["messages"] == []    # older than 2025-05: none
        newest = post(c, world, a, count=3, cursor=str((1 << 63) - 1))
        assert newest["messages"] == post(c, world, a, count=3)["messages"]
        for bad in ("19286845967632506901", "-5", "12a", str(1 << 63)):
            r = c.post("/twitter/dm/list", json={"auth_token": world.getxapi_auth_token(a), "cursor": bad})
            assert (r.status_code, r.json()) == (400, {"error": "Invalid cursor"}), bad
