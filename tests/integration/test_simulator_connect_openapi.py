"""What `dm-pipeline accounts connect` talks to in the simulator, against X's OpenAPI spec where it covers it.

The spec (2.159) describes `GET /2/users/me` and the OAuth 2.0 flow only as the `OAuth2UserToken` security
scheme (authorization and token URLs, the scopes); the consent page and the token endpoint's bodies are
not in it. So: `/2/users/me` answers (200, 400, 401) validate with openapi-core against a subset of the spec
vendored in tests/fixtures (re-derived from the full spec, vendored beside it, and compared);
the consent page's scopes and routes match the security scheme.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.deserializing.media_types.util import json_loads

from dm_pipeline.oauth_connect import SCOPES
from dm_pipeline.simulator import Simulator, World, consent, x_api
from tests.integration.test_simulator_openapi import SpecRequest, SpecResponse

FIXTURE = Path(__file__).parents[1] / "fixtures" / "x-api-v2-users-me-openapi.json"
FULL_SPEC = Path(__file__).parents[1] / "fixtures" / "x-api-v2-openapi-full.json"
PATHS = ("/2/users/me",)
pytestmark = pytest.mark.filterwarnings("ignore:Unsupported scheme type:UserWarning")


def subset(full: dict[str, Any], paths: tuple[str, ...] = PATHS) -> dict[str, Any]:
    """`paths` of the full spec with every component they reference (transitively), both security schemes
    they name, their tags; `info` notes the extraction. How the vendored fixture was made."""
    refs: set[tuple[str, str]] = set()
    todo: list[Any] = [full["paths"][p] for p in paths]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                kind, name = ref.split("/")[2:4]
                if (kind, name) not in refs:
                    refs.add((kind, name))
                    todo.append(full["components"][kind][name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    components: dict[str, dict[str, Any]] = {}
    for kind, name in sorted(refs):
        components.setdefault(kind, {})[name] = full["components"][kind][name]
    schemes = {name for p in paths for op in full["paths"][p].values()
               for sec in op.get("security", []) for name in sec}
    components["securitySchemes"] = {n: full["components"]["securitySchemes"][n] for n in sorted(schemes)}
    tags = {t for p in paths for op in full["paths"][p].values() for t in op.get("tags", [])}
    info = dict(full["info"])
    info["description"] = (f"{info.get('description', '')}\n\nExtracted subset: {', '.join(paths)} and every "
                           "component it references (transitively), with the security schemes it names. Source: "
                           "github.com/xdevplatform/xdk, path latest-openapi.json, commit "
                           "d567cf9b6bb7d452a2b8300e5ea91f3cbc390a6f (spec version 2.159). Not edited beyond "
                           "subsetting.")
    return {"openapi": full["openapi"], "info": info, "servers": full["servers"],
            "tags": [t for t in full.get("tags", []) if t["name"] in tags],
            "paths": {p: full["paths"][p] for p in paths}, "components": components}


@pytest.fixture(scope="module")
def raw_spec() -> dict[str, Any]:
    assert FIXTURE.exists(), f"{FIXTURE} is missing: the validation tests must never skip"
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    config = Config(extra_media_type_deserializers={"application/problem+json": json_loads})
    return OpenAPI.from_file_path(str(FIXTURE), config=config)


@pytest.fixture
def world() -> World:
    return World(seed=7)


@pytest.fixture
def sim(world: World) -> Iterator[Simulator]:
    with Simulator(world, rate_limit=100_000) as s:
        yield s


def me(sim: Simulator, token: str, **params: str) -> httpx.Response:
    return httpx.get(f"{sim.url}/2/users/me", params=params, headers={"Authorization": f"Bearer {token}"})


def test_the_vendored_subset_is_the_full_spec_s(raw_spec: dict[str, Any]) -> None:
    assert subset(json.loads(FULL_SPEC.read_text())) == raw_spec


@pytest.mark.parametrize("params", [
    {}, {"user.fields": "username"}, {"user.fields": ",".join(x_api.USER_FIELDS)},
    {"user.fields": "created_at,description,public_metrics,verified,verified_type,profile_image_url,url,protected",
     "expansions": "pinned_tweet_id", "tweet.fields": "created_at,text"},
])
def test_users_me_answers_validate(sim: Simulator, world: World, spec: OpenAPI, params: dict[str, str]) -> None:
    for token in (world.token_for(world.accounts()[1]), sim.oauth.issue(world.accounts()[1])[0]):
        r = me(sim, token, **params)
        assert r.status_code == 200, r.text
        spec.validate_response(SpecRequest(r.request), SpecResponse(r))
        data = r.json()["data"]
        assert data["id"] == world.accounts()[1] and data["username"] == world.user(world.accounts()[1]).username
        fields = set(params.get("user.fields", "").split(",")) - {""}
        assert set(data) <= {"id", "name", "username"} | fields


@pytest.mark.parametrize(("params", "parameter", "spec_says"), [
    ({"user.fields": "nonsense"}, "user.fields", "invalid"), ({"expansions": "sender_id"}, "expansions", "invalid"),
    ({"user.fields": "id,id"}, "user.fields", "invalid"),
    # OpenAPI lets a server ignore parameters it does not declare; X refuses them (as for /2/dm_events)
    ({"max_results": "5"}, "max_results", "silent"),
])
def test_users_me_bad_parameters_are_x_s_400(sim: Simulator, world: World, spec: OpenAPI, params: dict[str, str],
                                             parameter: str, spec_says: str) -> None:
    r = me(sim, world.token_for(world.accounts()[0]), **params)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["parameters"] == {parameter: [params[parameter]]}
    spec.validate_response(SpecRequest(r.request), SpecResponse(r))   # the default (Problem) response
    if spec_says == "invalid":
        with pytest.raises(Exception):                                 # noqa: B017 - any openapi-core error
            spec.validate_request(SpecRequest(r.request))
    else:
        spec.validate_request(SpecRequest(r.request))


def test_users_me_without_a_user_token_is_401(sim: Simulator, spec: OpenAPI) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        r = httpx.get(f"{sim.url}/2/users/me", headers=headers)
        assert r.status_code == 401
        spec.validate_response(SpecRequest(r.request), SpecResponse(r))


def test_scopes_and_urls_match_the_oauth2_security_scheme(raw_spec: dict[str, Any], sim: Simulator) -> None:
    flow = raw_spec["components"]["securitySchemes"]["OAuth2UserToken"]["flows"]["authorizationCode"]
    assert dict(consent.SCOPES) == flow["scopes"]
    assert set(SCOPES) <= set(flow["scopes"])                          # what connect asks for exists
    assert {"tweet.read", "users.read"} == set(raw_spec["paths"]["/2/users/me"]["get"]["security"][0]
                                               ["OAuth2UserToken"])    # what /2/users/me needs, connect asks
    assert urlsplit(flow["tokenUrl"]).path == "/2/oauth2/token"
    # The spec's authorizationUrl path is served too (X's documented one is x.com/i/oauth2/authorize).
    for path in (urlsplit(flow["authorizationUrl"]).path, "/i/oauth2/authorize"):
        assert httpx.get(f"{sim.url}{path}").status_code == 400      # served: a page refusing an empty request
