"""The HTTP proxy side of the client's port, sans I/O, on h11 (python-hyper's HTTP/1.1 parser).

One ``HttpProxy`` serves one client connection. h11 reads the client's requests (an
``h11.SERVER`` connection) and each upstream's responses (an ``h11.CLIENT`` connection per
upstream); this module decides what they mean for a proxy:

- ``CONNECT host:port`` becomes ``Tunnel``: the driver opens the target, sends
  ``tunnel_established()`` and relays bytes from then on;
- an absolute-URI request (``GET http://host/path``) becomes ``Forward``: the request goes to
  its host in origin form, with the hop-by-hop headers removed (RFC 9110 section 7.6.1:
  ``Connection`` and every header it names, ``Keep-Alive``, ``Proxy-Connection``,
  ``Proxy-Authorization``, ``Proxy-Authenticate``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
  ``Upgrade``); h11 frames the body again on each side (chunked both ways), so keep-alive and
  pipelining work and one client connection may reach several hosts in turn;
- ``GET /proxy.pac`` becomes ``ServePac``;
- everything else gets its answer: 407 without good ``Proxy-Authorization: Basic`` when the
  port has users, 400 for a malformed request (or one with both ``Content-Length`` and
  ``Transfer-Encoding``: a smuggling attempt), 431 for a head over the limit, and the status
  of a failed connect (``status_for``). Every error answer closes the connection.

No sockets, no clock: the driver owns the deadlines (the head's, the upstream's).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import http
from collections.abc import Callable
from typing import TypeAlias
from urllib.parse import urlsplit

import h11

from jproxy.policy.hostnames import InvalidHost, check_host
from schemas.jproxy import ConnectStatus

MAX_HEAD = 64 * 1024
"""The most bytes of one request head (request line and headers); more gets 431."""
PAC_PATH = "/proxy.pac"
REALM = "gjproxy"

HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)

CredentialCheck = Callable[[bytes, bytes], bool]


@dataclasses.dataclass(frozen=True)
class NeedData:
    """Read more from the client (an empty read: feed ``b""``)."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """Send ``data`` to the client; ``close`` after it (every error answer does)."""

    data: bytes
    close: bool
    status: int
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """CONNECT: open ``host:port``, then send ``tunnel_established()`` and relay."""

    host: str
    port: int


@dataclasses.dataclass(frozen=True)
class Forward:
    """Send ``head`` to ``host:port`` (reusing an open connection to it), then the body."""

    host: str
    port: int
    head: bytes
    interim: bytes = b""
    """``100 Continue`` for a client that waits for it before its body (send it once the
    upstream is open): the proxy answers the expectation itself, so the body never waits for
    a 100 that the upstream sends while the driver still reads the client."""


@dataclasses.dataclass(frozen=True)
class ServePac:
    """The client asked for the PAC file: answer with ``answer(200, ...)``."""


@dataclasses.dataclass(frozen=True)
class ClientGone:
    """The client closed between requests: nothing to answer."""


Event: TypeAlias = NeedData | Answer | Tunnel | Forward | ServePac | ClientGone


@dataclasses.dataclass(frozen=True)
class Body:
    """Request body bytes, framed for the upstream; ``done`` once the request is complete."""

    data: bytes
    done: bool


@dataclasses.dataclass(frozen=True)
class ToClient:
    """Response bytes for the client; ``done`` once the response is complete."""

    data: bytes
    done: bool


_STATUS_FOR = {
    ConnectStatus.NOT_ALLOWED: 403,
    ConnectStatus.CONNECTION_LIMIT: 503,
    ConnectStatus.TIMED_OUT: 504,
}


def status_for(status: ConnectStatus) -> int:
    """The HTTP status for a failed connect: 403 not allowed, 504 timed out, 503 over a
    limit, 502 for the rest (refused, unreachable, unknown host, general failure)."""
    return _STATUS_FOR.get(status, 502)


def _split_authority(authority: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``; None when malformed."""
    host, sep, port = authority.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    try:
        check_host(host)
    except InvalidHost:
        return None
    return host, int(port)


