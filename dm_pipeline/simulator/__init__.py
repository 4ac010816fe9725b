"""Deterministic provider simulator: one seeded DM world served over loopback HTTP by X API v2, Xquik and
GetXAPI, with injectable faults.

    world = World(seed=7)                      # history_days=45 puts events outside X's 30-day window
    with Simulator(world) as sim:              # one port; sim.base_url("x" | "xquik" | "getxapi")
        a = world.accounts()[0]

X API v2 (base `sim.url`; modules `x_api`, `oauth`)
    GET /2/dm_events | /2/dm_conversations/with/{user_id}/dm_events | /2/dm_conversations/{id}/dm_events
    `Authorization: Bearer <world.token_for(a)>` (never expires) or an OAuth token from
    `sim.oauth.issue(a)` (expires after 2 h of the Simulator's clock; refresh at POST /2/oauth2/token,
    form `grant_type=refresh_token&refresh_token=…&client_id=…`; refresh tokens rotate and are single-use).
    Or OAuth 1.0a user context: consumer `sim.x.oauth1.consumer_key` / `consumer_secret`, the account's
    `sim.x.oauth1.credentials(a)`; the app-only `sim.x.oauth1.app_bearer_token` gets 403.
    Params per the OpenAPI spec (`max_results`, `pagination_token`, fields, expansions), in 2.159's names or
    2.167's (`sim.x.specs`); cursor in `meta.next_token`. Rate limit: `x-rate-limit-*` headers (the reset
    rounded up), one window per account for the three routes.
Xquik (base `sim.base_url("xquik")` = …/xquik/api/v1; module `xquik`)
    GET /x/dm/{user_id}/history?account=<world.xquik_handle(a)>[&cursor=…], GET /x/users/{id or username};
    header `x-api-key: <world.xquik_key()>`. Pages of `sim.xquik.page_size` (20) messages with
    `has_next_page` / `next_cursor`; 1 credit per message returned (`sim.xquik_credits`, `_used`).
GetXAPI (base `sim.base_url("getxapi")` = …/getxapi; module `getxapi`)
    POST /twitter/dm/list, `Authorization: Bearer <world.getxapi_key()>`, JSON
    `{"auth_token": world.getxapi_auth_token(a), "tab": "all"|"requests"|"hidden", "cursor"?, "count"?}`;
    `has_more` / `next_cursor`.

Ground truth: `world.truth(a, route)` (X field names) or `sim.truth(a, route, shape="provider")` (exactly
what a full walk serves), with route keys `dm_events`, `dm_conversation:{id}`, `dm_conversation_with:{user}`,
`xquik:{user}`, `getxapi:{tab}`, `getxapi_events:{tab}`. Faults: `sim.faults.inject(user_id | None, route,
kind, count, **params)` with route names `dm_events`, `dm_conversation_with`, `dm_conversation`,
`oauth_token`, `xquik_history`, `xquik_user`, `getxapi_list` (or "*"); kinds in `faults`, which route
honours which in `sim.route_faults`. Out of process: the `/_sim/*` endpoints (`control`).
"""

from dm_pipeline.simulator.faults import KINDS as FAULT_KINDS
from dm_pipeline.simulator.faults import Faults
from dm_pipeline.simulator.server import RequestInfo, Simulator
from dm_pipeline.simulator.world import NotVisible, SimEvent, World

__all__ = ["FAULT_KINDS", "Faults", "NotVisible", "RequestInfo", "SimEvent", "Simulator", "World"]
