"""``gjproxy client``'s tunnels: ``--tunnels N`` to each server in use, kept up and watched.

The decisions are the balancer's (``jproxy.tunnel.balance``: health, strategy, stickiness);
this module carries them out with greenlets. One watcher greenlet, every ``WATCH_INTERVAL``:

- reports each round trip of the keepalive pings the core sends every 3.1 tunnel once per
  interval, busy or not; a ping unanswered for ``missed_after`` marks its server failing at
  once, so the next
  server is dialed in parallel with the stuck one (which stays, and dies by itself if its
  server never answers: ``jproxy.tunnel.mux.DEAD_AFTER``);
- dials the tunnels the balancer wants and whose backoff is over (one probe at a time to a
  failing server), and closes the tunnels of servers no longer wanted once their streams end.

Each tunnel runs in its own greenlet from login to end; a broken one is rebuilt alone, its
streams reset as before. A new stream waits up to ``connect_timeout`` for a tunnel (then the
SOCKS client gets 0x01), goes to the server the balancer chooses, and there to the tunnel with
the fewest open channels (ties: fewest bytes in flight).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import gevent
from gevent.event import AsyncResult, Event

from jproxy.config import host_port_text
from jproxy.handlers.tunnel.client import open_tunnel, serve_tunnel
from jproxy.handlers.tunnel.datagrams import TunnelDatagrams
from jproxy.handlers.tunnel.driver import Tunnel
from jproxy.handlers.tunnel.keylog import KeyLog
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.handlers.tunnel.relay import StreamRelay
from jproxy.metrics import Counters
from jproxy.policy.backoff import retry_delay
from jproxy.policy.hostnames import for_log
from jproxy.tuning import RelayTuning
from jproxy.tunnel.balance import (
    Balancer,
    Health,
    Load,
    Strategy,
    least_loaded,
    missed_after,
)
from jproxy.tunnel.handshake import (
    KeyRejected,
    LegacyServer,
    LoginError,
    VersionRefused,
    version_text,
)
from jproxy.tunnel.keys import ClientKey
from jproxy.tunnel.mux import DEFAULT_IDLE_TIMEOUT, DEFAULT_WINDOW, KEEPALIVE_INTERVAL
from schemas.jproxy import ConnectStatus, Dialect

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25
CONNECT_TIMEOUT = 10.0
"""Seconds a new stream waits for a tunnel while none is up; then it fails (SOCKS 0x01)."""
_DRAIN_POLL = 0.1
STABLE_AFTER = 10.0
"""A tunnel that lived this long before it ended is rebuilt after the shortest wait."""
FINAL_LOGIN_ERRORS = (KeyRejected, VersionRefused, LegacyServer)
"""Login failures that retrying cannot fix (a refused key, a wrong dialect); every other one
(a dropped connection, a stall, a garbled reply) could be passing and is retried."""


class Rerouted(gevent.Timeout):
    """Raised in a stream waiting for its connect answer on a tunnel whose server missed a
    keepalive: the pool asks for it again on another tunnel. A Timeout, so that the tunnel
    closes the request's channel as it does when the answer is late."""


@dataclass
class _Slot:
    """One of a server's ``--tunnels`` places: its tunnel while up."""

    number: int
    tunnel: Tunnel | None = None
    dialing: bool = False
    next_dial_at: float = 0.0
    failures: int = 0
    """Tunnels of this place that ended young in a row: the next dial waits ``retry_delay``
    of it, so a server that takes logins and drops them at once is not dialed in a loop."""
    sampled: float | None = None
    """The last pong reported as a round trip."""
    missed: float | None = None
    """The ping already reported as missed."""


@dataclass
class _Server:
    address: tuple[str, int]
    slots: list[_Slot]
    said: str | None = None
    """The last failure logged: the same one again is logged at DEBUG (said once)."""

    def tunnels(self) -> list[Tunnel]:
        return [slot.tunnel for slot in self.slots if slot.tunnel is not None]


