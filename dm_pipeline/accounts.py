"""The accounts file: which X accounts to sync, through which provider, with which credentials.

Validated by a pydantic schema; every error names the file, the line and column, the key and the fix
(`config/accounts.example.yaml` documents every option). String values may use `${VAR}` or
`${VAR:-default}` (defaults may nest: `${A:-${B:-x}}`) so one file serves the simulator and production.
Secrets never appear in the file: it names the environment variables that hold them, and
`required_env` lists those an account needs, so commands can check them before anything runs.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account, OAuthConfig, Provider

USER_ID = r"^[0-9]{1,19}$"
CONVERSATION_ID = r"^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
HANDLE = r"^[A-Za-z0-9_]{1,15}$"
PARTNER = r"^([0-9]{1,19}|@?[A-Za-z0-9_]{1,15})$"
KEY = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DEFAULT_SWEEP_INTERVAL_S = 7 * 86400  # X conversation streams are swept weekly; billed providers only if asked
Tab = Literal["all", "requests", "hidden"]
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
    tabs: list[Tab] = Field(default=["all", "requests", "hidden"], min_length=1)
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
        seconds = _seconds(v)
        if not 0 <= seconds <= MAX_POLL_INTERVAL_S:
            raise ValueError(f"`max_poll_interval` {str(v)[:60]!r} is not a duration from 0 to 7 days: whole "
                             "seconds, or a number with s, m, h or d (0 disables the backoff). Fix: e.g. "
                             "`max_poll_interval: 30m` (the default is 1h)")
        return seconds

    @field_validator("sweep_interval", mode="before")
    @classmethod
    def _sweep_interval(cls, v: Any) -> Any:
        if v is None:
            return None
        seconds = _seconds(v)
        if not (seconds == 0 or 3600 <= seconds <= 365 * 86400):
            raise ValueError(f"`sweep_interval` {str(v)[:60]!r} is not 0 (no sweeps) or a duration from 1 hour to "
                             "365 days: whole seconds, or a number with s, m, h or d. Fix: e.g. `sweep_interval: "
                             "7d` (the default for x), or 0")
        return seconds

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


class AccountsFileError(ConfigError):
    """One or more problems in the accounts file; the message is the first, `problems` holds them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = (f" ({len(problems) - 1} more problem{'s' if len(problems) > 2 else ''}: "
                "`dm-pipeline accounts validate` lists them all)") if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


# ---------------------------------------------------------------- locations in the YAML

Loc = tuple[int | str, ...]