def _basic_credentials(value: bytes) -> tuple[bytes, bytes] | None:
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without the hop-by-hop ones, those named in ``Connection`` included."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name in (b"connection", b"proxy-connection")
        for token in value.split(b",")
    }
    return [(name, value) for name, value in headers if name not in HOP_BY_HOP | named]


class HttpProxy:
    """One client connection of the HTTP proxy: requests in, decisions out."""

    def __init__(self, check_login: CredentialCheck | None = None, *, max_head: int = MAX_HEAD):
        self._check_login = check_login
        self._max_head = max_head
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._upstream: h11.Connection | None = None
        self.user = ""
        self.request: h11.Request | None = None
        self.response_started = False

    # --- the client's requests -------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when it closed its side."""
        self.client.receive_data(data)

    def next_request(self) -> Event:
        """What to do with the next request once its head is complete."""
        try:
            event = self.client.next_event()
        except h11.RemoteProtocolError as error:
            return self.answer(error.error_status_hint, f"malformed request: {error}")
        if event is h11.NEED_DATA:
            return NeedData()
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return ClientGone()
        self.request = event
        self.response_started = False
        return self._decide(event)

    def _decide(self, request: h11.Request) -> Event:
        headers = list(request.headers)
        # h11 bounds only a head that is still incomplete; one that arrived whole is measured
        # here (its parsed size: the request line and each "name: value\r\n").
        size = len(request.method) + len(request.target) + 12
        if size + sum(len(name) + len(value) + 4 for name, value in headers) > self._max_head:
            return self.answer(431, f"request head over {self._max_head} bytes")
        names = [name for name, _ in headers]
        if b"content-length" in names and b"transfer-encoding" in names:
            return self.answer(400, "Content-Length and Transfer-Encoding together")
        target = request.target.decode("ascii", "replace")
        if request.method == b"GET" and target == PAC_PATH:
            return ServePac()
        if self._check_login is not None and not self._logged_in(headers):
            return self.answer(
                407,
                "proxy authentication required",
                [(b"proxy-authenticate", f'Basic realm="{REALM}"'.encode())],
            )
        if request.method == b"CONNECT":
            authority = _split_authority(target)
            if authority is None:
                return self.answer(400, f"CONNECT needs HOST:PORT, not {target!r}")
            return Tunnel(*authority)
        return self._forward(request, headers, target)

    def _logged_in(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"proxy-authorization":
                credentials = _basic_credentials(value)
                if credentials is not None and self._check_login(*credentials):
                    self.user = credentials[0].decode("utf-8", "replace")
                    return True
        return False

    def _forward(self, request: h11.Request, headers: list, target: str) -> Event:
        url = urlsplit(target)
        if url.scheme.lower() != "http" or not url.netloc:
            if target.startswith("/"):
                return self.answer(
                    404, f"this is a proxy: ask for absolute URLs, or {PAC_PATH} for its PAC file"
                )
            return self.answer(400, f"not an http:// URL: {target!r} (use CONNECT for https)")
        netloc = url.netloc.rpartition("@")[2]
        authority = _split_authority(netloc if url.port is not None else f"{netloc}:80")
        if authority is None:
            return self.answer(400, f"bad host in {target!r}")
        chunked = b"transfer-encoding" in [name for name, _ in headers]
        outgoing = end_to_end(headers)
        interim = b""
        if self.client.they_are_waiting_for_100_continue:
            outgoing = [(name, value) for name, value in outgoing if name != b"expect"]
            interim = self.client.send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
        if not any(name == b"host" for name, _ in outgoing):
            outgoing.insert(0, (b"host", netloc.encode("ascii")))
        if chunked:
            outgoing.append((b"transfer-encoding", b"chunked"))
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._upstream = h11.Connection(h11.CLIENT)
        head = self._upstream.send(
            h11.Request(
                method=request.method,
                target=path.encode("ascii"),
                headers=outgoing,
                http_version=request.http_version,
            )
        )
        return Forward(authority[0], authority[1], head, interim)

    def next_body(self) -> Body | NeedData | Answer:
        """The next piece of the request body for the upstream; ``Answer`` when the body is
        malformed (a bad chunk): the driver sends it and drops the upstream."""
        try:
            event = self.client.next_event()
        except h11.RemoteProtocolError as error:
            return self.answer(error.error_status_hint, f"malformed request body: {error}")
        if event is h11.NEED_DATA:
            return NeedData()
        if isinstance(event, h11.ConnectionClosed):
            return self.answer(400, "the client closed before its request body ended")
        if isinstance(event, h11.Data):
            return Body(self._upstream.send(h11.Data(data=event.data)), False)
        return Body(self._upstream.send(h11.EndOfMessage()), True)

    # --- the upstream's response -----------------------------------------------------------

    def receive_upstream(self, data: bytes) -> None:
        """Bytes from the upstream; ``b""`` when it closed."""
        self._upstream.receive_data(data)

    def next_response(self) -> ToClient | NeedData | Answer | None:
        """Response bytes for the client. ``Answer`` (502) when the upstream broke before its
        response began; ``None`` when it broke after: the driver resets the client."""
        try:
            event = self._upstream.next_event()
        except h11.RemoteProtocolError as error:
            return None if self.response_started else self.answer(502, f"bad response: {error}")
        if event is h11.NEED_DATA:
            return NeedData()
        if isinstance(event, h11.ConnectionClosed):
            return None if self.response_started else self.answer(502, "the server closed")
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:  # an upgrade this proxy did not ask for
                return None if self.response_started else self.answer(502, "unexpected 101")
            return ToClient(self.client.send(self._relayed(event)), False)
        if isinstance(event, h11.Response):
            self.response_started = True
            return ToClient(self.client.send(self._relayed(event)), False)
        if isinstance(event, h11.Data):
            return ToClient(self.client.send(h11.Data(data=event.data)), False)
        return ToClient(self.client.send(h11.EndOfMessage()), True)

    @staticmethod
    def _relayed(event: h11.Response | h11.InformationalResponse):
        return type(event)(
            status_code=event.status_code,
            headers=end_to_end(list(event.headers)),
            reason=event.reason,
            http_version=b"1.1",
        )

    def finish_exchange(self) -> tuple[bool, bool]:
        """After a complete response: ``(client_goes_on, upstream_reusable)``. The client's
        connection starts its next cycle (a pipelined request may already wait in h11)."""
        upstream = self._upstream
        reusable = (
            upstream is not None
            and upstream.our_state is h11.DONE
            and upstream.their_state is h11.DONE
        )
        if reusable:
            upstream.start_next_cycle()
        if self.client.our_state is h11.DONE and self.client.their_state is h11.DONE:
            self.client.start_next_cycle()
            return True, reusable
        return False, reusable

    def upstream_for_next(self) -> None:
        """A new upstream connection is used: its h11 state starts fresh."""
        self._upstream = None

    # --- answers ---------------------------------------------------------------------------

    def tunnel_established(self) -> tuple[bytes, bytes]:
        """The 200 answer to CONNECT, and the bytes the client sent after its request."""
        while self.client.their_state is h11.SEND_BODY:  # CONNECT's empty body
            if self.client.next_event() is h11.NEED_DATA:
                break
        established = h11.Response(status_code=200, headers=[], reason=b"Connection established")
        return self.client.send(established), bytes(self.client.trailing_data[0])

    def answer(
        self,
        status: int,
        text: str,
        headers: list[tuple[bytes, bytes]] = (),
        *,
        content_type: bytes = b"text/plain; charset=utf-8",
        close: bool = True,
    ) -> Answer:
        """A complete response: ``text`` as its body (a reason ends with a newline)."""
        body = text.encode("utf-8") + (b"\n" if not text.endswith("\n") else b"")
        fields = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
        if close:
            fields.append((b"connection", b"close"))
        try:
            phrase = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        if self.client.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return Answer(b"", True, status, text)  # a response is under way: only a close
        data = self.client.send(h11.Response(status_code=status, headers=fields, reason=phrase))
        data += self.client.send(h11.Data(data=body)) + self.client.send(h11.EndOfMessage())
        return Answer(data, close, status, text)
