"""The fault matrix: every simulator fault x provider route, each cell with its expected outcome.

Outcomes:
- `ok`            retried where needed, then the stream succeeded and equals the truth, every column of every row
- `ok_flagged`    succeeded; the rows of the bent page are sanitized (NUL / lone surrogates replaced) and
                  flagged, every other column and every other row equal the truth
- `ok_partial`    succeeded; the rows of the bent page hold NULL exactly where the provider left fields out,
                  every other column and every other row equal the truth
- `gap`           succeeded, with `gap_suspected` recorded (X /2/dm_events 30-day window)
- `rate_limited`  the provider's wait exceeds the run's budget: the pass is parked, the run is not failed
- `failed:<code>` a typed failure: the job audit row carries <code>, nothing of the failing page is stored

In every outcome, each stored row equals the simulator's truth in EVERY column of dm_history (the expected
row is built from what a clean walk of the route serves: raw, media, recipient, edit count, flags...), and
the audit reconciles: the page rows' events_inserted add up to the stored rows, and each stored ID is listed
by a committed page row. Anything else is `mismatch` (or `failed:half_written`, `failed:unaudited`).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from dm_pipeline.clients import build_client, http_client
from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, OAuthConfig, Provider, StreamResult, StreamStatus
from dm_pipeline.providers import x_api as x_client
from dm_pipeline.providers.base import parse_timestamp
from dm_pipeline.simulator import getxapi as sim_getxapi
from dm_pipeline.simulator import x_api as sim_x
from dm_pipeline.simulator import xquik as sim_xquik
from dm_pipeline.simulator.paging import poison
from dm_pipeline.sync import RunLimits, sync_account

ROUTES = {"x": "dm_events", "x_conversation": "dm_conversation_with", "xquik": "xquik_history",
          "getxapi": "getxapi_list"}


@dataclass(frozen=True)
class Cell:
    provider: str
    fault: str
    expect: str
    params: dict[str, Any] = field(default_factory=dict)
    count: int = 1

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.fault}"


# fault -> (expected outcome, params, count); per-provider overrides below.
COMMON: dict[str, tuple[str, dict[str, Any], int]] = {
    "429_retry_after": ("ok", {"retry_after": 1}, 2),
    "429_no_headers": ("ok", {}, 2),
    "503": ("ok", {}, 3),
    "500": ("failed:http_500", {}, 1),
    "slow": ("ok", {"delay_s": 1.5}, 1),
    "drop": ("ok", {}, 1),
    "truncated": ("ok", {}, 1),
    "malformed_json": ("failed:malformed_response", {}, 1),
    "html": ("failed:http_502", {"status": 502}, 1),
    "cursor_loop": ("failed:cursor_loop", {}, 1),
    "empty_page": ("ok", {}, 1),
    "duplicates": ("ok", {"overlap": 3}, 1),
    "nul_text": ("ok_flagged", {}, 1),
    "missing_optional": ("ok_partial", {}, 1),
    "expired_cursor": ("ok", {}, 1),
}
SPECIFIC: dict[str, dict[str, tuple[str, dict[str, Any], int]]] = {
    "x": {"401": ("failed:unauthorized", {}, 1), "403": ("failed:client_forbidden", {}, 1),
          "unsupported_authentication": ("failed:unsupported_authentication", {}, 1),
          "usage_capped": ("failed:usage_capped", {}, 1),
          "dm_not_permitted": ("failed:not_authorized_for_resource", {}, 1),
          "429_no_headers": ("ok", {"rate_headers": False}, 2), "window_gap": ("gap", {}, 0),
          "429_reset_beyond_budget": ("rate_limited", {"reset_in": 3600}, 1),
          "401_oauth_refresh": ("ok", {}, 1)},
    "x_conversation": {"401": ("failed:unauthorized", {}, 1), "403": ("failed:client_forbidden", {}, 1),
                       "usage_capped": ("failed:usage_capped", {}, 1),
                       "429_no_headers": ("ok", {"rate_headers": False}, 2)},
    "xquik": {"401": ("failed:unauthenticated", {}, 1), "500": ("failed:internal_error", {}, 1),
              "no_credits": ("failed:no_credits", {}, 1),
              "dm_not_permitted": ("failed:dm_not_permitted", {}, 1),
              "account_restricted": ("failed:account_restricted", {}, 1),
              "account_needs_reauth": ("failed:account_needs_reauth", {}, 1),
              "x_dm_not_allowed": ("failed:x_dm_not_allowed", {}, 1)},
    "getxapi": {"401": ("failed:invalid_auth_token", {}, 1)},
}


def cells() -> list[Cell]:
    out = []
    for provider in ROUTES:
        for fault, (expect, params, count) in {**COMMON, **SPECIFIC.get(provider, {})}.items():
            out.append(Cell(provider, fault, expect, params, count))
    return out



@dataclass
class Observed:
    outcome: str
    detail: str = ""


def account_for(provider: str, sim: Any, env: dict[str, str]) -> tuple[Account, str, dict[str, str]]:
    """(account, stream key under test, {stream key: truth route} of all its streams) for one provider route."""
    world = sim.world
    uid = world.accounts()[0]
    peer = next(next(m for m in c.members if m != uid) for c in world.conversations_of(uid) if not c.is_group)
    if provider in ("x", "x_conversation"):
        env["FM_X_TOKEN"] = world.token_for(uid)
        base = Account(key=f"fm-{provider}", provider=Provider.X, user_id=uid, base_url=sim.url,
                       token_env="FM_X_TOKEN", page_size=25)
        if provider == "x":
            return base, "dm_events", {"dm_events": "dm_events"}
        return (replace(base, participant_ids=(peer,)), f"with:{peer}",
                {"dm_events": "dm_events", f"with:{peer}": f"dm_conversation_with:{peer}"})
    if provider == "xquik":
        env["FM_XQUIK_KEY"] = world.xquik_key()
        return (Account(key="fm-xquik", provider=Provider.XQUIK, user_id=uid, base_url=sim.base_url("xquik"),
                        token_env="FM_XQUIK_KEY", handle=world.xquik_handle(uid), partners=(peer,)),
                f"with:{peer}", {f"with:{peer}": f"xquik:{peer}"})
    env["FM_GETXAPI_KEY"], env["FM_AUTH"] = world.getxapi_key(), world.getxapi_auth_token(uid)
    return (Account(key="fm-getxapi", provider=Provider.GETXAPI, user_id=uid, base_url=sim.base_url("getxapi"),
                    token_env="FM_GETXAPI_KEY", auth_token_env="FM_AUTH", tabs=("all",), page_size=20),
            "tab:all", {"tab:all": "getxapi:all"})


def _stream(results: list[StreamResult], key: str) -> StreamResult:
    return next(s for s in results if s.stream_key == key)


# --- the expected row: every column of dm_history, from what a clean walk of the route serves ------------

# The content columns, compared with the truth; the bookkeeping ones, checked for consistency. A column
# added to dm_history and missing here fails every cell, so "every column" stays true.
CONTENT = ("conversation_id", "event_type", "sender_id", "recipient_id", "participant_ids", "created_at", "text",
           "media", "referenced_tweets", "reply_to_message_id", "edit_count", "raw", "sanitized", "flags")
BOOKKEEPING = ("account_key", "message_id", "provider", "stream_key", "content_hash", "first_seen_run_id",
               "last_changed_run_id", "first_seen_at", "last_changed_at", "deleted_upstream_at")
# What the simulator's `missing_optional` leaves out of every item of the bent page, per provider.
REMOVED = {"x": sim_x._OPTIONAL, "x_conversation": sim_x._OPTIONAL, "xquik": sim_xquik._OPTIONAL,
           "getxapi": sim_getxapi._MESSAGE_OPTIONAL}
TEXT_KEY = "text"
CREATED_KEY = {"x": "created_at", "x_conversation": "created_at", "xquik": "createdAt", "getxapi": "createdAt"}
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")   # what Postgres cannot store: replaced by U+FFFD and flagged
# X: the fields every media object / tweet carries, and what the client asks for besides.
X_MEDIA = {"media_key", "type", *x_client.MEDIA_FIELDS.split(",")}
X_TWEET = {"id", "text", "edit_history_tweet_ids", *x_client.TWEET_FIELDS.split(",")}


@dataclass
class Truth:
    """What a clean walk of each route of the account serves, by message ID, with the X includes."""

    wire: dict[str, dict[str, Any]] = field(default_factory=dict)     # message ID -> event as served
    streams: dict[str, set[str]] = field(default_factory=dict)        # message ID -> streams serving it
    media: dict[str, dict[str, Any]] = field(default_factory=dict)    # X media_key -> media object as served
    tweets: dict[str, dict[str, Any]] = field(default_factory=dict)   # X tweet ID -> tweet object as served
    order: dict[str, list[str]] = field(default_factory=dict)         # stream key -> its IDs, newest first

    @classmethod
    def snapshot(cls, sim: Any, uid: str, streams: dict[str, str]) -> Truth:
        truth = cls()
        for key, route in streams.items():
            served = sim.truth(uid, route, shape="provider")
            truth.order[key] = [str(e["id"]) for e in served]
            for event in served:
                truth.wire[str(event["id"])] = event
                truth.streams.setdefault(str(event["id"]), set()).add(key)
            if not route.startswith(("xquik:", "getxapi")):
                inc = sim.world.includes_for(sim.world.between(uid, route, above=-1, below=None),
                                             ("attachments.media_keys", "referenced_tweets.id"))
                for m in inc.get("media", []):
                    d = m.as_dict()
                    truth.media[d["media_key"]] = {k: v for k, v in d.items() if k in X_MEDIA}
                for t in inc.get("tweets", []):
                    d = t.as_dict()
                    truth.tweets[d["id"]] = {k: v for k, v in d.items() if k in X_TWEET}
        return truth

    def merged(self, later: Truth) -> Truth:
        """Both snapshots (the world moved between them: window_gap), the later one winning."""
        return Truth({**self.wire, **later.wire},
                     {k: self.streams.get(k, set()) | later.streams.get(k, set())
                      for k in {*self.streams, *later.streams}},
                     {**self.media, **later.media}, {**self.tweets, **later.tweets}, later.order)


def expected_row(provider: str, event: dict[str, Any], truth: Truth, uid: str, peer: str | None) -> dict[str, Any]:
    """The content columns a provider's event must be stored as (`event` as the wire carried it)."""
    raw, flags = event, set()
    if isinstance(event.get(TEXT_KEY), str) and _UNSTORABLE.search(event[TEXT_KEY]):
        original = event[TEXT_KEY]
        raw = {**event, TEXT_KEY: _UNSTORABLE.sub("\ufffd", original)}
        flags |= {"nul_replaced"} if "\x00" in original else set()
        flags |= {"surrogate_replaced"} if re.search("[\ud800-\udfff]", original) else set()
    if CREATED_KEY[provider] not in raw:
        flags.add("missing_created_at")
    row: dict[str, Any] = {"raw": raw, "sanitized": raw is not event, "flags": sorted(flags), "text": raw.get("text"),
                           "participant_ids": [], "referenced_tweets": None, "reply_to_message_id": None,
                           "edit_count": 0, "event_type": "MessageCreate"}
    if provider in ("x", "x_conversation"):
        conv, sender = raw.get("dm_conversation_id"), raw.get("sender_id")
        a, dash, b = (conv or "").partition("-")  # a 1:1 conversation is "{smaller}-{larger}"
        media = [truth.media[k] for k in (raw.get("attachments") or {}).get("media_keys", [])]
        tweets = [{**truth.tweets[r["id"]], **r} for r in raw.get("referenced_tweets") or []]
        row.update(conversation_id=conv, event_type=raw["event_type"], sender_id=sender,
                   recipient_id=(b if sender == a else a if sender == b else None) if dash and sender else None,
                   participant_ids=list(raw.get("participant_ids") or []),
                   created_at=parse_timestamp(raw.get("created_at")), media=media or None,
                   referenced_tweets=tweets or None)
    elif provider == "xquik":
        lo, hi = sorted((uid, peer or ""), key=int)
        row.update(conversation_id=f"{lo}-{hi}", sender_id=raw.get("senderId"), recipient_id=raw.get("receiverId"),
                   created_at=parse_timestamp(raw.get("createdAt")),
                   media=[{"url": raw["mediaUrl"]}] if raw.get("mediaUrl") else None)
    else:
        shared = raw.get("shared_tweet")
        row.update(conversation_id=raw.get("conversationId"), sender_id=raw.get("senderId"),
                   recipient_id=raw.get("recipientId"), created_at=parse_timestamp(raw.get("createdAt")),
                   media=[raw["media"]] if isinstance(raw.get("media"), dict) else None,
                   referenced_tweets=[shared] if isinstance(shared, dict) and shared.get("id") else None,
                   reply_to_message_id=raw.get("reply_to_message_id"), edit_count=raw.get("edit_count") or 0)
    return row


