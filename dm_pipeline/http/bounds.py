"""Bounds on one HTTP request: a total deadline (connect to last byte) and a maximum body size.

httpx has a timeout per network operation only, so a server that sends one byte a second never trips it
and would hold a stream (and its lock, and a run slot) forever. Here every socket operation of a request
gets `min(its own timeout, what is left of the request's deadline)`, through a network backend that wraps
httpcore's, and the body is read in chunks and refused past `max_bytes` (decoded size: a gzip bomb too).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

_local = threading.local()  # the deadline of the request this thread is sending (time.monotonic())


class DeadlineExceeded(httpcore.ReadTimeout):
    """The request's total deadline passed (raised as a read timeout so httpx maps it as one)."""


def _bounded(timeout: float | None) -> float | None:
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.SyncBackend):
    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:
        return _Stream(super().connect_tcp(host, port, _bounded(timeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None
                            ) -> httpcore.NetworkStream:
        return _Stream(super().connect_unix_socket(path, _bounded(timeout), socket_options))


def transport(verify: ssl.SSLContext) -> httpx.HTTPTransport:
    """httpx's own transport (its error mapping, its pool), on the deadline-aware network backend."""
    t = httpx.HTTPTransport(verify=verify)
    # httpx 0.28 does not take a network backend; the pool it built is replaced by the same pool on ours.
    t._pool = httpcore.ConnectionPool(ssl_context=verify, network_backend=DeadlineBackend())
    return t


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Every socket operation of this thread inside the block ends by `seconds` from now."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = until = time.monotonic() + seconds
    try:
        yield until
    finally:
        _local.deadline = previous


class BodyTooLarge(Exception):
    pass


def read_bounded(response: httpx.Response, max_bytes: int) -> None:
    """Read a streamed response's body into it (`response.content` works after), refusing more than
    `max_bytes` of decoded body."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"the response body is larger than {max_bytes:,} bytes")
        chunks.append(chunk)
    response._content = b"".join(chunks)  # what Response.read() sets
