"""The simulator's X answers (`/2/dm_events` and both conversation routes) validate against X's published
OpenAPI spec (openapi-core).

openapi-core does not follow `discriminator` mappings, so error bodies and media objects are also checked
against the concrete subtype schema (e.g. `ClientForbiddenProblem`, `Photo`) with the spec's own
OAS 3.0 schema validator.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.util import json_loads
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from werkzeug.datastructures import Headers, ImmutableMultiDict

from dm_pipeline.simulator import Simulator, World, x_api

# The X spec, vendored; tests/fixtures/README.md says where it came from and records this digest.
SPEC_PATH = Path(__file__).parents[1] / "fixtures" / "x-api-v2-dm-openapi.json"
SPEC_SHA256 = "53ce42f859455c9785c8e6bbfb430f7624e46af0578a467607690cadd8312a0f"
pytestmark = pytest.mark.filterwarnings("ignore:Unsupported scheme type:UserWarning")

DM_FIELDS = ",".join(x_api.DM_EVENT_FIELDS)
EXPANSIONS = ",".join(x_api.EXPANSIONS)
# What the provider client sends: every DmEvent field, every expansion, the includes fields it stores.
CLIENT = {
    "dm_event.fields": "attachments,created_at,dm_conversation_id,entities,event_type,id,participant_ids,"
                       "referenced_tweets,sender_id,text",
    "expansions": "attachments.media_keys,participant_ids,referenced_tweets.id,sender_id",
    "media.fields": "duration_ms,height,media_key,preview_image_url,type,url,width,alt_text,variants",
    "user.fields": "created_at,id,name,username,profile_image_url,verified,protected",
    "tweet.fields": "author_id,created_at,id,text,conversation_id,lang",
}
EVERYTHING = {**CLIENT, "media.fields": ",".join(x_api.MEDIA_FIELDS), "user.fields": ",".join(x_api.USER_FIELDS),
              "tweet.fields": ",".join(x_api.TWEET_FIELDS)}


# ------------------------------------------------------------------------------- openapi adapters
class SpecRequest:
    """openapi-core's Request protocol over an httpx request, re-hosted on the spec's server URL."""

    def __init__(self, r: httpx.Request) -> None:
        self.host_url = "https://api.x.com"
        self.path = r.url.path
        self.method = r.method.lower()
        self.body: bytes | None = None
        self.content_type = ""
        self.parameters = RequestParameters(query=ImmutableMultiDict(list(r.url.params.multi_items())),
                                            header=Headers(list(r.headers.items())))


class SpecResponse:
    def __init__(self, r: httpx.Response) -> None:
        self.status_code = r.status_code
        self.content_type = r.headers.get("content-type", "")
        self.headers = Headers(list(r.headers.items()))
        self.data: bytes | None = r.content


@pytest.fixture(scope="module")
def raw_spec() -> dict[str, Any]:
    assert SPEC_PATH.exists(), f"{SPEC_PATH} is missing: the validation tests must never skip"
    return json.loads(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def spec(raw_spec: dict[str, Any]) -> OpenAPI:
    # X sends errors as application/problem+json, which openapi-core does not parse as JSON by default.
    config = Config(extra_media_type_deserializers={"application/problem+json": json_loads})
    return OpenAPI.from_file_path(str(SPEC_PATH), config=config)


@pytest.fixture(scope="module")
def registry(raw_spec: dict[str, Any]) -> Registry:
    return Registry().with_resource("urn:x-spec", Resource.from_contents(raw_spec, default_specification=DRAFT4))


def schema_errors(registry: Registry, schema: str, instance: Any) -> list[str]:
    v = OAS30Validator({"$ref": f"urn:x-spec#/components/schemas/{schema}"}, registry=registry,
                       format_checker=OAS30Validator.FORMAT_CHECKER)
    return [e.message for e in v.iter_errors(instance)]


def subtype(raw_spec: dict[str, Any], base: str, tag: str) -> str:
    mapping = raw_spec["components"]["schemas"][base]["discriminator"]["mapping"]
    return str(mapping[tag].rsplit("/", 1)[1])


@pytest.fixture
def world() -> World:
    return World(seed=11)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


class Checker:
    def __init__(self, spec: OpenAPI, raw: dict[str, Any], registry: Registry) -> None:
        self.spec, self.raw, self.registry = spec, raw, registry

    def response(self, r: httpx.Response) -> dict[str, Any]:
        """Validate request and response against the spec; return the body."""
        self.spec.validate_response(SpecRequest(r.request), SpecResponse(r))
        body: dict[str, Any] = r.json()
        if r.status_code == 200:
            for m in body.get("includes", {}).get("media", []):
                assert not schema_errors(self.registry, subtype(self.raw, "Media", m["type"]), m)
        else:
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = subtype(self.raw, "Problem", body["type"])
            assert not schema_errors(self.registry, problem, body), (problem, body)
        return body

    def request_ok(self, r: httpx.Response) -> None:
        self.spec.validate_request(SpecRequest(r.request))


@pytest.fixture
def check(spec: OpenAPI, raw_spec: dict[str, Any], registry: Registry) -> Checker:
    return Checker(spec, raw_spec, registry)


def client(sim: Simulator, user_id: str) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=10,
                        headers={"Authorization": f"Bearer {sim.world.token_for(user_id)}"})


def walk_checked(c: httpx.Client, check: Checker, params: dict[str, Any],
                 path: str = "/2/dm_events") -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        r = c.get(path, params={**params, **({"pagination_token": token} if token else {})})
        assert r.status_code == 200, r.text
        check.request_ok(r)
        bodies.append(check.response(r))
        token = bodies[-1]["meta"].get("next_token")
        if token is None:
            return bodies


# ------------------------------------------------------------------------------------------ 200s
@pytest.mark.parametrize("params", [
    {},
    {"max_results": 100, **CLIENT},
    {"max_results": 7, **CLIENT},
    {"max_results": 1, **CLIENT, "event_types": "ParticipantsJoin,ParticipantsLeave"},
    {"max_results": 50, **EVERYTHING},
    {"max_results": 100, "dm_event.fields": DM_FIELDS},
    {"max_results": 100, "expansions": EXPANSIONS},
], ids=["defaults", "client-100", "client-7", "client-1-membership", "every-field", "fields-only",
        "expansions-only"])
def test_success_pages_validate(sim: Simulator, world: World, check: Checker, params: dict[str, Any]) -> None:
    for a in world.accounts():
        with client(sim, a) as c:
            bodies = walk_checked(c, check, params)
        data = [e for b in bodies for e in b.get("data", [])]
        assert len(data) == len(world.truth(a)) or "event_types" in params
        if params.get("expansions"):
            assert any("includes" in b for b in bodies)


def test_previous_pages_and_empty_pages_validate(sim: Simulator, world: World, check: Checker) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        p1 = check.response(c.get("/2/dm_events", params={"max_results": 3, **CLIENT}))
        p2 = check.response(c.get("/2/dm_events", params={"max_results": 3, **CLIENT,
                                                          "pagination_token": p1["meta"]["next_token"]}))
        back = c.get("/2/dm_events", params={"max_results": 3, "pagination_token": p2["meta"]["previous_token"]})
        check.request_ok(back)
        assert check.response(back)["data"]
        world.advance(seconds=31 * 86_400)
        empty = c.get("/2/dm_events", params={"max_results": 3, **CLIENT})
        assert "data" not in check.response(empty)
        sim.faults.inject(a, "dm_events", "empty_page")
        world.advance(a, 2)
        assert "data" not in check.response(c.get("/2/dm_events", params=CLIENT))


@pytest.mark.parametrize("params", [{}, {"max_results": 7, **CLIENT}, {"max_results": 100, **EVERYTHING},
                                    {"max_results": 2, **CLIENT, "event_types": "ParticipantsJoin"}],
                         ids=["defaults", "client-7", "every-field", "joins"])
def test_conversation_routes_validate(sim: Simulator, world: World, check: Checker, params: dict[str, Any]) -> None:
    for a in world.accounts():
        with client(sim, a) as c:
            for conv in world.conversations_of(a):
                bodies = walk_checked(c, check, params, f"/2/dm_conversations/{conv.id}/dm_events")
                if "event_types" not in params:
                    assert sum(len(b.get("data", [])) for b in bodies) == len(world.truth_conversation(a, conv.id))
                if not conv.is_group:
                    peer = next(m for m in conv.members if m != a)
                    walk_checked(c, check, params, f"/2/dm_conversations/with/{peer}/dm_events")


def test_conversation_route_errors_validate(sim: Simulator, world: World, check: Checker) -> None:
    a, _, c3 = world.accounts()
    foreign = next(c for c in world.conversations_of(c3) if a not in c.accounts)
    with client(sim, a) as c:
        for path in (f"/2/dm_conversations/{foreign.id}/dm_events", f"/2/dm_conversations/with/{a}/dm_events"):
            r = c.get(path)
            assert r.status_code == 403
            assert subtype(check.raw, "Problem", check.response(r)["type"]) == "ResourceUnauthorizedProblem"
        sim.faults.inject(a, "dm_conversation", "dm_not_permitted")
        r = c.get(f"/2/dm_conversations/{world.conversations_of(a)[0].id}/dm_events")
        assert r.status_code == 403
        check.response(r)
        r = c.get(f"/2/dm_conversations/{foreign.id}/dm_events", params={"pagination_token": "A" * 24})
        assert r.status_code == 400
        check.response(r)


@pytest.mark.parametrize("path", [
    "/2/dm_conversations/123-456/dm_events", "/2/dm_conversations/123456789012345/dm_events",
    "/2/dm_conversations/12345/dm_events", "/2/dm_conversations/abc/dm_events", "/2/dm_conversations/1-2-3/dm_events",
    "/2/dm_conversations/with/123/dm_events", "/2/dm_conversations/with/12a/dm_events",
    "/2/dm_conversations/with/12345678901234567890/dm_events",
])
def test_path_verdicts_agree_with_openapi_core(sim: Simulator, world: World, spec: OpenAPI, path: str) -> None:
    with client(sim, world.accounts()[0]) as c:
        r = c.get(path)
    try:
        spec.validate_request(SpecRequest(r.request))
        spec_ok = True
    except Exception:
        spec_ok = False
    assert (r.status_code != 400) == spec_ok, (path, r.status_code, r.text)


# ----------------------------------------------------------------------------------------- errors
def test_error_bodies_validate_against_default_problems(sim: Simulator, world: World, check: Checker) -> None:
    a = world.accounts()[0]
    with client(sim, a) as c:
        for kind in ("429", "503", "500", "403", "401", "invalid_cursor"):
            sim.faults.inject(a, "dm_events", kind, retry_after=3)
            r = c.get("/2/dm_events", params={"max_results": 10})
            assert r.status_code >= 400
            check.response(r)
        for params in ({"max_results": 0}, {"max_results": 101}, {"pagination_token": "short"},
                       {"pagination_token": "A" * 24}, {"foo": "bar"}, {"expansions": "nope"},
                       {"user.fields": "id,id"}):
            r = c.get("/2/dm_events", params=params)
            assert r.status_code == 400
            assert check.response(r)["type"] == "https://api.twitter.com/2/problems/invalid-request"
    check.response(httpx.get(f"{sim.url}/2/dm_events", headers={"Authorization": "Bearer wrong"}))
    with Simulator(world, rate_limit=1) as limited, client(limited, a) as c:
        assert c.get("/2/dm_events").status_code == 200
        r = c.get("/2/dm_events")
        assert r.status_code == 429
        check.response(r)


# --------------------------------------------------------------------------- parity with the spec
@pytest.mark.parametrize(("path", "path_param", "pattern"), [
    ("/2/dm_events", None, None),
    ("/2/dm_conversations/with/{participant_id}/dm_events", "participant_id", x_api.USER_ID_PATTERN),
    ("/2/dm_conversations/{id}/dm_events", "id", x_api.CONVERSATION_ID_PATTERN),
])
def test_enums_and_parameters_match_the_spec(raw_spec: dict[str, Any], path: str, path_param: str | None,
                                             pattern: str | None) -> None:
    op = raw_spec["paths"][path]["get"]
    params = {}
    for p in op["parameters"]:
        if "$ref" in p:
            p = raw_spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
        schema = p["schema"]
        if "$ref" in schema:
            schema = raw_spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        params[p["name"]] = schema
    if path_param is not None:
        assert params.pop(path_param)["pattern"] == pattern
    assert set(params) == set(x_api.DM_EVENTS_PARAMS)
    for name, enum in x_api.LIST_PARAMS.items():
        assert set(params[name]["items"]["enum"]) == set(enum), name
    assert (params["max_results"]["minimum"], params["max_results"]["maximum"]) == (1, 100)
    assert raw_spec["components"]["schemas"]["PaginationToken32"]["minLength"] == 16


@pytest.mark.parametrize("params", [
    {"max_results": "1"}, {"max_results": "100"}, {"max_results": "0"}, {"max_results": "101"},
    {"max_results": "-3"}, {"max_results": "x"}, {"expansions": "sender_id"}, {"expansions": "sender"},
    {"expansions": "sender_id,sender_id"}, {"event_types": "MessageCreate"}, {"event_types": "Message"},
    {"dm_event.fields": "entities,text"}, {"dm_event.fields": "urls"}, {"media.fields": "variants"},
    {"media.fields": "size"}, {"user.fields": "receives_your_dm"}, {"user.fields": "email"},
    {"tweet.fields": "note_tweet"}, {"tweet.fields": "views"}, {"pagination_token": "x" * 15},
])
def test_parameter_verdicts_agree_with_openapi_core(sim: Simulator, world: World, spec: OpenAPI,
                                                    params: dict[str, str]) -> None:
    with client(sim, world.accounts()[0]) as c:
        r = c.get("/2/dm_events", params=params)
    try:
        spec.validate_request(SpecRequest(r.request))
        spec_ok = True
    except Exception:
        spec_ok = False
    assert (r.status_code == 200) == spec_ok, (params, r.status_code, r.text)


def test_validator_is_not_vacuous(sim: Simulator, world: World, spec: OpenAPI, check: Checker,
                                  registry: Registry) -> None:
    """Known-bad bodies must fail, or the tests above prove nothing."""
    with client(sim, world.accounts()[0]) as c:
        r = c.get("/2/dm_events", params={"max_results": 2, **CLIENT})
    bad_bodies: list[dict[str, Any]] = [
        {"data": [], "meta": {"result_count": 0}},                                    # minItems 1
        {"data": [{"id": "1"}]},                                                        # event_type required
        {"data": [{"id": "12a", "event_type": "MessageCreate"}]},                       # DmEventId pattern
        {"data": [{"id": "1", "event_type": "MessageCreate", "created_at": "14/01/2026"}]},
        {"data": [{"id": "1", "event_type": "MessageCreate", "dm_conversation_id": "1-"}]},
        {"includes": {"users": [{"id": "1", "name": "n"}]}},                            # username required
    ]
    for bad in bad_bodies:
        resp = SpecResponse(r)
        resp.data = json.dumps(bad).encode()
        with pytest.raises(Exception):  # noqa: B017 - openapi-core raises several validation types
            spec.validate_response(SpecRequest(r.request), resp)
    assert schema_errors(registry, "ClientForbiddenProblem", {"type": "x", "title": "t", "reason": "nope"})
    assert schema_errors(registry, "Photo", {"type": "photo", "url": 5})


def test_the_vendored_spec_is_the_recorded_copy() -> None:
    """The spec is byte for byte the copy whose provenance tests/fixtures/README.md records."""
    assert hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest() == SPEC_SHA256
    assert SPEC_SHA256 in (SPEC_PATH.parent / "README.md").read_text()


def test_every_request_the_x_client_sends_and_its_response_match_the_spec(spec, raw_spec, registry, sim,  # type: ignore[no-untyped-def]
                                                                          world, tmp_path) -> None:
    """The production client itself (not a copy of its parameters): every route it uses, first pages and
    cursor pages, with its full field/expansion set — each request and 200 response validated."""
    from dm_pipeline.http.policy import Budget
    from dm_pipeline.models import Account, Provider
    from dm_pipeline.providers.x_api import XClient

    checker = Checker(spec, raw_spec, registry)
    seen: list[httpx.Response] = []

    def capture(response: httpx.Response) -> None:
        response.read()
        seen.append(response)

    uid = world.accounts()[0]
    conversations = world.conversations_of(uid)
    peer = next(next(m for m in c.members if m != uid) for c in conversations if not c.is_group)
    account = Account(key="spec", provider=Provider.X, user_id=uid, base_url=sim.url, token_env=None, page_size=30,
                      participant_ids=(peer,), conversation_ids=tuple(c.id for c in conversations))
    with httpx.Client(event_hooks={"response": [capture]}) as http:
        client = XClient(account, http, lambda: world.token_for(uid))
        for stream in client.streams():
            cursor = None
            for _ in range(3):  # the first page and two cursor pages per route
                page = client.fetch_page(stream, cursor, Budget.of(60))
                cursor = page.next_cursor
                if cursor is None:
                    break
    routes = {r.request.url.path.split("/")[2] + ("/with" if "/with/" in r.request.url.path else "") for r in seen}
    assert routes == {"dm_events", "dm_conversations", "dm_conversations/with"}
    assert any("pagination_token" in r.request.url.params for r in seen)
    for response in seen:
        assert response.status_code == 200
        checker.request_ok(response)
        checker.response(response)
