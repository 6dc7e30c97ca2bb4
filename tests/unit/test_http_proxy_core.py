"""The HTTP proxy core as a playbook: client bytes in, decisions and bytes out."""

from __future__ import annotations

import base64

import h11
import pytest

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
    end_to_end,
    status_for,
)
from schemas.jproxy import ConnectStatus


def fed(data: bytes, **options) -> tuple[HttpProxy, object]:
    core = HttpProxy(**options)
    core.receive(data)
    return core, core.next_request()


def upstream_request(head: bytes) -> h11.Request:
    server = h11.Connection(h11.SERVER)
    server.receive_data(head)
    return server.next_event()


def test_connect_becomes_a_tunnel_with_the_early_bytes():
    core, event = fed(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n\x16\x03")
    assert event == Tunnel("example.org", 443)
    answer, early = core.tunnel_established()
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n")
    assert early == b"\x16\x03"


@pytest.mark.parametrize("target", [b"example.org", b"example.org:0", b"[::1:443", b"a b:1"])
def test_connect_needs_host_and_port(target):
    _, event = fed(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(event, Answer) and event.status == 400 and event.close


def test_absolute_uri_goes_in_origin_form_without_hop_by_hop_headers():
    core, event = fed(
        b"GET http://[::1]:8080/a?b=1 HTTP/1.1\r\nHost: [::1]:8080\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n"
        b"Connection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
        b"Accept: */*\r\n\r\n"
    )
    assert isinstance(event, Forward) and (event.host, event.port) == ("::1", 8080)
    request = upstream_request(event.head)
    assert request.target == b"/a?b=1"
    assert [name for name, _ in request.headers] == [b"host", b"accept"]
    assert core.next_body() == Body(b"", True)


def test_a_chunked_body_is_chunked_again_and_the_response_relayed():
    core, event = fed(
        b"POST http://h.example/up HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert (event.host, event.port) == ("h.example", 80)
    assert b"transfer-encoding: chunked" in event.head
    pieces = []
    while not (piece := core.next_body()).done:
        pieces.append(piece.data)
    assert b"".join(pieces) + piece.data == b"5\r\nhello\r\n0\r\n\r\n"
    core.receive_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    )
    out = []
    while not isinstance(piece := core.next_response(), NeedData):
        out.append(piece)
        if piece.done:
            break
    data = b"".join(piece.data for piece in out)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nok")
    assert b"keep-alive" not in data.lower()
    assert core.finish_exchange() == (True, True)
    assert isinstance(core.next_request(), NeedData)  # the next cycle began


def test_a_response_without_length_is_chunked_for_the_client():
    core, event = fed(b"GET http://h.example/ HTTP/1.1\r\nHost: h.example\r\n\r\n")
    core.next_body()
    core.receive_upstream(b"HTTP/1.0 200 OK\r\n\r\nabc")
    core.receive_upstream(b"")
    data = b""
    while True:
        piece = core.next_response()
        assert isinstance(piece, ToClient)
        data += piece.data
        if piece.done:
            break
    assert b"transfer-encoding: chunked" in data.lower() and data.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    assert core.finish_exchange() == (True, False)  # the upstream ended: not reusable


def test_pipelined_requests_come_one_at_a_time():
    core, first = fed(
        b"GET http://a.example/1 HTTP/1.1\r\nHost: a.example\r\n\r\n"
        b"GET http://b.example/2 HTTP/1.1\r\nHost: b.example\r\n\r\n"
    )
    assert first.host == "a.example"
    core.next_body()
    core.receive_upstream(b"HTTP/1.1 204 No Content\r\n\r\n")
    while not core.next_response().done:
        pass
    assert core.finish_exchange() == (True, True)
    second = core.next_request()
    assert isinstance(second, Forward) and second.host == "b.example"


def test_a_broken_upstream_before_and_after_the_response_began():
    core, _ = fed(b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n")
    core.next_body()
    core.receive_upstream(b"garbage\r\n\r\n")
    answer = core.next_response()
    assert isinstance(answer, Answer) and answer.status == 502
    core, _ = fed(b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n")
    core.next_body()
    core.receive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    core.receive_upstream(b"")
    assert isinstance(core.next_response(), ToClient)
    assert core.next_response().data == b"abc"
    assert core.next_response() is None  # cut short: the driver resets the client


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 404),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", 431),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 70_000, 431),
    ],
)
def test_malformed_requests_get_their_status_and_a_close(data, status):
    _, event = fed(data)
    assert isinstance(event, Answer) and (event.status, event.close) == (status, True)
    assert event.data.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in event.data


def test_a_bad_chunk_is_answered_400():
    core, event = fed(
        b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"
    )
    assert isinstance(event, Forward)
    answer = core.next_body()
    assert isinstance(answer, Answer) and answer.status == 400


def test_basic_proxy_authorization():
    def check(user: bytes, password: bytes) -> bool:
        return (user, password) == (b"ann", b"s3cret")

    request = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n%s\r\n"
    _, event = fed(request % b"", check_login=check)
    assert event.status == 407 and b'proxy-authenticate: Basic realm="gjproxy"' in event.data
    wrong = b"Proxy-Authorization: Basic " + base64.b64encode(b"ann:nope") + b"\r\n"
    assert fed(request % wrong, check_login=check)[1].status == 407
    right = b"Proxy-Authorization: basic " + base64.b64encode(b"ann:s3cret") + b"\r\n"
    core, event = fed(request % right, check_login=check)
    assert isinstance(event, Forward) and core.user == "ann"
    assert b"authorization" not in event.head.lower()
    # the PAC file needs no login: browsers fetch it without credentials
    assert fed(b"GET /proxy.pac HTTP/1.1\r\nHost: a\r\n\r\n", check_login=check)[1] == ServePac()


def test_the_client_leaving_between_requests_is_not_an_error():
    core = HttpProxy()
    core.receive(b"")
    assert core.next_request() == ClientGone()


def test_statuses_for_failed_connects():
    assert status_for(ConnectStatus.NOT_ALLOWED) == 403
    assert status_for(ConnectStatus.TIMED_OUT) == 504
    assert status_for(ConnectStatus.REFUSED) == 502
    assert status_for(ConnectStatus.UNKNOWN_HOST) == 502


def test_headers_named_by_connection_go_too():
    headers = [(b"connection", b"close, x-a"), (b"x-a", b"1"), (b"x-b", b"2"), (b"upgrade", b"h2c")]
    assert end_to_end(headers) == [(b"x-b", b"2")]


def test_expect_100_continue_is_answered_by_the_proxy():
    core, event = fed(
        b"PUT http://a.example/f HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert event.interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"expect" not in event.head.lower()
    assert isinstance(core.next_body(), NeedData)
    core.receive(b"abc")
    assert core.next_body() == Body(b"abc", False)