def _node_at(root: yaml.Node | None, loc: Loc) -> yaml.Node | None:
    """The deepest YAML node along pydantic's error location (best effort)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        else:
            child = None
        if child is None:
            break
        node = child
    return node


def _where(path: Path, root: yaml.Node | None, loc: Loc) -> str:
    node = _node_at(root, loc)
    if node is None:
        return f"{path}:"
    return f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}:"


def _loc_text(loc: Loc) -> str:
    text = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    return text or "<top level>"


def _entry_key(data: Any, loc: Loc) -> str | None:
    """The `key:` of the account entry an error location points into, for context."""
    if len(loc) >= 2 and loc[0] == "accounts" and isinstance(loc[1], int) and isinstance(data, dict):
        entries = data.get("accounts")
        if isinstance(entries, list) and loc[1] < len(entries) and isinstance(entries[loc[1]], dict):
            key = entries[loc[1]].get("key")
            return str(key) if isinstance(key, str) else None
    return None


# ---------------------------------------------------------------- human messages for pydantic errors

_ENV_MUST = ("the NAME of an environment variable (upper-case letters, digits and '_'), never the secret itself "
             "(the value is not shown here)")
_ENV_EXAMPLES = {"token_env": "X_TOKEN_SUPPORT", "auth_token_env": "GETXAPI_AUTH_SUPPORT",
                 "ct0_env": "GETXAPI_CT0_SUPPORT", "twid_env": "GETXAPI_TWID_SUPPORT", "client_id_env": "X_CLIENT_ID",
                 "refresh_token_env": "X_REFRESH_TOKEN_SUPPORT", "client_secret_env": "X_CLIENT_SECRET"}


def _env_fix(field: str) -> tuple[str, str]:
    name = _ENV_EXAMPLES[field]
    return _ENV_MUST, f"write e.g. `{field}: {name}` and `export {name}=…`"


# field name -> (what the value must be, how to fix it)
FIELDS: dict[str, tuple[str, str]] = {
    "key": ("a partition key: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, "
            "at most 64 characters", "e.g. `key: support-inbox`"),
    "provider": ("one of x, xquik, getxapi (x is the official X API v2)", "e.g. `provider: x`"),
    "user_id": ("the connected account's numeric X user ID (1-19 digits), quoted",
                "look it up (X: `GET /2/users/by/username/:username`) and write e.g. `user_id: \"1234567890\"`"),
    "base_url": ("an http:// or https:// URL with a host",
                 "e.g. https://api.x.com (X), https://xquik.com/api/v1 (Xquik), https://api.getxapi.com (GetXAPI)"),
    **{f: _env_fix(f) for f in _ENV_EXAMPLES},
    "page_size": ("a whole number of events per page from 1 to 100", "e.g. `page_size: 100` (the default)"),
    "poll_backoff_after": ("a whole number of empty polls, at least 1, before a billed stream's poll interval grows",
                           "e.g. `poll_backoff_after: 2` (the default)"),
    "handle": ("the connected account's X handle without '@' (letters, digits, '_', at most 15)",
               "e.g. `handle: support_team`"),
    "partners": ("a list of X usernames (letters, digits, '_', at most 15; '@' optional) or numeric user IDs",
                 "e.g. `partners: [some_user, \"1234567890\"]`"),
    "ids": ("a list of X DM conversation IDs: '<smaller user ID>-<larger user ID>' for a one-to-one "
            "conversation, or 15-19 digits for a group", "e.g. `ids: [\"1234567890-9876543210\"]`"),
    "participants": ("a list of numeric X user IDs (quoted)", "e.g. `participants: [\"1234567890\"]`"),
    "discover": ("true or false", "e.g. `discover: true`"),
    "tabs": ("a non-empty list of GetXAPI inbox tabs: all, requests, hidden", "e.g. `tabs: [all, requests]`"),
    "token_url": ("an http:// or https:// URL", "leave it out to use <base_url>/2/oauth2/token"),
    "authorize_url": ("an http:// or https:// URL", "leave it out to use https://x.com/i/oauth2/authorize"),
    "redirect_uri": ("the callback URL registered on the X app, e.g. http://127.0.0.1:8976/callback",
                     "leave it out to use http://127.0.0.1:8976/callback (register that on the X app)"),
    "on_upstream_delete": ("keep, mark or erase: what a sweep does with messages the provider no longer returns",
                           "e.g. `on_upstream_delete: mark` (the default: kept, hidden from analysts)"),
    "allow_insecure_http": ("true or false (default false: credentials go over plain http:// only to a loopback "
                            "host)", "write `allow_insecure_http: true` only if you mean to send this account's "
                            "credentials unencrypted, or remove it"),
    "conversations": ("a mapping with `discover`, `ids` and/or `participants`",
                      "e.g. `conversations: {discover: true}`"),
    "oauth": ("a mapping with `client_id_env` and optionally `refresh_token_env`, `client_secret_env`, `token_url`, "
              "`authorize_url`, `redirect_uri`",
              f"see the X entries of {EXAMPLE}"),
    "accounts": ("a list of account entries, each starting with `- key: …`", f"see {EXAMPLE}"),
}
# one item of a list field
ITEMS: dict[str, tuple[str, str]] = {
    "partners": ("an X username (letters, digits, '_', at most 15; with or without '@') or a numeric user ID",
                 "e.g. `partners: [some_user, \"123\"]`"),
    "ids": ("an X DM conversation ID: '<smaller user ID>-<larger user ID>' for a one-to-one conversation, or "
            "15-19 digits for a group", "e.g. `ids: [\"1234567890-9876543210\"]`"),
    "participants": ("a numeric X user ID (quoted)", "e.g. `participants: [\"1234567890\"]`"),
    "tabs": ("a GetXAPI inbox tab: all, requests or hidden", "e.g. `tabs: [all, requests]`"),
    "accounts": ("an account entry", f"see {EXAMPLE}"),
}
_SECRET_FIELDS = {"token_env", "auth_token_env", "ct0_env", "twid_env", "client_id_env", "refresh_token_env",
                  "client_secret_env"}
_SAFE_TO_ECHO = {"user_id", "provider", "key", "handle", "page_size", "tabs", "partners", "ids", "participants",
                 "poll_backoff_after", "allow_insecure_http", "on_upstream_delete"}


def _field(loc: Loc) -> str | None:
    """The innermost named field of a location (list indexes skipped)."""
    return next((str(p) for p in reversed(loc) if isinstance(p, str)), None)


def _shown(err: dict[str, Any], field: str | None) -> str:
    """The offending value, quoted, when it is safe to show (never for variables that name secrets)."""
    value = err.get("input")
    if field in _SECRET_FIELDS or field not in _SAFE_TO_ECHO or isinstance(value, (dict, list)) or value is None:
        return ""
    text = repr(value) if isinstance(value, str) else str(value)
    return f" {text[:60]}"


def _describe(err: dict[str, Any]) -> str:
    """A pydantic error as '<key>: <what is wrong>. Fix: <how>'. Every error type gets a message."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    field = _field(loc)
    table = ITEMS if loc and isinstance(loc[-1], int) and field in ITEMS else FIELDS
    must, fix = table.get(field or "", ("valid", f"see {EXAMPLE} for this key"))
    shown = _shown(err, field) or (" the value" if field in _SECRET_FIELDS else "")
    where = _loc_text(loc)
    if kind == "missing":
        return f"{where}: required key `{field}` is missing; it must be {must}. Fix: {fix}"
    if kind == "extra_forbidden":
        import difflib

        known = {*AccountsFile.model_fields, *AccountEntry.model_fields, *OAuthEntry.model_fields,
                 *ConversationsEntry.model_fields}
        close = difflib.get_close_matches(field or "", sorted(known), n=1, cutoff=0.7)
        guess = f"did you mean `{close[0]}`? " if close else ""
        return (f"{where}: unknown key `{field}`. Fix: {guess}Remove it or check its spelling; the keys of each "
                f"provider are documented in {EXAMPLE}")
    if kind == "enum" or kind == "literal_error":
        return f"{where}: {shown.strip() or 'the value'} is not supported; it must be {must}. Fix: {fix}"
    if kind == "value_error":
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        return f"{where}: {message}"
    if kind == "string_type" and isinstance(err.get("input"), int) and field in {"user_id", "ids", "participants",
                                                                                 "partners"}:
        return (f"{where}:{shown} is a number, not a string: YAML reads unquoted digits as a number, and IDs are "
                f"strings here (X IDs can exceed what some tools hold exactly). Fix: quote it: \"{err['input']}\"")
    if kind in {"model_type", "dict_type", "model_attributes_type"}:
        if field == "accounts":  # an entry of the list is not a mapping
            return f"{where}: each account entry must be a mapping of keys (`key:`, `provider:`, …). Fix: {fix}"
        return f"{where}: must be {must}. Fix: {fix}"
    if kind in {"too_short"} and field == "tabs":
        return f"{where}: must be {must}. Fix: list at least one tab, or leave `tabs` out for all three"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than", "int_parsing", "int_type",
                "int_from_float", "bool_parsing", "bool_type", "list_type", "string_type", "string_pattern_mismatch",
                "string_too_short", "string_too_long", "too_short", "too_long", "url_parsing", "url_scheme"}:
        return f"{where}:{shown} is not {must}. Fix: {fix}"
    return f"{where}: {err.get('msg', 'invalid value')} (must be {must}). Fix: {fix}"


