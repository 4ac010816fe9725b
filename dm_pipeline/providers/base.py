"""What every provider module offers the sync engine, and the pure helpers their normalizers share."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from dm_pipeline.errors import InvalidIdentifier
from dm_pipeline.http.policy import Budget
from dm_pipeline.models import Account, Page, Stream, UserRow

# Postgres refuses NUL in text and jsonb; lone surrogates cannot be encoded to UTF-8 at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
USER_ID_RE = re.compile(r"^[0-9]{1,19}$")


class ProviderClient(Protocol):
    account: Account

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


def sanitize(value: Any) -> tuple[Any, bool]:
    """Replace characters Postgres cannot store, recursively. Returns (clean value, whether changed)."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            return _UNSTORABLE.sub(REPLACEMENT, value), True
        return value, False
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for k, v in value.items():
            ck, c1 = sanitize(k)
            cv, c2 = sanitize(v)
            out[ck] = cv
            changed = changed or c1 or c2
        return out, changed
    if isinstance(value, list):
        items = [sanitize(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def content_hash(content: dict[str, Any]) -> str:
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def user_row(raw_user: dict[str, Any], username_key: str = "username") -> UserRow | None:
    user, _ = sanitize(raw_user)
    uid = user.get("id")
    if not isinstance(uid, str | int) or not str(uid).isdigit():
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
