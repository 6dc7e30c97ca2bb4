"""A minimal gevent relay of gjproxy's wire, for bench/tunnel.py to measure beside gjproxy.

The same login (gjproxy's handshake drivers), the same 3.1 frames (AES-GCM through gjproxy's
``Session``) and the same messages (``schemas.fast``), but none of gjproxy's machinery: no
multiplexer core, no flow control (it talks only to itself, so it never sends or needs a
window update), no admission, no timers, no egress policy, no access log. One greenlet per
socket and direction, plain ``sendall`` (the tunnel's reader waits while a local socket
takes its data), and one writer greenlet per tunnel that sends whatever the streams handed it
since its last write, in the order they came. What it costs is about the floor
of this wire on gevent: the figure a multiplexer's bookkeeping and scheduling is judged by.

Not a product: loopback only, every target allowed. Run by bench/tunnel.py:
``python bench/minimal_relay.py server --listen HOST:PORT --users DIR`` and
``python bench/minimal_relay.py client --server HOST:PORT --socks HOST:PORT --key FILE``.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import itertools
import sys
import time
from pathlib import Path

import gevent
import gevent.event
from gevent import socket
from gevent.server import StreamServer

from jproxy.handlers.tunnel.handshake import client_login, server_login
from jproxy.socks.socks5 import ConnectRequested, Rejected, Send, Socks5Server, reply_code_for
from jproxy.tunnel.keys import UserDirectory, load_client_key
from jproxy.tunnel.session import Session
from schemas import fast
from schemas.jproxy import AddressType, ConnectStatus, Dialect, DisconnectReason, MessageType

READ_SIZE = 65536
CONNECT_TIMEOUT = 10.0


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Tunnel:
    """One end of a tunnel: the streams by id, the tunnel socket and its write lock."""

    def __init__(self, sock: socket.socket, session: Session, client: bool) -> None:
        self.sock = sock
        self.client = client
        self.session = session
        self.streams: dict[int, socket.socket] = {}
        self.replies: dict[int, gevent.event.AsyncResult] = {}
        self._outbox: collections.deque[tuple[tuple[bytes, ...], gevent.event.Event]] = (
            collections.deque()
        )
        self._waiting = gevent.event.Event()
        self._piece = session.max_message - len(fast.TCP_PACKET.prefix(0, 0))
        gevent.spawn(self._write)

    def send(self, *messages: bytes) -> None:
        """Hand ``messages`` to the writer and wait until they are written: each stream has
        at most one hand-off waiting, and the writer takes them in turn."""
        written = gevent.event.Event()
        self._outbox.append((messages, written))
        self._waiting.set()
        written.wait()

    def _write(self) -> None:
        while True:
            self._waiting.wait()
            self._waiting.clear()
            messages: list[bytes] = []
            written = []
            while self._outbox:
                some, done = self._outbox.popleft()
                messages.extend(some)
                written.append(done)
            try:
                self.sock.sendall(self.session.seal_all(messages))
            except OSError:
                return
            for done in written:
                done.set()

    def pump(self, connection_id: int, local: socket.socket) -> None:
        """Local socket to tunnel, until the local end closes; then the stream ends."""
        try:
            while data := local.recv(READ_SIZE):
                view = memoryview(data)
                self.send(
                    *(
                        fast.TCP_PACKET.build(connection_id, view[start : start + self._piece])
                        for start in range(0, len(view), self._piece)
                    )
                )
        except OSError:
            pass
        if self.streams.pop(connection_id, None) is not None:
            self.send(fast.TCP_DISCONNECT.build(connection_id, DisconnectReason.CLIENT_CLOSED))
        local.close()

    def run(self, first: bytes = b"") -> None:
        """Tunnel to local sockets, until the tunnel closes: the data of one read goes to each
        stream in one write (before any other message, so that the order holds)."""
        data = first
        while True:
            pending: dict[int, list[bytes]] = {}
            for message in self.session.feed(data):
                if message[0] == MessageType.TCP_PACKET:
                    connection_id, payload = fast.TCP_PACKET.parse(message)
                    pending.setdefault(connection_id, []).append(payload)
                else:
                    self._deliver(pending)
                    self._dispatch(message)
            self._deliver(pending)
            data = self.sock.recv(READ_SIZE)
            if not data:
                break
        for local in self.streams.values():
            local.close()

    def _deliver(self, pending: dict[int, list[bytes]]) -> None:
        for connection_id, pieces in pending.items():
            if (local := self.streams.get(connection_id)) is not None:
                try:
                    local.sendall(b"".join(pieces))
                except OSError:
                    pass
        pending.clear()

    def _dispatch(self, message: bytes) -> None:
        kind = message[0]
        if kind == MessageType.TCP_CONNECT and self.client:
            connection_id, status, _ = fast.TCP_CONNECT_REPLY.parse(message)
            if (waiter := self.replies.pop(connection_id, None)) is not None:
                waiter.set(status)
        elif kind == MessageType.TCP_CONNECT:
            gevent.spawn(self._connect, *fast.TCP_CONNECT_REQUEST.parse(message))
        elif kind == MessageType.TCP_DISCONNECT:
            connection_id, _ = fast.TCP_DISCONNECT.parse(message)
            if (local := self.streams.pop(connection_id, None)) is not None:
                local.close()
        elif kind == MessageType.TCP_HALF_CLOSE:
            (connection_id,) = fast.TCP_HALF_CLOSE.parse(message)
            if (local := self.streams.get(connection_id)) is not None:
                local.shutdown(socket.SHUT_WR)

    def _connect(self, connection_id: int, port: int, _: AddressType, host: str) -> None:
        """The server's side of a connect request: dial, answer, then pump the target."""
        began = time.monotonic()
        try:
            target = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError:
            self.send(fast.TCP_CONNECT_REPLY.build(connection_id, ConnectStatus.REFUSED, 0))
            return
        target.settimeout(None)
        target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.streams[connection_id] = target
        elapsed = min(0xFFFF, int((time.monotonic() - began) * 1000))
        self.send(fast.TCP_CONNECT_REPLY.build(connection_id, ConnectStatus.OK, elapsed))
        self.pump(connection_id, target)


