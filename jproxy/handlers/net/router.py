"""The client's way out for one destination: through the tunnel, straight out, or refused.

Every TCP destination of the client's port (SOCKS5, SOCKS4/4a, HTTP) goes through ``Router``:
the routing rules (``jproxy.policy.rules``) decide, a ``,resolve`` rule gets the name's
addresses from the resolver first, and then

- TUNNEL opens a stream of the tunnel (the server resolves the name and applies its egress
  policy);
- DIRECT connects from the client's host through the one ``Dialer``, whose egress policy here
  allows everything except the client's own listening ports (a DIRECT rule that names the
  proxy's own port would loop);
- REJECT refuses with "not allowed" (SOCKS 0x02 / 91, HTTP 403).

Each connection leaves one access-log record, the server's format plus ``route`` and ``rule``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import gevent

from jproxy.config import host_port_text
from jproxy.handlers.console.live import NO_CONSOLE
from jproxy.handlers.dns.resolver import ResolveError, SystemResolver
from jproxy.handlers.logs.access import AccessLog, AccessRecord
from jproxy.handlers.net.dialer import Dialer, DialError
from jproxy.handlers.net.sockets import set_nodelay
from jproxy.handlers.socks.plain_udp import DirectRoutes
from jproxy.handlers.socks.splice import Splice
from jproxy.handlers.socks.udp_relay import RouteFailed, Routes, SocksUdpRelay
from jproxy.handlers.tunnel.link import TunnelClosed
from jproxy.handlers.tunnel.pool import TunnelPool
from jproxy.handlers.tunnel.relay import StreamRelay
from jproxy.metrics import ServiceCounters
from jproxy.policy.egress import EgressPolicy
from jproxy.policy.hostnames import for_log
from jproxy.policy.rules import Action, Decision, NeedAddresses, RuleSet
from jproxy.socks.udp_association import Drop, Route
from jproxy.tuning import RelayTuning
from jproxy.tunnel.mux import Ending, Exhausted
from jproxy.tunnel.statuses import status_text
from schemas.jproxy import ConnectStatus

log = logging.getLogger(__name__)

DIRECT_TIMEOUT = 10.0
"""Connect deadline of a DIRECT connection, name lookup included."""
CONNECT_TIMEOUT = 20.0
"""How long a client waits for the tunnel's connect answer (the server's own timeout is 10 s)."""
DIRECT_SERVICE = "direct"


class Refused(Exception):
    """No connection: the ``status`` to answer with, and why (for the log and HTTP bodies)."""

    def __init__(self, status: ConnectStatus, reason: str, *, by_server: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.by_server = by_server
        """the tunnel server refused (its egress policy, for NOT_ALLOWED)"""


@dataclass
class Link:
    """An open way to the target that carries a client socket: ``run`` relays until the end."""

    relay: Splice | StreamRelay
    record: AccessRecord
    direct: bool
    host: str
    port: int

    def run(self, early_data: bytes = b"") -> None:
        self.relay.run(early_data)
        if self.direct:
            self.record.bytes_up, self.record.bytes_down = (
                self.relay.bytes_up,
                self.relay.bytes_down,
            )
        else:
            self.record.bytes_up, self.record.bytes_down = self.relay.bytes_out, self.relay.bytes_in
        self.record.ended = self.relay.ending


class Router:
    """Routes, opens and logs the client's TCP destinations; ``rules`` may be replaced while
    running (SIGHUP). The ``console`` lists the tunnel's streams; refusals reach it as access
    records (the access log's observer)."""

    console = NO_CONSOLE

    def __init__(
        self,
        tunnels: TunnelPool,
        rules: RuleSet,
        dialer: Dialer,
        access_log: AccessLog,
        *,
        tuning: RelayTuning | None = None,
        idle_timeout: float = 300.0,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.tunnels = tunnels
        self.rules = rules
        self.dialer = dialer
        self.access_log = access_log
        self.counters = tunnels.counters
        self.counters.by_service.setdefault(DIRECT_SERVICE, ServiceCounters())
        self.tuning = tuning or RelayTuning()
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout

    def decide(self, host: str, port: int) -> Decision:
        """The rules' decision; a ``,resolve`` rule resolves the name here (unresolvable:
        no address matches)."""
        decision = self.rules.decide(host, port)
        if isinstance(decision, NeedAddresses):
            try:
                addresses = self.dialer.resolver.resolve(host, self.dialer.connect_timeout)
            except ResolveError as error:
                log.info("rules: %s does not resolve (%s)", for_log(host), error)
                addresses = []
            decision = self.rules.decide(host, port, addresses)
        return decision

    @contextlib.contextmanager
    def logged(
        self, service: str, user: str, peer: tuple, host: str, port: int
    ) -> Iterator[AccessRecord]:
        """One access-log record for the connection made inside, written when it ends."""
        record = AccessRecord(
            service, user, host_port_text(peer), host_port_text((host, port)), time.time()
        )
        started = time.monotonic()
        try:
            yield record
        finally:
            record.duration = time.monotonic() - started
            self.access_log.write(record)

    def open(
        self,
        host: str,
        port: int,
        sock: socket.socket,
        record: AccessRecord,
        *,
        action: Action | None = None,
    ) -> Link:
        """A link carrying ``sock`` to ``host:port``, or ``Refused``; ``record`` gets filled.
        ``action`` skips the rules (port forwards always use the tunnel)."""
        decision = self.decide(host, port) if action is None else Decision(action, "forward")
        record.route, record.rule = decision.action.value, decision.rule
        started = time.monotonic()
        try:
            if decision.action is Action.REJECT:
                raise Refused(ConnectStatus.NOT_ALLOWED, f"rejected by the rule {decision.rule}")
            if decision.action is Action.DIRECT:
                link = self._direct(host, port, sock, record)
            else:
                link = self._tunnel(host, port, sock, record)
        except Refused as refused:
            record.status, record.reason = refused.status.name, refused.reason
            record.ended = (
                Ending.REFUSED if refused.status is ConnectStatus.NOT_ALLOWED else Ending.FAILED
            )
            log.info("CONNECT %s:%d: %s", for_log(host), port, refused.reason)
            raise
        finally:
            record.connect_ms = int((time.monotonic() - started) * 1000)
        record.status = ConnectStatus.OK.name
        return link

    def serve(self, link: Link, early_data: bytes = b"") -> None:
        """Relay ``link`` to its end, counted as one open connection."""
        service = DIRECT_SERVICE if link.direct else "tunnel"
        self.counters.connection_opened(service)
        shown = None
        if not link.direct:
            shown = self.console.stream(link.relay, link.record.client, link.host, link.port)
        try:
            link.run(early_data)
        finally:
            self.counters.connection_closed(service)
            if not link.direct:
                self.console.closed(shown)

    def _direct(self, host: str, port: int, sock: socket.socket, record: AccessRecord) -> Link:
        try:
            out, address = self.dialer.connect(host, port)
        except DialError as error:
            raise Refused(error.status, error.reason) from None
        record.connected = host_port_text(address)
        set_nodelay(out)
        splice = Splice(
            sock,
            out,
            counters=self.counters,
            service=DIRECT_SERVICE,
            tuning=self.tuning,
            idle_timeout=self.idle_timeout,
        )
        return Link(splice, record, True, host, port)

    def _tunnel(self, host: str, port: int, sock: socket.socket, record: AccessRecord) -> Link:
        try:
            relay, (status, _) = self.tunnels.open_stream(host, port, sock, self.connect_timeout)
        except (TunnelClosed, Exhausted) as error:
            raise Refused(ConnectStatus.GENERAL_FAILURE, str(error) or "no tunnel") from None
        except gevent.Timeout:
            raise Refused(ConnectStatus.TIMED_OUT, "no answer from the server") from None
        if status is not ConnectStatus.OK:
            raise Refused(status, f"server says {status_text(status)}", by_server=True)
        record.connected = "tunnel"
        return Link(relay, record, False, host, port)


class RuledUdpRoutes:
    """A SOCKS UDP association's routes on the client: each destination goes the way the
    rules say, through the tunnel (``TunnelRoutes``) or straight out (``DirectRoutes``, the
    server's plain-port routes, here on the client's dialer); a rejected one is dropped.
    Each destination leaves one access-log record (``transport`` udp, with route and rule)."""

    def __init__(self, router: Router, tunnel: Routes, *, user: str, peer: tuple) -> None:
        self.router = router
        self.tunnel = tunnel
        self.user = user
        self.client = host_port_text(peer)
        self.direct = DirectRoutes(
            router.dialer,
            router.counters,
            router.access_log,
            user=user,
            client=self.client,
            service=DIRECT_SERVICE,
        )
        self._ways: dict[Route, tuple[Routes, AccessRecord | None]] = {}

    def usable(self) -> bool:
        return self.tunnel.usable()

    def open(self, route: Route, relay: SocksUdpRelay) -> None:
        decision = self.router.decide(route.host, route.port)
        if decision.action is Action.DIRECT:
            self.direct.route, self.direct.rule = decision.action.value, decision.rule
            self.direct.open(route, relay)  # it writes its own record
            self._ways[route] = (self.direct, None)
            return
        record = AccessRecord(
            "socks5",
            self.user,
            self.client,
            host_port_text((route.host, route.port)),
            time.time(),
            transport="udp",
            route=decision.action.value,
            rule=decision.rule,
        )
        if decision.action is Action.REJECT:
            log.info(
                "UDP %s:%d rejected by the rule %s", for_log(route.host), route.port, decision.rule
            )
            record.status, record.ended = ConnectStatus.NOT_ALLOWED.name, Ending.REFUSED
            record.reason = f"rejected by the rule {decision.rule}"
            self.router.access_log.write(record)
            raise RouteFailed(Drop.REFUSED, lasting=True)
        started = time.monotonic()
        try:
            self.tunnel.open(route, relay)
        except RouteFailed:
            record.ended, record.reason = Ending.FAILED, "no answer from the server"
            record.duration = time.monotonic() - started
            self.router.access_log.write(record)
            raise
        record.status, record.connected = ConnectStatus.OK.name, "tunnel"
        record.connect_ms = int((time.monotonic() - started) * 1000)
        self._ways[route] = (self.tunnel, record)

    def send(self, route: Route, payload: bytes) -> None:
        way, record = self._ways[route]
        if record is not None:
            record.bytes_up += len(payload)
        way.send(route, payload)

    def close(self, route: Route, ending: Ending) -> None:
        way, record = self._ways.pop(route, (None, None))
        if way is None:
            return
        way.close(route, ending)
        if record is not None:
            record.ended = ending
            record.duration = time.time() - record.started
            self.router.access_log.write(record)


def direct_dialer(own_listeners: list[tuple[str, int]], connect_timeout: float) -> Dialer:
    """The client's dialer for DIRECT: every address allowed but the client's own ports."""
    policy = EgressPolicy.from_rules(["0.0.0.0/0", "::/0"], []).listening_on(own_listeners)
    return Dialer(SystemResolver(), policy, connect_timeout)


def client_router(
    tunnels: TunnelPool, rules: RuleSet | None = None, access_log: str = ""
) -> Router:
    """A router with the client's defaults: every destination through the tunnel unless
    ``rules`` say otherwise; records to ``access_log`` (a file, ``-``, or the logger)."""
    return Router(
        tunnels,
        rules or RuleSet(),
        direct_dialer([], DIRECT_TIMEOUT),
        AccessLog(access_log or None),
    )
