"""What every provider module offers the sync engine, and the pure helpers their normalizers share."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

import httpx
import orjson

from dm_pipeline.errors import InvalidIdentifier
from dm_pipeline.http.policy import Budget, RetryPolicy
from dm_pipeline.http.ratelimit import Governor
from dm_pipeline.models import Account, EventRow, Page, QuarantinedEvent, Stream, UserRow

# Postgres refuses NUL in text and jsonb; lone surrogates cannot be encoded to UTF-8 at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
USER_ID_RE = re.compile(r"^[0-9]{1,19}$")
ASCII_ID = re.compile(r"[0-9]{1,19}", re.ASCII)
MAX_CURSOR = 4096  # a real cursor is well under 200 characters; a longer one is not stored
# Canonical JSON for content hashes; datetimes and dataclasses go through `default=str`, as json.dumps does.
_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class ProviderClient(Protocol):
    account: Account
    governor: Governor  # the account's one rate-limit state, shared by its streams

    def streams(self) -> Iterable[Stream]:
        """The account's streams, each with its own cursor. Iterated lazily by the engine, so a stream may
        be derived from what earlier streams of the same run stored (X conversation discovery)."""
        ...

    def fetch_page(self, stream: Stream, cursor: str | None, budget: Budget) -> Page:
        """One page, newest first, normalized. Raises typed ProviderErrors."""
        ...


def validate_id(value: str, pattern: re.Pattern[str], what: str) -> str:
    """Path values are checked before a URL is built, so configuration can never reach another path."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidIdentifier(f"{what} must match {pattern.pattern}; got a value of length "
                                f"{len(value) if isinstance(value, str) else 'n/a'}")
    return value


class ClientBase:
    """The construction every provider client shares: the account, its `user_id` checked before anything
    else (it may reach a URL), the HTTP client, the retry policy and the account's rate-limit governor
    (a fresh one when none is given). The clients keep their own signatures and add their own fields."""

    def __init__(self, account: Account, http: httpx.Client, policy: RetryPolicy | None,
                 governor: Governor | None) -> None:
        validate_id(account.user_id, USER_ID_RE, "user_id")
        self.account = account
        self._http = http
        self._policy = policy or RetryPolicy()
        self.governor = governor or Governor()


def sanitize(value: Any) -> tuple[Any, bool]:
    """Replace characters Postgres cannot store, recursively. Returns (clean value, whether changed).

    Fast path (the hot path of every page): orjson refuses lone surrogates and writes NUL as the escape
    `\\u0000`, so one C-speed dump of a clean value proves there is nothing to replace, and the value is
    returned as is. Anything else (a NUL, a surrogate, a type orjson refuses, a literal backslash-u0000 in
    text) takes the recursive walk, which is exact."""
    if isinstance(value, dict | list):
        try:
            if b"\\u0000" not in orjson.dumps(value):
                return value, False
        except (orjson.JSONEncodeError, TypeError):
            pass
    return _sanitize(value)


