"""The accounts file's schema: one pydantic model per level (the file, an account entry, its `oauth` and
`conversations` blocks), the patterns and defaults of every key, and the conversion to `models.Account`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dm_pipeline.models import Account, OAuthConfig, Provider

USER_ID = r"^[0-9]{1,19}$"
CONVERSATION_ID = r"^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
HANDLE = r"^[A-Za-z0-9_]{1,15}$"
PARTNER = r"^([0-9]{1,19}|@?[A-Za-z0-9_]{1,15})$"
KEY = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DEFAULT_SWEEP_INTERVAL_S = 7 * 86400  # X conversation streams are swept weekly; billed providers only if asked
Tab = Literal["all", "requests", "hidden"]


def _all_tabs() -> list[Tab]:
    # a factory, not a list default: pydantic deep-copies a mutable default for every entry (~0.1 s at 10,000)
    return ["all", "requests", "hidden"]
EXAMPLE = "config/accounts.example.yaml"
TOKEN_KEY_ENV = "DM_PIPELINE_TOKEN_KEY"  # the Fernet key that encrypts stored OAuth tokens (see oauth.py)
OLD_KEYS_ENV = "DM_PIPELINE_TOKEN_KEYS_OLD"  # earlier keys that still decrypt them (`dm-pipeline oauth rotate-key`)
MAX_POLL_INTERVAL_S = 7 * 86400
_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(v: Any) -> int:
    """A duration (whole seconds, or a number with s, m, h or d) in seconds; -1 when it is not one."""
    m = _DURATION.match(str(v)) if isinstance(v, (int, str)) and not isinstance(v, bool) else None
    return int(m.group(1)) * _UNIT_S[m.group(2).lower()] if m else -1


_DURATION_FORMS = "whole seconds, or a number with s, m, h or d"  # what `_seconds` reads


def _duration_s(key: str, v: Any, allowed: Callable[[int], bool], must: str, fix: str, *,
                optional: bool = False) -> int | None:
    """A duration key's value in seconds (an `optional` key's None stays None: the default applies later);
    else a ValueError naming the key, what it `must` be and the fix."""
    if optional and v is None:
        return None
    seconds = _seconds(v)
    if not allowed(seconds):
        raise ValueError(f"`{key}` {str(v)[:60]!r} is not {must}. Fix: {fix}")
    return seconds


def _whole(value: Any) -> int | None:
    """An int (or a string of digits, as `${VAR}` yields); None for anything else (bools included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        return int(value)
    return None


class ConversationsEntry(BaseModel):
    """X only: which conversations get their own stream via /2/dm_conversations (full history)."""

    model_config = ConfigDict(extra="forbid")

    discover: bool = Field(default=False, description="add every conversation seen in /2/dm_events")
    ids: list[Annotated[str, Field(pattern=CONVERSATION_ID)]] = Field(default_factory=list)
    participants: list[Annotated[str, Field(pattern=USER_ID)]] = Field(default_factory=list)


class OAuthEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id_env: str = Field(pattern=ENV_NAME)
    refresh_token_env: str | None = Field(default=None, pattern=ENV_NAME)
    client_secret_env: str | None = Field(default=None, pattern=ENV_NAME)
    token_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    authorize_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    redirect_uri: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")


class AccountEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY, description="partition key: lower-case letters, digits, '.', '_' or '-'")
    provider: Provider
    user_id: str = Field(pattern=USER_ID, description="the numeric ID of the connected account")
    base_url: str = Field(pattern=r"^https?://[^\s/]+", description="the provider's base URL")
    token_env: str | None = Field(default=None, pattern=ENV_NAME,
                                  description="name of the environment variable holding the access token")
    page_size: int = Field(default=100, ge=1, le=100)
    conversations: ConversationsEntry | None = None
    oauth: OAuthEntry | None = None
    handle: str | None = Field(default=None, pattern=HANDLE, description="Xquik: the connected account's handle")
    partners: list[Annotated[str, Field(pattern=PARTNER)]] = Field(default_factory=list)
    auth_token_env: str | None = Field(default=None, pattern=ENV_NAME)
    ct0_env: str | None = Field(default=None, pattern=ENV_NAME)
    twid_env: str | None = Field(default=None, pattern=ENV_NAME)
    tabs: list[Tab] = Field(default_factory=_all_tabs, min_length=1)
    # cost, every provider: `budget` caps the cost per rolling 24 hours (X: requests, Xquik: credits, GetXAPI:
    # calls); the polling backoff only takes effect for the billed providers (xquik, getxapi)
    budget: int | None = Field(default=None, description="daily cost cap: N or {daily: N}, N >= 1")
    max_poll_interval: int = Field(default=3600, description="seconds (or 90s/30m/1h/2d), 0 to 7 days; 0 disables")
    poll_backoff_after: int = Field(default=2, ge=1, description="empty polls before the interval grows")
    # credentials over plain http:// go to loopback hosts only, unless the entry says it means it
    allow_insecure_http: bool = Field(default=False, description="send credentials over http:// to a remote host")
    # messages deleted upstream: what a sweep does with them, and how often full-history streams are swept
    on_upstream_delete: Literal["keep", "mark", "erase"] = Field(default="mark")
    sweep_interval: int | None = Field(default=None, description="seconds (or 12h/7d), 0 off; default: 7d "
                                       "for x, off for the billed providers")

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        if v is None:
            return None
        daily = v.get("daily") if isinstance(v, dict) and set(v) == {"daily"} else v
        n = None if isinstance(daily, (dict, list)) else _whole(daily)
        if n is None or n < 1:
            raise ValueError(f"`budget` {(repr(v) if isinstance(v, str) else str(v))[:60]} is not a daily cost "
                             "cap: a whole number >= 1 (X: requests, Xquik: credits, GetXAPI: calls per rolling "
                             "24 hours) or a mapping `{daily: N}`. Fix: e.g. `budget: 500` or `budget: {daily: 500}`, "
                             "or remove it for no cap")
        return n

    @field_validator("max_poll_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return _duration_s("max_poll_interval", v, lambda s: 0 <= s <= MAX_POLL_INTERVAL_S,
                           f"a duration from 0 to 7 days: {_DURATION_FORMS} (0 disables the backoff)",
                           "e.g. `max_poll_interval: 30m` (the default is 1h)")

    @field_validator("sweep_interval", mode="before")
    @classmethod
    def _sweep_interval(cls, v: Any) -> Any:
        return _duration_s("sweep_interval", v, lambda s: s == 0 or 3600 <= s <= 365 * 86400,
                           f"0 (no sweeps) or a duration from 1 hour to 365 days: {_DURATION_FORMS}",
                           "e.g. `sweep_interval: 7d` (the default for x), or 0", optional=True)

    @model_validator(mode="after")
    def _provider_keys(self) -> AccountEntry:
        p = self.provider
        only = {"conversations": Provider.X, "oauth": Provider.X, "handle": Provider.XQUIK,
                "auth_token_env": Provider.GETXAPI, "ct0_env": Provider.GETXAPI, "twid_env": Provider.GETXAPI}
        for key, owner in only.items():
            if getattr(self, key) is not None and p is not owner:
                raise ValueError(f"`{key}` applies to provider {owner.value} only, not {p.value}. "
                                 f"Fix: remove `{key}` from this entry")
        if "tabs" in self.model_fields_set and p is not Provider.GETXAPI:
            raise ValueError(f"`tabs` applies to provider getxapi only, not {p.value}. Fix: remove `tabs`")
        if self.partners and p is not Provider.XQUIK:
            raise ValueError(f"`partners` applies to provider xquik only, not {p.value}. Fix: remove `partners`")
        if p is Provider.XQUIK and (not self.handle or not self.partners):
            raise ValueError("an xquik account needs `handle` (the connected account's X handle, without @) and "
                             "`partners` (usernames or numeric IDs of the people it talks to; one stream each). "
                             "Fix: add both, e.g. `handle: support_team` and `partners: [some_user]`")
        if p is Provider.GETXAPI and not self.auth_token_env:
            raise ValueError("a getxapi account needs `auth_token_env`, the name of the variable holding the "
                             "account's X auth_token cookie. Fix: add e.g. `auth_token_env: GETXAPI_AUTH_SUPPORT`")
        if (self.ct0_env is None) != (self.twid_env is None):
            raise ValueError("`ct0_env` and `twid_env` go together (GetXAPI uses the cookies only as a pair). "
                             "Fix: set both or neither")
        if not self.token_env and self.oauth is None:  # X with `oauth`: `dm-pipeline accounts connect` stores them
            what = {Provider.X: "OAuth 2.0 user access token", Provider.XQUIK: "Xquik API key",
                    Provider.GETXAPI: "GetXAPI API key"}[p]
            extra = (" (or, for X, an `oauth` block: `dm-pipeline accounts connect KEY` then stores the tokens)"
                     if p is Provider.X else "")
            raise ValueError(f"`token_env` is missing: the name of the environment variable holding the "
                             f"{what}{extra}. Fix: add e.g. `token_env: {p.value.upper()}_TOKEN_SUPPORT`")
        return self

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    def to_account(self) -> Account:
        conv = self.conversations or ConversationsEntry()
        oauth = OAuthConfig(**self.oauth.model_dump()) if self.oauth else None
        return Account(
            key=self.key, provider=self.provider, user_id=self.user_id, base_url=self.base_url,
            token_env=self.token_env, page_size=self.page_size, conversation_ids=tuple(conv.ids),
            participant_ids=tuple(conv.participants), discover_conversations=conv.discover, oauth=oauth,
            handle=self.handle, partners=tuple(p.lstrip("@") for p in self.partners),
            auth_token_env=self.auth_token_env, ct0_env=self.ct0_env, twid_env=self.twid_env,
            tabs=tuple(dict.fromkeys(self.tabs)), daily_budget=self.budget,
            max_poll_interval_s=self.max_poll_interval, poll_backoff_after=self.poll_backoff_after,
            allow_insecure_http=self.allow_insecure_http, on_upstream_delete=self.on_upstream_delete,
            sweep_interval_s=self.sweep_interval if self.sweep_interval is not None else (
                DEFAULT_SWEEP_INTERVAL_S if self.provider is Provider.X else 0),
        )


class AccountsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountEntry]

    @model_validator(mode="after")
    def _unique_keys(self) -> AccountsFile:
        seen: set[str] = set()
        for entry in self.accounts:
            if entry.key in seen:
                raise ValueError(f"account key {entry.key!r} appears twice; keys must be unique (each is a "
                                 "Dagster partition). Fix: rename one of them")
            seen.add(entry.key)
        return self