def bent(kind: str, provider: str, event: dict[str, Any]) -> dict[str, Any]:
    """`event` as the simulator's page-mutating fault `kind` serves it."""
    if kind == "nul_text":
        return {**event, TEXT_KEY: poison(event[TEXT_KEY])} if isinstance(event.get(TEXT_KEY), str) else event
    return {k: v for k, v in event.items() if k not in REMOVED[provider]}


def _differs(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    return [c for c in CONTENT if stored[c] != expected[c]]


@dataclass
class Comparison:
    missing: list[str]
    extra: list[str]
    wrong: dict[str, list[str]]          # message ID -> columns that match no model of the row
    bent_rows: dict[str, str]            # message ID -> "nul_text" | "missing_optional": the bent model it matches
    nulled: set[str]                     # columns NULL in a missing_optional row and not NULL in the truth
    bookkeeping: list[str]               # inconsistent bookkeeping, described
    fault_page: list[str]                # IDs of the first page of the stream under test in the cell's run

    def rows_ok(self) -> bool:
        return not (self.extra or self.wrong or self.bookkeeping)


def compare(provider: str, stored: dict[str, dict[str, Any]], truth: Truth, uid: str, peer: str | None,
            fault_page: list[str], account: Account, run_ids: set[str]) -> Comparison:
    clean = {m: expected_row(provider, e, truth, uid, peer) for m, e in truth.wire.items()}
    result = Comparison(sorted(set(clean) - set(stored), key=int), sorted(set(stored) - set(clean), key=int),
                        {}, {}, set(), [], fault_page)
    for mid, row in stored.items():
        if set(row) != set(CONTENT) | set(BOOKKEEPING):
            result.bookkeeping.append(f"dm_history columns {sorted(set(row) ^ (set(CONTENT) | set(BOOKKEEPING)))} "
                                      "are not covered by the comparison")
            break
        if row["provider"] != account.provider.value or row["account_key"] != account.key:
            result.bookkeeping.append(f"{mid}: provider/account {row['provider']}/{row['account_key']}")
        if row["stream_key"] not in truth.streams.get(mid, set()):
            result.bookkeeping.append(f"{mid}: stream_key {row['stream_key']} does not serve it")
        if not {row["first_seen_run_id"], row["last_changed_run_id"]} <= run_ids:
            result.bookkeeping.append(f"{mid}: run ids not of this cell")
        if row["deleted_upstream_at"] is not None:  # no cell deletes an event upstream
            result.bookkeeping.append(f"{mid}: marked deleted upstream")
        if row["first_seen_at"] > row["last_changed_at"] or not re.fullmatch("[0-9a-f]{64}", row["content_hash"]):
            result.bookkeeping.append(f"{mid}: first_seen_at/last_changed_at/content_hash inconsistent")
        if mid not in clean:
            continue
        wrong = _differs(row, clean[mid])
        if not wrong:
            continue
        for kind in ("nul_text", "missing_optional") if mid in fault_page else ():
            model = expected_row(provider, bent(kind, provider, truth.wire[mid]), truth, uid, peer)
            if not _differs(row, model):
                result.bent_rows[mid] = kind
                if kind == "missing_optional":
                    result.nulled |= {c for c in wrong if row[c] is None and c not in ("raw", "flags")}
                break
        else:
            result.wrong[mid] = wrong
    # The bent page is bent whole: each of its rows that the fault changes holds the bent value.
    for kind in set(result.bent_rows.values()):
        for mid in fault_page:
            if mid in stored and mid in clean and mid not in result.bent_rows and mid not in result.wrong:
                model = expected_row(provider, bent(kind, provider, truth.wire[mid]), truth, uid, peer)
                if _differs(model, clean[mid]):
                    result.wrong[mid] = [f"not bent by {kind}"]
    return result


def run_cell(cell: Cell, engine: Engine, sim: Any, env: dict[str, str]) -> Observed:
    account, stream_key, streams = account_for(cell.provider, sim, env)
    route = ROUTES[cell.provider]
    uid = account.user_id
    peer = account.partners[0] if account.partners else (account.participant_ids or (None,))[0]
    lookup = env.get
    waits: list[float] = []
    run_ids: set[str] = set()
    before = Truth.snapshot(sim, uid, streams)

    def sync(limits: RunLimits | None = None) -> StreamResult:
        run_ids.add(run_id := f"fm-{uuid.uuid4()}")
        with http_client(timeout_s=1.0) as http:
            client = build_client(account, http, lookup, policy=RetryPolicy(sleep=waits.append), engine=engine)
            result = sync_account(engine, client, run_id, limits or RunLimits())
        return _stream(result.streams, stream_key)

    fault = cell.fault
    if fault in ("expired_cursor", "cursor_loop"):  # both need a stored cursor: park a pass after one page
        sync(RunLimits(max_pages=1))
        sim.faults.inject(uid, route, fault, count=1)
    elif fault == "window_gap":  # the stored high-water event ages out of the 30-day window before the next run
        sync()
        sim.world.advance(uid, 3, seconds=timedelta(days=45).total_seconds())
        with engine.begin() as conn:  # the same 45 days pass for the warehouse: its last pass is that old
            conn.execute(text("UPDATE dm_private.sync_state SET covered_at = covered_at - interval '45 days' "
                              "WHERE account_key = :k"), {"k": account.key})
    elif fault == "401_oauth_refresh":
        access, refresh = sim.oauth.issue(uid)
        from cryptography.fernet import Fernet

        env.update(FM_ACCESS=access, FM_REFRESH=refresh, FM_CLIENT="fm-client",
                   DM_PIPELINE_TOKEN_KEY=Fernet.generate_key().decode())
        account = replace(account, token_env="FM_ACCESS",
                          oauth=OAuthConfig(client_id_env="FM_CLIENT", refresh_token_env="FM_REFRESH"))
        sim.oauth.expire(uid)
    else:
        kind = {"429_retry_after": "429", "429_no_headers": "429", "429_reset_beyond_budget": "429"}.get(fault, fault)
        sim.faults.inject(uid, route, kind, count=cell.count, **cell.params)

    stream = sync()
    truth = before.merged(Truth.snapshot(sim, uid, streams))
    with engine.connect() as conn:
        stored = {r["message_id"]: dict(r) for r in conn.execute(text(
            "SELECT * FROM dm_private.dm_history WHERE account_key = :k"), {"k": account.key}).mappings()}
        job = conn.execute(text("SELECT job_status, error_code, run_id FROM dm_audit.dm_sync_audit "
                                "WHERE row_kind = 'job' AND account_key = :k AND stream_key = :s "
                                "ORDER BY audit_id DESC LIMIT 1"), {"k": account.key, "s": stream_key}).one()
        # Every ID a page saw that its audit row names: those it wrote, and on a walk the rest (migration
        # 0009), newest first as the streams serve them.
        pages = conn.execute(text("SELECT ARRAY(SELECT i FROM unnest(coalesce(message_ids, '{}') || "
                                  "coalesce(unchanged_ids, '{}')) AS i ORDER BY length(i) DESC, i DESC) "
                                  "FROM dm_audit.dm_sync_audit WHERE run_id = :r "
                                  "AND stream_key = :s AND row_kind = 'page' ORDER BY audit_id"),
                             {"r": job.run_id, "s": stream_key}).scalars().all()
        inserted, audited = conn.execute(text(
            "SELECT coalesce(sum(events_inserted), 0), array(SELECT DISTINCT unnest(message_ids) FROM "
            "dm_audit.dm_sync_audit WHERE account_key = :k AND row_kind = 'page') FROM dm_audit.dm_sync_audit "
            "WHERE account_key = :k AND row_kind = 'page'"), {"k": account.key}).one()
    fault_page = list(pages[0]) if pages else []
    cmp = compare(cell.provider, stored, truth, uid, peer, fault_page, account, run_ids)
    audit_ok = inserted == len(stored) and set(stored) <= set(audited)
    problems = _problems(cmp, inserted, len(stored), audit_ok, truth.order.get(stream_key, []))
    if stream.status is StreamStatus.FAILED:
        detail = f"job row {job.job_status}/{job.error_code}, {len(stored)} rows stored"
        # A loop is detected after its page committed (kept by design); any other failure writes nothing.
        if fault != "cursor_loop" and pages:
            return Observed("failed:half_written", detail)
        if problems:
            return Observed("mismatch", f"{detail}; {problems}")
        return Observed(f"failed:{stream.error_code}" if job.error_code == stream.error_code else "failed:unaudited",
                        detail)
    if problems:
        return Observed("mismatch", problems)
    if stream.status is not StreamStatus.SUCCEEDED:
        return Observed(stream.status.value, f"{len(stored)} rows stored, all exact")
    if stream.gap_suspected:
        return Observed("gap", f"{len(stored)} stored, all exact")
    if cmp.missing:
        return Observed("mismatch", f"missing {len(cmp.missing)}, e.g. {cmp.missing[:3]}")
    kinds = set(cmp.bent_rows.values())
    exact = len(stored) - len(cmp.bent_rows)
    if kinds == {"nul_text"}:
        return Observed("ok_flagged", f"{len(cmp.bent_rows)} rows of the bent page sanitized and flagged, "
                                      f"{exact} exact")
    if kinds == {"missing_optional"}:
        return Observed("ok_partial", f"{len(cmp.bent_rows)} rows of the bent page with NULL "
                                      f"{', '.join(sorted(cmp.nulled))}; {exact} exact")
    if kinds:
        return Observed("mismatch", f"rows of both bent models: {sorted(kinds)}")
    return Observed("ok", f"{len(stored)} rows, every column exact, {len(waits)} waits")


def _problems(cmp: Comparison, inserted: int, stored: int, audit_ok: bool, stream_order: list[str]) -> str:
    """Why the stored rows or the audit disagree with the truth ("" when they agree)."""
    out = []
    if cmp.extra:
        out.append(f"{len(cmp.extra)} rows never served, e.g. {cmp.extra[:3]}")
    if cmp.wrong:
        mid, cols = next(iter(cmp.wrong.items()))
        out.append(f"{len(cmp.wrong)} rows differ from the truth, e.g. {mid}: {cols}")
    if cmp.bookkeeping:
        out.append(f"bookkeeping: {cmp.bookkeeping[:2]}")
    if not audit_ok:
        out.append(f"audit: page rows inserted {inserted} for {stored} stored rows (or a stored ID on no page row)")
    if cmp.bent_rows and cmp.fault_page != stream_order[:len(cmp.fault_page)]:
        out.append("the bent page is not the first page of a clean walk of the stream")
    return "; ".join(out)
