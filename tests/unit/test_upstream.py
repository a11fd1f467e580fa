"""The MLflow proxy's kept-alive connections (werkbank_spawner.tracking.upstream), against real servers
on loopback: a tornado application, and raw sockets for servers that misbehave."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from tornado import web
from tornado.httpserver import HTTPServer

from tests.mlflow_server import free_port
from werkbank_spawner.tracking.upstream import Upstream, UpstreamError


class Echo(web.RequestHandler):
    """Answers which client port asked, and what it sent."""

    def post(self):
        self.finish({"port": self.request.connection.context.address[1], "body": self.request.body.decode()})

    get = post


class Chunks(web.RequestHandler):
    async def get(self):
        for i in range(5):
            self.write(f"part{i};" * 1000)
            await self.flush()  # no Content-Length: chunked transfer encoding


class Close(web.RequestHandler):
    def get(self):
        self.set_header("Connection", "close")
        self.finish("bye")


@web.stream_request_body
class Refuse(web.RequestHandler):
    """Refuses an upload before reading its body, as MLflow's permission check does."""

    def prepare(self):
        raise web.HTTPError(403)


@web.stream_request_body
class Upload(web.RequestHandler):
    def prepare(self):
        self.request.connection.set_max_body_size(1024**3)
        self.hash = hashlib.sha256()

    def data_received(self, chunk):
        self.hash.update(chunk)

    def put(self):
        self.finish(self.hash.hexdigest())


@pytest.fixture(scope="module")
async def server():
    app = web.Application(
        [("/echo", Echo), ("/chunks", Chunks), ("/close", Close), ("/refuse", Refuse), ("/upload", Upload)]
    )
    port = free_port()
    http = HTTPServer(app, idle_connection_timeout=0.5)
    http.listen(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}"
    http.stop()


class Collect:
    def __init__(self, delay: float = 0):
        self.code = None
        self.headers = None
        self.parts: list[bytes] = []
        self.delay = delay

    def start(self, code, reason, headers):
        self.code, self.headers = code, headers

    def chunk(self, data):
        self.parts.append(data)
        return asyncio.sleep(self.delay) if self.delay else None


async def test_connections_are_kept_and_reused(server):
    upstream = Upstream(server)
    ports = set()
    for i in range(10):
        r = await upstream.fetch("POST", "/echo", [("Content-Type", "text/plain")], f"hello {i}".encode())
        assert r.code == 200
        assert r.json()["body"] == f"hello {i}"
        ports.add(r.json()["port"])
    assert len(ports) == 1
    upstream.close()


async def test_concurrent_requests_use_separate_connections(server):
    upstream = Upstream(server)
    answers = await asyncio.gather(*(upstream.fetch("GET", "/echo") for _ in range(4)))
    assert all(a.code == 200 for a in answers)
    assert len({a.json()["port"] for a in answers}) == 4
    assert len(upstream._idle) == 4  # all kept for later
    upstream.close()


async def test_idle_connections_expire_before_the_server_closes_them(server):
    upstream = Upstream(server, idle_timeout=0.05)
    first = (await upstream.fetch("GET", "/echo")).json()["port"]
    await asyncio.sleep(0.1)
    assert (await upstream.fetch("GET", "/echo")).json()["port"] != first
    upstream.close()


async def test_a_connection_the_server_closed_is_not_reused(server):
    # The server drops idle connections after 0.5 s; the pool would keep them for 10.
    upstream = Upstream(server, idle_timeout=10)
    first = (await upstream.fetch("GET", "/echo")).json()["port"]
    await asyncio.sleep(0.8)
    r = await upstream.fetch("GET", "/echo")
    assert r.code == 200
    assert r.json()["port"] != first
    upstream.close()


async def test_chunked_answers_stream_to_the_sink_and_the_connection_is_kept(server):
    upstream = Upstream(server)
    sink = Collect(delay=0.01)  # a slow client
    await upstream.stream("GET", "/chunks", [], None, sink)
    assert sink.code == 200
    assert sink.headers["Transfer-Encoding"] == "chunked"
    assert b"".join(sink.parts) == "".join(f"part{i};" * 1000 for i in range(5)).encode()
    assert len(upstream._idle) == 1
    upstream.close()


async def test_connection_close_is_honoured(server):
    upstream = Upstream(server)
    r = await upstream.fetch("GET", "/close")
    assert (r.code, r.body) == (200, b"bye")
    assert upstream._idle == []