# ---------------------------------------------------------------- environment interpolation

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^${}]*))?\}")  # innermost references first


def _interpolate(value: Any, loc: Loc, source: Path, root: yaml.Node | None) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), source, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), source, root) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise ConfigError(f"{_where(source, root, loc)} {_loc_text(loc)} uses ${{{name}}}, which is not set. "
                          f"Fix: export {name}=… or write ${{{name}:-default}} in the file")

    for _ in range(8):  # nested defaults resolve from the inside out
        new = _ENV_REF.sub(sub, value)
        if new == value:
            break
        value = new
    return value


def _duplicate_keys(node: yaml.Node | None, path: Path) -> str | None:
    """YAML silently keeps the last of two equal keys in one mapping; we refuse them."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = getattr(k, "value", None)
            if isinstance(key, str) and key in seen:
                return (f"{path}:{k.start_mark.line + 1}:{k.start_mark.column + 1}: key `{key}` appears twice in "
                        "the same entry. Fix: keep one of them")
            if isinstance(key, str):
                seen.add(key)
            found = _duplicate_keys(v, path)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_keys(item, path)
            if found:
                return found
    return None


def _duplicate_accounts(data: dict[str, Any], root: yaml.Node | None, path: Path) -> str | None:
    entries = data.get("accounts")
    if not isinstance(entries, list):
        return None
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str):
            continue
        if key in first:
            return (f"{_where(path, root, ('accounts', i, 'key'))} account key {key!r} appears twice (also "
                    f"accounts[{first[key]}]); keys must be unique, each is a Dagster partition. Fix: rename one")
        first[key] = i
    return None


_YAML_HINTS = {
    "found character '\\t'": "YAML indents with spaces, never tabs",
    "mapping values are not allowed": "quote a value that contains ': ', or fix the indentation of this line",
    "could not find expected ':'": "every key needs a ':' after it; check the indentation of this line",
    "expected <block end>": "this line's indentation does not match the lines around it",
    "found undefined alias": "`*name` refers to an anchor `&name` that is not defined",
    "did not find expected key": "this line's indentation does not match the lines around it",
    "flow sequence": "a `[` list is not closed with `]`",
    "flow mapping": "a `{` mapping is not closed with `}`",
    "found unexpected end of stream": "a quote or bracket is not closed",
}


def _yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}:" if mark else f"{path}:"
    problem = getattr(exc, "problem", None) or "invalid YAML"
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else problem
    hint = next((h for k, h in _YAML_HINTS.items() if k in text), "correct the YAML syntax there")
    return ConfigError(f"{where} invalid YAML: {text}. Fix: {hint}")


# ---------------------------------------------------------------- loading

def _parse(path: Path) -> tuple[Any, yaml.Node | None]:
    if not path.exists():
        raise ConfigError(f"accounts file {path} does not exist. Fix: set DM_PIPELINE_ACCOUNTS to your file, "
                          f"or copy {EXAMPLE} and edit it")
    if path.is_dir():
        raise ConfigError(f"accounts file {path} is a directory. Fix: point DM_PIPELINE_ACCOUNTS at a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Fix: save the accounts file as UTF-8") from None
    if _FAST_LOADER is not yaml.SafeLoader:
        try:
            return _compose_and_load(text, _FAST_LOADER)
        except yaml.YAMLError:
            pass  # parse again below: the pure-Python loader words its errors the way _YAML_HINTS expects
    try:
        return _compose_and_load(text, yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None


# libyaml when PyYAML was built with it: a 1,000-account file parses ~10x faster (every run reads it).
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose_and_load(text: str, loader_class: type[yaml.SafeLoader]) -> tuple[Any, yaml.Node | None]:
    """One parse: the node tree (line numbers, duplicate keys) and the data constructed from it."""
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    finally:
        loader.dispose()


def load_accounts(path: Path) -> list[Account]:
    """Parse and validate the accounts file. Raises ConfigError (AccountsFileError for schema problems)
    naming the file, the line and column, the key and the fix."""
    data, root = _parse(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a mapping with an `accounts:` list (it is "
                          f"{'empty' if data is None else type(data).__name__}). Fix: start from {EXAMPLE}")
    duplicate = _duplicate_keys(root, path) or _duplicate_accounts(data, root, path)
    if duplicate:
        raise ConfigError(duplicate)
    try:
        parsed = AccountsFile.model_validate(_interpolate(data, (), path, root))
    except ValidationError as exc:
        problems = []
        # a misspelt key also makes the real one "missing": report the misspelling first
        for err in sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden"):
            loc = tuple(err["loc"])
            key = _entry_key(data, loc)
            context = f" (account {key!r})" if key and loc[-1] != "key" else ""
            problems.append(f"{_where(path, root, loc)} {_describe(dict(err))}{context}")
        raise AccountsFileError(problems) from None
    accounts = [entry.to_account() for entry in parsed.accounts]
    unsafe = [f"{_where(path, root, ('accounts', i, *field.split('.')))} {problem}"
              for i, account in enumerate(accounts) for field, problem in transport_problems(account)]
    if unsafe:
        raise AccountsFileError(unsafe)
    return accounts


def select_accounts(accounts: list[Account], keys: Iterable[str], source: Path) -> list[Account]:
    """The accounts of `keys` (all when empty), in file order. An unknown key is a ConfigError listing
    the known ones."""
    wanted = list(dict.fromkeys(keys))
    if not accounts:
        raise ConfigError(f"{source} lists no accounts. Fix: add one (see {EXAMPLE})")
    known = [a.key for a in accounts]
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise ConfigError(f"unknown account key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(not in {source}). Known keys: {', '.join(known)}")
    return [a for a in accounts if not wanted or a.key in wanted]


# ---------------------------------------------------------------- transport: where credentials may go

LOOPBACK = "a loopback address (127.0.0.0/8, ::1 or localhost)"


@dataclass(frozen=True)
class Endpoint:
    """Where a URL's requests go: its scheme, its host (lower-case, IPv6 without brackets) and its port
    (the scheme's default when the URL gives none)."""

    scheme: str
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and `localhost`: hosts a request never leaves the machine
    for. Names that merely start like one (127.0.0.1.evil.com, localhost.evil.com) are not."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@functools.lru_cache(maxsize=1024)
def endpoint(url: str) -> Endpoint:
    """The endpoint of `url` as the HTTP client (httpx) will connect to it. ValueError, with the reason,
    when it has no http(s) scheme and host, its port is not 1-65535, or urllib and httpx read a different
    host or port from it (a URL built to look like one host and go to another)."""
    import httpx

    try:
        parts = urlsplit(url)
        split_host, split_port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        raise ValueError("its port is not a number from 1 to 65535") from None
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"the HTTP client cannot read it ({str(exc).split(':')[0]})") from None
    scheme, host = parsed.scheme, parsed.host.lower()
    if scheme not in ("http", "https") or not host:
        raise ValueError("it is not an http:// or https:// URL with a host")
    default = 443 if scheme == "https" else 80
    port = default if parsed.port is None else parsed.port
    if not 1 <= port <= 65535:
        raise ValueError("its port is not a number from 1 to 65535")
    if split_host != host or (default if split_port is None else split_port) != port:
        raise ValueError("its host and port are ambiguous (write it as scheme://host:port/path)")
    return Endpoint(scheme, host, port)


