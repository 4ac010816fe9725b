"""Transport: where an account's credentials may go (https, a loopback host, or explicitly allowed), read
from each URL the way the HTTP client will connect to it."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account

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
