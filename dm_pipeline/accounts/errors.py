"""Messages for the accounts file: every problem names the file, the line and column, the key and the fix.

Locations come from the YAML node tree (`_where`); pydantic errors become sentences through the FIELDS and
ITEMS tables (`_describe`); YAML syntax errors get a hint (`_yaml_error`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dm_pipeline.accounts.schema import EXAMPLE, AccountEntry, AccountsFile, ConversationsEntry, OAuthEntry
from dm_pipeline.errors import ConfigError


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


_URL = "an http:// or https:// URL"


def _url_fix(default: str) -> tuple[str, str]:
    """An optional URL key: what it must be, and the `default` used without it."""
    return _URL, f"leave it out to use {default}"


# list field -> (what the list must be, what one item must be, how to fix either): a wrong item and a wrong list
# get the same fix
_LISTS: dict[str, tuple[str, str, str]] = {
    "partners": ("a list of X usernames (letters, digits, '_', at most 15; '@' optional) or numeric user IDs",
                 "an X username (letters, digits, '_', at most 15; with or without '@') or a numeric user ID",
                 "e.g. `partners: [some_user, \"1234567890\"]`"),
    "ids": ("a list of X DM conversation IDs: '<smaller user ID>-<larger user ID>' for a one-to-one "
            "conversation, or 15-19 digits for a group",
            "an X DM conversation ID: '<smaller user ID>-<larger user ID>' for a one-to-one conversation, or "
            "15-19 digits for a group", "e.g. `ids: [\"1234567890-9876543210\"]`"),
    "participants": ("a list of numeric X user IDs (quoted)", "a numeric X user ID (quoted)",
                     "e.g. `participants: [\"1234567890\"]`"),
    "tabs": ("a non-empty list of GetXAPI inbox tabs: all, requests, hidden",
             "a GetXAPI inbox tab: all, requests or hidden", "e.g. `tabs: [all, requests]`"),
    "accounts": ("a list of account entries, each starting with `- key: …`", "an account entry", f"see {EXAMPLE}"),
}

# field name -> (what the value must be, how to fix it)
FIELDS: dict[str, tuple[str, str]] = {
    "key": ("a partition key: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, "
            "at most 64 characters", "e.g. `key: support-inbox`"),
    "provider": ("one of x, xquik, getxapi (x is the official X API v2)", "e.g. `provider: x`"),
    "user_id": ("the connected account's numeric X user ID (1-19 digits), quoted",
                "look it up (X: `GET /2/users/by/username/:username`) and write e.g. `user_id: \"1234567890\"`"),
    "base_url": (f"{_URL} with a host",
                 "e.g. https://api.x.com (X), https://xquik.com/api/v1 (Xquik), https://api.getxapi.com (GetXAPI)"),
    **{f: _env_fix(f) for f in _ENV_EXAMPLES},
    "page_size": ("a whole number of events per page from 1 to 100", "e.g. `page_size: 100` (the default)"),
    "poll_backoff_after": ("a whole number of empty polls, at least 1, before a billed stream's poll interval grows",
                           "e.g. `poll_backoff_after: 2` (the default)"),
    "handle": ("the connected account's X handle without '@' (letters, digits, '_', at most 15)",
               "e.g. `handle: support_team`"),
    **{f: (whole, fix) for f, (whole, _, fix) in _LISTS.items()},
    "discover": ("true or false", "e.g. `discover: true`"),
    "token_url": _url_fix("<base_url>/2/oauth2/token"),
    "authorize_url": _url_fix("https://x.com/i/oauth2/authorize"),
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
}
# one item of a list field
ITEMS: dict[str, tuple[str, str]] = {f: (item, fix) for f, (_, item, fix) in _LISTS.items()}
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


# ---------------------------------------------------------------- YAML syntax errors

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