def _sanitize(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            return _UNSTORABLE.sub(REPLACEMENT, value), True
        return value, False
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for k, v in value.items():
            ck, c1 = _sanitize(k)
            cv, c2 = _sanitize(v)
            out[ck] = cv
            changed = changed or c1 or c2
        return out, changed
    if isinstance(value, list):
        items = [_sanitize(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def unstorable_flags(value: Any) -> set[str]:
    """Which kinds of unstorable characters `value` holds (only asked when sanitize() changed something)."""
    blob = json.dumps(value, ensure_ascii=False, default=str)  # lone surrogates survive json.dumps
    flags = set()
    if "\x00" in blob or "\\u0000" in blob:
        flags.add("nul_replaced")
    if re.search("[\ud800-\udfff]", blob):
        flags.add("surrogate_replaced")
    return flags


def sanitize_event(event: dict[str, Any]) -> tuple[dict[str, Any], bool, set[str]]:
    """How every provider's normalizer starts: the event as stored (`sanitize`), whether that changed it, and
    the flags naming what it replaced, which the field readers below add to."""
    raw, dirty = sanitize(event)
    return raw, dirty, unstorable_flags(event) if dirty else set()


class BadEvent(Exception):
    """One event of a page cannot become a row; it is quarantined and the rest of the page goes on."""

    def __init__(self, error_code: str, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


LARGE_TEXT = 100_000  # characters; stored as is, flagged for analysts


def id_field(raw: dict[str, Any], name: str, flags: set[str], *, required: bool = False) -> str | None:
    """A numeric-string ID field. An integer is coerced (and flagged); anything else non-numeric is a
    bad event when the field is required, and dropped (flagged) when it is not."""
    value = raw.get(name)
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 19:
        return value  # the common case, first
    if value is None:
        if required:
            raise BadEvent("missing_required_field", f"`{name}` is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        if required:
            raise BadEvent("wrong_type", f"`{name}` is not a string")
        flags.add("coerced_types")
        return None
    if isinstance(value, int):
        flags.add("coerced_types")
        value = str(value)
    if not ASCII_ID.fullmatch(value):  # str.isdigit() accepts "²³" and "١٢٣٤", which int() or X never would
        if required:
            raise BadEvent("invalid_id", f"`{name}` is not a numeric ID")
        flags.add("coerced_types")
        return None
    return value


def text_field(raw: dict[str, Any], name: str, flags: set[str]) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadEvent("wrong_type", f"`{name}` is not a string")
    if len(value) > LARGE_TEXT:
        flags.add("large_text")
    return value


def time_field(raw: dict[str, Any], name: str, flags: set[str]) -> datetime | None:
    value = raw.get(name)
    if value is None:
        flags.add("missing_created_at")
        return None
    parsed = parse_timestamp(value)
    if parsed is None:
        flags.add("invalid_created_at")
    return parsed


def normalize_all(items: Any, normalize: Callable[[dict[str, Any]], EventRow]
                  ) -> tuple[list[EventRow], list[QuarantinedEvent]]:
    """Normalize a page's events one by one: a bad event is quarantined, never the page's good ones."""
    events: list[EventRow] = []
    quarantined: list[QuarantinedEvent] = []
    for item in items:
        if not isinstance(item, dict):
            raw, _ = sanitize({"value": item})
            quarantined.append(QuarantinedEvent(None, "not_an_object", "the event is not a JSON object", raw=raw,
                                                content_hash=content_hash(raw)))
            continue
        try:
            events.append(normalize(item))
        except BadEvent as exc:
            raw, _ = sanitize(item)
            pid = raw.get("id")
            quarantined.append(QuarantinedEvent(str(pid)[:64] if isinstance(pid, str | int) else None,
                                                exc.error_code, exc.reason, raw=raw, content_hash=content_hash(raw)))
        except RecursionError:
            # Nested deeper than Python (and Postgres) can walk: kept as a placeholder, never re-walked.
            pid = item.get("id")
            raw = {"id": pid[:64] if isinstance(pid, str) else None, "unstorable": "nested too deeply"}
            quarantined.append(QuarantinedEvent(raw["id"], "too_deep", "the event is nested too deeply", raw=raw,
                                                content_hash=content_hash(raw)))
    return events, quarantined


def decode_json(body: bytes) -> Any:
    """A response body's JSON: orjson (~2x the stdlib on pages of 100 events), else the stdlib, which also
    takes what orjson refuses (lone surrogate escapes, which sanitize() then replaces). Raises ValueError."""
    try:
        return orjson.loads(body)  # refuses nesting deeper than 1024 levels
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None


def content_hash(content: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `content`: sorted keys, compact, UTF-8. orjson writes exactly what
    `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)` writes for everything a provider
    sends except floats in exponent form, ~25x faster; what orjson refuses takes the stdlib path."""
    try:
        blob = orjson.dumps(content, default=str, option=_CANONICAL)
    except (orjson.JSONEncodeError, TypeError):
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                          default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def user_row(raw_user: dict[str, Any], username_key: str = "username") -> UserRow | None:
    user, _ = sanitize(raw_user)
    uid = user.get("id")
    if isinstance(uid, bool) or not isinstance(uid, str | int) or not ASCII_ID.fullmatch(str(uid)):
        return None
    return UserRow(user_id=str(uid), username=user.get(username_key), name=user.get("name"), raw=user,
                   content_hash=content_hash(user))


def parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def cursor_problem(cursor: str | None) -> str | None:
    """Why a provider's next cursor cannot be stored and sent back, or None. A cursor goes into sync_state
    and the audit and back into a URL: longer than MAX_CURSOR, or holding NUL or a lone surrogate
    (Postgres refuses both), it is a malformed response, not a checkpoint."""
    if cursor is None:
        return None
    if len(cursor) > MAX_CURSOR:
        return f"a next cursor of {len(cursor)} characters (more than {MAX_CURSOR})"
    if _UNSTORABLE.search(cursor):
        return "a next cursor holding NUL or a lone surrogate"
    return None


def as_list(value: Any) -> list[Any]:
    """A page's side collection (users, conversations, includes) as a list: a list as is, a map's values,
    anything else (a number, a string) as nothing. The page's messages do not depend on it."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return []
