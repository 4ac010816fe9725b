"""The loopback end of `dm-pipeline accounts connect`: where X sends the browser back after consent.

A one-shot HTTP server on the address and port of `oauth.redirect_uri` (a loopback http:// URL) takes the
redirect, hands the callback to the flow (`oauth_connect`) and answers the browser with a short page saying
how it ended, once the flow has decided. With `--no-browser`, URLs pasted on standard input count as well.
The server logs nothing (request lines hold the code) and no page ever shows the code.
"""

from __future__ import annotations

import html
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from dm_pipeline.accounts import endpoint
from dm_pipeline.errors import printable

PAGE_WAIT_S = 60.0      # how long the browser's callback request waits for the outcome

@dataclass(frozen=True)
class Callback:
    """What X appended to the redirect_uri (the code is never shown: no repr)."""

    code: str | None = field(repr=False)
    state: str | None = field(repr=False)
    error: str | None = None


def parse_redirect(url: str, redirect_uri: str) -> Callback | None:
    """The callback in a redirected URL (pasted, or the loopback request's), or None when `url` is not a
    redirect to `redirect_uri` with a code or an error (scheme, host, port and path compared)."""
    text = url.strip().strip("'\"<>")
    try:
        got, want = urlsplit(text), urlsplit(redirect_uri)
        same = (got.scheme.lower(), got.hostname, got.port, got.path.rstrip("/") or "/") == (
            want.scheme.lower(), want.hostname, want.port, want.path.rstrip("/") or "/")
    except ValueError:
        return None
    query = parse_qs(got.query)
    if not same or not (query.get("code") or query.get("error")):
        return None

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    error = one("error")
    return Callback(one("code"), one("state"), printable(error, 64) if error else None)


@dataclass
class Arrival:
    """A callback from the browser (its request waits for `page`) or from standard input."""

    callback: Callback | None          # None: standard input was closed
    from_browser: bool = False
    page: str = ""
    ready: threading.Event = field(default_factory=threading.Event)
    sent: threading.Event = field(default_factory=threading.Event)


def page(title: str, text: str) -> bytes:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"</head>\n<body><main><h1>{html.escape(title)}</h1>\n<p>{html.escape(text)}</p></main></body>"
            "</html>\n").encode()


class CallbackServer(ThreadingHTTPServer):
    daemon_threads = True
    inbox: queue.Queue[Arrival]
    redirect_uri: str


class _Handler(BaseHTTPRequestHandler):
    server: CallbackServer
    timeout = 30                       # an idle connection (a browser's preconnect) never holds a thread long

    def log_message(self, format: str, *args: Any) -> None:
        pass                           # the request line holds the code

    def do_GET(self) -> None:
        want = urlsplit(self.server.redirect_uri).path.rstrip("/") or "/"
        if (urlsplit(self.path).path.rstrip("/") or "/") != want:
            self._send(404, page("Not found", "This is dm-pipeline's OAuth callback; nothing else is here."))
            return
        base = urlsplit(self.server.redirect_uri)
        callback = parse_redirect(f"{base.scheme}://{base.netloc}{self.path}", self.server.redirect_uri)
        if callback is None:
            self._send(400, page("Waiting for X", "This address receives X's redirect after you approve; "
                                                   "it got neither a code nor an error."))
            return
        arrival = Arrival(callback, from_browser=True)
        self.server.inbox.put(arrival)
        ready = arrival.ready.wait(PAGE_WAIT_S)
        self._send(200, arrival.page.encode() if ready else page("Still working", "See the terminal."))
        arrival.sent.set()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def listen(redirect_uri: str, inbox: queue.Queue[Arrival]) -> CallbackServer:
    """A started server on the loopback address and port of `redirect_uri` (OSError if it cannot bind)."""
    parts = urlsplit(redirect_uri)
    host = parts.hostname or ""
    ipv6 = ":" in host
    server_class = type("_Server6", (CallbackServer,), {"address_family": socket.AF_INET6}) if ipv6 else CallbackServer
    bind = "127.0.0.1" if host == "localhost" else host
    server = server_class((bind, parts.port or 80), _Handler)
    server.inbox, server.redirect_uri = inbox, redirect_uri
    threading.Thread(target=server.serve_forever, args=(0.1,), name="dm-oauth-callback", daemon=True).start()
    return server


def loopback_http(redirect_uri: str) -> bool:
    try:
        ep = endpoint(redirect_uri)
    except ValueError:
        return False
    return ep.scheme == "http" and ep.loopback


def read_pasted(stream: IO[str], redirect_uri: str, inbox: queue.Queue[Arrival], say: Callable[[str], None]) -> None:
    """Standard input, line by line: each redirected URL pasted becomes an arrival; EOF one with None."""
    for line in iter(stream.readline, ""):
        if not line.strip():
            continue
        callback = parse_redirect(line, redirect_uri)
        if callback is None:
            say(f"that is not the URL the browser was redirected to (it starts with {redirect_uri}?): paste it again")
            continue
        inbox.put(Arrival(callback))
    inbox.put(Arrival(None))