def serve(args: argparse.Namespace) -> None:
    users = UserDirectory(Path(args.users))

    def handle(sock: socket.socket, address: tuple) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        login = server_login(sock, f"{address[0]}:{address[1]}", users, allow_legacy=False)
        if login is not None:
            Tunnel(sock, login.session, client=False).run(bytes(login.proof.received))

    server = StreamServer(_address(args.listen), handle)
    server.start()
    print(f"minimal relay server listening on {args.listen.rpartition(':')[0]}:{server.address[1]}")
    sys.stdout.flush()
    server.serve_forever()


def client(args: argparse.Namespace) -> None:
    sock = socket.create_connection(_address(args.server), timeout=CONNECT_TIMEOUT)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    session = client_login(sock, load_client_key(Path(args.key)), Dialect.SECURE_3_1)
    tunnel = Tunnel(sock, session, client=True)
    ids = itertools.cycle(range(1, 0x10000))

    def handle(local: socket.socket, _: tuple) -> None:
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        core = Socks5Server()
        while request := local.recv(READ_SIZE):
            for event in core.receive(request):
                if isinstance(event, Send | Rejected):
                    local.sendall(event.data)
                if isinstance(event, Rejected):
                    return local.close()
                if isinstance(event, ConnectRequested):
                    return relay(local, core, event)
        local.close()

    def relay(local: socket.socket, core: Socks5Server, request: ConnectRequested) -> None:
        free = (i for i in itertools.islice(ids, 0xFFFF) if i not in tunnel.streams)
        connection_id = next(i for i in free if i not in tunnel.replies)
        kind = AddressType.DOMAIN
        try:
            kind = {4: AddressType.IPV4, 6: AddressType.IPV6}[ip_version(request.host)]
        except ValueError:
            pass
        waiter = tunnel.replies[connection_id] = gevent.event.AsyncResult()
        tunnel.send(fast.TCP_CONNECT_REQUEST.build(connection_id, request.port, kind, request.host))
        status = waiter.get(timeout=CONNECT_TIMEOUT)
        local.sendall(core.reply(reply_code_for(status)))
        if status != ConnectStatus.OK:
            return local.close()
        tunnel.streams[connection_id] = local
        if core.early_data:
            tunnel.send(fast.TCP_PACKET.build(connection_id, core.early_data))
        tunnel.pump(connection_id, local)

    gevent.spawn(tunnel.run)
    socks = StreamServer(_address(args.socks), handle)
    socks.start()
    print(f"minimal relay SOCKS5 listening on {args.socks.rpartition(':')[0]}:{socks.address[1]}")
    sys.stdout.flush()
    socks.serve_forever()


def ip_version(host: str) -> int:
    """4 or 6 for an address literal; ValueError for a name."""
    return ipaddress.ip_address(host).version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server_parser = commands.add_parser("server")
    server_parser.add_argument("--listen", required=True)
    server_parser.add_argument("--users", required=True)
    client_parser = commands.add_parser("client")
    client_parser.add_argument("--server", required=True)
    client_parser.add_argument("--socks", required=True)
    client_parser.add_argument("--key", required=True)
    args = parser.parse_args()
    (serve if args.command == "server" else client)(args)


if __name__ == "__main__":
    main()