async def test_uploads_stream_and_an_early_refusal_is_passed_on(server):
    upstream = Upstream(server)
    block = bytes(range(256)) * 4096  # 1 MiB
    sent = 0

    async def body(blocks):
        nonlocal sent
        for _ in range(blocks):
            sent += 1
            yield block
            await asyncio.sleep(0)

    sink = Collect()
    size = 32 * len(block)
    await upstream.stream("PUT", "/upload", [("Content-Length", str(size))], body(32), sink)
    assert sink.code == 200
    assert b"".join(sink.parts).decode() == hashlib.sha256(block * 32).hexdigest()

    sent = 0
    sink = Collect()
    await upstream.stream("POST", "/refuse", [("Content-Length", str(1024 * len(block)))], body(1024), sink)
    assert sink.code == 403
    assert sent < 1024  # the rest of the upload was not wanted, and not sent
    upstream.close()


async def test_a_sink_that_fails_ends_the_exchange(server):
    class Gone(Collect):
        def chunk(self, data):
            raise ConnectionResetError("the client went away")

    upstream = Upstream(server)
    with pytest.raises(ConnectionResetError):
        await upstream.stream("GET", "/chunks", [], None, Gone())
    assert upstream._idle == []  # half-read: never reused
    assert (await upstream.fetch("GET", "/echo")).code == 200
    upstream.close()


async def test_nobody_listening_is_a_connect_error():
    upstream = Upstream(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamError) as e:
        await upstream.fetch("GET", "/")
    assert e.value.reason == "connect"


async def raw_server(answer: bytes):
    """A server that reads a request's head, sends ``answer`` and hangs up."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_server_hanging_up_mid_answer_is_an_error():
    server, url = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    upstream = Upstream(url)
    sink = Collect()
    with pytest.raises(UpstreamError) as e:
        await upstream.stream("GET", "/", [], None, sink)
    assert e.value.reason == "closed"
    assert sink.code == 200  # the sink knows the answer began
    server.close()


async def test_a_server_hanging_up_without_answering_is_an_error():
    server, url = await raw_server(b"")
    upstream = Upstream(url)
    with pytest.raises(UpstreamError) as e:
        await upstream.fetch("GET", "/")
    assert e.value.reason == "closed"
    server.close()


async def test_a_server_that_does_not_answer_in_time_is_a_timeout():
    async def handle(reader, writer):
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream = Upstream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", response_timeout=0.3)
    with pytest.raises(UpstreamError) as e:
        await upstream.fetch("GET", "/")
    assert e.value.reason == "timeout"
    server.close()


async def test_when_every_connection_is_busy_a_request_waits_then_times_out(server):
    async def handle(reader, writer):
        await asyncio.sleep(5)  # holds the only connection
        writer.close()

    slow = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream = Upstream(
        f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}", max_connections=1, wait_timeout=0.3
    )
    first = asyncio.ensure_future(upstream.fetch("GET", "/"))
    await asyncio.sleep(0.1)
    with pytest.raises(UpstreamError) as e:
        await upstream.fetch("GET", "/")
    assert e.value.reason == "timeout"
    assert "stayed busy" in str(e.value)
    first.cancel()
    slow.close()
    # A slot that frees up is taken by the next request, without waiting.
    upstream = Upstream(server, max_connections=1, wait_timeout=0.3)
    answers = await asyncio.gather(*(upstream.fetch("GET", "/echo") for _ in range(3)))
    assert [a.code for a in answers] == [200, 200, 200]


async def test_a_kept_alive_connection_closed_under_a_request_is_retried_only_for_reads():
    """The server closes a kept-alive connection just as the next request arrives (it restarted,
    or its idle timer fired): a GET goes again on a new connection, a POST is never repeated."""
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        first = len(connections) % 2 == 1  # odd connections: answer once, then close on the next
        while await reader.readuntil(b"\r\n\r\n"):
            if first and getattr(writer, "answered", False):
                writer.close()  # the request arrived, no answer: closed under it
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.answered = True

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream = Upstream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    assert (await upstream.fetch("GET", "/")).code == 200  # connection 1, kept alive
    assert (await upstream.fetch("GET", "/again")).code == 200  # closed under it: retried on 2
    assert len(connections) == 2
    assert (await upstream.fetch("GET", "/")).code == 200  # connection 2 kept alive
    assert len(connections) == 2
    upstream = Upstream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    assert (await upstream.fetch("POST", "/", body=b"{}")).code == 200  # connection 3
    with pytest.raises(UpstreamError) as e:
        await upstream.fetch("POST", "/", body=b"{}")  # closed under it: not sent again
    assert e.value.reason == "closed"
    assert len(connections) == 3
    server.close()
