"""The accounts file: which X accounts to sync, through which provider, with which credentials.

Validated by a pydantic schema; every error names the file, the line, the key and the fix.
String values may use `${VAR}` or `${VAR:-default}` so one file serves the simulator and production.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account, OAuthConfig, Provider

USER_ID = r"^[0-9]{1,19}$"
CONVERSATION_ID = r"^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
HANDLE = r"^[A-Za-z0-9_]{1,15}$"
PARTNER = r"^([0-9]{1,19}|@?[A-Za-z0-9_]{1,15})$"
Tab = Literal["all", "requests", "hidden"]


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
    token_url: str | None = Field(default=None, pattern=r"^https?://")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class AccountEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
                     description="partition key: lower-case letters, digits, '.', '_' or '-'")
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

    @model_validator(mode="after")
    def _provider_keys(self) -> AccountEntry:
        p = self.provider
        only = {"conversations": Provider.X, "oauth": Provider.X, "handle": Provider.XQUIK,
                "auth_token_env": Provider.GETXAPI, "ct0_env": Provider.GETXAPI, "twid_env": Provider.GETXAPI}
        for key, owner in only.items():
            if getattr(self, key) is not None and p is not owner:
                raise ValueError(f"`{key}` applies to provider {owner.value} only, not {p.value}")
        if self.partners and p is not Provider.XQUIK:
            raise ValueError(f"`partners` applies to provider xquik only, not {p.value}")
        if p is Provider.XQUIK and (not self.handle or not self.partners):
            raise ValueError("an xquik account needs `handle` (its X handle) and `partners` (usernames or IDs "
                             "of the people it talks to; one stream each)")
        if p is Provider.GETXAPI and not self.auth_token_env:
            raise ValueError("a getxapi account needs `auth_token_env`, the variable holding the user's auth_token")
        if (self.ct0_env is None) != (self.twid_env is None):
            raise ValueError("`ct0_env` and `twid_env` go together: set both or neither")
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
            tabs=tuple(dict.fromkeys(self.tabs)),
        )


class AccountsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountEntry]

    @model_validator(mode="after")
    def _unique_keys(self) -> AccountsFile:
        seen: set[str] = set()
        for entry in self.accounts:
            if entry.key in seen:
                raise ValueError(f"account key {entry.key!r} appears twice; keys must be unique")
            seen.add(entry.key)
        return self


def _interpolate(value: Any, path: str, source: Path) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}", source) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise ConfigError(f"{source}: {path.lstrip('.')} uses ${{{name}}}, which is not set. Fix: export {name}=… "
                          f"or write ${{{name}:-default}} in the file.")

    return _ENV_REF.sub(sub, value)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at pydantic's error location (best effort)."""
    line = node.start_mark.line + 1 if node else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is not None:
            line = node.start_mark.line + 1
    return line


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
    msg = err["msg"]
    if err["type"] == "string_pattern_mismatch" and err["loc"][-1] == "user_id":
        msg = f"user_id {err['input']!r} is not a numeric X user ID (1-19 digits). Fix: look the ID up " \
              "(e.g. `GET /2/users/by/username/:name`) and quote it as a string"
    elif err["type"] == "enum":
        msg = f"{msg}. Fix: use one of x, xquik, getxapi"
    elif err["type"] == "extra_forbidden":
        msg = "unknown key. Fix: remove it or check its spelling (see config/accounts.example.yaml)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return f"{loc or '<top>'}: {msg}"


def load_accounts(path: Path) -> list[Account]:
    """Parse and validate the accounts file. Raises ConfigError with file, line, key and fix."""
    if not path.exists():
        raise ConfigError(f"accounts file {path} does not exist. Fix: set DM_PIPELINE_ACCOUNTS to your file, "
                          "or copy config/accounts.example.yaml")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}. Fix: correct the YAML syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a mapping with an `accounts:` list")
    try:
        parsed = AccountsFile.model_validate(_interpolate(data, "", path))
    except ValidationError as exc:
        first = exc.errors()[0]
        line = _line_of(root, tuple(first["loc"]))
        where = f" line {line}" if line else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}:{where}: {_describe(dict(first))}{more}") from None
    return [entry.to_account() for entry in parsed.accounts]
