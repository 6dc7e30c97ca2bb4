"""The HTTP proxy on the client's port: one greenlet per client connection, on ``HttpProxy``.

Requests are served one after another (pipelined ones wait in h11's buffer). A CONNECT
becomes a relay of the client socket itself, like a SOCKS CONNECT. An absolute-URI request
goes to an upstream connection: one end of a socket pair whose other end the ``Router``
carries (through the tunnel or straight out), so both ways out serve HTTP alike. The upstream
stays open for the next request to the same host and port; a request to another host closes
it (an EOF: the target's server ends the connection) and opens the next.

Deadlines: 10 s for each request head from its first byte, 60 s of quiet between requests,
the relay's idle timeout (300 s) while a body or a response waits. A head over 64 KiB gets
431, a slow one 408, and the connection closes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Protocol

import gevent
from gevent import socket as gsocket

from jproxy.config import host_port_text
from jproxy.handlers.net.admission import Doorway, Evicted
from jproxy.handlers.net.router import Refused, Router
from jproxy.handlers.net.sockets import reset, send_all, set_nodelay
from jproxy.http.proxy import (
    Answer,
    Body,
    ClientGone,
    Forward,
    HttpProxy,
    NeedData,
    ServePac,
    ToClient,
    Tunnel,
    status_for,
)
from jproxy.policy.pac import CONTENT_TYPE, pac_file
from jproxy.socks.socks5 import CredentialCheck, PlainPasswords
from schemas.jproxy import ConnectStatus


class ProxyPort(Protocol):
    """What an HTTP client needs of the port it came in on (the client's ``ClientPort``, which
    imports this module to hand its HTTP clients over)."""

    router: Router
    users: Mapping[str, str] | None
    check_login: CredentialCheck | None
    doorway: Doorway
    handshake_timeout: float
    http_head_timeout: float

    def client_slot(self, peer: tuple) -> AbstractContextManager[bool]: ...


log = logging.getLogger(__name__)

READ_SIZE = 65536
LINGER_TIME = 1.0
LINGER_BYTES = 256 * 1024
KEEPALIVE_IDLE = 60.0
"""Seconds a kept-alive client connection may stay quiet between requests."""
EGRESS_HINT = (
    "The tunnel server's egress policy refused this destination; its operator can allow it"
    " with --allow-egress CIDR[:PORTS] (or [egress] allow in its config)."
)


class _Upstream:
    """One connection towards ``host:port``, through the router, seen as a local socket."""

    def __init__(self, router: Router, user: str, peer: tuple, host: str, port: int) -> None:
        self.key = (host, port)
        self.sock, far = gsocket.socketpair()
        self._stack = ExitStack()
        record = self._stack.enter_context(router.logged("http", user, peer, host, port))
        try:
            link = router.open(host, port, far, record)
        except BaseException:
            far.close()
            self.sock.close()
            self._stack.close()
            raise
        self._relay = gevent.spawn(router.serve, link)
        self._relay.link(lambda _: self._stack.close())

    def close(self, abort: bool = False) -> None:
        """EOF towards the target (it ends its side) or, on ``abort``, a reset."""
        if abort:
            reset(self.sock)
        else:
            self.sock.close()


def serve_http(port: ProxyPort, sock: socket.socket, peer: tuple) -> None:
    """Serve one HTTP client of ``port`` until it closes or errs."""
    check = port.check_login
    if check is None and port.users is not None:
        check = PlainPasswords(port.users).check
    _HttpClient(port, sock, peer, HttpProxy(check)).run()


class _HttpClient:
    def __init__(self, port: ProxyPort, sock: socket.socket, peer: tuple, core: HttpProxy) -> None:
        self.port = port
        self.router: Router = port.router
        self.sock = sock
        self.peer = peer
        self.core = core
        self.upstream: _Upstream | None = None

    def run(self) -> None:
        set_nodelay(self.sock)
        try:
            with ExitStack() as stack:
                event = self._first_request()
                if event is None:
                    return
                admitted = stack.enter_context(self.port.client_slot(self.peer))
                if not admitted:
                    self._send(self.core.answer(503, "too many connections to this proxy").data)
                    return
                while event is not None and self._handle(event):
                    event = self._next_request(KEEPALIVE_IDLE)
        except OSError as error:
            log.debug("HTTP client %s:%d: %s", self.peer[0], self.peer[1], error)
        finally:
            if self.upstream is not None:
                self.upstream.close()
            self._linger_close()

    def _linger_close(self) -> None:
        """Close after an answer the client may still be sending into (an oversized head, a
        refused body): stop writing, then read and drop its bytes for a moment, bounded in
        time and size, so the kernel does not reset the connection and lose the answer."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(LINGER_TIME, False):
                drained = 0
                while drained < LINGER_BYTES:
                    chunk = self.sock.recv(READ_SIZE)
                    if not chunk:
                        break
                    drained += len(chunk)
        except OSError:
            pass
        self.sock.close()

    # --- request heads ---------------------------------------------------------------------

    def _first_request(self):
        try:
            with self.port.doorway.waiting(self.peer[0]):
                event = self._next_request(self.port.handshake_timeout)
                self.port.doorway.done_waiting()
                return event
        except Evicted:
            return None

    def _next_request(self, idle: float):
        """The next request's decision; None when the client is gone or timed out (after a
        408 when a head had begun)."""
        core = self.core
        event = core.next_request()
        if isinstance(event, NeedData):
            try:
                with gevent.Timeout(idle):
                    self._feed()
            except gevent.Timeout:
                return None
            event = core.next_request()
        if isinstance(event, NeedData):
            try:
                with gevent.Timeout(self.port.http_head_timeout):
                    while isinstance(event, NeedData):
                        self._feed()
                        event = core.next_request()
            except gevent.Timeout:
                return core.answer(408, "the request head took too long")
        return None if isinstance(event, ClientGone) else event

    def _feed(self) -> None:
        self.core.receive(self.sock.recv(READ_SIZE))

    # --- requests ------------------------------------------------------------------------

    def _handle(self, event) -> bool:
        """Serve one request; whether the connection goes on."""
        if isinstance(event, Answer):
            self._send(event.data)
            if event.status >= 400:
                log.info("HTTP client %s:%d: %d %s", *self.peer[:2], event.status, event.reason)
            return not event.close
        if isinstance(event, ServePac):
            proxy = host_port_text(self.sock.getsockname())
            text = pac_file(self.router.rules, proxy)
            self._send(self.core.answer(200, text, content_type=CONTENT_TYPE.encode()).data)
            return False
        if isinstance(event, Tunnel):
            self._tunnel(event)
            return False
        return self._forward(event)

    def _refusal(self, refused: Refused) -> Answer:
        status = status_for(refused.status)
        text = refused.reason
        if refused.by_server and refused.status is ConnectStatus.NOT_ALLOWED:
            text += "\n" + EGRESS_HINT
        return self.core.answer(status, text)

    def _tunnel(self, request: Tunnel) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        router = self.router
        with router.logged("http", self.core.user, self.peer, request.host, request.port) as record:
            try:
                link = router.open(request.host, request.port, self.sock, record)
            except Refused as refused:
                self._send(self._refusal(refused).data)
                return
            established, early = self.core.tunnel_established()
            try:
                send_all(self.sock, established)
            except OSError:
                pass  # the relay notices
            router.serve(link, early)

    def _forward(self, request: Forward) -> bool:
        core = self.core
        if self.upstream is not None and self.upstream.key != (request.host, request.port):
            self.upstream.close()
            self.upstream = None
        if self.upstream is None:
            try:
                self.upstream = _Upstream(
                    self.router, core.user, self.peer, request.host, request.port
                )
            except Refused as refused:
                self._send(self._refusal(refused).data)
                return False
        upstream = self.upstream
        if request.interim:
            self._send(request.interim)
        try:
            ok = self._send_request(upstream, request.head) and self._relay_response(upstream)
        except gevent.Timeout:
            self._send(core.answer(504, "the target did not answer in time").data)
            ok = False
        if not ok:
            self.upstream = None
            upstream.close(abort=True)
            return False
        goes_on, reusable = core.finish_exchange()
        if not reusable:
            self.upstream = None
            upstream.close()
        return goes_on

    def _send_request(self, upstream: _Upstream, head: bytes) -> bool:
        try:
            send_all(upstream.sock, head)
        except OSError:
            self._send(self.core.answer(502, "the connection to the target broke").data)
            return False
        idle = self.router.idle_timeout
        while True:
            piece = self.core.next_body()
            if isinstance(piece, NeedData):
                with gevent.Timeout(idle):
                    self._feed()
                continue
            if isinstance(piece, Answer):
                self._send(piece.data)
                return False
            assert isinstance(piece, Body)
            if piece.data:
                try:
                    send_all(upstream.sock, piece.data)
                except OSError:
                    break  # the target may have answered early: read its response
            if piece.done:
                break
        return True

    def _relay_response(self, upstream: _Upstream) -> bool:
        """The response to the client, each batch of what h11 made of one read in one send
        (a head and a body sent apart would wait on Nagle and delayed ACKs)."""
        core = self.core
        idle = self.router.idle_timeout
        out: list[bytes] = []
        while True:
            piece = core.next_response()
            if isinstance(piece, NeedData):
                if out:
                    send_all(self.sock, b"".join(out))
                    out.clear()
                with gevent.Timeout(idle):
                    try:
                        data = upstream.sock.recv(READ_SIZE)
                    except OSError:
                        data = b""
                core.receive_upstream(data)
                continue
            if piece is None:  # broken after the response began: the client must see it
                reset(self.sock)
                return False
            if isinstance(piece, Answer):
                self._send(piece.data)
                return False
            assert isinstance(piece, ToClient)
            out.append(piece.data)
            if piece.done:
                send_all(self.sock, b"".join(out))
                return True

    def _send(self, data: bytes) -> None:
        try:
            send_all(self.sock, data)
        except OSError:
            pass
