"""A jProxy 3.0 peer that does on the wire what the original Java programs do, for e2e tests.

The Java programs are not part of this project and CI cannot fetch them, so the suite runs
this instead: the project's own cores (handshake, session, message codecs, SOCKS5) driven the
way the Java code drives its sockets, where that shows on the wire:

- every message goes in a frame of its own; a local socket is read 2048 bytes at a time
  (``Constants.BUFFER_SIZE``) and each read is one TCP packet;
- a local socket's EOF or error closes that socket whole (no half-close) and sends, behind the
  data, a disconnect with reason 4 (RESET), for every close, a clean one included (the server's
  ``RedirectDisconnectListener``, the client's ``Socks5DisconnectListener``, whose message
  carries one zero byte more);
- the peer's disconnect is never answered: what is queued for the local socket is written,
  then the socket is closed (``closeOnFinishData``);
- no flow control: a local socket stops being read only while the tunnel's queue is full
  (``TunnelChannelWrapper``'s ``MAX_QUEUE``);
- the client takes ids from a stack (the last freed first) and frees one as soon as its
  disconnect is sent or received; the server resolves a name where it reads the connect,
  preferring IPv4 (java.net's default), and answers a name it cannot resolve with status 5.

One Java defect is left out on purpose: when both ends close a stream at about the same time,
the Java client frees its id twice, and two later streams share it (docs/protocol.md lists
it). Copied, it would make the tests fail at random for a reason that is not gjproxy's.

One thread and one selector serve everything, as the Java event loop does::

    python -m tests.java_peer server --users DIR [--listen 127.0.0.1:0]
    python -m tests.java_peer client --key FILE --server HOST:PORT

Each prints ``listening on PORT`` once it serves; the client exits when its tunnel ends.
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import sys
import time
from collections.abc import Callable

from jproxy.socks.socks5 import (
    ConnectRequested,
    Rejected,
    Send,
    Socks5Server,
    reply_code_for,
)
from jproxy.tunnel.handshake import ClientHandshake, Phase, ServerHandshake
from jproxy.tunnel.keys import UserDirectory, load_client_key
from jproxy.tunnel.session import Session
from schemas.fast import TCP_CONNECT_REPLY, TCP_CONNECT_REQUEST, TCP_DISCONNECT, TCP_PACKET
from schemas.jproxy import AddressType, ConnectStatus, Dialect, DisconnectReason, MessageType
from schemas.socks5 import ReplyCode

BUFFER_SIZE = 2048
QUEUE_LIMIT = 16 * BUFFER_SIZE
MAX_CONNECTIONS = 1024
HANDSHAKE_TIMEOUT = 10.0
NO_TIME = 65535
"""The elapsed milliseconds the Java server sends with a connect that failed at once."""
_STATUS_OF_ERRNO = {
    errno.ECONNREFUSED: ConnectStatus.REFUSED,
    errno.ETIMEDOUT: ConnectStatus.TIMED_OUT,
    errno.ENETUNREACH: ConnectStatus.UNREACHABLE,
}
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class Loop:
    """One selector; each registered socket carries the callback that takes its events."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def watch(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        registered = sock in self.selector.get_map() if sock.fileno() >= 0 else False
        if not events:
            if registered:
                self.selector.unregister(sock)
        elif registered:
            self.selector.modify(sock, events, callback)
        else:
            self.selector.register(sock, events, callback)

    def forget(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0 and sock in self.selector.get_map():
            self.selector.unregister(sock)
        sock.close()

    def run(self) -> None:
        while True:
            for key, mask in self.selector.select():
                key.data(mask)


class Stream:
    """A stream's local socket: the target (server) or the SOCKS client (client)."""

    def __init__(self, end: End, stream_id: int, sock: socket.socket) -> None:
        self.end, self.id, self.sock = end, stream_id, sock
        self.out = bytearray()
        self.reading = self.connecting = self.closing = False
        self.started = time.monotonic()

    def update(self) -> None:
        read = self.reading and not self.end.tunnel.full
        write = self.connecting or bool(self.out)
        self.end.loop.watch(self.sock, (READ if read else 0) | (WRITE if write else 0), self.event)

    def write(self, data: bytes) -> None:
        self.out += data
        self.update()

    def finish(self) -> None:
        """The peer's disconnect (or a reused id): write what is queued, then close."""
        self.reading, self.closing = False, True
        if self.out:
            self.update()
        else:
            self.end.loop.forget(self.sock)

    def event(self, mask: int) -> None:
        if self.connecting:
            if mask & WRITE:
                self.end.connected(self, self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            return
        try:
            if mask & READ and self.reading:
                data = self.sock.recv(BUFFER_SIZE)
                if not data:
                    raise ConnectionResetError("EOF")
                self.end.tunnel.send(TCP_PACKET.build(self.id, data))
            if mask & WRITE and self.out:
                del self.out[: self.sock.send(self.out)]
        except OSError:
            self.end.local_closed(self)
            return
        if self.closing and not self.out:
            self.end.loop.forget(self.sock)
        else:
            self.update()


class Tunnel:
    """The tunnel socket: each message sealed in a frame of its own, queued, written."""

    def __init__(self, end: End, sock: socket.socket, session: Session) -> None:
        self.end, self.sock, self.session = end, sock, session
        self.out = bytearray()
        sock.setblocking(False)
        self.update()

    @property
    def full(self) -> bool:
        return len(self.out) >= QUEUE_LIMIT

    def update(self) -> None:
        self.end.loop.watch(self.sock, READ | (WRITE if self.out else 0), self.event)

    def send(self, message: bytes) -> None:
        was_full = self.full
        self.out += self.session.seal(message)
        self.update()
        if self.full and not was_full:
            self.end.refresh()

    def event(self, mask: int) -> None:
        try:
            if mask & WRITE and self.out:
                was_full = self.full
                del self.out[: self.sock.send(self.out)]
                self.update()
                if was_full and not self.full:
                    self.end.refresh()
            if mask & READ:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionResetError("the peer closed the tunnel")
                for message in self.session.feed(data):
                    self.end.receive(bytes(message))
        except OSError:
            self.end.tunnel_lost()


class End:
    """What the server and the client share: the streams of one tunnel, by id."""

    padded_disconnect = False

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.streams: dict[int, Stream] = {}
        self.tunnel: Tunnel

    def refresh(self) -> None:
        for stream in list(self.streams.values()):
            if stream.sock.fileno() >= 0:
                stream.update()

    def local_closed(self, stream: Stream) -> None:
        """The local socket ended, cleanly or not: close it whole, then disconnect, reason 4."""
        self.loop.forget(stream.sock)
        if self.streams.get(stream.id) is not stream:
            return  # already ended by the peer's disconnect: no listener any more
        del self.streams[stream.id]
        self.freed(stream.id)
        message = TCP_DISCONNECT.build(stream.id, DisconnectReason.RESET)
        self.tunnel.send(message + b"\x00" * self.padded_disconnect)

    def receive(self, message: bytes) -> None:
        kind = message[0]
        if kind == MessageType.TCP_PACKET:
            stream_id, data = TCP_PACKET.parse(message)
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.write(bytes(data))
        elif kind == MessageType.TCP_DISCONNECT:
            stream_id, _reason = TCP_DISCONNECT.parse(message)
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                self.freed(stream_id)
                stream.finish()
        elif kind == MessageType.TCP_CONNECT:
            self.on_connect_message(message)

    def freed(self, stream_id: int) -> None:
        """The id may serve a new stream."""

    def on_connect_message(self, message: bytes) -> None:
        raise NotImplementedError

    def connected(self, stream: Stream, error: int) -> None:
        raise NotImplementedError

    def tunnel_lost(self) -> None:
        raise NotImplementedError


class ServerEnd(End):
    """The Java server's side of one tunnel: it connects to targets and relays them."""

    def __init__(self, loop: Loop, sock: socket.socket, session: Session, leftover: bytes):
        super().__init__(loop)
        self.tunnel = Tunnel(self, sock, session)
        for message in session.feed(leftover):
            self.receive(bytes(message))

    def on_connect_message(self, message: bytes) -> None:
        stream_id, port, _kind, host = TCP_CONNECT_REQUEST.parse(message)
        old = self.streams.pop(stream_id, None)
        if old is not None:
            old.finish()
        if len(self.streams) >= MAX_CONNECTIONS:
            self.reply(stream_id, ConnectStatus.CONNECTION_LIMIT, NO_TIME)
            return
        try:
            family, address = resolve(host, port)
        except OSError:
            self.reply(stream_id, ConnectStatus.UNKNOWN_HOST, NO_TIME)
            return
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(address)
        stream = self.streams[stream_id] = Stream(self, stream_id, sock)
        stream.connecting = True
        stream.update()

    def connected(self, stream: Stream, error: int) -> None:
        stream.connecting = False
        elapsed = min(int((time.monotonic() - stream.started) * 1000), NO_TIME)
        if error:
            del self.streams[stream.id]
            self.loop.forget(stream.sock)
            status = _STATUS_OF_ERRNO.get(error, ConnectStatus.GENERAL_FAILURE)
            self.reply(stream.id, status, elapsed)
            return
        self.reply(stream.id, ConnectStatus.OK, elapsed)
        stream.reading = True
        stream.update()

    def reply(self, stream_id: int, status: ConnectStatus, elapsed: int) -> None:
        self.tunnel.send(TCP_CONNECT_REPLY.build(stream_id, status, elapsed))

    def tunnel_lost(self) -> None:
        for stream in self.streams.values():
            self.loop.forget(stream.sock)
        self.streams.clear()
        self.loop.forget(self.tunnel.sock)


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """The first address of ``host``, IPv4 first (java.net prefers IPv4 addresses)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found.sort(key=lambda entry: entry[0] != socket.AF_INET)
    return found[0][0], found[0][4]


class ClientEnd(End):
    """The Java client: a SOCKS5 port whose connections become streams of one tunnel."""

    padded_disconnect = True

    def __init__(self, loop: Loop, sock: socket.socket, session: Session) -> None:
        super().__init__(loop)
        self.free_ids = list(range(MAX_CONNECTIONS - 1, -1, -1))  # pop() gives 0 first
        self.socks: dict[int, Socks5Server] = {}
        self.tunnel = Tunnel(self, sock, session)

    def accept(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        core = Socks5Server()
        self.loop.watch(sock, READ, lambda _mask: self.socks_request(sock, core))

    def socks_request(self, sock: socket.socket, core: Socks5Server) -> None:
        try:
            data = sock.recv(BUFFER_SIZE)
        except OSError:
            data = b""
        events = core.receive(data) if data else [Rejected(b"", "closed")]
        for event in events:
            if isinstance(event, Send):
                sock.send(event.data)
            elif isinstance(event, ConnectRequested):
                stream_id = self.free_ids.pop()
                self.streams[stream_id] = stream = Stream(self, stream_id, sock)
                self.socks[stream_id] = core
                stream.update()  # nothing to read until the connect's reply
                kind = AddressType.of(event.host)
                self.tunnel.send(TCP_CONNECT_REQUEST.build(stream_id, event.port, kind, event.host))
            else:
                if isinstance(event, Rejected):
                    sock.send(event.data)
                else:  # UDP ASSOCIATE: the Java client has none
                    sock.send(core.reply(ReplyCode.COMMAND_NOT_SUPPORTED))
                self.loop.forget(sock)
                return

    def receive(self, message: bytes) -> None:
        if message[0] != MessageType.TCP_CONNECT:
            super().receive(message)
            return
        stream_id, status, _elapsed = TCP_CONNECT_REPLY.parse(message)
        stream, core = self.streams.get(stream_id), self.socks.pop(stream_id, None)
        if stream is None or core is None:
            return
        stream.write(core.reply(reply_code_for(status)))
        if status is not ConnectStatus.OK:
            del self.streams[stream_id]
            self.freed(stream_id)
            stream.finish()
            return
        stream.reading = True
        if core.early_data:
            self.tunnel.send(TCP_PACKET.build(stream_id, core.early_data))
        stream.update()

    def freed(self, stream_id: int) -> None:
        self.free_ids.append(stream_id)
        self.socks.pop(stream_id, None)

    def tunnel_lost(self) -> None:
        print("Disconnected", flush=True)
        sys.exit(0)


def drive(sock: socket.socket, core: ClientHandshake | ServerHandshake) -> bool:
    """Run a handshake core on a blocking socket; False if it did not end logged in."""
    sock.settimeout(HANDSHAKE_TIMEOUT)
    while not core.finished:
        data = sock.recv(core.bytes_needed)
        if not data:
            return False
        reply = core.receive(data)
        if reply:
            sock.sendall(reply)
    return core.phase is Phase.DONE and core.session.dialect is Dialect.LEGACY_3_0


def listen(text: str) -> socket.socket:
    host, port = text.rsplit(":", 1)
    sock = socket.create_server((host, int(port)), reuse_port=False)
    sock.setblocking(False)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    return sock


def serve(users: str, address: str) -> None:
    loop, directory, listener = Loop(), UserDirectory(users), listen(address)

    def accept(_mask: int) -> None:
        sock, _ = listener.accept()
        core = ServerHandshake(directory, allow_legacy=True)
        try:
            logged_in = drive(sock, core)
        except OSError:
            logged_in = False
        if not logged_in:
            sock.close()
            return
        ServerEnd(loop, sock, core.session, core.leftover)

    loop.watch(listener, READ, accept)
    loop.run()


def client(key: str, server: str, address: str) -> None:
    host, port = server.rsplit(":", 1)
    loop, tunnel = Loop(), socket.create_connection((host, int(port)), HANDSHAKE_TIMEOUT)
    core = ClientHandshake(load_client_key(key), Dialect.LEGACY_3_0)
    tunnel.sendall(core.start())
    if not drive(tunnel, core):
        sys.exit("login failed")
    end = ClientEnd(loop, tunnel, core.session)
    listener = listen(address)
    loop.watch(listener, READ, lambda _mask: end.accept(listener.accept()[0]))
    loop.run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="java_peer", description=__doc__.split("\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    server_role = roles.add_parser("server")
    server_role.add_argument("--users", required=True)
    server_role.add_argument("--listen", default="127.0.0.1:0")
    client_role = roles.add_parser("client")
    client_role.add_argument("--key", required=True)
    client_role.add_argument("--server", required=True)
    client_role.add_argument("--socks", default="127.0.0.1:0")
    options = parser.parse_args()
    if options.role == "server":
        serve(options.users, options.listen)
    else:
        client(options.key, options.server, options.socks)


if __name__ == "__main__":
    main()