def is_simulator_url(url: str, port: int) -> bool:
    """`url` is the address `run`/`sync` serve the simulator on: http, host 127.0.0.1, this port, compared
    parsed (so http://127.0.0.1:87650 or http://127.0.0.1:8765.evil.com are not). Not `localhost`: it may
    resolve to ::1 first, where the simulator does not listen and another process might."""
    try:
        ep = endpoint(url)
    except ValueError:
        return False
    return ep.scheme == "http" and ep.host == "127.0.0.1" and ep.port == port


def transport_problems(account: Account) -> list[tuple[str, str]]:
    """(field, message) for each URL of `account` that would carry its credentials in clear to a host that
    is not a loopback address (unless the entry sets `allow_insecure_http: true`), or cannot be read."""
    urls = [("base_url", account.base_url)]
    if account.oauth is not None:
        urls += [(f"oauth.{name}", url) for name, url in (("token_url", account.oauth.token_url),
                                                          ("authorize_url", account.oauth.authorize_url),
                                                          ("redirect_uri", account.oauth.redirect_uri)) if url]
    problems: list[tuple[str, str]] = []
    for field, url in urls:
        try:
            ep = endpoint(url)
        except ValueError as exc:
            problems.append((field, f"account {account.key!r}: `{field}` is not a usable URL: {exc}. Fix: write "
                                    "e.g. https://api.x.com or http://127.0.0.1:8765"))
            continue
        if ep.scheme == "http" and not ep.loopback and not account.allow_insecure_http:
            problems.append((field, (
                f"account {account.key!r}: `{field}` sends its credentials over plain http:// to host {ep.host} "
                f"(port {ep.port}), which is not {LOOPBACK}: anyone on the way could read them. Fix: use "
                "https:// instead of http://, or, if you really mean it, set `allow_insecure_http: true` in the "
                "account's entry")))
    return problems