class TunnelPool:
    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        key: ClientKey,
        dialect: Dialect,
        *,
        tunnels: int = 1,
        strategy: Strategy = Strategy.FAILOVER,
        failback_after: float | None = None,
        counters: Counters | None = None,
        tuning: RelayTuning | None = None,
        login_timeout: float = 10.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        key_log: KeyLog | None = None,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_INTERVAL,
        clock=time.monotonic,
    ) -> None:
        if not servers:
            raise ValueError("a tunnel client needs at least one server")
        self.servers = [
            _Server(address, [_Slot(number + 1) for number in range(tunnels)])
            for address in servers
        ]
        options = {} if failback_after is None else {"failback_after": failback_after}
        self.balancer = Balancer(
            [host_port_text(address) for address in servers], strategy, **options
        )
        self.per_server = tunnels
        self.dialect = dialect
        self.counters = counters or Counters()
        self.connect_timeout = connect_timeout
        self.window = window
        self.keepalive = keepalive
        """Both for the tunnels dialed from now on (SIGHUP may change them)."""
        self.clock = clock
        self._dial = partial(
            open_tunnel,
            key=key,
            dialect=dialect,
            login_timeout=login_timeout,
            key_log=key_log,
            counters=self.counters,
            tuning=tuning or RelayTuning(),
            idle_timeout=idle_timeout,
        )
        self.fatal: LoginError | None = None
        self.stopped = Event()
        self._up = Event()
        self._change = AsyncResult()
        self._watcher: gevent.Greenlet | None = None
        self._greenlets: set[gevent.Greenlet] = set()

    # --- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        self._watcher = gevent.spawn(self._watch)

    def stop(self) -> None:
        self.stopped.set()
        for tunnel in self._all_tunnels():
            tunnel.close()
        if self._watcher is not None:
            self._watcher.kill()
        gevent.joinall(list(self._greenlets), timeout=5)
        gevent.killall(list(self._greenlets))

    def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the open streams to finish by themselves."""
        deadline = time.monotonic() + grace
        while self.open_streams() and time.monotonic() < deadline:
            gevent.sleep(_DRAIN_POLL)
        left = self.open_streams()
        if left:
            log.info("grace time over: resetting %d open stream(s)", left)

    # --- what the SOCKS port and the metrics page ask ---------------------------------------

    @property
    def up(self) -> bool:
        """Whether any tunnel is up."""
        return self._up.is_set()

    def wait_until_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    @property
    def server(self) -> tuple[str, int]:
        """The server new streams go to, or tried first while no tunnel is up."""
        return self.servers[self._server_index()].address

    @property
    def server_number(self) -> int:
        """``server``'s place in the list, from 1."""
        return self._server_index() + 1

    def _server_index(self) -> int:
        current = self.balancer.current
        if current is not None:
            return current
        return next(iter(self.balancer.wanted(self.clock())), 0)  # none wanted: all refused

    @property
    def current(self) -> Tunnel | None:
        """A tunnel up now to the server in use, if any (the console's client row shows it)."""
        usable = self._usable()
        tunnels = usable.get(self.balancer.current) or next(iter(usable.values()), None)
        return tunnels[0] if tunnels else None

    def open_streams(self) -> int:
        return sum(len(tunnel.channels.channels) for tunnel in self._all_tunnels())

    def tunnel_rows(self) -> list[tuple[str, int, Tunnel | None]]:
        """Every tunnel place: (server, number, its tunnel or None), for the metrics page."""
        return [
            (host_port_text(server.address), slot.number, slot.tunnel)
            for server in self.servers
            for slot in server.slots
        ]

    def open_stream(
        self, host: str, port: int, sock: socket.socket, timeout: float
    ) -> tuple[StreamRelay, tuple[ConnectStatus, int]]:
        """A stream to ``host:port`` through the chosen tunnel (``Tunnel.open_stream``);
        asked again on another tunnel when its server misses a keepalive meanwhile."""
        deadline = self.clock() + timeout
        while True:
            tunnel = self._tunnel_for(host)
            try:
                return tunnel.open_stream(host, port, sock, max(0.0, deadline - self.clock()))
            except Rerouted:
                log.info("%s: no answer yet; asking for %s again", tunnel.name, for_log(host))

    def datagrams(self) -> TunnelDatagrams:
        """The chosen tunnel's datagram channels, for a new UDP association."""
        return self._tunnel_for(None).datagrams

    def _tunnel_for(self, host: str | None) -> Tunnel:
        """The tunnel for a new stream to ``host``; waits up to ``connect_timeout`` for one."""
        deadline = self.clock() + self.connect_timeout
        while True:
            change = self._change
            tunnel = self._choose(host)
            if tunnel is not None:
                return tunnel
            left = deadline - self.clock()
            if left <= 0 or self.stopped.is_set():
                raise TunnelClosed(f"no tunnel to a server within {self.connect_timeout:g}s")
            change.wait(left)

    def _choose(self, host: str | None) -> Tunnel | None:
        now = self.clock()
        usable = self._usable()
        index = self.balancer.choose(host, now, usable)
        if index is None:
            return None
        tunnels = usable[index]
        if len(tunnels) == 1:
            return tunnels[0]
        return tunnels[least_loaded([tunnel_load(tunnel) for tunnel in tunnels])]

    def _usable(self) -> dict[int, list[Tunnel]]:
        """Servers with a tunnel up, and those tunnels."""
        found = {}
        for index, server in enumerate(self.servers):
            tunnels = [t for t in server.tunnels() if not t.closed.is_set()]
            if tunnels:
                found[index] = tunnels
        return found

    def _all_tunnels(self) -> list[Tunnel]:
        return [tunnel for server in self.servers for tunnel in server.tunnels()]

    def _changed(self) -> None:
        """Wake the streams that wait for a tunnel."""
        change, self._change = self._change, AsyncResult()
        change.set()
        if any(server.tunnels() for server in self.servers):
            self._up.set()
        else:
            self._up.clear()

    # --- the watcher ------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self.stopped.is_set():
            self.tick(self.clock())
            self.stopped.wait(WATCH_INTERVAL)

    def tick(self, now: float) -> None:
        """One round of the watcher: keepalives, health, dials and closes."""
        for index, server in enumerate(self.servers):
            for slot in server.slots:
                if slot.tunnel is not None and slot.tunnel.channels.secure:
                    self._keepalive(index, slot, now)
        for line in self.balancer.update(now, self._usable()):
            log.info("%s", line)
        wanted = self.balancer.wanted(now)
        for index, server in enumerate(self.servers):
            if index in wanted:
                self._dial_missing(index, server, now)
            else:
                self._close_idle(server)
        self._changed()

    def _keepalive(self, index: int, slot: _Slot, now: float) -> None:
        """Report the round trip of the core's last ping, or its being missed."""
        channels, balancer = slot.tunnel.channels, self.balancer
        pinged, ponged = channels.pinged_at, channels.ponged_at
        if ponged is not None and ponged >= pinged and slot.sampled != ponged:
            slot.sampled = ponged
            balancer.rtt_sample(index, ponged - pinged, now)
        answered = ponged is not None and ponged >= pinged
        late = now - pinged > missed_after(self.keepalive, balancer.servers[index].rtt)
        if not answered and late and slot.missed != pinged:
            slot.missed = pinged
            why = f"keepalive unanswered for {now - pinged:.1f}s"
            log.warning("%s: %s; trying the other servers", slot.tunnel.name, why)
            balancer.missed(index, now, why)
            slot.tunnel.fail_pending(Rerouted)

    def _dial_missing(self, index: int, server: _Server, now: float) -> None:
        if not self.balancer.may_dial(index, now, alone=not self._up.is_set()):
            return
        slots = server.slots
        busy = [slot for slot in slots if slot.tunnel is not None or slot.dialing]
        if busy and self.balancer.servers[index].health is Health.FAILING:
            return  # one probe at a time to a failing server
        for slot in slots:
            if slot.tunnel is None and not slot.dialing and now >= slot.next_dial_at:
                slot.dialing = True
                greenlet = gevent.spawn(self._run_slot, index, server, slot)
                self._greenlets.add(greenlet)
                greenlet.link(self._greenlets.discard)
                if not busy and self.balancer.servers[index].health is not Health.UP:
                    return  # the first login to a server not known to be up goes alone

    def _close_idle(self, server: _Server) -> None:
        """A server no longer wanted: its tunnels close once nothing runs through them."""
        for tunnel in server.tunnels():
            if tunnel.closed.is_set():
                continue  # closing already
            if not tunnel.channels.channels:  # every kind of channel
                log.info("%s: no longer in use, closing", tunnel.name)
                tunnel.close()

    # --- one tunnel -------------------------------------------------------------------------

    def _name(self, server: _Server, slot: _Slot) -> str:
        number = f" #{slot.number}" if self.per_server > 1 else ""
        return f"tunnel to {host_port_text(server.address)}{number}"

    def _run_slot(self, index: int, server: _Server, slot: _Slot) -> None:
        """Log in, serve the tunnel until it ends, report each step to the balancer."""
        where = host_port_text(server.address)
        try:
            tunnel = self._dial(server.address, window=self.window, keepalive=self.keepalive)
        except LoginError as error:
            self._failed(index, server, slot, f"tunnel login at {where} failed: {error}", error)
            return
        except (OSError, gevent.Timeout) as error:
            self._failed(index, server, slot, f"cannot reach the server {where}: {error}", None)
            return
        tunnel.name = self._name(server, slot)
        up_at = self.clock()
        server.said = None
        self.balancer.login_ok(index, up_at)
        log.info("%s: up (dialect %s)", tunnel.name, version_text(self.dialect))
        slot.tunnel, slot.dialing = tunnel, False
        self._changed()
        try:
            serve_tunnel(tunnel)
        finally:
            slot.tunnel = None
            now = self.clock()
            if now - up_at >= STABLE_AFTER:
                slot.failures = 0
            slot.failures += 1
            slot.next_dial_at = now + retry_delay(slot.failures, random.random())
            self._changed()
            if not self.stopped.is_set():
                level = logging.INFO if tunnel.planned else logging.WARNING
                log.log(level, "%s: lost, reconnecting", tunnel.name)

    def _failed(
        self, index: int, server: _Server, slot: _Slot, text: str, error: LoginError | None
    ) -> None:
        final = isinstance(error, FINAL_LOGIN_ERRORS)
        now = self.clock()
        self.balancer.login_failed(index, now, text, final=final)  # its backoff: retry_at
        slot.dialing = False
        log.log(logging.DEBUG if text == server.said else logging.WARNING, "%s", text)
        server.said = text
        if self.balancer.given_up and not self.stopped.is_set():
            log.error("giving up: %s", error)
            self.fatal = error
            self.stopped.set()
        self._changed()


def tunnel_load(tunnel: Tunnel) -> Load:
    """A tunnel's open channels (of every kind) and bytes in flight (sent on its streams but
    not yet granted back by the peer's window updates)."""
    channels = tunnel.channels
    return Load(len(channels.channels), channels.in_flight)
