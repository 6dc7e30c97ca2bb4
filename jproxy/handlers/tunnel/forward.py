"""Port forwards through the tunnel, for programs that cannot use a proxy (``ssh -L`` style).

``--forward [BIND:]PORT:HOST:PORT`` listens on BIND:PORT (BIND 127.0.0.1 unless given) and
carries each TCP connection to HOST:PORT as one tunnel stream; ``--forward-udp`` does the same
for UDP, each local sender (address and port) getting one jProxy UDP association. Forwards
ignore the routing rules: the server resolves HOST and its egress policy applies.

A UDP sender's association idles out after ``UDP_IDLE`` seconds; at most ``MAX_SENDERS``
senders are served at once (the longest idle gives way) and ``PENDING_LIMIT`` datagrams wait
for a new association; more are dropped and counted.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import gevent
from gevent.pool import Group, Pool
from gevent.socket import wait_read

from jproxy.config import ConfigError, host_port, host_port_text
from jproxy.handlers.net.descriptors import Acceptor
from jproxy.handlers.net.router import Refused, Router
from jproxy.handlers.socks.port import LISTEN_BACKLOG
from jproxy.handlers.socks.udp_relay import ASSOCIATE_TIMEOUT, PENDING_LIMIT
from jproxy.handlers.tunnel.datagrams import AssociateFailed, TunnelDatagrams
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.policy.rules import Action
from jproxy.socks.udp_association import Drop
from jproxy.tunnel.mux import Channel, Ending, Exhausted

log = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1"
MAX_CONNECTIONS = 1024
"""TCP connections one forward serves at once."""
UDP_IDLE = 60.0
MAX_SENDERS = 256
RECV_SIZE = 65535


@dataclass(frozen=True)
class ForwardSpec:
    listen: tuple[str, int]
    target: tuple[str, int]

    @property
    def text(self) -> str:
        return f"{host_port_text(self.listen)} -> {host_port_text(self.target)}"


def parse_forward(text: str, flag: str) -> ForwardSpec:
    """``[BIND:]PORT:HOST:PORT`` (IPv6 addresses in brackets) -> ``ForwardSpec``."""
    target_start = _split_point(text)
    if target_start is None:
        raise ConfigError(f"{flag}: expected [BIND:]PORT:HOST:PORT, got {text!r}")
    local, target = text[: target_start - 1], text[target_start:]
    listen = host_port(f"{DEFAULT_BIND}:{local}" if local.isdigit() else local, flag)
    destination = host_port(target, flag)
    if not listen[1] or not destination[1]:
        raise ConfigError(f"{flag}: ports must be 1..65535 in {text!r}")
    return ForwardSpec(listen, destination)


def _split_point(text: str) -> int | None:
    """Where HOST:PORT starts: after the local PORT (the first all-digit part after BIND)."""
    parts, index, depth, start = [], 0, 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == ":" and depth == 0:
            parts.append((start, text[start:index]))
            start = index + 1
    parts.append((start, text[start:]))
    if len(parts) == 3:  # PORT:HOST:PORT
        return parts[1][0] if parts[0][1].isdigit() else None
    if len(parts) == 4:  # BIND:PORT:HOST:PORT
        return parts[2][0] if parts[1][1].isdigit() else None
    return None


class TcpForward:
    """One ``--forward``: a listener whose connections become streams to the target."""

    def __init__(self, spec: ForwardSpec, router: Router) -> None:
        self.spec = spec
        self.router = router
        pool = Pool(MAX_CONNECTIONS)  # when full, newcomers wait in the listen backlog
        self._server = Acceptor(spec.listen, self._handle, spawn=pool, backlog=LISTEN_BACKLOG)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address[:2]

    def start(self) -> None:
        self._server.start()
        log.info(
            "forwarding TCP %s -> %s",
            host_port_text(self.address),
            host_port_text(self.spec.target),
        )

    def stop(self, timeout: float = 1.0) -> None:
        self._server.stop(timeout)

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        host, port = self.spec.target
        router = self.router
        with router.logged("forward", "", peer, host, port) as record:
            try:
                link = router.open(host, port, sock, record, action=Action.TUNNEL)
            except Refused:
                sock.close()
                return
            router.serve(link)


@dataclass(eq=False)
class _Sender:
    address: tuple
    last_used: float
    channel: Channel | None = None
    datagrams: TunnelDatagrams | None = None
    pending: deque = field(default_factory=deque)


class UdpForward:
    """One ``--forward-udp``: each local sender's datagrams travel in a jProxy association."""

    def __init__(self, spec: ForwardSpec, router: Router) -> None:
        self.spec = spec
        self.router = router
        self.counters = router.counters
        family = socket.AF_INET6 if ":" in spec.listen[0] else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self._senders: dict[tuple, _Sender] = {}
        self._greenlets = Group()

    @property
    def address(self) -> tuple[str, int]:
        return self.udp.getsockname()[:2]

    def start(self) -> None:
        self.udp.bind(self.spec.listen)
        self.udp.setblocking(False)
        self._greenlets.spawn(self._read)
        self._greenlets.spawn(self._sweep)
        log.info(
            "forwarding UDP %s -> %s",
            host_port_text(self.address),
            host_port_text(self.spec.target),
        )

    def stop(self, timeout: float = 1.0) -> None:
        self._greenlets.kill()
        for sender in list(self._senders.values()):
            self._end(sender)
        self.udp.close()

    def _read(self) -> None:
        while True:
            wait_read(self.udp.fileno())
            while True:
                try:
                    datagram, source = self.udp.recvfrom(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                self._from_sender(source, datagram)

    def _from_sender(self, source: tuple, datagram: bytes) -> None:
        now = time.monotonic()
        sender = self._senders.get(source)
        if sender is None:
            if len(self._senders) >= MAX_SENDERS:
                self._end(min(self._senders.values(), key=lambda one: one.last_used))
            sender = self._senders[source] = _Sender(source, now)
            sender.pending.append(datagram)
            self._greenlets.spawn(self._associate, sender)
            return
        sender.last_used = now
        if sender.channel is not None:
            sender.datagrams.send(sender.channel, datagram)
        elif len(sender.pending) < PENDING_LIMIT:
            sender.pending.append(datagram)
        else:
            self.counters.datagram_dropped(Drop.QUEUE_FULL.value)

    def _associate(self, sender: _Sender) -> None:
        host, port = self.spec.target
        try:
            datagrams = self.router.tunnels.datagrams()
            channel = datagrams.associate(host, port, _SenderSink(self, sender), ASSOCIATE_TIMEOUT)
        except (AssociateFailed, TunnelClosed, Exhausted, gevent.Timeout) as error:
            log.info(
                "UDP forward to %s failed: %s",
                host_port_text(self.spec.target),
                error or "no answer",
            )
            for _ in sender.pending:
                self.counters.datagram_dropped(Drop.UNANSWERED.value)
            self._senders.pop(sender.address, None)
            return
        if self._senders.get(sender.address) is not sender:  # evicted meanwhile
            datagrams.dissociate(channel, Ending.CLOSED)
            return
        sender.datagrams, sender.channel = datagrams, channel
        while sender.pending:
            datagrams.send(channel, sender.pending.popleft())

    def to_sender(self, sender: _Sender, data: bytes) -> None:
        sender.last_used = time.monotonic()
        try:
            self.udp.sendto(data, sender.address)
        except OSError:
            self.counters.datagram_dropped(Drop.QUEUE_FULL.value)

    def _sweep(self) -> None:
        while True:
            gevent.sleep(1.0)
            now = time.monotonic()
            for sender in list(self._senders.values()):
                if sender.channel is not None and now - sender.last_used >= UDP_IDLE:
                    self._end(sender)

    def _end(self, sender: _Sender) -> None:
        if sender.channel is not None:
            sender.datagrams.dissociate(sender.channel, Ending.CLOSED)
        self.forget(sender)

    def forget(self, sender: _Sender) -> None:
        """The association ended on the tunnel's side: the next datagram opens a new one."""
        if self._senders.get(sender.address) is sender:
            del self._senders[sender.address]
        sender.channel = None


class _SenderSink:
    def __init__(self, forward: UdpForward, sender: _Sender) -> None:
        self.forward = forward
        self.sender = sender

    def datagram(self, channel: Channel, data: bytes) -> None:
        self.forward.to_sender(self.sender, data)

    def ended(self, channel: Channel, ending: Ending) -> None:
        self.forward.forget(self.sender)