def check_transport(account: Account) -> None:
    """ConfigError unless every URL `account` sends credentials to is https, loopback, or explicitly allowed."""
    problems = transport_problems(account)
    if problems:
        raise ConfigError(problems[0][1])


# ---------------------------------------------------------------- required environment variables

@dataclass(frozen=True)
class EnvNeed:
    """An environment variable an account needs at run time. `alternatives`: any one of them will do."""

    account_key: str
    field: str                 # where the file names it, e.g. "token_env" or "oauth.client_id_env"
    name: str                  # the variable
    what: str                  # what it holds, for the message
    alternatives: tuple[tuple[str, str], ...] = ()   # (field, name) pairs that satisfy the need as well


def required_env(account: Account, *, oauth_tokens_stored: bool = False) -> list[EnvNeed]:
    """The environment variables `account` needs before a sync can start (names only, never values).

    X with OAuth refresh: the client ID, the client secret if one is named, the token-encryption key, and,
    until the first tokens are stored encrypted in Postgres, the access or the refresh token."""
    k = account.key
    needs: list[EnvNeed] = []
    if account.provider is Provider.X:
        if account.oauth is None:
            if account.token_env:
                needs.append(EnvNeed(k, "token_env", account.token_env, "the X OAuth 2.0 user access token"))
        else:
            o = account.oauth
            needs.append(EnvNeed(k, "oauth.client_id_env", o.client_id_env, "the X app's OAuth 2.0 client ID"))
            if o.client_secret_env:
                needs.append(EnvNeed(k, "oauth.client_secret_env", o.client_secret_env,
                                     "the X app's OAuth 2.0 client secret (confidential client)"))
            needs.append(EnvNeed(k, "oauth", TOKEN_KEY_ENV, "the Fernet key that encrypts stored OAuth tokens"))
            if not oauth_tokens_stored:
                options = [(f, n) for f, n in (("token_env", account.token_env),
                                               ("oauth.refresh_token_env", o.refresh_token_env)) if n]
                if options:
                    (field, name), *rest = options
                    needs.append(EnvNeed(k, field, name, "the first OAuth 2.0 access token (or the refresh token; "
                                         "afterwards both live encrypted in Postgres)", tuple(rest)))
    elif account.provider is Provider.XQUIK:
        if account.token_env:
            needs.append(EnvNeed(k, "token_env", account.token_env, "the Xquik API key"))
    elif account.provider is Provider.GETXAPI:
        if account.token_env:
            needs.append(EnvNeed(k, "token_env", account.token_env, "the GetXAPI API key"))
        if account.auth_token_env:
            needs.append(EnvNeed(k, "auth_token_env", account.auth_token_env, "the account's X auth_token cookie"))
        if account.ct0_env and account.twid_env:
            needs.append(EnvNeed(k, "ct0_env", account.ct0_env, "the account's X ct0 cookie (goes with twid)"))
            needs.append(EnvNeed(k, "twid_env", account.twid_env, "the account's X twid cookie, `u=<user ID>`"))
    return needs


