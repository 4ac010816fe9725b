"""Xquik's official SDK, `x-twitter-scraper` 0.19.0, against the simulator's Xquik routes, with strict
response validation (`_strict_response_validation=True`: every page must match the SDK's models).

The SDK has no paginator for DM history: a client loops `retrieve_history(cursor=next_cursor)` until
`has_next_page` is false, as its docstring says; it documents the cursor aliases `next_cursor`,
`next_token`, `pagination_token`, `continuation_token`. Its models: `next_cursor: str` (required),
`Message.senderId` / `receiverId` required. Errors: `APIStatusError` subclasses by status (402 is the base
class itself), `APIConnectionError` / `APITimeoutError`, `APIResponseValidationError`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import x_twitter_scraper as xs
from x_twitter_scraper.types.shared.user_profile import UserProfile
from x_twitter_scraper.types.x.dm_retrieve_history_response import DmRetrieveHistoryResponse

from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator import xquik as sim_xquik
from tests.contract.support import one_to_one_peers, statuses


def sdk(sim: Simulator, **kw: Any) -> xs.XTwitterScraper:
    options: dict[str, Any] = {"max_retries": 0, "timeout": 10.0, **kw}
    return xs.XTwitterScraper(api_key=sim.world.xquik_key(), base_url=sim.base_url("xquik"),
                              _strict_response_validation=True, **options)


def history(client: xs.XTwitterScraper, peer: str, handle: str, alias: str = "cursor"
            ) -> tuple[list[dict[str, Any]], list[DmRetrieveHistoryResponse]]:
    pages: list[DmRetrieveHistoryResponse] = []
    cursor = ""
    for _ in range(1000):
        kw: dict[str, Any] = {}
        if cursor and alias == "cursor":
            kw["cursor"] = cursor
        elif cursor:
            kw["extra_query"] = {alias: cursor}
        page = client.x.dm.retrieve_history(peer, account=handle, **kw)
        pages.append(page)
        if not page.has_next_page:
            return [m.model_dump(by_alias=True, exclude_none=True) for p in pages for m in p.messages], pages
        cursor = page.next_cursor
        assert cursor
    raise AssertionError("the history never ended")


def test_the_sdk_pages_every_history_to_the_truth_with_strict_validation(sim: Simulator, world: World) -> None:
    sim.xquik.page_size = 9
    client = sdk(sim)
    walked = 0
    for a in world.accounts():
        for peer in one_to_one_peers(world, a):
            messages, pages = history(client, peer, world.xquik_handle(a))
            assert messages == sim.truth(a, f"xquik:{peer}", shape="provider")
            assert pages[-1].next_cursor == "" and not pages[-1].has_next_page     # the terminal page
            assert all(len(p.messages) == 9 and p.next_cursor for p in pages[:-1])
            walked += len(pages)
    assert walked == statuses(sim, "xquik_history").count(200) and walked > 20


@pytest.mark.parametrize("alias", sim_xquik.CURSOR_PARAMS[1:])
def test_every_cursor_alias_the_sdk_documents_pages_forward(sim: Simulator, world: World, alias: str) -> None:
    a = world.accounts()[0]
    peer = one_to_one_peers(world, a)[0]
    sim.xquik.page_size = 5
    messages, pages = history(sdk(sim), peer, world.xquik_handle(a), alias)
    assert messages == sim.truth(a, f"xquik:{peer}", shape="provider") and len(pages) > 2
    assert [q.get(alias) for _, r, _, q in sim.request_log if r == "xquik_history"][1:] == \
        [p.next_cursor for p in pages[:-1]]


def test_legacy_max_id_and_the_user_lookup(sim: Simulator, world: World) -> None:
    a = world.accounts()[1]
    peer = one_to_one_peers(world, a)[0]
    client = sdk(sim)
    first = client.x.dm.retrieve_history(peer, account=world.xquik_handle(a))
    second = client.x.dm.retrieve_history(peer, account=world.xquik_handle(a), cursor=first.next_cursor)
    legacy = client.x.dm.retrieve_history(peer, account=world.xquik_handle(a), max_id=first.messages[-1].id)
    assert legacy.messages == second.messages
    user = world.user(peer)
    for ident in (peer, user.username, "@" + user.username):
        profile = client.x.users.retrieve(ident)
        assert isinstance(profile, UserProfile)
        assert (profile.id, profile.username, profile.name, profile.followers) == \
            (user.id, user.username, user.name, user.followers)
    with pytest.raises(xs.NotFoundError):
        client.x.users.retrieve("nobody_at_all")


# Every fault the history route honours -> the SDK's exception, or "walks" (deduplicated, equals the truth).
SDK_FAULTS: dict[str, type[BaseException] | str] = {
    "401": xs.AuthenticationError, "429": xs.RateLimitError, "500": xs.InternalServerError,
    "503": xs.InternalServerError, "html": xs.InternalServerError,
    "expired_cursor": xs.BadRequestError, "invalid_cursor": xs.BadRequestError,
    "dm_not_permitted": xs.PermissionDeniedError, "account_restricted": xs.PermissionDeniedError,
    "account_needs_reauth": xs.PermissionDeniedError, "x_dm_not_allowed": xs.UnprocessableEntityError,
    "no_credits": xs.APIStatusError, "no_subscription": xs.APIStatusError, "insufficient_credits": xs.APIStatusError,
    "drop": xs.APIConnectionError, "truncated": xs.APIConnectionError,
    # A 200 whose JSON is cut short: the SDK lets the decoder's own error through (no APIError wraps it).
    "malformed_json": json.JSONDecodeError,
    # A message without senderId: the SDK's models require it, so strict validation refuses the page.
    "missing_optional": xs.APIResponseValidationError,
    "slow": "walks", "cursor_loop": "walks", "empty_page": "walks", "duplicates": "walks", "nul_text": "walks",
}


ERROR_CODES = {"401": "unauthenticated", "429": "rate_limited", "500": "internal_error", "503": "service_unavailable",
               "expired_cursor": "invalid_input", "invalid_cursor": "invalid_input"}


def test_the_fault_table_covers_every_history_fault(sim: Simulator) -> None:
    assert set(SDK_FAULTS) == set(sim.route_faults["xquik_history"])


@pytest.mark.parametrize("kind", sorted(SDK_FAULTS))
def test_the_sdk_meets_every_fault_with_its_own_exception(sim: Simulator, world: World, kind: str) -> None:
    a = world.accounts()[0]
    peer = one_to_one_peers(world, a)[0]
    handle = world.xquik_handle(a)
    sim.xquik.page_size = 5
    client = sdk(sim)
    first = client.x.dm.retrieve_history(peer, account=handle)
    params: dict[str, Any] = {"delay_s": 0.2} if kind == "slow" else {}
    sim.faults.inject(a, "xquik_history", kind, **params)
    expected = SDK_FAULTS[kind]
    if expected == "walks":
        cursor, ids = first.next_cursor, [m.id for m in first.messages]
        while cursor:
            page = client.x.dm.retrieve_history(peer, account=handle, cursor=cursor)
            ids += [m.id for m in page.messages]
            cursor = page.next_cursor
        truth = [m["id"] for m in sim.truth(a, f"xquik:{peer}", shape="provider")]
        assert list(dict.fromkeys(ids)) == truth and len(sim.faults) == 0
        return
    assert isinstance(expected, type)
    with pytest.raises(expected) as caught:
        client.x.dm.retrieve_history(peer, account=handle, cursor=first.next_cursor)
    if isinstance(caught.value, xs.APIStatusError) and kind != "html":
        assert isinstance(caught.value.body, dict) and caught.value.body["error"] == ERROR_CODES.get(kind, kind)
    if kind in ("no_credits", "no_subscription", "insufficient_credits"):
        assert type(caught.value) is xs.APIStatusError and caught.value.status_code == 402


def test_the_sdk_retries_a_rate_limit_itself(sim: Simulator, world: World) -> None:
    """With its default retries the SDK honours the 429's Retry-After (0 here) and gets the page."""
    a = world.accounts()[0]
    peer = one_to_one_peers(world, a)[0]
    sim.faults.inject(a, "xquik_history", "429", retry_after=0)
    page = sdk(sim, max_retries=2).x.dm.retrieve_history(peer, account=world.xquik_handle(a))
    assert page.messages and statuses(sim, "xquik_history") == [429, 200]
