"""The X answers in spec 2.167's spelling validate against that spec (openapi-core), as the 2.159 ones do
against 2.159 (tests/integration/test_simulator_openapi.py); the simulator's 2.167 enums equal the spec's;
requests are accepted under a 2.167-only X exactly when the spec accepts them; and the new error bodies
(403 unsupported-authentication, 429 usage-capped) validate against their problem types in the 2.159 spec.

The vendored 2.167 subset lists `attachments.media_keys` twice in its expansions enum, which makes it
invalid OpenAPI; the duplicate is dropped in memory before loading (the file stays byte-for-byte)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.deserializing.media_types.util import json_loads
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from dm_pipeline.http.policy import Budget
from dm_pipeline.models import Account, Provider
from dm_pipeline.providers.x_api import SpellingMemory, XClient
from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator import x_api as sim_x
from tests.integration.test_simulator_openapi import Checker, SpecRequest, SpecResponse, schema_errors, subtype

FIXTURES = Path(__file__).parents[1] / "fixtures"
SPEC_PATH = FIXTURES / "x-api-v2-dm-openapi-v2.167.json"
SPEC_2159 = FIXTURES / "x-api-v2-dm-openapi.json"
SPEC_SHA256 = "2f11f08e2615bb9a0567ec493421cf0a4dfe952968e393c629fda867682fa4e5"  # tests/fixtures/README.md
pytestmark = pytest.mark.filterwarnings("ignore:Unsupported scheme type:UserWarning")

EVERYTHING = {
    "dm_event.fields": ",".join(sim_x.DM_EVENT_FIELDS_V2167), "expansions": ",".join(sim_x.EXPANSIONS_V2167),
    "media.fields": ",".join(sim_x.MEDIA_FIELDS), "user.fields": ",".join(sim_x.USER_FIELDS_V2167),
    "post.fields": ",".join(sim_x.POST_FIELDS),
}
CLIENT = {"dm_event.fields": ",".join(sim_x.DM_EVENT_FIELDS_V2167), "expansions": ",".join(sim_x.EXPANSIONS_V2167),
          "post.fields": "created_at,id,text", "user.fields": "created_at,id,name,username"}


def load(path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(path.read_text())
    items = raw["components"]["parameters"]["DmEventExpansionsParameter"]["schema"]["items"]
    items["enum"] = list(dict.fromkeys(items["enum"]))
    return raw


@pytest.fixture(scope="module")
def raw_spec() -> dict[str, Any]:
    assert SPEC_PATH.exists(), f"{SPEC_PATH} is missing: the validation tests must never skip"
    return load(SPEC_PATH)


@pytest.fixture(scope="module")
def checker(raw_spec: dict[str, Any]) -> Checker:
    config = Config(extra_media_type_deserializers={"application/problem+json": json_loads})
    registry = Registry().with_resource("urn:x-spec", Resource.from_contents(raw_spec, default_specification=DRAFT4))
    return Checker(OpenAPI.from_dict(raw_spec, config=config), raw_spec, registry)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        s.x.specs = (sim_x.V2167,)                  # answers only what 2.167 spells
        yield s


def bearer(sim: Simulator, user_id: str) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=10,
                        headers={"Authorization": f"Bearer {sim.world.token_for(user_id)}"})


def walk(c: httpx.Client, checker: Checker, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        r = c.get(path, params={**params, **({"pagination_token": token} if token else {})})
        assert r.status_code == 200, r.text
        checker.request_ok(r)
        checker.spec.validate_response(SpecRequest(r.request), SpecResponse(r))
        bodies.append(r.json())
        token = bodies[-1]["meta"].get("next_token")
        if token is None:
            return bodies


@pytest.mark.parametrize("params", [{}, {"max_results": 100, **EVERYTHING}, {"max_results": 9, **CLIENT},
                                    {"max_results": 3, **CLIENT, "event_types": "ParticipantsLeave"}],
                         ids=["defaults", "every-field", "client-9", "leaves"])
def test_2167_answers_validate_on_every_route(sim: Simulator, world: World, checker: Checker,
                                              params: dict[str, Any]) -> None:
    for a in world.accounts():
        with bearer(sim, a) as c:
            data = [e for b in walk(c, checker, "/2/dm_events", params) for e in b.get("data", [])]
            if "event_types" not in params:
                assert [e["id"] for e in data] == [e["id"] for e in world.truth(a)]
            for conv in world.conversations_of(a):
                walk(c, checker, f"/2/dm_conversations/{conv.id}/dm_events", params)
                if not conv.is_group:
                    peer = next(m for m in conv.members if m != a)
                    walk(c, checker, f"/2/dm_conversations/with/{peer}/dm_events", params)


def test_2167_includes_hold_posts_and_entities_are_an_object(sim: Simulator, world: World, checker: Checker) -> None:
    a = world.accounts()[0]
    with bearer(sim, a) as c:
        bodies = walk(c, checker, "/2/dm_events", {"max_results": 100, **EVERYTHING})
    events = [e for b in bodies for e in b.get("data", [])]
    assert any("entities" in e for e in events) and not any(k in e for e in events for k in ("urls", "hashtags"))
    assert any("referenced_posts" in e for e in events) and not any("referenced_tweets" in e for e in events)
    includes = [b.get("includes", {}) for b in bodies]
    assert any("posts" in i for i in includes) and not any("tweets" in i for i in includes)
    assert all("post_count" in u["public_metrics"] for i in includes for u in i.get("users", []))


def test_the_project_client_after_its_fallback_validates(sim: Simulator, world: World, checker: Checker) -> None:
    """The production client against a 2.167-only X: its refused 2.159 request, then its 2.167 requests and
    their answers, every route."""
    seen: list[httpx.Response] = []

    def capture(response: httpx.Response) -> None:
        response.read()
        seen.append(response)

    a = world.accounts()[0]
    conversations = world.conversations_of(a)
    peer = next(next(m for m in c.members if m != a) for c in conversations if not c.is_group)
    account = Account(key="spec-2167", provider=Provider.X, user_id=a, base_url=sim.url, token_env=None,
                      page_size=30, participant_ids=(peer,), conversation_ids=tuple(c.id for c in conversations))
    with httpx.Client(event_hooks={"response": [capture]}) as http:
        client = XClient(account, http, lambda: world.token_for(a), spellings=SpellingMemory())
        for stream in client.streams():
            cursor = None
            for _ in range(3):
                page = client.fetch_page(stream, cursor, Budget.of(60))
                cursor = page.next_cursor
                if cursor is None:
                    break
    assert [r.status_code for r in seen].count(400) == 1 and seen[0].status_code == 400
    assert {e["parameters"].keys() & {"tweet.fields", "expansions", "dm_event.fields"} != set()
            for e in seen[0].json()["errors"]} == {True}
    for response in seen[1:]:
        assert response.status_code == 200 and "post.fields" in response.request.url.params
        checker.request_ok(response)
        checker.spec.validate_response(SpecRequest(response.request), SpecResponse(response))


@pytest.mark.parametrize(("path", "path_param"), [
    ("/2/dm_events", None), ("/2/dm_conversations/with/{participant_id}/dm_events", "participant_id"),
    ("/2/dm_conversations/{id}/dm_events", "id")])
def test_the_2167_enums_and_parameters_match_the_spec(raw_spec: dict[str, Any], path: str,
                                                      path_param: str | None) -> None:
    params = {}
    for p in raw_spec["paths"][path]["get"]["parameters"]:
        if "$ref" in p:
            p = raw_spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
        params[p["name"]] = p["schema"]
    if path_param is not None:
        params.pop(path_param)
    assert set(params) == set(sim_x.DM_EVENTS_PARAMS_V2167)
    for name, enum in sim_x.LIST_PARAMS_V2167.items():
        assert set(params[name]["items"]["enum"]) == set(enum), name


@pytest.mark.parametrize("params", [
    {"post.fields": "created_at"}, {"post.fields": "author_id"},
    {"expansions": "referenced_posts"}, {"expansions": "referenced_tweets.id"},
    {"dm_event.fields": "entities,text"}, {"dm_event.fields": "sender_id"}, {"user.fields": "subscribes_to_you"},
    {"user.fields": "most_recent_tweet_id"}, {"media.fields": "variants"}, {"max_results": "100"},
    {"max_results": "0"}, {"event_types": "MessageCreate"},
])
def test_2167_parameter_verdicts_agree_with_openapi_core(sim: Simulator, world: World, checker: Checker,
                                                         params: dict[str, str]) -> None:
    """(openapi-core ignores unknown parameters, so `tweet.fields` is checked in the tests above.)"""
    with bearer(sim, world.accounts()[0]) as c:
        r = c.get("/2/dm_events", params=params)
    try:
        checker.request_ok(r)
        spec_ok = True
    except Exception:
        spec_ok = False
    assert (r.status_code == 200) == spec_ok, (params, r.status_code, r.text)


def test_both_spellings_by_default_each_answered_in_its_own_shape(world: World) -> None:
    a = world.accounts()[0]
    with Simulator(world, rate_limit=100_000) as sim, bearer(sim, a) as c:
        old = c.get("/2/dm_events", params={"max_results": 100, "expansions": "referenced_tweets.id",
                                            "tweet.fields": "author_id"}).json()
        new = c.get("/2/dm_events", params={"max_results": 100, "expansions": "referenced_posts",
                                            "post.fields": "created_at"}).json()
        mixed = c.get("/2/dm_events", params={"expansions": "referenced_posts", "tweet.fields": "author_id"})
    assert "tweets" in old["includes"] and "posts" in new["includes"]
    assert [sim_x.as_v2167(e) for e in old["data"]] == new["data"]
    assert mixed.status_code == 400 and mixed.json()["errors"][0]["parameters"] == {"expansions": ["referenced_posts"]}


def test_new_error_bodies_validate_against_their_problem_types(world: World) -> None:
    """Against the primary (2.159) spec: the app-only 403 and the usage-capped 429, and the OAuth 1.0a path."""
    raw = json.loads(SPEC_2159.read_text())
    config = Config(extra_media_type_deserializers={"application/problem+json": json_loads})
    registry = Registry().with_resource("urn:x-spec", Resource.from_contents(raw, default_specification=DRAFT4))
    spec = OpenAPI.from_dict(raw, config=config)
    a = world.accounts()[0]
    with Simulator(world, rate_limit=100_000) as sim:
        app_only = httpx.get(f"{sim.url}/2/dm_events",
                             headers={"Authorization": f"Bearer {sim.x.oauth1.app_bearer_token}"})
        sim.faults.inject(a, "dm_events", "usage_capped")
        capped = httpx.get(f"{sim.url}/2/dm_events", headers={"Authorization": f"Bearer {world.token_for(a)}"})
        sim.faults.inject(a, "dm_events", "unsupported_authentication")
        faulted = httpx.get(f"{sim.url}/2/dm_events", headers={"Authorization": f"Bearer {world.token_for(a)}"})
    for r, status, problem in ((app_only, 403, "UnsupportedAuthenticationProblem"),
                               (faulted, 403, "UnsupportedAuthenticationProblem"),
                               (capped, 429, "UsageCapExceededProblem")):
        assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json")
        spec.validate_response(SpecRequest(r.request), SpecResponse(r))
        body = r.json()
        assert subtype(raw, "Problem", body["type"]) == problem
        assert not schema_errors(registry, problem, body), (problem, body)
    assert capped.json()["period"] == "Monthly" and int(capped.headers["x-rate-limit-remaining"]) > 0


def test_the_vendored_2167_spec_is_the_recorded_copy() -> None:
    """Byte for byte the copy whose provenance and digest tests/fixtures/README.md records."""
    assert hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest() == SPEC_SHA256
    assert SPEC_SHA256 in (FIXTURES / "README.md").read_text()
