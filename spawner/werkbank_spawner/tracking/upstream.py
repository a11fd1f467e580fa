"""Kept-alive HTTP/1.1 connections from the MLflow proxy to the MLflow server.

The proxy already speaks HTTP/1.1 to its clients with tornado; this module uses tornado's same
``HTTP1Connection`` for the other side and adds the one thing tornado's own client
(``simple_httpclient``) lacks: connections are kept and reused, because a new TCP connection per
request costs MLflow's server milliseconds. httpx did this before, at ~1.3 ms more CPU per small
request on 2 cores (benchmarks/mlflow_proxy.py), most of what the proxy added to a ``log-batch``.

:meth:`Upstream.stream` sends one request and hands the response to a :class:`Sink` as it
arrives, awaiting the sink, so that a slow client slows the download from MLflow instead of
filling memory; :meth:`Upstream.fetch` returns a small response whole.
"""

from __future__ import annotations

import asyncio
import json
import select
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

#: Request bodies: none, bytes, or chunks as they arrive (an upload being received).
Body = bytes | AsyncIterator[bytes] | None

#: Responses of any size pass through (artifact downloads); they are never held whole.
_NO_LIMIT = 2**62
#: The methods whose bodies tornado's HTTP1Connection frames as chunked when no Content-Length is
#: given; for any other method it would write the bytes unframed, and the server would read them
#: as the next request on the connection.
_CHUNKED_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Requests that may go out twice (RFC 9110's idempotent methods less the ones that change
#: things): sent again on a new connection when a kept-alive one turns out closed before any
#: answer. A POST is never repeated; its client hears of the error instead.
_REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _StaleConnection(Exception):
    """A reused connection was closed under a replayable request before any answer."""


class UpstreamError(Exception):
    """The upstream server could not be reached (``reason`` "connect"), did not answer in time
    ("timeout"), or closed the connection before its answer was complete ("closed")."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Sink(Protocol):
    """Where a response goes: its start, then its body in chunks (still content-encoded)."""

    def start(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> None: ...

    def chunk(self, data: bytes) -> Awaitable[None] | None:
        """Take a chunk; an awaitable to slow the upstream down until it is passed on."""


@dataclass
class Response:
    """A whole response, from :meth:`Upstream.fetch`."""

    code: int
    reason: str
    headers: httputil.HTTPHeaders
    body: bytes

    def json(self) -> dict:
        """The body as a JSON object; ``{}`` if it is not JSON."""
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return {}
        return json.loads(self.body)


class _Collect:
    def __init__(self):
        self.start_line: tuple[int, str, httputil.HTTPHeaders] | None = None
        self.parts: list[bytes] = []

    def start(self, code, reason, headers):
        self.start_line = (code, reason, headers)

    def chunk(self, data):
        self.parts.append(data)


class _Exchange(httputil.HTTPMessageDelegate):
    """Adapts a :class:`Sink` to tornado's delegate interface, and keeps what the sink raises:
    tornado would log it as an uncaught error, but a client going away mid-download is routine."""

    def __init__(self, sink: Sink, stream: IOStream):
        self.sink = sink
        self.stream = stream
        self.started = False
        self.finished = False
        self.keep_alive = False
        self.error: BaseException | None = None

    def headers_received(self, start_line, headers):
        assert isinstance(start_line, httputil.ResponseStartLine)
        if start_line.code < 200:
            return None  # 100 Continue and the like: the real answer follows
        self.started = True
        self.keep_alive = (
            start_line.version == "HTTP/1.1" and "close" not in headers.get("Connection", "").lower()
        )
        try:
            self.sink.start(start_line.code, start_line.reason, headers)
        except Exception as e:  # re-raised by Upstream.stream
            self._fail(e)
        return None

    def data_received(self, chunk):
        if self.error is not None:
            return None
        try:
            waiting = self.sink.chunk(chunk)
        except Exception as e:
            self._fail(e)
            return None
        return None if waiting is None else self._wait(waiting)

    async def _wait(self, waiting: Awaitable[None]) -> None:
        try:
            await waiting
        except Exception as e:
            self._fail(e)

    def finish(self):
        self.finished = True

    def _fail(self, error: BaseException) -> None:
        # Stop reading: the rest of the response has nowhere to go.
        self.error = error
        self.stream.close()


class Upstream:
    """Connections to one HTTP server (``http://host:port`` or ``https://...``), kept alive
    between requests. For one event loop; not thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        max_idle: int = 16,
        idle_timeout: float = 4.0,
        connect_timeout: float = 10.0,
        response_timeout: float = 600.0,
        wait_timeout: float = 60.0,
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        #: What the Host header says.
        self.netloc = parts.netloc.rpartition("@")[2]
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.max_idle = max_idle
        # Idle connections are dropped after idle_timeout, before the server closes them
        # (uvicorn, which runs MLflow, after 5 s), so that no request goes out on a connection
        # the server is closing: no request is sent twice.
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.wait_timeout = wait_timeout
        self.response_timeout = response_timeout
        self.params = HTTP1ConnectionParameters(
            header_timeout=response_timeout,
            max_body_size=_NO_LIMIT,
            decompress=False,  # bodies are relayed as MLflow encoded them
        )
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[tuple[IOStream, float]] = []  # most recently used last
        self._tcp = TCPClient()

    async def fetch(
        self, method: str, target: str, headers: Iterable[tuple[str, str]] = (), body: Body = None
    ) -> Response:
        """Send a request; return its whole response, uncompressed (it asks for ``identity``)."""
        sink = _Collect()
        headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
        await self.stream(method, target, [*headers, ("Accept-Encoding", "identity")], body, sink)
        code, reason, response_headers = sink.start_line
        return Response(code, reason, response_headers, b"".join(sink.parts))

    async def stream(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: Body, sink: Sink
    ) -> None:
        """Send a request (``target``: path and query) and pass the response to ``sink``.

        Raises :class:`UpstreamError` if the server does not answer completely, and whatever the
        sink raised (the exchange is abandoned then). A streamed ``body`` is sent as it comes:
        with the ``Content-Length`` given in ``headers``, or else chunked (POST, PUT, PATCH only:
        ``ValueError`` for others), and the connection is not reused after a chunked body. Should
        the server answer before it has all of the body, the answer is passed on and the rest of
        the body dropped.
        """
        headers = list(headers)
        streamed = body is not None and not isinstance(body, bytes)
        has_length = any(name.lower() == "content-length" for name, _ in headers)
        if streamed and method not in _CHUNKED_METHODS and not has_length:
            raise ValueError(f"a streamed {method} body needs a Content-Length: it would go out unframed")
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), self.wait_timeout)
            except TimeoutError:
                raise UpstreamError("timeout", f"all connections to {self.netloc} stayed busy") from None
        else:
            # A free slot is taken at once; wait_for would wrap the acquire in a task of its own
            # (Python 3.11), a few event-loop turns on every request.
            await self._slots.acquire()
        try:
            try:
                await self._exchange(method, target, headers, body, sink)
            except _StaleConnection:
                # The kept-alive connection had been closed by the server (it restarted, or it
                # closed it as the request went out) before any answer: a request that may be
                # sent twice goes again, on a new connection.
                await self._exchange(method, target, headers, body, sink, fresh=True)
        finally:
            self._slots.release()

    async def _exchange(self, method, target, headers, body, sink, *, fresh: bool = False) -> None:
        stream = None if fresh else self._reuse()
        reused = stream is not None
        stream = stream or await self._connect()
        connection = HTTP1Connection(stream, is_client=True, params=self.params)
        exchange = _Exchange(sink, stream)
        request_headers = httputil.HTTPHeaders()
        for name, value in headers:
            request_headers.add(name, value)
        request_headers["Host"] = self.netloc
        if (body is None or isinstance(body, bytes)) and (body or method in ("POST", "PUT", "PATCH")):
            # (tornado would send an empty POST chunked)
            request_headers["Content-Length"] = str(len(body or b""))
        sent = False
        started = time.monotonic()
        # Closed under the request before any answer, on a connection kept from before: retried.
        stale = reused and method in _REPLAYABLE_METHODS and not isinstance(body, AsyncIterator)
        try:
            connection.write_headers(httputil.RequestStartLine(method, target, "HTTP/1.1"), request_headers)
            if isinstance(body, bytes) or body is None:
                if body:
                    connection.write(body)
                connection.finish()
                sent = True
                await connection.read_response(exchange)
            else:
                sent = await self._send_while_reading(connection, body, exchange)
        except StreamClosedError as e:
            if stale and exchange.error is None and not exchange.started:
                raise _StaleConnection() from e
            if exchange.error is None:
                raise UpstreamError(
                    "closed", f"{self.netloc} closed the connection: {e.real_error or e}"
                ) from None
        except httputil.HTTPInputError as e:
            stream.close()
            raise UpstreamError("closed", f"malformed answer from {self.netloc}: {e}") from None
        except BaseException:  # cancelled: the connection is in an unknown state
            stream.close()
            raise
        if exchange.error is not None:
            stream.close()
            raise exchange.error
        if not exchange.finished:
            stream.close()
            if not exchange.started and time.monotonic() - started >= self.response_timeout:
                raise UpstreamError(
                    "timeout", f"{self.netloc} did not answer in {self.response_timeout:.0f} s"
                )
            if stale and not exchange.started:
                raise _StaleConnection()
            raise UpstreamError("closed", f"{self.netloc} closed the connection before answering completely")
        # A body whose length was not known (chunked) leaves nothing wrong with the connection
        # by the book; not reusing it costs one connect per upload and makes sure that no
        # framing mistake can ever carry one request's bytes into another's.
        length_known = not isinstance(body, AsyncIterator) or "Content-Length" in request_headers
        if sent and length_known and exchange.keep_alive and not stream.closed():
            self._keep(stream)
        else:
            stream.close()

    async def _send_while_reading(
        self, connection: HTTP1Connection, body: AsyncIterator[bytes], exchange: _Exchange
    ) -> bool:
        """Send a streamed body while reading the answer; True if all of it was sent."""
        reading = asyncio.ensure_future(connection.read_response(exchange))
        try:
            async for chunk in body:
                if exchange.finished or reading.done():
                    break  # answered early (a refusal): the rest is not wanted
                await connection.write(chunk)
            else:
                connection.finish()
                await reading
                return True
        except StreamClosedError:
            pass  # the server stopped reading; its answer, if any, is in `reading`
        except BaseException:
            reading.cancel()
            connection.stream.close()
            raise
        # The body was cut short: this connection cannot carry another request.
        connection.stream.close()
        await reading
        return False

    def _reuse(self) -> IOStream | None:
        now = time.monotonic()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < self.idle_timeout and not stream.closed() and not _readable(stream):
                return stream
            stream.close()
        return None

    def _keep(self, stream: IOStream) -> None:
        self._idle.append((stream, time.monotonic()))
        if len(self._idle) > self.max_idle:
            oldest, _ = self._idle.pop(0)
            oldest.close()

    async def _connect(self) -> IOStream:
        try:
            stream = await self._tcp.connect(
                self.host,
                self.port,
                ssl_options=self.ssl,
                max_buffer_size=256 * 1024 * 1024,
                timeout=self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError("connect", f"connecting to {self.netloc} timed out") from None
        except (OSError, StreamClosedError) as e:
            raise UpstreamError("connect", f"cannot connect to {self.netloc}: {e}") from None
        stream.set_nodelay(True)
        return stream

    def close(self) -> None:
        """Close the idle connections (those in use close when their exchange ends)."""
        while self._idle:
            self._idle.pop()[0].close()


def _readable(stream: IOStream) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent what
    nobody asked for); either way it cannot carry a request."""
    try:
        return bool(select.select([stream.socket], [], [], 0)[0])
    except (OSError, ValueError):
        return True