def field_lines(path: Path) -> dict[tuple[str, str], str]:
    """(account key, dotted field) -> 'file:line:column:' of that field, for messages about values."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: dict[tuple[str, str], str] = {}
    entries = _node_at(root, ("accounts",))
    if not isinstance(entries, yaml.SequenceNode):
        return out
    for entry in entries.value:
        if not isinstance(entry, yaml.MappingNode):
            continue
        key = next((getattr(v, "value", None) for k, v in entry.value if getattr(k, "value", None) == "key"), None)
        if not isinstance(key, str):
            continue
        out[(key, "")] = f"{path}:{entry.start_mark.line + 1}:{entry.start_mark.column + 1}:"
        for k, v in entry.value:
            name = getattr(k, "value", None)
            out[(key, str(name))] = f"{path}:{v.start_mark.line + 1}:{v.start_mark.column + 1}:"
            if isinstance(v, yaml.MappingNode):
                for k2, v2 in v.value:
                    out[(key, f"{name}.{getattr(k2, 'value', '')}")] = \
                        f"{path}:{v2.start_mark.line + 1}:{v2.start_mark.column + 1}:"
    return out


Lookup = Callable[[str], str | None]


def missing_env(accounts: Iterable[Account], lookup: Lookup, *, stored_oauth: Iterable[str] = (),
                provided: Iterable[str] = ()) -> list[EnvNeed]:
    """The needs of `accounts` that no variable satisfies. `provided`: names that will be set before the
    sync starts (the simulator's credentials); `stored_oauth`: account keys with tokens in Postgres."""
    have = set(provided)
    stored = set(stored_oauth)

    def is_set(name: str) -> bool:
        return name in have or bool(lookup(name))

    missing: list[EnvNeed] = []
    for account in accounts:
        for need in required_env(account, oauth_tokens_stored=account.key in stored):
            if not is_set(need.name) and not any(is_set(n) for _, n in need.alternatives):
                missing.append(need)
    return missing


def describe_missing(missing: list[EnvNeed], source: Path, hint: Callable[[EnvNeed], str] | None = None) -> str:
    """One message for unset variables: the first in full (file:line, key, what, fix), the others by name."""
    lines = field_lines(source)
    first = missing[0]
    where = lines.get((first.account_key, first.field)) or lines.get((first.account_key, "")) or f"{source}:"
    alt = "".join(f" (or {n}, named by `{f}`)" for f, n in first.alternatives)
    named = (f"`{first.field}` of account {first.account_key!r}" if first.name != TOKEN_KEY_ENV
             else f"account {first.account_key!r} uses `oauth`, which needs {TOKEN_KEY_ENV}")
    fix = (f"export {first.name}=<value>" if first.name != TOKEN_KEY_ENV else
           f"export {TOKEN_KEY_ENV}=$(python -c 'from cryptography.fernet import Fernet; "
           "print(Fernet.generate_key().decode())') and keep it: the stored tokens need it")
    extra = hint(first) if hint else ""
    text = (f"{where} environment variable {first.name} is not set{alt}: {named}, {first.what}. "
            f"Fix: {fix}{extra}")
    others = list(dict.fromkeys(n.name for n in missing[1:] if n.name != first.name))
    if others:
        text += f"; also not set: {', '.join(others)}"
    return text
