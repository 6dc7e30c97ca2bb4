"""``gjproxy client``'s side of the tunnel: keep one tunnel up, reconnecting when it breaks.

The tunnel is (re)built in one greenlet with exponential backoff and jitter. Streams of a dead
tunnel end with it (their SOCKS sockets are closed); a stream asked for during an outage waits
up to ``outage_timeout`` for the next tunnel and then fails.
"""

from __future__ import annotations

import logging
import random
import socket
import time

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from jproxy.channels import DEFAULT_IDLE_TIMEOUT, DEFAULT_WINDOW, KEEPALIVE_INTERVAL, Channels
from jproxy.handlers.handshake import client_login
from jproxy.handlers.relay import StreamRelay
from jproxy.handlers.sockets import tune_tunnel_socket
from jproxy.handlers.tunnel import Tunnel, TunnelClosed
from jproxy.handshake import LoginError, version_text
from jproxy.keys import ClientKey
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from schemas.jproxy import ConnectStatus, Dialect, Direction

log = logging.getLogger(__name__)

BACKOFF_START = 0.2
BACKOFF_CAP = 30.0
DEFAULT_GRACE = 1.0
"""SIGTERM: a client stops promptly; its open streams get a second to finish."""
_DRAIN_POLL = 0.1


def backoff_delays(start: float = BACKOFF_START, cap: float = BACKOFF_CAP):
    """Exponential backoff with full jitter: each delay is uniform in [d/2, d], d doubling."""
    delay = start
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)


class TunnelClient:
    def __init__(
        self,
        server: tuple[str, int],
        key: ClientKey,
        dialect: Dialect,
        *,
        counters: Counters | None = None,
        tuning: RelayTuning | None = None,
        login_timeout: float = 10.0,
        outage_timeout: float = 10.0,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        self.server = server
        self.key = key
        self.dialect = dialect
        self.counters = counters or Counters()
        self.tuning = tuning or RelayTuning()
        self.login_timeout = login_timeout
        self.outage_timeout = outage_timeout
        self.idle_timeout = idle_timeout
        self.window = window
        self.keepalive = keepalive
        self.fatal: LoginError | None = None
        self.stopped = Event()
        self._tunnel: Tunnel | None = None
        self._up = Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._maintain)

    def stop(self) -> None:
        self.stopped.set()
        if self._tunnel is not None:
            self._tunnel.close()
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)
            self._greenlet.kill()

    def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the open streams to finish by themselves."""
        deadline = time.monotonic() + grace
        while self.open_streams() and time.monotonic() < deadline:
            gevent.sleep(_DRAIN_POLL)
        left = self.open_streams()
        if left:
            log.info("grace time over: resetting %d open stream(s)", left)

    def open_streams(self) -> int:
        tunnel = self._tunnel
        return len(tunnel.channels.channels) if tunnel is not None else 0

    def wait_until_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def open_stream(
        self, host: str, port: int, sock: socket.socket, timeout: float
    ) -> tuple[StreamRelay, tuple[ConnectStatus, int]]:
        """A stream through the current tunnel; waits out an outage up to ``outage_timeout``."""
        if not self._up.wait(self.outage_timeout) or self._tunnel is None:
            raise TunnelClosed("no tunnel to the server")
        return self._tunnel.open_stream(host, port, sock, timeout)

    def _maintain(self) -> None:
        delays = backoff_delays()
        while not self.stopped.is_set():
            try:
                tunnel = self._connect()
            except LoginError as error:
                if error.fatal:
                    log.error("giving up: %s", error)
                    self.fatal = error
                    self.stopped.set()
                    return
                log.warning("tunnel login failed: %s", error)
            except (OSError, gevent.Timeout) as error:
                log.warning("cannot reach the server %s:%d: %s", *self.server, error)
            else:
                delays = backoff_delays()
                self._serve(tunnel)
            if self.stopped.wait(next(delays)):
                return

    def _connect(self) -> Tunnel:
        sock = gsocket.create_connection(self.server, timeout=self.login_timeout)
        try:
            tune_tunnel_socket(sock)
            session = client_login(sock, self.key, self.dialect, self.login_timeout)
        except BaseException:
            sock.close()
            raise
        channels = Channels(
            Direction.CLIENT_TO_SERVER,
            session.dialect,
            max_message=session.max_message,
            now=time.monotonic(),
            window=self.window,
            idle_timeout=self.idle_timeout,
            keepalive=self.keepalive,
        )
        where = f"{self.server[0]}:{self.server[1]}"
        return Tunnel(
            sock,
            session,
            channels,
            counters=self.counters,
            tuning=self.tuning,
            name=f"tunnel to {where}",
        )

    def _serve(self, tunnel: Tunnel) -> None:
        log.info("%s: up (dialect %s)", tunnel.name, version_text(self.dialect))
        self._tunnel = tunnel
        self._up.set()
        channels = tunnel.channels
        # 3.1: a ping is the first frame, the proof that we hold the session key.
        first = channels.ping(time.monotonic()).value if channels.flow_control else None
        try:
            tunnel.run(first=first)
        finally:
            self._up.clear()
            self._tunnel = None
            if not self.stopped.is_set():
                level = logging.INFO if tunnel.planned else logging.WARNING
                log.log(level, "%s: lost, reconnecting", tunnel.name)
