"""Cursors and page-bending faults shared by the three providers.

Cursors are `base32(direction + snowflake + MAC(account, stream, direction, snowflake))`: "events older
(or newer) than this ID". They name a position, not an offset, so new events never shift later pages and
a deleted boundary event still works; the MAC ties a cursor to one account and one stream (route plus
conversation or tab), so it is useless anywhere else. The key derives from the world's seed, so a
restarted simulator still accepts old cursors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable
from typing import Any

from dm_pipeline.simulator.faults import Fault
from dm_pipeline.simulator.world import SimEvent


class CursorCodec:
    _MAX = (1 << 63) - 1     # "older than everything": the first page, as a cursor

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, user_id: str, stream: str, raw: bytes) -> bytes:
        return hmac.new(self._secret, f"{user_id}:{stream}:".encode() + raw, hashlib.sha256).digest()[:6]

    def encode(self, user_id: str, stream: str, direction: str, num: int) -> str:
        raw = direction.encode() + struct.pack(">Q", num)
        return base64.b32encode(raw + self._mac(user_id, stream, raw)).decode().rstrip("=")

    def start(self, user_id: str, stream: str) -> str:
        return self.encode(user_id, stream, "n", self._MAX)

    def decode(self, user_id: str, stream: str, token: str) -> tuple[str, int] | None:
        """(direction, snowflake), or None if the token was not issued for this account and stream."""
        try:
            blob = base64.b32decode(token + "=" * (-len(token) % 8))
        except ValueError:
            return None
        if len(blob) != 15 or blob[:1] not in (b"n", b"p"):
            return None
        raw, mac = blob[:9], blob[9:]
        if not hmac.compare_digest(mac, self._mac(user_id, stream, raw)):
            return None
        return raw[:1].decode(), struct.unpack(">Q", raw[1:])[0]


def bend(fault: Fault | None, events: list[SimEvent], more_older: bool, sent: str,
         older_than: Callable[[int], str]) -> tuple[list[SimEvent], str | None]:
    """The events to serve and the next cursor, after a mutate-phase fault. `sent` is the cursor of this
    request (the start cursor on a first page); `older_than(num)` encodes "events older than num"."""
    kind = fault.kind if fault is not None else None
    if kind == "empty_page":
        return [], sent
    if kind == "cursor_loop":
        return events, sent
    if kind == "duplicates" and fault is not None and len(events) > 1:
        back = min(max(1, int(fault.params.get("overlap", 2))), len(events) - 1)
        return events, older_than(events[-1 - back].num)
    return events, (older_than(events[-1].num) if more_older and events else None)


def poison(text: str) -> str:
    """A NUL in the middle and a lone high surrogate at the end (sent as `\\u0000` / `\\ud800`)."""
    mid = len(text) // 2
    return f"{text[:mid]}\x00{text[mid:]}\ud800"


def bend_items(fault: Fault | None, items: Iterable[dict[str, Any]], text_key: str,
               optional: tuple[str, ...]) -> None:
    """`nul_text` and `missing_optional` on rendered copies (the world is never touched)."""
    if fault is None or fault.kind not in ("nul_text", "missing_optional"):
        return
    for item in items:
        if fault.kind == "nul_text":
            if isinstance(item.get(text_key), str):
                item[text_key] = poison(item[text_key])
        else:
            for key in optional:
                item.pop(key, None)
