"""Forward TCP from this machine's loopback into a network namespace: `make demo NODES=2` uses it so
that the browser opens http://127.0.0.1:8000/ while the hub's proxy listens on the hub host wb-hub
(10.77.0.1:8000), an address this machine's own namespace has no route to (the cluster's bridge has
no address on purpose: only the namespaces' addresses and loopback are used).

The listening socket is opened first, in the namespace this process starts in; then the process
enters the target namespace (setns), so that every connection it opens afterwards is one of that
namespace's. One process, one thread, no fork or exec per connection; the bytes are copied as they
come (HTTP keep-alive, websockets and half-closed connections pass unchanged).

Usage (as root):  netns-forward.py LISTEN_HOST:PORT /run/netns/NAME TARGET_HOST:PORT
Stops on SIGTERM or SIGINT. Standard library only (runs with any Python 3.9+).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys

#: setns(2)'s flag for a network namespace (os.setns needs Python 3.12).
CLONE_NEWNET = 0x40000000
CHUNK = 256 * 1024


def enter_network_namespace(path: str) -> None:
    """Move this (still single-threaded) process into the network namespace ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(fd)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close ``writer`` (the other direction may still be sending)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()


async def main(listen: str, netns: str, target: str) -> None:
    host, port = host_port(listen)
    server_socket = socket.create_server((host, port), reuse_port=False)
    enter_network_namespace(netns)
    target_host, target_port = host_port(target)

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        except OSError as error:
            client_writer.transport.abort()
            print(f"netns-forward: {target} in {netns}: {error}", file=sys.stderr, flush=True)
            return
        for writer in (client_writer, upstream_writer):
            writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(copy(client_reader, upstream_writer), copy(upstream_reader, client_writer))
        for writer in (client_writer, upstream_writer):
            writer.close()

    server = await asyncio.start_server(handle, sock=server_socket)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"netns-forward: {listen} -> {target} in {netns}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[-2])
    asyncio.run(main(*sys.argv[1:]))
