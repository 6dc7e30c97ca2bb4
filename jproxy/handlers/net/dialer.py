"""The one dialer of the server: host check, resolve, egress policy, connect.

Tunnel streams, UDP associations and plain SOCKS all leave the server through a ``Dialer``,
so they share the same statuses, deadline, policy and fd budget. ``connect`` fails with one
exception type, ``DialError``, carrying the wire's ``ConnectStatus`` and a reason for the
access log; nothing else escapes it.

Order: the host text is checked (``jproxy.policy.hostnames``); an IP literal skips the resolver;
every resolved address is judged by the egress policy (``jproxy.policy.egress``) just before any
connect; the allowed ones are tried in order, all within one connect deadline that also
covers the resolver.
"""

from __future__ import annotations

import errno
import socket
import time
import weakref
from typing import NamedTuple

from gevent import socket as gsocket

from jproxy.handlers.dns.resolver import ResolveError, Resolver
from jproxy.handlers.net.sockets import connect
from jproxy.policy.egress import Address, EgressPolicy
from jproxy.policy.fds import FdBudget, fair_share
from jproxy.policy.hostnames import InvalidHost, check_host, ip_literal
from jproxy.tunnel.mux import Ending
from schemas.jproxy import ConnectStatus

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE}


class DialError(Exception):
    """An outbound connection that did not happen: the status to answer and why (for logs)."""

    def __init__(self, status: ConnectStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def ending(self) -> Ending:
        """How the request it ends is logged: refused (the egress policy) or failed."""
        return Ending.REFUSED if self.status is ConnectStatus.NOT_ALLOWED else Ending.FAILED


class Connected(NamedTuple):
    sock: socket.socket
    address: tuple[str, int]


class Origins:
    """Who asked for each open outbound TCP connection of the server, by its local address.

    A tunnel or plain SOCKS user may connect back to the server's own admin or SOCKS port (when
    the egress policy allows it); that listener then sees the server's own address. ``of``
    tells it where the connection really comes from, so login throttles key guesses by their
    origin and do not delay the operator who logs in from that same address. Sockets are held
    weakly: the table never outlives the connections.
    """

    def __init__(self) -> None:
        self._by_local: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._origin: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def record(self, sock: socket.socket, origin: str) -> None:
        try:
            local = sock.getsockname()[:2]
        except OSError:
            return
        self._by_local[local] = sock
        self._origin[sock] = origin

    def of(self, peer: tuple) -> str | None:
        """The origin of the connection that arrives from ``peer``, if the server opened it."""
        sock = self._by_local.get(tuple(peer[:2]))
        if sock is None or sock.fileno() == -1:
            return None
        return self._origin.get(sock)


class FdShares:
    """The open sockets each owner (a user) got from the dialer, held weakly, and whether one
    more keeps the owner within its ``fair_share`` of the streams' fds."""

    def __init__(self, for_streams: int) -> None:
        self.for_streams = for_streams
        self._held: dict[str, weakref.WeakSet] = {}

    def held(self, owner: str) -> int:
        return len(self._held.get(owner, ()))

    def allows(self, owner: str) -> bool:
        if self._within(owner):
            return True
        self._forget_closed()  # closed sockets not yet collected must not count
        return self._within(owner)

    def add(self, owner: str, sock: socket.socket) -> None:
        self._held.setdefault(owner, weakref.WeakSet()).add(sock)

    def _within(self, owner: str) -> bool:
        mine = self.held(owner)
        others = sum(len(socks) for name, socks in self._held.items() if name != owner)
        return mine < fair_share(self.for_streams, others)

    def _forget_closed(self) -> None:
        for owner, socks in list(self._held.items()):
            for sock in list(socks):
                if sock.fileno() == -1:
                    socks.discard(sock)
            if not socks:
                del self._held[owner]


class Dialer:
    """``connect(host, port)`` for every outbound TCP connection of the server.

    ``policy`` may be replaced while running (the server adds its own listeners once they are
    bound); ``fds`` bounds the sockets it opens (``None``: no bound).
    """

    def __init__(
        self,
        resolver: Resolver,
        policy: EgressPolicy,
        connect_timeout: float,
        fds: FdBudget | None = None,
    ) -> None:
        self.resolver = resolver
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.fds = fds
        self.origins = Origins()
        self.shares = None if fds is None else FdShares(fds.for_streams)

    def connect(self, host: str, port: int, *, origin: str = "") -> Connected:
        """A connected TCP socket to ``host:port`` and the address it reached; else DialError.
        ``origin`` (the user and address asking) is kept in ``origins`` while it is open."""
        deadline = time.monotonic() + self.connect_timeout
        failure = None
        for address in self._allowed(host, port, deadline):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = None  # out of time: that is the failure, whatever came before
                break
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = self.open_socket(family, socket.SOCK_STREAM, owner=origin)
            sock.settimeout(remaining)
            try:
                connect(sock, (address, port))
            except OSError as error:
                sock.close()
                failure = DialError(status_for(error), f"connect to {address} port {port}: {error}")
                continue
            except BaseException:  # killed with its tunnel: the socket goes too
                sock.close()
                raise
            if origin:
                self.origins.record(sock, origin)
            return Connected(sock, (address, port))
        raise failure or DialError(
            ConnectStatus.TIMED_OUT, f"no connection in {self.connect_timeout:g} s"
        )

    def holds(self, owner: str, sock: socket.socket) -> None:
        """Count ``sock``, opened elsewhere for ``owner`` (a plain SOCKS client's own socket,
        its UDP relay socket), in the owner's fair share of fds."""
        if self.shares is not None:
            self.shares.add(owner, sock)

    def addresses_for(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` that the policy lets ``port`` reach, in the order to try,
        without connecting (UDP associations); DialError when there are none."""
        return self._allowed(host, port, time.monotonic() + self.connect_timeout)

    def open_socket(self, family: int, kind: int, *, owner: str = "") -> socket.socket:
        """A new gevent socket within the fd budget and ``owner``'s fair share of it;
        DialError(CONNECTION_LIMIT) when fds run short, so logins and admin connections keep
        theirs, or when ``owner`` holds its share, so other users keep theirs."""
        try:
            sock = gsocket.socket(family, kind)
        except OSError as error:
            if error.errno in _OUT_OF_FDS:
                raise DialError(ConnectStatus.CONNECTION_LIMIT, "out of file descriptors") from None
            raise DialError(ConnectStatus.GENERAL_FAILURE, f"no socket: {error}") from None
        if self.fds is not None and not self.fds.allows(sock.fileno()):
            sock.close()
            raise DialError(
                ConnectStatus.CONNECTION_LIMIT,
                f"file descriptors running short ({self.fds.reserve} of {self.fds.limit} kept "
                "for logins and admin)",
            )
        if self.shares is not None:
            if not self.shares.allows(owner):
                sock.close()
                raise DialError(
                    ConnectStatus.CONNECTION_LIMIT,
                    f"{owner or 'this user'} holds its fair share of file descriptors "
                    f"({self.shares.held(owner)} of {self.shares.for_streams} for streams)",
                )
            self.shares.add(owner, sock)
        return sock

    def _allowed(self, host: str, port: int, deadline: float) -> list[str]:
        literal = ip_literal(host)
        if literal is not None:  # judged as parsed here, no second parse
            candidates: list[tuple[str, str | Address]] = [(host, literal)]
        else:
            try:
                check_host(host)
                addresses = self.resolver.resolve(host, max(deadline - time.monotonic(), 0.001))
            except InvalidHost as error:
                raise DialError(ConnectStatus.UNKNOWN_HOST, str(error)) from None
            except ResolveError as error:
                raise DialError(ConnectStatus.UNKNOWN_HOST, str(error)) from None
            candidates = [(address, address) for address in addresses]
        policy = self.policy
        guarded = policy.guards_port(port)
        allowed, refusals = [], []
        for address, judged in candidates:
            this_host = guarded and is_this_host(address, port)
            verdict = policy.judge(judged, port, this_host)
            if verdict.allowed:
                allowed.append(address)
            else:
                refusals.append(f"{address} port {port}: {verdict.reason}")
        if not allowed:
            reason = "; ".join(refusals) if refusals else "the resolver returned no address"
            status = ConnectStatus.NOT_ALLOWED if refusals else ConnectStatus.UNKNOWN_HOST
            raise DialError(status, f"not allowed: {reason}" if refusals else reason)
        return allowed


def status_for(error: OSError) -> ConnectStatus:
    """The wire's connect status for a failed ``connect``."""
    if isinstance(error, TimeoutError):
        return ConnectStatus.TIMED_OUT
    if isinstance(error, ConnectionRefusedError):
        return ConnectStatus.REFUSED
    if error.errno in _UNREACHABLE:
        return ConnectStatus.UNREACHABLE
    return ConnectStatus.GENERAL_FAILURE


def is_this_host(address: str, port: int) -> bool:
    """Whether ``address`` is one of this host's own: the kernel would send from it to it.

    A UDP ``connect`` only picks the route and the source address; nothing is sent.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, port))
            source = probe.getsockname()[0]
    except OSError:
        return False
    return source == address.partition("%")[0]
